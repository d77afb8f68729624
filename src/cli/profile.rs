//! `kvspool profile TRACE [--svg OUT] [--json] [--from-step N]`: per-layer report of a KV trace (`--trace`),
//! and an SVG of the timeline. The logic lives in `kvspool::profile`.

use anyhow::Result;
use clap::Args;
use kvspool::profile;
use std::path::PathBuf;

#[derive(Args)]
pub struct ProfileArgs {
    /// Trace written by `--trace FILE` (one JSON object per line, docs/trace-format.md).
    trace: PathBuf,
    /// Also draw the per-layer hit rates, RAM-tier occupancy and disk reads over time to this SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// One JSON object on stdout: {"layers": [...], "total": {...}}.
    #[arg(long)]
    json: bool,
    /// Only the steps from this one on (skip warm-up steps; steps count from 1).
    #[arg(long, default_value_t = 0)]
    from_step: u64,
}

pub fn main(a: ProfileArgs) -> Result<()> {
    let p = profile::load_from_step(&a.trace, a.from_step)?;
    if let Some(out) = &a.svg {
        let title = format!(
            "kvspool profile: {}",
            a.trace
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        profile::write_svg(&p, &title, out)?;
        if !a.json {
            eprintln!("wrote {}", out.display());
        }
    }
    if a.json {
        // Serialize the structs directly: fields keep their declared order.
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", profile::render_text(&p));
    }
    Ok(())
}

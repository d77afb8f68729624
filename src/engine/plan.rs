//! `kvspool plan`: what fits on a machine with a given amount of RAM.
//!
//! The memory model (all figures in bytes, for one sequence):
//! - **weights**: every tensor of the GGUF. They are memory-mapped, so they live in the page
//!   cache; decoding touches all of them (for MoE models, every expert over a few tokens), so the
//!   plan keeps them resident. When they do not fit, the plan says so: the run still works but
//!   re-reads weights from disk.
//! - **reserve**: what the OS and other programs keep: `max(1 GiB, RAM / 4)`. On a 16 GiB laptop
//!   that leaves 0.25–1 GiB for KV next to gpt-oss-20b's 11.3 GiB of weights (ANCHORS.md).
//! - **overhead**: the engine's own buffers: per-block key bounds (min and max per channel, f32,
//!   per full-attention layer, KV head and block), one pinned tail block per full-attention layer,
//!   logits and activation scratch (`n_vocab` and `4·n_embd` floats per batch position for a
//!   512-token prefill batch), plus 64 MiB of slack.
//! - **KV**: `kv_bytes_per_token(dtype) · ctx`, counting full-attention layers only (sliding
//!   layers keep a small RAM ring, inside the overhead's slack). The disk tier holds every sealed
//!   block (a block leaves RAM only after its disk copy is durable), so its size is the whole KV.
//! - **RAM tier** (`--kv-ram`) = `min(KV, RAM − reserve − weights − overhead)`, at least one
//!   block per full-attention layer. When it holds less than half of the KV, the plan suggests
//!   `--attention sparse`.

use crate::gguf::{GgufFile, ModelConfig};
use crate::units::format_size;

/// Inputs of a plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput {
    /// Machine RAM.
    pub ram_bytes: u64,
    /// Context in tokens.
    pub ctx: u64,
    /// Bytes per stored K/V value (fp8: 1, f16: 2, f32: 4).
    pub kv_bytes_per_value: f64,
    /// Tokens per KV block.
    pub block_tokens: u64,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    /// Machine RAM.
    pub ram_bytes: u64,
    /// Context in tokens.
    pub ctx: u64,
    /// Tensor bytes of the model file.
    pub weights_bytes: u64,
    /// RAM left to the OS and other programs.
    pub reserve_bytes: u64,
    /// Engine buffers besides the KV RAM tier.
    pub overhead_bytes: u64,
    /// Whole KV cache at `ctx`.
    pub kv_total_bytes: u64,
    /// Suggested RAM tier.
    pub kv_ram_bytes: u64,
    /// Disk tier size (every sealed block).
    pub kv_disk_bytes: u64,
    /// Whether the weights fit next to the reserve and overhead.
    pub weights_fit: bool,
    /// Fraction of the KV the RAM tier holds.
    pub kv_ram_fraction: f64,
    /// Suggested attention mode.
    pub attention: &'static str,
    /// The model's trained context, when `ctx` exceeds it.
    pub ctx_exceeds_training: Option<u64>,
}

/// Compute a plan for `cfg` (weights from `file`).
pub fn plan(file: &GgufFile, cfg: &ModelConfig, p: &PlanInput) -> Plan {
    const GIB: u64 = 1 << 30;
    let weights: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let reserve = GIB.max(p.ram_bytes / 4);
    let full = cfg.full_attention_layers().len() as u64;
    let bt = p.block_tokens.max(1);
    let blocks_per_layer = p.ctx.div_ceil(bt);
    let row = (cfg.n_head_kv() * cfg.head_dim()) as u64;
    let bounds = full * blocks_per_layer * cfg.n_head_kv() as u64 * cfg.head_dim() as u64 * 2 * 4;
    let block_bytes = (bt as f64 * row as f64 * 2.0 * p.kv_bytes_per_value) as u64;
    let tails = full * block_bytes;
    let scratch = 512 * (cfg.n_vocab() as u64 + 4 * cfg.n_embd() as u64) * 4;
    let overhead = bounds + tails + scratch + (64 << 20);
    let kv_total = (cfg.kv_bytes_per_token(p.kv_bytes_per_value) * p.ctx as f64).ceil() as u64;
    let free = p.ram_bytes.saturating_sub(reserve + weights + overhead);
    let kv_ram = kv_total.min(free).max(full * block_bytes);
    let frac = if kv_total == 0 {
        1.0
    } else {
        (kv_ram as f64 / kv_total as f64).min(1.0)
    };
    Plan {
        ram_bytes: p.ram_bytes,
        ctx: p.ctx,
        weights_bytes: weights,
        reserve_bytes: reserve,
        overhead_bytes: overhead,
        kv_total_bytes: kv_total,
        kv_ram_bytes: kv_ram,
        kv_disk_bytes: kv_total,
        weights_fit: p.ram_bytes >= reserve + weights + overhead,
        kv_ram_fraction: frac,
        attention: if frac < 0.5 { "sparse" } else { "dense" },
        ctx_exceeds_training: (p.ctx > cfg.context_length() as u64)
            .then_some(cfg.context_length() as u64),
    }
}

impl Plan {
    /// The command-line flags that implement the plan.
    pub fn flags(&self, dtype: &str) -> String {
        format!(
            "--ctx {} --kv-dtype {dtype} --kv-ram {}MiB --attention {}",
            self.ctx,
            self.kv_ram_bytes >> 20,
            self.attention
        )
    }

    /// A human-readable report.
    pub fn report(&self, dtype: &str) -> String {
        let mut s = String::new();
        let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<22} {v}\n"));
        line(&mut s, "RAM", format_size(self.ram_bytes));
        line(&mut s, "context", format!("{} tokens", self.ctx));
        line(&mut s, "weights (mmapped)", format_size(self.weights_bytes));
        line(&mut s, "OS reserve", format_size(self.reserve_bytes));
        line(&mut s, "engine overhead", format_size(self.overhead_bytes));
        line(
            &mut s,
            &format!("KV total ({dtype})"),
            format_size(self.kv_total_bytes),
        );
        line(
            &mut s,
            "KV RAM tier",
            format!(
                "{} ({:.1}% of KV)",
                format_size(self.kv_ram_bytes),
                100.0 * self.kv_ram_fraction
            ),
        );
        line(&mut s, "KV disk tier", format_size(self.kv_disk_bytes));
        if let Some(t) = self.ctx_exceeds_training {
            s.push_str(&format!("warning: the model was trained for {t} tokens; quality beyond that is not expected\n"));
        }
        if !self.weights_fit {
            s.push_str("warning: the weights do not fit next to the OS reserve; expect them to be re-read from disk\n");
        }
        line(&mut s, "flags", self.flags(dtype));
        s
    }
}

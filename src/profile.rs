//! `kvspool profile`: read a KV trace (`--trace FILE`, format in `docs/trace-format.md`),
//! aggregate it per layer and overall, and draw it as an SVG.
//!
//! Parsing is strict about the documented fields (a line missing one, or of the wrong type, is
//! an error naming the file and line) and lenient about anything else: unknown fields are kept
//! and, when numeric, summed per layer (`extra`), so fields added to the trace later (e.g. block
//! prediction counters `predicted`, `predicted_used`) show up without changes here. When both
//! `predicted` and `predicted_used` are present, `precision = predicted_used / predicted`.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Errors of reading a trace or writing its SVG.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a KV trace line ({msg}); see docs/trace-format.md")]
    Parse {
        path: PathBuf,
        line: usize,
        /// serde's message, with the column (the line is `line`).
        msg: String,
    },
    #[error(
        "{path}: the trace is empty (no lines); write one with `--trace FILE` on `kvspool run`, \
         `logits` or `bench decode` (lines are flushed when the command ends)"
    )]
    Empty { path: PathBuf },
    #[error("{path}: drawing the SVG failed: {msg}")]
    Draw { path: PathBuf, msg: String },
}

/// One line of a trace: one attention call of one layer in one step.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TraceLine {
    pub step: u64,
    pub layer: usize,
    pub t_s: f64,
    pub dur_s: f64,
    pub n_tokens: u64,
    pub blocks_read: u64,
    pub hits: u64,
    pub prefetch_hits: u64,
    pub late: u64,
    pub misses: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub stall_s: f64,
    pub evictions: u64,
    pub write_behind: u64,
    pub ram_resident_bytes: u64,
    pub ram_peak_bytes: u64,
    /// Fields this version does not know; numeric ones are summed per layer.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl TraceLine {
    /// Hit rate of this call (1 when it read no blocks).
    pub fn hit_rate(&self) -> f64 {
        hit_rate(self.hits + self.prefetch_hits, self.blocks_accounted())
    }

    fn blocks_accounted(&self) -> u64 {
        self.hits + self.prefetch_hits + self.late + self.misses
    }
}

fn hit_rate(hit: u64, all: u64) -> f64 {
    if all == 0 {
        1.0
    } else {
        hit as f64 / all as f64
    }
}

/// Counters summed over a set of trace lines (one layer, or all of them).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counters {
    /// Trace lines (attention calls) summed.
    pub calls: u64,
    /// Distinct steps among them.
    pub steps: u64,
    /// Distinct steps with one query token (decode).
    pub decode_steps: u64,
    /// Distinct steps with more than one query token (prefill chunks).
    pub prefill_steps: u64,
    pub blocks_read: u64,
    pub hits: u64,
    pub prefetch_hits: u64,
    /// Miss reason: the prefetch was still in flight.
    pub late: u64,
    /// Miss reason: not resident and not prefetched (read on demand).
    pub misses: u64,
    /// `(hits + prefetch_hits) / (hits + prefetch_hits + late + misses)`; 1 with no blocks.
    pub hit_rate: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub stall_s: f64,
    /// Seconds of the attention calls (reads, waits and compute).
    pub dur_s: f64,
    /// `stall_s / dur_s` (0 when `dur_s` is 0).
    pub stall_share: f64,
    pub evictions: u64,
    /// Sums of the numeric fields this version does not know.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
    /// `predicted_used / predicted`, when the trace has both fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// How the predictors did, when the trace has their counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

/// The trace fields [`Prediction`] is made of (the text report shows them in its own table).
pub const PREDICTION_FIELDS: [&str; 11] = [
    "predicted",
    "predicted_used",
    "spec_predicted",
    "spec_used",
    "speculations",
    "spec_gated",
    "prefetch_reads",
    "prefetch_unused",
    "prefetch_lead_s",
    "sparse_candidates",
    "sparse_selected",
];

pub use crate::kv::tiered::Prediction;

/// The prediction counters of `c` (summed trace fields), if the trace has them.
fn prediction_of(c: &Counters) -> Option<Prediction> {
    c.extra.get("predicted")?;
    let g = |k: &str| c.extra.get(k).copied().unwrap_or(0.0).max(0.0) as u64;
    let stats = crate::kv::LayerStats {
        blocks_read: c.blocks_read,
        hits: c.hits,
        prefetch_hits: c.prefetch_hits,
        late: c.late,
        misses: c.misses,
        predicted: g("predicted"),
        predicted_used: g("predicted_used"),
        spec_predicted: g("spec_predicted"),
        spec_used: g("spec_used"),
        speculations: g("speculations"),
        spec_gated: g("spec_gated"),
        prefetch_reads: g("prefetch_reads"),
        prefetch_unused: g("prefetch_unused"),
        prefetch_lead_ns: (c.extra.get("prefetch_lead_s").copied().unwrap_or(0.0) * 1e9).round()
            as u64,
        sparse_candidates: g("sparse_candidates"),
        sparse_selected: g("sparse_selected"),
        ..Default::default()
    };
    Some(stats.prediction())
}

/// Per-layer counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerProfile {
    pub layer: usize,
    #[serde(flatten)]
    pub c: Counters,
}

/// Totals over every line, plus whole-run figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TotalProfile {
    #[serde(flatten)]
    pub c: Counters,
    /// Layers with at least one line.
    pub layers: usize,
    /// Layers that read at least one store block.
    pub layers_with_blocks: usize,
    /// Largest `t_s` (seconds from cache creation to the last call).
    pub wall_s: f64,
    /// Largest `ram_peak_bytes`.
    pub ram_peak_bytes: u64,
}

/// A parsed and aggregated trace.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub layers: Vec<LayerProfile>,
    pub total: TotalProfile,
    #[serde(skip)]
    pub lines: Vec<TraceLine>,
}

/// Parse a trace from a reader; `path` names it in errors. Blank lines are skipped.
pub fn parse_trace<R: Read>(r: R, path: &Path) -> Result<Vec<TraceLine>, ProfileError> {
    let mut out = Vec::new();
    for (i, line) in BufReader::new(r).lines().enumerate() {
        let line = line.map_err(|source| ProfileError::Io {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let l: TraceLine = serde_json::from_str(&line).map_err(|e| ProfileError::Parse {
            path: path.to_owned(),
            line: i + 1,
            msg: e
                .to_string()
                .replace(&format!(" at line {} column ", e.line()), " at column "),
        })?;
        out.push(l);
    }
    if out.is_empty() {
        return Err(ProfileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Read and aggregate the trace at `path`.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    load_from_step(path, 0)
}

/// [`load`], keeping only the lines of steps `>= from_step` (e.g. to judge a steady state
/// without the warm-up steps).
pub fn load_from_step(path: &Path, from_step: u64) -> Result<Profile, ProfileError> {
    let f = std::fs::File::open(path).map_err(|source| ProfileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = parse_trace(f, path)?;
    lines.retain(|l| l.step >= from_step);
    Ok(aggregate(lines))
}

fn sum_lines<'a>(lines: impl Iterator<Item = &'a TraceLine>) -> Counters {
    let mut c = Counters::default();
    let mut steps = BTreeMap::new();
    for l in lines {
        c.calls += 1;
        // A step's token count is the same in every layer; keep the largest.
        let e = steps.entry(l.step).or_insert(0);
        *e = (*e).max(l.n_tokens);
        c.blocks_read += l.blocks_read;
        c.hits += l.hits;
        c.prefetch_hits += l.prefetch_hits;
        c.late += l.late;
        c.misses += l.misses;
        c.bytes_read += l.bytes_read;
        c.bytes_written += l.bytes_written;
        c.stall_s += l.stall_s;
        c.dur_s += l.dur_s;
        c.evictions += l.evictions;
        for (k, v) in &l.extra {
            if let Some(x) = v.as_f64() {
                *c.extra.entry(k.clone()).or_insert(0.0) += x;
            }
        }
    }
    c.steps = steps.len() as u64;
    c.decode_steps = steps.values().filter(|&&n| n <= 1).count() as u64;
    c.prefill_steps = c.steps - c.decode_steps;
    c.hit_rate = hit_rate(
        c.hits + c.prefetch_hits,
        c.hits + c.prefetch_hits + c.late + c.misses,
    );
    c.stall_share = if c.dur_s > 0.0 {
        c.stall_s / c.dur_s
    } else {
        0.0
    };
    if let (Some(&p), Some(&u)) = (c.extra.get("predicted"), c.extra.get("predicted_used")) {
        c.precision = Some(if p > 0.0 { u / p } else { 1.0 });
    }
    c.prediction = prediction_of(&c);
    c
}

/// Aggregate parsed lines per layer and overall.
pub fn aggregate(lines: Vec<TraceLine>) -> Profile {
    let layer_ids: BTreeSet<usize> = lines.iter().map(|l| l.layer).collect();
    let layers: Vec<LayerProfile> = layer_ids
        .iter()
        .map(|&layer| LayerProfile {
            layer,
            c: sum_lines(lines.iter().filter(|l| l.layer == layer)),
        })
        .collect();
    let total = TotalProfile {
        c: sum_lines(lines.iter()),
        layers: layers.len(),
        layers_with_blocks: layers.iter().filter(|l| l.c.blocks_read > 0).count(),
        wall_s: lines.iter().map(|l| l.t_s).fold(0.0, f64::max),
        ram_peak_bytes: lines.iter().map(|l| l.ram_peak_bytes).max().unwrap_or(0),
    };
    Profile {
        layers,
        total,
        lines,
    }
}

fn size(b: u64) -> String {
    crate::units::format_size(b)
}

/// The text report: a summary, a per-layer table of the layers that read blocks, and totals.
pub fn render_text(p: &Profile) -> String {
    let t = &p.total;
    let mut o = format!(
        "trace: {} calls, {} steps ({} decode, {} prefill), {} layers ({} reading blocks), {:.3} s, RAM tier peak {}\n",
        t.c.calls,
        t.c.steps,
        t.c.decode_steps,
        t.c.prefill_steps,
        t.layers,
        t.layers_with_blocks,
        t.wall_s,
        size(t.ram_peak_bytes),
    );
    let extra_keys: Vec<&String> =
        t.c.extra
            .keys()
            .filter(|k| !PREDICTION_FIELDS.contains(&k.as_str()))
            .collect();
    let with_pred = t.c.prediction.is_some();
    let mut head = format!(
        "{:>5} {:>6} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>11} {:>11} {:>9} {:>7}",
        "layer",
        "steps",
        "blocks",
        "hits",
        "prefetch",
        "late",
        "misses",
        "hit%",
        "read",
        "written",
        "stall_s",
        "stall%"
    );
    for k in &extra_keys {
        head.push_str(&format!(" {:>14}", k));
    }
    if t.c.precision.is_some() && !with_pred {
        head.push_str(&format!(" {:>9}", "precision"));
    }
    o.push_str(head.trim_end());
    o.push('\n');
    let row = |o: &mut String, name: String, c: &Counters| {
        let mut s = format!(
            "{:>5} {:>6} {:>10} {:>10} {:>10} {:>8} {:>10} {:>7.2}% {:>11} {:>11} {:>9.3} {:>6.1}%",
            name,
            c.steps,
            c.blocks_read,
            c.hits,
            c.prefetch_hits,
            c.late,
            c.misses,
            c.hit_rate * 100.0,
            size(c.bytes_read),
            size(c.bytes_written),
            c.stall_s,
            c.stall_share * 100.0,
        );
        for k in &extra_keys {
            let v = c.extra.get(*k).copied().unwrap_or(0.0);
            s.push_str(&format!(" {:>14}", fmt_num(v)));
        }
        if t.c.precision.is_some() && !with_pred {
            match c.precision {
                Some(x) => s.push_str(&format!(" {:>8.2}%", x * 100.0)),
                None => s.push_str(&format!(" {:>9}", "-")),
            }
        }
        o.push_str(&s);
        o.push('\n');
    };
    for l in p.layers.iter().filter(|l| l.c.blocks_read > 0) {
        row(&mut o, l.layer.to_string(), &l.c);
    }
    row(&mut o, "all".into(), &t.c);
    o.push_str(&format!(
        "misses by reason: {} late (prefetch in flight), {} on demand (not resident, not prefetched); {} evictions\n",
        t.c.late, t.c.misses, t.c.evictions
    ));
    if with_pred {
        o.push_str(&render_prediction(p));
    }
    o
}

/// The prediction table: per layer that read blocks, then all.
fn render_prediction(p: &Profile) -> String {
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let mut o = String::from("prediction (order = sequential/reuse predictor, spec = speculation; precision = named and then read / named, recall = read and named / read; gated = passes auto ran without speculation, as it did not pay):\n");
    o.push_str(&format!(
        "{:>5} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>8}\n",
        "layer",
        "order",
        "prec",
        "recall",
        "spec",
        "prec",
        "recall",
        "gated",
        "pf_reads",
        "pf_used",
        "coverage",
        "lead_ms",
        "sparse"
    ));
    let row = |o: &mut String, name: String, c: &Counters| {
        let Some(q) = &c.prediction else { return };
        o.push_str(&format!(
            "{:>5} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>8}\n",
            name,
            q.predicted,
            pct(q.order_precision),
            pct(q.order_recall),
            q.spec_predicted,
            pct(q.spec_precision),
            pct(q.spec_recall),
            q.spec_gated,
            q.prefetch_reads,
            pct(q.prefetch_used),
            pct(q.coverage),
            q.mean_lead_ms.map_or("-".into(), |v| format!("{v:.2}")),
            pct(q.sparse_read_fraction),
        ));
    };
    for l in p.layers.iter().filter(|l| l.c.blocks_read > 0) {
        row(&mut o, l.layer.to_string(), &l.c);
    }
    row(&mut o, "all".into(), &p.total.c);
    o
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// The JSON report: `{"layers": [...], "total": {...}}`.
pub fn to_json(p: &Profile) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
}

/// Width and height of the SVG.
pub const SVG_SIZE: (u32, u32) = (1200, 1200);

/// Draw the SVG (three stacked panels: per-layer hit rate over steps, RAM-tier occupancy over
/// time, disk read throughput over time) into a string.
pub fn render_svg(p: &Profile, title: &str) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SVG_SIZE).into_drawing_area();
        draw(&root, p, title).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Draw the SVG to `out`, atomically (a temporary file in the same directory, then a rename).
pub fn write_svg(p: &Profile, title: &str, out: &Path) -> Result<(), ProfileError> {
    let svg = render_svg(p, title).map_err(|msg| ProfileError::Draw {
        path: out.to_owned(),
        msg,
    })?;
    let io = |source| ProfileError::Io {
        path: out.to_owned(),
        source,
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile.svg".into());
    let tmp = out.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(svg.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

/// Dark, distinct line colours (Tableau 10 and two more), legible on white.
const LAYER_COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(0, 0, 139),
];

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Profile,
    title: &str,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let panels = root.split_evenly((3, 1));
    let lines = &p.lines;
    // Time axes start at the beginning of the first call (a cache filled before the traced
    // steps, as `bench decode` does, would otherwise leave an empty stretch).
    let t_min = lines
        .iter()
        .map(|l| (l.t_s - l.dur_s).max(0.0))
        .fold(f64::INFINITY, f64::min)
        .min(p.total.wall_s);
    let t_max = p.total.wall_s.max(t_min + 1e-6);
    let step_min = lines.iter().map(|l| l.step).min().unwrap_or(0);
    let step_max = lines
        .iter()
        .map(|l| l.step)
        .max()
        .unwrap_or(1)
        .max(step_min + 1);

    // (1) Hit rate per step, one line per layer that reads blocks.
    {
        let mut ch = ChartBuilder::on(&panels[0])
            .caption(
                "Hit rate per step, per layer (layers reading blocks; legend: overall hit rate)",
                ("sans-serif", 16),
            )
            .margin(10)
            .margin_right(25)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(step_min as f64..step_max as f64, 0f64..100f64)?;
        ch.configure_mesh()
            .x_desc("step")
            .y_desc("hit rate (%)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .max_light_lines(2)
            .draw()?;
        let shown: Vec<&LayerProfile> = p.layers.iter().filter(|l| l.c.blocks_read > 0).collect();
        for (i, lp) in shown.iter().enumerate() {
            let color = LAYER_COLORS[i % LAYER_COLORS.len()].to_rgba();
            let pts: Vec<(f64, f64)> = lines
                .iter()
                .filter(|l| l.layer == lp.layer && l.blocks_accounted() > 0)
                .map(|l| (l.step as f64, l.hit_rate() * 100.0))
                .collect();
            let single = pts.len() == 1;
            ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("L{} {:.1}%", lp.layer, lp.c.hit_rate * 100.0))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            if single {
                ch.draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, color.filled())))?;
            }
        }
        if !shown.is_empty() {
            ch.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
    }

    // (2) RAM-tier occupancy over time.
    {
        let mib = 1024.0 * 1024.0;
        let peak = p.total.ram_peak_bytes as f64 / mib;
        let y_max = (peak * 1.1).max(1.0);
        let mut ch = ChartBuilder::on(&panels[1])
            .caption(
                format!("RAM tier occupancy (peak {})", size(p.total.ram_peak_bytes)),
                ("sans-serif", 16),
            )
            .margin(10)
            .margin_right(25)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(t_min..t_max, 0f64..y_max)?;
        ch.configure_mesh()
            .x_desc("time (s)")
            .y_desc("resident (MiB)")
            .max_light_lines(2)
            .draw()?;
        let mut pts: Vec<(f64, f64)> = lines
            .iter()
            .map(|l| (l.t_s, l.ram_resident_bytes as f64 / mib))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        ch.draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))?;
        ch.draw_series(LineSeries::new(
            vec![(t_min, peak), (t_max, peak)],
            RED.mix(0.5).stroke_width(1),
        ))?;
    }

    // (3) Disk read throughput over time, in buckets.
    {
        let buckets = 100usize;
        let w = (t_max - t_min) / buckets as f64;
        // Spread each call's bytes evenly over its duration [t_s - dur_s, t_s].
        let mut b = vec![0f64; buckets];
        for l in lines.iter().filter(|l| l.bytes_read > 0) {
            let (a, z) = ((l.t_s - l.dur_s).max(t_min), l.t_s.max(t_min));
            let bytes = l.bytes_read as f64;
            if z - a <= 0.0 {
                b[(((z - t_min) / w) as usize).min(buckets - 1)] += bytes;
                continue;
            }
            let first = (((a - t_min) / w) as usize).min(buckets - 1);
            let last = (((z - t_min) / w) as usize).min(buckets - 1);
            for (i, slot) in b.iter_mut().enumerate().take(last + 1).skip(first) {
                let lo = (t_min + i as f64 * w).max(a);
                let hi = (t_min + (i + 1) as f64 * w).min(z);
                if hi > lo {
                    *slot += bytes * (hi - lo) / (z - a);
                }
            }
        }
        let mbs: Vec<f64> = b.iter().map(|&x| x / w / 1e6).collect();
        let y_max = mbs.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1;
        let total_mb = p.total.c.bytes_read as f64 / 1e6;
        let mut ch = ChartBuilder::on(&panels[2])
            .caption(
                format!(
                    "Disk reads (MB/s over {:.1} ms buckets; {:.1} MB in total)",
                    w * 1e3,
                    total_mb
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .margin_right(25)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(t_min..t_max, 0f64..y_max)?;
        ch.configure_mesh()
            .x_desc("time (s)")
            .y_desc("read (MB/s)")
            .max_light_lines(2)
            .draw()?;
        ch.draw_series(
            mbs.iter()
                .enumerate()
                .filter(|(_, &v)| v > 0.0)
                .map(|(i, &v)| {
                    let x0 = t_min + i as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w, v)], GREEN.mix(0.7).filled())
                }),
        )?;
    }
    Ok(())
}

//! The KV options shared by `run`, `logits` and `bench` (CLI.md, "Common KV options"), turned
//! into a [`TieredKv`], and the `kv` report (JSON object, `--stats` table).

use anyhow::{bail, Context, Result};
use clap::Args;
use kvspool::kv::disk::BackendKind;
use kvspool::kv::format::KvDtype;
use kvspool::kv::{KvGeometry, KvStats, PolicyKind, TieredConfig, TieredKv};
use kvspool::units::{format_size, parse_size};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct CommonKv {
    /// Maximum context in tokens [default: the model's context_length].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// RAM budget for KV blocks, e.g. 512MiB [default: what `kvspool plan` picks for this machine].
    #[arg(long)]
    pub kv_ram: Option<String>,
    /// Directory of the KV disk tier [default: a temporary directory under the cache, removed at exit].
    #[arg(long)]
    pub kv_disk: Option<PathBuf>,
    /// KV storage format [default: f32 with --precision exact; in fast mode f16 when the whole
    /// context's KV fits the RAM budget in f16, else fp8].
    #[arg(long, value_parser = ["f32", "f16", "fp8"])]
    pub kv_dtype: Option<String>,
    /// Arithmetic: fast (activations quantized to 8 bits per 32-block for the integer dots of
    /// Q4_0/Q4_1/Q8_0/MXFP4 weights, as llama.cpp computes) or exact (f32 activations and
    /// accumulation, f32 KV unless --kv-dtype says otherwise: reproduces reference implementations).
    #[arg(long, default_value = "fast", value_parser = ["exact", "fast"])]
    pub precision: String,
    /// Disk backend: pread (O_DIRECT), uring (io_uring, O_DIRECT), mmap.
    #[arg(long, default_value = "uring", value_parser = ["pread", "uring", "mmap"])]
    pub kv_backend: String,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 64)]
    pub block_tokens: usize,
    /// Which blocks a full-attention layer reads: dense (all) or sparse (query-aware: blocks in
    /// order of their key-bound score until --sparse-mass or --sparse-budget; decode steps only).
    #[arg(long, default_value = "dense", value_parser = ["dense", "sparse"])]
    pub attention: String,
    /// Sparse attention: stop adding blocks once their estimated attention mass reaches this.
    #[arg(long, default_value_t = 0.95)]
    pub sparse_mass: f32,
    /// Sparse attention: ... or once the selection holds this many tokens (a pass whose
    /// budget is 3/4 of its positions or more reads them all, without selecting).
    #[arg(long, default_value_t = 4096)]
    pub sparse_budget: usize,
    /// Sparse attention: always read the blocks of the most recent this-many positions.
    #[arg(long, default_value_t = 256)]
    pub sparse_recent: usize,
    /// Predictors of the blocks attention reads next: off, sequential (dense pass order), reuse
    /// (+ each sparse layer's previous selection), speculative (+ the model's estimate of the next
    /// full layer's query; sparse), auto (reuse + speculative); `on` = auto.
    #[arg(long, default_value = "auto", value_parser = ["off", "sequential", "reuse", "speculative", "auto", "on"])]
    pub prefetch: String,
    /// Sparse attention: how the query heads sharing a KV head score a block: max (the largest
    /// bound) or sum (each head's own mass estimate, averaged).
    #[arg(long, default_value = "max", value_parser = ["max", "sum"])]
    pub sparse_group: String,
    /// Sparse attention: the first this-many full-attention layers stay dense.
    #[arg(long, default_value_t = 0)]
    pub sparse_dense_layers: usize,
    /// Sparse attention: the model layers it applies to: all, or layer indices and ranges
    /// (e.g. 1-11,13); other full-attention layers stay dense. Each must be a full-attention
    /// layer of the model
    #[arg(long, default_value = "all")]
    pub sparse_layers: kvspool::kv::tiered::LayerSet,
    /// Sparse attention: what --sparse-budget counts: the tokens of the blocks read, over all KV
    /// heads; union-own (default): each head attends the blocks of its own ranking and those
    /// read for others where it is dense enough (--sparse-share); union: every head attends
    /// every block read (more compute); head: each KV head's own selection (the blocks read are
    /// their union).
    #[arg(long, default_value = "union-own", value_parser = ["union", "union-own", "head"])]
    pub sparse_budget_scope: String,
    /// Sparse attention, union-own: a KV head also attends a block read for other heads when its
    /// estimated attention mass there is at least this many times the block's share of the
    /// context (1 = uniform density; costs no reads; 0 = every block read, as union; inf = never).
    #[arg(long, default_value_t = kvspool::kv::tiered::DEFAULT_SHARE)]
    pub sparse_share: f32,
    /// Sparse attention: how blocks are scored: flat (every block's key bound) or tree (bounds
    /// of 16-block super-blocks first; a super-block's blocks only when the selection reaches
    /// it: pays only when keys cluster by position).
    #[arg(long, default_value = "flat", value_parser = ["flat", "tree"])]
    pub sparse_index: String,
    /// Sparse attention: what ranks a block: mix (half the key bound, half the mean key's logit)
    /// or bound (the Quest key bound alone). Mix is more accurate (docs/BENCHMARKS.md), scans
    /// as many bytes as bound and keeps a third more bound memory.
    #[arg(long, default_value = "mix", value_parser = ["mix", "bound"])]
    pub sparse_score: String,
    /// Sparse attention: positions per selection unit: blocks are scored, selected and attended
    /// in units of this many tokens (a divisor of --block-tokens, at least 1/64 of it; a block
    /// is read whole when any unit of it is selected). auto: the power of two of at least
    /// ctx/2048, at least 2, at most the block (2 up to 4K, 4 at 8K, whole 64-token blocks at
    /// 128K).
    #[arg(long, default_value = "auto")]
    pub sparse_unit: String,
    /// Sparse attention: what stands for the units a head does not attend: mean (each unit as
    /// one key, its mean key weighted by its positions, carrying its mean value: never more than
    /// the unit's true attention mass; no reads, two bf16 rows per unit and KV head of RAM), off
    /// (they are dropped, as Quest) or auto (mean for units of at most 2 positions — up to 4K
    /// with --sparse-unit auto — where it measured more accurate, else off; and off in the
    /// model's layer 0, whose keys carry no context yet).
    #[arg(long, default_value = "auto", value_parser = ["auto", "mean", "off"])]
    pub sparse_rest: String,
    /// Eviction policy of the RAM tier: next-use (scan resistant) or lru (baseline).
    #[arg(long, default_value = "next-use", value_parser = ["next-use", "lru"])]
    pub kv_policy: String,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write one JSON line per (step, layer) with the KV counters (docs/trace-format.md).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// Removes a directory at drop (the default disk tier directory).
pub struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Total RAM of this machine from /proc/meminfo.
pub fn machine_ram() -> Option<u64> {
    meminfo_kib("MemTotal:").map(|k| k * 1024)
}

/// The KiB value of the line starting with `key` in a /proc file (`Key:   123 kB`).
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A field of /proc/meminfo, in KiB.
pub fn meminfo_kib(key: &str) -> Option<u64> {
    proc_kib("/proc/meminfo", key)
}

/// Bytes per stored K or V value of `d` (scales aside).
pub fn bytes_per_value(d: KvDtype) -> f64 {
    match d {
        KvDtype::F32 => 4.0,
        KvDtype::F16 => 2.0,
        _ => 1.0,
    }
}

/// A field of /proc/self/status (VmHWM, VmRSS), in bytes.
pub fn self_status_bytes(key: &str) -> Option<u64> {
    proc_kib("/proc/self/status", key).map(|k| k * 1024)
}

impl CommonKv {
    /// The KV storage format when it does not depend on the budget: `--kv-dtype`, or f32 in
    /// exact mode; `None` in fast mode without `--kv-dtype` (f16 or fp8 by budget, see
    /// `model_kv` in the CLI).
    pub fn explicit_dtype(&self) -> Result<Option<KvDtype>> {
        let d = match &self.kv_dtype {
            Some(d) => d.as_str(),
            None if self.precision == "exact" => "f32",
            None => return Ok(None),
        };
        d.parse::<KvDtype>()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))
    }

    /// The KV storage format for tools without a budget rule (bench): the explicit one, else fp8.
    pub fn dtype(&self) -> Result<KvDtype> {
        Ok(self.explicit_dtype()?.unwrap_or(KvDtype::Fp8))
    }

    /// Bytes per stored K or V value of [`CommonKv::dtype`] (scales aside).
    pub fn bytes_per_value(&self) -> f64 {
        self.dtype().map_or(1.0, bytes_per_value)
    }

    /// The arithmetic of the weight products (`--precision`).
    pub fn precision(&self) -> kvspool::model::Precision {
        if self.precision == "exact" {
            kvspool::model::Precision::Exact
        } else {
            kvspool::model::Precision::Fast
        }
    }

    /// Check the options that do not need the model.
    pub fn validate(&self) -> Result<()> {
        if !(self.sparse_mass > 0.0 && self.sparse_mass <= 1.0) {
            bail!(
                "--sparse-mass {} is out of range: use a fraction in (0, 1] (0.95 is the default)",
                self.sparse_mass
            );
        }
        if self.sparse_share.is_nan() || self.sparse_share < 0.0 {
            bail!(
                "--sparse-share {} is out of range: use a factor >= 0 (inf turns sharing off; {} is the default)",
                self.sparse_share,
                kvspool::kv::tiered::DEFAULT_SHARE
            );
        }
        self.unit_tokens()?;
        if self.sparse_budget == 0 {
            bail!("--sparse-budget must be at least 1 token (4096 is the default)");
        }
        if self.block_tokens == 0 || self.block_tokens > 4096 {
            bail!(
                "--block-tokens {} is out of range: use 1..=4096 (64 is the default)",
                self.block_tokens
            );
        }
        if let Some(r) = &self.kv_ram {
            parse_size(r).with_context(|| format!("--kv-ram {r:?}"))?;
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        Ok(())
    }

    /// `--sparse-unit`: 0 for auto, else a divisor of `--block-tokens` with at most 64 units
    /// per block.
    pub fn unit_tokens(&self) -> Result<usize> {
        if self.sparse_unit == "auto" {
            return Ok(0);
        }
        let bt = self.block_tokens;
        let max = kvspool::kv::tiered::MAX_UNITS_PER_BLOCK;
        match self.sparse_unit.parse::<usize>() {
            Ok(u) if u >= 1 && u <= bt && bt.is_multiple_of(u) && bt / u <= max => Ok(u),
            _ => bail!(
                "--sparse-unit {:?} does not fit --block-tokens {bt}: use auto or a divisor of the block size, at least 1/{max} of it",
                self.sparse_unit
            ),
        }
    }

    /// The RAM budget: `--kv-ram`, else `default` (the plan's pick).
    pub fn ram_bytes(&self, default: impl FnOnce() -> u64) -> Result<u64> {
        match &self.kv_ram {
            Some(r) => parse_size(r).with_context(|| format!("--kv-ram {r:?}")),
            None => Ok(default()),
        }
    }

    /// Build the cache for `geo` in format [`CommonKv::dtype`]. `max_batch` is the largest
    /// prefill chunk.
    pub fn build(
        &self,
        geo: KvGeometry,
        ram_bytes: u64,
        fingerprint: u64,
        max_batch: usize,
    ) -> Result<(TieredKv, TempDir)> {
        self.build_with(geo, self.dtype()?, ram_bytes, fingerprint, max_batch)
    }

    /// Build the cache for `geo` in format `dtype`.
    pub fn build_with(
        &self,
        geo: KvGeometry,
        dtype: KvDtype,
        ram_bytes: u64,
        fingerprint: u64,
        max_batch: usize,
    ) -> Result<(TieredKv, TempDir)> {
        let (dir, guard) = match &self.kv_disk {
            Some(d) => (d.clone(), TempDir(None)),
            None => {
                let root = kvspool::paths::cache_dir().join("kv-tmp");
                // Directories of runs that were killed (and so could not clean up).
                if let Ok(entries) = std::fs::read_dir(&root) {
                    for e in entries.flatten() {
                        let pid = e
                            .file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("run-"))
                            .and_then(|p| p.parse::<u32>().ok());
                        if pid.is_some_and(|p| !kvspool::kv::tiered::pid_alive(p)) {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
                let d = root.join(format!("run-{}", std::process::id()));
                (d.clone(), TempDir(Some(d)))
            }
        };
        let mut cfg = TieredConfig::new(ram_bytes as usize, dir);
        cfg.dtype = dtype;
        cfg.block_tokens = self.block_tokens;
        cfg.backend = match self.kv_backend.as_str() {
            "pread" => BackendKind::Pread,
            "mmap" => BackendKind::Mmap,
            _ => BackendKind::Uring,
        };
        cfg.prefetch =
            kvspool::kv::prefetch::PrefetchMode::parse(&self.prefetch).unwrap_or_default();
        cfg.policy = if self.kv_policy == "lru" {
            PolicyKind::Lru
        } else {
            PolicyKind::NextUse
        };
        cfg.fingerprint = fingerprint;
        cfg.trace = self.trace.clone();
        cfg.max_batch = max_batch.max(1);
        if self.attention == "sparse" {
            cfg.sparse = Some(kvspool::kv::tiered::SparseConfig {
                mass: self.sparse_mass,
                budget_tokens: self.sparse_budget,
                recent_tokens: self.sparse_recent,
                group: if self.sparse_group == "sum" {
                    kvspool::kv::tiered::GroupScore::Sum
                } else {
                    kvspool::kv::tiered::GroupScore::Max
                },
                dense_layers: self.sparse_dense_layers,
                layers: self.sparse_layers,
                budget_scope: match self.sparse_budget_scope.as_str() {
                    "head" => kvspool::kv::tiered::BudgetScope::Head,
                    "union-own" => kvspool::kv::tiered::BudgetScope::UnionOwn,
                    "union" => kvspool::kv::tiered::BudgetScope::Union,
                    _ => kvspool::kv::tiered::BudgetScope::UnionOwn,
                },
                share: self.sparse_share,
                index: if self.sparse_index == "tree" {
                    kvspool::kv::tiered::SparseIndex::Tree
                } else {
                    kvspool::kv::tiered::SparseIndex::Flat
                },
                score: if self.sparse_score == "bound" {
                    kvspool::kv::tiered::SparseScore::Bound
                } else {
                    kvspool::kv::tiered::SparseScore::Mix
                },
                unit_tokens: self.unit_tokens()?,
                rest: match self.sparse_rest.as_str() {
                    "off" => kvspool::kv::tiered::SparseRest::Off,
                    "mean" => kvspool::kv::tiered::SparseRest::Mean,
                    _ => kvspool::kv::tiered::SparseRest::Auto,
                },
            });
        }
        let kv = TieredKv::new(geo, cfg)?;
        Ok((kv, guard))
    }
}

/// The `kv` object of CLI.md (plus extra fields).
pub fn kv_json(s: &KvStats) -> Value {
    json!({
        "dtype": s.dtype,
        "ram_budget_bytes": s.ram_budget_bytes,
        "ram_peak_bytes": s.ram_peak_bytes,
        "disk_bytes": s.disk_bytes,
        "blocks_read": s.blocks_read,
        "hits": s.hits,
        "prefetch_hits": s.prefetch_hits,
        "late": s.late,
        "misses": s.misses,
        "hit_rate": s.hit_rate,
        "stall_s": s.stall_s,
        "bytes_read": s.bytes_read,
        "bytes_written": s.bytes_written,
        "evictions": s.evictions,
        "write_behind_max": s.write_behind_max,
        "frame_bytes": s.frame_bytes,
        "frames": s.frames,
        "pinned_bytes": s.pinned_bytes,
        "bounds_bytes": s.bounds_bytes,
        "index_bytes": s.index_bytes,
        "policy": s.policy,
        "backend": s.backend,
        "prefetch": s.prefetch,
        "sparse": sparse_json(s),
        "prediction": prediction_json(s),
    })
}

/// How the predictors did (precision and recall per source, prefetch use, coverage, lead
/// time), over all layers.
fn prediction_json(s: &KvStats) -> Value {
    let mut t = kvspool::kv::LayerStats::default();
    for l in &s.layers {
        t.add(l);
    }
    serde_json::to_value(t.prediction()).unwrap_or(Value::Null)
}

/// Sparse-attention totals: the fraction of candidate blocks read, of (unit, KV head) pairs
/// computed (`head_blocks_fraction`; units of `unit_tokens` positions), the mean estimated mass
/// of the selections, and how many passes fell back to dense (null when no pass was sparse).
fn sparse_json(s: &KvStats) -> Value {
    let mut t = kvspool::kv::LayerStats::default();
    for l in &s.layers {
        t.add(l);
    }
    if t.sparse_candidates == 0 {
        return Value::Null;
    }
    json!({
        "blocks_read_fraction": t.sparse_selected as f64 / t.sparse_candidates as f64,
        "head_blocks_fraction": t.sparse_head_attended as f64 / t.sparse_head_candidates.max(1) as f64,
        "unit_tokens": s.unit_tokens,
        "mean_est_mass": if t.sparse_passes > 0 { t.sparse_mass_ppm as f64 / 1e6 / t.sparse_passes as f64 } else { 1.0 },
        "sparse_passes": t.sparse_passes,
        "dense_fallbacks": t.sparse_dense_fallbacks,
    })
}

/// The `--stats` table: one row per layer that read blocks, then the totals.
pub fn kv_table(s: &KvStats) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "KV: {} blocks, {} frames of {} (budget {}, peak {}, index {}), pinned {}, key bounds {}, policy {}, backend {}, prefetch {}\n",
        s.dtype,
        s.frames,
        format_size(s.frame_bytes),
        format_size(s.ram_budget_bytes),
        format_size(s.ram_peak_bytes),
        format_size(s.index_bytes),
        format_size(s.pinned_bytes),
        format_size(s.bounds_bytes),
        s.policy,
        s.backend,
        s.prefetch,
    ));
    o.push_str(&format!(
        "{:>5} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>11} {:>11} {:>9}\n",
        "layer",
        "blocks",
        "hits",
        "prefetch",
        "late",
        "misses",
        "hit%",
        "read",
        "written",
        "stall_s"
    ));
    let row = |o: &mut String, name: String, l: &kvspool::kv::LayerStats| {
        o.push_str(&format!(
            "{:>5} {:>10} {:>10} {:>10} {:>8} {:>10} {:>7.2}% {:>11} {:>11} {:>9.3}\n",
            name,
            l.blocks_read,
            l.hits,
            l.prefetch_hits,
            l.late,
            l.misses,
            l.hit_rate() * 100.0,
            format_size(l.bytes_read),
            format_size(l.bytes_written),
            l.stall_ns as f64 * 1e-9
        ));
    };
    let mut tot = kvspool::kv::LayerStats::default();
    for (i, l) in s.layers.iter().enumerate() {
        if l.blocks_read > 0 || l.bytes_written > 0 {
            row(&mut o, i.to_string(), l);
        }
        tot.add(l);
    }
    row(&mut o, "all".into(), &tot);
    o.push_str(&format!(
        "evictions {}, write-behind depth max {}\n",
        s.evictions, s.write_behind_max
    ));
    o
}

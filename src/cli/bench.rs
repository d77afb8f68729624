//! `kvspool bench decode`: fill the KV cache to N tokens with synthetic keys and values (no
//! prefill), then time decode steps through the tiered store.
//!
//! The synthetic K/V have per-channel structure like real rotated keys: every (layer, KV head,
//! channel) has its own mean and spread, with one channel in sixteen an outlier (large mean and
//! spread), and values are centred with a smaller spread. They go through the same `append`
//! path as real ones (quantized on append, sealed, written behind), so block bytes, scales,
//! key bounds and disk traffic are exactly those of a real run of the same geometry. With
//! `--model`, the weights' mapping is populated before the timed steps (as the prefill of a real
//! run would have touched them), so steps measure the steady state.
//!
//! Synthetic queries (`--geometry`): every layer has a fixed random query (N(0, 1) per value)
//! and each step adds fresh N(0, 0.5²) noise to it — decode queries of real models change slowly
//! from one token to the next, which is what the reuse predictor relies on; with `--prefetch
//! speculative|auto` and `--attention sparse`, the layer in front of each full layer sends the
//! cache an estimate of that layer's query with another N(0, 0.5²) of estimation error.
//! Synthetic keys are `topical` by default: in every full layer and KV head, one block in 64
//! (chosen by a hash) gets `12 · u` added to its keys, `u` the unit mean direction of the
//! group's fixed queries (its logits rise by ~4 over the rest: a few places matter, as for
//! retrieval heads); `--synthetic-keys random` leaves every block alike.

use super::kvopts::{kv_json, kv_table, meminfo_kib, self_status_bytes, CommonKv};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kvspool::kv::{AttnQuery, KvCache, KvGeometry};
use kvspool::model::LogitsFor;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time decode steps over a KV cache filled to --context tokens with synthetic K/V.
    Decode(DecodeArgs),
}

#[derive(Args)]
pub struct DecodeArgs {
    /// GGUF model: supplies the geometry and runs its full layer stack per step
    /// [default: the cached SmolLM2 unless --geometry is given].
    #[arg(long, short = 'm', conflicts_with = "geometry")]
    model: Option<PathBuf>,
    /// Run the attention path alone at a known model's geometry, without weights.
    #[arg(long, value_parser = ["gpt-oss-20b"])]
    geometry: Option<String>,
    /// Tokens in the cache before the timed steps.
    #[arg(long)]
    context: usize,
    /// Decode steps to time.
    #[arg(short = 'n', long = "steps", default_value_t = 8)]
    n: usize,
    /// Seed of the synthetic K/V and queries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Synthetic keys (`--geometry`): topical (one block in 64 per full layer and KV head
    /// leans towards that layer's queries, as retrieval-like heads attend to a few places) or
    /// random (no block stands out: the worst case for sparse selection and prediction).
    #[arg(long, default_value = "topical", value_parser = ["topical", "random"])]
    synthetic_keys: String,
    /// Print the per-layer KV table to stderr.
    #[arg(long)]
    stats: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kv: CommonKv,
}

pub fn main(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Decode(a) => decode(a),
    }
}

/// xorshift64* with a cheap approximately normal draw (Irwin–Hall of 4 uniforms).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let s = self.uniform() + self.uniform() + self.uniform() + self.uniform();
        (s - 2.0) * 1.732
    }
}

/// Per-channel statistics of one layer's synthetic keys and values.
struct Channels {
    k_mean: Vec<f32>,
    k_std: Vec<f32>,
    v_std: Vec<f32>,
}

impl Channels {
    fn new(rng: &mut Rng, row: usize) -> Self {
        let mut k_mean = Vec::with_capacity(row);
        let mut k_std = Vec::with_capacity(row);
        let mut v_std = Vec::with_capacity(row);
        for c in 0..row {
            let outlier = c % 16 == 5;
            k_mean.push(rng.normal() * if outlier { 4.0 } else { 0.5 });
            k_std.push(if outlier { 2.0 } else { 0.5 + rng.uniform() });
            v_std.push(0.2 + 0.6 * rng.uniform());
        }
        Channels {
            k_mean,
            k_std,
            v_std,
        }
    }

    fn sample(&self, rng: &mut Rng, k: &mut [f32], v: &mut [f32]) {
        for c in 0..k.len() {
            k[c] = self.k_mean[c] + self.k_std[c] * rng.normal();
            v[c] = self.v_std[c] * rng.normal();
        }
    }
}

fn gpt_oss_20b(n_ctx: usize) -> (KvGeometry, usize) {
    let mut g = KvGeometry::dense(24, 8, 64, n_ctx);
    for (il, w) in g.windows.iter_mut().enumerate() {
        if il % 2 == 0 {
            *w = Some(128);
        }
    }
    (g, 64)
}

fn decode(a: DecodeArgs) -> Result<()> {
    a.kv.validate()?;
    super::set_threads(a.kv.threads)?;
    if a.context == 0 {
        bail!("--context must be at least 1");
    }
    if a.n == 0 {
        bail!("-n/--steps must be at least 1");
    }
    let n_ctx = a.kv.ctx.unwrap_or(a.context + a.n).max(a.context + a.n);
    let loaded = match &a.geometry {
        Some(_) => None,
        None => {
            let path = super::model_path(&super::ModelArg {
                model: a.model.clone(),
            })?;
            Some(kvspool::model::load_with(&path, a.kv.precision())?)
        }
    };
    let (geo, n_head, fp) = match &loaded {
        None => {
            let (g, h) = gpt_oss_20b(n_ctx);
            (g, h, 0x0067_7074_2d6f_7373_u64)
        }
        Some(l) => {
            let g = l.model.kv_geometry(n_ctx);
            let h = l.config.n_head();
            (g, h, super::fingerprint(&l.file))
        }
    };
    let kv_total = {
        let full = geo.windows.iter().filter(|w| w.is_none()).count();
        (full as f64 * 2.0 * geo.row_len() as f64 * a.kv.bytes_per_value() * n_ctx as f64) as u64
    };
    // Default budget: every block of the store resident.
    let all_resident =
        kvspool::kv::tiered::budget_for_all(&geo, a.kv.block_tokens, a.kv.dtype()?) as u64;
    let ram = a.kv.ram_bytes(|| all_resident)?;
    let (mut kv, _tmp) = a.kv.build(geo.clone(), ram, fp, 512)?;
    let rss0 = self_status_bytes("VmRSS:").unwrap_or(0);

    // Fill, layer after layer (the order a dense decode pass reads).
    let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let row = geo.row_len();
    let d = geo.head_dim;
    let n_kv = geo.n_head_kv;
    let chans: Vec<Channels> = (0..geo.n_layer)
        .map(|_| Channels::new(&mut rng, row))
        .collect();
    let q_base: Vec<Vec<f32>> = (0..geo.n_layer)
        .map(|_| (0..n_head * d).map(|_| rng.normal()).collect())
        .collect();
    // Topical keys: per layer and KV head, the unit mean direction of the group's queries.
    let group = n_head / n_kv.max(1);
    let topic: Vec<Vec<f32>> = q_base
        .iter()
        .map(|qb| {
            let mut u = vec![0.0f32; row];
            for h in 0..n_kv {
                let uh = &mut u[h * d..(h + 1) * d];
                for g in 0..group {
                    let src = &qb[(h * group + g) * d..(h * group + g + 1) * d];
                    uh.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
                let norm = uh.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                uh.iter_mut().for_each(|x| *x *= 12.0 / norm);
            }
            u
        })
        .collect();
    let topical = a.synthetic_keys == "topical";
    let bt = a.kv.block_tokens.max(1);
    let planted = |layer: usize, h: usize, block: usize| {
        let mut x = (layer as u64) << 40 ^ (h as u64) << 32 ^ block as u64 ^ a.seed << 48;
        x = (x ^ (x >> 31)).wrapping_mul(0x7fb5_d329_728e_a185);
        x = (x ^ (x >> 27)).wrapping_mul(0x81da_def4_bc2d_d44d);
        (x ^ (x >> 33)).is_multiple_of(64)
    };
    let (mut k, mut v) = (vec![0.0f32; row], vec![0.0f32; row]);
    let t_fill = Instant::now();
    for (layer, ch) in chans.iter().enumerate() {
        let full = geo.windows[layer].is_none();
        for p in 0..a.context {
            ch.sample(&mut rng, &mut k, &mut v);
            if topical && full {
                for h in 0..n_kv {
                    if planted(layer, h, p / bt) {
                        let u = &topic[layer][h * d..(h + 1) * d];
                        k[h * d..(h + 1) * d]
                            .iter_mut()
                            .zip(u)
                            .for_each(|(a, b)| *a += b);
                    }
                }
            }
            kv.append(layer, &k, &v)?;
        }
    }
    let fill_s = t_fill.elapsed().as_secs_f64();
    kv.flush()?;
    kv.reset_counters();
    // A real decode follows a prefill that touched every weight: fault the mapping in now so
    // the timed steps do not pay first-touch page faults (tens of ms per step on the 20b).
    let populate_s = match &loaded {
        Some(l) => {
            let t = Instant::now();
            l.file.populate();
            t.elapsed().as_secs_f64()
        }
        None => 0.0,
    };
    let cached0 = meminfo_kib("Cached:").unwrap_or(0);

    let sinks: Vec<f32> = (0..n_head).map(|_| rng.normal()).collect();
    let mut qs: Vec<Vec<f32>> = q_base.clone();
    let mut q_est = vec![0.0f32; n_head * d];
    // Speculation's estimation error has its own stream: the data must not depend on it.
    let mut spec_rng = Rng(a.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut out = vec![0.0f32; n_head * d];
    let mut logits = Vec::new();
    let mut step_ms = Vec::with_capacity(a.n);
    let mut checksum = 0.0f64;
    let mut token = 1u32;
    let t_dec = Instant::now();
    for step in 0..a.n {
        let pos = a.context + step;
        let t = Instant::now();
        match &loaded {
            None => {
                for (q, b) in qs.iter_mut().zip(&q_base) {
                    for (x, m) in q.iter_mut().zip(b) {
                        *x = m + 0.5 * rng.normal();
                    }
                }
                let scale = 1.0 / (d as f32).sqrt();
                for (layer, ch) in chans.iter().enumerate() {
                    let next = layer + 1;
                    if next < geo.n_layer && kv.wants_speculation(next) {
                        for (e, x) in q_est.iter_mut().zip(&qs[next]) {
                            *e = x + 0.5 * spec_rng.normal();
                        }
                        let ey = AttnQuery {
                            q: &q_est,
                            n_tokens: 1,
                            pos0: pos,
                            n_head,
                            scale,
                            sinks: Some(&sinks),
                            window: geo.windows[next],
                        };
                        kv.speculate(next, &ey)?;
                    }
                    ch.sample(&mut rng, &mut k, &mut v);
                    kv.append(layer, &k, &v)?;
                    let qy = AttnQuery {
                        q: &qs[layer],
                        n_tokens: 1,
                        pos0: pos,
                        n_head,
                        scale,
                        sinks: Some(&sinks),
                        window: geo.windows[layer],
                    };
                    kv.attend(layer, &qy, &mut out)?;
                    checksum += out[0] as f64;
                }
            }
            Some(l) => {
                l.model
                    .forward(&[token], pos, &mut kv, LogitsFor::Last, &mut logits)?;
                token = logits
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map_or(0, |(i, _)| i as u32);
                checksum += logits.first().copied().unwrap_or(0.0) as f64;
            }
        }
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let decode_s = t_dec.elapsed().as_secs_f64();
    let cached1 = meminfo_kib("Cached:").unwrap_or(0);
    let stats = KvCache::stats(&kv).unwrap_or_default();
    let mut sorted = step_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let peak_rss = self_status_bytes("VmHWM:").unwrap_or(0);
    let growth = cached1.saturating_sub(cached0) * 1024;
    if a.json {
        let v = json!({
            "context": a.context,
            "steps": a.n,
            "geometry": a.geometry.clone().unwrap_or_else(|| "model".into()),
            "timings": {"fill_s": fill_s, "populate_s": populate_s, "decode_s": decode_s, "decode_tok_s": a.n as f64 / decode_s,
                        "step_ms": step_ms, "median_step_ms": median},
            "kv": kv_json(&stats),
            "kv_total_bytes": kv_total,
            "rss_before_fill_bytes": rss0,
            "peak_rss_bytes": peak_rss,
            "page_cache_growth_bytes": growth,
            "checksum": checksum,
        });
        println!("{v}");
    } else {
        println!(
            "context {} steps {}: {:.3} tok/s (median step {:.1} ms), hit rate {:.2}% ({} hits, {} prefetch, {} late, {} misses of {} blocks), stall {:.3}s, read {} ({:.2} GB/s over decode), peak RSS {}, page cache +{}",
            a.context,
            a.n,
            a.n as f64 / decode_s,
            median,
            stats.hit_rate * 100.0,
            stats.hits,
            stats.prefetch_hits,
            stats.late,
            stats.misses,
            stats.blocks_read,
            stats.stall_s,
            kvspool::units::format_size(stats.bytes_read),
            stats.bytes_read as f64 / decode_s / 1e9,
            kvspool::units::format_size(peak_rss),
            kvspool::units::format_size(growth),
        );
    }
    if a.stats {
        eprint!("{}", kv_table(&stats));
    }
    drop(kv);
    Ok(())
}

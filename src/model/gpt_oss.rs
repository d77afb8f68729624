//! The gpt-oss architecture (gpt-oss-spec.md §6): biased Q/K/V/O, NeoX RoPE with YaRN,
//! alternating sliding-window (128) and full-attention layers, attention sinks, a top-4 router
//! with softmax over the chosen four, SwiGLU-OAI experts (clamps, α = 1.702, the `+1`) with
//! biases, untied output.
//!
//! Experts are read in place from the mmapped 3-D tensors: expert `e`, output row `r` starts at
//! byte `(e·rows + r)·row_bytes` (spec §3); only the four chosen experts' rows are touched.
//!
//! Invariants: sliding layers attend with `window = sliding_window` (current + 127 previous,
//! spec §6.1e) and the KV geometry marks them sliding, so their K/V live in a RAM ring; the sink
//! of query head `h` enters the softmax raw (not scaled by `attention.scale`).

use super::{Binder, LogitsFor, Model, ModelError, Precision, Weight};
use crate::gguf::{GgmlType, GgufFile, GptOssConfig, RopeScaling, TensorInfo};
use crate::kernels::q8act::{self, Q8Acts, Q8Ref};
use crate::kernels::{self, RopeMode, RopeParams, YarnParams, YarnRounding};
use crate::kv::{AttnQuery, KvCache, KvGeometry};
use std::sync::Arc;

/// The experts of one projection: a 3-D tensor `[cols, rows, n_expert]` (ggml order).
#[derive(Debug, Clone)]
struct Experts {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    info: Option<TensorInfo>,
}

impl Experts {
    /// Ask the kernel to page in expert `e`'s bytes ahead of use (`MADV_WILLNEED`).
    fn will_need(&self, f: &GgufFile, e: usize) {
        if let Some(t) = &self.info {
            let m = self.rows * self.row_bytes;
            f.will_need(t, e * m..(e + 1) * m);
        }
    }

    /// Expert `e`'s `[rows × cols]` matrix bytes (empty for a failed bind).
    fn matrix<'f>(&self, f: &'f GgufFile, e: usize) -> &'f [u8] {
        let Some(t) = &self.info else { return &[] };
        let m = self.rows * self.row_bytes;
        &f.tensor_bytes(t)[e * m..(e + 1) * m]
    }

    /// Whether precision `p` runs this projection on 8-bit activations (`kernels::q8act`).
    fn uses_q8(&self, p: Precision) -> bool {
        p == Precision::Fast && self.info.is_some() && q8act::supports(self.ty)
    }

    /// `y = W[e] · x` (one token, f32 activations).
    fn matvec(&self, f: &GgufFile, e: usize, x: &[f32], y: &mut [f32]) {
        if self.info.is_none() {
            return;
        }
        kernels::matvec(self.ty, self.matrix(f, e), self.rows, self.cols, x, y);
    }

    /// `y = W[e] · x` with `x` already quantized to 8 bits (requires [`Experts::uses_q8`]).
    fn matvec_q8(&self, f: &GgufFile, e: usize, x: Q8Ref<'_>, y: &mut [f32]) {
        q8act::matvec_q8(self.ty, self.matrix(f, e), self.rows, self.cols, x, y);
    }

    /// `y = W[e] · x` at precision `p`; `qx` caches `x` quantized (so one quantization serves
    /// every expert and projection that shares `x`; the caller resets it when `x` changes).
    fn apply(
        &self,
        f: &GgufFile,
        p: Precision,
        e: usize,
        x: &[f32],
        qx: &mut QuantCache,
        y: &mut [f32],
    ) {
        if self.uses_q8(p) {
            if !qx.valid {
                q8act::quantize_q8(x, &mut qx.acts);
                qx.valid = true;
            }
            self.matvec_q8(f, e, qx.acts.view(), y);
        } else {
            self.matvec(f, e, x, y);
        }
    }
}

/// An activation's 8-bit quantization, made on first use ([`Experts::apply`]).
#[derive(Default)]
struct QuantCache {
    acts: Q8Acts,
    valid: bool,
}

fn bind_experts(
    b: &mut Binder<'_>,
    name: &str,
    cols: usize,
    rows: usize,
    n_expert: usize,
) -> Experts {
    let t = b.computable(name, &[cols as u64, rows as u64, n_expert as u64]);
    Experts {
        ty: t.map_or(GgmlType::F32, |t| t.ty),
        rows,
        cols,
        row_bytes: t.map_or(0, |t| t.row_bytes() as usize),
        info: t.cloned(),
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    bq: Vec<f32>,
    wk: Weight,
    bk: Vec<f32>,
    wv: Weight,
    bv: Vec<f32>,
    wo: Weight,
    bo: Vec<f32>,
    sinks: Vec<f32>,
    post_norm: Vec<f32>,
    router: Weight,
    router_b: Vec<f32>,
    gate: Experts,
    gate_b: Vec<f32>,
    up: Experts,
    up_b: Vec<f32>,
    down: Experts,
    down_b: Vec<f32>,
    rope: RopeParams,
    window: Option<usize>,
}

/// When to `madvise(WILLNEED)` the chosen experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdviseExperts {
    Always,
    Never,
    /// After a forward pass that took major page faults.
    OnMajorFaults,
}

/// Major page faults of this process so far (`/proc/self/stat` field 12), 0 if unreadable.
fn major_faults() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The command name (field 2) is in parentheses and may contain spaces: count after it.
    s.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(9))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A gpt-oss model bound to a GGUF file.
pub struct GptOss {
    file: Arc<GgufFile>,
    cfg: GptOssConfig,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    precision: Precision,
    /// `madvise(WILLNEED)` the chosen experts' ranges before use, in forward passes that follow
    /// one during which the process took major page faults (weights being read from disk).
    /// With the weights in the page cache the advice is pure cost (measured: +20% per decode
    /// step on the 20b, docs/BENCHMARKS.md), so it is skipped then. KVSPOOL_WILLNEED=always|never
    /// overrides.
    advise: AdviseExperts,
    /// Major faults of the process when the previous forward pass started.
    last_majflt: std::sync::atomic::AtomicU64,
}

impl GptOss {
    /// Bind the weights of `file` (parsed into `cfg`). `rounding` chooses the YaRN correction
    /// range: [`YarnRounding::Reference`] (the model's training-time reference, the default) or
    /// [`YarnRounding::LlamaCpp`] (floor/ceil, `--rope-compat llamacpp`).
    pub fn new(
        file: Arc<GgufFile>,
        cfg: GptOssConfig,
        precision: Precision,
        rounding: YarnRounding,
    ) -> Result<GptOss, ModelError> {
        let mut b = Binder::new(&file);
        let (e, d, v) = (cfg.n_embd, cfg.head_dim, cfg.n_vocab);
        let (nq, nkv) = (cfg.n_head * d, cfg.n_head_kv * d);
        let (ne, ff) = (cfg.n_expert, cfg.n_ff_exp);
        let tok_embd = b.matrix("token_embd.weight", e, v);
        let out_norm = b.vector("output_norm.weight", e);
        let output = b.matrix("output.weight", e, v);
        let yarn = match cfg.rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_context_length,
                beta_fast,
                beta_slow,
                attn_factor,
            } => Some(YarnParams {
                factor,
                original_ctx: original_context_length,
                beta_fast,
                beta_slow,
                ext_factor: 1.0,
                attn_factor,
                rounding,
            }),
            RopeScaling::None => None,
            RopeScaling::Linear { .. } => {
                return Err(ModelError::Unsupported(
                    "gpt-oss with linear RoPE scaling".into(),
                ))
            }
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let sliding = cfg.is_sliding(il);
            layers.push(Layer {
                attn_norm: b.vector(&n("attn_norm.weight"), e),
                wq: b.matrix(&n("attn_q.weight"), e, nq),
                bq: b.vector(&n("attn_q.bias"), nq),
                wk: b.matrix(&n("attn_k.weight"), e, nkv),
                bk: b.vector(&n("attn_k.bias"), nkv),
                wv: b.matrix(&n("attn_v.weight"), e, nkv),
                bv: b.vector(&n("attn_v.bias"), nkv),
                wo: b.matrix(&n("attn_output.weight"), nq, e),
                bo: b.vector(&n("attn_output.bias"), e),
                sinks: b.vector(&n("attn_sinks.weight"), cfg.n_head),
                post_norm: b.vector(&n("post_attention_norm.weight"), e),
                router: b.matrix(&n("ffn_gate_inp.weight"), e, ne),
                router_b: b.vector(&n("ffn_gate_inp.bias"), ne),
                gate: bind_experts(&mut b, &n("ffn_gate_exps.weight"), e, ff, ne),
                gate_b: b.values(&n("ffn_gate_exps.bias"), &[ff as u64, ne as u64]),
                up: bind_experts(&mut b, &n("ffn_up_exps.weight"), e, ff, ne),
                up_b: b.values(&n("ffn_up_exps.bias"), &[ff as u64, ne as u64]),
                down: bind_experts(&mut b, &n("ffn_down_exps.weight"), ff, e, ne),
                down_b: b.values(&n("ffn_down_exps.bias"), &[e as u64, ne as u64]),
                rope: RopeParams {
                    n_dims: cfg.rope_dim,
                    freq_base: if sliding {
                        cfg.rope_freq_base_swa
                    } else {
                        cfg.rope_freq_base
                    },
                    mode: RopeMode::Neox,
                    yarn,
                },
                window: sliding.then_some(cfg.sliding_window),
            });
        }
        b.finish()?;
        Ok(GptOss {
            file,
            cfg,
            tok_embd,
            layers,
            out_norm,
            output,
            precision,
            advise: match std::env::var("KVSPOOL_WILLNEED").as_deref() {
                Ok("always") => AdviseExperts::Always,
                Ok("never") => AdviseExperts::Never,
                _ => AdviseExperts::OnMajorFaults,
            },
            last_majflt: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GptOssConfig {
        &self.cfg
    }

    /// The MoE block for one token (spec §6.1g): `t` is the normed input; adds into `out`.
    fn moe(&self, l: &Layer, t: &[f32], out: &mut [f32], advise: bool) {
        let c = &self.cfg;
        let f = &*self.file;
        let (e, ff) = (c.n_embd, c.n_ff_exp);
        let mut z = vec![0.0f32; c.n_expert];
        l.router.matmul(f, Precision::Exact, t, 1, &mut z);
        z.iter_mut().zip(&l.router_b).for_each(|(a, b)| *a += b);
        // Top-k, descending; ties go to the lower expert index (stable sort).
        let mut order: Vec<usize> = (0..c.n_expert).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        let chosen = &order[..c.n_expert_used];
        if advise {
            // Page in all chosen experts' bytes now, so that on a machine where the weights do
            // not stay cached the kernel reads the later experts while the first computes.
            for &x in chosen {
                l.gate.will_need(f, x);
                l.up.will_need(f, x);
                l.down.will_need(f, x);
            }
        }
        let zmax = z[chosen[0]];
        let ws: Vec<f32> = chosen.iter().map(|&x| (z[x] - zmax).exp()).collect();
        let wsum: f32 = ws.iter().sum();
        let p = self.precision;
        let swiglu = |g: &mut [f32], u: &[f32], x: usize| {
            let (gb, ub) = (
                &l.gate_b[x * ff..(x + 1) * ff],
                &l.up_b[x * ff..(x + 1) * ff],
            );
            for j in 0..ff {
                let gj = (g[j] + gb[j]).min(c.swiglu_limit);
                let uj = (u[j] + ub[j]).clamp(-c.swiglu_limit, c.swiglu_limit);
                g[j] = gj / (1.0 + (-c.swiglu_alpha * gj).exp()) * (uj + 1.0);
            }
        };
        let k = chosen.len();
        if l.gate.uses_q8(p) && l.up.uses_q8(p) && l.down.uses_q8(p) {
            // Fast precision: `t` is quantized once for the gate and up projections of every
            // chosen expert, and all 2k of them run in one parallel region; then the k down
            // projections (each on its own quantized input) in another. Same rows, same dots as
            // one mat-vec at a time, two fork-joins instead of 3k.
            let mut qt = q8act::Q8Acts::default();
            q8act::quantize_q8(t, &mut qt);
            let mut g = vec![0.0f32; k * ff];
            let mut u = vec![0.0f32; k * ff];
            let mut jobs = Vec::with_capacity(2 * k);
            for ((&x, gx), ux) in chosen.iter().zip(g.chunks_mut(ff)).zip(u.chunks_mut(ff)) {
                for (m, out) in [(&l.gate, gx), (&l.up, ux)] {
                    jobs.push(q8act::Q8Job {
                        ty: m.ty,
                        w: m.matrix(f, x),
                        rows: ff,
                        cols: e,
                        y: qt.view(),
                        out,
                    });
                }
            }
            q8act::matvec_q8_multi(jobs);
            let mut qg: Vec<q8act::Q8Acts> = Vec::with_capacity(k);
            for ((&x, gx), ux) in chosen.iter().zip(g.chunks_mut(ff)).zip(u.chunks(ff)) {
                swiglu(gx, ux, x);
                let mut q = q8act::Q8Acts::default();
                q8act::quantize_q8(gx, &mut q);
                qg.push(q);
            }
            let mut y = vec![0.0f32; k * e];
            let jobs = chosen
                .iter()
                .zip(&qg)
                .zip(y.chunks_mut(e))
                .map(|((&x, q), out)| q8act::Q8Job {
                    ty: l.down.ty,
                    w: l.down.matrix(f, x),
                    rows: e,
                    cols: ff,
                    y: q.view(),
                    out,
                })
                .collect();
            q8act::matvec_q8_multi(jobs);
            for ((&x, &w), yx) in chosen.iter().zip(&ws).zip(y.chunks(e)) {
                let db = &l.down_b[x * e..(x + 1) * e];
                let wk = w / wsum;
                for j in 0..e {
                    out[j] += wk * (yx[j] + db[j]);
                }
            }
            return;
        }
        let (mut g, mut u, mut y) = (vec![0.0f32; ff], vec![0.0f32; ff], vec![0.0f32; e]);
        let (mut qt, mut qg) = (QuantCache::default(), QuantCache::default());
        for (&x, &w) in chosen.iter().zip(&ws) {
            l.gate.apply(f, p, x, t, &mut qt, &mut g);
            l.up.apply(f, p, x, t, &mut qt, &mut u);
            swiglu(&mut g, &u, x);
            qg.valid = false;
            l.down.apply(f, p, x, &g, &mut qg, &mut y);
            let db = &l.down_b[x * e..(x + 1) * e];
            let wk = w / wsum;
            for j in 0..e {
                out[j] += wk * (y[j] + db[j]);
            }
        }
    }
}

impl Model for GptOss {
    fn kv_geometry(&self, n_ctx: usize) -> KvGeometry {
        let c = &self.cfg;
        let mut g = KvGeometry::dense(c.n_layer, c.n_head_kv, c.head_dim, n_ctx);
        for (w, l) in g.windows.iter_mut().zip(&self.layers) {
            *w = l.window;
        }
        g
    }

    fn n_vocab(&self) -> usize {
        self.cfg.n_vocab
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn forward(
        &self,
        tokens: &[u32],
        pos0: usize,
        kv: &mut dyn KvCache,
        want: LogitsFor,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let c = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            logits.clear();
            return Ok(());
        }
        let (e, d) = (c.n_embd, c.head_dim);
        let (nq, nkv) = (c.n_head * d, c.n_head_kv * d);
        let f = &*self.file;
        let p = self.precision;
        let advise = match self.advise {
            AdviseExperts::Always => true,
            AdviseExperts::Never => false,
            AdviseExperts::OnMajorFaults => {
                let now = major_faults();
                let prev = self
                    .last_majflt
                    .swap(now, std::sync::atomic::Ordering::Relaxed);
                now > prev
            }
        };
        let mut x = super::embed(f, &self.tok_embd, tokens, c.n_vocab)?;
        let mut xn = vec![0.0f32; n * e];
        let mut q = vec![0.0f32; n * nq];
        let mut k = vec![0.0f32; n * nkv];
        let mut v = vec![0.0f32; n * nkv];
        let mut att = vec![0.0f32; n * nq];
        let mut tmp = vec![0.0f32; n * e];
        let add_bias = |y: &mut [f32], b: &[f32]| {
            for row in y.chunks_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        };
        for (il, l) in self.layers.iter().enumerate() {
            if n == 1 && il + 1 < self.layers.len() && kv.wants_speculation(il + 1) {
                // Speculative prefetch: every full layer has a sliding layer in front of it;
                // estimate the full layer's query from the sliding layer's input and let its
                // blocks load while the sliding layer (attention in RAM, MoE) computes.
                let nl = &self.layers[il + 1];
                super::rmsnorm_rows(&x, &nl.attn_norm, c.rms_eps, &mut xn);
                nl.wq.matmul(f, p, &xn, 1, &mut q);
                add_bias(&mut q, &nl.bq);
                kernels::rope_inplace(&nl.rope, &mut q, d, pos0);
                let qy = AttnQuery {
                    q: &q,
                    n_tokens: 1,
                    pos0,
                    n_head: c.n_head,
                    scale: c.attention_scale,
                    sinks: Some(&nl.sinks),
                    window: nl.window,
                };
                kv.speculate(il + 1, &qy)?;
            }
            super::rmsnorm_rows(&x, &l.attn_norm, c.rms_eps, &mut xn);
            l.wq.matmul(f, p, &xn, n, &mut q);
            l.wk.matmul(f, p, &xn, n, &mut k);
            l.wv.matmul(f, p, &xn, n, &mut v);
            add_bias(&mut q, &l.bq);
            add_bias(&mut k, &l.bk);
            add_bias(&mut v, &l.bv);
            for t in 0..n {
                kernels::rope_inplace(&l.rope, &mut q[t * nq..(t + 1) * nq], d, pos0 + t);
                kernels::rope_inplace(&l.rope, &mut k[t * nkv..(t + 1) * nkv], d, pos0 + t);
                kv.append(il, &k[t * nkv..(t + 1) * nkv], &v[t * nkv..(t + 1) * nkv])?;
            }
            let qy = AttnQuery {
                q: &q,
                n_tokens: n,
                pos0,
                n_head: c.n_head,
                scale: c.attention_scale,
                sinks: Some(&l.sinks),
                window: l.window,
            };
            kv.attend(il, &qy, &mut att)?;
            l.wo.matmul(f, p, &att, n, &mut tmp);
            add_bias(&mut tmp, &l.bo);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
            super::rmsnorm_rows(&x, &l.post_norm, c.rms_eps, &mut xn);
            tmp.iter_mut().for_each(|a| *a = 0.0);
            for t in 0..n {
                self.moe(
                    l,
                    &xn[t * e..(t + 1) * e],
                    &mut tmp[t * e..(t + 1) * e],
                    advise,
                );
            }
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        }
        super::head(
            f,
            p,
            &x,
            n,
            &self.out_norm,
            c.rms_eps,
            &self.output,
            want,
            logits,
        );
        Ok(())
    }
}

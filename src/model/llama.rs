//! The llama architecture (SmolLM2, Llama 2/3, ...): RMSNorm, grouped-query attention with RoPE
//! (ggml "normal" pairing: the GGUF converter permutes Q/K rows for it), SwiGLU MLP, tied or
//! untied output projection.
//!
//! Weights are bound once to the mmapped tensors (shape and type checked at bind time, every
//! problem collected into one error) and read in place; nothing is copied or dequantized ahead.

use super::{LogitsFor, Model, ModelError, Precision, Weight};
use crate::gguf::{GgufFile, LlamaConfig};
use crate::kernels::{self, RopeMode, RopeParams};
use crate::kv::{AttnQuery, KvCache, KvGeometry};
use std::sync::Arc;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

/// A llama-architecture model bound to a GGUF file.
pub struct Llama {
    file: Arc<GgufFile>,
    cfg: LlamaConfig,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    rope: RopeParams,
    precision: Precision,
}

impl Llama {
    /// Bind the weights of `file` (already parsed into `cfg`).
    pub fn new(
        file: Arc<GgufFile>,
        cfg: LlamaConfig,
        precision: Precision,
    ) -> Result<Llama, ModelError> {
        let mut b = super::Binder::new(&file);
        let (e, d, f, v) = (cfg.n_embd, cfg.head_dim, cfg.n_ff, cfg.n_vocab);
        let tok_embd = b.matrix("token_embd.weight", e, v);
        let out_norm = b.vector("output_norm.weight", e);
        let output = if file.tensor("output.weight").is_some() {
            b.matrix("output.weight", e, v)
        } else {
            tok_embd.clone()
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: b.vector(&n("attn_norm"), e),
                wq: b.matrix(&n("attn_q"), e, cfg.n_head * d),
                wk: b.matrix(&n("attn_k"), e, cfg.n_head_kv * d),
                wv: b.matrix(&n("attn_v"), e, cfg.n_head_kv * d),
                wo: b.matrix(&n("attn_output"), cfg.n_head * d, e),
                ffn_norm: b.vector(&n("ffn_norm"), e),
                w_gate: b.matrix(&n("ffn_gate"), e, f),
                w_up: b.matrix(&n("ffn_up"), e, f),
                w_down: b.matrix(&n("ffn_down"), f, e),
            });
        }
        b.finish()?;
        if let crate::gguf::RopeScaling::Linear { .. } = cfg.rope_scaling {
            return Err(ModelError::Unsupported(
                "llama with linear RoPE scaling (rope.scaling.type = linear)".into(),
            ));
        }
        let rope = RopeParams {
            n_dims: cfg.rope_dim,
            freq_base: cfg.rope_freq_base,
            mode: RopeMode::Normal,
            yarn: None,
        };
        Ok(Llama {
            file,
            cfg,
            tok_embd,
            layers,
            out_norm,
            output,
            rope,
            precision,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

impl Model for Llama {
    fn kv_geometry(&self, n_ctx: usize) -> KvGeometry {
        KvGeometry::dense(
            self.cfg.n_layer,
            self.cfg.n_head_kv,
            self.cfg.head_dim,
            n_ctx,
        )
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

        let mut x = super::embed(f, &self.tok_embd, tokens, c.n_vocab)?;

        let mut xn = vec![0.0f32; n * e];
        let mut q = vec![0.0f32; n * nq];
        let mut k = vec![0.0f32; n * nkv];
        let mut v = vec![0.0f32; n * nkv];
        let mut att = vec![0.0f32; n * nq];
        let mut tmp = vec![0.0f32; n * e];
        let mut gate = vec![0.0f32; n * c.n_ff];
        let mut up = vec![0.0f32; n * c.n_ff];
        let scale = 1.0 / (d as f32).sqrt();
        // One token with exact arithmetic: run the products that share an input in one
        // parallel region (bit-identical to separate mat-vecs).
        let fuse = n == 1 && self.precision == Precision::Exact;

        for (il, l) in self.layers.iter().enumerate() {
            if n == 1 && il + 1 < self.layers.len() && kv.wants_speculation(il + 1) {
                // Speculative prefetch: the next layer's query estimated from this layer's
                // input (the residual stream changes little per layer); its blocks load while
                // this layer computes.
                let nl = &self.layers[il + 1];
                super::rmsnorm_rows(&x, &nl.attn_norm, c.rms_eps, &mut xn);
                nl.wq.matmul(f, self.precision, &xn, 1, &mut q);
                kernels::rope_inplace(&self.rope, &mut q, d, pos0);
                let qy = AttnQuery {
                    q: &q,
                    n_tokens: 1,
                    pos0,
                    n_head: c.n_head,
                    scale,
                    sinks: None,
                    window: None,
                };
                kv.speculate(il + 1, &qy)?;
            }
            super::rmsnorm_rows(&x, &l.attn_norm, c.rms_eps, &mut xn);
            if fuse {
                super::matvec_fused(
                    f,
                    &xn,
                    vec![(&l.wq, &mut q), (&l.wk, &mut k), (&l.wv, &mut v)],
                );
            } else {
                l.wq.matmul(f, self.precision, &xn, n, &mut q);
                l.wk.matmul(f, self.precision, &xn, n, &mut k);
                l.wv.matmul(f, self.precision, &xn, n, &mut v);
            }
            for t in 0..n {
                kernels::rope_inplace(&self.rope, &mut q[t * nq..(t + 1) * nq], d, pos0 + t);
                kernels::rope_inplace(&self.rope, &mut k[t * nkv..(t + 1) * nkv], d, pos0 + t);
                kv.append(il, &k[t * nkv..(t + 1) * nkv], &v[t * nkv..(t + 1) * nkv])?;
            }
            let qy = AttnQuery {
                q: &q,
                n_tokens: n,
                pos0,
                n_head: c.n_head,
                scale,
                sinks: None,
                window: None,
            };
            kv.attend(il, &qy, &mut att)?;
            l.wo.matmul(f, self.precision, &att, n, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);

            super::rmsnorm_rows(&x, &l.ffn_norm, c.rms_eps, &mut xn);
            if fuse {
                super::matvec_fused(f, &xn, vec![(&l.w_gate, &mut gate), (&l.w_up, &mut up)]);
            } else {
                l.w_gate.matmul(f, self.precision, &xn, n, &mut gate);
                l.w_up.matmul(f, self.precision, &xn, n, &mut up);
            }
            kernels::swiglu_inplace(&mut gate, &up);
            l.w_down.matmul(f, self.precision, &gate, n, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        }

        super::head(
            f,
            self.precision,
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

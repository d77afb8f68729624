//! The KV cache interface the models talk to, and the plain in-RAM implementation.
//!
//! A model never owns KV memory: for every layer it calls [`KvCache::append`] with the rotated
//! keys and the values of each new position, then [`KvCache::attend`] with the queries of those
//! positions. The cache decides where K/V live (RAM, disk tiers) and runs the attention kernel
//! over them, so a tiered cache replaces [`RamKv`] without touching model code.
//!
//! Invariants every implementation keeps:
//! - positions of a layer are appended in order `0, 1, 2, ...`; `len(layer)` is the next one;
//! - `attend` for query token `t` of a batch starting at `pos0` sees exactly the positions
//!   `max(0, p - window + 1) ..= p` with `p = pos0 + t` (causal; `window` only for sliding layers),
//!   all of which must already be appended;
//! - results depend only on the stored values, never on where they are stored.

pub mod disk;
pub mod format;
pub mod policy;

use crate::kernels::attention::AttnState;
use rayon::prelude::*;

/// Shape of the KV cache a model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvGeometry {
    /// Number of layers (all of them, including sliding-window ones).
    pub n_layer: usize,
    /// KV heads per layer.
    pub n_head_kv: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Maximum number of positions (the context size).
    pub n_ctx: usize,
}

impl KvGeometry {
    /// Values of K (or V) per position per layer.
    pub fn row_len(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Errors of the KV cache.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The context is full.
    #[error(
        "context is full: {n_ctx} tokens; pass a larger --ctx (up to the model's context length)"
    )]
    ContextFull {
        /// The context size.
        n_ctx: usize,
    },
    /// A caller broke the interface contract (a bug, reported instead of panicking).
    #[error("KV cache misuse: {0}")]
    Contract(String),
}

/// One attention call: the queries of `n_tokens` consecutive positions starting at `pos0`.
#[derive(Debug, Clone, Copy)]
pub struct AttnQuery<'a> {
    /// `n_tokens × n_head × head_dim` rotated queries.
    pub q: &'a [f32],
    /// Number of query positions.
    pub n_tokens: usize,
    /// Position of the first query.
    pub pos0: usize,
    /// Query heads (a multiple of the KV heads: grouped-query attention).
    pub n_head: usize,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Per-query-head sink logits (gpt-oss), if any.
    pub sinks: Option<&'a [f32]>,
    /// Sliding window in positions, if the layer is a sliding-window layer.
    pub window: Option<usize>,
}

/// The interface between models and KV storage.
pub trait KvCache: Send {
    /// The geometry this cache was built for.
    fn geometry(&self) -> &KvGeometry;
    /// Positions stored for `layer`.
    fn len(&self, layer: usize) -> usize;
    /// Whether no position is stored for any layer.
    fn is_empty(&self) -> bool {
        self.len(0) == 0
    }
    /// Append the K and V rows (`n_head_kv × head_dim` each) of the next position of `layer`.
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), KvError>;
    /// Attention of `query` over the stored positions of `layer`; writes
    /// `n_tokens × n_head × head_dim` outputs to `out`.
    fn attend(
        &mut self,
        layer: usize,
        query: &AttnQuery<'_>,
        out: &mut [f32],
    ) -> Result<(), KvError>;
    /// Drop every position `>= n` of every layer (used to rewind or reset a sequence).
    fn truncate(&mut self, n: usize);
}

/// The plain in-RAM KV cache: f32 rows, one growing buffer per layer.
#[derive(Debug)]
pub struct RamKv {
    geo: KvGeometry,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl RamKv {
    /// An empty cache.
    pub fn new(geo: KvGeometry) -> Self {
        RamKv {
            k: vec![Vec::new(); geo.n_layer],
            v: vec![Vec::new(); geo.n_layer],
            geo,
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|x| x.len() * 4).sum()
    }
}

impl KvCache for RamKv {
    fn geometry(&self) -> &KvGeometry {
        &self.geo
    }

    fn len(&self, layer: usize) -> usize {
        self.k
            .get(layer)
            .map_or(0, |k| k.len() / self.geo.row_len())
    }

    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        let row = self.geo.row_len();
        if layer >= self.geo.n_layer || k.len() != row || v.len() != row {
            return Err(KvError::Contract(format!(
                "append to layer {layer} with rows of {}/{} values (expected layer < {} and {row})",
                k.len(),
                v.len(),
                self.geo.n_layer
            )));
        }
        if self.len(layer) >= self.geo.n_ctx {
            return Err(KvError::ContextFull {
                n_ctx: self.geo.n_ctx,
            });
        }
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
        Ok(())
    }

    fn attend(&mut self, layer: usize, qy: &AttnQuery<'_>, out: &mut [f32]) -> Result<(), KvError> {
        let d = self.geo.head_dim;
        let n_kv = self.geo.n_head_kv;
        let row = self.geo.row_len();
        let stored = self.len(layer);
        let bad = layer >= self.geo.n_layer
            || qy.n_head == 0
            || !qy.n_head.is_multiple_of(n_kv)
            || qy.q.len() != qy.n_tokens * qy.n_head * d
            || out.len() != qy.q.len()
            || qy.pos0 + qy.n_tokens > stored
            || qy.sinks.is_some_and(|s| s.len() != qy.n_head);
        if bad {
            return Err(KvError::Contract(format!(
                "attend on layer {layer}: {} queries at {} with {} heads, {stored} stored",
                qy.n_tokens, qy.pos0, qy.n_head
            )));
        }
        let group = qy.n_head / n_kv;
        let (keys, values) = (&self.k[layer], &self.v[layer]);
        const CHUNK: usize = 256;
        out.par_chunks_mut(d).enumerate().for_each_init(
            || (AttnState::new(d), vec![0.0f32; CHUNK]),
            |(st, scores), (i, o)| {
                let (t, h) = (i / qy.n_head, i % qy.n_head);
                let p = qy.pos0 + t;
                let lo = qy.window.map_or(0, |w| (p + 1).saturating_sub(w));
                let kvh = h / group;
                let q = &qy.q[i * d..(i + 1) * d];
                st.reset();
                if let Some(s) = qy.sinks {
                    st.add_sink(s[h]);
                }
                let mut j = lo;
                while j <= p {
                    let c = CHUNK.min(p + 1 - j);
                    let off = j * row + kvh * d;
                    st.add_chunk_f32(q, &keys[off..], &values[off..], c, row, qy.scale, scores);
                    j += c;
                }
                st.finish(o);
            },
        );
        Ok(())
    }

    fn truncate(&mut self, n: usize) {
        let row = self.geo.row_len();
        for x in self.k.iter_mut().chain(self.v.iter_mut()) {
            x.truncate(n * row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::attend_reference;

    #[test]
    fn ram_kv_gqa_causal_and_window_match_reference() {
        let geo = KvGeometry {
            n_layer: 2,
            n_head_kv: 2,
            head_dim: 8,
            n_ctx: 64,
        };
        let mut kv = RamKv::new(geo.clone());
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let n = 10;
        let ks: Vec<f32> = (0..n * 16).map(|_| rnd()).collect();
        let vs: Vec<f32> = (0..n * 16).map(|_| rnd()).collect();
        for t in 0..n {
            kv.append(1, &ks[t * 16..(t + 1) * 16], &vs[t * 16..(t + 1) * 16])
                .unwrap();
        }
        assert_eq!(kv.len(1), n);
        assert!(kv.append(2, &ks[..16], &vs[..16]).is_err());
        let n_head = 4;
        let q: Vec<f32> = (0..3 * n_head * 8).map(|_| rnd()).collect();
        for window in [None, Some(4)] {
            let sinks = [0.5f32, -1.0, 2.0, 0.0];
            let qy = AttnQuery {
                q: &q,
                n_tokens: 3,
                pos0: 7,
                n_head,
                scale: 0.3,
                sinks: Some(&sinks),
                window,
            };
            let mut out = vec![0.0; q.len()];
            kv.attend(1, &qy, &mut out).unwrap();
            for t in 0..3 {
                for h in 0..n_head {
                    let p: usize = 7 + t;
                    let lo = window.map_or(0, |w: usize| (p + 1).saturating_sub(w));
                    let kvh = h / 2;
                    let mut want = vec![0.0; 8];
                    let off = lo * 16 + kvh * 8;
                    let qs = &q[(t * n_head + h) * 8..][..8];
                    attend_reference(
                        qs,
                        &ks[off..],
                        &vs[off..],
                        p + 1 - lo,
                        16,
                        0.3,
                        Some(sinks[h]),
                        &mut want,
                    );
                    let got = &out[(t * n_head + h) * 8..][..8];
                    for j in 0..8 {
                        assert!((got[j] - want[j]).abs() < 1e-5);
                    }
                }
            }
        }
        // Queries beyond what is stored are rejected, not read out of bounds.
        let qy = AttnQuery {
            q: &q,
            n_tokens: 3,
            pos0: 8,
            n_head,
            scale: 0.3,
            sinks: None,
            window: None,
        };
        let mut out = vec![0.0; q.len()];
        assert!(kv.attend(1, &qy, &mut out).is_err());
        kv.truncate(4);
        assert_eq!(kv.len(1), 4);
    }

    #[test]
    fn long_context_windows_and_sinks_match_the_reference() {
        // Thousands of positions (many 256-position chunks), GQA 3:1, sinks, and windows that
        // start mid-chunk: the online softmax equals the two-pass reference.
        let geo = KvGeometry {
            n_layer: 1,
            n_head_kv: 2,
            head_dim: 16,
            n_ctx: 3000,
        };
        let mut kv = RamKv::new(geo);
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let n = 2600;
        let ks: Vec<f32> = (0..n * 32).map(|_| rnd() * 2.0).collect();
        let vs: Vec<f32> = (0..n * 32).map(|_| rnd()).collect();
        for t in 0..n {
            kv.append(0, &ks[t * 32..(t + 1) * 32], &vs[t * 32..(t + 1) * 32])
                .unwrap();
        }
        let n_head = 6;
        let q: Vec<f32> = (0..2 * n_head * 16).map(|_| rnd()).collect();
        let sinks = [0.1f32, 1.0, -0.5, 2.0, 0.0, 0.3];
        for window in [None, Some(1500), Some(100)] {
            let qy = AttnQuery {
                q: &q,
                n_tokens: 2,
                pos0: n - 2,
                n_head,
                scale: 0.25,
                sinks: Some(&sinks),
                window,
            };
            let mut out = vec![0.0; q.len()];
            kv.attend(0, &qy, &mut out).unwrap();
            for t in 0..2 {
                for h in 0..n_head {
                    let p: usize = n - 2 + t;
                    let lo = window.map_or(0, |w: usize| (p + 1).saturating_sub(w));
                    let off = lo * 32 + (h / 3) * 16;
                    let mut want = vec![0.0; 16];
                    let qs = &q[(t * n_head + h) * 16..][..16];
                    attend_reference(
                        qs,
                        &ks[off..],
                        &vs[off..],
                        p + 1 - lo,
                        32,
                        0.25,
                        Some(sinks[h]),
                        &mut want,
                    );
                    let got = &out[(t * n_head + h) * 16..][..16];
                    for j in 0..16 {
                        assert!(
                            (got[j] - want[j]).abs() < 1e-5,
                            "window {window:?} t {t} h {h}"
                        );
                    }
                }
            }
        }
    }
}

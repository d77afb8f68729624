//! The KV cache interface the models talk to, and its implementation, the tiered store.
//!
//! A model never owns KV memory: for every layer it calls [`KvCache::append`] with the rotated
//! keys and the values of each new position, then [`KvCache::attend`] with the queries of those
//! positions. The cache decides where K/V live (RAM tier, disk tier, sliding-window rings) and
//! runs the attention kernel over them ([`tiered::TieredKv`]).
//!
//! Invariants every implementation keeps:
//! - positions of a layer are appended in order `0, 1, 2, ...`; `len(layer)` is the next one;
//! - `attend` for query token `t` of a batch starting at `pos0` sees exactly the positions
//!   `max(0, p - window + 1) ..= p` with `p = pos0 + t` (causal; `window` only for sliding layers),
//!   all of which must already be appended;
//! - results depend only on the stored values, never on where they are stored.

pub mod disk;
pub mod format;
pub mod io;
pub mod policy;
pub mod prefetch;
pub mod rest;
pub(crate) mod select;
pub mod tiered;

pub use tiered::{KvStats, LayerStats, PolicyKind, TieredConfig, TieredKv};

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
    /// Per layer: `Some(w)` for a sliding-window layer (kept in a RAM ring of the last `w`
    /// positions, never on disk), `None` for a full-attention layer (the tiered store).
    pub windows: Vec<Option<usize>>,
}

impl KvGeometry {
    /// A geometry whose layers all use full attention.
    pub fn dense(n_layer: usize, n_head_kv: usize, head_dim: usize, n_ctx: usize) -> Self {
        KvGeometry {
            n_layer,
            n_head_kv,
            head_dim,
            n_ctx,
            windows: vec![None; n_layer],
        }
    }

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
    /// A KV option is out of range.
    #[error("{0}")]
    Config(String),
    /// The disk tier failed.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// An earlier failure left the cache unusable (the message says what failed).
    #[error("KV cache failed: {0}")]
    Failed(String),
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
    /// Whether [`Self::speculate`] on `layer` would be used (lets a model skip estimating a
    /// query nobody reads). Default: no.
    fn wants_speculation(&self, _layer: usize) -> bool {
        false
    }
    /// An *estimate* of the query `layer` will attend with next (one token, made from an earlier
    /// hidden state): the cache may start reading the blocks that query would select. Never
    /// changes a result; errors only report a broken cache. Default: ignored.
    fn speculate(&mut self, _layer: usize, _query: &AttnQuery<'_>) -> Result<(), KvError> {
        Ok(())
    }
    /// Drop every position `>= n` of every layer (used to rewind or reset a sequence).
    fn truncate(&mut self, n: usize);
    /// Counters and sizes, if the implementation keeps them.
    fn stats(&self) -> Option<KvStats> {
        None
    }
}

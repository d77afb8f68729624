//! The tiered KV cache: quantized blocks in a bounded RAM tier, everything sealed also on disk.
//!
//! # Data flow
//!
//! - **append**: a position's K/V rows are encoded ([`encode_token`]) into the layer's *tail*
//!   buffer, a slot-sized aligned buffer outside the RAM budget (one per layer: "pinned
//!   frames"), and, in a layer sparse attention applies to, the tail's key bounds are widened
//!   (other layers keep no bounds). When the tail is full the block is
//!   *sealed*: a full-attention layer moves the buffer into an arena frame without a copy
//!   ([`FrameArena::swap`]), marks it `WriteInFlight` and hands a shared handle to the I/O thread
//!   (write-behind); the frame becomes evictable only when the write completed. A
//!   sliding-window layer pushes the block onto its RAM ring instead; rings never touch the disk.
//! - **attend**: the blocks a query batch can see are visited in position order, a chunk at a
//!   time. A chunk's store blocks are pinned: resident ones are hits (or prefetch hits, or
//!   *late* if their prefetch is still in flight), the others are demand misses read in one
//!   batch through the I/O thread into frames the policy frees (or, when the budget has no frame
//!   to give, into staging buffers that are not cached). While a chunk is read, the predictor's
//!   next blocks are issued, up to four chunks ahead; at the end of a layer, what the predictor
//!   names for the next full-attention layer (`--prefetch`, [`super::prefetch`]).
//! - **sparse** (`--attention sparse`, single-token queries): the *units* to attend are chosen
//!   first ([`select_blocks`] / [`select_blocks_certified`]) from the key bounds and the query —
//!   a unit is [`SparseConfig::unit_tokens`] positions of a block, the whole block by default
//!   at 128K; a sealed block's bound rows are one per unit, built when it is sealed — then the
//!   pass visits the blocks holding them (each read whole), in block order, exactly as above,
//!   and computes per KV head only its units' runs. [`KvCache::speculate`] runs the same
//!   selection with a model's estimated query and prefetches part of it.
//! - **scoring**: every prediction (pass order or speculation) is checked against the blocks
//!   the pass read when it ends; prefetch pins of blocks it did not read are released then.
//! - **compute**: for every (query token, KV head) and block, the block's attention is computed
//!   from a fresh state ([`attend_block_range`]: FP8/FP16 decoded inside the kernel, a K/V row
//!   decoded once for the whole GQA group), and the per-block states are merged into the running
//!   state in block order (log-sum-exp merge). Blocks of a chunk run in parallel.
//!
//! # Invariants
//!
//! - **exact tiering:** the arithmetic per (token, head) is the same sequence of operations
//!   whatever the chunking, the residency, the backend or the prefetcher did, so outputs are
//!   bit-identical for every `--kv-ram`, `--kv-backend` and `--prefetch` (tested);
//! - **bounded RAM:** cached blocks live only in arena frames; `--kv-ram` pays for the frames and
//!   for an allowance for the block and frame indexes ([`KvStats::index_bytes`]); tails, rings
//!   and staging buffers are the fixed extra ([`KvStats::pinned_bytes`]); key bounds (kept only
//!   for sparse layers) are [`KvStats::bounds_bytes`];
//! - **nothing unverified:** a block read from disk is used only after its checksum verified; a
//!   failed read or write poisons the cache: every later call returns the error;
//! - a frame is evicted only when unpinned, clean (its write completed) and not lent to a read.

use super::disk::{AlignedBuf, BackendKind, DiskError, DiskGeometry, DiskTier};
use super::format::{
    attend_block_range, attend_block_runs, decode_k_row, decode_v_row, encode_token, BlockGeometry,
    BlockLayout, BlockScratch, KeyBounds, KvDtype, MAX_HEAD_DIM,
};
use super::io::{self, IoDone, IoReq, Target};
use super::policy::{
    ArenaError, BlockId, EvictionPolicy, FrameArena, FrameId, FrameState, Lru, NextUse,
};
use super::prefetch::{PrefetchMode, Prefetcher, SpecGate, StoreView};
use super::rest::{self, MeanRows};
use super::select::{self, BoundTiles, Selection};
use super::{AttnQuery, KvCache, KvError, KvGeometry};
use crate::kernels::attention::AttnState;
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Which eviction policy the RAM tier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Belady-informed next-use prediction (the default; scan resistant).
    NextUse,
    /// Least recently used (the baseline).
    Lru,
}

impl PolicyKind {
    fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::NextUse => Box::new(NextUse::new()),
            PolicyKind::Lru => Box::new(Lru::new()),
        }
    }
}

/// How to build a [`TieredKv`].
#[derive(Debug, Clone)]
pub struct TieredConfig {
    /// Storage format of K and V.
    pub dtype: KvDtype,
    /// Positions per block.
    pub block_tokens: usize,
    /// RAM budget for cached blocks, in bytes.
    pub ram_bytes: usize,
    /// Directory of the disk tier file (created if missing).
    pub dir: PathBuf,
    /// Disk backend.
    pub backend: BackendKind,
    /// Which predictors run (`--prefetch`).
    pub prefetch: PrefetchMode,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// Tell the policy the pass order (Belady hints); ignored by LRU.
    pub hints: bool,
    /// Fingerprint of the model, stored in the file header.
    pub fingerprint: u64,
    /// Write one JSON line per (step, layer) here (see docs/trace-format.md).
    pub trace: Option<PathBuf>,
    /// Largest query batch `attend` gets (sliding-window rings keep `window + max_batch`
    /// positions).
    pub max_batch: usize,
    /// Query-aware sparse attention for single-token queries on full-attention layers
    /// (`--attention sparse`); `None` = dense.
    pub sparse: Option<SparseConfig>,
}

/// `--attention sparse`: which blocks a single-token query reads (see [`select_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseConfig {
    /// Stop adding blocks once their estimated attention mass reaches this (0..=1).
    pub mass: f32,
    /// ... or once the selection holds this many tokens.
    pub budget_tokens: usize,
    /// Always read the blocks holding the most recent this-many positions.
    pub recent_tokens: usize,
    /// How a KV head's block scores combine the query heads of its group.
    pub group: GroupScore,
    /// The first this-many full-attention layers stay dense (their attention is broad; Quest
    /// keeps the first two layers dense for the same reason).
    pub dense_layers: usize,
    /// What `budget_tokens` limits: the blocks read (the union over KV heads) or each head's
    /// own selection.
    pub budget_scope: BudgetScope,
    /// [`BudgetScope::UnionOwn`]: a KV head also attends a block read for other heads when its
    /// own estimated mass there is at least this many times the block's share of the positions
    /// (1: as dense as uniform attention; 0: every block read, as `Union` at mass 1.0; +∞:
    /// never, plain `UnionOwn`). Costs no reads.
    pub share: f32,
    /// Score every block, or super-blocks first (a two-level index).
    pub index: SparseIndex,
    /// What ranks the blocks: the key bound alone, or mixed with the mean key.
    pub score: SparseScore,
    /// Tokens per selection unit (`--sparse-unit`): the blocks are scored, selected and
    /// attended in units of this many positions (a divisor of the block size, at least
    /// 1/[`MAX_UNITS_PER_BLOCK`] of it); a block is read whole when any unit of it is
    /// selected. 0 = [`auto_unit_tokens`] for the cache's context size.
    pub unit_tokens: usize,
    /// What stands for the units a head does not attend (`--sparse-rest`).
    pub rest: SparseRest,
    /// The model layers sparse attention may apply to (`--sparse-layers`): full-attention
    /// layers outside the set stay dense, as do the first `dense_layers` full layers.
    pub layers: LayerSet,
}

/// A set of model layer indices (`--sparse-layers`: `all`, or a comma-separated list of
/// indices and inclusive ranges such as `1-3,7`). Finite sets hold indices below
/// [`LayerSet::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSet {
    all: bool,
    bits: [u64; 4],
}

impl LayerSet {
    /// Every layer.
    pub const ALL: LayerSet = LayerSet {
        all: true,
        bits: [0; 4],
    };
    /// One more than the largest index a finite set can hold.
    pub const MAX: usize = 256;

    /// Whether `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        self.all || (layer < Self::MAX && self.bits[layer / 64] >> (layer % 64) & 1 == 1)
    }

    /// The finite set of `layers`; `None` if one is [`LayerSet::MAX`] or more.
    pub fn of(layers: impl IntoIterator<Item = usize>) -> Option<LayerSet> {
        let mut set = LayerSet {
            all: false,
            bits: [0; 4],
        };
        for l in layers {
            if l >= Self::MAX {
                return None;
            }
            set.bits[l / 64] |= 1 << (l % 64);
        }
        Some(set)
    }

    /// The indices of a finite set, ascending (empty for [`LayerSet::ALL`]).
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..Self::MAX).filter(move |&l| !self.all && self.contains(l))
    }
}

/// `a-b`, or `a` when the range holds one index.
fn range_text((a, b): (usize, usize)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// A `--sparse-layers` value that is not `all` or a list of layer indices and ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad layer list {0:?}: expected `all` or comma-separated layer indices and ranges below {max} \
     (e.g. `1-11,13`)",
    max = LayerSet::MAX
)]
pub struct ParseLayerSetError(pub String);

impl FromStr for LayerSet {
    type Err = ParseLayerSetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(LayerSet::ALL);
        }
        let err = || ParseLayerSetError(s.to_string());
        let mut layers = Vec::new();
        for part in t.split(',') {
            let part = part.trim();
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let a: usize = a.parse().map_err(|_| err())?;
            let b: usize = b.parse().map_err(|_| err())?;
            if a > b || b >= LayerSet::MAX {
                return Err(err());
            }
            layers.extend(a..=b);
        }
        LayerSet::of(layers).ok_or_else(err)
    }
}

impl fmt::Display for LayerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("all");
        }
        // Runs of consecutive indices as ranges: `0-29`, `1,3,5`.
        let mut parts: Vec<String> = Vec::new();
        let mut run: Option<(usize, usize)> = None;
        for l in self.indices() {
            run = match run {
                Some((a, b)) if b + 1 == l => Some((a, l)),
                Some(r) => {
                    parts.push(range_text(r));
                    Some((l, l))
                }
                None => Some((l, l)),
            };
        }
        parts.extend(run.map(range_text));
        f.write_str(&parts.join(","))
    }
}

impl SparseConfig {
    /// Whether a pass over `stored` positions selects at all: only when the budget is under 3/4
    /// of them. From there up the selection could not save what it costs — its union would be
    /// read densely anyway ([`select_blocks`]' fallback) unless the certified mass rule stopped
    /// it early, which it does only for sharply peaked heads (never on the texts and the
    /// aggregation task of docs/BENCHMARKS.md) — while scoring and taking ~3/4 of the units
    /// costs more than the attention it saves (SmolLM2 at 4,160 positions with the default
    /// budget: 58 ms per token against 17 ms dense, session 10).
    pub fn selects_at(&self, stored: usize) -> bool {
        self.budget_tokens.saturating_mul(4) < stored.saturating_mul(3)
    }
}

/// Selection units per block at most (a head's units of a block are one `u64` mask).
pub const MAX_UNITS_PER_BLOCK: usize = 64;

/// Selection units per full-attention layer that `--sparse-unit auto` aims at for the whole
/// context: 64-token blocks at 128K hold 2,048 of them, so no context size costs more key-bound
/// memory or scoring than 128K does with whole blocks.
pub const AUTO_UNITS_PER_LAYER: usize = 2048;

/// The smallest unit `--sparse-unit auto` picks. [`AUTO_UNITS_PER_LAYER`] alone would give
/// 1-token units at 2K; 2-token units are as accurate there (SmolLM2, exact precision, 25%
/// budget: pooled KL 0.0058 with 2, 0.0052 with 1, 0.0084 with 4; at 4K 0.0021 with 2 against
/// 0.0036 with 4 — docs/BENCHMARKS.md, session 10) and their bounds (three `head_dim` rows of
/// bf16 per unit and KV head) stay within 1.5× the fp8 K/V they bound. Up to 4K this costs at
/// most the bound memory and scan that 128K costs with whole blocks.
pub const MIN_AUTO_UNIT: usize = 2;

/// `--sparse-unit auto`: the power of two of at least `n_ctx / AUTO_UNITS_PER_LAYER`
/// positions, at least [`MIN_AUTO_UNIT`], then the largest divisor of `block_tokens` not above
/// it that keeps at most [`MAX_UNITS_PER_BLOCK`] units per block (whole blocks at 128K with
/// 64-token blocks, 4-token units at 8K, 2-token units up to 4K).
pub fn auto_unit_tokens(n_ctx: usize, block_tokens: usize) -> usize {
    let bt = block_tokens.max(1);
    let want = n_ctx
        .div_ceil(AUTO_UNITS_PER_LAYER)
        .next_power_of_two()
        .max(MIN_AUTO_UNIT)
        .min(bt);
    let floor = bt.div_ceil(MAX_UNITS_PER_BLOCK);
    (floor..=want.max(floor))
        .rev()
        .find(|u| bt.is_multiple_of(*u))
        .unwrap_or(bt)
}

/// Default of [`SparseConfig::share`] (`--sparse-share`; docs/BENCHMARKS.md, session 7).
pub const DEFAULT_SHARE: f32 = 0.5;

/// Weight of the key bound in [`SparseScore::Mix`] (the mean key's logit gets `1 − MIX_ALPHA`).
pub const MIX_ALPHA: f32 = 0.5;

/// `--sparse-score`: what ranks a block for a query head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SparseScore {
    /// The Quest bound of the block's logits, `Σ_j max(q_j·min_j, q_j·max_j)`.
    Bound,
    /// `α · bound + (1 − α) · q·k̄` with `α` = [`MIX_ALPHA`] and `k̄` the block's mean key: a
    /// block whose keys only *could* align with the query (a wide box) ranks below one whose
    /// keys do on average. Not itself a bound: the certified mass rule counts the unselected
    /// side at `exp(‖q‖·W)` times its weight, `W` the largest slack width of the head's stored
    /// rows (≥ (bound − score)/‖q‖ for every block; [`BoundTiles`]). Scored in one row as wide
    /// as the bound's; costs the block centers (a third more bound memory).
    #[default]
    Mix,
}

/// `--sparse-rest`: what a query head's attention counts for the units it does not attend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SparseRest {
    /// Nothing: attention over the attended units alone (Quest).
    Off,
    /// Each unit as one pseudo-key: its mean key with weight `n` (its positions), carrying its
    /// mean value ([`super::rest`]). Bounded by the unit's true mass (never above it); costs
    /// two bf16 `head_dim` rows per unit and KV head of RAM and a pass over them per step, no
    /// reads.
    Mean,
    /// `Mean` for selection units of at most [`REST_AUTO_MAX_UNIT`] positions, else `Off`.
    #[default]
    Auto,
}

/// The largest unit `--sparse-rest auto` summarizes. Measured on SmolLM2 at 25% (exact
/// precision, docs/BENCHMARKS.md session 11): with 2-token units the summaries halve the KL
/// at 2K and 4K; with 4-token units they raise it (4K: GPL-3 0.0046 → 0.0065; 8K, `union`:
/// typing.py 0.0010 → 0.0056) — a unit's mean value stands in for values weighted by
/// `exp(q·k)`, worse the coarser the unit — and at 128K (64-token units) folding them costs
/// `union-own` 5–9 ms per step.
pub const REST_AUTO_MAX_UNIT: usize = 2;

impl SparseRest {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            SparseRest::Off => "off",
            SparseRest::Mean => "mean",
            SparseRest::Auto => "auto",
        }
    }

    /// Whether units of `unit` positions are summarized in model layer `layer` (a
    /// full-attention layer). `Auto` does for units of at most [`REST_AUTO_MAX_UNIT`]
    /// positions, outside layer 0: its keys are projections of the token
    /// embeddings alone, with no context mixed in yet, so the two keys of a unit are unrelated
    /// and their mean stands for neither. Measured on SmolLM2 at 2K (exact precision, 25%,
    /// docs/BENCHMARKS.md session 12): with only layer 0 sparse, summarizing it gives GPL-3 a
    /// KL of 0.0021 against 0.0004 without; with every layer sparse, leaving layer 0 out
    /// lowers the KL on all four texts (pooled 0.0045 → 0.0031; at 4K 0.0018 → 0.0015, one
    /// text of four slightly worse).
    pub fn on(self, unit: usize, layer: usize) -> bool {
        match self {
            SparseRest::Off => false,
            SparseRest::Mean => true,
            SparseRest::Auto => unit <= REST_AUTO_MAX_UNIT && layer != 0,
        }
    }
}

/// Blocks per super-block of the two-level index (`--sparse-index tree`).
pub const SUPER_SPAN: usize = 16;

/// `--sparse-index`: how a selection scores the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SparseIndex {
    /// Score every block's bound (the default: measured faster, docs/BENCHMARKS.md).
    #[default]
    Flat,
    /// Score super-blocks of [`SUPER_SPAN`] sealed blocks (bounds of the union of their keys)
    /// and the blocks after them; score a super-block's blocks for a KV head only when the
    /// selection reaches it ([`select_blocks_indexed`]). Same selection order per head as
    /// `flat`; cheaper only when super-block bounds separate (keys that cluster by position):
    /// on the synthetic 128K bench a box bound over 1,024 keys is ~5 logits looser than over 64,
    /// a third of the super-blocks get expanded, and it is slower than `flat`.
    Tree,
}

impl SparseIndex {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            SparseIndex::Flat => "flat",
            SparseIndex::Tree => "tree",
        }
    }
}

/// `--sparse-budget-scope`: what the token budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BudgetScope {
    /// The tokens of the blocks read, over all KV heads (a block holds every head, so this is
    /// the read and compute cost). Heads take blocks greedily by estimated mass, the most
    /// needed first, and every head attends to every block read.
    Union,
    /// Each KV head's own selection; the blocks read are their union (up to `n_kv` times the
    /// budget), and each block is computed only for the heads that chose it.
    Head,
    /// The blocks read count as for `Union` (same greedy, same budget), but each KV head
    /// attends only the blocks of its own ranking (a block another head read is free for it
    /// when its turn comes) and those read for others where its estimated mass is dense enough
    /// ([`SparseConfig::share`]): the compute is about each head's own selection, not the
    /// whole union. The default (docs/BENCHMARKS.md, sessions 7, 10 and 11).
    #[default]
    UnionOwn,
}

/// `--sparse-group`: how the query heads that share a KV head score a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupScore {
    /// The block's bound is the largest bound over the group's query heads (one mass estimate
    /// per KV head from that bound).
    #[default]
    Max,
    /// Each query head estimates its own mass distribution from its own bounds; the KV head's
    /// mass of a block is their mean (the sum, normalized).
    Sum,
}

impl GroupScore {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            GroupScore::Max => "max",
            GroupScore::Sum => "sum",
        }
    }
}

impl Default for SparseConfig {
    fn default() -> Self {
        SparseConfig {
            mass: 0.95,
            budget_tokens: 4096,
            recent_tokens: 256,
            group: GroupScore::Max,
            dense_layers: 0,
            budget_scope: BudgetScope::UnionOwn,
            share: DEFAULT_SHARE,
            index: SparseIndex::Flat,
            score: SparseScore::Mix,
            unit_tokens: 0,
            rest: SparseRest::Auto,
            layers: LayerSet::ALL,
        }
    }
}

/// Quest-style block selection for one query token, per KV head. Scores come in `per_head`
/// columns per KV head: `scores[(b * n_kv + h) * per_head + s]` is the upper bound of a scaled
/// attention logit of block `b` (`scale · Σ_j max(q_j·min_j, q_j·max_j)`) for KV head `h` —
/// either the max over the group's query heads (`per_head = 1`, [`GroupScore::Max`]) or query
/// head `s` of the group ([`GroupScore::Sum`]). `tokens[b]` is the positions block `b` holds.
/// Column `s`'s estimated mass of block `b` is `tokens[b]·exp(score − max)` normalized over
/// blocks; head `h`'s is the mean over its columns. Every head reads block 0 (attention sinks)
/// and the blocks holding the last `recent_tokens` positions (the last block is the one being
/// filled). Then, with [`BudgetScope::Union`], the head whose next block (by decreasing mass,
/// lower index on ties) carries the most mass takes it for every head, until each head's mass
/// reaches `cfg.mass` or the blocks taken hold `cfg.budget_tokens` ([`BudgetScope::UnionOwn`]:
/// the same blocks, but a head attends its own ranking's and, per [`SparseConfig::share`], the
/// others' where it is dense enough); with [`BudgetScope::Head`],
/// each head takes its own blocks until its mass or its own token count reaches the limits.
/// Here the mass counted is the upper-bound estimate; [`select_blocks_certified`] counts a
/// guaranteed lower bound instead (what `attend` uses). Returns the union in increasing block
/// order, each block with the mask of the heads that read it (bit `h`), and the mean counted
/// mass over heads; `None` when the
/// bounds cannot separate the blocks (the union would cover over 3/4 of them) or there are more
/// than 32 KV heads: read densely.
pub fn select_blocks(
    scores: &[f32],
    n_kv: usize,
    per_head: usize,
    tokens: &[usize],
    cfg: &SparseConfig,
) -> Option<(Vec<(usize, u32)>, f32)> {
    let upper = select::upper_from(scores, n_kv, per_head);
    select::select(
        flat_scores(scores, n_kv, per_head, tokens),
        &upper,
        None,
        cfg,
    )
    .map(|s| (s.blocks, s.mass))
}

/// [`select_blocks`] with the mass rule *certified*: `lower` (same layout as `scores`) holds
/// lower bounds of the scaled logits (`Σ_j min(q_j·min_j, q_j·max_j)`). A column's selected mass
/// is then bounded below by `Σ_sel tokens·exp(lower) / (Σ_sel tokens·exp(lower) + Σ_unsel
/// tokens·exp(score))` — true whatever the keys inside the bounds are — and a head stops when
/// the mean of that bound over its columns reaches `cfg.mass`. The order blocks are taken in
/// is the same as [`select_blocks`]' (by upper-bound mass estimate).
pub fn select_blocks_certified(
    scores: &[f32],
    lower: &[f32],
    n_kv: usize,
    per_head: usize,
    tokens: &[usize],
    cfg: &SparseConfig,
) -> Option<(Vec<(usize, u32)>, f32)> {
    let zero = vec![0.0f32; n_kv * per_head];
    select_blocks_certified_slack(scores, lower, &zero, n_kv, per_head, tokens, cfg)
}

/// [`select_blocks_certified`] for scores that are not bounds themselves: `scores + slack[c]`
/// bounds every logit of column `c` (as [`SparseScore::Mix`]); the blocks are taken in score
/// order and the certificate counts the unselected side at `exp(slack)` times its weight.
pub fn select_blocks_certified_slack(
    scores: &[f32],
    lower: &[f32],
    slack: &[f32],
    n_kv: usize,
    per_head: usize,
    tokens: &[usize],
    cfg: &SparseConfig,
) -> Option<(Vec<(usize, u32)>, f32)> {
    let cols = n_kv * per_head;
    if lower.len() != scores.len() || cols == 0 || slack.len() != cols {
        return None;
    }
    let lb = |b: usize, out: &mut [f32]| out.copy_from_slice(&lower[b * cols..(b + 1) * cols]);
    let upper = select::upper_from(scores, n_kv, per_head);
    let mut sc = flat_scores(scores, n_kv, per_head, tokens);
    sc.slack = slack.to_vec();
    select::select(sc, &upper, Some(&lb), cfg).map(|s| (s.blocks, s.mass))
}

/// A selection (blocks with their head masks), its mean certified mass and the number of
/// (super-block, KV head) expansions it needed.
pub type IndexedSelection = (Vec<(usize, u32)>, f32, usize);

/// [`select_blocks_certified`] with a two-level index: `supers[s · cols + c]` bounds the scores
/// of blocks `s·span .. (s+1)·span` (every super-block must be complete), and a super-block's
/// blocks are scored (read from `scores`) only when the greedy reaches it. Returns the
/// selection, its mean certified mass and the number of (super-block, KV head) expansions.
/// With `span = 0` it is [`select_blocks_certified`].
#[allow(clippy::too_many_arguments)]
pub fn select_blocks_indexed(
    scores: &[f32],
    supers: &[f32],
    span: usize,
    lower: &[f32],
    n_kv: usize,
    per_head: usize,
    tokens: &[usize],
    cfg: &SparseConfig,
) -> Option<IndexedSelection> {
    let cols = n_kv * per_head;
    if lower.len() != scores.len() || cols == 0 || !supers.len().is_multiple_of(cols) {
        return None;
    }
    let lb = |b: usize, out: &mut [f32]| out.copy_from_slice(&lower[b * cols..(b + 1) * cols]);
    let upper = select::upper_from(scores, n_kv, per_head);
    let mut sc = flat_scores(scores, n_kv, per_head, tokens);
    sc.span = span;
    sc.supers = transpose(supers, cols);
    select::select(sc, &upper, Some(&lb), cfg).map(|s| (s.blocks, s.mass, s.expansions))
}

/// Row-major `[b · cols + c]` scores as a flat selection's column-major input.
fn flat_scores<'a>(
    scores: &[f32],
    n_kv: usize,
    per_head: usize,
    tokens: &'a [usize],
) -> select::Scores<'a> {
    select::Scores {
        n_kv,
        per_head,
        tokens,
        blocks: transpose(scores, n_kv * per_head),
        span: 0,
        supers: Vec::new(),
        slack: Vec::new(),
        eager_certificate: false,
    }
}

/// `‖max − min‖₂`, rounded up (a relative 1e-5 over the f32 sum's error).
fn box_width(max: &[f32], min: &[f32]) -> f32 {
    let s: f32 = max.iter().zip(min).map(|(a, b)| (a - b) * (a - b)).sum();
    s.sqrt() * (1.0 + 1e-5)
}

/// `[r · cols + c]` → `[c · rows + r]`.
fn transpose(x: &[f32], cols: usize) -> Vec<f32> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let mut t = vec![0.0f32; rows * cols];
    for (r, row) in x.chunks_exact(cols.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

impl TieredConfig {
    /// Defaults: fp8, 64-token blocks, next-use policy with hints, prefetch on, uring.
    pub fn new(ram_bytes: usize, dir: impl Into<PathBuf>) -> Self {
        TieredConfig {
            dtype: KvDtype::Fp8,
            block_tokens: 64,
            ram_bytes,
            dir: dir.into(),
            backend: BackendKind::Uring,
            prefetch: PrefetchMode::Auto,
            policy: PolicyKind::NextUse,
            hints: true,
            fingerprint: 0,
            trace: None,
            max_batch: 512,
            sparse: None,
        }
    }
}

/// Counters of one layer (or of all layers summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LayerStats {
    /// Store blocks the attention passes read (tail and ring blocks are not counted).
    pub blocks_read: u64,
    /// Found resident (not brought by a prefetch).
    pub hits: u64,
    /// Found resident, brought by a prefetch that completed in time.
    pub prefetch_hits: u64,
    /// Prefetched but still in flight when needed (waited for).
    pub late: u64,
    /// Not resident: read on demand.
    pub misses: u64,
    /// Bytes read from disk (slots, checksums included).
    pub bytes_read: u64,
    /// Bytes written to disk.
    pub bytes_written: u64,
    /// Time the pass waited for reads, in nanoseconds.
    pub stall_ns: u64,
    /// Sparse attention: blocks (tail included) the sparse passes could have read.
    pub sparse_candidates: u64,
    /// Sparse attention: blocks they read.
    pub sparse_selected: u64,
    /// Sparse attention: (block, KV head) pairs the sparse passes could have computed.
    pub sparse_head_candidates: u64,
    /// ... of which they computed (with `--sparse-budget-scope union` every head computes every
    /// block read; `union-own` and `head` only each head's own).
    pub sparse_head_attended: u64,
    /// Sparse attention: passes read densely because the bounds could not separate blocks.
    pub sparse_dense_fallbacks: u64,
    /// Sparse attention: sum over passes of the selection's attention mass — the certified
    /// lower bound from the key bounds (see [`select_blocks_certified`]), mean over KV heads —
    /// in millionths; divide by passes for the mean.
    pub sparse_mass_ppm: u64,
    /// Sparse attention: passes that selected.
    pub sparse_passes: u64,
    /// Distinct blocks the pass-order predictor (sequential or reuse) named for this layer's
    /// passes before or while they ran (summed over passes).
    pub predicted: u64,
    /// ... of which the pass then read (precision = this / `predicted`; recall = this /
    /// `blocks_read`).
    pub predicted_used: u64,
    /// Distinct blocks speculation named for this layer's passes.
    pub spec_predicted: u64,
    /// ... of which the pass then read.
    pub spec_used: u64,
    /// Speculative queries the model sent for this layer.
    pub speculations: u64,
    /// Passes `--prefetch auto` ran without speculation because, measured, it did not pay for
    /// this layer ([`super::prefetch::SpecGate`]).
    pub spec_gated: u64,
    /// Blocks read from disk by a prefetch (used or not).
    pub prefetch_reads: u64,
    /// Prefetched blocks the pass found still unused at its end and released.
    pub prefetch_unused: u64,
    /// Sum over prefetch hits of how long the block had been resident when used (ns).
    pub prefetch_lead_ns: u64,
}

impl LayerStats {
    /// Add `o`'s counters to these.
    pub fn add(&mut self, o: &LayerStats) {
        self.blocks_read += o.blocks_read;
        self.hits += o.hits;
        self.prefetch_hits += o.prefetch_hits;
        self.late += o.late;
        self.misses += o.misses;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.stall_ns += o.stall_ns;
        self.sparse_candidates += o.sparse_candidates;
        self.sparse_selected += o.sparse_selected;
        self.sparse_head_candidates += o.sparse_head_candidates;
        self.sparse_head_attended += o.sparse_head_attended;
        self.sparse_dense_fallbacks += o.sparse_dense_fallbacks;
        self.sparse_mass_ppm += o.sparse_mass_ppm;
        self.sparse_passes += o.sparse_passes;
        self.predicted += o.predicted;
        self.predicted_used += o.predicted_used;
        self.spec_predicted += o.spec_predicted;
        self.spec_used += o.spec_used;
        self.speculations += o.speculations;
        self.spec_gated += o.spec_gated;
        self.prefetch_reads += o.prefetch_reads;
        self.prefetch_unused += o.prefetch_unused;
        self.prefetch_lead_ns += o.prefetch_lead_ns;
    }

    fn sub(&self, o: &LayerStats) -> LayerStats {
        LayerStats {
            blocks_read: self.blocks_read - o.blocks_read,
            hits: self.hits - o.hits,
            prefetch_hits: self.prefetch_hits - o.prefetch_hits,
            late: self.late - o.late,
            misses: self.misses - o.misses,
            bytes_read: self.bytes_read - o.bytes_read,
            bytes_written: self.bytes_written - o.bytes_written,
            stall_ns: self.stall_ns - o.stall_ns,
            sparse_candidates: self.sparse_candidates - o.sparse_candidates,
            sparse_selected: self.sparse_selected - o.sparse_selected,
            sparse_head_candidates: self.sparse_head_candidates - o.sparse_head_candidates,
            sparse_head_attended: self.sparse_head_attended - o.sparse_head_attended,
            sparse_dense_fallbacks: self.sparse_dense_fallbacks - o.sparse_dense_fallbacks,
            sparse_mass_ppm: self.sparse_mass_ppm - o.sparse_mass_ppm,
            sparse_passes: self.sparse_passes - o.sparse_passes,
            predicted: self.predicted - o.predicted,
            predicted_used: self.predicted_used - o.predicted_used,
            spec_predicted: self.spec_predicted - o.spec_predicted,
            spec_used: self.spec_used - o.spec_used,
            speculations: self.speculations - o.speculations,
            spec_gated: self.spec_gated - o.spec_gated,
            prefetch_reads: self.prefetch_reads - o.prefetch_reads,
            prefetch_unused: self.prefetch_unused - o.prefetch_unused,
            prefetch_lead_ns: self.prefetch_lead_ns - o.prefetch_lead_ns,
        }
    }

    /// `(hits + prefetch_hits) / (hits + prefetch_hits + late + misses)`, or 1 with no reads.
    pub fn hit_rate(&self) -> f64 {
        let all = self.hits + self.prefetch_hits + self.late + self.misses;
        if all == 0 {
            1.0
        } else {
            (self.hits + self.prefetch_hits) as f64 / all as f64
        }
    }

    /// How the predictors did over these counters.
    pub fn prediction(&self) -> Prediction {
        let div = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let read = self.blocks_read;
        Prediction {
            predicted: self.predicted,
            order_precision: div(self.predicted_used, self.predicted),
            order_recall: div(self.predicted_used, read),
            speculations: self.speculations,
            spec_gated: self.spec_gated,
            spec_predicted: self.spec_predicted,
            spec_precision: div(self.spec_used, self.spec_predicted),
            spec_recall: div(self.spec_used, read),
            prefetch_reads: self.prefetch_reads,
            prefetch_used: div(self.prefetch_hits + self.late, self.prefetch_reads),
            coverage: div(read.saturating_sub(self.misses), read),
            mean_lead_ms: (self.prefetch_hits > 0)
                .then(|| self.prefetch_lead_ns as f64 / 1e6 / self.prefetch_hits as f64),
            sparse_read_fraction: div(self.sparse_selected, self.sparse_candidates),
        }
    }
}

/// Prediction quality over a set of counters (`None` = undefined: nothing to divide by): the
/// `kv.prediction` object of `--json` and the prediction table of `kvspool profile`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Blocks the pass-order predictor (sequential/reuse) named.
    pub predicted: u64,
    /// ... of them then read / named.
    pub order_precision: Option<f64>,
    /// Blocks read that it had named / blocks read.
    pub order_recall: Option<f64>,
    /// Speculative queries received.
    pub speculations: u64,
    /// Passes `auto` ran without speculation (it did not pay for the layer).
    pub spec_gated: u64,
    /// Blocks speculation named.
    pub spec_predicted: u64,
    /// ... of them then read / named.
    pub spec_precision: Option<f64>,
    /// Blocks read that speculation had named / blocks read.
    pub spec_recall: Option<f64>,
    /// Blocks read from disk by prefetches.
    pub prefetch_reads: u64,
    /// Prefetched blocks then used (in time or late) / prefetched blocks.
    #[serde(rename = "prefetch_used_fraction")]
    pub prefetch_used: Option<f64>,
    /// Blocks resident or requested by a prefetch before the pass reached them / blocks read.
    pub coverage: Option<f64>,
    /// Mean time a prefetch hit had been resident before use, in ms.
    pub mean_lead_ms: Option<f64>,
    /// Sparse passes: blocks read / candidate blocks.
    pub sparse_read_fraction: Option<f64>,
}

/// What a [`KvCache`] reports: the `kv` object of `run --json` (CLI.md) and more.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KvStats {
    /// Storage format.
    pub dtype: String,
    /// The RAM budget for cached blocks.
    pub ram_budget_bytes: u64,
    /// Highest bytes of cached blocks resident at once (≤ the budget).
    pub ram_peak_bytes: u64,
    /// Bytes of the disk tier file (reserved).
    pub disk_bytes: u64,
    /// Store blocks read by attention passes.
    pub blocks_read: u64,
    /// Resident hits.
    pub hits: u64,
    /// Prefetch hits.
    pub prefetch_hits: u64,
    /// Prefetches still in flight when needed.
    pub late: u64,
    /// Demand misses.
    pub misses: u64,
    /// `(hits + prefetch_hits) / (hits + prefetch_hits + late + misses)`.
    pub hit_rate: f64,
    /// Seconds attention waited for reads.
    pub stall_s: f64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes written to disk.
    pub bytes_written: u64,
    /// Blocks evicted from the RAM tier.
    pub evictions: u64,
    /// Most block writes in flight at once (write-behind depth).
    pub write_behind_max: u64,
    /// Bytes of one frame (one disk slot).
    pub frame_bytes: u64,
    /// Frames of the RAM tier.
    pub frames: u64,
    /// Fixed RAM outside the budget: tail buffers, sliding-window rings, staging buffers (peak).
    pub pinned_bytes: u64,
    /// RAM of the per-block key bounds.
    pub bounds_bytes: u64,
    /// Positions per sparse selection unit (`--sparse-unit`, resolved; the block size when
    /// attention is dense).
    pub unit_tokens: u64,
    /// RAM allowance for the block and frame indexes, charged to the budget (0 when the budget
    /// cannot hold a frame and its share of the index: the index then lives outside it).
    pub index_bytes: u64,
    /// Eviction policy.
    pub policy: String,
    /// Disk backend (and whether it bypasses the page cache).
    pub backend: String,
    /// The predictors (`--prefetch`).
    pub prefetch: String,
    /// Per-layer counters.
    pub layers: Vec<LayerStats>,
}

/// Append the box of `b` (per KV head, with its mean for mix rows) as a row of `rows`, and
/// widen `width_max` by the row's slack width (the mix score's certificate).
fn push_bound_rows(rows: &mut [BoundTiles], width_max: &mut [f32], b: &KeyBounds) {
    let mut mean = [0.0f32; MAX_HEAD_DIM];
    for (h, r) in rows.iter_mut().enumerate() {
        let d = b.max(h).len();
        let m = if r.is_mix() {
            b.mean(h, &mut mean[..d]);
            Some(&mean[..d])
        } else {
            None
        };
        let w = r.push(b.max(h), b.min(h), m);
        if w.is_finite() {
            width_max[h] = width_max[h].max(w);
        }
    }
}

/// `b` reset to the box (and mean) of the stored keys at `slots` of `block`, every KV head, as
/// attention decodes them.
fn unit_box(
    bgeo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    slots: std::ops::Range<usize>,
    b: &mut KeyBounds,
) {
    let d = bgeo.head_dim;
    let mut key = [0.0f32; MAX_HEAD_DIM];
    b.reset();
    for t in slots {
        for h in 0..bgeo.n_head_kv {
            decode_k_row(bgeo, dtype, block, h, t, &mut key[..d]);
            b.update(h, &key[..d]);
        }
    }
}

/// The mean key and mean value of KV head `g` over `slots` of `block`, as attention decodes
/// them (`k`, `v`: `head_dim` each; zero for no slots).
fn unit_means(
    bgeo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    g: usize,
    slots: std::ops::Range<usize>,
    k: &mut [f32],
    v: &mut [f32],
) {
    let d = bgeo.head_dim;
    let mut row = [0.0f32; MAX_HEAD_DIM];
    k.fill(0.0);
    v.fill(0.0);
    let n = slots.len();
    for t in slots {
        decode_k_row(bgeo, dtype, block, g, t, &mut row[..d]);
        k.iter_mut().zip(&row[..d]).for_each(|(a, b)| *a += b);
        decode_v_row(bgeo, dtype, block, g, t, &mut row[..d]);
        v.iter_mut().zip(&row[..d]).for_each(|(a, b)| *a += b);
    }
    if n > 0 {
        let inv = 1.0 / n as f32;
        k.iter_mut().chain(v.iter_mut()).for_each(|x| *x *= inv);
    }
}

/// One summary `fold_rest` folds for a head.
#[derive(Debug, Clone, Copy)]
enum Rest {
    /// A selection unit's mean row.
    Unit(usize),
    /// A complete super-block's (of [`SUPER_SPAN`] units) mean row.
    Super(usize),
}

/// A sealed block of a full-attention layer (its key bounds are rows of the layer's
/// `bound_rows`).
#[derive(Debug, Clone)]
struct Sealed {
    slot: u64,
}

#[derive(Debug)]
struct LayerKv {
    len: usize,
    /// Storage: `None` = full attention (tiered store), `Some(w)` = sliding window (RAM ring).
    window: Option<usize>,
    sealed: Vec<Sealed>,
    /// Key bounds of the sealed blocks, per KV head: one center/radius row per selection unit
    /// (`TieredKv::unit`; a block when units are whole blocks) (and, for [`SparseScore::Mix`],
    /// the score row), kept as column-major tiles of 16 rows
    /// (scoring a tile against a query group is one `col_dots`; see [`BoundTiles`]).
    bound_rows: Vec<BoundTiles>,
    /// Per KV head: the largest slack width of a sealed block's mix row (rounded up; never
    /// lowered by a truncation, so still an upper bound), for the certificate of
    /// [`SparseScore::Mix`]: a block's bound exceeds its score by at most `‖q‖ ·` this.
    width_max: Vec<f32>,
    /// The same per complete super-block of [`SUPER_SPAN`] rows (units) (= one tile of
    /// `bound_rows`): the bounds of the union of their keys. Kept only with
    /// `--sparse-index tree` (empty otherwise).
    super_rows: Vec<BoundTiles>,
    /// Per KV head, one row per sealed selection unit: its mean key and mean value, for
    /// [`SparseRest::Mean`] (empty otherwise; see [`super::rest`]).
    mean_rows: Vec<MeanRows>,
    /// The same per complete super-block of [`SUPER_SPAN`] units: the mean of their rows (what
    /// stands for a super-block a head attends none of).
    super_means: Vec<MeanRows>,
    /// Sliding layers: sealed blocks still visible, `(block index, bytes)`, oldest first.
    ring: VecDeque<(usize, Arc<AlignedBuf>)>,
    tail: Arc<AlignedBuf>,
    tail_bounds: KeyBounds,
}

#[derive(Debug, Default, Clone)]
struct FrameInfo {
    /// The buffer is with the I/O thread.
    loading: bool,
    /// Brought by a prefetch and not used since.
    prefetched: bool,
    /// Pinned by the prefetcher (released when the pass takes it).
    prefetch_pin: bool,
    /// The read into this frame failed.
    error: Option<String>,
    /// When a prefetch read into this frame completed.
    arrived: Option<Instant>,
    /// A pass needed the block while its prefetch was in flight (counted late, not a
    /// prefetch hit when the read completes).
    claimed: bool,
}

/// A block held by the running pass.
#[derive(Debug, Clone, Copy)]
enum Held {
    Frame(FrameId),
    Staging(usize),
}

static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// RAM allowance per block of the context for its index entry (slot, the two key-bound vectors'
/// headers and allocator overhead, the eviction policy's history), charged to `--kv-ram`.
const INDEX_BYTES_PER_BLOCK: usize = 160;
/// RAM allowance per frame of the RAM tier (frame state and info, block map and policy
/// entries), charged to `--kv-ram`.
const INDEX_BYTES_PER_FRAME: usize = 256;

/// The tiered KV cache (see the module docs).
pub struct TieredKv {
    geo: KvGeometry,
    bgeo: BlockGeometry,
    layout: BlockLayout,
    cfg: TieredConfig,
    slot_bytes: usize,
    layers: Vec<LayerKv>,
    arena: FrameArena,
    finfo: Vec<FrameInfo>,
    tx: Option<Sender<IoReq>>,
    done: Receiver<IoDone>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    backend_desc: String,
    next_slot: u64,
    free_slots: Vec<u64>,
    capacity: u64,
    writes_in_flight: usize,
    reads_in_flight: usize,
    write_behind_max: usize,
    prefetch_pinned: usize,
    prefetcher: Option<Box<dyn Prefetcher>>,
    /// Per layer: blocks predicted for its coming pass, by the pass-order predictor and by
    /// speculation (scored when the pass ends).
    pred: Vec<[HashSet<u32>; 2]>,
    staging: Vec<Option<Arc<AlignedBuf>>>,
    /// Per-block partial attention states of a decode chunk, reused across calls.
    parts: Vec<AttnState>,
    staging_res: Vec<Option<Result<(), String>>>,
    spare: Vec<Arc<AlignedBuf>>,
    pinned_peak: usize,
    index_bytes: usize,
    evictions_base: u64,
    stats: Vec<LayerStats>,
    /// The layer's counters when its running pass started.
    pass_base: LayerStats,
    /// Per layer: the counters at its last trace line.
    trace_base: Vec<LayerStats>,
    poisoned: Option<String>,
    step: u64,
    pass_len: u64,
    /// `KVSPOOL_SPARSE_ORACLE=1`: select with exact block masses (research; see `oracle_select`).
    oracle: bool,
    /// Positions per selection unit ([`SparseConfig::unit_tokens`], resolved; the block size
    /// without sparse attention): a divisor of the block size, at least 1 (checked in `new`).
    /// The key bounds have one row per unit of a sealed block.
    unit: usize,
    /// Per layer: `--attention sparse` applies to it (a full-attention layer in
    /// [`SparseConfig::layers`] past the first [`SparseConfig::dense_layers`]). Only these
    /// layers keep key bounds (and summary rows): nothing else reads them.
    sparse_on: Vec<bool>,
    /// Per layer: sparse passes fold in the units a head does not attend
    /// ([`SparseConfig::rest`], resolved against `unit` and the layer: [`SparseRest::on`]).
    /// Implies `sparse_on`.
    rest_on: Vec<bool>,
    /// Per layer: its last pass found a block not resident (speculation is skipped for layers
    /// whose selections stay resident: scoring twice would only cost time).
    needs_reads: Vec<bool>,
    /// Per layer (`--prefetch auto`): whether speculation pays for it.
    spec_gate: Vec<SpecGate>,
    /// Per layer: time its speculation took since its last pass (ns).
    spec_ns: Vec<u64>,
    /// This step's passes are sparse (single-token decode with `--attention sparse`): the
    /// dense pass-order hints do not apply; the policy's reuse history does.
    sparse_step: bool,
    trace: Option<std::io::BufWriter<std::fs::File>>,
    started: Instant,
}

impl std::fmt::Debug for TieredKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredKv")
            .field("geo", &self.geo)
            .field("dtype", &self.cfg.dtype)
            .field("frames", &self.arena.frame_count())
            .field("path", &self.path)
            .finish()
    }
}

/// Whether process `pid` is alive (Linux: `/proc/<pid>` exists).
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove the tier files `kvspool-<pid>-<n>.kvtier` in `dir` left by processes that no longer
/// exist (a killed run cannot delete its file); files of live processes are left alone.
fn sweep_stale_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix("kvspool-")
            .and_then(|r| r.strip_suffix(".kvtier"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(file = %e.path().display(), "removed a stale KV tier file of a dead process");
        }
    }
}

/// The disk-tier geometry of a cache (a slot = a block's used bytes + checksum trailer,
/// 4 KiB-aligned; also the size of a RAM-tier frame).
fn disk_geometry(
    geo: &KvGeometry,
    block_tokens: usize,
    dtype: KvDtype,
    fingerprint: u64,
) -> DiskGeometry {
    let bgeo = BlockGeometry {
        block_tokens,
        n_head_kv: geo.n_head_kv,
        head_dim: geo.head_dim,
    };
    DiskGeometry {
        fingerprint,
        n_layer: geo.n_layer as u32,
        n_head_kv: geo.n_head_kv as u32,
        head_dim: geo.head_dim as u32,
        block_tokens: block_tokens as u32,
        dtype_id: dtype_id(dtype),
        payload_bytes: bgeo.layout(dtype).used_bytes as u32,
    }
}

/// Blocks the full-attention layers of `geo` hold at `n_ctx` positions.
fn max_store_blocks(geo: &KvGeometry, block_tokens: usize) -> usize {
    geo.windows.iter().filter(|w| w.is_none()).count() * geo.n_ctx.div_ceil(block_tokens)
}

/// The smallest `--kv-ram` with which every block of `geo` stays resident (frames plus the
/// index allowance).
pub fn budget_for_all(geo: &KvGeometry, block_tokens: usize, dtype: KvDtype) -> usize {
    let slot = disk_geometry(geo, block_tokens.max(1), dtype, 0).slot_bytes() as usize;
    max_store_blocks(geo, block_tokens.max(1))
        * (slot + INDEX_BYTES_PER_BLOCK + INDEX_BYTES_PER_FRAME)
}

fn dtype_id(d: KvDtype) -> u32 {
    match d {
        KvDtype::F32 => 0,
        KvDtype::F16 => 1,
        KvDtype::Fp8 => 2,
    }
}

fn arena_err(e: ArenaError) -> KvError {
    KvError::Contract(e.to_string())
}

impl TieredKv {
    /// A cache for `geo` configured by `cfg`; creates the disk tier file in `cfg.dir`.
    pub fn new(geo: KvGeometry, cfg: TieredConfig) -> Result<Self, KvError> {
        Self::new_with_disk(geo, cfg, DiskTier::create)
    }

    /// Like [`Self::new`], with the disk tier file created by `create(path, geometry, backend)`
    /// (tests wrap the backend in a [`super::disk::FaultyBackend`]).
    pub fn new_with_disk(
        geo: KvGeometry,
        cfg: TieredConfig,
        create: impl FnOnce(&Path, DiskGeometry, BackendKind) -> Result<DiskTier, DiskError>,
    ) -> Result<Self, KvError> {
        if geo.windows.len() != geo.n_layer {
            return Err(KvError::Contract(format!(
                "geometry has {} layers but {} window entries",
                geo.n_layer,
                geo.windows.len()
            )));
        }
        if geo.head_dim > MAX_HEAD_DIM {
            return Err(KvError::Contract(format!(
                "head_dim {} > {MAX_HEAD_DIM}",
                geo.head_dim
            )));
        }
        if cfg.block_tokens == 0 || cfg.block_tokens > 4096 {
            return Err(KvError::Config(format!(
                "--block-tokens {} is out of range: use 1..=4096 (64 is the default)",
                cfg.block_tokens
            )));
        }
        let bgeo = BlockGeometry {
            block_tokens: cfg.block_tokens,
            n_head_kv: geo.n_head_kv,
            head_dim: geo.head_dim,
        };
        bgeo.validate()?;
        let unit = match cfg.sparse {
            None => cfg.block_tokens,
            Some(sp) if sp.unit_tokens == 0 => auto_unit_tokens(geo.n_ctx, cfg.block_tokens),
            Some(sp) => {
                let u = sp.unit_tokens;
                if u > cfg.block_tokens
                    || !cfg.block_tokens.is_multiple_of(u)
                    || cfg.block_tokens / u > MAX_UNITS_PER_BLOCK
                {
                    return Err(KvError::Config(format!(
                        "--sparse-unit {u} does not fit --block-tokens {}: use a divisor of the \
                         block size, at least 1/{MAX_UNITS_PER_BLOCK} of it (or auto)",
                        cfg.block_tokens
                    )));
                }
                u
            }
        };
        if let Some(sp) = cfg.sparse {
            if let Some(l) = sp
                .layers
                .indices()
                .find(|&l| l >= geo.n_layer || geo.windows[l].is_some())
            {
                let full = geo
                    .windows
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.is_none())
                    .map(|(i, _)| i);
                let full = LayerSet::of(full)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let what = if l >= geo.n_layer {
                    format!("the model has {} layers", geo.n_layer)
                } else {
                    format!("layer {l} is a sliding-window layer")
                };
                return Err(KvError::Config(format!(
                    "--sparse-layers {}: {what}; list full-attention layers ({full})",
                    sp.layers,
                )));
            }
        }
        let layout = bgeo.layout(cfg.dtype);
        let dgeo = disk_geometry(&geo, cfg.block_tokens, cfg.dtype, cfg.fingerprint);
        let slot_bytes = dgeo.slot_bytes() as usize;
        std::fs::create_dir_all(&cfg.dir).map_err(|source| {
            KvError::Disk(DiskError::NotWritable {
                path: cfg.dir.clone(),
                source,
            })
        })?;
        sweep_stale_files(&cfg.dir);
        let path = cfg.dir.join(format!(
            "kvspool-{}-{}.kvtier",
            std::process::id(),
            FILE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let disk = create(&path, dgeo, cfg.backend)?;
        let backend_desc = format!("{} ({:?})", disk.backend_name(), disk.io_mode());
        // The budget also pays for the bookkeeping of what it caches: a fixed allowance per
        // block the context can hold (slot, bound vectors' headers, policy history) and per
        // frame (frame state, block map, policy entries), when it can afford them.
        let max_blocks = max_store_blocks(&geo, cfg.block_tokens);
        let block_index = max_blocks * INDEX_BYTES_PER_BLOCK;
        let frames =
            cfg.ram_bytes.saturating_sub(block_index) / (slot_bytes + INDEX_BYTES_PER_FRAME);
        let index_bytes = if frames > 0 {
            block_index + frames * INDEX_BYTES_PER_FRAME
        } else {
            0
        };
        let arena = FrameArena::new_or_empty(frames * slot_bytes, slot_bytes, cfg.policy.build())
            .map_err(arena_err)?;
        let (tx, done, thread) = io::spawn(disk).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            KvError::Failed(format!("could not start the KV I/O thread: {e}"))
        })?;
        // Per layer: sparse attention applies to it, and it folds in the rest.
        let (sparse_on, rest_on): (Vec<bool>, Vec<bool>) = match cfg.sparse {
            None => (vec![false; geo.n_layer], vec![false; geo.n_layer]),
            Some(sp) => {
                let mut full_before = 0;
                geo.windows
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let full = w.is_none();
                        let on = full && sp.layers.contains(i) && full_before >= sp.dense_layers;
                        full_before += usize::from(full);
                        (on, on && sp.rest.on(unit.min(cfg.block_tokens), i))
                    })
                    .unzip()
            }
        };
        // `--sparse-rest mean`: a full layer's summary rows for the whole context, reserved
        // once (no growth by doubling; pages become resident as rows are written).
        let rest_rows = |i: usize| {
            if rest_on[i] {
                geo.n_ctx.div_ceil(unit.min(cfg.block_tokens).max(1))
            } else {
                0
            }
        };
        let layers = geo
            .windows
            .iter()
            .enumerate()
            .map(|(i, &window)| LayerKv {
                len: 0,
                window,
                sealed: Vec::new(),
                bound_rows: vec![
                    if cfg.sparse.is_some_and(|sp| sp.score == SparseScore::Mix) {
                        BoundTiles::with_mean(geo.head_dim, MIX_ALPHA)
                    } else {
                        BoundTiles::new(geo.head_dim)
                    };
                    geo.n_head_kv
                ],
                width_max: vec![0.0; geo.n_head_kv],
                super_rows: vec![BoundTiles::new(geo.head_dim); geo.n_head_kv],
                mean_rows: (0..geo.n_head_kv)
                    .map(|_| MeanRows::with_capacity(geo.head_dim, rest_rows(i)))
                    .collect(),
                super_means: (0..geo.n_head_kv)
                    .map(|_| MeanRows::with_capacity(geo.head_dim, rest_rows(i) / SUPER_SPAN))
                    .collect(),
                ring: VecDeque::new(),
                tail: Arc::new(AlignedBuf::zeroed(slot_bytes)),
                tail_bounds: KeyBounds::new(geo.n_head_kv, geo.head_dim),
            })
            .collect();
        let trace = match &cfg.trace {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
                |e| KvError::Config(format!("cannot create trace file {}: {e}", p.display())),
            )?)),
            None => None,
        };
        let frames = arena.frame_count();
        let n_layer = geo.n_layer;
        let mut kv = TieredKv {
            stats: vec![LayerStats::default(); geo.n_layer],
            trace_base: vec![LayerStats::default(); geo.n_layer],
            pass_base: LayerStats::default(),
            geo,
            bgeo,
            layout,
            slot_bytes,
            layers,
            finfo: vec![FrameInfo::default(); frames],
            arena,
            tx: Some(tx),
            done,
            thread: Some(thread),
            path,
            backend_desc,
            next_slot: 0,
            free_slots: Vec::new(),
            capacity: 0,
            writes_in_flight: 0,
            reads_in_flight: 0,
            write_behind_max: 0,
            prefetch_pinned: 0,
            prefetcher: cfg.prefetch.build(),
            pred: vec![Default::default(); n_layer],
            staging: Vec::new(),
            parts: Vec::new(),
            staging_res: Vec::new(),
            spare: Vec::new(),
            pinned_peak: 0,
            index_bytes,
            evictions_base: 0,
            poisoned: None,
            step: 0,
            pass_len: 0,
            sparse_step: false,
            needs_reads: vec![true; n_layer],
            spec_gate: vec![SpecGate::default(); n_layer],
            spec_ns: vec![0; n_layer],
            oracle: std::env::var("KVSPOOL_SPARSE_ORACLE").is_ok_and(|v| v == "1"),
            unit,
            sparse_on,
            rest_on,
            trace,
            started: Instant::now(),
            cfg,
        };
        kv.note_pinned();
        Ok(kv)
    }

    /// The disk tier file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block geometry.
    pub fn block_geometry(&self) -> &BlockGeometry {
        &self.bgeo
    }

    /// Positions per selection unit (`--sparse-unit`, resolved; the block size when attention
    /// is dense).
    pub fn unit_tokens(&self) -> usize {
        self.unit
    }

    /// Selection units (key-bound rows) per sealed block.
    fn units_per_block(&self) -> usize {
        self.bgeo.block_tokens / self.unit
    }

    /// Selection units of a layer holding `stored` positions of which `sealed` blocks are
    /// sealed: `upb` per sealed block, then the tail's (its positions in units, the last one
    /// possibly short).
    fn n_units(&self, stored: usize, sealed: usize) -> usize {
        let tail = stored.saturating_sub(sealed * self.bgeo.block_tokens);
        sealed * self.units_per_block() + tail.div_ceil(self.unit)
    }

    /// The positions of each of those units, in order.
    fn unit_sizes(&self, stored: usize, sealed: usize) -> Vec<usize> {
        let n_sealed = sealed * self.units_per_block();
        let tail = stored.saturating_sub(sealed * self.bgeo.block_tokens);
        (0..self.n_units(stored, sealed))
            .map(|u| match u.checked_sub(n_sealed) {
                None => self.unit,
                Some(i) => self.unit.min(tail - i * self.unit),
            })
            .collect()
    }

    /// A selection over units (from [`Self::sparse_select`], increasing, with head masks) as
    /// the blocks to read, increasing, and per block and KV head the units it attends
    /// (`masks[i · n_kv + g]`, bit `j` = unit `j` of block `i`, the tail block's too).
    fn unit_blocks(&self, units: &[(usize, u32)]) -> (Vec<usize>, Vec<u64>) {
        let (upb, n_kv) = (self.units_per_block(), self.geo.n_head_kv);
        let (mut read, mut masks) = (Vec::<usize>::new(), Vec::<u64>::new());
        for &(u, heads) in units {
            // The tail block's units follow its sealed blocks' in the same numbering.
            let (b, bits) = (u / upb, 1u64 << (u % upb));
            if read.last() != Some(&b) {
                read.push(b);
                masks.resize(masks.len() + n_kv, 0);
            }
            let base = masks.len() - n_kv;
            for (g, m) in masks[base..].iter_mut().enumerate() {
                if heads & (1 << g) != 0 {
                    *m |= bits;
                }
            }
        }
        (read, masks)
    }

    /// Key bounds of block `index` of `layer` (sealed, or the tail), if it exists and the
    /// layer keeps bounds (a layer sparse attention applies to): the box of its units' boxes.
    pub fn key_bounds(&self, layer: usize, index: usize) -> Option<KeyBounds> {
        if !self.sparse_layer(layer) {
            return None;
        }
        let l = self.layers.get(layer)?;
        let d = self.geo.head_dim;
        if index < l.sealed.len() {
            let upb = self.units_per_block();
            let (mut min, mut max) = (Vec::new(), Vec::new());
            for rows in &l.bound_rows {
                let (mut hi, mut lo) = rows.box_of(index * upb);
                for u in index * upb + 1..(index + 1) * upb {
                    let (h2, l2) = rows.box_of(u);
                    for j in 0..d {
                        hi[j] = hi[j].max(h2[j]);
                        lo[j] = lo[j].min(l2[j]);
                    }
                }
                max.extend_from_slice(&hi);
                min.extend_from_slice(&lo);
            }
            return Some(KeyBounds::from_parts(d, min, max));
        }
        (index == l.len / self.bgeo.block_tokens && !l.len.is_multiple_of(self.bgeo.block_tokens))
            .then(|| l.tail_bounds.clone())
    }

    fn pinned_bytes_now(&self) -> usize {
        let rings: usize = self.layers.iter().map(|l| l.ring.len()).sum();
        (self.layers.len() + rings + self.staging.len() + self.spare.len()) * self.slot_bytes
    }

    fn note_pinned(&mut self) {
        self.pinned_peak = self.pinned_peak.max(self.pinned_bytes_now());
    }

    /// The key bounds: bf16 tiles of the sealed blocks (and super-blocks) plus the tail's f32.
    fn bounds_bytes(&self) -> usize {
        let tail = 2 * self.geo.n_head_kv * self.geo.head_dim * 4;
        self.layers
            .iter()
            .map(|l| {
                let tiles: usize = l
                    .bound_rows
                    .iter()
                    .chain(&l.super_rows)
                    .map(BoundTiles::bytes)
                    .sum();
                let means: usize = l
                    .mean_rows
                    .iter()
                    .chain(&l.super_means)
                    .map(MeanRows::bytes)
                    .sum();
                tiles + means + tail
            })
            .sum()
    }

    fn check(&self) -> Result<(), KvError> {
        match &self.poisoned {
            Some(m) => Err(KvError::Failed(m.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, e: KvError) -> Result<T, KvError> {
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
        }
        Err(e)
    }

    fn send(&mut self, req: IoReq) -> Result<(), KvError> {
        let ok = self.tx.as_ref().is_some_and(|tx| tx.send(req).is_ok());
        if ok {
            Ok(())
        } else {
            self.poison(KvError::Failed("the KV I/O thread stopped".into()))
        }
    }

    /// Handle every completion that arrived, without waiting.
    fn poll(&mut self) -> Result<(), KvError> {
        while let Ok(d) = self.done.try_recv() {
            self.handle(d)?;
        }
        Ok(())
    }

    /// Wait for one completion and handle it.
    fn wait_one(&mut self) -> Result<(), KvError> {
        match self.done.recv() {
            Ok(d) => self.handle(d),
            Err(_) => self.poison(KvError::Failed("the KV I/O thread stopped".into())),
        }
    }

    fn handle(&mut self, d: IoDone) -> Result<(), KvError> {
        match d {
            IoDone::Write {
                frame,
                id,
                res,
                bytes,
            } => {
                self.writes_in_flight -= 1;
                self.stats[id.layer as usize].bytes_written += bytes;
                if let Err(e) = res {
                    return self.poison(KvError::Disk(e));
                }
                if let Some(f) = frame {
                    self.arena.complete_write(f).map_err(arena_err)?;
                }
            }
            IoDone::Read {
                target,
                id,
                buf,
                res,
                demand,
                bytes,
            } => {
                self.reads_in_flight -= 1;
                self.stats[id.layer as usize].bytes_read += bytes;
                match target {
                    Target::Frame(f) => {
                        self.arena.restore(f, buf).map_err(arena_err)?;
                        let fi = &mut self.finfo[f];
                        fi.loading = false;
                        match res {
                            Ok(()) => {
                                let p = !demand && !fi.claimed;
                                fi.prefetched = p;
                                fi.arrived = p.then(Instant::now);
                            }
                            Err(e) => fi.error = Some(e.to_string()),
                        }
                    }
                    Target::Staging(k) => {
                        self.staging[k] = Some(buf);
                        self.staging_res[k] = Some(res.map_err(|e| e.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Make sure the file has room for `slot`.
    fn ensure_slot(&mut self, slot: u64) -> Result<(), KvError> {
        if slot < self.capacity {
            return Ok(());
        }
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        self.send(IoReq::Reserve {
            slots: slot + 1,
            reply: rtx,
        })?;
        match rrx.recv() {
            Ok(Ok(c)) => {
                self.capacity = c;
                Ok(())
            }
            Ok(Err(e)) => self.poison(KvError::Disk(e)),
            Err(_) => self.poison(KvError::Failed("the KV I/O thread stopped".into())),
        }
    }

    /// A frame for `id` in `state`, waiting for write-behind to free one if needed; `None` if
    /// the RAM tier has none to give (all pinned, or a budget below one frame).
    fn insert_frame(&mut self, id: BlockId, state: FrameState) -> Result<Option<FrameId>, KvError> {
        loop {
            match self.arena.insert(id, state) {
                Ok(f) => {
                    self.finfo[f] = FrameInfo::default();
                    return Ok(Some(f));
                }
                Err(ArenaError::NoEvictableFrame { .. }) => {
                    if self.writes_in_flight > 0 {
                        self.wait_one()?;
                    } else {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(arena_err(e)),
            }
        }
    }

    fn fresh_buf(&mut self) -> Arc<AlignedBuf> {
        match self.spare.pop() {
            Some(mut b) => {
                if let Some(m) = Arc::get_mut(&mut b) {
                    m.fill(0);
                    return b;
                }
                Arc::new(AlignedBuf::zeroed(self.slot_bytes))
            }
            None => Arc::new(AlignedBuf::zeroed(self.slot_bytes)),
        }
    }

    /// The tail of `layer` is full: move it to the ring or to the store (write-behind).
    fn seal(&mut self, layer: usize) -> Result<(), KvError> {
        let bt = self.bgeo.block_tokens;
        let index = self.layers[layer].len / bt - 1;
        let fresh = self.fresh_buf();
        if self.layers[layer].window.is_some() {
            let keep_from = self.layers[layer]
                .len
                .saturating_sub(self.layers[layer].window.unwrap_or(0) + self.cfg.max_batch);
            let l = &mut self.layers[layer];
            let full = std::mem::replace(&mut l.tail, fresh);
            l.ring.push_back((index, full));
            l.tail_bounds.reset();
            // No batch of up to `max_batch` queries can see blocks ending before `keep_from`.
            self.trim_ring(layer, keep_from);
            self.note_pinned();
            return Ok(());
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = self.next_slot;
                self.ensure_slot(s)?;
                self.next_slot += 1;
                s
            }
        };
        let (bgeo, dtype, unit) = (self.bgeo, self.cfg.dtype, self.unit);
        let bounds = self.sparse_on[layer];
        let l = &mut self.layers[layer];
        let d = self.geo.head_dim;
        if bounds && unit >= bt {
            push_bound_rows(&mut l.bound_rows, &mut l.width_max, &l.tail_bounds);
        } else if bounds {
            // One row per unit, from the block's stored keys.
            let mut ub = KeyBounds::new(bgeo.n_head_kv, d);
            for j in 0..bt / unit {
                unit_box(&bgeo, dtype, &l.tail, j * unit..(j + 1) * unit, &mut ub);
                push_bound_rows(&mut l.bound_rows, &mut l.width_max, &ub);
            }
        }
        if self.rest_on[layer] {
            // One mean row per unit and KV head, from the keys and values as stored.
            let (mut k, mut v) = ([0.0f32; MAX_HEAD_DIM], [0.0f32; MAX_HEAD_DIM]);
            for j in 0..bt / unit.min(bt) {
                let slots = j * unit.min(bt)..(j + 1) * unit.min(bt);
                for (g, rows) in l.mean_rows.iter_mut().enumerate() {
                    unit_means(
                        &bgeo,
                        dtype,
                        &l.tail,
                        g,
                        slots.clone(),
                        &mut k[..d],
                        &mut v[..d],
                    );
                    rows.push(&k[..d], &v[..d]);
                }
            }
            while l.super_means[0].len() < l.mean_rows[0].len() / SUPER_SPAN {
                let t = l.super_means[0].len();
                for (rows, sup) in l.mean_rows.iter().zip(l.super_means.iter_mut()) {
                    rows.mean_of(
                        t * SUPER_SPAN,
                        (t + 1) * SUPER_SPAN,
                        &mut k[..d],
                        &mut v[..d],
                    );
                    sup.push(&k[..d], &v[..d]);
                }
            }
        }
        l.tail_bounds.reset();
        l.sealed.push(Sealed { slot });
        let tree = self
            .cfg
            .sparse
            .is_some_and(|sp| sp.index == SparseIndex::Tree);
        // A super-block per tile of SUPER_SPAN rows (units) once the tile is complete.
        while tree && l.super_rows[0].len() < l.bound_rows[0].len() / SUPER_SPAN {
            let t = l.super_rows[0].len();
            for (rows, sup) in l.bound_rows.iter().zip(l.super_rows.iter_mut()) {
                let (hi, lo) = rows.union_box(t);
                sup.push(&hi, &lo, None);
            }
        }
        let id = BlockId::new(layer as u32, index as u32);
        let payload = self.layout.used_bytes;
        match self.insert_frame(id, FrameState::Dirty)? {
            Some(f) => {
                let full = std::mem::replace(&mut self.layers[layer].tail, fresh);
                let old = self.arena.swap(f, full).map_err(arena_err)?;
                self.spare.push(old);
                self.arena.begin_write(f).map_err(arena_err)?;
                let buf = self.arena.share(f);
                self.writes_in_flight += 1;
                self.write_behind_max = self.write_behind_max.max(self.writes_in_flight);
                self.send(IoReq::Write {
                    frame: Some(f),
                    id,
                    slot,
                    buf,
                    payload,
                })?;
            }
            None => {
                // No frame: write from the tail itself and wait (tiny budgets only).
                let full = std::mem::replace(&mut self.layers[layer].tail, fresh);
                self.writes_in_flight += 1;
                self.write_behind_max = self.write_behind_max.max(self.writes_in_flight);
                self.send(IoReq::Write {
                    frame: None,
                    id,
                    slot,
                    buf: full.clone(),
                    payload,
                })?;
                while Arc::strong_count(&full) > 1 {
                    self.wait_one()?;
                }
                self.spare.push(full);
            }
        }
        self.note_pinned();
        Ok(())
    }

    /// Drop the ring blocks of sliding `layer` that end before position `first_needed` (their
    /// buffers are kept as spares, at most four).
    fn trim_ring(&mut self, layer: usize, first_needed: usize) {
        let bt = self.bgeo.block_tokens;
        let l = &mut self.layers[layer];
        while l
            .ring
            .front()
            .is_some_and(|(i, _)| (i + 1) * bt <= first_needed)
        {
            if let Some((_, buf)) = l.ring.pop_front() {
                self.spare.push(buf);
            }
        }
        self.spare.truncate(4);
    }

    /// Prefetch depth for predictions of a whole sparse pass (reuse, speculation): a quarter
    /// of the frames, so a layer's selection can be in flight while the other frames hold the
    /// blocks worth keeping.
    fn sparse_depth(&self) -> usize {
        let frames = self.arena.frame_count();
        if self.prefetcher.is_none() && !self.cfg.prefetch.speculates() || frames < 16 {
            0
        } else {
            frames / 4
        }
    }

    /// Frames a pass holds at once, and the prefetch depth, for `n_tokens` queries.
    fn chunk_plan(&self, n_tokens: usize, n_head: usize) -> (usize, usize) {
        let frames = self.arena.frame_count();
        // Per-block partial states of one chunk stay under ~8 MiB.
        let per_block = n_tokens * n_head * (self.geo.head_dim + 2) * 4;
        let by_mem = ((8usize << 20) / per_block.max(1)).max(1);
        // Small arenas still read 4 blocks per batch (the ones the arena cannot hold go to
        // staging buffers, counted as pinned memory).
        let chunk = if frames >= 16 {
            (frames / 4).min(32)
        } else {
            4
        }
        .min(by_mem);
        // Prefetch depth: up to four chunks in flight when the arena is large enough (a deeper
        // queue keeps the disk busy while the pass computes), one chunk on small arenas.
        let pf = if self.prefetcher.is_some() && frames >= 3 * chunk {
            chunk * (frames / (8 * chunk)).clamp(1, 4)
        } else {
            0
        };
        (chunk, pf)
    }

    /// Start reads of the store blocks `ids` that are not resident, up to the prefetch depth.
    /// `src`: the prediction set these ids are scored in (0 = pass order, 1 = speculation;
    /// `None` = not a prediction, e.g. the rest of a known selection).
    fn prefetch(
        &mut self,
        ids: &[BlockId],
        depth: usize,
        src: Option<usize>,
    ) -> Result<(), KvError> {
        if let Some(k) = src {
            for id in ids {
                let l = id.layer as usize;
                if self
                    .layers
                    .get(l)
                    .is_some_and(|x| (id.index as usize) < x.sealed.len())
                {
                    self.pred[l][k].insert(id.index);
                }
            }
        }
        for &id in ids {
            if self.prefetch_pinned >= depth {
                break;
            }
            if self.arena.frame_of(id).is_some() {
                continue;
            }
            let Some(slot) = self
                .layers
                .get(id.layer as usize)
                .and_then(|l| l.sealed.get(id.index as usize))
                .map(|s| s.slot)
            else {
                continue;
            };
            let f = match self.arena.insert(id, FrameState::Clean) {
                Ok(f) => f,
                Err(ArenaError::NoEvictableFrame { .. }) => break,
                Err(e) => return Err(arena_err(e)),
            };
            self.finfo[f] = FrameInfo {
                loading: true,
                prefetch_pin: true,
                ..FrameInfo::default()
            };
            self.arena.pin(f).map_err(arena_err)?;
            self.prefetch_pinned += 1;
            self.stats[id.layer as usize].prefetch_reads += 1;
            self.read_into_frame(f, id, slot, false)?;
        }
        Ok(())
    }

    /// Lend frame `f` (pinned, holding `id`) to the I/O thread for a read of `slot`.
    fn read_into_frame(
        &mut self,
        f: FrameId,
        id: BlockId,
        slot: u64,
        demand: bool,
    ) -> Result<(), KvError> {
        self.finfo[f].loading = true;
        let buf = self.arena.lend(f);
        self.reads_in_flight += 1;
        self.send(IoReq::Read {
            target: Target::Frame(f),
            id,
            slot,
            buf,
            demand,
        })
    }

    fn staging_slot(&mut self) -> usize {
        if let Some(k) = self.staging.iter().position(|s| s.is_some()) {
            return k;
        }
        self.staging
            .push(Some(Arc::new(AlignedBuf::zeroed(self.slot_bytes))));
        self.staging_res.push(None);
        self.note_pinned();
        self.staging.len() - 1
    }

    /// Pin the store blocks `ids` of a chunk (reading the missing ones), then start the
    /// prefetch of `next`, then wait until every block is here.
    fn acquire(
        &mut self,
        ids: &[BlockId],
        next: &[BlockId],
        next_src: Option<usize>,
        pf_depth: usize,
        held: &mut Vec<Held>,
    ) -> Result<(), KvError> {
        held.clear();
        let mut busy_staging = Vec::new();
        for &id in ids {
            let layer = id.layer as usize;
            let slot = self.layers[layer].sealed[id.index as usize].slot;
            self.stats[layer].blocks_read += 1;
            if let Some(f) = self.arena.lookup(id) {
                self.arena.pin(f).map_err(arena_err)?;
                let fi = &mut self.finfo[f];
                if fi.prefetch_pin {
                    fi.prefetch_pin = false;
                    self.prefetch_pinned -= 1;
                    self.arena.unpin(f).map_err(arena_err)?;
                }
                let fi = &mut self.finfo[f];
                let st = &mut self.stats[layer];
                if fi.loading {
                    fi.claimed = true;
                    st.late += 1;
                } else if fi.prefetched {
                    fi.prefetched = false;
                    st.prefetch_hits += 1;
                    if let Some(t) = fi.arrived.take() {
                        st.prefetch_lead_ns += t.elapsed().as_nanos() as u64;
                    }
                } else {
                    st.hits += 1;
                }
                held.push(Held::Frame(f));
                continue;
            }
            self.stats[layer].misses += 1;
            match self.insert_frame(id, FrameState::Clean)? {
                Some(f) => {
                    self.arena.pin(f).map_err(arena_err)?;
                    if self.cfg.hints && !self.sparse_step {
                        self.arena.hint_next_use(id, self.pass_len.max(1));
                    }
                    self.read_into_frame(f, id, slot, true)?;
                    held.push(Held::Frame(f));
                }
                None => {
                    let k = self.staging_slot();
                    let buf = self.staging[k].take().expect("free staging buffer");
                    self.staging_res[k] = None;
                    busy_staging.push(k);
                    self.reads_in_flight += 1;
                    self.send(IoReq::Read {
                        target: Target::Staging(k),
                        id,
                        slot,
                        buf,
                        demand: true,
                    })?;
                    held.push(Held::Staging(k));
                }
            }
        }
        if pf_depth > 0 {
            self.prefetch(next, pf_depth, next_src)?;
        }
        let t0 = Instant::now();
        let mut waited = false;
        loop {
            let pending = held.iter().any(|h| match *h {
                Held::Frame(f) => self.finfo[f].loading,
                Held::Staging(k) => self.staging_res[k].is_none(),
            });
            if !pending {
                break;
            }
            waited = true;
            self.wait_one()?;
        }
        if waited {
            let layer = ids[0].layer as usize;
            self.stats[layer].stall_ns += t0.elapsed().as_nanos() as u64;
        }
        for h in held.iter() {
            let err = match *h {
                Held::Frame(f) => self.finfo[f].error.clone(),
                Held::Staging(k) => self.staging_res[k].clone().and_then(|r| r.err()),
            };
            if let Some(e) = err {
                return self.poison(KvError::Failed(e));
            }
        }
        Ok(())
    }

    fn release(&mut self, held: &[Held]) -> Result<(), KvError> {
        for h in held {
            match *h {
                Held::Frame(f) => self.arena.unpin(f).map_err(arena_err)?,
                Held::Staging(k) => self.staging_res[k] = None,
            }
        }
        Ok(())
    }

    /// Tell the policy when each resident block is next read, from the pass order of a step
    /// that starts at `layer`: `ahead` = its offset in the pass.
    fn hint_pass(&mut self, layer: usize) {
        let n = self.layers.len();
        let mut start = vec![0u64; n];
        let mut acc = 0u64;
        for k in 0..n {
            let l = (layer + k) % n;
            start[l] = acc;
            if self.layers[l].window.is_none() {
                acc += self.layers[l].sealed.len() as u64;
            }
        }
        self.pass_len = acc;
        if !self.cfg.hints || self.sparse_step || self.arena.free_count() > 0 {
            return;
        }
        for f in 0..self.arena.frame_count() {
            if let Some(b) = self.arena.block_of(f) {
                let ahead = start[b.layer as usize] + u64::from(b.index) + 1;
                self.arena.hint_next_use(b, ahead);
            }
        }
    }

    /// Ask the prefetcher (if any) with a view of the store.
    fn predict(
        &mut self,
        ask: impl FnOnce(&mut dyn Prefetcher, &StoreView<'_>) -> Vec<BlockId>,
        chunk: usize,
        lookahead: usize,
    ) -> Vec<BlockId> {
        let Some(mut p) = self.prefetcher.take() else {
            return Vec::new();
        };
        let sealed: Vec<usize> = self.layers.iter().map(|l| l.sealed.len()).collect();
        // In a sparse step, the full layers that select: their next pass (with one more
        // position stored) surely reads block 0 and the blocks of the recent positions.
        let sparse_from: Vec<Option<usize>> = match self.cfg.sparse {
            Some(sp) if self.sparse_step => (0..self.layers.len())
                .map(|l| {
                    let next = self.layers[l].len + 1;
                    (sp.selects_at(next) && self.sparse_layer(l))
                        .then(|| next.saturating_sub(sp.recent_tokens) / self.bgeo.block_tokens)
                })
                .collect(),
            _ => Vec::new(),
        };
        let view = StoreView {
            sealed: &sealed,
            windows: &self.geo.windows,
            chunk,
            lookahead,
            sparse_from: &sparse_from,
        };
        let ids = ask(p.as_mut(), &view);
        self.prefetcher = Some(p);
        ids
    }

    /// Whether speculation on `layer` would be used, the `--prefetch auto` gate aside: the mode
    /// speculates, the layer is sparse and longer than the budget, and its last pass had to
    /// read (selections that stay resident need no speculation).
    fn spec_eligible(&self, layer: usize) -> bool {
        self.cfg.prefetch.speculates()
            && self.cfg.sparse.is_some()
            && self.poisoned.is_none()
            && self.sparse_depth() > 0
            && self.layers.get(layer).is_some_and(|l| {
                l.window.is_none() && self.cfg.sparse.is_some_and(|s| s.selects_at(l.len))
            })
            && self.sparse_layer(layer)
            && self.needs_reads.get(layer).copied().unwrap_or(true)
    }

    /// [`KvCache::speculate`]'s work (the trait method times it for the layer's gate): score
    /// `layer`'s blocks with the estimated query and start reading the confident part of its
    /// selection.
    fn speculate_inner(&mut self, layer: usize, qy: &AttnQuery<'_>) -> Result<(), KvError> {
        self.check()?;
        if !self.wants_speculation(layer) || qy.n_tokens != 1 {
            return Ok(());
        }
        let Some(sp) = self.cfg.sparse else {
            return Ok(());
        };
        self.poll()?;
        let stored = self.layers[layer].len;
        self.stats[layer].speculations += 1;
        let Some(sel) = self.sparse_select(layer, qy, stored, &sp) else {
            return Ok(());
        };
        // Confidence gating: the estimate is noisy, and the blocks it takes last (at the
        // budget's margin) are the ones a small error swaps for others. Fetch the forced blocks
        // and the first half of the scored ones, most needed first; the pass reads the rest
        // ahead of itself once its exact selection is known.
        // (The selection is in units; a block is read when any of its units is.)
        let n_sealed = self.layers[layer].sealed.len();
        let upb = self.units_per_block();
        let scored: HashSet<usize> = sel.taken.iter().copied().collect();
        let keep = sel.taken.len().div_ceil(2);
        let mut seen = HashSet::new();
        let ids: Vec<BlockId> = sel
            .blocks
            .iter()
            .map(|&(u, _)| u)
            .filter(|u| !scored.contains(u))
            .chain(sel.taken[..keep].iter().copied())
            .map(|u| u / upb)
            .filter(|&b| b < n_sealed && seen.insert(b))
            .map(|b| BlockId::new(layer as u32, b as u32))
            .collect();
        let depth = self.sparse_depth();
        self.prefetch(&ids, depth, Some(1))
    }

    /// Whether `layer` is a full-attention layer that `--attention sparse` applies to: in
    /// `--sparse-layers` and not one of the first `dense_layers` full layers.
    fn sparse_layer(&self, layer: usize) -> bool {
        self.sparse_on.get(layer).copied().unwrap_or(false)
    }

    /// The upper-bound scores of `layer`'s selection units for one query token (`upb` per
    /// sealed block, then the tail block's, [`Self::n_units`]), in the column layout of
    /// [`select_blocks`] for `sp.group`, and the selection (in units).
    fn sparse_select(
        &self,
        layer: usize,
        qy: &AttnQuery<'_>,
        stored: usize,
        sp: &SparseConfig,
    ) -> Option<Selection> {
        let (bt, d, n_kv) = (
            self.bgeo.block_tokens,
            self.geo.head_dim,
            self.geo.n_head_kv,
        );
        if stored == 0 || !qy.n_head.is_multiple_of(n_kv) || qy.q.len() < qy.n_head * d {
            return None;
        }
        let group = qy.n_head / n_kv;
        if self.oracle {
            return self.oracle_select(layer, qy, stored, sp);
        }
        let per_head = match sp.group {
            GroupScore::Max => 1,
            GroupScore::Sum => group,
        };
        let l = &self.layers[layer];
        // Selection units: `upb` per sealed block (one bound row each), then those of the tail
        // block (partially filled; f32 boxes).
        let (unit, upb) = (self.unit, self.units_per_block());
        let n_blocks = (stored - 1) / bt + 1;
        let sealed_blocks = l.sealed.len().min(n_blocks);
        let n_sealed = sealed_blocks * upb;
        let tokens = self.unit_sizes(stored, sealed_blocks);
        let nb = tokens.len();
        // The tail's units: with whole-block units its running box, else the boxes of its
        // units from its stored keys.
        let owned: Vec<KeyBounds>;
        let tails: Vec<&KeyBounds> = if upb == 1 {
            (nb > n_sealed)
                .then_some(&l.tail_bounds)
                .into_iter()
                .collect()
        } else {
            owned = tokens[n_sealed..]
                .iter()
                .enumerate()
                .map(|(j, &t)| {
                    let mut b = KeyBounds::new(n_kv, d);
                    let slots = j * unit..j * unit + t;
                    unit_box(&self.bgeo, self.cfg.dtype, &l.tail, slots, &mut b);
                    b
                })
                .collect();
            owned.iter().collect()
        };
        let cols = n_kv * per_head;
        // The scaled query as rows `[q | |q|]` against the center/radius rows `[c | r]` (each
        // bound one dot product) and, for the mix, `[q | α|q|]` against `[s | r]`.
        let mix = l.bound_rows[0].is_mix();
        let n_q = qy.n_head;
        let row = 2 * d;
        let (mut qcr, mut qsr) = (vec![0.0f32; n_q * row], Vec::new());
        // The tail's f32 box is scored against `[max(q, 0) | min(q, 0)]`.
        let mut qpn = vec![0.0f32; n_q * row];
        for h in 0..n_q {
            for j in 0..d {
                let y = qy.q[h * d + j] * qy.scale;
                qcr[h * row + j] = y;
                qcr[h * row + d + j] = y.abs();
                qpn[h * row + j] = y.max(0.0);
                qpn[h * row + d + j] = y.min(0.0);
            }
        }
        if mix {
            qsr = qcr.clone();
            for h in 0..n_q {
                for x in &mut qsr[h * row + d..(h + 1) * row] {
                    *x *= MIX_ALPHA;
                }
            }
        }
        let complete = l.super_rows[0].len().min(n_sealed / SUPER_SPAN);
        let n_super = match sp.index {
            SparseIndex::Flat => 0,
            SparseIndex::Tree => complete,
        };
        // Scores of rows `a..b` for KV head `g`'s query heads, into score columns: block `i`,
        // column `s` at `dst[i · rs + s · cs]` (a Max column takes the group's largest; NaN
        // scores count as −∞). Mix rows are scored as the mix, super-block rows as bounds.
        let score_rows = |g: usize,
                          rows: &BoundTiles,
                          a: usize,
                          b: usize,
                          dst: &mut [f32],
                          rs: usize,
                          cs: usize| {
            let src = if rows.is_mix() { &qsr } else { &qcr };
            let qs = &src[g * group * row..(g + 1) * group * row];
            let count = b - a;
            let mut out = vec![0.0f32; group * count];
            rows.dots(qs, a, b, &mut out, count);
            let mut m = vec![f32::NAN; count];
            for s in 0..per_head {
                m.fill(f32::NAN);
                for hq in (s..group).step_by(per_head) {
                    for (x, &y) in m.iter_mut().zip(&out[hq * count..(hq + 1) * count]) {
                        *x = x.max(y);
                    }
                }
                for (i, &x) in m.iter().enumerate() {
                    dst[i * rs + s * cs] = if x.is_nan() { f32::NEG_INFINITY } else { x };
                }
            }
        };
        // Tail unit `ti`'s bound (it has no row yet), column `s` at `dst[s · cs]`.
        let tail_score = |g: usize, ti: usize, dst: &mut [f32], cs: usize| {
            for s in 0..per_head {
                dst[s * cs] = f32::NEG_INFINITY;
            }
            let tb = tails[ti];
            let mut mean = [0.0f32; MAX_HEAD_DIM];
            if mix {
                tb.mean(g, &mut mean[..d]);
            }
            for hq in 0..group {
                let h = g * group + hq;
                let q = &qpn[h * row..(h + 1) * row];
                let mut x = tb.upper_bound_split(g, &q[..d], &q[d..]);
                if mix {
                    let qm: f32 = (0..d).map(|j| qcr[h * row + j] * mean[j]).sum();
                    x = MIX_ALPHA * x + (1.0 - MIX_ALPHA) * qm;
                }
                let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
                let c = &mut dst[(hq % per_head) * cs];
                *c = c.max(x);
            }
        };
        // First level: the super-blocks and every block after them, per KV head in parallel,
        // column-major (`(sup, blk)[g]`: head g's columns over the super-blocks and over blocks
        // `lo..nb`).
        let lo = n_super * SUPER_SPAN;
        let nl = nb - lo;
        let mut per_g: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); n_kv];
        per_g
            .par_iter_mut()
            .enumerate()
            .for_each(|(g, (sup, blk))| {
                *sup = vec![0.0f32; per_head * n_super];
                *blk = vec![0.0f32; per_head * nl];
                if n_super > 0 {
                    score_rows(g, &l.super_rows[g], 0, n_super, sup, 1, n_super);
                }
                if n_sealed > lo {
                    score_rows(g, &l.bound_rows[g], lo, n_sealed, blk, 1, nl);
                }
                for ti in 0..nb - n_sealed {
                    tail_score(g, ti, &mut blk[n_sealed + ti - lo..], nl);
                }
            });
        let mut blocks = vec![0.0f32; nb * cols];
        let mut supers = Vec::with_capacity(n_super * cols);
        for (g, (sup, blk)) in per_g.iter().enumerate() {
            supers.extend_from_slice(sup);
            for s in 0..per_head {
                let c = g * per_head + s;
                blocks[c * nb + lo..(c + 1) * nb].copy_from_slice(&blk[s * nl..(s + 1) * nl]);
            }
        }
        // Second level, on demand: blocks `a..b` of KV head `g` (inside the sealed ones).
        let upper = |g: usize, a: usize, b: usize, out: &mut [f32]| {
            let sealed_end = b.min(n_sealed);
            if sealed_end > a {
                score_rows(g, &l.bound_rows[g], a, sealed_end, out, per_head, 1);
            }
            for i in sealed_end.max(a)..b {
                let o = &mut out[(i - a) * per_head..(i - a + 1) * per_head];
                tail_score(g, i - n_sealed, o, 1);
            }
        };
        // Lower bounds of a block's logits, for the certified mass rule (computed only for the
        // blocks taken): per query head `Σ_j max(q,0)_j·min_j + min(q,0)_j·max_j`; a Max column
        // takes the smallest over its group (a bound valid for every head of the group).
        let lower = |b: usize, out: &mut [f32]| {
            // A sealed block's `[c | −r]` against `[q | |q|]`; the tail's `[min | max]` against
            // `[qp | qn]`.
            let (mut cr, mut sw) = ([0.0f32; 2 * MAX_HEAD_DIM], [0.0f32; 2 * MAX_HEAD_DIM]);
            let (cr, sw) = (&mut cr[..row], &mut sw[..row]);
            for g in 0..n_kv {
                let sealed = b < n_sealed;
                if sealed {
                    let (c, r) = cr.split_at_mut(d);
                    l.bound_rows[g].center_radius(b, c, r);
                    r.iter_mut().for_each(|x| *x = -*x);
                } else {
                    sw[..d].copy_from_slice(tails[b - n_sealed].min(g));
                    sw[d..].copy_from_slice(tails[b - n_sealed].max(g));
                }
                for hq in 0..group {
                    let h = g * group + hq;
                    let x = if sealed {
                        crate::kernels::dot_f32(&qcr[h * row..(h + 1) * row], cr)
                    } else {
                        crate::kernels::dot_f32(&qpn[h * row..(h + 1) * row], sw)
                    };
                    let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
                    let c = g * per_head + hq % per_head;
                    if hq < per_head {
                        out[c] = x;
                    } else {
                        out[c] = out[c].min(x);
                    }
                }
            }
        };
        // Mix scores lie below the bounds by at most ‖q‖ · (the row's slack width) per sealed
        // block, and by (1 − α)·‖q‖·‖max − min‖ for the tail (its mean is inside its box): per
        // column, the largest over the head's blocks.
        let slack: Vec<f32> = if mix {
            let mut v = vec![0.0f32; cols];
            for g in 0..n_kv {
                let mut w = l.width_max[g];
                for tb in &tails {
                    let t = box_width(tb.max(g), tb.min(g));
                    if t.is_finite() {
                        w = w.max((1.0 - MIX_ALPHA) * t);
                    }
                }
                for hq in 0..group {
                    let h = g * group + hq;
                    let qn: f32 = qy.q[h * d..(h + 1) * d]
                        .iter()
                        .map(|x| x * x)
                        .sum::<f32>()
                        .sqrt();
                    let x = qn * qy.scale.abs() * w * (1.0 + 1e-5);
                    let c = g * per_head + hq % per_head;
                    v[c] = v[c].max(x);
                }
            }
            v
        } else {
            Vec::new()
        };
        let sc = select::Scores {
            n_kv,
            per_head,
            tokens: &tokens,
            blocks,
            span: SUPER_SPAN,
            supers,
            slack,
            eager_certificate: false,
        };
        select::select(sc, &upper, Some(&lower), sp)
    }

    /// `--sparse-rest mean`: merge into each query head's state (one token's, `states[h]`) the
    /// units its KV head did not attend in this pass (`list` and `unit_masks` as the pass read
    /// them), each as its mean key and value with weight `n` ([`rest::fold_units`]).
    fn fold_rest(
        &self,
        layer: usize,
        qy: &AttnQuery<'_>,
        stored: usize,
        list: &[usize],
        unit_masks: &[u64],
        states: &mut [AttnState],
    ) {
        let (d, n_kv) = (self.geo.head_dim, self.geo.n_head_kv);
        let group = qy.n_head / n_kv;
        let (unit, upb) = (self.unit, self.units_per_block());
        let l = &self.layers[layer];
        let n_sealed = l.sealed.len();
        let nu = self.n_units(stored, n_sealed);
        let sizes = self.unit_sizes(stored, n_sealed);
        let sealed_units = n_sealed * upb;
        // attended[g · nu + u]: KV head g attended unit u.
        let mut attended = vec![false; n_kv * nu];
        for (i, &b) in list.iter().enumerate() {
            for g in 0..n_kv {
                let mut bits = unit_masks[i * n_kv + g];
                while bits != 0 {
                    let u = b * upb + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if u < nu {
                        attended[g * nu + u] = true;
                    }
                }
            }
        }
        let (bgeo, dtype) = (self.bgeo, self.cfg.dtype);
        let ln_unit = (unit.min(self.bgeo.block_tokens) as f32).ln();
        let ln_super = ((SUPER_SPAN * unit.min(self.bgeo.block_tokens)) as f32).ln();
        states
            .par_chunks_mut(group)
            .enumerate()
            .for_each(|(g, st)| {
                let wanted = |u: usize| !attended[g * nu + u];
                // What to fold, in unit order: a complete super-block of which the head attends
                // no unit as its one summary, else its wanted units one by one.
                let n_sup = l.super_means[g].len().min(sealed_units / SUPER_SPAN);
                let mut items: Vec<Rest> = Vec::new();
                for sb in 0..n_sup {
                    let us = sb * SUPER_SPAN..(sb + 1) * SUPER_SPAN;
                    if us.clone().all(wanted) {
                        items.push(Rest::Super(sb));
                    } else {
                        items.extend(us.filter(|&u| wanted(u)).map(Rest::Unit));
                    }
                }
                items.extend(
                    (n_sup * SUPER_SPAN..nu)
                        .filter(|&u| wanted(u))
                        .map(Rest::Unit),
                );
                let fill = |i: usize, k: &mut [f32], v: &mut [f32]| match items[i] {
                    Rest::Super(sb) => {
                        l.super_means[g].row(sb, k, v);
                        ln_super
                    }
                    Rest::Unit(u) if u < sealed_units => {
                        if u >= l.mean_rows[g].len() {
                            return f32::NEG_INFINITY;
                        }
                        l.mean_rows[g].row(u, k, v);
                        ln_unit
                    }
                    Rest::Unit(u) => {
                        // A unit of the tail block (the recent positions are nearly always
                        // attended): its means from the stored tail.
                        let t0 = (u - sealed_units) * unit;
                        unit_means(&bgeo, dtype, &l.tail, g, t0..t0 + sizes[u], k, v);
                        (sizes[u] as f32).ln()
                    }
                };
                let mut rest = vec![AttnState::new(d); group];
                let qs = &qy.q[g * group * d..(g + 1) * group * d];
                rest::fold_units(items.len(), &fill, qs, d, qy.scale, &mut rest);
                for (s, r) in st.iter_mut().zip(&rest) {
                    s.merge(r);
                }
            });
    }

    /// The research oracle (`KVSPOOL_SPARSE_ORACLE=1`): the same selection rule, fed with each
    /// block's *exact* attention mass per query head (from its decoded keys) instead of the
    /// key-bound estimate — the best any block scoring could do at this budget. Blocks not
    /// resident keep their bound (the oracle is meant for runs whose KV fits in RAM).
    fn oracle_select(
        &self,
        layer: usize,
        qy: &AttnQuery<'_>,
        stored: usize,
        sp: &SparseConfig,
    ) -> Option<Selection> {
        let (bt, d, n_kv) = (
            self.bgeo.block_tokens,
            self.geo.head_dim,
            self.geo.n_head_kv,
        );
        let group = qy.n_head / n_kv;
        let l = &self.layers[layer];
        // Units as in `sparse_select`: `upb` per sealed block, then the tail block.
        let (unit, upb) = (self.unit, self.units_per_block());
        let n_blocks = (stored - 1) / bt + 1;
        let sealed_blocks = l.sealed.len().min(n_blocks);
        let tokens = self.unit_sizes(stored, sealed_blocks);
        let nb = tokens.len();
        let cols = n_kv * group;
        let mut scores = vec![f32::NEG_INFINITY; nb * cols];
        let mut key = [0.0f32; MAX_HEAD_DIM];
        for b in 0..nb {
            // Unit `b`: its block and first slot.
            let (blk, t0) = (b / upb, (b % upb) * unit);
            let data: Option<&[u8]> = if blk < sealed_blocks {
                self.arena
                    .frame_of(BlockId::new(layer as u32, blk as u32))
                    .and_then(|f| self.arena.try_data(f))
            } else {
                Some(&l.tail[..])
            };
            for g in 0..n_kv {
                for hq in 0..group {
                    let h = g * group + hq;
                    let q = &qy.q[h * d..(h + 1) * d];
                    let sc = match data {
                        Some(data) => {
                            let mut logits = Vec::with_capacity(tokens[b]);
                            for t in t0..t0 + tokens[b] {
                                decode_k_row(&self.bgeo, self.cfg.dtype, data, g, t, &mut key[..d]);
                                let dot: f32 = q.iter().zip(&key[..d]).map(|(a, b)| a * b).sum();
                                logits.push(dot * qy.scale);
                            }
                            let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let lse = mx + logits.iter().map(|x| (x - mx).exp()).sum::<f32>().ln();
                            // tokens · exp(score) = Σ exp(logit): the exact mass, unnormalized.
                            lse - (tokens[b] as f32).ln()
                        }
                        None => {
                            // Not resident: the unit's key bound.
                            let (hi, lo) = l.bound_rows[g].box_of(b);
                            let ub: f32 = (0..d).map(|j| (q[j] * hi[j]).max(q[j] * lo[j])).sum();
                            ub * qy.scale
                        }
                    };
                    scores[b * cols + g * group + hq] = sc;
                }
            }
        }
        // Exact masses: the lower bound is the score itself.
        let exact =
            |b: usize, out: &mut [f32]| out.copy_from_slice(&scores[b * cols..(b + 1) * cols]);
        let upper = select::upper_from(&scores, n_kv, group);
        select::select(
            flat_scores(&scores, n_kv, group, &tokens),
            &upper,
            Some(&exact),
            sp,
        )
    }

    /// A store pass over `layer` read the sealed blocks `read`: score the predictions made for
    /// it, tell the prefetcher, and release the prefetch pins of its blocks it did not read
    /// (they stay cached, evictable).
    fn end_store_pass(&mut self, layer: usize, read: &[usize]) -> Result<(), KvError> {
        let [order, spec] = std::mem::take(&mut self.pred[layer]);
        let d = self.stats[layer].sub(&self.pass_base);
        self.needs_reads[layer] = d.misses + d.late + d.prefetch_hits > 0;
        let used = |p: &HashSet<u32>| read.iter().filter(|&&i| p.contains(&(i as u32))).count();
        let st = &mut self.stats[layer];
        st.predicted += order.len() as u64;
        st.predicted_used += used(&order) as u64;
        st.spec_predicted += spec.len() as u64;
        st.spec_used += used(&spec) as u64;
        if let Some(p) = self.prefetcher.as_mut() {
            p.observe(layer, read);
        }
        if self.sparse_step && self.cfg.hints {
            // A block a sparse pass read is likely read again by the same layer at the next
            // token (selections change slowly): predict its next use one step ahead, so the
            // policy keeps it over blocks no selection wanted (without a hint, a block read
            // once has no reuse history and would be evicted first).
            let full = self.layers.iter().filter(|l| l.window.is_none()).count() as u64;
            let ahead = (read.len() as u64 * full).max(1);
            for &i in read {
                self.arena
                    .hint_next_use(BlockId::new(layer as u32, i as u32), ahead);
            }
        }
        let mut unused = 0u64;
        // Scan the frames only when some are prefetch-pinned (most passes have none).
        let scan = if self.prefetch_pinned > 0 {
            self.finfo.len()
        } else {
            0
        };
        for f in 0..scan {
            if !self.finfo[f].prefetch_pin {
                continue;
            }
            if self
                .arena
                .block_of(f)
                .is_some_and(|b| b.layer as usize == layer)
            {
                self.finfo[f].prefetch_pin = false;
                self.finfo[f].prefetched = false;
                self.prefetch_pinned -= 1;
                self.arena.unpin(f).map_err(arena_err)?;
                unused += 1;
            }
        }
        self.stats[layer].prefetch_unused += unused;
        Ok(())
    }

    fn write_trace(&mut self, layer: usize, n_tokens: usize, d: &LayerStats, ev: u64, dur: f64) {
        let Some(w) = self.trace.as_mut() else { return };
        let line = serde_json::json!({
            "step": self.step,
            "layer": layer,
            "t_s": self.started.elapsed().as_secs_f64(),
            "dur_s": dur,
            "n_tokens": n_tokens,
            "blocks_read": d.blocks_read,
            "hits": d.hits,
            "prefetch_hits": d.prefetch_hits,
            "late": d.late,
            "misses": d.misses,
            "bytes_read": d.bytes_read,
            "bytes_written": d.bytes_written,
            "stall_s": d.stall_ns as f64 * 1e-9,
            "predicted": d.predicted,
            "predicted_used": d.predicted_used,
            "spec_predicted": d.spec_predicted,
            "spec_used": d.spec_used,
            "speculations": d.speculations,
            "spec_gated": d.spec_gated,
            "prefetch_reads": d.prefetch_reads,
            "prefetch_unused": d.prefetch_unused,
            "prefetch_lead_s": d.prefetch_lead_ns as f64 * 1e-9,
            "sparse_candidates": d.sparse_candidates,
            "sparse_selected": d.sparse_selected,
            "sparse_head_candidates": d.sparse_head_candidates,
            "sparse_head_attended": d.sparse_head_attended,
            "evictions": ev,
            "write_behind": self.writes_in_flight,
            "ram_resident_bytes": self.arena.resident_bytes(),
            "ram_peak_bytes": self.arena.ram_peak_bytes(),
        });
        if writeln!(w, "{line}").is_err() {
            tracing::warn!("could not write the KV trace; tracing stops");
            self.trace = None;
        }
    }

    /// Wait for every read and write in flight.
    fn drain(&mut self) -> Result<(), KvError> {
        while self.reads_in_flight + self.writes_in_flight > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    /// Make every sealed block durable on disk (waits for write-behind, then fsync).
    pub fn flush(&mut self) -> Result<(), KvError> {
        self.check()?;
        self.drain()?;
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        self.send(IoReq::Sync { reply: rtx })?;
        match rrx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => self.poison(KvError::Disk(e)),
            Err(_) => self.poison(KvError::Failed("the KV I/O thread stopped".into())),
        }
    }

    /// Read block `index` of `layer` (sealed) into `dst` synchronously (truncate).
    fn load_block(&mut self, layer: usize, index: usize) -> Result<Arc<AlignedBuf>, KvError> {
        let id = BlockId::new(layer as u32, index as u32);
        let mut buf = self.fresh_buf();
        if let Some(f) = self.arena.frame_of(id) {
            if let (Some(src), Some(dst)) = (self.arena.try_data(f), Arc::get_mut(&mut buf)) {
                dst.copy_from_slice(src);
                return Ok(buf);
            }
        }
        let slot = self.layers[layer].sealed[index].slot;
        let k = self.staging_slot();
        let sbuf = self.staging[k].take().expect("free staging buffer");
        self.staging_res[k] = None;
        self.reads_in_flight += 1;
        self.send(IoReq::Read {
            target: Target::Staging(k),
            id,
            slot,
            buf: sbuf,
            demand: true,
        })?;
        while self.staging_res[k].is_none() {
            self.wait_one()?;
        }
        if let Some(Err(e)) = self.staging_res[k].take() {
            return self.poison(KvError::Failed(e));
        }
        if let (Some(src), Some(dst)) = (self.staging[k].as_ref(), Arc::get_mut(&mut buf)) {
            dst.copy_from_slice(src);
        }
        Ok(buf)
    }

    fn truncate_inner(&mut self, n: usize) -> Result<(), KvError> {
        self.drain()?;
        // Release prefetch pins: the blocks stay cached, unpinned.
        for f in 0..self.finfo.len() {
            if self.finfo[f].prefetch_pin {
                self.finfo[f].prefetch_pin = false;
                self.arena.unpin(f).map_err(arena_err)?;
            }
        }
        self.prefetch_pinned = 0;
        let bt = self.bgeo.block_tokens;
        // Bound rows per sealed block.
        let upb = self.units_per_block();
        for layer in 0..self.layers.len() {
            let len = self.layers[layer].len;
            if n >= len {
                continue;
            }
            let keep = n / bt;
            let rem = n % bt;
            // The block that becomes the tail, if the cut is inside a sealed block.
            let new_tail = if rem > 0 && keep < self.layers[layer].sealed.len() {
                Some(self.load_block(layer, keep)?)
            } else if rem > 0 && self.layers[layer].window.is_some() {
                self.layers[layer]
                    .ring
                    .iter()
                    .find(|(i, _)| *i == keep)
                    .map(|(_, b)| b.clone())
            } else {
                None
            };
            let l = &mut self.layers[layer];
            // Drop sealed blocks from `keep` on (their slots are reused).
            for (i, s) in l.sealed.drain(keep.min(l.sealed.len())..).enumerate() {
                self.free_slots.push(s.slot);
                let id = BlockId::new(layer as u32, (keep + i) as u32);
                self.arena.remove(id).map_err(arena_err)?;
            }
            l.ring.retain(|(i, _)| *i < keep);
            for rows in l.bound_rows.iter_mut() {
                rows.truncate(keep.min(l.sealed.len()) * upb);
            }
            for rows in l.super_rows.iter_mut() {
                rows.truncate(keep.min(l.sealed.len()) * upb / SUPER_SPAN);
            }
            for rows in l.mean_rows.iter_mut() {
                rows.truncate(keep.min(l.sealed.len()) * upb);
            }
            for rows in l.super_means.iter_mut() {
                rows.truncate(keep.min(l.sealed.len()) * upb / SUPER_SPAN);
            }
            if let Some(t) = new_tail {
                l.tail = if Arc::strong_count(&t) == 1 {
                    t
                } else {
                    let mut c = AlignedBuf::zeroed(t.len());
                    c.copy_from_slice(&t);
                    Arc::new(c)
                };
            } else if rem == 0 {
                if let Some(m) = Arc::get_mut(&mut l.tail) {
                    m.fill(0);
                } else {
                    l.tail = Arc::new(AlignedBuf::zeroed(self.slot_bytes));
                }
            }
            // Recompute the tail's key bounds over its first `rem` positions (sparse layers
            // only: no other layer keeps bounds).
            l.tail_bounds.reset();
            let mut key = [0.0f32; MAX_HEAD_DIM];
            let d = self.geo.head_dim;
            let bounded = if self.sparse_on[layer] { rem } else { 0 };
            for t in 0..bounded {
                for h in 0..self.geo.n_head_kv {
                    decode_k_row(&self.bgeo, self.cfg.dtype, &l.tail, h, t, &mut key[..d]);
                    l.tail_bounds.update(h, &key[..d]);
                }
            }
            l.len = n;
        }
        Ok(())
    }

    /// Zero the counters (hits, misses, bytes, stall, write-behind depth) and start a new
    /// RAM peak from what is resident now, e.g. after a benchmark's fill.
    pub fn reset_counters(&mut self) {
        self.stats
            .iter_mut()
            .for_each(|s| *s = LayerStats::default());
        self.trace_base
            .iter_mut()
            .for_each(|s| *s = LayerStats::default());
        self.write_behind_max = self.writes_in_flight;
        self.evictions_base = self.arena.stats().evictions;
    }

    /// Counters and sizes so far.
    pub fn kv_stats(&self) -> KvStats {
        let mut tot = LayerStats::default();
        for s in &self.stats {
            tot.add(s);
        }
        KvStats {
            dtype: self.cfg.dtype.name().into(),
            ram_budget_bytes: self.cfg.ram_bytes as u64,
            ram_peak_bytes: self.arena.ram_peak_bytes() as u64,
            disk_bytes: self.capacity * self.slot_bytes as u64 + super::disk::HEADER_BYTES,
            blocks_read: tot.blocks_read,
            hits: tot.hits,
            prefetch_hits: tot.prefetch_hits,
            late: tot.late,
            misses: tot.misses,
            hit_rate: tot.hit_rate(),
            stall_s: tot.stall_ns as f64 * 1e-9,
            bytes_read: tot.bytes_read,
            bytes_written: tot.bytes_written,
            evictions: self.arena.stats().evictions - self.evictions_base,
            write_behind_max: self.write_behind_max as u64,
            frame_bytes: self.slot_bytes as u64,
            frames: self.arena.frame_count() as u64,
            pinned_bytes: self.pinned_peak as u64,
            bounds_bytes: self.bounds_bytes() as u64,
            unit_tokens: self.unit as u64,
            index_bytes: self.index_bytes as u64,
            policy: self.arena.policy_name().into(),
            backend: self.backend_desc.clone(),
            prefetch: self.cfg.prefetch.name().into(),
            layers: self.stats.clone(),
        }
    }
}

/// The fixed inputs of one attention call.
struct Pass<'a> {
    bgeo: BlockGeometry,
    dtype: KvDtype,
    q: &'a AttnQuery<'a>,
    group: usize,
    n_kv: usize,
    /// Positions per selection unit (the unit masks of a sparse pass).
    unit: usize,
}

impl Pass<'_> {
    /// Slots of block `b` that query token `t` sees (may be empty).
    fn range(&self, b: usize, t: usize, len: usize) -> std::ops::Range<usize> {
        let bt = self.bgeo.block_tokens;
        let p = self.q.pos0 + t;
        let lo = self.q.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let start = lo.max(b * bt);
        let end = (p + 1).min((b + 1) * bt).min(len);
        if start >= end {
            0..0
        } else {
            start - b * bt..end - b * bt
        }
    }

    /// Attention of token `t`'s heads of KV head `g` over the slots `r` of one block that lie
    /// in the units of `units` (bit `j`: slots `j·unit .. (j+1)·unit`), from a fresh state.
    /// `runs` is the caller's reusable buffer for the unit runs.
    #[allow(clippy::too_many_arguments)]
    fn partial(
        &self,
        t: usize,
        g: usize,
        block: &[u8],
        r: std::ops::Range<usize>,
        units: u64,
        parts: &mut [AttnState],
        scratch: &mut BlockScratch,
        runs: &mut Vec<std::ops::Range<usize>>,
    ) {
        let d = self.bgeo.head_dim;
        for s in parts.iter_mut() {
            s.reset();
        }
        let h0 = t * self.q.n_head + g * self.group;
        let upb = self.bgeo.block_tokens / self.unit;
        let full = if upb >= 64 {
            u64::MAX
        } else {
            (1u64 << upb) - 1
        };
        // The runs of consecutive units, clipped to `r`, in slot order (one run: `r` itself).
        runs.clear();
        let runs: &[std::ops::Range<usize>] = if units & full == full {
            std::slice::from_ref(&r)
        } else {
            let mut j = 0;
            while j < upb {
                if units & (1 << j) == 0 {
                    j += 1;
                    continue;
                }
                let j0 = j;
                while j < upb && units & (1 << j) != 0 {
                    j += 1;
                }
                let (a, b) = ((j0 * self.unit).max(r.start), (j * self.unit).min(r.end));
                if a < b {
                    runs.push(a..b);
                }
            }
            runs
        };
        attend_block_runs(
            parts,
            &self.q.q[h0 * d..(h0 + self.group) * d],
            block,
            &self.bgeo,
            self.dtype,
            g,
            runs,
            self.q.scale,
            scratch,
        );
    }

    /// Merge the blocks of one chunk (in order) into the running `states`.
    /// `parts` is scratch for the decode path's per-block states (grown as needed, reused).
    /// `masks[i · n_kv + g]` (if not empty): the units of block `blocks[i]` KV head `g`
    /// attends (0: none)
    /// (sparse attention selects per head; decode only).
    fn run_chunk(
        &self,
        blocks: &[(usize, &[u8])],
        masks: &[u64],
        len: usize,
        states: &mut [AttnState],
        parts: &mut Vec<AttnState>,
    ) {
        let (n_tokens, group, n_kv) = (self.q.n_tokens, self.group, self.n_kv);
        let units = |bi: usize, g: usize| {
            if masks.is_empty() {
                u64::MAX
            } else {
                masks[bi * n_kv + g]
            }
        };
        let reads = |bi: usize, g: usize| units(bi, g) != 0;
        let d = self.bgeo.head_dim;
        if n_tokens <= 2 {
            // Decode: parallel over (block, token, KV head), then merge in block order.
            let tasks = blocks.len() * n_tokens * n_kv;
            if parts.len() < tasks * group {
                parts.resize_with(tasks * group, || AttnState::new(d));
            }
            parts[..tasks * group]
                .par_chunks_mut(group)
                .enumerate()
                .for_each_init(
                    || (BlockScratch::new(&self.bgeo, group), Vec::new()),
                    |(scratch, runs), (i, p)| {
                        let (bi, rest) = (i / (n_tokens * n_kv), i % (n_tokens * n_kv));
                        let (t, g) = (rest / n_kv, rest % n_kv);
                        let (b, data) = blocks[bi];
                        let r = self.range(b, t, len);
                        if !r.is_empty() && reads(bi, g) {
                            self.partial(t, g, data, r, units(bi, g), p, scratch, runs);
                        }
                    },
                );
            for (bi, &(b, _)) in blocks.iter().enumerate() {
                for t in 0..n_tokens {
                    if self.range(b, t, len).is_empty() {
                        continue;
                    }
                    for g in 0..n_kv {
                        if !reads(bi, g) {
                            continue;
                        }
                        let p = &parts[((bi * n_tokens + t) * n_kv + g) * group..][..group];
                        let h0 = t * self.q.n_head + g * group;
                        for (s, ps) in states[h0..h0 + group].iter_mut().zip(p) {
                            s.merge(ps);
                        }
                    }
                }
            }
        } else {
            // Prefill: parallel over groups of TG query tokens; inside, blocks in order and a
            // K/V tile decoded once serves every token of the group and its GQA heads (a
            // state's arithmetic does not depend on how many states share the call).
            const TG: usize = 16;
            let n_head = self.q.n_head;
            states
                .par_chunks_mut(TG * n_head)
                .enumerate()
                .for_each_init(
                    || {
                        (
                            vec![0.0f32; TG * n_head * d],
                            vec![AttnState::new(d); TG * group],
                            BlockScratch::new(&self.bgeo, TG * group),
                        )
                    },
                    |(qg, parts, scratch), (gi, st)| {
                        let t0 = gi * TG;
                        let tn = st.len() / n_head;
                        // Queries regrouped as [kv head][token][head of the group][channel].
                        for g in 0..n_kv {
                            for t in 0..tn {
                                let src = ((t0 + t) * n_head + g * group) * d;
                                let dst = (g * tn + t) * group * d;
                                qg[dst..dst + group * d]
                                    .copy_from_slice(&self.q.q[src..src + group * d]);
                            }
                        }
                        for &(b, data) in blocks {
                            let r0 = self.range(b, t0, len);
                            let same = (1..tn).all(|t| self.range(b, t0 + t, len) == r0);
                            for g in 0..n_kv {
                                if same {
                                    if r0.is_empty() {
                                        continue;
                                    }
                                    let p = &mut parts[..tn * group];
                                    p.iter_mut().for_each(AttnState::reset);
                                    attend_block_range(
                                        p,
                                        &qg[g * tn * group * d..(g + 1) * tn * group * d],
                                        data,
                                        &self.bgeo,
                                        self.dtype,
                                        g,
                                        r0.clone(),
                                        self.q.scale,
                                        scratch,
                                    );
                                    for t in 0..tn {
                                        let h0 = t * n_head + g * group;
                                        for (s, ps) in
                                            st[h0..h0 + group].iter_mut().zip(&p[t * group..])
                                        {
                                            s.merge(ps);
                                        }
                                    }
                                } else {
                                    for t in 0..tn {
                                        let r = self.range(b, t0 + t, len);
                                        if r.is_empty() {
                                            continue;
                                        }
                                        let p = &mut parts[..group];
                                        p.iter_mut().for_each(AttnState::reset);
                                        let qs = (g * tn + t) * group * d;
                                        attend_block_range(
                                            p,
                                            &qg[qs..qs + group * d],
                                            data,
                                            &self.bgeo,
                                            self.dtype,
                                            g,
                                            r,
                                            self.q.scale,
                                            scratch,
                                        );
                                        let h0 = t * n_head + g * group;
                                        for (s, ps) in st[h0..h0 + group].iter_mut().zip(p.iter()) {
                                            s.merge(ps);
                                        }
                                    }
                                }
                            }
                        }
                    },
                );
        }
    }
}

impl KvCache for TieredKv {
    fn geometry(&self) -> &KvGeometry {
        &self.geo
    }

    fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.len)
    }

    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        self.check()?;
        let row = self.geo.row_len();
        if layer >= self.geo.n_layer || k.len() != row || v.len() != row {
            return Err(KvError::Contract(format!(
                "append to layer {layer} with rows of {}/{} values (expected layer < {} and {row})",
                k.len(),
                v.len(),
                self.geo.n_layer
            )));
        }
        if self.layers[layer].len >= self.geo.n_ctx {
            return Err(KvError::ContextFull {
                n_ctx: self.geo.n_ctx,
            });
        }
        self.poll()?;
        let bt = self.bgeo.block_tokens;
        let bounds = self.sparse_on[layer];
        let l = &mut self.layers[layer];
        let t = l.len % bt;
        let Some(tail) = Arc::get_mut(&mut l.tail) else {
            return Err(KvError::Contract("tail block is shared".into()));
        };
        encode_token(
            &self.bgeo,
            self.cfg.dtype,
            tail,
            t,
            k,
            v,
            bounds.then_some(&mut l.tail_bounds),
        )?;
        l.len += 1;
        if l.len.is_multiple_of(bt) {
            self.seal(layer)?;
        }
        Ok(())
    }

    fn attend(&mut self, layer: usize, qy: &AttnQuery<'_>, out: &mut [f32]) -> Result<(), KvError> {
        self.check()?;
        let d = self.geo.head_dim;
        let n_kv = self.geo.n_head_kv;
        let stored = self.len(layer);
        let bad = layer >= self.geo.n_layer
            || qy.n_head == 0
            || qy.n_tokens == 0
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
        if let Some(w) = self.layers[layer].window {
            if qy.window.is_none_or(|qw| qw > w) {
                return Err(KvError::Contract(format!(
                    "layer {layer} keeps a window of {w} positions; attend asked for {:?}",
                    qy.window
                )));
            }
        }
        self.poll()?;
        let t_start = Instant::now();
        self.pass_base = self.stats[layer];
        // `--prefetch auto`: this pass tells the layer's speculation gate what a pass costs in
        // the gate's current state (attention time plus the speculation made for it).
        let gate_obs = self.cfg.prefetch == PrefetchMode::Auto
            && qy.n_tokens == 1
            && self.spec_eligible(layer);
        let gated_off = gate_obs && !self.spec_gate[layer].speculating();
        let ev_before = self.arena.stats().evictions;
        if layer == 0 {
            self.step += 1;
        }
        let first_store = self.layers.iter().position(|l| l.window.is_none());
        if first_store == Some(layer) {
            self.sparse_step = self.cfg.sparse.is_some() && qy.n_tokens == 1;
            self.hint_pass(layer);
        }
        let bt = self.bgeo.block_tokens;
        let hi = qy.pos0 + qy.n_tokens - 1;
        let lo = qy.window.map_or(0, |w| (qy.pos0 + 1).saturating_sub(w));
        let (b_lo, b_hi) = (lo / bt, hi / bt);
        let mut states: Vec<AttnState> = (0..qy.n_tokens * qy.n_head)
            .map(|i| {
                let mut s = AttnState::new(d);
                if let Some(sk) = qy.sinks {
                    s.add_sink(sk[i % qy.n_head]);
                }
                s
            })
            .collect();
        let pass = Pass {
            bgeo: self.bgeo,
            dtype: self.cfg.dtype,
            q: qy,
            group: qy.n_head / n_kv,
            n_kv,
            unit: self.unit,
        };
        let (chunk, pf_depth) = self.chunk_plan(qy.n_tokens, qy.n_head);
        let n_sealed = self.layers[layer].sealed.len();
        let sliding = self.layers[layer].window.is_some();
        // The blocks this pass reads, in increasing order: the whole causal (windowed) range,
        // or, for a single-token query with sparse attention on a full layer, a selection.
        let mut list: Vec<usize> = (b_lo..=b_hi).collect();
        // Sparse: per block of `list` and KV head, the units it attends (`[i · n_kv + g]`).
        let mut unit_masks: Vec<u64> = Vec::new();
        let sparse = self
            .cfg
            .sparse
            .filter(|sp| qy.n_tokens == 1 && sp.selects_at(stored) && self.sparse_layer(layer));
        if let Some(sp) = sparse {
            let nb = b_hi + 1;
            let nu = self.n_units(stored, n_sealed);
            let sel = self.sparse_select(layer, qy, stored, &sp);
            let blocks = sel.as_ref().map(|s| self.unit_blocks(&s.blocks));
            let st = &mut self.stats[layer];
            st.sparse_candidates += nb as u64;
            st.sparse_head_candidates += (nu * n_kv) as u64;
            match (sel, blocks) {
                (Some(sel), Some((read, masks))) => {
                    st.sparse_selected += read.len() as u64;
                    st.sparse_head_attended += sel
                        .blocks
                        .iter()
                        .map(|&(_, m)| m.count_ones() as u64)
                        .sum::<u64>();
                    st.sparse_mass_ppm += (sel.mass as f64 * 1e6) as u64;
                    st.sparse_passes += 1;
                    list = read;
                    unit_masks = masks;
                }
                _ => {
                    st.sparse_selected += nb as u64;
                    st.sparse_head_attended += (nu * n_kv) as u64;
                    st.sparse_dense_fallbacks += 1;
                }
            }
        }
        let dense = unit_masks.is_empty();
        let mut held = Vec::new();
        let pieces: Vec<&[usize]> = list.chunks(chunk.max(1)).collect();
        for (pi, piece) in pieces.iter().enumerate() {
            let (b, end) = (piece[0], piece[piece.len() - 1] + 1);
            if sliding {
                let l = &self.layers[layer];
                let mut blocks: Vec<(usize, &[u8])> = Vec::new();
                for bi in b..end {
                    if bi == stored / bt && !stored.is_multiple_of(bt) {
                        blocks.push((bi, &l.tail[..]));
                    } else if let Some((_, buf)) = l.ring.iter().find(|(i, _)| *i == bi) {
                        blocks.push((bi, &buf[..]));
                    } else {
                        return Err(KvError::Contract(format!(
                            "layer {layer}: block {bi} left the sliding-window ring"
                        )));
                    }
                }
                pass.run_chunk(&blocks, &[], stored, &mut states, &mut self.parts);
                continue;
            }
            let ids: Vec<BlockId> = piece
                .iter()
                .filter(|&&i| i < n_sealed)
                .map(|&i| BlockId::new(layer as u32, i as u32))
                .collect();
            let (next, next_src) = if pf_depth == 0 {
                (Vec::new(), None)
            } else if dense {
                let ids = self.predict(
                    |p, v| p.next_in_pass(layer, b..end.min(n_sealed), v),
                    chunk,
                    pf_depth,
                );
                (ids, Some(0))
            } else {
                // Sparse: the next piece of the selection (known, not predicted).
                let ids = pieces.get(pi + 1).map_or(Vec::new(), |nx| {
                    nx.iter()
                        .filter(|&&i| i < n_sealed)
                        .map(|&i| BlockId::new(layer as u32, i as u32))
                        .collect()
                });
                (ids, None)
            };
            if !ids.is_empty() {
                self.acquire(&ids, &next, next_src, pf_depth, &mut held)?;
            } else {
                held.clear();
            }
            {
                let mut blocks: Vec<(usize, &[u8])> = Vec::with_capacity(piece.len());
                for (h, &bi) in held.iter().zip(piece.iter()) {
                    let data = match *h {
                        Held::Frame(f) => self.arena.try_data(f),
                        Held::Staging(k) => self.staging[k].as_deref().map(|x| &x[..]),
                    };
                    let Some(data) = data else {
                        return Err(KvError::Contract("held block has no data".into()));
                    };
                    blocks.push((bi, data));
                }
                if end > n_sealed {
                    // The tail block (partially filled) closes the range.
                    blocks.push((n_sealed, &self.layers[layer].tail[..]));
                }
                let masks: &[u64] = if unit_masks.is_empty() {
                    &[]
                } else {
                    let i0 = pi * chunk.max(1);
                    &unit_masks[i0 * n_kv..(i0 + piece.len()) * n_kv]
                };
                pass.run_chunk(&blocks, masks, stored, &mut states, &mut self.parts);
            }
            self.release(&held)?;
        }
        if !unit_masks.is_empty() && self.rest_on[layer] {
            self.fold_rest(layer, qy, stored, &list, &unit_masks, &mut states);
        }
        for (s, o) in states.iter().zip(out.chunks_exact_mut(d)) {
            s.finish(o);
        }
        if sliding {
            // Future queries start at hi + 1: drop ring blocks they cannot see.
            let w = self.layers[layer].window.unwrap_or(usize::MAX);
            self.trim_ring(layer, (hi + 2).saturating_sub(w));
        } else {
            let read: Vec<usize> = list.iter().copied().filter(|&i| i < n_sealed).collect();
            self.end_store_pass(layer, &read)?;
            if pf_depth > 0 {
                // While the rest of this layer computes, fetch what the next passes read first
                // (a whole predicted selection when the passes are sparse).
                let ids = self.predict(|p, v| p.after_pass(layer, v), chunk, pf_depth);
                let depth = if self.sparse_step {
                    self.sparse_depth().max(pf_depth)
                } else {
                    pf_depth
                };
                self.prefetch(&ids, depth, Some(0))?;
            }
        }
        let spec_ns = std::mem::take(&mut self.spec_ns[layer]);
        if gate_obs {
            if gated_off {
                self.stats[layer].spec_gated += 1;
            }
            let ns = t_start.elapsed().as_nanos() as u64 + spec_ns;
            self.spec_gate[layer].record(ns as f64);
        }
        if self.trace.is_some() {
            // Everything counted for this layer since its previous trace line (reads that
            // completed, or prefetches issued, during other layers' calls included).
            let delta = self.stats[layer].sub(&self.trace_base[layer]);
            self.trace_base[layer] = self.stats[layer];
            let ev = self.arena.stats().evictions - ev_before;
            self.write_trace(
                layer,
                qy.n_tokens,
                &delta,
                ev,
                t_start.elapsed().as_secs_f64(),
            );
        }
        Ok(())
    }

    fn wants_speculation(&self, layer: usize) -> bool {
        self.spec_eligible(layer)
            && (self.cfg.prefetch != PrefetchMode::Auto
                || self.spec_gate.get(layer).is_some_and(|g| g.speculating()))
    }

    fn speculate(&mut self, layer: usize, qy: &AttnQuery<'_>) -> Result<(), KvError> {
        let t = Instant::now();
        let r = self.speculate_inner(layer, qy);
        if let Some(ns) = self.spec_ns.get_mut(layer) {
            *ns += t.elapsed().as_nanos() as u64;
        }
        r
    }

    fn truncate(&mut self, n: usize) {
        if self.poisoned.is_none() {
            if let Err(e) = self.truncate_inner(n) {
                self.poisoned.get_or_insert(e.to_string());
            }
        }
    }

    fn stats(&self) -> Option<KvStats> {
        Some(self.kv_stats())
    }
}

impl Drop for TieredKv {
    fn drop(&mut self) {
        if let Some(w) = self.trace.as_mut() {
            let _ = w.flush();
        }
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

//! Predicting which blocks attention reads next: the [`Prefetcher`] trait and the dense baseline.
//!
//! The tiered cache asks its prefetcher at two points of every attention pass over a
//! full-attention layer: while a chunk of blocks is being read (what to read after it, within
//! the same pass) and when the pass ends (what the next passes will read first, typically the
//! next full-attention layer, which loads while this layer's output projection and MLP run).
//! The cache then reads the returned blocks that are not resident, in the order given, up to its
//! prefetch depth (bounded by the RAM budget), and counts prefetch hits and late blocks.
//!
//! Which predictors run is [`PrefetchMode`] (`--prefetch`):
//!
//! - `sequential` ([`Sequential`]): dense passes in their known order;
//! - `reuse` ([`Reuse`]): after a pass, the blocks the next full layer read at its previous
//!   pass (for sparse passes, its previous selection; for dense ones that is every block, in
//!   order, so it degenerates to `sequential`);
//! - `speculative`: the model estimates the query of the next full-attention layer from the
//!   current hidden state and calls [`super::KvCache::speculate`]; the cache scores that layer's
//!   blocks with the estimate and reads the selection while the layers in between compute
//!   (sparse passes only: a dense pass reads everything, which `sequential` already predicts);
//! - `auto` (the default): `reuse` plus `speculative`, with speculation per layer only while
//!   it pays ([`SpecGate`]: measured pass time plus speculation time, with and without).
//!
//! Invariants: a prefetcher only *suggests*; returning a block that is not read, already
//! resident, or not sealed costs at most a read and never changes a result. Blocks are named by
//! [`BlockId`] (layer, index); indices at or beyond `view.sealed[layer]` are ignored.

use super::policy::BlockId;
use std::ops::Range;

/// `--prefetch`: which predictors run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefetchMode {
    /// No prefetch: every non-resident block is a demand miss.
    Off,
    /// Dense pass order.
    Sequential,
    /// The previous pass's blocks of the next full layer.
    Reuse,
    /// Dense pass order, plus the model's estimate of the next full layer's query (sparse).
    Speculative,
    /// `reuse` + `speculative`.
    #[default]
    Auto,
}

impl PrefetchMode {
    /// Every mode, in `--prefetch` order.
    pub const ALL: [PrefetchMode; 5] = [
        PrefetchMode::Off,
        PrefetchMode::Sequential,
        PrefetchMode::Reuse,
        PrefetchMode::Speculative,
        PrefetchMode::Auto,
    ];

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            PrefetchMode::Off => "off",
            PrefetchMode::Sequential => "sequential",
            PrefetchMode::Reuse => "reuse",
            PrefetchMode::Speculative => "speculative",
            PrefetchMode::Auto => "auto",
        }
    }

    /// Parse a flag value (`on` is accepted as `auto`, for CLI.md's `on|off`).
    pub fn parse(s: &str) -> Option<PrefetchMode> {
        if s == "on" {
            return Some(PrefetchMode::Auto);
        }
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether the cache accepts the model's speculative queries.
    pub fn speculates(self) -> bool {
        matches!(self, PrefetchMode::Speculative | PrefetchMode::Auto)
    }

    /// The pass-order prefetcher of this mode (`None` = off).
    pub fn build(self) -> Option<Box<dyn Prefetcher>> {
        match self {
            PrefetchMode::Off => None,
            PrefetchMode::Sequential | PrefetchMode::Speculative => Some(Box::new(Sequential)),
            PrefetchMode::Reuse | PrefetchMode::Auto => Some(Box::new(Reuse::default())),
        }
    }
}

/// What a prefetcher may look at: the shape of the store right now.
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a> {
    /// Sealed (on-disk) blocks per layer.
    pub sealed: &'a [usize],
    /// Per layer: `Some(w)` for a sliding-window layer (RAM ring, never prefetched).
    pub windows: &'a [Option<usize>],
    /// Blocks the cache reads per batch (the natural prefetch granule).
    pub chunk: usize,
    /// How many blocks ahead of the current chunk a pass-order guess should reach (the
    /// prefetch depth: enough reads in flight to keep the disk's queue full).
    pub lookahead: usize,
    /// Per layer (empty: none): `Some(i)` when the layer's coming pass is sparse; it then
    /// surely reads block 0 (attention sinks) and the recent blocks from `i` on, and which
    /// others depends on its query, so the pass order is no guess for it.
    pub sparse_from: &'a [Option<usize>],
}

impl StoreView<'_> {
    /// The blocks a sparse pass over `layer` surely reads (block 0 and the sealed recent
    /// ones), or `None` when its coming pass is dense.
    pub fn forced(&self, layer: usize) -> Option<Vec<BlockId>> {
        let from = self.sparse_from.get(layer).copied().flatten()?;
        let n = self.sealed.get(layer).copied().unwrap_or(0);
        let first = (n > 0 && from > 0).then_some(0);
        Some(
            first
                .into_iter()
                .chain(from.min(n)..n)
                .map(|i| BlockId::new(layer as u32, i as u32))
                .collect(),
        )
    }

    /// The next full-attention layer after `layer` in pass order (wrapping to the next token).
    pub fn next_full_layer(&self, layer: usize) -> Option<usize> {
        let n = self.windows.len();
        (1..=n)
            .map(|k| (layer + k) % n)
            .find(|&l| self.windows[l].is_none())
    }
}

/// Predicts the blocks the coming attention passes read, in the order they will be read.
pub trait Prefetcher: Send + std::fmt::Debug {
    /// A short name for stats and logs.
    fn name(&self) -> &'static str;
    /// The pass over `layer` is reading the blocks `current`: which blocks to read next.
    fn next_in_pass(
        &mut self,
        layer: usize,
        current: Range<usize>,
        view: &StoreView<'_>,
    ) -> Vec<BlockId>;
    /// The pass over `layer` has ended: which blocks the next passes read first.
    fn after_pass(&mut self, layer: usize, view: &StoreView<'_>) -> Vec<BlockId>;
    /// The pass over `layer` read the sealed blocks `read` (in read order). Default: ignored.
    fn observe(&mut self, _layer: usize, _read: &[usize]) {}
}

/// The dense baseline: a dense pass reads every block of a layer in index order, layer after
/// layer, so the next chunk of this layer comes next, and after the layer, the first chunk of
/// the next full-attention layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequential;

impl Prefetcher for Sequential {
    fn name(&self) -> &'static str {
        "sequential"
    }

    fn next_in_pass(
        &mut self,
        layer: usize,
        current: Range<usize>,
        view: &StoreView<'_>,
    ) -> Vec<BlockId> {
        let n = view.sealed.get(layer).copied().unwrap_or(0);
        (current.end..(current.end + view.lookahead.max(view.chunk)).min(n))
            .map(|i| BlockId::new(layer as u32, i as u32))
            .collect()
    }

    fn after_pass(&mut self, layer: usize, view: &StoreView<'_>) -> Vec<BlockId> {
        let Some(nl) = view.next_full_layer(layer) else {
            return Vec::new();
        };
        if let Some(f) = view.forced(nl) {
            // A sparse pass does not read in pass order: only what it surely reads.
            return f;
        }
        (0..view.lookahead.max(view.chunk).min(view.sealed[nl]))
            .map(|i| BlockId::new(nl as u32, i as u32))
            .collect()
    }
}

/// Reuse: after a pass, the blocks the next full-attention layer read at its previous pass, in
/// that order (a sparse layer's selection changes slowly from one token to the next); dense
/// passes and layers not seen yet fall back to [`Sequential`].
#[derive(Debug, Default, Clone)]
pub struct Reuse {
    /// Per layer: the sealed blocks its last pass read, in read order.
    last: Vec<Vec<u32>>,
}

impl Prefetcher for Reuse {
    fn name(&self) -> &'static str {
        "reuse"
    }

    fn next_in_pass(
        &mut self,
        layer: usize,
        current: Range<usize>,
        view: &StoreView<'_>,
    ) -> Vec<BlockId> {
        Sequential.next_in_pass(layer, current, view)
    }

    fn after_pass(&mut self, layer: usize, view: &StoreView<'_>) -> Vec<BlockId> {
        let Some(nl) = view.next_full_layer(layer) else {
            return Vec::new();
        };
        match self.last.get(nl) {
            Some(prev) if !prev.is_empty() => prev
                .iter()
                .filter(|&&i| (i as usize) < view.sealed[nl])
                .map(|&i| BlockId::new(nl as u32, i))
                .collect(),
            _ => Sequential.after_pass(layer, view),
        }
    }

    fn observe(&mut self, layer: usize, read: &[usize]) {
        if self.last.len() <= layer {
            self.last.resize_with(layer + 1, Vec::new);
        }
        let v = &mut self.last[layer];
        v.clear();
        v.extend(read.iter().map(|&i| i as u32));
    }
}

/// Passes a [`SpecGate`] spends in a state to measure it.
pub const GATE_PROBE: u32 = 4;
/// Passes it then stays in the cheaper state before measuring the other again.
pub const GATE_SETTLE: u32 = 32;

/// Whether speculation pays for one layer (`--prefetch auto`): speculation costs a second
/// scoring and selection per pass (and the model's query estimate); it pays only when the reads
/// it starts early save more stall than that. The gate measures both: a pass's *cost* is the
/// time of the layer's attention pass plus the time its speculation took, and the gate keeps the
/// mean cost with and without speculation, each from its own recent passes.
///
/// Schedule: probe "on" for [`GATE_PROBE`] passes, then "off", then settle on the cheaper state
/// for [`GATE_SETTLE`] passes, probe the other again, and so on. A probe's first pass is
/// not counted (it still sees the other state's prefetches); a settled state's mean follows its
/// passes (an exponential average). Ties go to "off" (less work).
///
/// Invariants: the gate only decides whether speculation runs, never a result; it is
/// deterministic given the costs it is fed.
#[derive(Debug, Clone)]
pub struct SpecGate {
    on: bool,
    probing: bool,
    /// Passes left in this phase.
    left: u32,
    /// Mean cost per pass in ns, `[off, on]`, once measured.
    cost: [Option<f64>; 2],
    /// The running probe's sum and count (its first pass skipped).
    probe_sum: f64,
    probe_n: u32,
}

impl Default for SpecGate {
    fn default() -> Self {
        SpecGate {
            on: true,
            probing: true,
            left: GATE_PROBE,
            cost: [None, None],
            probe_sum: 0.0,
            probe_n: 0,
        }
    }
}

impl SpecGate {
    /// Whether the layer's next pass should be speculated for.
    pub fn speculating(&self) -> bool {
        self.on
    }

    /// The mean cost per pass (ns) measured without and with speculation.
    pub fn costs(&self) -> [Option<f64>; 2] {
        self.cost
    }

    /// One pass ended; `cost_ns` is its attention time plus its speculation's time.
    pub fn record(&mut self, cost_ns: f64) {
        let st = self.on as usize;
        if self.probing {
            // A probe's first pass is the one that starts with all of its passes left.
            if self.left < GATE_PROBE {
                self.probe_sum += cost_ns;
                self.probe_n += 1;
            }
        } else {
            let m = self.cost[st].get_or_insert(cost_ns);
            *m += 0.25 * (cost_ns - *m);
        }
        self.left = self.left.saturating_sub(1);
        if self.left > 0 {
            return;
        }
        if self.probing && self.probe_n > 0 {
            self.cost[st] = Some(self.probe_sum / self.probe_n as f64);
        }
        let (next_on, probing) = match self.cost {
            // The other state was never measured: probe it.
            [None, _] => (false, true),
            [_, None] => (true, true),
            [Some(off), Some(on)] => {
                let better = on < off;
                if self.probing {
                    (better, false)
                } else {
                    // Settled: measure the other state again (costs drift with the cache).
                    (!self.on, true)
                }
            }
        };
        self.on = next_on;
        self.probing = probing;
        self.left = if probing { GATE_PROBE } else { GATE_SETTLE };
        self.probe_sum = 0.0;
        self.probe_n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a gate passes whose cost depends on its state; returns the states it ran in.
    fn run_gate(g: &mut SpecGate, passes: usize, off: f64, on: f64) -> Vec<bool> {
        (0..passes)
            .map(|_| {
                let st = g.speculating();
                g.record(if st { on } else { off });
                st
            })
            .collect()
    }

    #[test]
    fn spec_gate_settles_on_the_cheaper_state_and_reprobes() {
        let p = GATE_PROBE as usize;
        let s = GATE_SETTLE as usize;
        // Speculation costs more than it saves: probe on, probe off, settle off.
        let mut g = SpecGate::default();
        let states = run_gate(&mut g, 2 * p + s, 10.0, 13.0);
        assert!(states[..p].iter().all(|&x| x));
        assert!(states[p..].iter().all(|&x| !x), "{states:?}");
        assert_eq!(g.costs(), [Some(10.0), Some(13.0)]);
        // After the settled phase it measures "on" again, finds it still worse, goes back.
        let states = run_gate(&mut g, p + s, 10.0, 13.0);
        assert!(states[..p].iter().all(|&x| x));
        assert!(states[p..].iter().all(|&x| !x));
        // Speculation pays (the disk got slow: passes without it stall). The gate is about to
        // probe "on" while its "off" mean is stale (10), so it settles off once more, sees the
        // new cost there, and after its next probe settles on.
        let states = run_gate(&mut g, 2 * (p + s), 30.0, 13.0);
        assert!(states[..p].iter().all(|&x| x), "{states:?}");
        assert!(states[p..p + s].iter().all(|&x| !x), "{states:?}");
        assert!(states[p + s + p..].iter().all(|&x| x), "{states:?}");
        // Ties go to off.
        let mut g = SpecGate::default();
        let states = run_gate(&mut g, 2 * p + 1, 5.0, 5.0);
        assert!(!states[2 * p]);
    }

    #[test]
    fn spec_gate_skips_a_probes_first_pass() {
        // The first pass of each probe is an outlier (it still sees the other state's reads):
        // it must not decide.
        let mut g = SpecGate::default();
        let p = GATE_PROBE as usize;
        for i in 0..p {
            g.record(if i == 0 { 1e9 } else { 10.0 });
        }
        for i in 0..p {
            g.record(if i == 0 { 1e9 } else { 12.0 });
        }
        assert_eq!(g.costs(), [Some(12.0), Some(10.0)]);
        assert!(g.speculating());
    }

    #[test]
    fn sequential_reads_ahead_in_pass_order() {
        let sealed = [10, 0, 7];
        let windows = [None, Some(128), None];
        let view = StoreView {
            sealed: &sealed,
            windows: &windows,
            chunk: 4,
            lookahead: 4,
            sparse_from: &[],
        };
        let mut p = Sequential;
        let ids = |v: Vec<BlockId>| v.iter().map(|b| (b.layer, b.index)).collect::<Vec<_>>();
        assert_eq!(
            ids(p.next_in_pass(0, 0..4, &view)),
            [(0, 4), (0, 5), (0, 6), (0, 7)]
        );
        assert_eq!(ids(p.next_in_pass(0, 8..10, &view)), []);
        // Layer 1 slides (RAM ring): the next full layer after 0 is 2, after 2 it wraps to 0.
        assert_eq!(
            ids(p.after_pass(0, &view)),
            [(2, 0), (2, 1), (2, 2), (2, 3)]
        );
        assert_eq!(ids(p.after_pass(2, &view))[0], (0, 0));
        // A sparse pass coming on layer 2 (recent blocks from 5): block 0 and the recent ones.
        let sparse = [None, None, Some(5)];
        let view = StoreView {
            sparse_from: &sparse,
            ..view
        };
        assert_eq!(ids(p.after_pass(0, &view)), [(2, 0), (2, 5), (2, 6)]);
        // Only recent blocks (from 0), or recent blocks past the sealed ones.
        let sparse = [None, None, Some(0)];
        let v0 = StoreView {
            sparse_from: &sparse,
            ..view
        };
        assert_eq!(ids(p.after_pass(0, &v0)).len(), 7);
        let sparse = [None, None, Some(9)];
        let v9 = StoreView {
            sparse_from: &sparse,
            ..view
        };
        assert_eq!(ids(p.after_pass(0, &v9)), [(2, 0)]);
        // Layer 0 comes dense: pass order.
        assert_eq!(ids(p.after_pass(2, &view))[..2], [(0, 0), (0, 1)]);
    }

    #[test]
    fn reuse_predicts_the_previous_selection_of_the_next_full_layer() {
        let sealed = [10, 0, 7];
        let windows = [None, Some(128), None];
        let view = StoreView {
            sealed: &sealed,
            windows: &windows,
            chunk: 4,
            lookahead: 4,
            sparse_from: &[],
        };
        let mut p = Reuse::default();
        let ids = |v: Vec<BlockId>| v.iter().map(|b| (b.layer, b.index)).collect::<Vec<_>>();
        // Nothing seen yet: the sequential guess.
        assert_eq!(
            ids(p.after_pass(0, &view)),
            [(2, 0), (2, 1), (2, 2), (2, 3)]
        );
        // Layer 2 read 0, 5, 6 and 9 (9 is not sealed any more, e.g. after a truncate).
        p.observe(2, &[0, 5, 6, 9]);
        assert_eq!(ids(p.after_pass(0, &view)), [(2, 0), (2, 5), (2, 6)]);
        // In-pass guesses stay sequential.
        assert_eq!(
            ids(p.next_in_pass(2, 0..4, &view)),
            [(2, 4), (2, 5), (2, 6)]
        );
        assert_eq!(PrefetchMode::parse("on"), Some(PrefetchMode::Auto));
        assert_eq!(PrefetchMode::parse("bogus"), None);
        for m in PrefetchMode::ALL {
            assert_eq!(PrefetchMode::parse(m.name()), Some(m));
        }
    }
}

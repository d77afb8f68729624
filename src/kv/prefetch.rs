//! Predicting which blocks attention reads next: the [`Prefetcher`] trait and the dense baseline.
//!
//! The tiered cache asks its prefetcher at two points of every attention pass over a
//! full-attention layer: while a chunk of blocks is being read (what to read after it, within
//! the same pass) and when the pass ends (what the next passes will read first, typically the
//! next full-attention layer, which loads while this layer's output projection and MLP run).
//! The cache then reads the returned blocks that are not resident, in the order given, up to its
//! prefetch depth (bounded by the RAM budget), and counts prefetch hits and late blocks.
//!
//! Invariants: a prefetcher only *suggests*; returning a block that is not read, already
//! resident, or not sealed costs at most a read and never changes a result. Blocks are named by
//! [`BlockId`] (layer, index); indices at or beyond `view.sealed[layer]` are ignored.

use super::policy::BlockId;
use std::ops::Range;

/// What a prefetcher may look at: the shape of the store right now.
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a> {
    /// Sealed (on-disk) blocks per layer.
    pub sealed: &'a [usize],
    /// Per layer: `Some(w)` for a sliding-window layer (RAM ring, never prefetched).
    pub windows: &'a [Option<usize>],
    /// Blocks the cache reads per batch (the natural prefetch granule).
    pub chunk: usize,
}

impl StoreView<'_> {
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
        (current.end..(current.end + view.chunk).min(n))
            .map(|i| BlockId::new(layer as u32, i as u32))
            .collect()
    }

    fn after_pass(&mut self, layer: usize, view: &StoreView<'_>) -> Vec<BlockId> {
        let Some(nl) = view.next_full_layer(layer) else {
            return Vec::new();
        };
        (0..view.chunk.min(view.sealed[nl]))
            .map(|i| BlockId::new(nl as u32, i as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_ahead_in_pass_order() {
        let sealed = [10, 0, 7];
        let windows = [None, Some(128), None];
        let view = StoreView {
            sealed: &sealed,
            windows: &windows,
            chunk: 4,
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
    }
}

//! Query-aware sparse attention (`--attention sparse`, `kv::tiered::select_blocks`): the
//! selection rule, equality with dense when the budget covers the context, and determinism
//! (the selection depends only on the keys' bounds and the query, never on the RAM budget, the
//! backend or the prefetcher, so results are bit-identical across them).

mod common;

use kvspool::kv::disk::BackendKind;
use kvspool::kv::format::KvDtype;
use kvspool::kv::prefetch::PrefetchMode;
use kvspool::kv::tiered::{
    auto_unit_tokens, select_blocks, BudgetScope, GroupScore, LayerSet, SparseConfig, SparseIndex,
    SparseRest, SparseScore,
};
use kvspool::kv::{AttnQuery, KvCache, KvGeometry, LayerStats, TieredConfig, TieredKv};

/// Selection units of whole blocks in [`run_with`] (its 32-token blocks): the tests written
/// for block selection. Finer units have their own tests below.
const WHOLE: usize = 32;

struct Rng(u64);

impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
}

/// Whether two outputs are bit-identical, element by element.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The largest element-wise absolute difference of two outputs.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// A random selection trial's shape: 1–4 KV heads, 1–3 score columns each, `6 + trial % span`
/// blocks of 16 positions (the last one 1–16).
fn trial_shape(trial: usize, span: usize) -> (usize, usize, usize, Vec<usize>) {
    let (n_kv, per_head, nb) = (1 + trial % 4, 1 + trial % 3, 6 + trial % span);
    let tokens = (0..nb)
        .map(|b| if b + 1 == nb { 1 + trial % 16 } else { 16 })
        .collect();
    (n_kv, per_head, nb, tokens)
}

/// The counters of every layer summed.
fn layer_total(st: &kvspool::kv::KvStats) -> LayerStats {
    st.layers.iter().fold(LayerStats::default(), |mut a, l| {
        a.add(l);
        a
    })
}

#[test]
fn selection_forces_sinks_and_recent_then_takes_blocks_by_mass() {
    // 10 blocks of 64, one KV head; block 5 scores far above the rest, block 7 next.
    let mut scores = vec![0.0f32; 10];
    scores[5] = 10.0;
    scores[7] = 8.0;
    let tokens = vec![64usize; 10];
    let cfg = SparseConfig {
        mass: 0.9,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let ids = |v: Vec<(usize, u32)>| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>();
    let (sel, mass) = select_blocks(&scores, 1, 1, &tokens, &cfg).unwrap();
    let sel = ids(sel);
    // block 0 (sinks), block 9 (recent), then 5 (most mass) and 7 (next) reach the 90%.
    assert_eq!(sel, vec![0, 5, 7, 9]);
    assert!(mass >= 0.9, "{mass}");
    // The token budget stops the selection: 3 blocks = 192 tokens after forced ones is capped.
    let cfg2 = SparseConfig {
        budget_tokens: 192,
        ..cfg
    };
    let (sel2, _) = select_blocks(&scores, 1, 1, &tokens, &cfg2).unwrap();
    assert_eq!(ids(sel2), vec![0, 5, 9]);
    // Two KV heads preferring different blocks: the union, each block with its heads.
    let mut two = vec![0.0f32; 20];
    two[5 * 2] = 10.0; // head 0 likes block 5
    two[3 * 2 + 1] = 10.0; // head 1 likes block 3
    let cfg4 = SparseConfig {
        mass: 0.5,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let (sel4, _) = select_blocks(&two, 2, 1, &tokens, &cfg4).unwrap();
    assert_eq!(sel4, vec![(0, 3), (3, 2), (5, 1), (9, 3)]);
    // Flat scores: the mass rule needs nearly every block -> dense fallback.
    let flat = vec![1.0f32; 10];
    let cfg3 = SparseConfig {
        budget_tokens: 640,
        ..cfg
    };
    assert!(select_blocks(&flat, 1, 1, &tokens, &cfg3).is_none());
    // A context within the budget is never sparse.
    assert!(select_blocks(&scores, 1, 1, &tokens, &SparseConfig::default()).is_none());
}

fn run(sparse: Option<SparseConfig>, ram: usize, backend: BackendKind) -> (Vec<f32>, u64) {
    let (out, st) = run_with(sparse, ram, backend, PrefetchMode::Auto, None, 1);
    let selected: u64 = st.layers.iter().map(|l| l.sparse_selected).sum();
    (out, selected)
}

#[test]
fn budgets_of_three_quarters_of_the_context_attend_densely_without_selecting() {
    // 1,200 positions + the decoded one: a budget of 901 is over 3/4 of the 1,201 — the pass is
    // plain dense (no selection, no fallback counted, outputs bit-identical to dense); 896
    // still selects.
    let cfg = |budget| SparseConfig {
        mass: 1.0,
        budget_tokens: budget,
        recent_tokens: 64,
        unit_tokens: WHOLE,
        ..SparseConfig::default()
    };
    assert!(cfg(900).selects_at(1201) && !cfg(901).selects_at(1201));
    assert!(!cfg(900).selects_at(1200) && cfg(899).selects_at(1200));
    let decode = |sp: Option<SparseConfig>| {
        run_with(sp, 1 << 30, BackendKind::Pread, PrefetchMode::Auto, None, 1)
    };
    let (dense, _) = decode(None);
    let (at, st) = decode(Some(cfg(901)));
    assert!(dense
        .iter()
        .zip(&at)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    let passes = |st: &kvspool::kv::KvStats| -> (u64, u64) {
        st.layers
            .iter()
            .map(|l| (l.sparse_passes, l.sparse_dense_fallbacks))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    assert_eq!(passes(&st), (0, 0));
    let (_, st) = decode(Some(cfg(896)));
    let (p, f) = passes(&st);
    assert!(p + f == 2 && p > 0, "{p} sparse passes, {f} fallbacks");
}

/// Fill 2 layers with 1200 positions of bursty keys, then decode `steps` tokens (append +
/// attend on both layers), speculating each layer's query first with `spec_noise` added (None
/// = no speculation). Returns every output and the final stats.
fn run_with(
    sparse: Option<SparseConfig>,
    ram: usize,
    backend: BackendKind,
    prefetch: PrefetchMode,
    spec_noise: Option<f32>,
    steps: usize,
) -> (Vec<f32>, kvspool::kv::KvStats) {
    let (n, bt) = (1200usize, 32usize);
    let geo = KvGeometry::dense(2, 2, 16, n + steps + 8);
    let mut c = TieredConfig::new(ram, common::kv_dir());
    c.dtype = KvDtype::F16;
    c.block_tokens = bt;
    c.backend = backend;
    c.sparse = sparse;
    c.prefetch = prefetch;
    let mut kv = TieredKv::new(geo.clone(), c).unwrap();
    let mut r = Rng(7);
    let row = geo.row_len();
    // Keys with a few "topical" bursts so that block bounds differ.
    for layer in 0..2 {
        for p in 0..n {
            let burst = if (p / 97) % 5 == 0 { 3.0 } else { 0.5 };
            let k: Vec<f32> = (0..row).map(|_| r.f() * burst).collect();
            let v: Vec<f32> = (0..row).map(|_| r.f()).collect();
            kv.append(layer, &k, &v).unwrap();
        }
    }
    let n_head = 4;
    let base: Vec<f32> = (0..n_head * 16).map(|_| r.f() * 2.0).collect();
    let mut out = vec![0.0f32; base.len()];
    let mut all = Vec::new();
    // Speculation draws from its own stream: the data must not depend on it.
    let mut spec_rng = Rng(99);
    kv.reset_counters();
    for step in 0..steps {
        let pos = n - 1 + step;
        if step > 0 {
            for layer in 0..2 {
                let k: Vec<f32> = (0..row).map(|_| r.f() * 0.5).collect();
                let v: Vec<f32> = (0..row).map(|_| r.f()).collect();
                kv.append(layer, &k, &v).unwrap();
            }
        }
        // The query drifts slowly from step to step.
        let q: Vec<f32> = base.iter().map(|b| b + 0.2 * r.f()).collect();
        for layer in 0..2 {
            let qy = AttnQuery {
                q: &q,
                n_tokens: 1,
                pos0: pos,
                n_head,
                scale: 0.25,
                sinks: None,
                window: None,
            };
            if let Some(noise) = spec_noise {
                let est: Vec<f32> = q.iter().map(|x| x + noise * spec_rng.f()).collect();
                let ey = AttnQuery { q: &est, ..qy };
                if kv.wants_speculation(layer) {
                    assert!(prefetch.speculates() && sparse.is_some());
                }
                kv.speculate(layer, &ey).unwrap();
            }
            kv.attend(layer, &qy, &mut out).unwrap();
            all.extend_from_slice(&out);
        }
    }
    let st = KvCache::stats(&kv).unwrap();
    (all, st)
}

#[test]
fn sparse_with_a_budget_covering_the_context_equals_dense() {
    let dense = run(None, 1 << 30, BackendKind::Pread).0;
    let wide = SparseConfig {
        mass: 1.0,
        budget_tokens: 1 << 20,
        recent_tokens: 256,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let got = run(Some(wide), 1 << 30, BackendKind::Pread).0;
    assert!(same_bits(&dense, &got));
}

#[test]
fn sparse_reads_fewer_blocks_and_is_identical_across_budgets_and_backends() {
    let cfg = SparseConfig {
        mass: 0.95,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let (base, selected) = run(Some(cfg), 1 << 30, BackendKind::Pread);
    let candidates = 2 * 1200usize.div_ceil(32) as u64;
    assert!(
        selected < candidates / 2,
        "{selected} of {candidates} blocks"
    );
    let dense = run(None, 1 << 30, BackendKind::Pread).0;
    assert!(
        base.iter().zip(&dense).any(|(a, b)| a != b),
        "sparse read everything?"
    );
    for ram in [0usize, 64 * 1024] {
        for backend in [BackendKind::Pread, BackendKind::Mmap, BackendKind::Uring] {
            let (got, sel) = run(Some(cfg), ram, backend);
            assert_eq!(sel, selected);
            assert!(same_bits(&got, &base), "ram {ram} {backend:?}");
        }
    }
}

#[test]
fn group_sum_averages_the_query_heads_own_mass_estimates() {
    // One KV head with two query heads, 10 blocks. Head a puts a huge bound on block 5, head b
    // a moderate one on block 3. Max: block 5 dominates every estimate and the mass rule stops
    // after it. Sum: each head's distribution counts half, so block 3 is taken too.
    let tokens = vec![64usize; 10];
    let mut max_cols = vec![0.0f32; 10];
    max_cols[5] = 20.0;
    max_cols[3] = 6.0;
    let mut sum_cols = vec![0.0f32; 20];
    sum_cols[5 * 2] = 20.0; // head a
    sum_cols[3 * 2 + 1] = 6.0; // head b
    let cfg = SparseConfig {
        mass: 0.9,
        budget_tokens: 384,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let ids = |v: Vec<(usize, u32)>| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>();
    let (m, mass_max) = select_blocks(&max_cols, 1, 1, &tokens, &cfg).unwrap();
    assert_eq!(ids(m), vec![0, 5, 9]);
    assert!(mass_max > 0.99, "{mass_max}");
    let (s, mass_sum) = select_blocks(&sum_cols, 1, 2, &tokens, &cfg).unwrap();
    assert_eq!(ids(s), vec![0, 3, 5, 9]);
    assert!(mass_sum >= 0.9, "{mass_sum}");
    // Mismatched score columns are refused (dense), never indexed out of bounds.
    assert!(select_blocks(&sum_cols, 1, 3, &tokens, &cfg).is_none());
}

#[test]
fn sparse_results_do_not_depend_on_the_predictors_and_predictions_are_scored() {
    let cfg = SparseConfig {
        mass: 0.95,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Sum,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    // A RAM tier of ~28 frames (8 KiB slots) for 76 blocks: prefetch matters.
    let ram = 256 * 1024;
    let (base, _) = run_with(
        Some(cfg),
        ram,
        BackendKind::Pread,
        PrefetchMode::Off,
        None,
        6,
    );
    for mode in PrefetchMode::ALL {
        for noise in [None, Some(0.0), Some(1.0)] {
            let (got, st) = run_with(Some(cfg), ram, BackendKind::Uring, mode, noise, 6);
            assert!(same_bits(&got, &base), "{mode:?} {noise:?}: outputs differ");
            let t = layer_total(&st);
            assert!(t.predicted_used <= t.predicted && t.spec_used <= t.spec_predicted);
            assert!(t.prefetch_hits + t.late <= t.prefetch_reads, "{t:?}");
            if mode.speculates() && noise == Some(0.0) {
                // An exact estimate names only blocks the pass reads (the sealed ones).
                assert!(t.speculations > 0, "{t:?}");
                assert_eq!(t.spec_used, t.spec_predicted, "{t:?}");
                // (Recall is not 100%: speculation is skipped for a layer whose last pass found
                // every block resident.)
                assert!(t.spec_used > 0, "{t:?}");
            }
            if !mode.speculates() || noise.is_none() {
                assert_eq!(t.spec_predicted, 0);
            }
            if mode == PrefetchMode::Off {
                assert_eq!(t.prefetch_reads, 0);
            }
            if matches!(mode, PrefetchMode::Reuse | PrefetchMode::Auto) {
                // From the second step on, the previous selection predicts most of the next.
                assert!(t.predicted_used * 2 >= t.predicted, "{mode:?} {t:?}");
            }
        }
    }
}

/// `--prefetch auto` gates speculation per layer (probe on, probe off, settle): over enough
/// steps the off-probe always comes (it follows the first `GATE_PROBE` measured passes with
/// speculation, whatever the timings), results stay bit-identical to no prefetching, and the
/// counters add up.
#[test]
fn auto_gates_speculation_without_changing_results() {
    let cfg = SparseConfig {
        mass: 0.95,
        budget_tokens: 512,
        recent_tokens: 64,
        group: GroupScore::Sum,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Union,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Mix,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    // ~28 frames; two layers' selections of 16 blocks each do not stay resident: passes read.
    let ram = 256 * 1024;
    let steps = 24;
    let (base, _) = run_with(
        Some(cfg),
        ram,
        BackendKind::Pread,
        PrefetchMode::Off,
        None,
        steps,
    );
    let (got, st) = run_with(
        Some(cfg),
        ram,
        BackendKind::Uring,
        PrefetchMode::Auto,
        Some(1.0),
        steps,
    );
    assert!(
        same_bits(&got, &base),
        "auto with the gate changed the outputs"
    );
    let t = layer_total(&st);
    assert!(t.speculations > 0, "{t:?}");
    assert!(
        t.spec_gated > 0,
        "no pass ran gated in {steps} steps: {t:?}"
    );
    assert!(t.spec_gated + t.speculations <= (2 * steps) as u64, "{t:?}");
    assert_eq!(t.prediction().spec_gated, t.spec_gated);
    // `speculative` is the user's explicit choice: never gated.
    let (got, st) = run_with(
        Some(cfg),
        ram,
        BackendKind::Uring,
        PrefetchMode::Speculative,
        Some(1.0),
        steps,
    );
    assert!(same_bits(&got, &base));
    assert!(st.layers.iter().all(|l| l.spec_gated == 0));
}

#[test]
fn split_bound_equals_the_reference_bound_on_awkward_lengths() {
    use kvspool::kv::format::KeyBounds;
    let mut r = Rng(3);
    for d in [1usize, 7, 15, 16, 17, 33, 64, 100] {
        let mut kb = KeyBounds::new(2, d);
        for _ in 0..5 {
            for h in 0..2 {
                let key: Vec<f32> = (0..d).map(|_| r.f() * 3.0).collect();
                kb.update(h, &key);
            }
        }
        for h in 0..2 {
            let q: Vec<f32> = (0..d).map(|_| r.f()).collect();
            let qp: Vec<f32> = q.iter().map(|x| x.max(0.0)).collect();
            let qn: Vec<f32> = q.iter().map(|x| x.min(0.0)).collect();
            let want = kb.upper_bound_dot(h, &q);
            let got = kb.upper_bound_split(h, &qp, &qn);
            assert!(
                (want - got).abs() <= 1e-5 * (1.0 + want.abs()),
                "d {d} head {h}: {want} vs {got}"
            );
        }
    }
    // Empty bounds score -inf (never selected ahead of a real block), never NaN.
    let empty = KeyBounds::new(1, 16);
    let z = vec![0.0f32; 16];
    assert_eq!(empty.upper_bound_split(0, &z, &z), f32::NEG_INFINITY);
}

#[test]
fn union_budget_counts_blocks_read_and_gives_them_to_every_head() {
    // 3 KV heads, 12 blocks of 64: head 0 likes blocks 5 then 6, head 1 likes 3, head 2 is flat.
    let (n_kv, nb) = (3usize, 12usize);
    let mut sc = vec![0.0f32; nb * n_kv];
    sc[5 * n_kv] = 9.0;
    sc[6 * n_kv] = 7.0;
    sc[3 * n_kv + 1] = 9.5;
    let tokens = vec![64usize; nb];
    let cfg = SparseConfig {
        mass: 1.0,
        budget_tokens: 64 * 5,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Union,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let (sel, _) = select_blocks(&sc, n_kv, 1, &tokens, &cfg).unwrap();
    // Forced 0 and 11, then the most needed blocks over all heads: 3 (head 1), 5 (head 0),
    // then 6 (head 0's next, 7.0, beats the flat head's 0.0): 5 blocks = the budget.
    assert_eq!(sel, vec![(0, 7), (3, 7), (5, 7), (6, 7), (11, 7)]);
    let read: usize = sel.iter().map(|&(b, _)| tokens[b]).sum();
    assert!(read <= cfg.budget_tokens);
    // The same budget per head reads more blocks than the budget.
    let per_head = SparseConfig {
        budget_scope: BudgetScope::Head,
        index: SparseIndex::Flat,
        ..cfg
    };
    let (sel_h, _) = select_blocks(&sc, n_kv, 1, &tokens, &per_head).unwrap();
    assert!(sel_h.len() > sel.len(), "{sel_h:?}");
    // union-own: the same blocks read, but a head attends only the ones it ranked: 3 is head
    // 1's, 5 and 6 head 0's; the flat head 2 ties everywhere (lower index first), so its next
    // block is 1, which no longer fits; forced blocks go to every head.
    let own = SparseConfig {
        budget_scope: BudgetScope::UnionOwn,
        ..cfg
    };
    let (sel_o, _) = select_blocks(&sc, n_kv, 1, &tokens, &own).unwrap();
    assert_eq!(sel_o, vec![(0, 7), (3, 2), (5, 1), (6, 1), (11, 7)]);
    // When the budget runs out, a head still takes the blocks read anyway at the top of its
    // ranking. Head 0 now likes 5, then 6 and 7 (tied); head 2 prefers block 3 a little. The
    // greedy reads 3, 5, 6; head 0's 7 outranks head 2's 3 but does not fit, and the selection
    // ends with head 2 attending block 3 (then its next, block 1, is not read: it stops).
    let mut sc2 = sc.clone();
    sc2[6 * n_kv] = 8.0;
    sc2[7 * n_kv] = 8.0;
    sc2[3 * n_kv + 2] = 0.1;
    let (sel_o2, _) = select_blocks(&sc2, n_kv, 1, &tokens, &own).unwrap();
    assert_eq!(sel_o2, vec![(0, 7), (3, 6), (5, 1), (6, 1), (11, 7)]);
    // `--sparse-share ρ`: a head also attends a block read for others when its estimated mass
    // there is at least ρ times the block's share of the positions (here 1/12). The flat head 2
    // puts 1/12 on every block (ratio 1); head 0's mass on block 3 is e^-9 / (1 + e^-2 +
    // 10·e^-9) ≈ 1.09e-4 (ratio 1.30e-3), head 1's on 5 and on 6 e^-9.5 / (1 + 11·e^-9.5) ≈
    // 7.5e-5 (ratio 8.98e-4).
    let sharing = |share: f32| {
        let cfg = SparseConfig { share, ..own };
        select_blocks(&sc, n_kv, 1, &tokens, &cfg).unwrap().0
    };
    assert_eq!(sharing(0.5), vec![(0, 7), (3, 6), (5, 5), (6, 5), (11, 7)]);
    assert_eq!(sharing(1e-3), vec![(0, 7), (3, 7), (5, 5), (6, 5), (11, 7)]);
    assert_eq!(sharing(5e-4), sel);
    // 0: every head attends every block read (union's masks); above 1 here, or +inf: none.
    assert_eq!(sharing(0.0), sel);
    assert_eq!(sharing(1.5), sel_o);
    assert_eq!(sharing(f32::INFINITY), sel_o);
}

#[test]
fn union_own_sharing_adds_exactly_the_heads_dense_enough_on_a_block() {
    // Random scores: with `share`, union-own reads the same blocks as without, each head attends
    // what it attended without, and of the other blocks read exactly those where its estimated
    // mass (normalized over all blocks, averaged over its columns) is at least `share` times
    // the block's share of the positions.
    let mut r = Rng(23);
    let mut added_total = 0;
    for trial in 0..400usize {
        let (n_kv, per_head, nb, tokens) = trial_shape(trial, 41);
        let total: usize = tokens.iter().sum();
        let cols = n_kv * per_head;
        let spread = [1.0f32, 4.0, 12.0][trial % 3];
        let sc: Vec<f32> = (0..nb * cols).map(|_| spread * r.f()).collect();
        let off = SparseConfig {
            mass: 1.0,
            budget_tokens: 16 * (2 + trial % (nb / 2).max(1)),
            recent_tokens: 16,
            group: GroupScore::Sum,
            dense_layers: 0,
            layers: LayerSet::ALL,
            budget_scope: BudgetScope::UnionOwn,
            share: f32::INFINITY,
            index: SparseIndex::Flat,
            score: SparseScore::Bound,
            unit_tokens: WHOLE,
            rest: SparseRest::Mean,
        };
        let share = [0.0f32, 0.1, 0.5, 1.0, 2.0][trial % 5];
        let on = SparseConfig { share, ..off };
        let Some((a, _)) = select_blocks(&sc, n_kv, per_head, &tokens, &off) else {
            assert!(select_blocks(&sc, n_kv, per_head, &tokens, &on).is_none());
            continue;
        };
        let (b, _) = select_blocks(&sc, n_kv, per_head, &tokens, &on).unwrap();
        assert_eq!(a.len(), b.len(), "trial {trial}");
        // The estimated mass of block x for head h.
        let key = |h: usize, x: usize| -> f64 {
            (0..per_head)
                .map(|c| {
                    let col = |y: usize| sc[y * cols + h * per_head + c] as f64;
                    let mx = (0..nb).map(col).fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = (0..nb)
                        .map(|y| tokens[y] as f64 * (col(y) - mx).exp())
                        .sum();
                    tokens[x] as f64 * (col(x) - mx).exp() / z
                })
                .sum::<f64>()
                / per_head as f64
        };
        for (&(xa, ma), &(xb, mb)) in a.iter().zip(&b) {
            assert_eq!(xa, xb, "trial {trial}: the blocks read differ");
            assert_eq!(ma & !mb, 0, "trial {trial}: block {xa} lost a head");
            for h in 0..n_kv {
                let bit = 1u32 << h;
                if ma & bit != 0 {
                    continue;
                }
                let (k, t) = (key(h, xa), share as f64 * tokens[xa] as f64 / total as f64);
                // Near the threshold the f32 selection and this f64 estimate may round apart.
                if (k - t).abs() <= 1e-4 * t + 1e-9 {
                    continue;
                }
                assert_eq!(
                    mb & bit != 0,
                    k >= t,
                    "trial {trial}, head {h}, block {xa}: mass {k}, threshold {t}"
                );
                added_total += usize::from(mb & bit != 0);
            }
        }
    }
    assert!(added_total > 50, "{added_total}");
}

#[test]
fn union_own_reads_what_union_reads_and_each_head_attends_its_own_top_blocks() {
    // Random scores, 1–4 KV heads, 1–3 columns each, mass 1.0 (the budget decides): union-own
    // reads exactly union's blocks; every head attends the forced blocks, and of the other blocks
    // read, a head attends a prefix of its own ranking (by its key, lower index on ties).
    let mut r = Rng(11);
    for trial in 0..200usize {
        let (n_kv, per_head, nb, tokens) = trial_shape(trial, 37);
        let cols = n_kv * per_head;
        let sc: Vec<f32> = (0..nb * cols).map(|_| 4.0 * r.f()).collect();
        let cfg = SparseConfig {
            mass: 1.0,
            budget_tokens: 16 * (2 + trial % (nb / 2).max(1)),
            recent_tokens: 16 * (1 + trial % 3),
            group: GroupScore::Sum,
            dense_layers: 0,
            layers: LayerSet::ALL,
            budget_scope: BudgetScope::Union,
            share: f32::INFINITY,
            index: SparseIndex::Flat,
            score: SparseScore::Bound,
            unit_tokens: WHOLE,
            rest: SparseRest::Mean,
        };
        let own = SparseConfig {
            budget_scope: BudgetScope::UnionOwn,
            ..cfg
        };
        let a = select_blocks(&sc, n_kv, per_head, &tokens, &cfg);
        let b = select_blocks(&sc, n_kv, per_head, &tokens, &own);
        let (Some((a, _)), Some((b, _))) = (a, b) else {
            assert!(
                select_blocks(&sc, n_kv, per_head, &tokens, &cfg).is_none()
                    && select_blocks(&sc, n_kv, per_head, &tokens, &own).is_none(),
                "trial {trial}: one fell back to dense, the other did not"
            );
            continue;
        };
        let ids = |v: &[(usize, u32)]| v.iter().map(|&(b, _)| b).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "trial {trial}");
        let all = (1u32 << n_kv) - 1;
        assert!(a.iter().all(|&(_, m)| m == all));
        // The forced blocks: block 0 and the last ones holding `recent_tokens`.
        let mut forced = vec![0usize];
        let mut recent = 0;
        for blk in (0..nb).rev() {
            if recent >= cfg.recent_tokens {
                break;
            }
            forced.push(blk);
            recent += tokens[blk];
        }
        let maxv = |h: usize, c: usize| {
            (0..nb)
                .map(|x| sc[x * cols + h * per_head + c])
                .fold(f32::NEG_INFINITY, f32::max)
        };
        for h in 0..n_kv {
            // The head's key of a block, as the selection estimates it (up to one normalizer
            // per column, which does not change the order within the head).
            let z: Vec<f32> = (0..per_head)
                .map(|c| {
                    (0..nb)
                        .map(|x| {
                            tokens[x] as f32 * (sc[x * cols + h * per_head + c] - maxv(h, c)).exp()
                        })
                        .sum()
                })
                .collect();
            let key = |x: usize| -> f32 {
                (0..per_head)
                    .map(|c| 16.0 * (sc[x * cols + h * per_head + c] - maxv(h, c)).exp() / z[c])
                    .sum()
            };
            let (mut mine, mut other) = (Vec::new(), Vec::new());
            for &(blk, m) in &b {
                assert_ne!(m, 0, "trial {trial}: block {blk} read by nobody");
                if forced.contains(&blk) {
                    assert_eq!(m, all, "trial {trial}: forced block {blk}");
                } else if m & (1 << h) != 0 {
                    mine.push(blk);
                } else {
                    other.push(blk);
                }
            }
            for &x in &mine {
                for &y in &other {
                    let (kx, ky) = (key(x), key(y));
                    // Keys are compared as the selection computes them (f32): allow for the
                    // rounding of the two computations by treating near-ties as ties.
                    assert!(
                        kx >= ky * (1.0 - 1e-4),
                        "trial {trial}, head {h}: attends block {x} (key {kx}) but not {y} (key {ky})"
                    );
                }
            }
        }
    }
}

#[test]
fn certified_mass_rule_stops_only_when_the_lower_bounds_guarantee_the_mass() {
    use kvspool::kv::tiered::select_blocks_certified;
    // One KV head, 12 blocks of 64. Block 5's upper bound towers over the rest.
    let tokens = vec![64usize; 12];
    let mut ub = vec![0.0f32; 12];
    ub[5] = 8.0;
    ub[7] = 6.0;
    let cfg = SparseConfig {
        mass: 0.85,
        budget_tokens: 64 * 8,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Union,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let ids = |v: Vec<(usize, u32)>| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>();
    // Estimated from the upper bounds alone, block 5 "holds" 88% and the rule stops after it.
    let (est, _) = select_blocks(&ub, 1, 1, &tokens, &cfg).unwrap();
    assert_eq!(ids(est), vec![0, 5, 11]);
    // Loose bounds (lower = upper − 6): nothing is guaranteed, the budget decides.
    let loose: Vec<f32> = ub.iter().map(|x| x - 6.0).collect();
    let (sel, mass) = select_blocks_certified(&ub, &loose, 1, 1, &tokens, &cfg).unwrap();
    assert_eq!(sel.len(), 8, "{sel:?}");
    assert!(mass < 0.85, "{mass}");
    // Exact scores (lower = upper): the certified rule equals the estimate.
    let (exact, m2) = select_blocks_certified(&ub, &ub, 1, 1, &tokens, &cfg).unwrap();
    assert_eq!(ids(exact), vec![0, 5, 11]);
    assert!(m2 >= 0.85, "{m2}");
    // Mismatched lengths are refused.
    assert!(select_blocks_certified(&ub, &ub[..3], 1, 1, &tokens, &cfg).is_none());
}

#[test]
fn tree_index_reads_exactly_what_flat_reads_with_per_head_budgets() {
    // Per-head budgets, one column per head (max) and the mass rule off: each head takes its
    // blocks in bound order, and the two-level index only defers scoring a super-block's
    // blocks until the greedy reaches it — so the selections and the outputs are identical.
    let flat = SparseConfig {
        mass: 1.0,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let tree = SparseConfig {
        index: SparseIndex::Tree,
        ..flat
    };
    let (a, sel_a) = run(Some(flat), 1 << 30, BackendKind::Pread);
    let (b, sel_b) = run(Some(tree), 1 << 30, BackendKind::Pread);
    assert_eq!(sel_a, sel_b);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // The default (union) budget with the tree is deterministic and reads fewer blocks.
    let union = SparseConfig {
        mass: 0.95,
        budget_scope: BudgetScope::Union,
        ..tree
    };
    let (c, sel_c) = run(Some(union), 1 << 30, BackendKind::Pread);
    let (d, sel_d) = run(Some(union), 0, BackendKind::Uring);
    assert_eq!(sel_c, sel_d);
    assert!(c.iter().zip(&d).all(|(x, y)| x.to_bits() == y.to_bits()));
    let candidates = 2 * 1200usize.div_ceil(32) as u64;
    assert!(sel_c < candidates / 2, "{sel_c} of {candidates}");
}

#[test]
fn indexed_selection_keeps_the_flat_order_per_head_and_the_budget() {
    use kvspool::kv::tiered::{select_blocks_certified, select_blocks_indexed, SUPER_SPAN};
    let mut r = Rng(5);
    let mut expansions = 0usize;
    for trial in 0..60usize {
        let n_kv = 1 + trial % 3;
        let nb = SUPER_SPAN * (2 + trial % 5) + trial % 7;
        let tokens: Vec<usize> = (0..nb)
            .map(|b| if b + 1 == nb { 1 + trial % 64 } else { 64 })
            .collect();
        let ub: Vec<f32> = (0..nb * n_kv).map(|_| r.f() * 4.0).collect();
        let lower: Vec<f32> = ub.iter().map(|x| x - 1.0 - r.f().abs()).collect();
        // Super-block bounds: at least the largest bound inside, plus some slack.
        let n_super = nb / SUPER_SPAN;
        let mut supers = vec![f32::NEG_INFINITY; n_super * n_kv];
        for s in 0..n_super {
            for h in 0..n_kv {
                for b in s * SUPER_SPAN..(s + 1) * SUPER_SPAN {
                    supers[s * n_kv + h] = supers[s * n_kv + h].max(ub[b * n_kv + h]);
                }
                supers[s * n_kv + h] += r.f().abs();
            }
        }
        let head = SparseConfig {
            mass: 1.0,
            budget_tokens: 64 * (3 + trial % 9),
            recent_tokens: 64,
            group: GroupScore::Max,
            dense_layers: 0,
            layers: LayerSet::ALL,
            budget_scope: BudgetScope::Head,
            share: f32::INFINITY,
            index: SparseIndex::Tree,
            score: SparseScore::Bound,
            unit_tokens: WHOLE,
            rest: SparseRest::Mean,
        };
        let flat = select_blocks_certified(&ub, &lower, n_kv, 1, &tokens, &head);
        let tree = select_blocks_indexed(&ub, &supers, SUPER_SPAN, &lower, n_kv, 1, &tokens, &head);
        if let Some((_, _, e)) = &tree {
            expansions += e;
        }
        assert_eq!(
            flat.map(|s| s.0),
            tree.map(|t| t.0),
            "trial {trial}: per-head order differs"
        );
        // Without super-blocks the indexed selection is the flat one.
        let none = select_blocks_indexed(&ub, &[], 0, &lower, n_kv, 1, &tokens, &head);
        let flat = select_blocks_certified(&ub, &lower, n_kv, 1, &tokens, &head);
        assert_eq!(flat.map(|s| s.0), none.map(|t| t.0));
        // The union budget: forced blocks in, never over the budget, a mass in [0, 1].
        let union = SparseConfig {
            mass: 0.95,
            budget_scope: BudgetScope::Union,
            ..head
        };
        if let Some((sel, mass, _)) =
            select_blocks_indexed(&ub, &supers, SUPER_SPAN, &lower, n_kv, 1, &tokens, &union)
        {
            let read: usize = sel.iter().map(|&(b, _)| tokens[b]).sum();
            assert!(read <= union.budget_tokens, "trial {trial}: {read}");
            assert_eq!(sel[0].0, 0);
            assert_eq!(sel.last().unwrap().0, nb - 1);
            assert!((0.0..=1.0).contains(&mass), "{mass}");
        }
    }
    assert!(expansions > 0, "the index was never exercised");
}

/// The attention mass a selection really holds, averaged over the KV heads, for blocks of 16
/// positions whose logits all equal `exact[b · n_kv + h]`.
fn exact_mass(sel: &[(usize, u32)], exact: &[f32], n_kv: usize) -> f64 {
    let nb = exact.len() / n_kv;
    let mut m = 0.0f64;
    for h in 0..n_kv {
        let w = |b: usize| (exact[b * n_kv + h] as f64).exp() * 16.0;
        let all: f64 = (0..nb).map(w).sum();
        let got: f64 = sel
            .iter()
            .filter(|&&(_, m)| m & (1 << h) != 0)
            .map(|&(b, _)| w(b))
            .sum();
        m += got / all;
    }
    m / n_kv as f64
}

/// The selection settings of random trial `trial`: mass target, budget and scope vary with it.
fn trial_cfg(trial: usize, score: SparseScore) -> SparseConfig {
    SparseConfig {
        mass: [0.5, 0.8, 0.95][trial % 3],
        budget_tokens: 16 * (2 + trial % 9),
        recent_tokens: 16,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: if trial.is_multiple_of(2) {
            BudgetScope::Union
        } else {
            BudgetScope::Head
        },
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    }
}

#[test]
fn certified_mass_never_exceeds_the_exact_mass_of_the_selection() {
    // Random blocks whose exact logits lie inside [lower, upper]: whatever the selection, the
    // mass it reports (a certificate, possibly 0 when the budget makes the target unreachable)
    // is at most the attention mass the selected blocks really hold.
    use kvspool::kv::tiered::select_blocks_certified;
    let mut r = Rng(11);
    for trial in 0..200usize {
        let n_kv = 1 + trial % 3;
        let nb = 12 + trial % 40;
        let tokens = vec![16usize; nb];
        let ub: Vec<f32> = (0..nb * n_kv).map(|_| r.f() * 3.0).collect();
        let lb: Vec<f32> = ub.iter().map(|x| x - (r.f().abs() * 2.0)).collect();
        // One exact logit per block and head, anywhere in its bounds (all 16 tokens alike).
        let exact: Vec<f32> = ub
            .iter()
            .zip(&lb)
            .map(|(u, l)| l + (u - l) * (0.5 + 0.5 * r.f().clamp(-1.0, 1.0)))
            .collect();
        let cfg = trial_cfg(trial, SparseScore::Bound);
        let Some((sel, mass)) = select_blocks_certified(&ub, &lb, n_kv, 1, &tokens, &cfg) else {
            continue;
        };
        let true_mass = exact_mass(&sel, &exact, n_kv);
        assert!(
            mass as f64 <= true_mass + 1e-5,
            "trial {trial}: certified {mass} > exact {true_mass}"
        );
    }
}

#[test]
fn certified_mass_with_slack_never_exceeds_the_exact_mass() {
    // Scores below the bounds (the mix score): `score + slack ≥ every logit` per column. The
    // blocks are taken in score order, and the certificate, counting the unselected side at
    // exp(slack) times its weight, still never exceeds the selection's exact mass.
    use kvspool::kv::tiered::select_blocks_certified_slack;
    let mut r = Rng(23);
    let mut certified = 0usize;
    let mut over_claims = 0usize;
    for trial in 0..300usize {
        let n_kv = 1 + trial % 3;
        let nb = 12 + trial % 40;
        let tokens = vec![16usize; nb];
        let slack: Vec<f32> = (0..n_kv).map(|_| r.f().abs() * 1.5).collect();
        let ub: Vec<f32> = (0..nb * n_kv).map(|_| r.f() * 3.0).collect();
        // A score anywhere in [ub − slack, ub]; a lower bound below both.
        let score: Vec<f32> = ub
            .iter()
            .enumerate()
            .map(|(i, u)| u - slack[i % n_kv] * r.f().abs().min(1.0))
            .collect();
        let lb: Vec<f32> = score.iter().map(|x| x - r.f().abs() * 0.3).collect();
        // Every logit anywhere in [lb, ub]; in half the trials at its upper bound (the case a
        // certificate from the scores alone gets wrong).
        let exact: Vec<f32> = ub
            .iter()
            .zip(&lb)
            .map(|(u, l)| {
                let t = r.f();
                if trial % 2 == 0 {
                    *u
                } else {
                    l + (u - l) * (0.5 + 0.5 * t.clamp(-1.0, 1.0))
                }
            })
            .collect();
        let cfg = trial_cfg(trial, SparseScore::Mix);
        // The same scores taken as bounds (no slack): their certificate can over-claim.
        let zero = vec![0.0f32; n_kv];
        if let Some((sel0, m0)) =
            select_blocks_certified_slack(&score, &lb, &zero, n_kv, 1, &tokens, &cfg)
        {
            if m0 as f64 > exact_mass(&sel0, &exact, n_kv) + 1e-5 {
                over_claims += 1;
            }
        }
        let Some((sel, mass)) =
            select_blocks_certified_slack(&score, &lb, &slack, n_kv, 1, &tokens, &cfg)
        else {
            continue;
        };
        if mass > 0.0 {
            certified += 1;
        }
        let true_mass = exact_mass(&sel, &exact, n_kv);
        assert!(
            mass as f64 <= true_mass + 1e-5,
            "trial {trial}: certified {mass} > exact {true_mass}"
        );
    }
    // The property is not vacuous: some selections do certify a mass.
    assert!(certified > 10, "{certified} selections certified any mass");
    assert!(
        over_claims > 0,
        "without the slack the scores never over-claimed: the test would not see a bad certificate"
    );
}

#[test]
fn mix_score_is_deterministic_across_backends_and_tree_matches_flat() {
    // The mix score through the engine: identical outputs and selections whatever the RAM tier
    // and backend; with per-head budgets and no mass rule the tree index reads exactly what
    // flat reads (super-block scores are bounds, above every block's mix score).
    // (One column per KV head: with several, the tree's first-level normalizers differ from
    // flat's and so may the order in which a head's columns combine.)
    let flat = SparseConfig {
        mass: 1.0,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Max,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Mix,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let (a, sel_a) = run(Some(flat), 1 << 30, BackendKind::Pread);
    let (b, sel_b) = run(Some(flat), 0, BackendKind::Uring);
    assert_eq!(sel_a, sel_b);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let tree = SparseConfig {
        index: SparseIndex::Tree,
        ..flat
    };
    let (c, sel_c) = run(Some(tree), 1 << 30, BackendKind::Pread);
    assert_eq!(sel_a, sel_c);
    assert!(a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()));
    // Mix selects differently from the bound alone (it is a different ranking) ...
    let bound = SparseConfig {
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        ..flat
    };
    let (d, _) = run(Some(bound), 1 << 30, BackendKind::Pread);
    assert!(a.iter().zip(&d).any(|(x, y)| x != y), "mix ranked as bound");
    // ... and with the default mass rule it stays sparse and deterministic.
    let m95 = SparseConfig {
        mass: 0.95,
        group: GroupScore::Sum,
        budget_scope: BudgetScope::Union,
        ..flat
    };
    let (e, sel_e) = run(Some(m95), 1 << 30, BackendKind::Pread);
    let (f, sel_f) = run(Some(m95), 64 * 1024, BackendKind::Mmap);
    assert_eq!(sel_e, sel_f);
    assert!(e.iter().zip(&f).all(|(x, y)| x.to_bits() == y.to_bits()));
    let candidates = 2 * 1200usize.div_ceil(32) as u64;
    assert!(sel_e < candidates / 2, "{sel_e} of {candidates}");
}

#[test]
fn union_own_reads_the_union_blocks_computes_fewer_head_blocks_and_is_deterministic() {
    let union = SparseConfig {
        mass: 1.0,
        budget_tokens: 256,
        recent_tokens: 64,
        group: GroupScore::Sum,
        dense_layers: 0,
        layers: LayerSet::ALL,
        budget_scope: BudgetScope::Union,
        share: f32::INFINITY,
        index: SparseIndex::Flat,
        score: SparseScore::Mix,
        unit_tokens: WHOLE,
        rest: SparseRest::Mean,
    };
    let own = SparseConfig {
        budget_scope: BudgetScope::UnionOwn,
        ..union
    };
    let sum = |st: &kvspool::kv::KvStats| {
        let mut t = LayerStats::default();
        st.layers.iter().for_each(|l| t.add(l));
        t
    };
    let (out_u, st_u) = run_with(
        Some(union),
        1 << 30,
        BackendKind::Pread,
        PrefetchMode::Auto,
        None,
        4,
    );
    let (out_o, st_o) = run_with(
        Some(own),
        1 << 30,
        BackendKind::Pread,
        PrefetchMode::Auto,
        None,
        4,
    );
    let (out_o2, st_o2) = run_with(Some(own), 0, BackendKind::Uring, PrefetchMode::Off, None, 4);
    let (u, o, o2) = (sum(&st_u), sum(&st_o), sum(&st_o2));
    assert!(u.sparse_passes > 0 && u.sparse_dense_fallbacks == 0);
    // Same blocks read (mass 1.0: the greedy is the same), every head computes them in union.
    assert_eq!(u.sparse_selected, o.sparse_selected);
    assert_eq!(u.sparse_head_candidates, 2 * u.sparse_candidates);
    assert_eq!(u.sparse_head_attended, 2 * u.sparse_selected);
    // union-own: each block read by at least one head, not all by both.
    assert!(o.sparse_head_attended >= o.sparse_selected);
    assert!(o.sparse_head_attended < u.sparse_head_attended, "{o:?}");
    assert!(out_u
        .iter()
        .zip(&out_o)
        .any(|(a, b)| a.to_bits() != b.to_bits()));
    // Deterministic whatever the RAM budget, backend and prefetcher.
    assert_eq!(o.sparse_head_attended, o2.sparse_head_attended);
    assert!(same_bits(&out_o, &out_o2));
}

/// One layer of `n` bursty keys with `n_kv` KV heads in `bt`-token blocks, then `steps` decode
/// steps (append + attend) of a slowly drifting query; every output and the final stats.
fn run_units(
    sparse: Option<SparseConfig>,
    bt: usize,
    n_kv: usize,
    ram: usize,
    backend: BackendKind,
) -> (Vec<f32>, kvspool::kv::KvStats) {
    let (n, steps, d, group) = (700usize, 3usize, 16usize, 3usize);
    let geo = KvGeometry::dense(1, n_kv, d, n + steps + 8);
    let mut c = TieredConfig::new(ram, common::kv_dir());
    c.dtype = KvDtype::F16;
    c.block_tokens = bt;
    c.backend = backend;
    c.sparse = sparse;
    let mut kv = TieredKv::new(geo.clone(), c).unwrap();
    let mut r = Rng(11);
    let row = geo.row_len();
    for p in 0..n {
        // Bursts of 5 positions, so that 4-token units inside a block differ.
        let burst = if (p / 5) % 7 == 0 { 3.0 } else { 0.4 };
        let k: Vec<f32> = (0..row).map(|_| r.f() * burst).collect();
        let v: Vec<f32> = (0..row).map(|_| r.f()).collect();
        kv.append(0, &k, &v).unwrap();
    }
    let n_head = n_kv * group;
    let base: Vec<f32> = (0..n_head * d).map(|_| r.f() * 2.0).collect();
    let mut out = vec![0.0f32; base.len()];
    let mut all = Vec::new();
    kv.reset_counters();
    for step in 0..steps {
        if step > 0 {
            let k: Vec<f32> = (0..row).map(|_| r.f() * 0.5).collect();
            let v: Vec<f32> = (0..row).map(|_| r.f()).collect();
            kv.append(0, &k, &v).unwrap();
        }
        let q: Vec<f32> = base.iter().map(|b| b + 0.2 * r.f()).collect();
        let qy = AttnQuery {
            q: &q,
            n_tokens: 1,
            pos0: n - 1 + step,
            n_head,
            scale: 0.25,
            sinks: None,
            window: None,
        };
        kv.attend(0, &qy, &mut out).unwrap();
        all.extend_from_slice(&out);
    }
    let st = KvCache::stats(&kv).unwrap();
    (all, st)
}

#[test]
fn auto_unit_keeps_about_2048_units_per_layer_within_the_block() {
    // 64-token blocks: whole blocks at 128K, 4-token units at 8K, 2-token units up to 4K,
    // powers of two between.
    for (n_ctx, want) in [
        (131_072, 64),
        (262_144, 64),
        (65_536, 32),
        (32_768, 16),
        (16_384, 8),
        (12_000, 8),
        (8_192, 4),
        (6_000, 4),
        (4_096, 2),
        (2_048, 2),
        (1, 2),
    ] {
        assert_eq!(auto_unit_tokens(n_ctx, 64), want, "n_ctx {n_ctx}");
    }
    // Never more than the block, always a divisor of it, at most 64 units per block.
    assert_eq!(auto_unit_tokens(8_192, 2), 2);
    assert_eq!(auto_unit_tokens(8_192, 6), 3);
    assert_eq!(auto_unit_tokens(100, 4096), 64);
    assert_eq!(auto_unit_tokens(131_072, 48), 48);
}

#[test]
fn units_select_and_attend_exactly_as_blocks_of_the_unit_size() {
    // One KV head (no cross-head ranking), mass 1.0 (the budget alone stops): 4-token units of
    // 32-token blocks take the same positions as 4-token blocks, and attention over them is
    // the same sums in another grouping.
    for score in [SparseScore::Bound, SparseScore::Mix] {
        let cfg = SparseConfig {
            mass: 1.0,
            budget_tokens: 160,
            recent_tokens: 64,
            score,
            unit_tokens: 4,
            ..SparseConfig::default()
        };
        let (units, st_u) = run_units(Some(cfg), 32, 1, 1 << 30, BackendKind::Pread);
        let (blocks, st_b) = run_units(Some(cfg), 4, 1, 1 << 30, BackendKind::Pread);
        let (dense, _) = run_units(None, 32, 1, 1 << 30, BackendKind::Pread);
        let (u, b) = (layer_total(&st_u), layer_total(&st_b));
        assert_eq!(u.sparse_passes, 3);
        assert_eq!(u.sparse_dense_fallbacks, 0);
        // The same (unit, head) pairs computed (the tail's units too).
        assert_eq!(u.sparse_head_attended, b.sparse_head_attended, "{score:?}");
        assert_eq!(u.sparse_head_candidates, b.sparse_head_candidates);
        // Blocks (read whole) are counted as blocks, pairs as (unit, head).
        assert_eq!(u.sparse_candidates, 3 * 700usize.div_ceil(32) as u64);
        assert_eq!(b.sparse_candidates, 3 * 700usize.div_ceil(4) as u64 + 2);
        assert!(
            u.sparse_head_attended * 4 < u.sparse_head_candidates,
            "{u:?}"
        );
        let worst = max_abs_diff(&units, &blocks);
        assert!(
            worst < 1e-5,
            "{score:?}: units vs 4-token blocks differ by {worst}"
        );
        let off = max_abs_diff(&units, &dense);
        assert!(off > 1e-3, "{score:?}: sparse equals dense ({off})");
    }
}

#[test]
fn units_are_deterministic_across_budgets_and_backends_and_compute_fewer_pairs() {
    for scope in [BudgetScope::Union, BudgetScope::UnionOwn] {
        let cfg = SparseConfig {
            mass: 0.95,
            budget_tokens: 160,
            recent_tokens: 32,
            budget_scope: scope,
            group: GroupScore::Sum,
            unit_tokens: 4,
            ..SparseConfig::default()
        };
        let (a, st_a) = run_units(Some(cfg), 32, 2, 1 << 30, BackendKind::Pread);
        let (b, st_b) = run_units(Some(cfg), 32, 2, 0, BackendKind::Uring);
        let (c, st_c) = run_units(Some(cfg), 32, 2, 64 * 1024, BackendKind::Mmap);
        assert!(same_bits(&a, &b) && same_bits(&a, &c), "{scope:?}");
        let (ta, tb, tc) = (layer_total(&st_a), layer_total(&st_b), layer_total(&st_c));
        assert_eq!(ta.sparse_head_attended, tb.sparse_head_attended);
        assert_eq!(ta.sparse_head_attended, tc.sparse_head_attended);
        assert_eq!(ta.sparse_selected, tb.sparse_selected);
        // Candidates: 8 units per sealed block and the tail, per KV head.
        let nb = 700usize.div_ceil(32) as u64;
        assert!(ta.sparse_head_candidates >= 2 * 8 * (nb - 1) * ta.sparse_passes);
        assert!(
            ta.sparse_head_attended * 2 < ta.sparse_head_candidates,
            "{ta:?}"
        );
    }
}

/// `--sparse-rest mean` folds every unit a head does not attend in as its mean key (weight: its
/// positions) carrying its mean value — exact when a unit's keys and values are all equal. With
/// keys constant over stretches of 128 positions (whole super-blocks of 16 8-token units) and
/// values over each unit (all exact in bf16, and so are their means; f32 storage), sparse
/// attention with the rest equals dense to f32 rounding in every budget scope, whichever units
/// were selected; dropping the rest does not.
#[test]
fn the_rest_of_piecewise_constant_keys_is_exact_in_every_scope() {
    let (n, bt, d, n_kv, n_head) = (1000usize, 32usize, 16usize, 2usize, 4usize);
    // Two full layers holding the same keys and values: `auto` treats layer 0 differently.
    let geo = KvGeometry::dense(2, n_kv, d, n + 8);
    let run_at = |sparse: Option<SparseConfig>, layer: usize| {
        let mut c = TieredConfig::new(1 << 30, common::kv_dir());
        c.dtype = KvDtype::F32;
        c.block_tokens = bt;
        c.sparse = sparse;
        let mut kv = TieredKv::new(geo.clone(), c).unwrap();
        let mut r = Rng(3);
        // Multiples of 1/4 in [-3, 3]: exact in bf16, and so are their means.
        let mut q4 = |s: f32| (r.f() * s * 4.0).round() / 4.0;
        let row = geo.row_len();
        let (mut k, mut v) = (vec![0.0f32; row], vec![0.0f32; row]);
        for p in 0..n {
            // Keys change per super-block, values per unit (so a unit's row read for another
            // unit, or a super-block's for another, shows).
            if p % 128 == 0 {
                k = (0..row).map(|_| q4(3.0)).collect();
            }
            if p % 8 == 0 {
                v = (0..row).map(|_| q4(1.0)).collect();
            }
            kv.append(0, &k, &v).unwrap();
            kv.append(1, &k, &v).unwrap();
        }
        let q: Vec<f32> = (0..n_head * d).map(|_| q4(1.0)).collect();
        let mut out = vec![0.0f32; q.len()];
        let qy = AttnQuery {
            q: &q,
            n_tokens: 1,
            pos0: n - 1,
            n_head,
            scale: 0.25,
            sinks: None,
            window: None,
        };
        kv.attend(layer, &qy, &mut out).unwrap();
        let st = layer_total(&KvCache::stats(&kv).unwrap());
        (out, st)
    };
    let run = |sparse: Option<SparseConfig>| run_at(sparse, 1);
    let dense = run(None).0;
    for scope in [BudgetScope::Union, BudgetScope::UnionOwn, BudgetScope::Head] {
        let cfg = SparseConfig {
            mass: 1.0,
            budget_tokens: 192,
            recent_tokens: 32,
            budget_scope: scope,
            unit_tokens: 8,
            ..SparseConfig::default()
        };
        // 8-token units: `auto` (the default) leaves them out, as `off` does, bit for bit.
        assert_eq!(cfg.rest, SparseRest::Auto, "the default");
        let (auto, _) = run(Some(cfg));
        let cfg = SparseConfig {
            rest: SparseRest::Mean,
            ..cfg
        };
        let (with, st) = run(Some(cfg));
        assert_eq!(
            (st.sparse_passes, st.sparse_dense_fallbacks),
            (1, 0),
            "{scope:?}"
        );
        assert!(
            st.sparse_head_attended * 2 < st.sparse_head_candidates,
            "{st:?}"
        );
        let off = SparseConfig {
            rest: SparseRest::Off,
            ..cfg
        };
        let (without, _) = run(Some(off));
        let (e_with, e_without) = (max_abs_diff(&dense, &with), max_abs_diff(&dense, &without));
        assert!(
            e_with < 2e-5,
            "{scope:?}: rest {e_with} (without {e_without})"
        );
        assert!(e_without > 1e-3, "{scope:?}: without the rest {e_without}");
        assert!(
            same_bits(&auto, &without),
            "{scope:?}: auto at 8-token units"
        );
    }
    // 2-token units: `auto` summarizes (exact here too), as `mean` does, in every layer but the
    // model's first, which it leaves out as `off` does.
    let cfg = SparseConfig {
        mass: 1.0,
        budget_tokens: 192,
        recent_tokens: 32,
        unit_tokens: 2,
        ..SparseConfig::default()
    };
    let (auto, st) = run(Some(cfg));
    assert_eq!((st.sparse_passes, st.sparse_dense_fallbacks), (1, 0));
    let (mean, _) = run(Some(SparseConfig {
        rest: SparseRest::Mean,
        ..cfg
    }));
    assert!(same_bits(&auto, &mean));
    assert!(max_abs_diff(&dense, &auto) < 2e-5);
    let (auto0, _) = run_at(Some(cfg), 0);
    let (mean0, _) = run_at(
        Some(SparseConfig {
            rest: SparseRest::Mean,
            ..cfg
        }),
        0,
    );
    let (off0, _) = run_at(
        Some(SparseConfig {
            rest: SparseRest::Off,
            ..cfg
        }),
        0,
    );
    assert!(same_bits(&auto0, &off0), "auto in layer 0");
    assert!(same_bits(&mean0, &mean), "mean in layer 0");
    assert!(max_abs_diff(&dense, &off0) > 1e-3);
}

#[test]
fn sparse_layers_leave_the_other_full_layers_dense_bit_for_bit() {
    let cfg = SparseConfig {
        budget_tokens: 256,
        recent_tokens: 64,
        budget_scope: BudgetScope::Head,
        share: f32::INFINITY,
        score: SparseScore::Bound,
        unit_tokens: WHOLE,
        rest: SparseRest::Off,
        ..SparseConfig::default()
    };
    let go = |c: Option<SparseConfig>| {
        run_with(c, 1 << 30, BackendKind::Pread, PrefetchMode::Auto, None, 1)
    };
    let (dense, _) = go(None);
    let (sparse, _) = go(Some(cfg));
    let half = dense.len() / 2;
    // Both layers are sparse with the set `all`, and that changes both of them.
    assert!(dense[..half] != sparse[..half] && dense[half..] != sparse[half..]);
    for (only, set) in [(0usize, "0"), (1, "1")] {
        let c = SparseConfig {
            layers: set.parse().unwrap(),
            ..cfg
        };
        let (got, st) = go(Some(c));
        // The layers are independent here: the listed one equals the all-sparse run, the other
        // equals dense, bit for bit.
        for l in 0..2 {
            let (want, span) = if l == only {
                (&sparse, l * half..(l + 1) * half)
            } else {
                (&dense, l * half..(l + 1) * half)
            };
            assert!(
                same_bits(&got[span.clone()], &want[span]),
                "--sparse-layers {set}, layer {l}"
            );
        }
        assert!(st.layers[only].sparse_selected > 0);
        assert_eq!(
            st.layers[1 - only].sparse_selected,
            0,
            "--sparse-layers {set}"
        );
    }
    // `--sparse-dense-layers` counts full layers and applies on top of the set.
    let c = SparseConfig {
        layers: "0".parse().unwrap(),
        dense_layers: 1,
        ..cfg
    };
    assert!(same_bits(&go(Some(c)).0, &dense));
}

#[test]
fn sparse_layers_parse_print_and_must_name_full_layers() {
    for (text, want) in [
        ("all", "all"),
        ("ALL", "all"),
        ("3", "3"),
        (" 1-3, 7 ,9-9", "1-3,7,9"),
        ("5,1,2,3", "1-3,5"),
        ("0-255", "0-255"),
        ("1,3,5", "1,3,5"),
    ] {
        let s: LayerSet = text.parse().unwrap();
        assert_eq!(s.to_string(), want, "{text:?}");
        assert_eq!(s.to_string().parse::<LayerSet>().unwrap(), s);
    }
    let s: LayerSet = "1-3,7".parse().unwrap();
    assert!(s.contains(1) && s.contains(3) && s.contains(7));
    assert!(!s.contains(0) && !s.contains(4) && !s.contains(300));
    assert!(LayerSet::ALL.contains(10_000));
    for bad in ["", "x", "3-1", "256", "1,,2", "-1", "1-", "1-2-3", "0-256"] {
        let e = bad.parse::<LayerSet>().unwrap_err().to_string();
        assert!(e.contains("bad layer list"), "{bad:?}: {e}");
    }
    // A layer the model does not have, or a sliding-window one, is an error naming the full
    // layers.
    let mut geo = KvGeometry::dense(4, 2, 16, 256);
    geo.windows = vec![Some(128), None, Some(128), None];
    for (set, what) in [
        ("1,4", "has 4 layers"),
        ("0-1", "layer 0 is a sliding-window layer"),
    ] {
        let mut c = TieredConfig::new(1 << 20, common::kv_dir());
        c.sparse = Some(SparseConfig {
            layers: set.parse().unwrap(),
            ..SparseConfig::default()
        });
        let Err(e) = TieredKv::new(geo.clone(), c) else {
            panic!("--sparse-layers {set} was accepted");
        };
        let e = e.to_string();
        assert!(e.contains(what) && e.contains("(1,3)"), "{set}: {e}");
    }
    let mut c = TieredConfig::new(1 << 20, common::kv_dir());
    c.sparse = Some(SparseConfig {
        layers: "1,3".parse().unwrap(),
        ..SparseConfig::default()
    });
    assert!(TieredKv::new(geo, c).is_ok());
}

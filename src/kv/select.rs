//! Block selection for `--attention sparse`: which blocks of a full-attention layer one query
//! token reads, from upper bounds of its attention logits per block.
//!
//! The selection is a greedy over *candidates*: blocks, or — with a two-level index — whole
//! super-blocks of `span` consecutive sealed blocks whose bound is the bound of the union of
//! their keys. A super-block stands for its blocks until the greedy would take it; then it is
//! *expanded* (its blocks are scored for that KV head and replace it). Because a super-block's
//! score bounds every block in it, a block the greedy takes is never out-ranked by one hidden in
//! an unexpanded super-block: the index only saves the scoring of the blocks nobody looks at.
//!
//! Invariants:
//! - a block's key (estimated mass) is `Σ_columns tokens·exp(score − max_c) / Z_c / per_head`,
//!   where `max_c` and `Z_c` come from the first-level candidates (super-blocks and the blocks
//!   outside them) and stay fixed for the selection; a super-block's key uses its best child's
//!   token count and its own score, so it is never below any of its blocks' keys;
//! - the certified mass of a head (with lower bounds) only ever counts what is guaranteed: the
//!   unselected side keeps a super-block's whole bound until that head expanded it, and a head
//!   whose certificate can no longer reach the target stops counting (its mass stays 0, a valid
//!   lower bound; the selection does not depend on it);
//! - without super-blocks a head's lower bounds are computed only once its estimated mass is
//!   within `ARM_MARGIN` of the target (a certificate never exceeds the estimate), and then for
//!   every block it took, in the order taken: the same sums as computing them block by block,
//!   so the same selection (tested against that eager path);
//! - each head takes its blocks in the flat order (by upper-bound key, lower index on ties);
//!   without super-blocks the whole selection is the flat one, with them the comparison across
//!   heads uses the first level's normalizers, so a union selection may differ slightly;
//! - the key bounds are stored as bf16 center/radius tiles whose boxes contain the exact ones
//!   ([`BoundTiles`]), so every stored bound is still a bound;
//! - the blocks read never depend on the budget scope's attend rule: `UnionOwn` with a finite
//!   `share` adds to each head exactly the read blocks whose key (for that head) is at least
//!   `share · tokens / total`, after the greedy;
//! - the selection holds at most `budget_tokens` (counting the forced blocks), and `None` means
//!   "read densely" (over 3/4 of the blocks, degenerate scores, or more than 32 KV heads).

use super::tiered::{BudgetScope, SparseConfig};
use crate::kernels::COL_TILE;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A selection with the order its scored blocks were taken in.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    /// Blocks in increasing order, each with the mask of the KV heads that read it.
    pub blocks: Vec<(usize, u32)>,
    /// Mean counted mass over the KV heads (estimated, or certified with lower bounds).
    pub mass: f32,
    /// The blocks taken by score (not the forced ones), most needed first.
    pub taken: Vec<usize>,
    /// Super-block expansions (one KV head each) the selection needed.
    pub expansions: usize,
}

/// Lower bounds of the scaled logits of block `b`, one per score column, written to `out`.
pub(crate) type LowerFn<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// Upper-bound scores of blocks `lo..hi` for KV head `h`: `out[(b − lo) · per_head + s]`.
pub(crate) type UpperFn<'a> = &'a (dyn Fn(usize, usize, usize, &mut [f32]) + Sync);

/// The scores a selection starts from.
pub(crate) struct Scores<'a> {
    /// KV heads and score columns per head (`cols = n_kv · per_head`).
    pub n_kv: usize,
    pub per_head: usize,
    /// Positions per block.
    pub tokens: &'a [usize],
    /// Block scores, column-major `[c · nb + b]`; only the blocks outside super-blocks need to
    /// be valid (the others are written on expansion).
    pub blocks: Vec<f32>,
    /// Blocks per super-block and the super-block scores, column-major `[c · n_super + s]`:
    /// super-block `s` covers blocks `s·span .. (s+1)·span`. `span = 0` (or no rows): a flat
    /// selection.
    pub span: usize,
    pub supers: Vec<f32>,
    /// Per column (empty: all 0): how far a block's score may lie *below* an upper bound of
    /// its logits (`score + slack ≥ bound`; [`super::tiered::SparseScore::Mix`]). The
    /// certified mass rule counts the unselected side at `exp(slack)` times its weight.
    pub slack: Vec<f32>,
    /// Compute every taken block's lower bounds as it is taken instead of once a head's
    /// estimate nears the mass (the reference the lazy certificate is tested against).
    pub eager_certificate: bool,
}

/// A heap entry: a block or a super-block of one KV head, by key (then lower first block).
#[derive(Debug, Clone, Copy)]
struct Cand {
    key: f32,
    /// Block index, or the first block of the super-block.
    first: u32,
    is_super: bool,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key
            .total_cmp(&o.key)
            .then(o.first.cmp(&self.first))
            .then(o.is_super.cmp(&self.is_super))
    }
}

/// One KV head's share of a selection's preparation (computed per head in parallel).
struct HeadPrep {
    /// Per column of the head: the largest first-level score, the normalizer
    /// `Σ tokens·exp(score − max)`, `1 / (normalizer · per_head)` and the normalizer times the
    /// certificate's boost.
    col_mx: Vec<f32>,
    col_sum: Vec<f32>,
    inv: Vec<f32>,
    cert_unsel: Vec<f64>,
    /// Whether the head's certificate can reach the mass at this budget.
    certifiable: bool,
    /// Its candidates by key (only the leaders it could ever pop, without super-blocks).
    heap: BinaryHeap<Cand>,
}

/// The mutable state of one selection that the greedy, the expansions and the accounting
/// share.
struct Book {
    /// Block scores, column-major (see [`Scores::blocks`]); filled in on expansion.
    blocks: Vec<f32>,
    /// Per KV head: its candidates by key.
    heaps: Vec<BinaryHeap<Cand>>,
    /// `expanded[s]`: bit h set once head h scored super-block s's blocks.
    expanded: Vec<u32>,
    /// Per column: Σ over selected blocks of tokens·exp(lower − max), and Σ over the rest of
    /// tokens·exp(score − max) (the certified rule).
    cert_sel: Vec<f64>,
    cert_unsel: Vec<f64>,
    /// Heads whose certificate can still reach the mass (the others are not counted).
    certifiable: u32,
    /// Heads whose lower bounds are being computed (see `account` in [`select`]); the others
    /// only sum their estimate and remember the blocks they took.
    armed: u32,
    /// Per KV head: the estimated (upper-bound) mass of the blocks it took, and those blocks
    /// while it is not armed, in the order taken.
    est: Vec<f32>,
    pending: Vec<Vec<usize>>,
    /// Per KV head: the mass counted so far.
    got: Vec<f32>,
}

/// Select the blocks one query token reads (see the module docs and
/// [`super::tiered::select_blocks`] for the rules). `upper` scores blocks of a super-block when
/// it is expanded (unused without super-blocks); `lower` makes the mass rule certified.
pub(crate) fn select(
    sc: Scores<'_>,
    upper: UpperFn<'_>,
    lower: Option<LowerFn<'_>>,
    cfg: &SparseConfig,
) -> Option<Selection> {
    let (n_kv, per_head, tokens) = (sc.n_kv, sc.per_head, sc.tokens);
    let nb = tokens.len();
    let total: usize = tokens.iter().sum();
    let cols = n_kv * per_head;
    if nb == 0
        || n_kv == 0
        || n_kv > 32
        || per_head == 0
        || sc.blocks.len() != nb * cols
        || total <= cfg.budget_tokens
    {
        return None;
    }
    let span = sc.span;
    let n_super = nb
        .checked_div(span)
        .map_or(0, |n| n.min(sc.supers.len() / cols));
    if n_super * cols != sc.supers.len() && n_super > 0 {
        return None;
    }
    let span = if n_super == 0 { 0 } else { span };
    // Blocks outside super-blocks.
    let loose = n_super * span..nb;
    let super_tokens = |s: usize| -> (usize, usize) {
        let t = &tokens[s * span..(s + 1) * span];
        (t.iter().sum(), t.iter().copied().max().unwrap_or(0))
    };
    // One exp for every weight (the vector kernel's, lane-exact on one element), so that a
    // super-block's key and its blocks' keys compare exactly as their scores do.
    let ex = |x: f32, m: f32| {
        let mut a = [x];
        crate::kernels::exp_shift_sum(&mut a, m);
        a[0]
    };
    // First-level candidates `i`: super-blocks `0..n_super`, then the loose blocks.
    let n1 = n_super + loose.len();
    let first_tokens: Vec<(usize, usize)> = (0..n_super)
        .map(super_tokens)
        .chain(loose.clone().map(|b| (tokens[b], tokens[b])))
        .collect();
    // The certificate's factor per column: unselected weights count `exp(slack)` times.
    let boost: Vec<f64> = (0..cols)
        .map(|c| (sc.slack.get(c).copied().unwrap_or(0.0).max(0.0) as f64).exp())
        .collect();
    // Forced for every head: block 0 (attention sinks) and the recent blocks.
    let mut forced = vec![0usize];
    let mut recent = 0usize;
    for b in (0..nb).rev() {
        if recent >= cfg.recent_tokens.max(1) {
            break;
        }
        forced.push(b);
        recent += tokens[b];
    }
    // At most this many blocks fit the budget (the forced ones and a short tail included).
    let min_tokens = tokens.iter().copied().min().unwrap_or(1).max(1);
    let max_blocks = (cfg.budget_tokens / min_tokens + forced.len() + 1).min(nb);
    let all_heads = if n_kv == 32 {
        u32::MAX
    } else {
        (1u32 << n_kv) - 1
    };
    let heaviest = first_tokens.iter().map(|t| t.0).max().unwrap_or(0) as f64;
    // Without super-blocks a head pops at most the blocks it takes and the blocks others took
    // (each ≤ max_blocks, or n_kv · max_blocks with per-head budgets): only that many leaders
    // need to be in its heap (found by a threshold on plain keys; ties all kept).
    let keep = match cfg.budget_scope {
        BudgetScope::Union | BudgetScope::UnionOwn => 2 * max_blocks,
        BudgetScope::Head => (n_kv + 1) * max_blocks,
    } + 1;
    let key_tokens: Vec<f32> = first_tokens.iter().map(|t| t.1 as f32).collect();
    // Per KV head, independently (in parallel): per column the max and the unnormalized weights
    // `exp(score − max)` of the first-level candidates (`e[c · n1 + i]`, one vectorized pass),
    // the column sums of `tokens · e` (the normalizers, also the certified rule's unselected
    // mass to start from), whether the head's certificate can reach the mass at all, and its
    // heap of candidates.
    let mut e = vec![0.0f32; cols * n1];
    let prep: Vec<Option<HeadPrep>> = e
        .par_chunks_mut(per_head * n1)
        .enumerate()
        .map(|(h, eh)| {
            let mut p = HeadPrep {
                col_mx: vec![f32::NEG_INFINITY; per_head],
                col_sum: vec![0.0f32; per_head],
                inv: vec![0.0f32; per_head],
                cert_unsel: vec![0.0f64; per_head],
                certifiable: lower.is_none(),
                heap: BinaryHeap::new(),
            };
            for si in 0..per_head {
                let c = h * per_head + si;
                let sup = &sc.supers[c * n_super..(c + 1) * n_super];
                let lc = &sc.blocks[c * nb + loose.start..(c + 1) * nb];
                let mx = sup
                    .iter()
                    .chain(lc)
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if !mx.is_finite() {
                    return None;
                }
                p.col_mx[si] = mx;
                let ec = &mut eh[si * n1..(si + 1) * n1];
                ec[..n_super].copy_from_slice(sup);
                ec[n_super..].copy_from_slice(lc);
                crate::kernels::exp_shift_sum(ec, mx);
                let mut sum = 0.0f64;
                for (x, &(tok, _)) in ec.iter().zip(&first_tokens) {
                    sum += (tok as f32 * x) as f64;
                }
                p.col_sum[si] = sum as f32;
                p.inv[si] = 1.0 / (p.col_sum[si] * per_head as f32);
                p.cert_unsel[si] = sum * boost[c];
            }
            // Can the head's certified mass reach `cfg.mass` at this budget at all? A column's
            // certificate is at most (its largest `max_blocks` first-level weights, a
            // super-block's in full) / (all of them). If not, the budget alone limits the head:
            // its lower bounds are never computed and its counted mass stays 0 (a valid lower
            // bound).
            if lower.is_some() {
                let mut reach = 0.0f64;
                let mut w: Vec<f32> = Vec::new();
                for si in 0..per_head {
                    let k = max_blocks.min(n1);
                    // (Unscaled: the certificate is at most the selected share of the scores'
                    // own weights, whatever the boost.)
                    let total =
                        (p.cert_unsel[si] / boost[h * per_head + si]).max(f64::MIN_POSITIVE);
                    // k weights of at most `heaviest` each (exp ≤ 1) bound the top k.
                    let top = if k as f64 * heaviest < total * cfg.mass as f64 {
                        k as f64 * heaviest
                    } else {
                        let ec = &eh[si * n1..(si + 1) * n1];
                        w.clear();
                        w.extend(ec.iter().zip(&first_tokens).map(|(x, t)| t.0 as f32 * x));
                        if k < w.len() {
                            w.select_nth_unstable_by(k, |a, b| b.total_cmp(a));
                            w.truncate(k);
                        }
                        w.iter().map(|&x| x as f64).sum()
                    };
                    reach += (top / total).min(1.0);
                }
                p.certifiable = reach / per_head as f64 >= cfg.mass as f64 - 1e-6;
            }
            // The head's candidates by key `Σ_columns tokens·e / Z_c / per_head`.
            let mut keys = vec![0.0f32; n1];
            for si in 0..per_head {
                let (inv, ec) = (p.inv[si], &eh[si * n1..(si + 1) * n1]);
                for ((k, &t), &x) in keys.iter_mut().zip(&key_tokens).zip(ec) {
                    *k += t * x * inv;
                }
            }
            let threshold = if n_super == 0 && keep < n1 {
                let mut sorted = keys.clone();
                *sorted.select_nth_unstable_by(keep, |a, b| b.total_cmp(a)).1
            } else {
                f32::NEG_INFINITY
            };
            let v: Vec<Cand> = keys
                .iter()
                .enumerate()
                .filter(|&(_, &k)| k.total_cmp(&threshold).is_ge())
                .map(|(i, &key)| {
                    let (first, is_super) = if i < n_super {
                        (i * span, true)
                    } else {
                        (loose.start + i - n_super, false)
                    };
                    Cand {
                        key,
                        first: first as u32,
                        is_super,
                    }
                })
                .collect();
            p.heap = BinaryHeap::from(v);
            Some(p)
        })
        .collect();
    let prep: Vec<HeadPrep> = prep.into_iter().collect::<Option<_>>()?;
    let col_mx: Vec<f32> = prep.iter().flat_map(|p| p.col_mx.iter().copied()).collect();
    let col_sum: Vec<f32> = prep
        .iter()
        .flat_map(|p| p.col_sum.iter().copied())
        .collect();
    let cert_unsel: Vec<f64> = prep
        .iter()
        .flat_map(|p| p.cert_unsel.iter().copied())
        .collect();
    let certifiable: u32 = prep
        .iter()
        .enumerate()
        .filter(|(_, p)| p.certifiable)
        .fold(0u32, |m, (h, _)| m | (1 << h));
    let inv: Vec<f32> = prep.iter().flat_map(|p| p.inv.iter().copied()).collect();
    let heaps: Vec<BinaryHeap<Cand>> = prep.into_iter().map(|p| p.heap).collect();
    let weight = |tok: usize, x: f32, c: usize| tok as f32 * ex(x, col_mx[c]);
    // A candidate's key for head `h` from its scores `x[s]` and token count.
    let key_of = |h: usize, x: &[f32], tok: usize| -> f32 {
        let mut k = 0.0f32;
        for (s, &v) in x.iter().enumerate() {
            let c = h * per_head + s;
            k += weight(tok, v, c) * inv[c];
        }
        k
    };
    let in_super = |b: usize| {
        if b < n_super * span {
            Some(b / span)
        } else {
            None
        }
    };
    let mut expansions = 0usize;
    // Score super-block `s`'s blocks for head `h` and put them in its heap instead of it.
    let mut expand = |h: usize, s: usize, bk: &mut Book| {
        let (lo, hi) = (s * span, (s + 1) * span);
        let mut out = vec![0.0f32; span * per_head];
        upper(h, lo, hi, &mut out);
        let (tok, _) = super_tokens(s);
        if lower.is_some() {
            for si in 0..per_head {
                let c = h * per_head + si;
                bk.cert_unsel[c] -= weight(tok, sc.supers[c * n_super + s], c) as f64 * boost[c];
            }
        }
        for (i, b) in (lo..hi).enumerate() {
            let x = &out[i * per_head..(i + 1) * per_head];
            // The block's weights give both its key and its share of the unselected mass.
            let mut key = 0.0f32;
            for (si, &v) in x.iter().enumerate() {
                let c = h * per_head + si;
                bk.blocks[c * nb + b] = v;
                let w = weight(tokens[b], v, c);
                key += w * inv[c];
                if lower.is_some() {
                    bk.cert_unsel[c] += w as f64 * boost[c];
                }
            }
            bk.heaps[h].push(Cand {
                key,
                first: b as u32,
                is_super: false,
            });
        }
        if lower.is_some() {
            for si in 0..per_head {
                let c = h * per_head + si;
                bk.cert_unsel[c] = bk.cert_unsel[c].max(0.0);
            }
        }
        bk.expanded[s] |= 1 << h;
        expansions += 1;
    };
    let mut lb = vec![0.0f32; cols];
    // Whether head `h` can still be certified: every block still to come weighs at most its
    // heap's top (`key · Z_c · per_head` in column c), and at most `r` more fit the budget, so
    // its certificate ends below (S + r·w_top) / (S + U). Once that is under `cfg.mass` it stays
    // there: stop computing its lower bounds.
    let still_certifiable = |h: usize, top: Option<f32>, r: usize, bk: &Book| {
        let mut pot = 0.0f64;
        for si in 0..per_head {
            let c = h * per_head + si;
            let w_top = top.map_or(0.0, |k| {
                k as f64 * col_sum[c] as f64 * per_head as f64 * boost[c]
            });
            let den = bk.cert_sel[c] + bk.cert_unsel[c];
            pot += if den > 0.0 {
                ((bk.cert_sel[c] + r as f64 * w_top) / den).min(1.0)
            } else {
                1.0
            };
        }
        pot / per_head as f64 >= cfg.mass as f64 - 1e-6
    };
    let mut ub = vec![0.0f32; per_head];
    // A head's certificate `Σ_sel tok·exp(min(lower, score)) / (that + boost·Σ_rest tok·exp(score))`
    // (per column, normalized by `max`) never exceeds its estimate `Σ_sel tok·exp(score) / Z`
    // (boost ≥ 1), so it cannot reach the mass before the estimate does. Without super-blocks a
    // head's lower bounds are therefore only computed once its estimate is within `ARM_MARGIN`
    // of the mass: until then it keeps its unselected side up to date and remembers its blocks,
    // and arming adds their lower bounds in the order taken — the same sums, in the same order,
    // as computing them one block at a time.
    const ARM_MARGIN: f32 = 1e-3;
    let lazy = n_super == 0 && !sc.eager_certificate;
    // Add block `b`'s lower bounds to head `h`'s selected side (its scores in `ub`).
    let certify = |h: usize, b: usize, ub: &[f32], lb: &[f32], bk: &mut Book| {
        for (s, &u) in ub.iter().enumerate() {
            let c = h * per_head + s;
            let l = lb[c].min(u);
            bk.cert_sel[c] += tokens[b] as f64 * ((l - col_mx[c]) as f64).exp();
        }
    };
    let certificate = |h: usize, bk: &Book| -> f32 {
        let mut m = 0.0f64;
        for s in 0..per_head {
            let c = h * per_head + s;
            let den = bk.cert_sel[c] + bk.cert_unsel[c];
            m += if den > 0.0 { bk.cert_sel[c] / den } else { 1.0 };
        }
        (m / per_head as f64) as f32
    };
    // Account block `b` as read by the heads in `heads`: update their counted mass `got`.
    let mut account = |b: usize, heads: u32, bk: &mut Book| {
        let heads = heads & bk.certifiable;
        if let Some(lower) = lower {
            if heads == 0 {
                return;
            }
            if heads & bk.armed != 0 {
                lower(b, &mut lb);
            }
        }
        for h in 0..n_kv {
            if heads & (1 << h) == 0 {
                continue;
            }
            // The block's own scores for this head: known unless its super-block is not
            // expanded for the head (then score just this block).
            let known = in_super(b).is_none_or(|s| bk.expanded[s] & (1 << h) != 0);
            if known {
                for (s, u) in ub.iter_mut().enumerate() {
                    *u = bk.blocks[(h * per_head + s) * nb + b];
                }
            } else {
                upper(h, b, b + 1, &mut ub);
            }
            let Some(lower) = lower else {
                bk.got[h] += key_of(h, &ub, tokens[b]);
                continue;
            };
            if known {
                for (s, &u) in ub.iter().enumerate() {
                    let c = h * per_head + s;
                    bk.cert_unsel[c] =
                        (bk.cert_unsel[c] - weight(tokens[b], u, c) as f64 * boost[c]).max(0.0);
                }
            }
            if bk.armed & (1 << h) != 0 {
                certify(h, b, &ub, &lb, bk);
                bk.got[h] = certificate(h, bk);
                continue;
            }
            bk.est[h] += key_of(h, &ub, tokens[b]);
            bk.pending[h].push(b);
            if bk.est[h] >= cfg.mass - ARM_MARGIN {
                // Arm: the lower bounds of every block taken so far, in order.
                bk.armed |= 1 << h;
                let (mut lp, mut up) = (vec![0.0f32; cols], vec![0.0f32; per_head]);
                for pb in std::mem::take(&mut bk.pending[h]) {
                    lower(pb, &mut lp);
                    for (s, u) in up.iter_mut().enumerate() {
                        *u = bk.blocks[(h * per_head + s) * nb + pb];
                    }
                    certify(h, pb, &up, &lp, bk);
                }
                bk.got[h] = certificate(h, bk);
            }
        }
    };
    let mut bk = Book {
        blocks: sc.blocks,
        heaps,
        expanded: vec![0u32; n_super],
        cert_sel: vec![0.0f64; cols],
        cert_unsel,
        certifiable,
        armed: if lazy { 0 } else { all_heads },
        est: vec![0.0f32; n_kv],
        pending: vec![Vec::new(); n_kv],
        got: vec![0.0f32; n_kv],
    };
    let mut masks = vec![0u32; nb];
    let mut taken = Vec::new();
    let mut union_tokens = 0usize;
    for &b in &forced {
        if masks[b] == 0 {
            union_tokens += tokens[b];
        }
        if masks[b] != all_heads {
            account(b, all_heads & !masks[b], &mut bk);
            masks[b] = all_heads;
        }
    }
    match cfg.budget_scope {
        BudgetScope::Head => {
            for h in 0..n_kv {
                let bit = 1u32 << h;
                let mut head_tokens = union_tokens;
                while bk.got[h] < cfg.mass && head_tokens < cfg.budget_tokens {
                    let Some(c) = bk.heaps[h].pop() else { break };
                    let b = c.first as usize;
                    if c.is_super {
                        expand(h, b / span, &mut bk);
                        continue;
                    }
                    if masks[b] & bit == 0 {
                        if masks[b] == 0 {
                            taken.push(b);
                        }
                        masks[b] |= bit;
                        account(b, bit, &mut bk);
                        head_tokens += tokens[b];
                    }
                }
            }
        }
        BudgetScope::Union | BudgetScope::UnionOwn => {
            // Greedy over heads: the head whose best candidate carries the most estimated mass
            // goes first (a super-block is expanded and the race rerun). `Union`: a block read
            // by one head is attended by all. `UnionOwn`: a head attends only the blocks of its
            // own ranking, and takes one another head already read for free. Stops at the
            // budget or when every head reached its mass.
            let own = cfg.budget_scope == BudgetScope::UnionOwn;
            loop {
                let mut best: Option<(usize, Cand)> = None;
                for (h, heap) in bk.heaps.iter_mut().enumerate() {
                    if bk.got[h] >= cfg.mass {
                        continue;
                    }
                    // Blocks this head already attends are spent.
                    let spent = if own { 1u32 << h } else { all_heads };
                    while heap
                        .peek()
                        .is_some_and(|c| !c.is_super && masks[c.first as usize] & spent != 0)
                    {
                        heap.pop();
                    }
                    let Some(&c) = heap.peek() else { continue };
                    if best.is_none_or(|(_, bc)| c.key > bc.key) {
                        best = Some((h, c));
                    }
                }
                let Some((h, c)) = best else { break };
                let b = c.first as usize;
                if c.is_super {
                    bk.heaps[h].pop();
                    expand(h, b / span, &mut bk);
                    continue;
                }
                if own && masks[b] != 0 {
                    // Read already (for another head): attending it costs no budget.
                    bk.heaps[h].pop();
                    masks[b] |= 1 << h;
                    account(b, 1 << h, &mut bk);
                    continue;
                }
                if union_tokens + tokens[b] > cfg.budget_tokens {
                    if own {
                        // The budget is spent; each head still takes, down its own ranking,
                        // the blocks that are read anyway (its attended set stays a prefix).
                        for h in 0..n_kv {
                            while bk.got[h] < cfg.mass {
                                let Some(&c) = bk.heaps[h].peek() else { break };
                                let b = c.first as usize;
                                if c.is_super || masks[b] == 0 {
                                    break;
                                }
                                bk.heaps[h].pop();
                                if masks[b] & (1 << h) == 0 {
                                    masks[b] |= 1 << h;
                                    account(b, 1 << h, &mut bk);
                                }
                            }
                        }
                    }
                    break;
                }
                union_tokens += tokens[b];
                let heads = if own { 1u32 << h } else { all_heads };
                masks[b] = heads;
                taken.push(b);
                if bk.certifiable != 0 && lower.is_some() {
                    let r = (cfg.budget_tokens - union_tokens) / min_tokens + 2;
                    for hh in 0..n_kv {
                        let top = bk.heaps[hh].peek().map(|c| c.key);
                        // (An unarmed head's selected side is not summed yet: it is
                        // tested once armed.)
                        let live = bk.certifiable & bk.armed;
                        if live & (1 << hh) != 0 && !still_certifiable(hh, top, r, &bk) {
                            bk.certifiable &= !(1 << hh);
                        }
                    }
                }
                account(b, heads, &mut bk);
            }
            if own && cfg.share.is_finite() {
                // Sharing: a head also attends a block read for other heads when its own
                // estimated mass there is at least `cfg.share` times the block's share of the
                // positions (1 = as dense as uniform attention). The blocks read do not change.
                let mut x = vec![0.0f32; per_head];
                let density = cfg.share / total as f32;
                for b in 0..nb {
                    let m = masks[b];
                    if m == 0 || m == all_heads {
                        continue;
                    }
                    for h in 0..n_kv {
                        let bit = 1u32 << h;
                        if m & bit != 0 {
                            continue;
                        }
                        if in_super(b).is_none_or(|s| bk.expanded[s] & bit != 0) {
                            for (s, v) in x.iter_mut().enumerate() {
                                *v = bk.blocks[(h * per_head + s) * nb + b];
                            }
                        } else {
                            upper(h, b, b + 1, &mut x);
                        }
                        if key_of(h, &x, tokens[b]) >= density * tokens[b] as f32 {
                            masks[b] |= bit;
                            account(b, bit, &mut bk);
                        }
                    }
                }
            }
        }
    }
    let mass_sum: f32 = bk.got.iter().map(|g| g.min(1.0)).sum();
    let sel: Vec<(usize, u32)> = (0..nb)
        .filter(|&b| masks[b] != 0)
        .map(|b| (b, masks[b]))
        .collect();
    if sel.len() * 4 > nb * 3 {
        return None;
    }
    Some(Selection {
        blocks: sel,
        mass: mass_sum / n_kv as f32,
        taken,
        expansions,
    })
}

/// Upper-bound scores of blocks read from a full score array (flat selections and tests).
pub(crate) fn upper_from(
    scores: &[f32],
    n_kv: usize,
    per_head: usize,
) -> impl Fn(usize, usize, usize, &mut [f32]) + Sync + '_ {
    let cols = n_kv * per_head;
    move |h: usize, lo: usize, hi: usize, out: &mut [f32]| {
        for (i, b) in (lo..hi).enumerate() {
            out[i * per_head..(i + 1) * per_head]
                .copy_from_slice(&scores[b * cols + h * per_head..b * cols + (h + 1) * per_head]);
        }
    }
}

/// The key bounds of sealed blocks as *center and radius* rows of `n = 2·d` elements, kept as
/// column-major bf16 tiles of [`COL_TILE`] rows (row `r`, element `j` at
/// `q[(r / T)·n·T + j·T + r % T]`), so that scoring 16 blocks against a query group is one
/// [`crate::kernels::col_dots_bf16`] call (no horizontal sums; [`Self::scan_width`]).
///
/// A block whose keys lie in `[min, max]` per channel is stored as a center `c` and a radius
/// `r ≥ 0` with `[c − r, c + r] ⊇ [min, max]`; its upper bound of `q·k` is then one dot product,
/// `q·c + |q|·r` (against the query row `[q | |q|]`), and its lower bound `q·c − |q|·r`.
///
/// Layouts: bound rows (`new`) are `[c | r]`; mix rows (`with_mean`) are `[s | r]` with
/// `s ≈ α·c + (1 − α)·mean`, so the mix score `α·bound + (1 − α)·q·mean` is the single dot
/// product `q·s + α|q|·r` against `[q | α|q|]` (two thirds of the bytes of scoring the bound
/// and the mean separately); their centers `c` (for the lower bounds and unions) are kept
/// apart, row-major, so the scan streams only the tiles.
///
/// Invariants: `c` is rounded to nearest, then `r` is computed in f64 from the rounded center
/// and rounded *up*, so every stored box contains its block's keys; a row with a non-finite or
/// empty box is stored as `c = 0, r = +∞` (its bound is +∞); unused columns of the last tile
/// hold zeros and are never returned. For a mix row, [`Self::push`] returns the row's slack
/// width `‖c − s‖₂ + (1 − α)·‖r‖₂` (rounded up): `bound − score ≤ ‖q‖ · width`.
#[derive(Debug, Clone, Default)]
pub(crate) struct BoundTiles {
    d: usize,
    /// Mix rows: the bound's weight α.
    alpha: f32,
    mix: bool,
    rows: usize,
    /// The tiles, `2·d` elements per row.
    q: Vec<u16>,
    /// Mix rows: the centers, `d` per row, row-major.
    centers: Vec<u16>,
}

/// `x` as bf16 (its high 16 bits), rounded towards +∞ (`up`) or −∞; NaN stays NaN.
fn bf16_directed(x: f32, up: bool) -> u16 {
    let bits = x.to_bits();
    let hi = (bits >> 16) as u16;
    if x.is_nan() || bits & 0xffff == 0 {
        return hi;
    }
    // Truncation rounds towards zero: away from zero is one bf16 step further in magnitude.
    let away = if x > 0.0 { up } else { !up };
    if away {
        hi + 1
    } else {
        hi
    }
}

/// The smallest bf16 `≥ x` for `x ≥ 0` (f64, so a radius computed exactly stays a bound).
fn bf16_up_nonneg(x: f64) -> u16 {
    let mut b = bf16_directed(x as f32, true);
    // `x as f32` rounds to nearest: at most one more step.
    while (bf16_to_f32(b) as f64) < x {
        b += 1;
    }
    b
}

fn bf16_nearest(x: f64) -> u16 {
    half::bf16::from_f32(x as f32).to_bits()
}

fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// `x` as f32 rounded towards +∞ (`up`) or −∞.
fn f32_directed(x: f64, up: bool) -> f32 {
    let f = x as f32;
    if up && (f as f64) < x {
        f.next_up()
    } else if !up && (f as f64) > x {
        f.next_down()
    } else {
        f
    }
}

const BF16_INF: u16 = 0x7f80;

impl BoundTiles {
    /// Bound rows `[c | r]` of `2·d`.
    pub fn new(d: usize) -> Self {
        BoundTiles {
            d,
            alpha: 1.0,
            mix: false,
            rows: 0,
            q: Vec::new(),
            centers: Vec::new(),
        }
    }

    /// Mix rows `[s | r]` of `2·d` (and the centers), the bound weighted by `alpha` (in
    /// `(0, 1]`).
    pub fn with_mean(d: usize, alpha: f32) -> Self {
        BoundTiles {
            d,
            alpha,
            mix: true,
            rows: 0,
            q: Vec::new(),
            centers: Vec::new(),
        }
    }

    /// Elements per query row of [`Self::dots`]: `2·d`.
    pub fn scan_width(&self) -> usize {
        2 * self.d
    }

    /// Whether the rows score the mix (`[s | r]`).
    pub fn is_mix(&self) -> bool {
        self.mix
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Bytes held (whole tiles and the centers).
    pub fn bytes(&self) -> usize {
        (self.q.len() + self.centers.len()) * std::mem::size_of::<u16>()
    }

    /// Append the box `[min, max]` (`d` channels each) and, for mix rows, the block's mean key.
    /// Returns the row's slack width for mix rows (see the type docs), 0 for bound rows.
    pub fn push(&mut self, max: &[f32], min: &[f32], mean: Option<&[f32]>) -> f32 {
        let (d, r) = (self.d, self.rows);
        let n = 2 * d;
        if r.is_multiple_of(COL_TILE) {
            self.q.resize(self.q.len() + n * COL_TILE, 0);
        }
        let base = (r / COL_TILE) * n * COL_TILE + r % COL_TILE;
        let mix = self.is_mix();
        let a = self.alpha as f64;
        let (mut dist2, mut rad2) = (0.0f64, 0.0f64);
        for j in 0..d {
            let (hi, lo) = (max[j] as f64, min[j] as f64);
            let (c, rad) = if hi.is_finite() && lo.is_finite() && lo <= hi {
                let c = bf16_nearest(0.5 * (hi + lo));
                let cf = bf16_to_f32(c) as f64;
                (c, bf16_up_nonneg((hi - cf).max(cf - lo)))
            } else {
                (0, BF16_INF)
            };
            let (cf, rf) = (bf16_to_f32(c) as f64, bf16_to_f32(rad) as f64);
            rad2 += rf * rf;
            self.q[base + (d + j) * COL_TILE] = rad;
            if mix {
                let m = mean.map_or(cf, |m| m[j] as f64);
                let s = bf16_nearest(a * cf + (1.0 - a) * m);
                let sf = bf16_to_f32(s) as f64;
                dist2 += (cf - sf) * (cf - sf);
                self.q[base + j * COL_TILE] = s;
                self.centers.push(c);
            } else {
                self.q[base + j * COL_TILE] = c;
            }
        }
        self.rows += 1;
        if mix {
            f32_directed(
                (dist2.sqrt() + (1.0 - a) * rad2.sqrt()) * (1.0 + 1e-9),
                true,
            )
        } else {
            0.0
        }
    }

    /// Keep the first `rows` rows.
    pub fn truncate(&mut self, rows: usize) {
        if rows < self.rows {
            let n = 2 * self.d;
            self.rows = rows;
            self.q.truncate(rows.div_ceil(COL_TILE) * n * COL_TILE);
            if self.mix {
                self.centers.truncate(rows * self.d);
            }
            // Zero the cut columns of the last tile (a later push expects zeros there).
            if !rows.is_multiple_of(COL_TILE) {
                let t = rows / COL_TILE;
                for j in 0..n {
                    for i in rows % COL_TILE..COL_TILE {
                        self.q[t * n * COL_TILE + j * COL_TILE + i] = 0;
                    }
                }
            }
        }
    }

    /// Row `r`'s scanned elements (`[c | r]` or `[s | r]`) into `out` (`out.len() >= 2·d`).
    #[cfg(test)]
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let n = 2 * self.d;
        let base = (r / COL_TILE) * n * COL_TILE + r % COL_TILE;
        for (j, o) in out.iter_mut().enumerate().take(n) {
            *o = bf16_to_f32(self.q[base + j * COL_TILE]);
        }
    }

    /// Row `r`'s center and radius (`d` each).
    pub fn center_radius(&self, r: usize, c: &mut [f32], rad: &mut [f32]) {
        let d = self.d;
        let base = (r / COL_TILE) * 2 * d * COL_TILE + r % COL_TILE;
        if self.mix {
            // Row-major centers: a contiguous (vectorized) conversion.
            for (o, &x) in c[..d].iter_mut().zip(&self.centers[r * d..(r + 1) * d]) {
                *o = bf16_to_f32(x);
            }
        } else {
            for (j, o) in c[..d].iter_mut().enumerate() {
                *o = bf16_to_f32(self.q[base + j * COL_TILE]);
            }
        }
        // Row r's elements sit COL_TILE apart from `base` on.
        let col = &self.q[base..];
        for (o, &x) in rad[..d]
            .iter_mut()
            .zip(col[d * COL_TILE..].iter().step_by(COL_TILE))
        {
            *o = bf16_to_f32(x);
        }
    }

    /// `out[q·ldo + (r − lo)] = qs[q] · row r[..scan_width]` for rows `lo..hi` and the
    /// `qs.len() / scan_width` queries (transposed once, then one kernel call per tile).
    pub fn dots(&self, qs: &[f32], lo: usize, hi: usize, out: &mut [f32], ldo: usize) {
        let ns = self.scan_width();
        let nq = qs.len() / ns.max(1);
        if nq == 0 {
            return;
        }
        let mut qt = vec![0.0f32; ns * nq];
        for (q, row) in qs.chunks_exact(ns).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                qt[j * nq + q] = x;
            }
        }
        let mut tmp = Vec::new();
        let mut r = lo;
        while r < hi {
            let t = r / COL_TILE;
            let end = ((t + 1) * COL_TILE).min(hi);
            let tile = &self.q[t * ns * COL_TILE..(t + 1) * ns * COL_TILE];
            if r.is_multiple_of(COL_TILE) {
                // A tile from its first row: straight into `out`.
                let o = &mut out[r - lo..];
                crate::kernels::col_dots_bf16(&qt, nq, tile, end - r, o, ldo);
            } else {
                let c = end - t * COL_TILE;
                tmp.resize(nq * COL_TILE, 0.0);
                crate::kernels::col_dots_bf16(&qt, nq, tile, c, &mut tmp, COL_TILE);
                for q in 0..nq {
                    out[q * ldo + r - lo..q * ldo + end - lo]
                        .copy_from_slice(&tmp[q * COL_TILE + r % COL_TILE..q * COL_TILE + c]);
                }
            }
            r = end;
        }
    }

    /// Row `r`'s stored box `(max, min)` (`d` each) as f32, rounded outwards: it contains the
    /// keys of the block.
    pub fn box_of(&self, r: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let (mut c, mut rad) = (vec![0.0f32; d], vec![0.0f32; d]);
        self.center_radius(r, &mut c, &mut rad);
        // bf16 sums and differences are exact in f64.
        let hi = (0..d).map(|j| f32_directed(c[j] as f64 + rad[j] as f64, true));
        let lo = (0..d).map(|j| f32_directed(c[j] as f64 - rad[j] as f64, false));
        (hi.collect(), lo.collect())
    }

    /// The box of the union of tile `t`'s rows, `(max, min)` (`d` each), rounded outwards:
    /// it contains every stored box of the tile.
    pub fn union_box(&self, t: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let count = (self.rows - t * COL_TILE).min(COL_TILE);
        let (mut hi, mut lo) = (vec![f32::NEG_INFINITY; d], vec![f32::INFINITY; d]);
        // Directed rounding is monotone: the union of the rounded boxes is the rounded union.
        for i in 0..count {
            let (bh, bl) = self.box_of(t * COL_TILE + i);
            for j in 0..d {
                hi[j] = hi[j].max(bh[j]);
                lo[j] = lo[j].min(bl[j]);
            }
        }
        (hi, lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_certificate_selects_exactly_as_the_eager_one() {
        // Random scores with tight lower bounds (so that certificates do reach the mass and
        // stop selections early), every budget scope, one or two columns per head, a slack:
        // computing a head's lower bounds only once its estimate nears the mass must take the
        // same blocks in the same order as computing them block by block.
        let mut seed = 12345u64;
        let mut f = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) as f32
        };
        let mut stopped_early = 0usize;
        for trial in 0..300usize {
            let n_kv = 1 + trial % 4;
            let per_head = 1 + (trial / 4) % 2;
            let cols = n_kv * per_head;
            let nb = 20 + (trial * 7) % 150;
            let tokens: Vec<usize> = (0..nb)
                .map(|b| if b + 1 == nb { 1 + trial % 16 } else { 16 })
                .collect();
            // Row-major scores `[b · cols + c]`: a few peaked blocks over a spread background.
            let spread = 1.0 + 6.0 * f();
            let ub: Vec<f32> = (0..nb * cols)
                .map(|_| {
                    let x = f();
                    if x > 0.97 {
                        8.0 + 4.0 * f()
                    } else {
                        spread * f()
                    }
                })
                .collect();
            let gap = 0.3 * f();
            let lo: Vec<f32> = ub.iter().map(|x| x - gap * f()).collect();
            let slack: Vec<f32> = if trial % 3 == 0 {
                (0..cols).map(|_| 0.2 * f()).collect()
            } else {
                Vec::new()
            };
            let scope = [BudgetScope::Union, BudgetScope::UnionOwn, BudgetScope::Head][trial % 3];
            let cfg = SparseConfig {
                mass: [0.5, 0.8, 0.9, 0.95][trial % 4],
                budget_tokens: 16 * (4 + trial % (nb / 2)),
                recent_tokens: 16,
                budget_scope: scope,
                share: if trial % 2 == 0 { 0.5 } else { f32::INFINITY },
                ..SparseConfig::default()
            };
            let transposed: Vec<f32> = (0..cols)
                .flat_map(|c| (0..nb).map(move |b| (b, c)))
                .map(|(b, c)| ub[b * cols + c])
                .collect();
            let lower =
                |b: usize, out: &mut [f32]| out.copy_from_slice(&lo[b * cols..(b + 1) * cols]);
            let upper = |_: usize, _: usize, _: usize, _: &mut [f32]| unreachable!("flat");
            let run = |eager: bool| {
                let sc = Scores {
                    n_kv,
                    per_head,
                    tokens: &tokens,
                    blocks: transposed.clone(),
                    span: 0,
                    supers: Vec::new(),
                    slack: slack.clone(),
                    eager_certificate: eager,
                };
                select(sc, &upper, Some(&lower), &cfg)
            };
            let (lazy, eager) = (run(false), run(true));
            assert_eq!(lazy.is_some(), eager.is_some(), "trial {trial}");
            if let (Some(a), Some(b)) = (lazy, eager) {
                assert_eq!(a.blocks, b.blocks, "trial {trial}");
                assert_eq!(a.taken, b.taken, "trial {trial}");
                // (The masses reported may differ: an unarmed head counts 0, and a head the
                // eager path stopped certifying keeps its certificate from then on.)
                assert!((0.0..=1.0).contains(&a.mass), "trial {trial}: {}", a.mass);
                let read: usize = a.blocks.iter().map(|&(blk, _)| tokens[blk]).sum();
                if read + 16 < cfg.budget_tokens && scope != BudgetScope::Head {
                    stopped_early += 1;
                }
            }
        }
        assert!(
            stopped_early > 50,
            "the certificate stopped only {stopped_early} selections"
        );
    }

    fn rows(n: usize, count: usize, seed: u32) -> Vec<Vec<f32>> {
        (0..count)
            .map(|r| {
                (0..n)
                    .map(|j| ((r * 31 + j * 7 + seed as usize) % 23) as f32 - 11.0)
                    .collect()
            })
            .collect()
    }

    /// Boxes `(max, min)` of 5 channels (max ≥ min, some of zero width, some straddling 0).
    fn boxes(count: usize, seed: u32) -> Vec<(Vec<f32>, Vec<f32>)> {
        rows(5, count, seed)
            .into_iter()
            .enumerate()
            .map(|(i, lo)| {
                let lo: Vec<f32> = lo.iter().map(|x| x * 1.013 + 0.0137).collect();
                let w = if i % 7 == 3 { 0.0 } else { 3.5 };
                let hi: Vec<f32> = lo.iter().map(|x| x + w).collect();
                (hi, lo)
            })
            .collect()
    }

    #[test]
    fn bf16_rounding_is_directed_and_one_step() {
        let mut x = 0.1f32;
        for i in 0..2000 {
            let v = if i % 2 == 0 { x } else { -x };
            let (up, down) = (
                bf16_to_f32(bf16_directed(v, true)),
                bf16_to_f32(bf16_directed(v, false)),
            );
            assert!(up >= v && down <= v, "{v}: {down} {up}");
            assert!(up - down <= v.abs() / 64.0, "{v}: {down} {up}");
            x *= 1.0137;
        }
        for v in [
            0.0f32,
            1.0,
            -2.5,
            2.0f32.powi(100),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(bf16_to_f32(bf16_directed(v, true)), v);
            assert_eq!(bf16_to_f32(bf16_directed(v, false)), v);
        }
        // Rounding up past the largest finite bf16 gives +inf, still a bound.
        assert_eq!(bf16_to_f32(bf16_directed(3.3999e38, true)), f32::INFINITY);
        assert!(bf16_to_f32(bf16_directed(f32::NAN, true)).is_nan());
    }

    #[test]
    fn mix_rows_score_within_their_slack_of_the_bound() {
        // Rows [s | r | c] of 3 channels, the mean anywhere in [min, max] (also at an end):
        // the stored box contains [min, max], s is the rounded α·c + (1 − α)·mean, and for any
        // query the bound q·c + |q|·r exceeds the scanned score q·s + α|q|·r by at most
        // ‖q‖ · (the slack width push returned).
        let (d, alpha) = (3, 0.5f32);
        let mut t = BoundTiles::with_mean(d, alpha);
        assert!(t.is_mix() && t.scan_width() == 6);
        let mut data = Vec::new();
        for i in 0..40 {
            let (mut hi, mut lo, mut mean) = (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d]);
            for j in 0..d {
                lo[j] = -1.3f32 + 0.017 * i as f32;
                hi[j] = 0.7f32 + 0.031 * (i * j) as f32;
                let f = [0.0f32, 1.0, 0.5, 0.123][(i + j) % 4];
                mean[j] = lo[j] + (hi[j] - lo[j]) * f;
            }
            let w = t.push(&hi, &lo, Some(&mean));
            assert!(w.is_finite() && w > 0.0);
            data.push((hi, lo, mean, w));
        }
        let (mut c, mut r, mut row) = (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; 2 * d]);
        for (i, (hi, lo, mean, w)) in data.iter().enumerate() {
            t.center_radius(i, &mut c, &mut r);
            t.row(i, &mut row);
            for j in 0..d {
                assert!(r[j] >= 0.0, "row {i}");
                assert!(
                    c[j] + r[j] >= hi[j] && c[j] - r[j] <= lo[j],
                    "row {i} ch {j}"
                );
                // The radius is tight to about one bf16 step of the box's size.
                let size = (hi[j] - lo[j]).abs().max(hi[j].abs()).max(lo[j].abs());
                assert!(2.0 * r[j] <= hi[j] - lo[j] + size / 64.0, "row {i} ch {j}");
                let want = alpha * c[j] + (1.0 - alpha) * mean[j];
                assert!(
                    (row[j] - want).abs() <= want.abs() / 256.0 + 1e-30,
                    "row {i}"
                );
            }
            for k in 0..50 {
                let q: Vec<f32> = (0..d)
                    .map(|j| ((k * 13 + j * 5 + i) % 17) as f32 * 0.37 - 3.0)
                    .collect();
                let bound: f32 = (0..d).map(|j| q[j] * c[j] + q[j].abs() * r[j]).sum();
                let qrow: Vec<f32> = q
                    .iter()
                    .copied()
                    .chain(q.iter().map(|x| alpha * x.abs()))
                    .collect();
                let mut score = [0.0f32];
                t.dots(&qrow, i, i + 1, &mut score, 1);
                let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!(
                    bound - score[0] <= qn * w + 1e-4 * (1.0 + bound.abs()),
                    "row {i}: bound {bound} score {} slack {}",
                    score[0],
                    qn * w
                );
            }
        }
    }

    #[test]
    fn bound_tiles_contain_their_boxes_and_score_any_range() {
        let d = 5;
        let mut t = BoundTiles::new(d);
        let data = boxes(37, 1);
        for (hi, lo) in &data {
            assert_eq!(t.push(hi, lo, None), 0.0);
        }
        t.truncate(20);
        assert_eq!(t.len(), 20);
        let more = boxes(21, 2);
        for (hi, lo) in &more {
            t.push(hi, lo, None);
        }
        let all: Vec<&(Vec<f32>, Vec<f32>)> = data[..20].iter().chain(&more).collect();
        assert_eq!(t.len(), all.len());
        // Stored boxes contain the pushed ones, wider by at most about one bf16 step.
        let (mut c, mut r) = (vec![0.0f32; d], vec![0.0f32; d]);
        let mut deq = Vec::new();
        for (i, (hi, lo)) in all.iter().enumerate() {
            t.center_radius(i, &mut c, &mut r);
            for j in 0..d {
                assert!(
                    c[j] + r[j] >= hi[j] && c[j] - r[j] <= lo[j],
                    "row {i} ch {j}"
                );
                let step = hi[j].abs().max(lo[j].abs()) / 64.0 + 1e-30;
                assert!(c[j] + r[j] - hi[j] <= step && lo[j] - (c[j] - r[j]) <= step);
            }
            deq.push((c.clone(), r.clone()));
        }
        // Scores against [q | |q|] equal q·c + |q|·r (to rounding) and bound q·k over the
        // pushed box, any range.
        let qs: Vec<f32> = (0..3)
            .flat_map(|k| {
                let q: Vec<f32> = (0..d).map(|j| ((j + 2 * k) % 5) as f32 - 2.0).collect();
                let a: Vec<f32> = q.iter().map(|x| x.abs()).collect();
                q.into_iter().chain(a)
            })
            .collect();
        for (lo, hi) in [
            (0, 41),
            (0, 16),
            (3, 5),
            (5, 30),
            (16, 32),
            (17, 18),
            (32, 41),
        ] {
            let ldo = hi - lo + 1;
            let mut out = vec![f32::NAN; 3 * ldo];
            t.dots(&qs, lo, hi, &mut out, ldo);
            for k in 0..3 {
                let q = &qs[k * 2 * d..k * 2 * d + d];
                for row in lo..hi {
                    let (c, r) = &deq[row];
                    let want: f32 = (0..d).map(|j| q[j] * c[j] + q[j].abs() * r[j]).sum();
                    let got = out[k * ldo + row - lo];
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{got} {want}"
                    );
                    let (bh, bl) = all[row];
                    let exact: f32 = (0..d).map(|j| (q[j] * bh[j]).max(q[j] * bl[j])).sum();
                    assert!(got >= exact - 1e-4 * (1.0 + exact.abs()), "{got} < {exact}");
                }
                assert!(out[k * ldo + hi - lo].is_nan());
            }
        }
        // The union of tile 1 (rows 16..32) contains every stored box of the tile and is the
        // tightest such box (to f32 rounding).
        let (uh, ul) = t.union_box(1);
        for j in 0..d {
            let want_hi = deq[16..32]
                .iter()
                .map(|(c, r)| c[j] + r[j])
                .fold(f32::MIN, f32::max);
            let want_lo = deq[16..32]
                .iter()
                .map(|(c, r)| c[j] - r[j])
                .fold(f32::MAX, f32::min);
            assert!(uh[j] >= want_hi && uh[j] - want_hi <= want_hi.abs() * 1e-6 + 1e-30);
            assert!(ul[j] <= want_lo && want_lo - ul[j] <= want_lo.abs() * 1e-6 + 1e-30);
        }
        // A non-finite box is stored as an infinite radius: its bound is +∞.
        let mut t = BoundTiles::new(1);
        t.push(&[f32::INFINITY], &[0.0], None);
        let mut out = [0.0f32];
        t.dots(&[1.0, 1.0], 0, 1, &mut out, 1);
        assert_eq!(out[0], f32::INFINITY);
    }
}

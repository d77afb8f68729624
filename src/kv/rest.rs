//! The rest of the context under sparse attention (`--sparse-rest mean`): every selection unit a
//! KV head does not attend still counts, as one pseudo-key standing for the unit's `n`
//! positions — the mean of its keys with weight `n`, carrying the mean of its values.
//!
//! For a query head with scaled query `q`, a unit of `n` keys `k_i` and values `v_i` adds to
//! the softmax `Σ_i exp(q·k_i)` and `Σ_i exp(q·k_i)·v_i`; the summary adds `n·exp(q·k̄)` and
//! `n·exp(q·k̄)·v̄`. By convexity `n·exp(q·k̄) ≤ Σ_i exp(q·k_i)`: the estimate never invents
//! mass, it only returns part of what the selection left out (dropping a unit is the estimate
//! 0). On SmolLM2 at a 25% budget it halves the KL to dense at 2K–4K and raises it at 8K on
//! some texts (docs/BENCHMARKS.md, session 11), for no reads: the rows live in RAM next to the
//! key bounds.
//!
//! Invariants:
//! - [`MeanRows`] holds one row per sealed selection unit of one KV head, in unit order: the
//!   means of the unit's keys and values *as stored* (decoded from the block, as attention
//!   reads them), each channel rounded to the nearest bf16; rows are only appended (at sealing)
//!   or cut from the end (truncation);
//! - [`fold_units`] visits units in the order given and keeps one running state per query head
//!   (max, sum, weighted value sum, as [`AttnState`]): its result depends only on the rows, the
//!   queries and that order, so sparse decoding stays deterministic;
//! - a unit the head attends is never folded (the caller passes only the others), so no
//!   position is counted twice.

use crate::kernels::attention::AttnState;
use crate::kernels::{axpys_multi, dots_multi, exp_shift_sum};
use half::bf16;
use half::slice::HalfFloatSliceExt;

/// Per selection unit of one KV head: the mean key and the mean value (bf16, `d` each,
/// row-major).
#[derive(Debug, Clone)]
pub struct MeanRows {
    d: usize,
    k: Vec<bf16>,
    v: Vec<bf16>,
}

impl MeanRows {
    /// No rows, for heads of `d` channels.
    pub fn new(d: usize) -> Self {
        MeanRows {
            d,
            k: Vec::new(),
            v: Vec::new(),
        }
    }

    /// No rows, room reserved for `rows` (the allocation is virtual until rows are written).
    pub fn with_capacity(d: usize, rows: usize) -> Self {
        MeanRows {
            d,
            k: Vec::with_capacity(rows * d),
            v: Vec::with_capacity(rows * d),
        }
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.k.len() / self.d.max(1)
    }

    /// Whether no row is stored.
    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    /// Bytes of the rows stored.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<bf16>()
    }

    /// Append a unit's mean key and mean value (`d` each).
    pub fn push(&mut self, k: &[f32], v: &[f32]) {
        debug_assert!(k.len() == self.d && v.len() == self.d);
        self.k.extend(k.iter().map(|&x| bf16::from_f32(x)));
        self.v.extend(v.iter().map(|&x| bf16::from_f32(x)));
    }

    /// Keep the first `rows` rows.
    pub fn truncate(&mut self, rows: usize) {
        self.k.truncate(rows * self.d);
        self.v.truncate(rows * self.d);
    }

    /// The mean of rows `a..b` (`k` and `v`: `d` each; zero for no rows): a super-block's
    /// summary from its units' (all of the same size).
    pub fn mean_of(&self, a: usize, b: usize, k: &mut [f32], v: &mut [f32]) {
        let d = self.d;
        k[..d].fill(0.0);
        v[..d].fill(0.0);
        for r in a..b {
            for (o, &x) in k[..d].iter_mut().zip(&self.k[r * d..(r + 1) * d]) {
                *o += x.to_f32();
            }
            for (o, &x) in v[..d].iter_mut().zip(&self.v[r * d..(r + 1) * d]) {
                *o += x.to_f32();
            }
        }
        if b > a {
            let inv = 1.0 / (b - a) as f32;
            k[..d]
                .iter_mut()
                .chain(v[..d].iter_mut())
                .for_each(|x| *x *= inv);
        }
    }

    /// Row `r` as f32: the mean key into `k`, the mean value into `v` (`d` each).
    pub fn row(&self, r: usize, k: &mut [f32], v: &mut [f32]) {
        let s = r * self.d..(r + 1) * self.d;
        self.k[s.clone()].convert_to_f32_slice(&mut k[..self.d]);
        self.v[s].convert_to_f32_slice(&mut v[..self.d]);
    }
}

/// Writes unit `i`'s mean key and mean value (`d` each) and returns `ln n` of its positions
/// (−∞: skip the unit).
pub type FillFn<'a> = &'a dyn Fn(usize, &mut [f32], &mut [f32]) -> f32;

/// Units folded per kernel call.
const CHUNK: usize = 64;

/// Fold `n_units` units into one state per query head: `out[h]` (reset first) becomes the
/// attention state of `qs[h·d..][..d]` over pseudo-keys with logit `scale·q·k̄ + ln n` and value
/// `v̄`, where `fill(i, k̄, v̄)` writes unit `i`'s mean key and value and returns `ln n` of its
/// positions `n` (−∞: skip the unit). `out.len()` query heads, `qs.len() = out.len()·d`.
pub fn fold_units(
    n_units: usize,
    fill: FillFn<'_>,
    qs: &[f32],
    d: usize,
    scale: f32,
    out: &mut [AttnState],
) {
    let nq = out.len();
    debug_assert_eq!(qs.len(), nq * d);
    for s in out.iter_mut() {
        s.reset();
    }
    if n_units == 0 || nq == 0 {
        return;
    }
    let mut keys = vec![0.0f32; CHUNK * d];
    let mut vals = vec![0.0f32; CHUNK * d];
    let mut lnn = [0.0f32; CHUNK];
    let mut w = vec![0.0f32; nq * CHUNK];
    // The heads' running `Σ weight · v̄` (their `m` and `l` live in `out`), rows of `d`.
    let mut accs = vec![0.0f32; nq * d];
    let mut i0 = 0;
    while i0 < n_units {
        // Gather the chunk's non-empty units.
        let mut c = 0;
        let mut i = i0;
        while i < n_units && c < CHUNK {
            let (k, v) = (&mut keys[c * d..(c + 1) * d], &mut vals[c * d..(c + 1) * d]);
            let ln = fill(i, k, v);
            if ln > f32::NEG_INFINITY {
                lnn[c] = ln;
                c += 1;
            }
            i += 1;
        }
        i0 = i;
        if c == 0 {
            continue;
        }
        dots_multi(qs, d, &keys, c, &mut w, CHUNK);
        for (h, st) in out.iter_mut().enumerate() {
            let row = &mut w[h * CHUNK..h * CHUNK + c];
            let mut m = f32::NEG_INFINITY;
            for (x, &ln) in row.iter_mut().zip(&lnn[..c]) {
                *x = *x * scale + ln;
                if x.is_nan() {
                    *x = f32::NEG_INFINITY;
                }
                m = m.max(*x);
            }
            if m == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            // Rescale the running state to the new maximum, then weights against it.
            let new_m = st.m.max(m);
            if st.m != f32::NEG_INFINITY && new_m > st.m {
                let a = (st.m - new_m).exp();
                st.l *= a;
                accs[h * d..(h + 1) * d].iter_mut().for_each(|x| *x *= a);
            }
            st.m = new_m;
            st.l += exp_shift_sum(row, new_m);
        }
        axpys_multi(&w, CHUNK, &vals, c, &mut accs, d);
    }
    for (st, a) in out.iter_mut().zip(accs.chunks_exact(d)) {
        st.acc.copy_from_slice(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The folded state equals a direct f64 softmax over the pseudo-keys (every unit count,
    /// across chunk edges, with skipped units and very different logit scales).
    #[test]
    fn folding_matches_a_direct_softmax_over_the_pseudo_keys() {
        let d = 24;
        let mut seed = 7u64;
        for &(n_units, nq, spread) in &[(1, 1, 1.0f32), (63, 3, 4.0), (64, 2, 0.5), (200, 4, 30.0)]
        {
            let keys: Vec<f32> = (0..n_units * d).map(|_| lcg(&mut seed) * spread).collect();
            let vals: Vec<f32> = (0..n_units * d).map(|_| lcg(&mut seed)).collect();
            let ns: Vec<usize> = (0..n_units)
                .map(|i| if i % 7 == 3 { 0 } else { 1 + i % 5 })
                .collect();
            let qs: Vec<f32> = (0..nq * d).map(|_| lcg(&mut seed)).collect();
            let scale = 0.3f32;
            let fill = |i: usize, k: &mut [f32], v: &mut [f32]| {
                k.copy_from_slice(&keys[i * d..(i + 1) * d]);
                v.copy_from_slice(&vals[i * d..(i + 1) * d]);
                if ns[i] == 0 {
                    f32::NEG_INFINITY
                } else {
                    (ns[i] as f32).ln()
                }
            };
            let mut out = vec![AttnState::new(d); nq];
            fold_units(n_units, &fill, &qs, d, scale, &mut out);
            for h in 0..nq {
                let q = &qs[h * d..(h + 1) * d];
                let logits: Vec<f64> = (0..n_units)
                    .map(|i| {
                        let dot: f64 = (0..d).map(|j| q[j] as f64 * keys[i * d + j] as f64).sum();
                        dot * scale as f64 + (ns[i] as f64).ln()
                    })
                    .collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|x| (x - m).exp()).sum();
                let mut o = vec![0.0f32; d];
                out[h].finish(&mut o);
                for j in 0..d {
                    let want: f64 = (0..n_units)
                        .map(|i| (logits[i] - m).exp() * vals[i * d + j] as f64)
                        .sum::<f64>()
                        / z;
                    assert!(
                        (o[j] as f64 - want).abs() < 1e-5,
                        "units {n_units} head {h} channel {j}: {} vs {want}",
                        o[j]
                    );
                }
                // The state's own normalizer, relative to its max, matches too.
                let zs = out[h].l as f64 * (out[h].m as f64 - m).exp();
                assert!((zs / z - 1.0).abs() < 1e-5, "normalizer {zs} vs {z}");
            }
        }
    }

    #[test]
    fn rows_round_to_bf16_and_truncate() {
        let d = 4;
        let mut r = MeanRows::new(d);
        assert!(r.is_empty());
        r.push(
            &[1.0, -2.5, 3.0e-3, 1.0 + 1.0 / 256.0],
            &[0.5, 0.25, -1.0, 7.0],
        );
        r.push(&[9.0; 4], &[8.0; 4]);
        assert_eq!(r.len(), 2);
        let (mut k, mut v) = (vec![0.0; d], vec![0.0; d]);
        r.row(0, &mut k, &mut v);
        assert_eq!(k[0], 1.0);
        assert_eq!(k[1], -2.5);
        assert!((k[2] - 3.0e-3).abs() <= 3.0e-3 / 128.0);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1).
        assert_eq!(k[3], 1.0);
        assert_eq!(v, vec![0.5, 0.25, -1.0, 7.0]);
        r.truncate(1);
        assert_eq!(r.len(), 1);
        r.push(&[2.0; 4], &[3.0; 4]);
        r.row(1, &mut k, &mut v);
        assert_eq!((k[0], v[0]), (2.0, 3.0));
        r.mean_of(0, 2, &mut k, &mut v);
        assert_eq!((k[0], k[1], v[0], v[3]), (1.5, -0.25, 1.75, 5.0));
    }
}

//! Attention over a run of cached positions, with an online (streaming) softmax.
//!
//! The cache hands the kernel its keys and values one contiguous *chunk* of positions at a time
//! (a RAM block, a block just read from disk, ...). [`AttnState`] carries the running maximum,
//! the running sum of exponentials and the weighted value accumulator, so chunks may arrive in
//! any grouping and the result is the same softmax-weighted sum (up to f32 rounding of the merge).
//! Attention sinks (gpt-oss) enter as one extra logit that has no value row.
//!
//! Invariant: `AttnState::finish` divides by a sum that includes at least one term (`exp(0)` of
//! the maximum) whenever any position or sink was added; with nothing added it writes zeros.

/// Running state of one query head's attention.
#[derive(Debug, Clone)]
pub struct AttnState {
    /// Running maximum of the scaled scores.
    pub m: f32,
    /// Running sum of `exp(score - m)`.
    pub l: f32,
    /// Running `Σ exp(score - m) · v`, length `head_dim`.
    pub acc: Vec<f32>,
}

impl AttnState {
    /// An empty state for heads of `head_dim`.
    pub fn new(head_dim: usize) -> Self {
        AttnState {
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: vec![0.0; head_dim],
        }
    }

    /// Reset to empty without reallocating.
    pub fn reset(&mut self) {
        self.m = f32::NEG_INFINITY;
        self.l = 0.0;
        self.acc.iter_mut().for_each(|a| *a = 0.0);
    }

    /// Add a chunk of positions from f32 rows.
    ///
    /// `keys`/`values` hold `n` rows; row `i` of the head starts at `i * stride`, and the head's
    /// slice is `head_dim` long (the caller offsets the slices to the KV head). `scores` is scratch
    /// of at least `n` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn add_chunk_f32(
        &mut self,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        n: usize,
        stride: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let d = self.acc.len();
        assert!(q.len() >= d && scores.len() >= n);
        if n == 0 {
            return;
        }
        assert!(keys.len() >= (n - 1) * stride + d && values.len() >= (n - 1) * stride + d);
        let scores = &mut scores[..n];
        super::dots_strided(&q[..d], keys, stride, scores);
        let mut cmax = f32::NEG_INFINITY;
        for s in scores.iter_mut() {
            *s *= scale;
            cmax = cmax.max(*s);
        }
        let new_m = self.m.max(cmax);
        let corr = if self.m == f32::NEG_INFINITY {
            0.0
        } else {
            (self.m - new_m).exp()
        };
        if corr != 1.0 {
            self.l *= corr;
            self.acc.iter_mut().for_each(|a| *a *= corr);
        }
        for s in scores.iter_mut() {
            *s = (*s - new_m).exp();
            self.l += *s;
        }
        super::axpys_strided(scores, values, stride, &mut self.acc);
        self.m = new_m;
    }

    /// Add a sink logit (a score with no value row), as gpt-oss's learned attention sinks.
    pub fn add_sink(&mut self, sink: f32) {
        let new_m = self.m.max(sink);
        let corr = if self.m == f32::NEG_INFINITY {
            0.0
        } else {
            (self.m - new_m).exp()
        };
        self.l = self.l * corr + (sink - new_m).exp();
        self.acc.iter_mut().for_each(|a| *a *= corr);
        self.m = new_m;
    }

    /// Merge another state (split-K over chunks computed elsewhere) into this one.
    pub fn merge(&mut self, other: &AttnState) {
        if other.m == f32::NEG_INFINITY {
            return;
        }
        let new_m = self.m.max(other.m);
        let a = if self.m == f32::NEG_INFINITY {
            0.0
        } else {
            (self.m - new_m).exp()
        };
        let b = (other.m - new_m).exp();
        self.l = self.l * a + other.l * b;
        for (x, y) in self.acc.iter_mut().zip(&other.acc) {
            *x = *x * a + *y * b;
        }
        self.m = new_m;
    }

    /// Write the normalised output (`acc / l`) into `out`.
    pub fn finish(&self, out: &mut [f32]) {
        let inv = if self.l > 0.0 { 1.0 / self.l } else { 0.0 };
        for (o, a) in out.iter_mut().zip(&self.acc) {
            *o = a * inv;
        }
    }
}

/// Reference: softmax attention of one head over `n` rows, computed the plain two-pass way.
#[allow(clippy::too_many_arguments)]
pub fn attend_reference(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n: usize,
    stride: usize,
    scale: f32,
    sink: Option<f32>,
    out: &mut [f32],
) {
    let d = out.len();
    let s: Vec<f32> = (0..n)
        .map(|i| {
            (0..d)
                .map(|j| q[j] as f64 * keys[i * stride + j] as f64)
                .sum::<f64>() as f32
                * scale
        })
        .collect();
    let m = s
        .iter()
        .copied()
        .chain(sink)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut z: f64 = sink.map(|x| ((x - m) as f64).exp()).unwrap_or(0.0);
    let mut acc = vec![0.0f64; d];
    for i in 0..n {
        let p = ((s[i] - m) as f64).exp();
        z += p;
        for j in 0..d {
            acc[j] += p * values[i * stride + j] as f64;
        }
    }
    for j in 0..d {
        out[j] = if z > 0.0 { (acc[j] / z) as f32 } else { 0.0 };
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

    #[test]
    fn chunked_online_softmax_matches_two_pass_reference() {
        let mut seed = 7u64;
        for &(n, d, stride, chunk) in &[
            (1, 64, 64, 1),
            (5, 64, 192, 2),
            (130, 64, 128, 64),
            (77, 32, 40, 13),
        ] {
            let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed) * 3.0).collect();
            let k: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed) * 3.0).collect();
            let v: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed)).collect();
            for sink in [None, Some(2.5f32)] {
                let mut want = vec![0.0; d];
                attend_reference(&q, &k, &v, n, stride, 0.125, sink, &mut want);
                // Chunks into two states then merged, sink added to the first.
                let mut a = AttnState::new(d);
                let mut b = AttnState::new(d);
                let mut scores = vec![0.0; chunk];
                if let Some(s) = sink {
                    a.add_sink(s);
                }
                let mut i = 0;
                let mut flip = false;
                while i < n {
                    let c = chunk.min(n - i);
                    let st = if flip { &mut b } else { &mut a };
                    st.add_chunk_f32(
                        &q,
                        &k[i * stride..],
                        &v[i * stride..],
                        c,
                        stride,
                        0.125,
                        &mut scores,
                    );
                    flip = !flip;
                    i += c;
                }
                a.merge(&b);
                let mut got = vec![0.0; d];
                a.finish(&mut got);
                for j in 0..d {
                    // Outputs are convex combinations of values in [-1, 1]: absolute error bound.
                    assert!(
                        (got[j] - want[j]).abs() < 1e-5,
                        "n={n} j={j} {} vs {}",
                        got[j],
                        want[j]
                    );
                }
            }
        }
    }

    #[test]
    fn strided_score_and_value_kernels_match_scalar_at_every_level() {
        let mut seed = 11u64;
        for &(d, stride, n) in &[
            (64usize, 192usize, 37usize),
            (1, 1, 1),
            (17, 20, 5),
            (33, 33, 300),
            (64, 64, 0),
        ] {
            let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
            let kv: Vec<f32> = (0..n.max(1) * stride).map(|_| lcg(&mut seed)).collect();
            let p: Vec<f32> = (0..n).map(|_| lcg(&mut seed).abs()).collect();
            let mut want_s = vec![0.0; n];
            crate::kernels::scalar::dots_strided(&q, &kv, stride, &mut want_s);
            let mut want_a = vec![0.5f32; d];
            crate::kernels::scalar::axpys_strided(&p, &kv, stride, &mut want_a);
            // Every output is a sum of ≤ d (scores) or ≤ n (values) products of |x| ≤ 1 terms;
            // SIMD changes only the summation order / fuses rounding: bound 1e-6 · terms.
            let check = |got_s: &[f32], got_a: &[f32]| {
                for (g, w) in got_s.iter().zip(&want_s) {
                    assert!((g - w).abs() <= 1e-6 * d as f32, "scores {g} vs {w}");
                }
                for (g, w) in got_a.iter().zip(&want_a) {
                    assert!(
                        (g - w).abs() <= 1e-6 * (n as f32 + 1.0),
                        "values {g} vs {w}"
                    );
                }
            };
            #[cfg(target_arch = "x86_64")]
            {
                use crate::kernels::SimdLevel;
                if SimdLevel::Avx2.is_available() {
                    let mut s2 = vec![0.0; n];
                    crate::kernels::avx2::checked::dots_strided(&q, &kv, stride, &mut s2);
                    let mut a2 = vec![0.5f32; d];
                    crate::kernels::avx2::checked::axpys_strided(&p, &kv, stride, &mut a2);
                    check(&s2, &a2);
                }
                if SimdLevel::Avx512.is_available() {
                    let mut s5 = vec![0.0; n];
                    crate::kernels::avx512::checked::dots_strided(&q, &kv, stride, &mut s5);
                    let mut a5 = vec![0.5f32; d];
                    crate::kernels::avx512::checked::axpys_strided(&p, &kv, stride, &mut a5);
                    check(&s5, &a5);
                }
            }
            let mut sd = vec![0.0; n];
            crate::kernels::dots_strided(&q, &kv, stride, &mut sd);
            let mut ad = vec![0.5f32; d];
            crate::kernels::axpys_strided(&p, &kv, stride, &mut ad);
            check(&sd, &ad);
        }
    }

    #[test]
    fn empty_state_finishes_to_zero() {
        let s = AttnState::new(4);
        let mut out = [1.0; 4];
        s.finish(&mut out);
        assert_eq!(out, [0.0; 4]);
    }
}

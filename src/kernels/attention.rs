//! Attention over a run of cached positions, with an online (streaming) softmax.
//!
//! The KV cache computes attention a block at a time (`kv::format::attend_block_range`).
//! [`AttnState`] carries the running maximum, the running sum of exponentials and the weighted
//! value accumulator, so blocks may arrive in any grouping and partial states merge into the
//! same softmax-weighted sum (up to f32 rounding of the merge).
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

    #[test]
    fn empty_state_finishes_to_zero() {
        let s = AttnState::new(4);
        let mut out = [1.0; 4];
        s.finish(&mut out);
        assert_eq!(out, [0.0; 4]);
    }
}

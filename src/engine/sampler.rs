//! Token sampling: greedy, temperature, top-k, top-p, with a seeded, reproducible RNG.
//!
//! Invariant: for a given seed and the same logits, the same token is drawn (ChaCha8 stream);
//! `temp == 0` is pure argmax (lowest id on ties) and consumes no randomness.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampler settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// Temperature; 0 means greedy.
    pub temp: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temp: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// A sampler with its RNG state.
#[derive(Debug, Clone)]
pub struct Sampler {
    p: SamplerParams,
    rng: ChaCha8Rng,
    cand: Vec<(u32, f32)>,
}

/// Index of the largest value (lowest index on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler; parameters are assumed validated (temp ≥ 0, 0 < top_p ≤ 1).
    pub fn new(p: SamplerParams) -> Self {
        Sampler {
            p,
            rng: ChaCha8Rng::seed_from_u64(p.seed),
            cand: Vec::new(),
        }
    }

    /// Draw the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.p.temp <= 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let c = &mut self.cand;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.p.top_k > 0 && self.p.top_k < c.len() {
            c.select_nth_unstable_by(self.p.top_k - 1, by_logit);
            c.truncate(self.p.top_k);
        }
        c.sort_unstable_by(by_logit);
        let m = c[0].1;
        let mut z = 0.0f64;
        for e in c.iter_mut() {
            e.1 = (((e.1 - m) / self.p.temp) as f64).exp() as f32;
            z += e.1 as f64;
        }
        let mut keep = c.len();
        if self.p.top_p < 1.0 {
            let mut cum = 0.0f64;
            for (i, e) in c.iter().enumerate() {
                cum += e.1 as f64 / z;
                if cum >= self.p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            z = c.iter().map(|e| e.1 as f64).sum();
        }
        let r = self.rng.gen::<f64>() * z;
        let mut acc = 0.0f64;
        for e in c.iter() {
            acc += e.1 as f64;
            if r < acc {
                return e.0;
            }
        }
        c[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_lowest_index_on_ties() {
        let mut s = Sampler::new(SamplerParams {
            temp: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let p = SamplerParams {
            temp: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut top: Vec<u32> = (0..100).collect();
        top.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        for t in &a {
            assert!(top[..5].contains(t));
        }
        // More than one distinct token is drawn at temperature 1 over 200 draws.
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert!(d.len() > 1);
    }

    #[test]
    fn top_p_keeps_smallest_nucleus() {
        // Probabilities ≈ [0.88, 0.12, ~0...]: top_p 0.5 keeps only the first.
        let logits = [4.0f32, 2.0, -10.0, -10.0];
        let mut s = Sampler::new(SamplerParams {
            temp: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 0);
        }
    }
}

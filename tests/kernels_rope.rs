//! RoPE / YaRN: against an f64 reference, against gpt-oss-spec Appendix A, pairing modes, cache.

use kvspool::kernels::{rope_inplace, RopeCache, RopeMode, RopeParams, YarnParams, YarnRounding};

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gpt_oss(rounding: YarnRounding) -> RopeParams {
    RopeParams {
        n_dims: 64,
        freq_base: 150000.0,
        mode: RopeMode::Neox,
        yarn: Some(YarnParams {
            factor: 32.0,
            original_ctx: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
            rounding,
        }),
    }
}

fn llama(n_dims: usize, mode: RopeMode) -> RopeParams {
    RopeParams {
        n_dims,
        freq_base: 10000.0,
        mode,
        yarn: None,
    }
}

/// Angle and magnitude of pair `i` at `pos`, in f64, from the textbook formulas.
fn angle_f64(p: &RopeParams, i: usize, pos: usize) -> (f64, f64) {
    let d = p.n_dims as f64;
    let w_ext = (p.freq_base as f64).powf(-2.0 * i as f64 / d);
    let theta_ext = pos as f64 * w_ext;
    match p.yarn {
        None => (theta_ext, 1.0),
        Some(y) => {
            let corr = |beta: f32| {
                d * (y.original_ctx as f64 / (beta as f64 * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * (p.freq_base as f64).ln())
            };
            let (mut lo, mut hi) = (corr(y.beta_fast), corr(y.beta_slow));
            if y.rounding == YarnRounding::LlamaCpp {
                lo = lo.floor();
                hi = hi.ceil();
            }
            let (lo, hi) = (lo.max(0.0), hi.min(d - 1.0));
            let r = ((i as f64 - lo) / (hi - lo).max(0.001)).clamp(0.0, 1.0);
            let mix = (1.0 - r) * y.ext_factor as f64;
            let theta = theta_ext / y.factor as f64 * (1.0 - mix) + theta_ext * mix;
            let m = y.attn_factor as f64 * (1.0 + 0.1 * (y.factor as f64).ln());
            (theta, m)
        }
    }
}

fn heads(n_heads: usize, head_dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n_heads * head_dim)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Error bound per output: ggml forms θᵢ by i f32 multiplications with a rounded
/// `theta_scale`, so θ carries a relative error ≤ 2i·u, plus ≤ 6u from the YaRN mix; that moves
/// cos/sin by ≤ |θ|·(2i + 6)·u; cos/sin, the magnitude product, the two products and the sum of
/// the rotation add ≤ 6u relative to (|a| + |b|)·m.
#[test]
fn kernels_rope_matches_f64_reference() {
    let configs = [
        (llama(64, RopeMode::Normal), 64),
        (llama(64, RopeMode::Neox), 64),
        (llama(32, RopeMode::Normal), 64),
        (llama(32, RopeMode::Neox), 48),
        (gpt_oss(YarnRounding::Reference), 64),
        (gpt_oss(YarnRounding::LlamaCpp), 64),
    ];
    for (p, head_dim) in configs {
        for pos in [0usize, 1, 7, 100, 4095, 4096, 30000, 131071] {
            let n_heads = 3;
            let x0 = heads(n_heads, head_dim, pos as u64 + 1);
            let mut x = x0.clone();
            rope_inplace(&p, &mut x, head_dim, pos);
            let half = p.n_dims / 2;
            for h in 0..n_heads {
                let base = h * head_dim;
                for i in 0..half {
                    let (ia, ib) = match p.mode {
                        RopeMode::Normal => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + half),
                    };
                    let (a, b) = (x0[base + ia] as f64, x0[base + ib] as f64);
                    let (theta, m) = angle_f64(&p, i, pos);
                    let (c, s) = (theta.cos() * m, theta.sin() * m);
                    let want = [a * c - b * s, a * s + b * c];
                    let tol =
                        (a.abs() + b.abs()) * m * (theta.abs() * (2 * i + 6) as f64 * U + 6.0 * U);
                    for (k, idx) in [ia, ib].into_iter().enumerate() {
                        let got = x[base + idx] as f64;
                        assert!(
                            (got - want[k]).abs() <= tol,
                            "{p:?} pos {pos} head {h} pair {i}: {got} vs {} (tol {tol:e})",
                            want[k]
                        );
                    }
                }
                // Dims past n_dims are untouched.
                assert_eq!(
                    x[base + p.n_dims..base + head_dim],
                    x0[base + p.n_dims..base + head_dim]
                );
            }
        }
    }
}

/// gpt-oss-spec Appendix A: effective inverse frequencies ω_i for both roundings (7 significant
/// digits in the table; our f32 iteration adds ≤ 2i·u ≈ 4e-6 relative), the correction range,
/// and the magnitude m = 1.3465736.
#[test]
fn kernels_rope_yarn_matches_spec_appendix_a() {
    let reference: [(usize, f64); 10] = [
        (0, 1.000000e+00),
        (8, 5.081327e-02),
        (9, 3.170570e-02),
        (10, 1.933500e-02),
        (12, 6.794959e-03),
        (14, 2.093792e-03),
        (16, 4.564839e-04),
        (17, 1.293187e-04),
        (18, 3.830881e-05),
        (31, 3.023511e-07),
    ];
    let llamacpp: [(usize, f64); 9] = [
        (8, 5.081327e-02),
        (9, 3.162075e-02),
        (10, 1.945097e-02),
        (11, 1.179219e-02),
        (13, 4.069555e-03),
        (15, 1.206131e-03),
        (16, 5.809475e-04),
        (17, 2.279478e-04),
        (18, 3.830881e-05),
    ];
    for (rounding, table, corr) in [
        (
            YarnRounding::Reference,
            &reference[..],
            [8.092779f32, 17.398025],
        ),
        (YarnRounding::LlamaCpp, &llamacpp[..], [8.0, 18.0]),
    ] {
        let p = gpt_oss(rounding);
        let got = p.yarn_corr_dims().unwrap();
        assert!(
            (got[0] - corr[0]).abs() < 2e-5 && (got[1] - corr[1]).abs() < 2e-5,
            "{got:?}"
        );
        let (mut c, mut s) = (vec![0.0f32; 32], vec![0.0f32; 32]);
        p.cos_sin(1, &mut c, &mut s);
        for &(i, omega) in table {
            let theta = (s[i] as f64).atan2(c[i] as f64);
            assert!(
                (theta - omega).abs() <= omega * 5e-6,
                "{rounding:?} ω_{i} = {theta:e}, spec {omega:e}"
            );
        }
        for i in 0..32 {
            let m = ((c[i] as f64).powi(2) + (s[i] as f64).powi(2)).sqrt();
            assert!((m - 1.3465735902799727).abs() < 4e-7, "magnitude {m}");
        }
    }
}

#[test]
fn kernels_rope_pairing_modes() {
    let head_dim = 8;
    let (mut c, mut s) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let p = llama(8, mode);
        p.cos_sin(3, &mut c, &mut s);
        // A one-hot input on dim 1 moves only within its pair.
        let mut x = vec![0.0f32; head_dim];
        x[1] = 1.0;
        rope_inplace(&p, &mut x, head_dim, 3);
        let mut want = vec![0.0f32; head_dim];
        match mode {
            // pair 0 = (0, 1): a = 0, b = 1 → (−s₀, c₀)
            RopeMode::Normal => {
                want[0] = -s[0];
                want[1] = c[0];
            }
            // pair 1 = (1, 5): a = 1, b = 0 → (c₁, s₁)
            RopeMode::Neox => {
                want[1] = c[1];
                want[5] = s[1];
            }
        }
        assert_eq!(x, want, "{mode:?}");
    }
}

#[test]
fn kernels_rope_position_zero() {
    let x0 = heads(4, 64, 9);
    let mut x = x0.clone();
    rope_inplace(&llama(64, RopeMode::Neox), &mut x, 64, 0);
    assert_eq!(x, x0, "no rotation at position 0");
    let mut x = x0.clone();
    rope_inplace(&gpt_oss(YarnRounding::LlamaCpp), &mut x, 64, 0);
    let m = 1.0f32 + 0.1 * 32.0f32.ln();
    for (a, b) in x.iter().zip(&x0) {
        assert_eq!(*a, b * m - 0.0 * 0.0, "YaRN at position 0 only scales by m");
    }
}

#[test]
fn kernels_rope_cache_is_bit_identical() {
    for p in [
        llama(64, RopeMode::Normal),
        gpt_oss(YarnRounding::Reference),
    ] {
        let cache = RopeCache::new(p, 300);
        assert_eq!(cache.len(), 300);
        assert!(!cache.is_empty());
        for pos in [0, 1, 77, 299] {
            let x0 = heads(5, 64, pos as u64);
            let (mut a, mut b) = (x0.clone(), x0);
            rope_inplace(&p, &mut a, 64, pos);
            cache.apply(&mut b, 64, pos);
            assert_eq!(a, b);
        }
    }
}

#[test]
#[should_panic(expected = "must be even")]
fn kernels_rope_rejects_odd_dims() {
    rope_inplace(&llama(7, RopeMode::Normal), &mut [0.0; 8], 8, 1);
}

#[test]
#[should_panic(expected = "whole heads")]
fn kernels_rope_rejects_partial_heads() {
    rope_inplace(&llama(8, RopeMode::Normal), &mut [0.0; 12], 8, 1);
}

//! f32 kernels (`dot_f32`, `axpy`, `rmsnorm`, `softmax_inplace`, `silu`, `swiglu_inplace`) and
//! the SIMD level selection, at every level this CPU supports.

use kvspool::kernels::{self, resolve_level, SimdLevel};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) as f32 * 1.7
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gamma(k: usize) -> f64 {
    let ku = k as f64 * U;
    ku / (1.0 - ku)
}

const LENGTHS: [usize; 16] = [
    0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 576, 1000, 4099,
];

/// See `tests/kernels_matmul.rs` for the bound: `γ(⌈n/8⌉ + 8) · Σ|aᵢbᵢ|`.
#[test]
fn kernels_dot_f32_every_level_within_summation_bound() {
    let mut rng = Rng(11);
    for n in LENGTHS {
        let a = rng.vec(n, 3.0);
        let b = rng.vec(n, 0.5);
        let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let s: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 * y as f64).abs())
            .sum();
        let bound = gamma(n.div_ceil(8) + 8) * s + 1e-12 * s;
        for level in SimdLevel::available() {
            let got = kernels::dot_f32_at(level, &a, &b) as f64;
            assert!(
                (got - exact).abs() <= bound,
                "{level} n={n}: {got} vs {exact}"
            );
        }
        let mut one_hot = vec![0.0f32; n];
        for j in 0..n {
            one_hot[j] = 1.0;
            for level in SimdLevel::available() {
                assert_eq!(
                    kernels::dot_f32_at(level, &a, &one_hot),
                    a[j],
                    "{level} n={n} j={j}"
                );
            }
            one_hot[j] = 0.0;
        }
    }
}

/// Scalar: `y + a·x` with two roundings; SIMD: one FMA. Each is within 2u of the exact value
/// relative to `|y| + |a·x|`, and exact when `x = 0`.
#[test]
fn kernels_axpy_every_level() {
    let mut rng = Rng(12);
    for n in LENGTHS {
        let x = rng.vec(n, 1.0);
        let y0 = rng.vec(n, 1.0);
        let a = rng.normal();
        for level in SimdLevel::available() {
            let mut y = y0.clone();
            kernels::axpy_at(level, a, &x, &mut y);
            for i in 0..n {
                let exact = y0[i] as f64 + a as f64 * x[i] as f64;
                let tol = 2.0 * U * (y0[i].abs() as f64 + (a as f64 * x[i] as f64).abs());
                assert!((y[i] as f64 - exact).abs() <= tol, "{level} n={n} i={i}");
                if level != SimdLevel::Scalar {
                    assert_eq!(y[i], a.mul_add(x[i], y0[i]), "{level} fused n={n} i={i}");
                }
            }
        }
    }
}

/// ggml's `rms_norm_f32` + `mul`, written out sequentially.
fn rmsnorm_ggml(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut sum = 0.0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    x.iter().zip(w).map(|(&v, &wi)| v * scale * wi).collect()
}

/// The scalar level is ggml's formula bit for bit. The SIMD levels sum the f64 squares in
/// another order; that changes the f64 sum by a few ulps (2⁻⁵³ relative), which would change
/// the f32 mean only if it sat within ~2⁻⁵⁰ of a rounding boundary — so on this fixed data the
/// outputs are identical, and we assert that.
#[test]
fn kernels_rmsnorm_matches_ggml_formula() {
    let mut rng = Rng(13);
    for n in LENGTHS.into_iter().filter(|&n| n > 0).chain([2880]) {
        for scale in [1e-3f32, 1.0, 40.0] {
            let x = rng.vec(n, scale);
            let w = rng.vec(n, 1.0);
            let want = rmsnorm_ggml(&x, &w, 1e-5);
            for level in SimdLevel::available() {
                let mut out = vec![f32::NAN; n];
                kernels::rmsnorm_at(level, &x, &w, 1e-5, &mut out);
                for i in 0..n {
                    assert_eq!(out[i].to_bits(), want[i].to_bits(), "{level} n={n} i={i}");
                }
            }
            let mut out = vec![0.0; n];
            kernels::rmsnorm(&x, &w, 1e-5, &mut out);
            assert_eq!(out, want);
        }
    }
    // Normalised output has mean square ≈ 1 with unit weights.
    let x = rng.vec(1000, 7.0);
    let mut out = vec![0.0; 1000];
    kernels::rmsnorm(&x, &[1.0; 1000], 0.0, &mut out);
    let ms: f64 = out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 1000.0;
    assert!((ms - 1.0).abs() < 1e-5, "{ms}");
    kernels::rmsnorm(&[], &[], 1e-5, &mut []);
}

#[test]
fn kernels_softmax_sums_to_one_and_matches_f64() {
    let mut rng = Rng(14);
    for n in [1usize, 2, 3, 17, 1000] {
        for scale in [0.1f32, 5.0, 300.0] {
            let x0 = rng.vec(n, scale);
            let mut x = x0.clone();
            kernels::softmax_inplace(&mut x);
            let max = x0.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let z: f64 = x0.iter().map(|&v| (v as f64 - max).exp()).sum();
            for i in 0..n {
                let want = (x0[i] as f64 - max).exp() / z;
                // exp, the subtraction and the final scale each round (a few u, relative); the
                // f32 `x − max` error is amplified by |x − max| in exp.
                let tol = want * (8.0 * U + 2.0 * U * (x0[i] as f64 - max).abs()) + 1e-45;
                assert!(
                    (x[i] as f64 - want).abs() <= tol,
                    "n={n} scale={scale} i={i}: {} vs {want}",
                    x[i]
                );
            }
            let total: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((total - 1.0).abs() <= 1e-5, "{total}");
        }
    }
    let mut big = [1000.0f32, 999.0, -1000.0];
    kernels::softmax_inplace(&mut big);
    assert!(big.iter().all(|v| v.is_finite()));
    assert!((big[0] / big[1] - std::f32::consts::E).abs() < 1e-5);
    let mut flat = [2.5f32; 4];
    kernels::softmax_inplace(&mut flat);
    assert_eq!(flat, [0.25; 4]);
    kernels::softmax_inplace(&mut []);
}

#[test]
fn kernels_silu_and_swiglu() {
    assert_eq!(kernels::silu(0.0), 0.0);
    for &x in &[-30.0f32, -5.0, -1.0, -1e-3, 1e-3, 0.5, 1.0, 3.0, 20.0] {
        let want = x as f64 / (1.0 + (-(x as f64)).exp());
        let got = kernels::silu(x) as f64;
        assert!(
            (got - want).abs() <= 4.0 * U * want.abs(),
            "silu({x}) = {got}, want {want}"
        );
        assert_eq!(kernels::silu(x), x / (1.0 + (-x).exp()));
    }
    // No NaN at the extremes: exp overflows to inf, x/inf = -0.
    assert_eq!(kernels::silu(-1000.0), 0.0);
    assert_eq!(kernels::silu(1000.0), 1000.0);
    let mut g = vec![-2.0f32, 0.0, 1.0, 4.0];
    let u = [3.0f32, 5.0, -1.0, 0.5];
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&a, &b)| kernels::silu(a) * b)
        .collect();
    kernels::swiglu_inplace(&mut g, &u);
    assert_eq!(g, want);
}

#[test]
#[should_panic(expected = "lengths differ")]
fn kernels_swiglu_rejects_length_mismatch() {
    kernels::swiglu_inplace(&mut [0.0; 3], &[0.0; 2]);
}

#[test]
fn kernels_simd_level_resolution() {
    use SimdLevel::*;
    assert_eq!(SimdLevel::parse(" AVX512 "), Some(Avx512));
    assert_eq!(SimdLevel::parse("scalar"), Some(Scalar));
    assert_eq!(SimdLevel::parse("neon"), None);
    assert_eq!(resolve_level(Avx512, None), (Avx512, None));
    assert_eq!(resolve_level(Avx512, Some("")), (Avx512, None));
    assert_eq!(resolve_level(Avx512, Some("avx2")), (Avx2, None));
    assert_eq!(resolve_level(Avx512, Some("scalar")), (Scalar, None));
    assert_eq!(resolve_level(Avx2, Some("avx2")).0, Avx2);
    let (l, w) = resolve_level(Avx2, Some("avx512"));
    assert_eq!(l, Avx2);
    assert!(w.unwrap().contains("above"));
    let (l, w) = resolve_level(Scalar, Some("fast"));
    assert_eq!(l, Scalar);
    assert!(w.unwrap().contains("not one of"));
    for l in SimdLevel::ALL {
        assert_eq!(SimdLevel::parse(l.name()), Some(l));
        assert_eq!(l.to_string(), l.name());
    }
}

/// The process level honours `KVSPOOL_SIMD` (run in a child process so the variable is set
/// before the level is first chosen).
#[test]
fn kernels_simd_env_lowers_the_level() {
    if let Ok(want) = std::env::var("KVSPOOL_TEST_EXPECT_LEVEL") {
        assert_eq!(kernels::simd_level().name(), want);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (env, want) in [
        ("scalar", "scalar"),
        ("bogus", SimdLevel::detected().name()),
    ] {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "kernels_simd_env_lowers_the_level"])
            .env(kernels::SIMD_ENV, env)
            .env("KVSPOOL_TEST_EXPECT_LEVEL", want)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "KVSPOOL_SIMD={env}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn kernels_exp_shift_sum_is_bit_equal_across_levels_and_accurate() {
    let mut rng = Rng(11);
    for &n in &LENGTHS {
        // Scores minus their maximum: mostly in [-30, 0], some far below, some exactly 0.
        let mut x: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -100.0 - rng.unit() as f32 * 50.0,
                _ => rng.normal() * 8.0 - 4.0,
            })
            .collect();
        x.iter_mut().for_each(|v| *v = v.min(3.0));
        let m = 0.75f32;
        let mut want = x.clone();
        let want_sum = kernels::exp_shift_sum_at(SimdLevel::Scalar, &mut want, m);
        for (&xi, &w) in x.iter().zip(&want) {
            let t = ((xi - m) as f64).exp();
            let err = (w as f64 - t).abs();
            assert!(
                err <= 2.5 * f32::EPSILON as f64 * t || (t < 1.2e-38 && w == 0.0),
                "exp({}) = {w}, true {t}",
                xi - m
            );
        }
        for level in SimdLevel::available() {
            let mut got = x.clone();
            let s = kernels::exp_shift_sum_at(level, &mut got, m);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{level:?} n {n}"
            );
            let bound = gamma(n + 16) * want.iter().map(|&v| v as f64).sum::<f64>();
            assert!(
                (s as f64 - want_sum as f64).abs() <= 2.0 * bound + 1e-30,
                "{level:?} n {n}: sum {s} vs {want_sum}"
            );
        }
    }
    // NaN stays NaN, -inf gives 0.
    for level in SimdLevel::available() {
        let mut v = [f32::NAN, f32::NEG_INFINITY, 0.0];
        kernels::exp_shift_sum_at(level, &mut v, 0.0);
        assert!(
            v[0].is_nan() && v[1] == 0.0 && v[2] == 1.0,
            "{level:?}: {v:?}"
        );
    }
}

#[test]
fn kernels_e4m3_decode_matches_the_table_at_every_level() {
    use kvspool::quant::fp8::E4M3_TO_F32;
    let codes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).chain(7..40).collect();
    for &n in &LENGTHS {
        let src: Vec<u8> = codes.iter().cycle().take(n).copied().collect();
        for level in SimdLevel::available() {
            let mut out = vec![1.5f32; n];
            kernels::e4m3_decode_at(level, &src, &mut out);
            for (i, (&c, &o)) in src.iter().zip(&out).enumerate() {
                let w = E4M3_TO_F32[c as usize];
                assert!(
                    o.to_bits() == w.to_bits() || (o.is_nan() && w.is_nan()),
                    "{level:?} n {n} i {i}: code {c:#04x} gave {o}, table {w}"
                );
            }
        }
    }
}

/// `col_dots_bf16` (queries against a column-major bf16 tile of up to 16 rows) at every level is
/// bit-equal to the scalar reference (one FMA per element in the same order), within the
/// summation bound of the exact dot, on awkward row lengths, query counts and column counts,
/// and never writes past column `c`.
#[test]
fn kernels_col_dots_bf16_every_level_matches_scalar_bit_for_bit() {
    let mut rng = Rng(33);
    for &n in &[1usize, 3, 16, 17, 64, 128, 130] {
        for &nq in &[1usize, 2, 3, 4, 5, 8, 9, 17] {
            for &c in &[0usize, 1, 7, 15, 16] {
                let qs = rng.vec(nq * n, 1.0);
                let tile: Vec<u16> = rng
                    .vec(n * kernels::COL_TILE, 4.0)
                    .iter()
                    .map(|x| (x.to_bits() >> 16) as u16)
                    .collect();
                let at = |j: usize, i: usize| {
                    f32::from_bits((tile[j * kernels::COL_TILE + i] as u32) << 16) as f64
                };
                // The kernel takes the queries transposed: qt[j·nq + q].
                let mut qt = vec![0.0f32; n * nq];
                for q in 0..nq {
                    for j in 0..n {
                        qt[j * nq + q] = qs[q * n + j];
                    }
                }
                let ldo = c + 3;
                let mut want = vec![f32::NAN; nq * ldo];
                kernels::col_dots_bf16_at(SimdLevel::Scalar, &qt, nq, &tile, c, &mut want, ldo);
                for qi in 0..nq {
                    for i in 0..c {
                        let exact: f64 = (0..n).map(|j| qs[qi * n + j] as f64 * at(j, i)).sum();
                        let mag: f64 = (0..n)
                            .map(|j| (qs[qi * n + j] as f64 * at(j, i)).abs())
                            .sum();
                        let got = want[qi * ldo + i] as f64;
                        assert!((got - exact).abs() <= gamma(n + 2) * mag, "n={n} c={c}");
                    }
                    assert!(want[qi * ldo + c].is_nan());
                }
                for level in SimdLevel::available() {
                    let mut out = vec![f32::NAN; nq * ldo];
                    kernels::col_dots_bf16_at(level, &qt, nq, &tile, c, &mut out, ldo);
                    assert!(
                        out.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level} n={n} nq={nq} c={c}"
                    );
                }
            }
        }
    }
}

/// The block-attention tile kernels against the scalar level: `dots_multi` within the
/// summation bound, `axpys_multi` bit-equal to `axpy` per row at its level (the SIMD levels use
/// one FMA per element, rows in order), on awkward head sizes, query counts and row counts.
#[test]
fn kernels_dots_and_axpys_multi_every_level() {
    let mut rng = Rng(21);
    for &d in &[1usize, 15, 16, 17, 32, 48, 64, 80, 128] {
        for &nq in &[1usize, 3, 4, 5, 8, 9] {
            for &c in &[1usize, 7, 16] {
                let qs = rng.vec(nq * d, 1.0);
                let keys = rng.vec(c * d, 1.0);
                let w = rng.vec(nq * c, 1.0);
                let acc0 = rng.vec(nq * d, 1.0);
                for level in SimdLevel::available() {
                    let ldo = c + 2;
                    let mut out = vec![f32::NAN; nq * ldo];
                    kernels::dots_multi_at(level, &qs, d, &keys, c, &mut out, ldo);
                    for qi in 0..nq {
                        for i in 0..c {
                            let (q, k) = (&qs[qi * d..][..d], &keys[i * d..][..d]);
                            let exact: f64 =
                                q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mag: f64 = q
                                .iter()
                                .zip(k)
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            let got = out[qi * ldo + i] as f64;
                            assert!(
                                (got - exact).abs() <= gamma(d + 8) * mag,
                                "{level} d={d} nq={nq} c={c}: {got} vs {exact}"
                            );
                        }
                        // Columns beyond c are not written.
                        assert!(out[qi * ldo + c].is_nan());
                    }
                    let mut acc = acc0.clone();
                    kernels::axpys_multi_at(level, &w, c, &keys, c, &mut acc, d);
                    let mut want = acc0.clone();
                    for qi in 0..nq {
                        for i in 0..c {
                            kernels::axpy_at(
                                level,
                                w[qi * c + i],
                                &keys[i * d..][..d],
                                &mut want[qi * d..][..d],
                            );
                        }
                    }
                    assert_eq!(acc, want, "{level} d={d} nq={nq} c={c}");
                }
            }
        }
    }
}

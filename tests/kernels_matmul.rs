//! Weight-format kernels (`dot_row`, `matvec`, `matmat`, row decoding) at every SIMD level this
//! CPU supports, against an exact (f64) reference and against the scalar level.
//!
//! Tolerance: the kernels module documents that every dot product of `n` terms passes each
//! product through at most `⌈n/8⌉ + 8` roundings, so
//! `|computed − exact| ≤ γ(⌈n/8⌉ + 8) · S` with `S = Σ|wᵢ·xᵢ|` (`|qᵢ·d| + |m|` in place of
//! `|wᵢ|` for Q4_1) and `γ(k) = k·u/(1 − k·u)`, `u = 2⁻²⁴` (Higham, Accuracy and Stability of
//! Numerical Algorithms, §3.1, for any summation order). The f64 reference adds at most
//! `n · 2⁻⁵³ · S`, covered by the `1e-12 · S` term. Two levels may then differ by twice the bound.

use kvspool::gguf::GgmlType;
use kvspool::kernels::{self, SimdLevel};
use kvspool::quant::{self, BlockQ4_1};

const TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::MXFP4,
];

/// SplitMix64: deterministic, dependency-free test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms), times a per-call scale.
    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) as f32 * 1.7
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn is_block(ty: GgmlType) -> bool {
    ty.block_size() == 32
}

fn lengths(ty: GgmlType) -> Vec<usize> {
    if is_block(ty) {
        vec![32, 64, 96, 128, 576, 2880, 4096 + 32]
    } else {
        vec![
            1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 577, 1000, 2880, 4099,
        ]
    }
}

/// Awkward activation values: mostly normal, with zeros, tiny, large and negative spikes.
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(16) {
            0 => 0.0,
            1 => rng.normal() * 1e-6,
            2 => rng.normal() * 1e3,
            _ => rng.normal(),
        })
        .collect()
}

/// A row of `ty` made by quantizing random values (scale varies per row), plus for MXFP4 some
/// raw random blocks with moderate exponents.
fn weight_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let scale = 10f32.powf(rng.unit() as f32 * 4.0 - 2.0);
    let mut vals: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
    if n > 8 {
        vals[n / 3] = 0.0;
        vals[n / 2] = -scale * 5.0;
    }
    let mut row = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
    quant::quantize_row(ty, &vals, &mut row).unwrap();
    if ty == GgmlType::MXFP4 && rng.below(2) == 0 {
        for b in row.chunks_exact_mut(17) {
            b[0] = 110 + rng.below(30) as u8;
            for q in &mut b[1..] {
                *q = rng.below(256) as u8;
            }
        }
    }
    row
}

/// Exact weights (f64) and the magnitudes that enter the error bound.
fn exact_weights(ty: GgmlType, row: &[u8], n: usize) -> (Vec<f64>, Vec<f64>) {
    if ty == GgmlType::Q4_1 {
        let mut w = Vec::with_capacity(n);
        let mut a = Vec::with_capacity(n);
        for b in row.chunks_exact(20) {
            let blk = BlockQ4_1::from_bytes(b.try_into().unwrap());
            let (d, m) = (blk.scale() as f64, blk.min() as f64);
            let q: Vec<u8> = blk
                .qs
                .iter()
                .map(|q| q & 15)
                .chain(blk.qs.iter().map(|q| q >> 4))
                .collect();
            for &q in &q {
                w.push(q as f64 * d + m);
                a.push((q as f64 * d).abs() + m.abs());
            }
        }
        (w, a)
    } else {
        let mut f = vec![0.0f32; n];
        quant::dequantize_row(ty, row, &mut f).unwrap();
        let w: Vec<f64> = f.iter().map(|&v| v as f64).collect();
        let a = w.iter().map(|v| v.abs()).collect();
        (w, a)
    }
}

fn gamma(k: usize) -> f64 {
    let ku = k as f64 * (2f64).powi(-24);
    ku / (1.0 - ku)
}

/// (exact dot, bound on |computed − exact|).
fn reference(ty: GgmlType, row: &[u8], x: &[f32]) -> (f64, f64) {
    let (w, a) = exact_weights(ty, row, x.len());
    let exact: f64 = w.iter().zip(x).map(|(w, &x)| w * x as f64).sum();
    let s: f64 = a.iter().zip(x).map(|(a, &x)| a * (x as f64).abs()).sum();
    (exact, gamma(x.len().div_ceil(8) + 8) * s + 1e-12 * s)
}

#[test]
fn kernels_simd_levels_include_scalar_and_detected() {
    let levels = SimdLevel::available();
    assert_eq!(levels[0], SimdLevel::Scalar);
    assert_eq!(*levels.last().unwrap(), SimdLevel::detected());
    assert!(kernels::simd_level() <= SimdLevel::detected());
    eprintln!("levels tested here: {levels:?}");
}

#[test]
fn kernels_dot_row_every_level_within_summation_bound() {
    let mut rng = Rng(1);
    for ty in TYPES {
        for n in lengths(ty) {
            for _trial in 0..3 {
                let row = weight_row(&mut rng, ty, n);
                let x = activations(&mut rng, n);
                let (exact, bound) = reference(ty, &row, &x);
                let scalar = kernels::dot_row_at(SimdLevel::Scalar, ty, &row, &x);
                for level in SimdLevel::available() {
                    let got = kernels::dot_row_at(level, ty, &row, &x);
                    let err = (got as f64 - exact).abs();
                    assert!(
                        err <= bound,
                        "{level} {ty} n={n}: got {got}, exact {exact}, err {err:e} > bound {bound:e}"
                    );
                    let diff = (got as f64 - scalar as f64).abs();
                    assert!(
                        diff <= 2.0 * bound,
                        "{level} {ty} n={n}: {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }
}

/// x = e_j picks out element j: catches element order, nibble order and tail mistakes exactly.
#[test]
fn kernels_dot_row_one_hot_selects_each_element() {
    let mut rng = Rng(2);
    for ty in TYPES {
        let n = if is_block(ty) { 96 } else { 37 };
        let row = weight_row(&mut rng, ty, n);
        let (w, a) = exact_weights(ty, &row, n);
        for level in SimdLevel::available() {
            let mut x = vec![0.0f32; n];
            for j in 0..n {
                x[j] = 1.0;
                let got = kernels::dot_row_at(level, ty, &row, &x) as f64;
                // Exact except Q4_1, whose decoded weight is rounded (once with FMA, twice
                // without): at most 2u·(|q·d| + |m|).
                let tol = if ty == GgmlType::Q4_1 {
                    2.0 * (2f64).powi(-24) * a[j]
                } else {
                    0.0
                };
                assert!(
                    (got - w[j]).abs() <= tol,
                    "{level} {ty} element {j}: {got} vs {}",
                    w[j]
                );
                x[j] = 0.0;
            }
        }
    }
}

#[test]
fn kernels_dequant_row_every_level_bit_identical_to_quant() {
    let mut rng = Rng(3);
    for ty in TYPES {
        for n in lengths(ty) {
            let row = weight_row(&mut rng, ty, n);
            let mut want = vec![0.0f32; n];
            quant::dequantize_row(ty, &row, &mut want).unwrap();
            for level in SimdLevel::available() {
                let mut got = vec![f32::NAN; n];
                kernels::dequant_row_at(level, ty, &row, &mut got);
                for i in 0..n {
                    assert_eq!(
                        got[i].to_bits(),
                        want[i].to_bits(),
                        "{level} {ty} n={n} i={i}"
                    );
                }
            }
        }
    }
}

fn matrix(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    (0..rows).flat_map(|_| weight_row(rng, ty, cols)).collect()
}

#[test]
fn kernels_matvec_every_level_equals_its_dot_row() {
    let mut rng = Rng(4);
    // Shapes cover serial and parallel paths and row counts that are not multiples of a chunk.
    for ty in TYPES {
        let shapes: &[(usize, usize)] = if is_block(ty) {
            &[
                (1, 32),
                (7, 64),
                (33, 96),
                (300, 256),
                (1001, 96),
                (37, 2880),
            ]
        } else {
            &[(1, 1), (5, 33), (300, 257), (1001, 65), (3, 4099)]
        };
        for &(rows, cols) in shapes {
            let w = matrix(&mut rng, ty, rows, cols);
            let x = activations(&mut rng, cols);
            let rb = w.len() / rows;
            for level in SimdLevel::available() {
                let mut y = vec![f32::NAN; rows];
                kernels::matvec_at(level, ty, &w, rows, cols, &x, &mut y);
                for r in 0..rows {
                    let row = &w[r * rb..(r + 1) * rb];
                    let d = kernels::dot_row_at(level, ty, row, &x);
                    assert_eq!(
                        y[r].to_bits(),
                        d.to_bits(),
                        "{level} {ty} {rows}x{cols} row {r}"
                    );
                }
                // And the bound against the exact value, for a few rows.
                for r in [0, rows / 2, rows - 1] {
                    let (exact, bound) = reference(ty, &w[r * rb..(r + 1) * rb], &x);
                    assert!((y[r] as f64 - exact).abs() <= bound, "{level} {ty} row {r}");
                }
            }
        }
    }
}

#[test]
fn kernels_matmat_every_level_within_summation_bound() {
    let mut rng = Rng(5);
    for ty in TYPES {
        let shapes: &[(usize, usize, usize)] = if is_block(ty) {
            &[
                (5, 32, 2),
                (37, 64, 7),
                (13, 2880, 3),
                (200, 576, 13),
                (130, 96, 64),
            ]
        } else {
            &[(3, 1, 2), (5, 33, 5), (37, 65, 9), (20, 1000, 6)]
        };
        for &(rows, cols, n) in shapes {
            let w = matrix(&mut rng, ty, rows, cols);
            let x = activations(&mut rng, n * cols);
            let rb = w.len() / rows;
            let refs: Vec<(f64, f64)> = (0..n * rows)
                .map(|i| {
                    let (t, r) = (i / rows, i % rows);
                    reference(ty, &w[r * rb..(r + 1) * rb], &x[t * cols..(t + 1) * cols])
                })
                .collect();
            for level in SimdLevel::available() {
                let mut y = vec![f32::NAN; n * rows];
                kernels::matmat_at(level, ty, &w, rows, cols, &x, n, &mut y);
                for (i, &(exact, bound)) in refs.iter().enumerate() {
                    let err = (y[i] as f64 - exact).abs();
                    assert!(
                        err <= bound,
                        "{level} {ty} {rows}x{cols} n={n} token {} row {}: {} vs {exact} (err {err:e} > {bound:e})",
                        i / rows,
                        i % rows,
                        y[i]
                    );
                }
            }
        }
    }
}

#[test]
fn kernels_matmat_single_token_is_matvec() {
    let mut rng = Rng(6);
    let (rows, cols) = (70, 128);
    for ty in TYPES {
        let w = matrix(&mut rng, ty, rows, cols);
        let x = activations(&mut rng, cols);
        for level in SimdLevel::available() {
            let mut a = vec![0.0f32; rows];
            let mut b = vec![0.0f32; rows];
            kernels::matvec_at(level, ty, &w, rows, cols, &x, &mut a);
            kernels::matmat_at(level, ty, &w, rows, cols, &x, 1, &mut b);
            assert_eq!(a, b, "{level} {ty}");
        }
    }
}

#[test]
fn kernels_dispatched_entry_points_use_the_process_level() {
    let mut rng = Rng(7);
    let level = kernels::simd_level();
    let (rows, cols, n) = (9, 64, 3);
    let w = matrix(&mut rng, GgmlType::Q4_1, rows, cols);
    let x = activations(&mut rng, n * cols);
    let rb = w.len() / rows;
    assert_eq!(
        kernels::dot_row(GgmlType::Q4_1, &w[..rb], &x[..cols]).to_bits(),
        kernels::dot_row_at(level, GgmlType::Q4_1, &w[..rb], &x[..cols]).to_bits()
    );
    let (mut a, mut b) = (vec![0.0; rows], vec![0.0; rows]);
    kernels::matvec(GgmlType::Q4_1, &w, rows, cols, &x[..cols], &mut a);
    kernels::matvec_at(level, GgmlType::Q4_1, &w, rows, cols, &x[..cols], &mut b);
    assert_eq!(a, b);
    let (mut a, mut b) = (vec![0.0; n * rows], vec![0.0; n * rows]);
    kernels::matmat(GgmlType::Q4_1, &w, rows, cols, &x, n, &mut a);
    kernels::matmat_at(level, GgmlType::Q4_1, &w, rows, cols, &x, n, &mut b);
    assert_eq!(a, b);
}

#[test]
fn kernels_empty_shapes_are_no_ops() {
    for level in SimdLevel::available() {
        let mut y: Vec<f32> = vec![];
        kernels::matvec_at(level, GgmlType::Q8_0, &[], 0, 32, &[0.0; 32], &mut y);
        kernels::matmat_at(level, GgmlType::Q8_0, &[], 0, 32, &[0.0; 64], 2, &mut y);
        let mut y = vec![1.0f32; 3];
        kernels::matvec_at(level, GgmlType::F32, &[], 3, 0, &[], &mut y);
        assert_eq!(y, [0.0; 3]);
        assert_eq!(kernels::dot_row_at(level, GgmlType::F16, &[], &[]), 0.0);
    }
}

#[test]
#[should_panic(expected = "needs 40")]
fn kernels_dot_row_rejects_wrong_row_length() {
    kernels::dot_row(GgmlType::Q4_1, &[0u8; 20], &[0.0; 64]);
}

#[test]
#[should_panic(expected = "not a whole number")]
fn kernels_matvec_rejects_partial_blocks() {
    let mut y = [0.0f32; 1];
    kernels::matvec(GgmlType::Q8_0, &[0u8; 34], 1, 33, &[0.0; 33], &mut y);
}

#[test]
#[should_panic(expected = "not supported")]
fn kernels_reject_unsupported_types() {
    kernels::dot_row(GgmlType::Q4_K, &[0u8; 144], &[0.0; 256]);
}

/// Results do not depend on the thread count (chunking changes which micro-kernel shape
/// computes an output, but every shape reduces in the same order).
#[test]
fn kernels_results_independent_of_thread_count() {
    let mut rng = Rng(8);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for ty in [GgmlType::Q4_1, GgmlType::MXFP4, GgmlType::F16] {
        let (rows, cols, n) = (301, 320, 7);
        let w = matrix(&mut rng, ty, rows, cols);
        let x = activations(&mut rng, n * cols);
        for level in SimdLevel::available() {
            let run = |pool: &rayon::ThreadPool| {
                pool.install(|| {
                    let mut y = vec![0.0f32; n * rows];
                    kernels::matmat_at(level, ty, &w, rows, cols, &x, n, &mut y);
                    let mut v = vec![0.0f32; rows];
                    kernels::matvec_at(level, ty, &w, rows, cols, &x[..cols], &mut v);
                    (y, v)
                })
            };
            let (a, b) = (run(&one), run(&three));
            assert!(
                a.0.iter()
                    .zip(&b.0)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{level} {ty} matmat"
            );
            assert!(
                a.1.iter()
                    .zip(&b.1)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{level} {ty} matvec"
            );
        }
    }
}

/// The same dot product computed by different micro-kernel shapes is bit-identical: token 4
/// (a 1-token tile) repeats token 0 (inside full tiles), and rows 8..10 (a remainder tile)
/// repeat rows 0..2.
#[test]
fn kernels_matmat_tile_shape_does_not_change_bits() {
    let mut rng = Rng(9);
    for ty in TYPES {
        let (rows, cols, n) = (10, 96, 5);
        let mut w = matrix(&mut rng, ty, rows, cols);
        let rb = w.len() / rows;
        w.copy_within(0..2 * rb, 8 * rb);
        let mut x = activations(&mut rng, n * cols);
        x.copy_within(0..cols, 4 * cols);
        for level in SimdLevel::available() {
            let mut y = vec![0.0f32; n * rows];
            kernels::matmat_at(level, ty, &w, rows, cols, &x, n, &mut y);
            for r in 0..rows {
                assert_eq!(
                    y[4 * rows + r].to_bits(),
                    y[r].to_bits(),
                    "{level} {ty} row {r}"
                );
            }
            for t in 0..n {
                for r in 0..2 {
                    assert_eq!(
                        y[t * rows + 8 + r].to_bits(),
                        y[t * rows + r].to_bits(),
                        "{level} {ty}"
                    );
                }
            }
        }
    }
}

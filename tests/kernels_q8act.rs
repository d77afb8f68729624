//! The 8-bit-activation kernels (`kernels::q8act`) at every kernel this CPU supports, against
//! the scalar reference.
//!
//! Tolerance: none. Every kernel computes each block's integer `sumi` exactly, the block
//! products with the same f32 operations as the scalar code, and sums them in the same fixed
//! order (block `b` into lane `b mod 16`, then a fixed tree; see the `q8act` module docs), so
//! results must be bit-identical (NaN compared as NaN). Quantization is bit-identical at every
//! level too. The distance of that fixed order from ggml's left-to-right order is tested in the
//! module's unit tests.

use kvspool::gguf::GgmlType;
use kvspool::kernels::q8act::{self, Q8Acts, Q8Kernel};
use kvspool::kernels::SimdLevel;

const TYPES: [GgmlType; 4] = [
    GgmlType::Q8_0,
    GgmlType::MXFP4,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

/// Awkward lengths in blocks: below, at and above the 8- and 16-block groups; gpt-oss's 90.
const BLOCKS: [usize; 14] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 90, 129];

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn sym(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Activation blocks of several kinds: ordinary, ±ties at half-integers of the quantization
/// grid, tiny (127/amax overflows), zero, single spikes, and (if `specials`) NaN and infinities.
fn activations(rng: &mut Rng, blocks: usize, specials: bool) -> Vec<f32> {
    let mut x = Vec::with_capacity(blocks * 32);
    for _ in 0..blocks {
        let kind = rng.below(if specials { 8 } else { 6 });
        let scale = 10f32.powf(rng.sym() * 3.0);
        for j in 0..32 {
            x.push(match kind {
                // amax = 127 exactly, so x·id = x and half-integers are ties.
                1 if j == 0 => 127.0,
                1 => (rng.below(254) as f32 - 127.0) + 0.5 * rng.below(2) as f32,
                2 => rng.sym() * 1e-40,
                3 => 0.0,
                4 if j == 5 => -scale,
                4 => rng.sym() * scale * 1e-3,
                6 if j == 3 => f32::NAN,
                7 if j == 9 => {
                    if rng.below(2) == 0 {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    }
                }
                _ => rng.sym() * scale,
            });
        }
    }
    x
}

/// A weight row: a mix of quantized random values and raw random blocks (every code, including
/// Q8_0's −128), with the f16 / E8M0 scales kept finite and moderate.
fn weight_row(rng: &mut Rng, ty: GgmlType, blocks: usize) -> Vec<u8> {
    let bs = ty.type_size();
    let vals: Vec<f32> = (0..blocks * 32).map(|_| rng.sym()).collect();
    let mut w = vec![0u8; blocks * bs];
    kvspool::quant::quantize_row(ty, &vals, &mut w).unwrap();
    for b in w.chunks_exact_mut(bs) {
        if rng.below(3) == 0 {
            for v in b.iter_mut() {
                *v = rng.next_u64() as u8;
            }
            let f16 = |r: &mut Rng| half::f16::from_f32(r.sym() * 0.1).to_le_bytes();
            match ty {
                GgmlType::MXFP4 => b[0] = 100 + rng.below(50) as u8,
                GgmlType::Q4_1 => {
                    let (d, m) = (f16(rng), f16(rng));
                    b[..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&m);
                }
                _ => b[..2].copy_from_slice(&f16(rng)),
            }
        }
    }
    w
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn quantize(level: SimdLevel, x: &[f32]) -> Q8Acts {
    let mut q = Q8Acts::new();
    q8act::quantize_q8_at(level, x, &mut q);
    q
}

#[test]
fn kernels_are_listed_and_vnni_implies_avx512() {
    let ks = Q8Kernel::available();
    assert_eq!(ks[0], Q8Kernel::Scalar);
    assert!(ks.iter().all(|k| k.level().is_available()));
    assert_eq!(
        q8act::q8_kernel(),
        Q8Kernel::for_level(kvspool::kernels::simd_level())
    );
    if kvspool::kernels::avx512_vnni_detected() {
        assert!(SimdLevel::Avx512.is_available());
        assert!(ks.contains(&Q8Kernel::Avx512Vnni));
    }
    eprintln!("q8 kernels here: {ks:?}");
}

#[test]
fn quantization_is_bit_identical_at_every_level() {
    let mut rng = Rng(1);
    for blocks in BLOCKS {
        for specials in [false, true] {
            let x = activations(&mut rng, blocks, specials);
            let want = quantize(SimdLevel::Scalar, &x);
            let w = want.view();
            for level in SimdLevel::available() {
                let got = quantize(level, &x);
                let g = got.view();
                assert_eq!(g.blocks(), blocks);
                assert_eq!(g.qs(), w.qs(), "{level} {blocks} blocks: values");
                assert_eq!(g.sum(), w.sum(), "{level} {blocks} blocks: sums");
                for b in 0..blocks {
                    assert!(same(g.d()[b], w.d()[b]), "{level} block {b}: d");
                    assert!(same(g.s()[b], w.s()[b]), "{level} block {b}: s");
                    let s: i32 = w.qs()[b].iter().map(|&q| q as i32).sum();
                    assert_eq!(w.sum()[b], s);
                    assert!(w.qs()[b].iter().all(|&q| q != i8::MIN));
                }
            }
        }
    }
}

#[test]
fn dot_is_bit_identical_at_every_kernel() {
    let mut rng = Rng(2);
    for ty in TYPES {
        for blocks in BLOCKS {
            for rep in 0..3 {
                let x = activations(&mut rng, blocks, rep == 2);
                let q = quantize(SimdLevel::Scalar, &x);
                let row = weight_row(&mut rng, ty, blocks);
                let want = q8act::dot_q8_at(Q8Kernel::Scalar, ty, &row, q.view());
                if rep < 2 {
                    assert!(want.is_finite(), "{ty} {blocks}: {want}");
                }
                for k in Q8Kernel::available() {
                    let got = q8act::dot_q8_at(k, ty, &row, q.view());
                    assert!(
                        same(got, want),
                        "{ty} {k} {blocks} blocks rep {rep}: {got:e} vs scalar {want:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn integer_block_sums_match_the_scalar_reference() {
    // One block at a time: the dot of a single block is f32(sumi)·scale, so with scale 1
    // (Q8_0 d = 1, activation amax = 127 → d = 1) the kernel returns the exact sumi.
    let mut rng = Rng(3);
    for _ in 0..200 {
        let mut row = vec![0u8; 34];
        row[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        for v in &mut row[2..] {
            *v = rng.next_u64() as u8;
        }
        let mut x: Vec<f32> = (0..32).map(|_| rng.below(255) as f32 - 127.0).collect();
        x[rng.below(32) as usize] = if rng.below(2) == 0 { 127.0 } else { -127.0 };
        let q = quantize(SimdLevel::Scalar, &x);
        let sumi = q8act::block_sumi(GgmlType::Q8_0, &row, &q.view().qs()[0]);
        for k in Q8Kernel::available() {
            let got = q8act::dot_q8_at(k, GgmlType::Q8_0, &row, q.view());
            assert_eq!(got, sumi as f32, "{k}");
        }
    }
}

#[test]
fn matvec_and_matmat_are_bit_identical_at_every_kernel() {
    let mut rng = Rng(4);
    for ty in TYPES {
        for (rows, blocks) in [(1usize, 1usize), (5, 3), (37, 17), (300, 90), (64, 129)] {
            let cols = blocks * 32;
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| weight_row(&mut rng, ty, blocks))
                .collect();
            let rb = blocks * ty.type_size();
            for n in [1usize, 3] {
                let x = activations(&mut rng, n * blocks, false);
                let mut want = vec![0.0f32; n * rows];
                for t in 0..n {
                    let q = quantize(SimdLevel::Scalar, &x[t * cols..(t + 1) * cols]);
                    for r in 0..rows {
                        want[t * rows + r] = q8act::dot_q8_at(
                            Q8Kernel::Scalar,
                            ty,
                            &w[r * rb..(r + 1) * rb],
                            q.view(),
                        );
                    }
                }
                for k in Q8Kernel::available() {
                    let mut y = vec![f32::NAN; n * rows];
                    q8act::matmat_q8_at(k, ty, &w, rows, cols, &x, n, &mut y);
                    assert!(
                        y.iter().zip(&want).all(|(a, b)| same(*a, *b)),
                        "{ty} {k} {rows}x{cols} n {n}: matmat differs"
                    );
                    if n == 1 {
                        let q = quantize(k.level(), &x);
                        let mut y1 = vec![f32::NAN; rows];
                        q8act::matvec_q8_at(k, ty, &w, rows, cols, q.view(), &mut y1);
                        assert!(
                            y1.iter().zip(&want).all(|(a, b)| same(*a, *b)),
                            "{ty} {k} {rows}x{cols}: matvec differs"
                        );
                    }
                }
            }
        }
    }
}

/// Several mat-vecs in one parallel region give exactly the rows of one mat-vec at a time,
/// whatever the mix of types, shapes and thread counts.
#[test]
fn matvec_multi_equals_separate_matvecs() {
    let mut rng = Rng(11);
    let shapes = [
        (GgmlType::MXFP4, 300usize, 90usize),
        (GgmlType::Q8_0, 7, 3),
        (GgmlType::MXFP4, 129, 17),
        (GgmlType::Q4_1, 1, 9),
    ];
    let data: Vec<(GgmlType, usize, usize, Vec<u8>, Q8Acts)> = shapes
        .iter()
        .map(|&(ty, rows, blocks)| {
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| weight_row(&mut rng, ty, blocks))
                .collect();
            let x = activations(&mut rng, blocks, false);
            (ty, rows, blocks * 32, w, quantize(SimdLevel::Scalar, &x))
        })
        .collect();
    let want: Vec<Vec<f32>> = data
        .iter()
        .map(|(ty, rows, cols, w, q)| {
            let mut y = vec![0.0f32; *rows];
            q8act::matvec_q8(*ty, w, *rows, *cols, q.view(), &mut y);
            y
        })
        .collect();
    for threads in [1usize, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut outs: Vec<Vec<f32>> = data.iter().map(|d| vec![f32::NAN; d.1]).collect();
        pool.install(|| {
            let jobs = data
                .iter()
                .zip(outs.iter_mut())
                .map(|((ty, rows, cols, w, q), out)| q8act::Q8Job {
                    ty: *ty,
                    w,
                    rows: *rows,
                    cols: *cols,
                    y: q.view(),
                    out,
                })
                .collect();
            q8act::matvec_q8_multi(jobs);
        });
        for (i, (o, w)) in outs.iter().zip(&want).enumerate() {
            assert!(
                o.iter().zip(w).all(|(a, b)| same(*a, *b)),
                "job {i}, {threads} threads"
            );
        }
    }
}

#[test]
fn matvec_is_independent_of_the_thread_count() {
    let mut rng = Rng(5);
    let (rows, blocks) = (500usize, 90usize);
    let cols = blocks * 32;
    let ty = GgmlType::MXFP4;
    let w: Vec<u8> = (0..rows)
        .flat_map(|_| weight_row(&mut rng, ty, blocks))
        .collect();
    let x = activations(&mut rng, blocks, false);
    let q = quantize(SimdLevel::Scalar, &x);
    let mut base = vec![0.0f32; rows];
    q8act::matvec_q8(ty, &w, rows, cols, q.view(), &mut base);
    for threads in [1usize, 2, 3, 7] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut y = vec![0.0f32; rows];
        pool.install(|| q8act::matvec_q8(ty, &w, rows, cols, q.view(), &mut y));
        assert!(
            y.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{threads} threads"
        );
    }
}

#[test]
#[should_panic(expected = "matvec_q8")]
fn matvec_rejects_a_short_activation() {
    let w = vec![0u8; 2 * 17 * 2];
    let q = quantize(SimdLevel::Scalar, &[0.0; 32]);
    let mut y = vec![0.0; 2];
    q8act::matvec_q8(GgmlType::MXFP4, &w, 2, 64, q.view(), &mut y);
}

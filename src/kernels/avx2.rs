//! AVX2 kernels (with FMA and F16C).
//!
//! Every kernel here carries `#[target_feature(enable = "avx2,fma,f16c")]`, so calling one from
//! outside a matching feature context is `unsafe`; the `checked` wrappers at the end assert
//! `SimdLevel::Avx2.is_available()` first and are the only callers. Inside, the only `unsafe`
//! operations are loads and stores through pointers derived from fixed-size arrays or from
//! slices whose lengths are checked right before.
//!
//! Nibbles are split at byte level (`pand`, `psrlw`), MXFP4 codes go through a 16-byte `pshufb`
//! table, then bytes are widened to 8 × i32 and converted. Dot products keep at least two
//! vector accumulators of 8 lanes.

use core::arch::x86_64::*;

use crate::gguf::GgmlType;
use crate::quant::{
    BlockMxfp4, BlockQ4_0, BlockQ4_1, BlockQ8_0, E8M0_TO_F32_HALF, KVALUES_MXFP4, QK,
};

/// Tile of the mat-mat micro-kernel: rows × tokens of accumulators (12 of 16 registers).
pub(super) const MR: usize = 3;
pub(super) const NR: usize = 4;

// ---------------------------------------------------------------------------------------------
// Loads and small helpers.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld_ps(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` is 8 initialized f32 (32 bytes); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_ps_bytes(b: &[u8; 32]) -> __m256 {
    // SAFETY: `b` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast::<f32>()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld_128(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast::<__m128i>()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st_ps(out: &mut [f32; 8], v: __m256) {
    // SAFETY: `out` is 8 writable f32; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
}

/// The four 8-element quarters of a 32-element block.
#[inline]
fn quarters<T>(b: &[T; 32]) -> [&[T; 8]; 4] {
    let (q, _) = b.as_chunks::<8>();
    [&q[0], &q[1], &q[2], &q[3]]
}

#[inline]
fn quarters_mut<T>(b: &mut [T; 32]) -> [&mut [T; 8]; 4] {
    let (q, _) = b.as_chunks_mut::<8>();
    let [a, b2, c, d] = q else {
        unreachable!("32 = 4 × 8")
    };
    [a, b2, c, d]
}

/// Bytes `OFF..OFF + 16` of a block.
#[inline]
fn qs16<const N: usize, const OFF: usize>(b: &[u8; N]) -> &[u8; 16] {
    b[OFF..OFF + 16].try_into().expect("16 bytes")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_bcast(lo: u8, hi: u8) -> __m256 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([lo, hi]) as i32));
    _mm256_broadcastss_ps(v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x2_bcast(b: [u8; 4]) -> (__m256, __m256) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(b)));
    (
        _mm256_broadcastss_ps(v),
        _mm256_broadcastss_ps(_mm_movehdup_ps(v)),
    )
}

/// 16 signed bytes → two vectors of 8 f32 (bytes 0..8, 8..16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8x16_to_ps(v: __m128i) -> [__m256; 2] {
    [
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(v))),
    ]
}

/// Low and high nibbles of 16 bytes, each as 16 bytes with values 0..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn split_nibbles(qs: &[u8; 16]) -> (__m128i, __m128i) {
    let v = ld_128(qs);
    let m = _mm_set1_epi8(0x0f);
    (
        _mm_and_si128(v, m),
        _mm_and_si128(_mm_srli_epi16::<4>(v), m),
    )
}

// ---------------------------------------------------------------------------------------------
// Per-block decoders: the 32 values (before the scale) as four vectors of 8, in element order.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_ints(b: &[u8; BlockQ8_0::BYTES]) -> [__m256; 4] {
    let [a, c] = i8x16_to_ps(ld_128(qs16::<34, 2>(b)));
    let [e, f] = i8x16_to_ps(ld_128(qs16::<34, 18>(b)));
    [a, c, e, f]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_ints(b: &[u8; BlockQ4_0::BYTES]) -> [__m256; 4] {
    let (lo, hi) = split_nibbles(qs16::<18, 2>(b));
    let eight = _mm_set1_epi8(8);
    let [a, c] = i8x16_to_ps(_mm_sub_epi8(lo, eight));
    let [e, f] = i8x16_to_ps(_mm_sub_epi8(hi, eight));
    [a, c, e, f]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_ints(b: &[u8; BlockQ4_1::BYTES]) -> [__m256; 4] {
    // Nibbles are 0..16, so the signed widening is exact.
    let (lo, hi) = split_nibbles(qs16::<20, 4>(b));
    let [a, c] = i8x16_to_ps(lo);
    let [e, f] = i8x16_to_ps(hi);
    [a, c, e, f]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mxfp4_table() -> __m128i {
    let k = KVALUES_MXFP4;
    _mm_setr_epi8(
        k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8], k[9], k[10], k[11], k[12], k[13],
        k[14], k[15],
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mxfp4_vals(b: &[u8; BlockMxfp4::BYTES], table: __m128i) -> [__m256; 4] {
    let (lo, hi) = split_nibbles(qs16::<17, 1>(b));
    let [a, c] = i8x16_to_ps(_mm_shuffle_epi8(table, lo));
    let [e, f] = i8x16_to_ps(_mm_shuffle_epi8(table, hi));
    [a, c, e, f]
}

/// `Σ_k v[k]·x[k]` over the block's 4 quarters, as a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot(v: [__m256; 4], xb: &[f32; 32]) -> __m256 {
    let x = quarters(xb);
    let p01 = _mm256_fmadd_ps(v[1], ld_ps(x[1]), _mm256_mul_ps(v[0], ld_ps(x[0])));
    let p23 = _mm256_fmadd_ps(v[3], ld_ps(x[3]), _mm256_mul_ps(v[2], ld_ps(x[2])));
    _mm256_add_ps(p01, p23)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

// ---------------------------------------------------------------------------------------------
// Block dot products. Two blocks per iteration into independent accumulators.

/// Split a `2·H`-element array into its halves.
#[inline]
fn split2<T, const H: usize, const N: usize>(a: &[T; N]) -> (&[T; H], &[T; H]) {
    let (x, y) = a.split_at(H);
    (x.try_into().expect("N = 2H"), y.try_into().expect("N = 2H"))
}

/// Drive `step` over the blocks of a row: pairs of blocks go to accumulators 0 and 1, an odd
/// last block to accumulator 0.
macro_rules! block_loop {
    ($row:expr, $x:expr, $bytes:expr, $zero:expr, $step:expr) => {{
        const B: usize = $bytes;
        let (pairs, rest) = $row.as_chunks::<{ 2 * B }>();
        let (xpairs, xrest) = $x.as_chunks::<{ 2 * QK }>();
        let (mut a0, mut a1) = ($zero, $zero);
        for (bp, xp) in pairs.iter().zip(xpairs) {
            let (b0, b1) = split2::<u8, B, { 2 * B }>(bp);
            let (x0, x1) = split2::<f32, QK, { 2 * QK }>(xp);
            a0 = $step(b0, x0, a0);
            a1 = $step(b1, x1, a1);
        }
        if let (Some(b), Some(xb)) = (rest.first_chunk::<B>(), xrest.first_chunk::<QK>()) {
            a0 = $step(b, xb, a0);
        }
        (a0, a1)
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_step(b: &[u8; BlockQ8_0::BYTES], xb: &[f32; QK], acc: __m256) -> __m256 {
    _mm256_fmadd_ps(f16_bcast(b[0], b[1]), block_dot(q8_0_ints(b), xb), acc)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_step(b: &[u8; BlockQ4_0::BYTES], xb: &[f32; QK], acc: __m256) -> __m256 {
    _mm256_fmadd_ps(f16_bcast(b[0], b[1]), block_dot(q4_0_ints(b), xb), acc)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mxfp4_step(b: &[u8; BlockMxfp4::BYTES], xb: &[f32; QK], acc: __m256) -> __m256 {
    let d = _mm256_set1_ps(E8M0_TO_F32_HALF[b[0] as usize]);
    _mm256_fmadd_ps(d, block_dot(mxfp4_vals(b, mxfp4_table()), xb), acc)
}

/// Q4_1: weights decoded with one FMA (`q·d + m`); quarters 0, 1 go to `acc.0`, 2, 3 to `acc.1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_step(
    b: &[u8; BlockQ4_1::BYTES],
    xb: &[f32; QK],
    acc: (__m256, __m256),
) -> (__m256, __m256) {
    let (d, m) = f16x2_bcast([b[0], b[1], b[2], b[3]]);
    let q = q4_1_ints(b);
    let x = quarters(xb);
    let a = _mm256_fmadd_ps(_mm256_fmadd_ps(q[0], d, m), ld_ps(x[0]), acc.0);
    let c = _mm256_fmadd_ps(_mm256_fmadd_ps(q[2], d, m), ld_ps(x[2]), acc.1);
    (
        _mm256_fmadd_ps(_mm256_fmadd_ps(q[1], d, m), ld_ps(x[1]), a),
        _mm256_fmadd_ps(_mm256_fmadd_ps(q[3], d, m), ld_ps(x[3]), c),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockQ8_0::BYTES, _mm256_setzero_ps(), q8_0_step);
    hsum(_mm256_add_ps(a0, a1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockQ4_0::BYTES, _mm256_setzero_ps(), q4_0_step);
    hsum(_mm256_add_ps(a0, a1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let z = _mm256_setzero_ps();
    let (a0, a1) = block_loop!(row, x, BlockQ4_1::BYTES, (z, z), q4_1_step);
    hsum(_mm256_add_ps(
        _mm256_add_ps(a0.0, a1.0),
        _mm256_add_ps(a0.1, a1.1),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_mxfp4(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockMxfp4::BYTES, _mm256_setzero_ps(), mxfp4_step);
    hsum(_mm256_add_ps(a0, a1))
}

// ---------------------------------------------------------------------------------------------
// Element formats: 8 elements per step, 4 accumulators (32 elements per iteration), one
// zero-padded step for the tail.

macro_rules! dot_elementwise {
    ($name:ident, $t:ty, $bytes:literal, $decode:ident) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(row: &[$t], x: &[f32]) -> f32 {
            let (ws, wtail) = row.as_chunks::<{ 4 * $bytes }>();
            let (xs, xtail) = x.as_chunks::<32>();
            let z = _mm256_setzero_ps();
            let mut acc = (z, z, z, z);
            for (w, xv) in ws.iter().zip(xs) {
                let (w01, w23) = split2::<$t, { 2 * $bytes }, { 4 * $bytes }>(w);
                let (w0, w1) = split2::<$t, $bytes, { 2 * $bytes }>(w01);
                let (w2, w3) = split2::<$t, $bytes, { 2 * $bytes }>(w23);
                let (x01, x23) = split2::<f32, 16, 32>(xv);
                let (x0, x1) = split2::<f32, 8, 16>(x01);
                let (x2, x3) = split2::<f32, 8, 16>(x23);
                acc.0 = _mm256_fmadd_ps($decode(w0), ld_ps(x0), acc.0);
                acc.1 = _mm256_fmadd_ps($decode(w1), ld_ps(x1), acc.1);
                acc.2 = _mm256_fmadd_ps($decode(w2), ld_ps(x2), acc.2);
                acc.3 = _mm256_fmadd_ps($decode(w3), ld_ps(x3), acc.3);
            }
            // Up to 31 remaining elements: whole 8-element steps, then one padded step.
            let (wt, wtt) = wtail.as_chunks::<$bytes>();
            let (xt, xtt) = xtail.as_chunks::<8>();
            let mut tail = z;
            for (w, xv) in wt.iter().zip(xt) {
                tail = _mm256_fmadd_ps($decode(w), ld_ps(xv), tail);
            }
            if !xtt.is_empty() {
                let mut wpad = [<$t>::default(); $bytes];
                wpad[..wtt.len()].copy_from_slice(wtt);
                let mut xpad = [0.0f32; 8];
                xpad[..xtt.len()].copy_from_slice(xtt);
                tail = _mm256_fmadd_ps($decode(&wpad), ld_ps(&xpad), tail);
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc.0, acc.2), _mm256_add_ps(acc.1, acc.3));
            hsum(_mm256_add_ps(s, tail))
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dec_f16(b: &[u8; 16]) -> __m256 {
    _mm256_cvtph_ps(ld_128(b))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dec_bf16(b: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld_128(b))))
}

dot_elementwise!(dot_f32_bytes, u8, 32, ld_ps_bytes);
dot_elementwise!(dot_f16, u8, 16, dec_f16);
dot_elementwise!(dot_bf16, u8, 16, dec_bf16);
dot_elementwise!(dot_f32_slices, f32, 8, ld_ps);

// ---------------------------------------------------------------------------------------------
// Entry points (called by `kernels` after checking lengths and the CPU level).

/// One row · `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => dot_f32_bytes(row, x),
        GgmlType::F16 => dot_f16(row, x),
        GgmlType::BF16 => dot_bf16(row, x),
        GgmlType::Q8_0 => dot_q8_0(row, x),
        GgmlType::Q4_0 => dot_q4_0(row, x),
        GgmlType::Q4_1 => dot_q4_1(row, x),
        GgmlType::MXFP4 => dot_mxfp4(row, x),
        _ => unreachable!("type checked by the caller"),
    }
}

/// `y[i] = row_i · x` for consecutive rows of `row_bytes` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows(ty: GgmlType, w: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) {
    macro_rules! rows {
        ($f:ident) => {
            for (yi, row) in y.iter_mut().zip(w.chunks_exact(row_bytes)) {
                *yi = $f(row, x);
            }
        };
    }
    match ty {
        GgmlType::F32 => rows!(dot_f32_bytes),
        GgmlType::F16 => rows!(dot_f16),
        GgmlType::BF16 => rows!(dot_bf16),
        GgmlType::Q8_0 => rows!(dot_q8_0),
        GgmlType::Q4_0 => rows!(dot_q4_0),
        GgmlType::Q4_1 => rows!(dot_q4_1),
        GgmlType::MXFP4 => rows!(dot_mxfp4),
        _ => unreachable!("type checked by the caller"),
    }
}

/// Decode one row to f32, bit-identical to `quant::dequantize_row` (no FMA).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dequant_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    macro_rules! blocks {
        ($bytes:expr, |$b:ident| $scale:expr, $vals:expr, |$v:ident, $s:ident| $f:expr) => {{
            let (blocks, _) = row.as_chunks::<{ $bytes }>();
            for ($b, o) in blocks.iter().zip(out.as_chunks_mut::<QK>().0) {
                let $s = $scale;
                let vals: [__m256; 4] = $vals;
                for (o, $v) in quarters_mut(o).into_iter().zip(vals) {
                    st_ps(o, $f);
                }
            }
        }};
    }
    match ty {
        GgmlType::Q8_0 => blocks!(
            BlockQ8_0::BYTES,
            |b| f16_bcast(b[0], b[1]),
            q8_0_ints(b),
            |v, d| _mm256_mul_ps(v, d)
        ),
        GgmlType::Q4_0 => blocks!(
            BlockQ4_0::BYTES,
            |b| f16_bcast(b[0], b[1]),
            q4_0_ints(b),
            |v, d| _mm256_mul_ps(v, d)
        ),
        GgmlType::Q4_1 => blocks!(
            BlockQ4_1::BYTES,
            |b| f16x2_bcast([b[0], b[1], b[2], b[3]]),
            q4_1_ints(b),
            |v, dm| _mm256_add_ps(_mm256_mul_ps(v, dm.0), dm.1)
        ),
        GgmlType::MXFP4 => {
            let table = mxfp4_table();
            blocks!(
                BlockMxfp4::BYTES,
                |b| _mm256_set1_ps(E8M0_TO_F32_HALF[b[0] as usize]),
                mxfp4_vals(b, table),
                |v, d| _mm256_mul_ps(v, d)
            )
        }
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => {
            let per = if ty == GgmlType::F32 { 32 } else { 16 };
            let full = out.len() / 8;
            let (os, otail) = out.as_chunks_mut::<8>();
            for (o, w) in os.iter_mut().zip(row.chunks_exact(per)) {
                let v = match ty {
                    GgmlType::F32 => ld_ps_bytes(w.try_into().expect("32 bytes")),
                    GgmlType::F16 => dec_f16(w.try_into().expect("16 bytes")),
                    _ => dec_bf16(w.try_into().expect("16 bytes")),
                };
                st_ps(o, v);
            }
            if !otail.is_empty() {
                super::scalar::dequant_row(ty, &row[full * per..], otail);
            }
        }
        _ => unreachable!("type checked by the caller"),
    }
}

// ---------------------------------------------------------------------------------------------
// Mat-mat micro-kernel on decoded rows.

/// `out[t * ldo + r] = w_r · x_t` for `r < mr`, `t < nt`; rows of `w` and `x` have stride `cols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn tile_dots(
    w: &[f32],
    mr: usize,
    x: &[f32],
    nt: usize,
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(w.len() >= mr * cols && x.len() >= nt * cols);
    assert!(nt == 0 || mr == 0 || out.len() >= (nt - 1) * ldo + mr);
    let mut r = 0;
    while r < mr {
        let rr = (mr - r).min(MR);
        let wr = &w[r * cols..(r + rr) * cols];
        let mut t = 0;
        while t < nt {
            let tt = (nt - t).min(NR);
            let xt = &x[t * cols..(t + tt) * cols];
            let o = &mut out[t * ldo + r..];
            macro_rules! k {
                ($($a:literal $b:literal),*) => {
                    match (rr, tt) {
                        $(($a, $b) => micro::<$a, $b>(wr, xt, cols, o, ldo),)*
                        _ => unreachable!(),
                    }
                };
            }
            k!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4);
            t += tt;
        }
        r += rr;
    }
}

// Index loops over the register tile read clearer than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn micro<const R: usize, const T: usize>(
    w: &[f32],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(w.len() >= R * cols && x.len() >= T * cols);
    assert!(out.len() > (T - 1) * ldo + (R - 1));
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = cols / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut k = 0;
    while k < full {
        // SAFETY: k + 8 <= full <= cols, r < R and t < T, so every load reads
        // w[r*cols + k .. +8] or x[t*cols + k .. +8], in bounds by the asserts.
        unsafe {
            let mut wv = [_mm256_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(wp.add(r * cols + k));
            }
            for t in 0..T {
                let xv = _mm256_loadu_ps(xp.add(t * cols + k));
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
        k += 8;
    }
    if full < cols {
        let n = cols - full;
        let mut wv = [_mm256_setzero_ps(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            let mut pad = [0.0f32; 8];
            pad[..n].copy_from_slice(&w[r * cols + full..(r + 1) * cols]);
            *v = ld_ps(&pad);
        }
        for t in 0..T {
            let mut pad = [0.0f32; 8];
            pad[..n].copy_from_slice(&x[t * cols + full..(t + 1) * cols]);
            let xv = ld_ps(&pad);
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            out[t * ldo + r] = hsum(*a);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 vector helpers.

/// `Σ a[i]·b[i]` (equal lengths checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_slices(a, b)
}

/// `y += a·x` with one FMA per element (equal lengths checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let av = _mm256_set1_ps(a);
    let (xs, xt) = x.as_chunks::<8>();
    let (ys, yt) = y.as_chunks_mut::<8>();
    for (xv, yv) in xs.iter().zip(ys.iter_mut()) {
        st_ps(yv, _mm256_fmadd_ps(av, ld_ps(xv), ld_ps(yv)));
    }
    for (yi, &xi) in yt.iter_mut().zip(xt) {
        *yi = a.mul_add(xi, *yi);
    }
}

/// `Σ x[i]²`: squares rounded to f32, summed in f64 over 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum_squares_f64(x: &[f32]) -> f64 {
    let (xs, xt) = x.as_chunks::<8>();
    let mut a0 = _mm256_setzero_pd();
    let mut a1 = _mm256_setzero_pd();
    for xv in xs {
        let v = ld_ps(xv);
        let sq = _mm256_mul_ps(v, v);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
    }
    let s = _mm256_add_pd(a0, a1);
    let h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd::<1>(s));
    let mut s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for &v in xt {
        s += (v * v) as f64;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Safe entry points for the dispatcher.

/// `exp` of 8 lanes by the recipe of `scalar::expc` (same operations, same bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    use super::scalar::expc::*;
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(MIN_X));
    let xc = _mm256_min_ps(x, _mm256_set1_ps(MAX_X));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2E),
    ));
    let nn = _mm256_sub_ps(_mm256_setzero_ps(), n);
    let r = _mm256_fmadd_ps(
        nn,
        _mm256_set1_ps(LN2_LO),
        _mm256_fmadd_ps(nn, _mm256_set1_ps(LN2_HI), xc),
    );
    let mut p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    let res = _mm256_mul_ps(y, pow);
    let res = _mm256_blendv_ps(res, _mm256_setzero_ps(), tiny);
    _mm256_blendv_ps(res, x, nan)
}

/// `x[i] = exp(x[i] − m)`; returns `Σ x[i]` (8 lanes, then the tail in order).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mv = _mm256_set1_ps(m);
    let (xs, xt) = x.as_chunks_mut::<8>();
    let mut acc = _mm256_setzero_ps();
    for v in xs.iter_mut() {
        let e = exp8(_mm256_sub_ps(ld_ps(v), mv));
        acc = _mm256_add_ps(acc, e);
        st_ps(v, e);
    }
    let mut s = hsum(acc);
    for v in xt.iter_mut() {
        *v = super::scalar::exp_one(*v - m);
        s += *v;
    }
    s
}

/// FP8 E4M3 codes to f32, 8 at a time (see the AVX-512 version for the bit recipe).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e4m3_decode(src: &[u8], out: &mut [f32]) {
    let n = src.len().min(out.len());
    let (src, out) = (&src[..n], &mut out[..n]);
    let (ss, st) = src.as_chunks::<16>();
    let (os, ot) = out.as_chunks_mut::<16>();
    let scale = _mm256_set1_ps(f32::from_bits((120 + 127) << 23));
    for (b, o) in ss.iter().zip(os.iter_mut()) {
        let bytes = ld_128(b);
        let (o0, o1) = o.split_at_mut(8);
        for (half, dst) in [(bytes, o0), (_mm_srli_si128::<8>(bytes), o1)] {
            let v = _mm256_cvtepu8_epi32(half);
            let mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7f));
            let f = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<20>(mag)), scale);
            let sign = _mm256_slli_epi32::<24>(_mm256_and_si256(v, _mm256_set1_epi32(0x80)));
            let f = _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(f), sign));
            let nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f)));
            let r = _mm256_blendv_ps(f, _mm256_set1_ps(f32::NAN), nan);
            let dst: &mut [f32; 8] = dst.try_into().expect("8 lanes");
            st_ps(dst, r);
        }
    }
    super::scalar::e4m3_decode(st, ot);
}

/// `out[q·ldo + i] = Σ_j qt[j·nq + q] · tile[j·16 + i]` (a column-major bf16 tile of 16
/// columns, the first `c` written; queries transposed): per tile row two 8-value halves widened
/// to floats, then two FMAs per query (up to four queries per pass), in `j` order — the scalar
/// order, lane by lane.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn col_dots_bf16(
    qt: &[f32],
    nq: usize,
    tile: &[u16],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let n = qt.len() / nq.max(1);
    let (rows, _) = tile[..n * 16].as_chunks::<8>();
    let widen = |h: &[u16; 8]| {
        // SAFETY: `h` is 16 readable bytes; `loadu` has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(h.as_ptr().cast::<__m128i>()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    };
    let mut q0 = 0;
    while q0 < nq {
        let m = (nq - q0).min(4);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for j in 0..n {
            let lo = widen(&rows[2 * j]);
            let hi = widen(&rows[2 * j + 1]);
            for (k, a) in acc.iter_mut().enumerate().take(m) {
                let qv = _mm256_set1_ps(qt[j * nq + q0 + k]);
                a[0] = _mm256_fmadd_ps(qv, lo, a[0]);
                a[1] = _mm256_fmadd_ps(qv, hi, a[1]);
            }
        }
        for (k, a) in acc.iter().enumerate().take(m) {
            let mut lanes = [[0.0f32; 8]; 2];
            st_ps(&mut lanes[0], a[0]);
            st_ps(&mut lanes[1], a[1]);
            let flat = lanes.as_flattened();
            out[(q0 + k) * ldo..(q0 + k) * ldo + c].copy_from_slice(&flat[..c]);
        }
        q0 += m;
    }
}

/// `out[q·ldo + i] = qs[q] · keys[i]` (one [`dot_f32`] per pair).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dots_multi(
    qs: &[f32],
    d: usize,
    keys: &[f32],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for (qi, q) in qs.chunks_exact(d).enumerate() {
        for i in 0..c {
            out[qi * ldo + i] = dot_f32(q, &keys[i * d..(i + 1) * d]);
        }
    }
}

/// `accs[q] += Σᵢ w[q·ldw + i] · values[i]` (one [`axpy`] per row, rows in order).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn axpys_multi(
    w: &[f32],
    ldw: usize,
    values: &[f32],
    c: usize,
    accs: &mut [f32],
    d: usize,
) {
    for (qi, acc) in accs.chunks_exact_mut(d).enumerate() {
        for i in 0..c {
            axpy(w[qi * ldw + i], &values[i * d..(i + 1) * d], acc);
        }
    }
}

/// Safe wrappers: each asserts (a cached check) that the CPU supports this level, then calls
/// the `#[target_feature]` kernel of the same name. This is the only place the kernels above
/// are called from outside their feature context.
pub(super) mod checked {
    use crate::gguf::GgmlType;
    use crate::kernels::SimdLevel;

    macro_rules! wrap {
        ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {$(
            #[inline]
            pub(in crate::kernels) fn $name($($a: $t),*) -> $r {
                assert!(SimdLevel::Avx2.is_available(), "CPU lacks Avx2");
                // SAFETY: the assertion above established that the CPU has AVX2, FMA and F16C, the
                // features this kernel is compiled for.
                unsafe { super::$name($($a),*) }
            }
        )*};
    }

    wrap! {
        dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32;
        dot_rows(ty: GgmlType, w: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) -> ();
        dequant_row(ty: GgmlType, row: &[u8], out: &mut [f32]) -> ();
        tile_dots(
            w: &[f32], mr: usize, x: &[f32], nt: usize, cols: usize, out: &mut [f32], ldo: usize
        ) -> ();
        dot_f32(a: &[f32], b: &[f32]) -> f32;
        axpy(a: f32, x: &[f32], y: &mut [f32]) -> ();
        sum_squares_f64(x: &[f32]) -> f64;
        exp_shift_sum(x: &mut [f32], m: f32) -> f32;
        e4m3_decode(src: &[u8], out: &mut [f32]) -> ();
        dots_multi(qs: &[f32], d: usize, keys: &[f32], c: usize, out: &mut [f32], ldo: usize) -> ();
        col_dots_bf16(qt: &[f32], nq: usize, tile: &[u16], c: usize, out: &mut [f32], ldo: usize) -> ();
        axpys_multi(w: &[f32], ldw: usize, values: &[f32], c: usize, accs: &mut [f32], d: usize) -> ();
    }
}

//! AVX-512 kernels (F + BW + VL, with FMA and F16C).
//!
//! Every kernel here carries
//! `#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]`,
//! so calling one from outside a matching feature context is `unsafe`; the `checked` wrappers
//! at the end assert `SimdLevel::Avx512.is_available()` first and are the only callers. Inside,
//! the only `unsafe` operations are loads and stores through pointers derived from fixed-size
//! arrays or from slices whose lengths are checked right before.
//!
//! Weight blocks are decoded to f32 in registers: bytes are widened to 32-bit lanes
//! (`vpmovzxbd`/`vpmovsxbd`) and converted (Q8_0, Q4_0), or nibbles index a 16-entry `vpermps`
//! table (MXFP4 values; Q4_1's `k·d + m` built with one FMA per block); then FMA with x.
//! Dot products keep at least two vector accumulators of 16 lanes.

use core::arch::x86_64::*;

use crate::gguf::GgmlType;
use crate::quant::{
    BlockMxfp4, BlockQ4_0, BlockQ4_1, BlockQ8_0, E8M0_TO_F32_HALF, KVALUES_MXFP4, QK,
};

/// Column tile of the mat-mat micro-kernel: rows × tokens of accumulators.
pub(super) const MR: usize = 4;
pub(super) const NR: usize = 4;

// ---------------------------------------------------------------------------------------------
// Loads and small helpers.

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn ld_ps(x: &[f32; 16]) -> __m512 {
    // SAFETY: `x` is 16 initialized f32 (64 bytes); `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ld_ps_bytes(b: &[u8; 64]) -> __m512 {
    // SAFETY: `b` is 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(b.as_ptr().cast::<f32>()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn ld_128(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast::<__m128i>()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn ld_256(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast::<__m256i>()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn st_ps(out: &mut [f32; 16], v: __m512) {
    // SAFETY: `out` is 16 writable f32; `storeu` has no alignment requirement.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) }
}

/// The two 16-element halves of a 32-element block.
#[inline]
fn halves<T>(b: &[T; 32]) -> (&[T; 16], &[T; 16]) {
    let (a, c) = b.split_at(16);
    (a.try_into().expect("16"), c.try_into().expect("16"))
}

#[inline]
fn halves_mut<T>(b: &mut [T; 32]) -> (&mut [T; 16], &mut [T; 16]) {
    let (a, c) = b.split_at_mut(16);
    (a.try_into().expect("16"), c.try_into().expect("16"))
}

/// Bytes `OFF..OFF + 16` of a block.
#[inline]
fn qs16<const N: usize, const OFF: usize>(b: &[u8; N]) -> &[u8; 16] {
    b[OFF..OFF + 16].try_into().expect("16 bytes")
}

/// Broadcast of the f16 at bytes 0..2.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16_bcast(lo: u8, hi: u8) -> __m512 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([lo, hi]) as i32));
    _mm512_broadcastss_ps(v)
}

/// Broadcasts of the two f16 in the first 4 bytes (Q4_1's `d` and `m`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16x2_bcast(b: [u8; 4]) -> (__m512, __m512) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(b)));
    (
        _mm512_broadcastss_ps(v),
        _mm512_broadcastss_ps(_mm_movehdup_ps(v)),
    )
}

/// Sum of the 16 lanes in a fixed tree order: lane `l` + lane `l + 8`, then `+4`, `+2`, `+1`.
/// [`reduce16`] uses the same order per vector, so every kernel's result is independent of
/// which micro-kernel shape (or thread split) produced it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn hsum(v: __m512) -> f32 {
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
    );
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mxfp4_table() -> __m512 {
    let k = KVALUES_MXFP4;
    _mm512_setr_ps(
        k[0] as f32,
        k[1] as f32,
        k[2] as f32,
        k[3] as f32,
        k[4] as f32,
        k[5] as f32,
        k[6] as f32,
        k[7] as f32,
        k[8] as f32,
        k[9] as f32,
        k[10] as f32,
        k[11] as f32,
        k[12] as f32,
        k[13] as f32,
        k[14] as f32,
        k[15] as f32,
    )
}

/// f32 values of the low and high nibbles of 16 bytes (elements 0..16 and 16..32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> (__m512i, __m512i) {
    let q = _mm512_cvtepu8_epi32(ld_128(qs));
    (
        _mm512_and_si512(q, _mm512_set1_epi32(0x0f)),
        _mm512_srli_epi32::<4>(q),
    )
}

// ---------------------------------------------------------------------------------------------
// Per-block decoders: values of the low half (elements 0..16) and high half (16..32).

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q8_0_ints(b: &[u8; BlockQ8_0::BYTES]) -> (__m512, __m512) {
    let q0 = _mm512_cvtepi8_epi32(ld_128(qs16::<34, 2>(b)));
    let q1 = _mm512_cvtepi8_epi32(ld_128(qs16::<34, 18>(b)));
    (_mm512_cvtepi32_ps(q0), _mm512_cvtepi32_ps(q1))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_0_ints(b: &[u8; BlockQ4_0::BYTES]) -> (__m512, __m512) {
    let (lo, hi) = nibbles(qs16::<18, 2>(b));
    let eight = _mm512_set1_epi32(8);
    (
        _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)),
        _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_1_ints(b: &[u8; BlockQ4_1::BYTES]) -> (__m512, __m512) {
    let (lo, hi) = nibbles(qs16::<20, 4>(b));
    (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mxfp4_vals(b: &[u8; BlockMxfp4::BYTES], table: __m512) -> (__m512, __m512) {
    let q = _mm512_cvtepu8_epi32(ld_128(qs16::<17, 1>(b)));
    // vpermps uses only the low 4 bits of each index lane.
    (
        _mm512_permutexvar_ps(q, table),
        _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), table),
    )
}

// ---------------------------------------------------------------------------------------------
// Block dot products: Σ over blocks of d · (q_lo·x_lo + q_hi·x_hi) (Q4_1: FMA-decoded weights).
// Two blocks per iteration into independent accumulators (kept in registers).

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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q8_0_step(b: &[u8; BlockQ8_0::BYTES], xb: &[f32; QK], acc: __m512) -> __m512 {
    let (q0, q1) = q8_0_ints(b);
    let (x0, x1) = halves(xb);
    let p = _mm512_fmadd_ps(q1, ld_ps(x1), _mm512_mul_ps(q0, ld_ps(x0)));
    _mm512_fmadd_ps(f16_bcast(b[0], b[1]), p, acc)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_0_step(b: &[u8; BlockQ4_0::BYTES], xb: &[f32; QK], acc: __m512) -> __m512 {
    let (q0, q1) = q4_0_ints(b);
    let (x0, x1) = halves(xb);
    let p = _mm512_fmadd_ps(q1, ld_ps(x1), _mm512_mul_ps(q0, ld_ps(x0)));
    _mm512_fmadd_ps(f16_bcast(b[0], b[1]), p, acc)
}

/// Q4_1 block: the 16 possible weights `k·d + m` (one FMA each, i.e. `fma(q, d, m)`), then a
/// table lookup per nibble (vpermps uses only the low 4 bits of each index lane) and an FMA
/// with x. Cheaper than converting the nibbles and decoding each with an FMA.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q4_1_step(
    b: &[u8; BlockQ4_1::BYTES],
    xb: &[f32; QK],
    acc: (__m512, __m512),
) -> (__m512, __m512) {
    let (d, m) = f16x2_bcast([b[0], b[1], b[2], b[3]]);
    let iota = _mm512_setr_ps(
        0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
    );
    let table = _mm512_fmadd_ps(iota, d, m);
    let q = _mm512_cvtepu8_epi32(ld_128(qs16::<20, 4>(b)));
    let w0 = _mm512_permutexvar_ps(q, table);
    let w1 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), table);
    let (x0, x1) = halves(xb);
    (
        _mm512_fmadd_ps(w0, ld_ps(x0), acc.0),
        _mm512_fmadd_ps(w1, ld_ps(x1), acc.1),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mxfp4_step(b: &[u8; BlockMxfp4::BYTES], xb: &[f32; QK], acc: __m512) -> __m512 {
    let (v0, v1) = mxfp4_vals(b, mxfp4_table());
    let (x0, x1) = halves(xb);
    let p = _mm512_fmadd_ps(v1, ld_ps(x1), _mm512_mul_ps(v0, ld_ps(x0)));
    _mm512_fmadd_ps(_mm512_set1_ps(E8M0_TO_F32_HALF[b[0] as usize]), p, acc)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockQ8_0::BYTES, _mm512_setzero_ps(), q8_0_step);
    hsum(_mm512_add_ps(a0, a1))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockQ4_0::BYTES, _mm512_setzero_ps(), q4_0_step);
    hsum(_mm512_add_ps(a0, a1))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let z = _mm512_setzero_ps();
    let (a0, a1) = block_loop!(row, x, BlockQ4_1::BYTES, (z, z), q4_1_step);
    let s = _mm512_add_ps(_mm512_add_ps(a0.0, a1.0), _mm512_add_ps(a0.1, a1.1));
    hsum(s)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_mxfp4(row: &[u8], x: &[f32]) -> f32 {
    let (a0, a1) = block_loop!(row, x, BlockMxfp4::BYTES, _mm512_setzero_ps(), mxfp4_step);
    hsum(_mm512_add_ps(a0, a1))
}

// ---------------------------------------------------------------------------------------------
// Element formats: 16 elements per step, 4 accumulators (64 elements per iteration), one
// zero-padded step for the tail.

macro_rules! dot_elementwise {
    ($name:ident, $t:ty, $bytes:literal, $decode:ident) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        fn $name(row: &[$t], x: &[f32]) -> f32 {
            let (ws, wtail) = row.as_chunks::<{ 4 * $bytes }>();
            let (xs, xtail) = x.as_chunks::<64>();
            let z = _mm512_setzero_ps();
            let mut acc = (z, z, z, z);
            for (w, xv) in ws.iter().zip(xs) {
                let (w01, w23) = split2::<$t, { 2 * $bytes }, { 4 * $bytes }>(w);
                let (w0, w1) = split2::<$t, $bytes, { 2 * $bytes }>(w01);
                let (w2, w3) = split2::<$t, $bytes, { 2 * $bytes }>(w23);
                let (x01, x23) = split2::<f32, 32, 64>(xv);
                let (x0, x1) = split2::<f32, 16, 32>(x01);
                let (x2, x3) = split2::<f32, 16, 32>(x23);
                acc.0 = _mm512_fmadd_ps($decode(w0), ld_ps(x0), acc.0);
                acc.1 = _mm512_fmadd_ps($decode(w1), ld_ps(x1), acc.1);
                acc.2 = _mm512_fmadd_ps($decode(w2), ld_ps(x2), acc.2);
                acc.3 = _mm512_fmadd_ps($decode(w3), ld_ps(x3), acc.3);
            }
            // Up to 63 remaining elements: whole 16-element steps, then one padded step.
            let (wt, wtt) = wtail.as_chunks::<$bytes>();
            let (xt, xtt) = xtail.as_chunks::<16>();
            let mut tail = z;
            for (w, xv) in wt.iter().zip(xt) {
                tail = _mm512_fmadd_ps($decode(w), ld_ps(xv), tail);
            }
            if !xtt.is_empty() {
                let mut wpad = [<$t>::default(); $bytes];
                wpad[..wtt.len()].copy_from_slice(wtt);
                let mut xpad = [0.0f32; 16];
                xpad[..xtt.len()].copy_from_slice(xtt);
                tail = _mm512_fmadd_ps($decode(&wpad), ld_ps(&xpad), tail);
            }
            let s = _mm512_add_ps(_mm512_add_ps(acc.0, acc.2), _mm512_add_ps(acc.1, acc.3));
            hsum(_mm512_add_ps(s, tail))
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dec_f16(b: &[u8; 32]) -> __m512 {
    _mm512_cvtph_ps(ld_256(b))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dec_bf16(b: &[u8; 32]) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(ld_256(b))))
}

dot_elementwise!(dot_f32_bytes, u8, 64, ld_ps_bytes);
dot_elementwise!(dot_f16, u8, 32, dec_f16);
dot_elementwise!(dot_bf16, u8, 32, dec_bf16);
dot_elementwise!(dot_f32_slices, f32, 16, ld_ps);

// ---------------------------------------------------------------------------------------------
// Entry points (called by `kernels` after checking lengths and the CPU level).

/// One row · `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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

/// Decode one row to f32, bit-identical to `quant::dequantize_row` (products and sums are
/// rounded separately, as in the reference; no FMA).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q8_0 => {
            let (blocks, _) = row.as_chunks::<{ BlockQ8_0::BYTES }>();
            for (b, o) in blocks.iter().zip(out.as_chunks_mut::<QK>().0) {
                let d = f16_bcast(b[0], b[1]);
                let (q0, q1) = q8_0_ints(b);
                let (o0, o1) = halves_mut(o);
                st_ps(o0, _mm512_mul_ps(q0, d));
                st_ps(o1, _mm512_mul_ps(q1, d));
            }
        }
        GgmlType::Q4_0 => {
            let (blocks, _) = row.as_chunks::<{ BlockQ4_0::BYTES }>();
            for (b, o) in blocks.iter().zip(out.as_chunks_mut::<QK>().0) {
                let d = f16_bcast(b[0], b[1]);
                let (q0, q1) = q4_0_ints(b);
                let (o0, o1) = halves_mut(o);
                st_ps(o0, _mm512_mul_ps(q0, d));
                st_ps(o1, _mm512_mul_ps(q1, d));
            }
        }
        GgmlType::Q4_1 => {
            let (blocks, _) = row.as_chunks::<{ BlockQ4_1::BYTES }>();
            for (b, o) in blocks.iter().zip(out.as_chunks_mut::<QK>().0) {
                let (d, m) = f16x2_bcast([b[0], b[1], b[2], b[3]]);
                let (q0, q1) = q4_1_ints(b);
                let (o0, o1) = halves_mut(o);
                st_ps(o0, _mm512_add_ps(_mm512_mul_ps(q0, d), m));
                st_ps(o1, _mm512_add_ps(_mm512_mul_ps(q1, d), m));
            }
        }
        GgmlType::MXFP4 => {
            let table = mxfp4_table();
            let (blocks, _) = row.as_chunks::<{ BlockMxfp4::BYTES }>();
            for (b, o) in blocks.iter().zip(out.as_chunks_mut::<QK>().0) {
                let d = _mm512_set1_ps(E8M0_TO_F32_HALF[b[0] as usize]);
                let (v0, v1) = mxfp4_vals(b, table);
                let (o0, o1) = halves_mut(o);
                st_ps(o0, _mm512_mul_ps(v0, d));
                st_ps(o1, _mm512_mul_ps(v1, d));
            }
        }
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => {
            let per = if ty == GgmlType::F32 { 64 } else { 32 };
            let full = out.len() / 16;
            let (os, otail) = out.as_chunks_mut::<16>();
            for (o, w) in os.iter_mut().zip(row.chunks_exact(per)) {
                let v = match ty {
                    GgmlType::F32 => ld_ps_bytes(w.try_into().expect("64 bytes")),
                    GgmlType::F16 => dec_f16(w.try_into().expect("32 bytes")),
                    _ => dec_bf16(w.try_into().expect("32 bytes")),
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
            k!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4, 4 1, 4 2, 4 3, 4 4);
            t += tt;
        }
        r += rr;
    }
}

/// R rows × T tokens of dot products, each accumulated in one 16-lane register.
// Index loops over the register tile read clearer than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn micro<const R: usize, const T: usize>(
    w: &[f32],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(w.len() >= R * cols && x.len() >= T * cols);
    assert!(out.len() > (T - 1) * ldo + (R - 1));
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let full = cols / 16 * 16;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut k = 0;
    while k < full {
        // SAFETY: k + 16 <= full <= cols, r < R and t < T, so every load reads
        // w[r*cols + k .. r*cols + k + 16] or x[t*cols + k .. +16], in bounds by the asserts.
        unsafe {
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(wp.add(r * cols + k));
            }
            for t in 0..T {
                let xv = _mm512_loadu_ps(xp.add(t * cols + k));
                for r in 0..R {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
        k += 16;
    }
    if full < cols {
        let n = cols - full;
        let mut wv = [_mm512_setzero_ps(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            let mut pad = [0.0f32; 16];
            pad[..n].copy_from_slice(&w[r * cols + full..(r + 1) * cols]);
            *v = ld_ps(&pad);
        }
        for t in 0..T {
            let mut pad = [0.0f32; 16];
            pad[..n].copy_from_slice(&x[t * cols + full..(t + 1) * cols]);
            let xv = ld_ps(&pad);
            for r in 0..R {
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
    }
    if R == 4 && T == 4 {
        let s: [__m512; 16] = std::array::from_fn(|i| acc[i / 4][i % 4]);
        let sums = reduce16(&s);
        for t in 0..4 {
            let o: &mut [f32; 4] = (&mut out[t * ldo..t * ldo + 4]).try_into().expect("4");
            let v = match t {
                0 => _mm512_extractf32x4_ps::<0>(sums),
                1 => _mm512_extractf32x4_ps::<1>(sums),
                2 => _mm512_extractf32x4_ps::<2>(sums),
                _ => _mm512_extractf32x4_ps::<3>(sums),
            };
            // SAFETY: `o` is 4 writable f32; `storeu` has no alignment requirement.
            unsafe { _mm_storeu_ps(o.as_mut_ptr(), v) };
        }
        return;
    }
    for (r, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            out[t * ldo + r] = hsum(*a);
        }
    }
}

/// Horizontal sums of 16 vectors at once by a transpose-and-add tree (4 levels, like a single
/// reduction): with `s[i] = acc[i / 4][i % 4]` (row `i / 4`, token `i % 4`), 128-bit lane `t` of
/// the result holds the sums of rows 0..4 for token `t`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn reduce16(s: &[__m512; 16]) -> __m512 {
    // Level 1: pair (s[2p], s[2p+1]) -> 256-bit halves hold 8 partial sums of each.
    let u: [__m512; 8] = std::array::from_fn(|p| {
        let (a, b) = (s[2 * p], s[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Level 2: 128-bit lane j of w[q] holds 4 partial sums of s[4q + j].
    let w: [__m512; 4] = std::array::from_fn(|q| {
        let (a, b) = (u[2 * q], u[2 * q + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // Level 3: lane j of x0 holds 2 partials of s[j] and of s[4 + j]; x1 of s[8 + j], s[12 + j].
    let x: [__m512; 2] = std::array::from_fn(|h| {
        let (a, b) = (w[2 * h], w[2 * h + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    });
    // Level 4: lane j = [s[j], s[4 + j], s[8 + j], s[12 + j]].
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(x[0], x[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(x[0], x[1]),
    )
}

// ---------------------------------------------------------------------------------------------
// f32 vector helpers.

/// `Σ a[i]·b[i]` (equal lengths checked by the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_slices(a, b)
}

/// `y += a·x` with one FMA per element (equal lengths checked by the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let av = _mm512_set1_ps(a);
    let (xs, xt) = x.as_chunks::<16>();
    let (ys, yt) = y.as_chunks_mut::<16>();
    for (xv, yv) in xs.iter().zip(ys.iter_mut()) {
        st_ps(yv, _mm512_fmadd_ps(av, ld_ps(xv), ld_ps(yv)));
    }
    for (yi, &xi) in yt.iter_mut().zip(xt) {
        *yi = a.mul_add(xi, *yi);
    }
}

/// `Σ x[i]²`: squares rounded to f32, summed in f64 over 16 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn sum_squares_f64(x: &[f32]) -> f64 {
    let (xs, xt) = x.as_chunks::<16>();
    let mut a0 = _mm512_setzero_pd();
    let mut a1 = _mm512_setzero_pd();
    for xv in xs {
        let v = ld_ps(xv);
        let sq = _mm512_mul_ps(v, v);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sq)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(hi));
    }
    let mut s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for &v in xt {
        s += (v * v) as f64;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Safe entry points for the dispatcher.

/// `exp` of 16 lanes by the recipe of `scalar::expc` (same operations, same bits).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn exp16(x: __m512) -> __m512 {
    use super::scalar::expc::*;
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(MIN_X));
    let xc = _mm512_min_ps(x, _mm512_set1_ps(MAX_X));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
    );
    let nn = _mm512_sub_ps(_mm512_setzero_ps(), n);
    let r = _mm512_fmadd_ps(
        nn,
        _mm512_set1_ps(LN2_LO),
        _mm512_fmadd_ps(nn, _mm512_set1_ps(LN2_HI), xc),
    );
    let mut p = _mm512_set1_ps(P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let pow = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    )));
    let res = _mm512_mul_ps(y, pow);
    let res = _mm512_mask_mov_ps(res, tiny, _mm512_setzero_ps());
    _mm512_mask_mov_ps(res, nan, x)
}

/// `x[i] = exp(x[i] − m)`; returns `Σ x[i]` (16 lanes, then the tail in order).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mv = _mm512_set1_ps(m);
    let (xs, xt) = x.as_chunks_mut::<16>();
    let mut acc = _mm512_setzero_ps();
    for v in xs.iter_mut() {
        let e = exp16(_mm512_sub_ps(ld_ps(v), mv));
        acc = _mm512_add_ps(acc, e);
        st_ps(v, e);
    }
    let mut s = hsum(acc);
    for v in xt.iter_mut() {
        *v = super::scalar::exp_one(*v - m);
        s += *v;
    }
    s
}

/// FP8 E4M3 codes to f32, 32 at a time through f16: a code sign-extended to 16 bits and
/// shifted left by 7 has the sign at bit 15 and the 7 magnitude bits at f16 bits 13..7 (bit 14,
/// a copy of the sign, is masked off); that f16 times 2^8 is the value exactly (f16 has the
/// wider exponent, so normals and subnormals alike), and `vcvtph2ps` widens it. NaN (0x7F) by
/// byte mask. The rest, 16 at a time as [`e4m3_decode16`], then scalar.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn e4m3_decode(src: &[u8], out: &mut [f32]) {
    let n = src.len().min(out.len());
    let (src, out) = (&src[..n], &mut out[..n]);
    let (ss, st) = src.as_chunks::<32>();
    let (os, ot) = out.as_chunks_mut::<32>();
    let scale = _mm512_set1_ps(256.0);
    let nanv = _mm512_set1_ps(f32::NAN);
    let keep = _mm512_set1_epi16(0xBF80u16 as i16);
    let m7f = _mm256_set1_epi8(0x7f);
    for (b, o) in ss.iter().zip(os.iter_mut()) {
        let raw = ld_256(b);
        let h = _mm512_and_si512(_mm512_slli_epi16::<7>(_mm512_cvtepi8_epi16(raw)), keep);
        let lo = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), scale);
        let hi = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h)), scale);
        let nan = _mm256_cmpeq_epi8_mask(_mm256_and_si256(raw, m7f), m7f);
        let (o0, o1) = o.split_at_mut(16);
        let (o0, o1): (&mut [f32; 16], &mut [f32; 16]) = (
            o0.try_into().expect("16 lanes"),
            o1.try_into().expect("16 lanes"),
        );
        st_ps(o0, _mm512_mask_mov_ps(lo, nan as u16, nanv));
        st_ps(o1, _mm512_mask_mov_ps(hi, (nan >> 16) as u16, nanv));
    }
    e4m3_decode16(st, ot);
}

/// FP8 E4M3 codes to f32, 16 at a time: the 7 magnitude bits placed at f32 bit 20 and scaled
/// by 2^120 give the value exactly (normals and subnormals alike); sign and NaN (0x7F) by mask.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn e4m3_decode16(src: &[u8], out: &mut [f32]) {
    let n = src.len().min(out.len());
    let (src, out) = (&src[..n], &mut out[..n]);
    let (ss, st) = src.as_chunks::<16>();
    let (os, ot) = out.as_chunks_mut::<16>();
    let scale = _mm512_set1_ps(f32::from_bits((120 + 127) << 23));
    for (b, o) in ss.iter().zip(os.iter_mut()) {
        let v = _mm512_cvtepu8_epi32(ld_128(b));
        let mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
        let f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<20>(mag)), scale);
        let sign = _mm512_slli_epi32::<24>(_mm512_and_si512(v, _mm512_set1_epi32(0x80)));
        let f = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
        let nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f));
        st_ps(o, _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(f32::NAN)));
    }
    super::scalar::e4m3_decode(st, ot);
}

/// Four queries (or fewer: `nq`) against `c` key rows of `16·N` floats: the query vectors stay
/// in registers and each key chunk is loaded once for all of them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dots4<const N: usize>(
    qs: &[f32],
    nq: usize,
    keys: &[f32],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let d = 16 * N;
    let mut qv = [[_mm512_setzero_ps(); N]; 4];
    for (j, qj) in qv.iter_mut().enumerate().take(nq) {
        let (ch, _) = qs[j * d..(j + 1) * d].as_chunks::<16>();
        for (k, v) in qj.iter_mut().enumerate() {
            *v = ld_ps(&ch[k]);
        }
    }
    for i in 0..c {
        let (row, _) = keys[i * d..(i + 1) * d].as_chunks::<16>();
        let mut acc = [_mm512_setzero_ps(); 4];
        for (k, r) in row.iter().enumerate() {
            let rv = ld_ps(r);
            for j in 0..4 {
                acc[j] = _mm512_fmadd_ps(qv[j][k], rv, acc[j]);
            }
        }
        for j in 0..nq {
            out[j * ldo + i] = hsum(acc[j]);
        }
    }
}

/// `out[q·ldo + i] = qs[q] · keys[i]`. For `d` = 16, 32, 48 or 64 the queries are taken four
/// at a time with their vectors in registers (each dot: FMAs over the 16-lane chunks into one
/// accumulator, then a horizontal sum); other `d` use [`dot_f32`] per pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dots_multi(
    qs: &[f32],
    d: usize,
    keys: &[f32],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nq = qs.len() / d;
    if d == 0 || !d.is_multiple_of(16) || d > 64 {
        for (qi, q) in qs.chunks_exact(d.max(1)).enumerate() {
            for i in 0..c {
                out[qi * ldo + i] = dot_f32(q, &keys[i * d..(i + 1) * d]);
            }
        }
        return;
    }
    let mut q0 = 0;
    while q0 < nq {
        let n = (nq - q0).min(4);
        let qs4 = &qs[q0 * d..(q0 + n) * d];
        let o = &mut out[q0 * ldo..];
        match d / 16 {
            1 => dots4::<1>(qs4, n, keys, c, o, ldo),
            2 => dots4::<2>(qs4, n, keys, c, o, ldo),
            3 => dots4::<3>(qs4, n, keys, c, o, ldo),
            _ => dots4::<4>(qs4, n, keys, c, o, ldo),
        }
        q0 += n;
    }
}

/// `out[q·ldo + i] = Σ_j qt[j·nq + q] · tile[j·16 + i]` (a column-major bf16 tile of 16
/// columns, the first `c` written; queries transposed): per tile row one 32-byte load widened
/// to 16 floats, then one FMA per query (up to eight queries per pass, each its own 16-lane
/// accumulator), in `j` order — the scalar order, lane by lane: no horizontal sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn col_dots_bf16(
    qt: &[f32],
    nq: usize,
    tile: &[u16],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let n = qt.len() / nq.max(1);
    let (rows, _) = tile[..n * 16].as_chunks::<16>();
    let mask: __mmask16 = if c >= 16 { 0xffff } else { (1u16 << c) - 1 };
    let mut q0 = 0;
    while q0 < nq {
        let m = (nq - q0).min(8);
        let o = &mut out[q0 * ldo..];
        let q = &qt[q0..];
        match m {
            8 => col_pass_bf16::<8>(q, nq, rows, o, ldo, c, mask),
            7 => col_pass_bf16::<7>(q, nq, rows, o, ldo, c, mask),
            6 => col_pass_bf16::<6>(q, nq, rows, o, ldo, c, mask),
            5 => col_pass_bf16::<5>(q, nq, rows, o, ldo, c, mask),
            4 => col_pass_bf16::<4>(q, nq, rows, o, ldo, c, mask),
            3 => col_pass_bf16::<3>(q, nq, rows, o, ldo, c, mask),
            2 => col_pass_bf16::<2>(q, nq, rows, o, ldo, c, mask),
            _ => col_pass_bf16::<1>(q, nq, rows, o, ldo, c, mask),
        }
        q0 += m;
    }
}

/// One pass of [`col_dots_bf16`] over `M` queries (`qt[j·ld + k]`), an accumulator each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn col_pass_bf16<const M: usize>(
    qt: &[f32],
    ld: usize,
    rows: &[[u16; 16]],
    out: &mut [f32],
    ldo: usize,
    c: usize,
    mask: __mmask16,
) {
    let mut acc = [_mm512_setzero_ps(); M];
    for (j, r) in rows.iter().enumerate() {
        let qj: &[f32; M] = qt[j * ld..j * ld + M].try_into().expect("M queries");
        let wide = _mm512_cvtepu16_epi32(ld_256(bytes_u16(r)));
        let rv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide));
        for (a, &q) in acc.iter_mut().zip(qj) {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(q), rv, *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        let o = &mut out[k * ldo..k * ldo + c];
        // SAFETY: the masked store writes only lanes `< c`, all inside `o` (len `c`).
        unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), mask, *a) };
    }
}

/// Sixteen u16 as their 32 bytes (little-endian, as the widening load reads them).
#[inline]
fn bytes_u16(r: &[u16; 16]) -> &[u8; 32] {
    // SAFETY: [u16; 16] and [u8; 32] have the same size, u8 has alignment 1, and every bit
    // pattern is a valid u8.
    unsafe { &*(r as *const [u16; 16] as *const [u8; 32]) }
}

/// Four accumulators (or fewer: `nq`) of `16·N` floats kept in registers over `c` value rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn axpys4<const N: usize>(
    w: &[f32],
    ldw: usize,
    nq: usize,
    values: &[f32],
    c: usize,
    accs: &mut [f32],
) {
    let d = 16 * N;
    let mut acc = [[_mm512_setzero_ps(); N]; 4];
    for (j, aj) in acc.iter_mut().enumerate().take(nq) {
        let (ch, _) = accs[j * d..(j + 1) * d].as_chunks::<16>();
        for (k, v) in aj.iter_mut().enumerate() {
            *v = ld_ps(&ch[k]);
        }
    }
    for i in 0..c {
        let (row, _) = values[i * d..(i + 1) * d].as_chunks::<16>();
        let mut rv = [_mm512_setzero_ps(); N];
        for (k, r) in row.iter().enumerate() {
            rv[k] = ld_ps(r);
        }
        for j in 0..nq {
            let wv = _mm512_set1_ps(w[j * ldw + i]);
            for k in 0..N {
                acc[j][k] = _mm512_fmadd_ps(wv, rv[k], acc[j][k]);
            }
        }
    }
    for (j, aj) in acc.iter().enumerate().take(nq) {
        let (ch, _) = accs[j * d..(j + 1) * d].as_chunks_mut::<16>();
        for (k, v) in aj.iter().enumerate() {
            st_ps(&mut ch[k], *v);
        }
    }
}

/// `accs[q] += Σᵢ w[q·ldw + i] · values[i]`, rows in order with one FMA per element (the bits
/// of [`axpy`] per row). For `d` = 16..64 the accumulators stay in registers, four at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn axpys_multi(
    w: &[f32],
    ldw: usize,
    values: &[f32],
    c: usize,
    accs: &mut [f32],
    d: usize,
) {
    if d == 0 || !d.is_multiple_of(16) || d > 64 {
        for (qi, acc) in accs.chunks_exact_mut(d.max(1)).enumerate() {
            for i in 0..c {
                axpy(w[qi * ldw + i], &values[i * d..(i + 1) * d], acc);
            }
        }
        return;
    }
    let nq = accs.len() / d;
    let mut q0 = 0;
    while q0 < nq {
        let n = (nq - q0).min(4);
        let a = &mut accs[q0 * d..(q0 + n) * d];
        let ww = &w[q0 * ldw..];
        match d / 16 {
            1 => axpys4::<1>(ww, ldw, n, values, c, a),
            2 => axpys4::<2>(ww, ldw, n, values, c, a),
            3 => axpys4::<3>(ww, ldw, n, values, c, a),
            _ => axpys4::<4>(ww, ldw, n, values, c, a),
        }
        q0 += n;
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
                assert!(SimdLevel::Avx512.is_available(), "CPU lacks Avx512");
                // SAFETY: the assertion above established that the CPU has AVX-512 F/BW/VL,
                // AVX2, FMA and F16C, the features this kernel is compiled for.
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

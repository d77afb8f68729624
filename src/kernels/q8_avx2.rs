//! AVX2 kernels of the 8-bit-activation path ([`super::q8act`]): one 32-element block per
//! 256-bit vector, u8×i8 products summed by `vpmaddubsw` + `vpmaddwd`. Same bits as the scalar
//! reference.
//!
//! Every kernel carries `#[target_feature(enable = "avx2,fma,f16c")]`, so calling one from
//! outside a matching feature context is `unsafe`; the `checked` wrappers at the end assert
//! `SimdLevel::Avx2.is_available()` first and are the only callers. Inside, the only `unsafe`
//! operations are loads and stores through pointers derived from fixed-size arrays.
//!
//! Operands as in `q8_avx512` (activations are in −127..=127 by the `Q8Acts` invariant): Q8_0
//! as `(|w|, y·sign(w))` with `vpsignb` (products ≤ 128·127, so pairs fit i16); MXFP4 as the
//! table `KVALUES_MXFP4 + 12` minus `12·Σy`; Q4_0 as nibbles minus `8·Σy`; Q4_1 as nibbles.
//! A group of 16 blocks is two halves of 8; the 8 i32 lanes of each block are summed by a
//! transpose ([`block_sums`]) and the float stage runs on 8 block products per vector, into
//! two accumulators (blocks `16g + j` and `16g + 8 + j`), reduced at the end exactly as the
//! scalar 16 lanes.

use core::arch::x86_64::*;

use super::avx2::{hsum, ld_128, ld_ps};
use super::q8act::{Group, Q8Acts, Q8Ref, LANES, MXFP4_OFFSET, MXFP4_U, QK};
use crate::gguf::GgmlType;
use crate::quant::E8M0_TO_F32_HALF;

// ---------------------------------------------------------------------------------------------
// Loads, stores and byte-array views.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_256(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast::<__m256i>()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_i8x32(q: &[i8; QK]) -> __m256i {
    // SAFETY: `q` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast::<__m256i>()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_epi32(x: &[i32; 8]) -> __m256i {
    // SAFETY: `x` is 8 initialized i32 (32 bytes); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast::<__m256i>()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st_256(out: &mut [i8; QK], v: __m256i) {
    // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), v) }
}

/// Bytes `OFF..OFF + 16` of a block.
#[inline]
fn bytes16<const N: usize, const OFF: usize>(b: &[u8; N]) -> &[u8; 16] {
    b[OFF..OFF + 16].try_into().expect("16 bytes")
}

/// Bytes `OFF..OFF + 32` of a block.
#[inline]
fn bytes32<const N: usize, const OFF: usize>(b: &[u8; N]) -> &[u8; 32] {
    b[OFF..OFF + 32].try_into().expect("32 bytes")
}

/// Halves of a 16-element array.
#[inline]
fn halves<T>(a: &[T; 16]) -> [&[T; 8]; 2] {
    let (h, _) = a.as_chunks::<8>();
    [&h[0], &h[1]]
}

// ---------------------------------------------------------------------------------------------
// One block: i32 lanes whose sum is the block's integer dot (before any offset correction).

/// u8×i8 dot of 4-byte groups into i32 lanes (pairs into i16 cannot saturate for our ranges).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dp(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Nibbles of 16 code bytes in element order: `[lo(q), hi(q)]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(q: &[u8; 16]) -> __m256i {
    let v = ld_128(q);
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(v), v),
        _mm256_set1_epi8(0x0f),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_block(w: &[u8; 34], y: &[i8; QK]) -> __m256i {
    let w = ld_256(bytes32::<34, 2>(w));
    dp(_mm256_sign_epi8(w, w), _mm256_sign_epi8(ld_i8x32(y), w))
}

/// Sums of the 8 i32 lanes of each of 8 blocks (`v[k]` = block k); lane `k` = block `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_sums(v: &[__m256i; 8]) -> __m256i {
    // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let s01 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[0], v[1]),
        _mm256_unpackhi_epi32(v[0], v[1]),
    );
    let s23 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[2], v[3]),
        _mm256_unpackhi_epi32(v[2], v[3]),
    );
    let s45 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[4], v[5]),
        _mm256_unpackhi_epi32(v[4], v[5]),
    );
    let s67 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[6], v[7]),
        _mm256_unpackhi_epi32(v[6], v[7]),
    );
    // Per 128-bit lane: the lane's sums of blocks 0..4 (resp. 4..8).
    let a = _mm256_add_epi32(
        _mm256_unpacklo_epi64(s01, s23),
        _mm256_unpackhi_epi64(s01, s23),
    );
    let b = _mm256_add_epi32(
        _mm256_unpacklo_epi64(s45, s67),
        _mm256_unpackhi_epi64(s45, s67),
    );
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// The f16 at bytes `OFF..OFF + 2` of each of 16 blocks, as two vectors of 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_scales<const B: usize, const OFF: usize>(w: &[[u8; B]]) -> [__m256; 2] {
    let mut h = [0u8; 32];
    for (d, b) in h.as_chunks_mut::<2>().0.iter_mut().zip(w) {
        *d = [b[OFF], b[OFF + 1]];
    }
    let v = ld_256(&h);
    [
        _mm256_cvtph_ps(_mm256_castsi256_si128(v)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)),
    ]
}

/// `2^(e − 128)` of each of 16 MXFP4 blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn e8m0_scales(w: &[[u8; 17]]) -> [__m256; 2] {
    let mut s = [0.0f32; LANES];
    for (d, b) in s.iter_mut().zip(w) {
        *d = E8M0_TO_F32_HALF[b[0] as usize];
    }
    let [a, b] = halves(&s);
    [ld_ps(a), ld_ps(b)]
}

/// Integer block sums of the 8 blocks of half `h` of a group of `n` blocks, from `block(k)`'s
/// i32 lanes (missing blocks: 0).
macro_rules! half_sums {
    ($h:expr, $n:expr, |$k:ident| $block:expr) => {{
        let mut v = [_mm256_setzero_si256(); 8];
        for ($k, vk) in v.iter_mut().enumerate().take($n.saturating_sub(8 * $h)) {
            let $k = 8 * $h + $k;
            *vk = $block;
        }
        block_sums(&v)
    }};
}

/// `sums − k·Σy` for half `h` of a group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn minus_offset(sums: __m256i, y: &Group<'_>, h: usize, k: i32) -> __m256i {
    _mm256_sub_epi32(
        sums,
        _mm256_mullo_epi32(_mm256_set1_epi32(k), ld_epi32(halves(y.sum)[h])),
    )
}

/// `acc + f32(sumi)·(d_w·d_y)` for half `h`, each operation rounded.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate(acc: __m256, sums: __m256i, dw: __m256, y: &Group<'_>, h: usize) -> __m256 {
    let p = _mm256_mul_ps(
        _mm256_cvtepi32_ps(sums),
        _mm256_mul_ps(dw, ld_ps(halves(y.d)[h])),
    );
    _mm256_add_ps(acc, p)
}

type Acc = [__m256; 2];

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_q8_0(w: &[[u8; 34]], y: &Group<'_>, mut acc: Acc) -> Acc {
    let dw = f16_scales::<34, 0>(w);
    for (h, a) in acc.iter_mut().enumerate() {
        let sums = half_sums!(h, w.len(), |k| q8_0_block(&w[k], &y.qs[k]));
        *a = accumulate(*a, sums, dw[h], y, h);
    }
    acc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_mxfp4(w: &[[u8; 17]], y: &Group<'_>, mut acc: Acc) -> Acc {
    let table = _mm256_broadcastsi128_si256(ld_128(&MXFP4_U));
    let dw = e8m0_scales(w);
    for (h, a) in acc.iter_mut().enumerate() {
        let sums = half_sums!(h, w.len(), |k| dp(
            _mm256_shuffle_epi8(table, nibbles(bytes16::<17, 1>(&w[k]))),
            ld_i8x32(&y.qs[k])
        ));
        let sums = minus_offset(sums, y, h, MXFP4_OFFSET);
        *a = accumulate(*a, sums, dw[h], y, h);
    }
    acc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_q4_0(w: &[[u8; 18]], y: &Group<'_>, mut acc: Acc) -> Acc {
    let dw = f16_scales::<18, 0>(w);
    for (h, a) in acc.iter_mut().enumerate() {
        let sums = half_sums!(h, w.len(), |k| dp(
            nibbles(bytes16::<18, 2>(&w[k])),
            ld_i8x32(&y.qs[k])
        ));
        let sums = minus_offset(sums, y, h, 8);
        *a = accumulate(*a, sums, dw[h], y, h);
    }
    acc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_q4_1(w: &[[u8; 20]], y: &Group<'_>, mut acc: Acc) -> Acc {
    let dw = f16_scales::<20, 0>(w);
    let mw = f16_scales::<20, 2>(w);
    for (h, a) in acc.iter_mut().enumerate() {
        let sums = half_sums!(h, w.len(), |k| dp(
            nibbles(bytes16::<20, 4>(&w[k])),
            ld_i8x32(&y.qs[k])
        ));
        // (d_w·d_y)·f32(sumi) + m_w·s_y, each operation rounded.
        let t = _mm256_mul_ps(
            _mm256_mul_ps(dw[h], ld_ps(halves(y.d)[h])),
            _mm256_cvtepi32_ps(sums),
        );
        let m = _mm256_mul_ps(mw[h], ld_ps(halves(y.s)[h]));
        *a = _mm256_add_ps(*a, _mm256_add_ps(t, m));
    }
    acc
}

/// A row's dot: full groups of 16 blocks, then the rest (`$ytail`: the activation's zero-padded
/// last group, made once per call), then the fixed reduction (lanes `j` and `j + 8` first, as
/// `q8act::reduce16`).
macro_rules! row_dot {
    ($row:expr, $y:expr, $ytail:expr, $bytes:expr, $group:ident) => {{
        let (blocks, _) = $row.as_chunks::<{ $bytes }>();
        let (groups, tail) = blocks.as_chunks::<LANES>();
        let mut acc = [_mm256_setzero_ps(); 2];
        for (g, wg) in groups.iter().enumerate() {
            acc = $group(wg, &$y.group(g), acc);
        }
        if let Some(yt) = $ytail {
            acc = $group(tail, &yt.group(), acc);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }};
}

/// `out[i] = row_i · y` for consecutive rows of `rb` bytes (lengths checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
fn dots(ty: GgmlType, w: &[u8], rb: usize, y: Q8Ref<'_>, out: &mut [f32]) {
    let rows = out.iter_mut().zip(w.chunks_exact(rb));
    let nb = y.blocks();
    let ytail = (!nb.is_multiple_of(LANES)).then(|| y.padded_group(nb / LANES));
    let ytail = ytail.as_ref();
    match ty {
        GgmlType::Q8_0 => {
            for (o, r) in rows {
                *o = row_dot!(r, y, ytail, 34, group_q8_0);
            }
        }
        GgmlType::MXFP4 => {
            for (o, r) in rows {
                *o = row_dot!(r, y, ytail, 17, group_mxfp4);
            }
        }
        GgmlType::Q4_0 => {
            for (o, r) in rows {
                *o = row_dot!(r, y, ytail, 18, group_q4_0);
            }
        }
        GgmlType::Q4_1 => {
            for (o, r) in rows {
                *o = row_dot!(r, y, ytail, 20, group_q4_1);
            }
        }
        _ => unreachable!("type checked by the caller"),
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization, bit-identical to `q8act::quantize_block`.

/// 8 values → `clamp(round_half_even(x·id), −127, 127)` with NaN → 0, as i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quant8(x: __m256, id: __m256) -> __m256i {
    let p = _mm256_mul_ps(x, id);
    let p = _mm256_and_ps(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p), p);
    // Clamping before rounding is the same as after: the bounds are integers.
    let p = _mm256_min_ps(
        _mm256_max_ps(p, _mm256_set1_ps(-127.0)),
        _mm256_set1_ps(127.0),
    );
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
    // Integral and in range: the conversion is exact whatever the MXCSR rounding mode.
    _mm256_cvtps_epi32(r)
}

/// `|x|` with NaN → 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_or_zero(x: __m256) -> __m256 {
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    _mm256_and_ps(_mm256_cmp_ps::<_CMP_ORD_Q>(a, a), a)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize(x: &[f32], out: &mut Q8Acts) {
    for b in x.as_chunks::<QK>().0 {
        let (xs, _) = b.as_chunks::<8>();
        let v = [ld_ps(&xs[0]), ld_ps(&xs[1]), ld_ps(&xs[2]), ld_ps(&xs[3])];
        // Max of non-negative, non-NaN values: exact in any order.
        let m = _mm256_max_ps(
            _mm256_max_ps(abs_or_zero(v[0]), abs_or_zero(v[1])),
            _mm256_max_ps(abs_or_zero(v[2]), abs_or_zero(v[3])),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = [
            quant8(v[0], id),
            quant8(v[1], id),
            quant8(v[2], id),
            quant8(v[3], id),
        ];
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
        // Narrow (values fit i8, so the saturating packs are exact); the packs interleave
        // 128-bit lanes, which the permutation undoes.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        st_256(&mut qs, p);
        out.push(d, qs, sum);
    }
}

/// Entry points for `q8act`.
pub(super) mod checked {
    use super::{GgmlType, Q8Acts, Q8Ref};
    use crate::kernels::SimdLevel;

    /// See `super::dots`.
    #[inline]
    pub(in crate::kernels) fn dots(
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        y: Q8Ref<'_>,
        out: &mut [f32],
    ) {
        assert!(SimdLevel::Avx2.is_available(), "CPU lacks Avx2");
        // SAFETY: the assertion above established that the CPU has AVX2, FMA and F16C, the
        // features this kernel is compiled for.
        unsafe { super::dots(ty, w, rb, y, out) }
    }

    /// See `super::quantize`.
    #[inline]
    pub(in crate::kernels) fn quantize(x: &[f32], out: &mut Q8Acts) {
        assert!(SimdLevel::Avx2.is_available(), "CPU lacks Avx2");
        // SAFETY: as in `dots`.
        unsafe { super::quantize(x, out) }
    }
}

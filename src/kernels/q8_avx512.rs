//! AVX-512 kernels of the 8-bit-activation path ([`super::q8act`]): two 32-element blocks per
//! 512-bit vector; u8×i8 products summed by `vpmaddubsw` + `vpmaddwd` (AVX-512 BW, module `bw`)
//! or by `vpdpbusd` (AVX-512 VNNI, module `vnni`). Both give exactly the scalar bits.
//!
//! Every kernel carries `#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]`
//! (plus `avx512vnni` in `vnni`), so calling one from outside a matching feature context is
//! `unsafe`; the `checked_bw` / `checked_vnni` wrappers at the end assert that the CPU has the
//! features first and are the only callers. Inside, the only `unsafe` operations are loads and
//! stores through pointers derived from fixed-size arrays.
//!
//! Operands per weight type (the instructions multiply unsigned by signed bytes; activations are
//! in −127..=127 by the `Q8Acts` invariant):
//! * Q8_0: `|w|` (`vpabsb`; −128 becomes 128) and `y` negated where `w < 0`; a product is at most
//!   128·127, so a `vpmaddubsw` pair cannot saturate.
//! * MXFP4: `vpshufb` of the nibbles in the table `KVALUES_MXFP4 + 12` (0..=24), `y` as is;
//!   `12·Σy` (exact, from the quantizer) is subtracted per block.
//! * Q4_0: nibbles 0..=15 and `y`; `8·Σy` subtracted. Q4_1: nibbles and `y`.
//!
//! Each block's 8 i32 lanes are summed by a transpose of 8 vectors (16 blocks, [`block_sums`]),
//! so every block's `sumi` is the exact integer; the float stage then does the scalar
//! operations on 16 block products at once (no FMA), lane `j` holding block `16g + j`.

use core::arch::x86_64::*;

use super::avx512::{hsum, ld_128, ld_256, ld_ps};
use super::q8act::{Group, Q8Acts, Q8Ref, LANES, MXFP4_OFFSET, MXFP4_U, QK};
use crate::gguf::GgmlType;

// ---------------------------------------------------------------------------------------------
// Loads, stores and byte-array views.

/// Two consecutive activation blocks (64 contiguous bytes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ld_i8x64(q: &[[i8; QK]; 2]) -> __m512i {
    // SAFETY: `q` is 2 × 32 contiguous readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(q.as_ptr().cast::<__m512i>()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ld_epi32(x: &[i32; 16]) -> __m512i {
    // SAFETY: `x` is 16 initialized i32 (64 bytes); `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(x.as_ptr().cast::<__m512i>()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn st_128(out: &mut [i8; 16], v: __m128i) {
    // SAFETY: `out` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast::<__m128i>(), v) }
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

// ---------------------------------------------------------------------------------------------
// Operands of a pair of blocks (2k, 2k + 1): 64 unsigned and 64 signed bytes, block 2k in bytes
// 0..32 (elements in order), block 2k + 1 in bytes 32..64.

/// Q8_0: `(|w|, y·sign(w))`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q8_0_ops(w0: &[u8; 34], w1: &[u8; 34], y: __m512i) -> (__m512i, __m512i) {
    let w = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(ld_256(bytes32::<34, 2>(w0))),
        ld_256(bytes32::<34, 2>(w1)),
    );
    let neg = _mm512_movepi8_mask(w);
    (
        _mm512_abs_epi8(w),
        _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y),
    )
}

/// Nibbles of two 16-byte code arrays in element order: `[lo(q0), hi(q0), lo(q1), hi(q1)]`.
/// Built with two 128-bit broadcasts (load-side, no shuffle) and a masked shift of the odd
/// 128-bit lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn nibble_pair(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
    // [q0, q0, q1, q1]: 32-bit lanes 8..16 from q1.
    let z = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(ld_128(q0)), 0xff00, ld_128(q1));
    // 16-bit lanes 8..16 and 24..32 (128-bit lanes 1 and 3) shifted right by 4; the mask below
    // drops the bits shifted in from the neighbouring byte.
    let z = _mm512_mask_srli_epi16::<4>(z, 0xff00_ff00, z);
    _mm512_and_si512(z, _mm512_set1_epi8(0x0f))
}

/// MXFP4: table values + 12.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mxfp4_ops(w0: &[u8; 17], w1: &[u8; 17], table: __m512i) -> __m512i {
    _mm512_shuffle_epi8(
        table,
        nibble_pair(bytes16::<17, 1>(w0), bytes16::<17, 1>(w1)),
    )
}

/// Sums of the 8 i32 lanes of each block: `v[k]` holds blocks 2k (lanes 0..8) and 2k + 1
/// (lanes 8..16); lane `j` of the result is block `j`'s sum (exact, integers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn block_sums(v: &[__m512i; 8]) -> __m512i {
    // Per 128-bit lane ℓ: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] ...
    let s01 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[0], v[1]),
        _mm512_unpackhi_epi32(v[0], v[1]),
    );
    let s23 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[2], v[3]),
        _mm512_unpackhi_epi32(v[2], v[3]),
    );
    let s45 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[4], v[5]),
        _mm512_unpackhi_epi32(v[4], v[5]),
    );
    let s67 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[6], v[7]),
        _mm512_unpackhi_epi32(v[6], v[7]),
    );
    // ... then [Σ v0ℓ, Σ v1ℓ, Σ v2ℓ, Σ v3ℓ]: lanes ℓ = 0, 1 hold halves of blocks 0, 2, 4, 6,
    // lanes 2, 3 halves of blocks 1, 3, 5, 7.
    let a = _mm512_add_epi32(
        _mm512_unpacklo_epi64(s01, s23),
        _mm512_unpackhi_epi64(s01, s23),
    );
    let b = _mm512_add_epi32(
        _mm512_unpacklo_epi64(s45, s67),
        _mm512_unpackhi_epi64(s45, s67),
    );
    // Add the halves: blocks [0 2 4 6 | 1 3 5 7 | 8 10 12 14 | 9 11 13 15].
    let z = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
    );
    let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    _mm512_permutexvar_epi32(order, z)
}

/// `sums − k·Σy` per block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn minus_offset(sums: __m512i, ysum: &[i32; LANES], k: i32) -> __m512i {
    _mm512_sub_epi32(
        sums,
        _mm512_mullo_epi32(_mm512_set1_epi32(k), ld_epi32(ysum)),
    )
}

/// The little-endian u32 at the start of each of the first `w.len()` (at most 16) blocks, in
/// lane `j` for block `j`; other lanes 0. (Scalar loads into an array: a `vpgatherdd` was
/// measured slower on Zen 4.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn block_heads<const B: usize>(w: &[[u8; B]]) -> __m512i {
    const { assert!(B >= 4) };
    let mut h = [0i32; LANES];
    for (d, b) in h.iter_mut().zip(w) {
        *d = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    ld_epi32(&h)
}

/// The f16s in the low (`HIGH = false`) or high 16 bits of `heads`, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16_of<const HIGH: bool>(heads: __m512i) -> __m512 {
    let h = if HIGH {
        _mm512_srli_epi32::<16>(heads)
    } else {
        heads
    };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h))
}

/// `2^(e − 128)` for the E8M0 byte `e` in the low 8 bits of `heads`, bit-exactly as
/// `quant::e8m0_to_f32_half` (ggml): `e < 2` → bits `0x0020_0000 << e`, else `(e − 1) << 23`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn e8m0_half(heads: __m512i) -> __m512 {
    let e = _mm512_and_si512(heads, _mm512_set1_epi32(0xff));
    let normal = _mm512_slli_epi32::<23>(_mm512_sub_epi32(e, _mm512_set1_epi32(1)));
    let subnormal = _mm512_sllv_epi32(_mm512_set1_epi32(0x0020_0000), e);
    let small = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
    _mm512_castsi512_ps(_mm512_mask_blend_epi32(small, normal, subnormal))
}

/// `acc + f32(sumi)·(d_w·d_y)`, each operation rounded (the scalar block product).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn accumulate(acc: __m512, sums: __m512i, dw: __m512, y: &Group<'_>) -> __m512 {
    let p = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(dw, ld_ps(y.d)));
    _mm512_add_ps(acc, p)
}

/// Q4_1: `acc + ((d_w·d_y)·f32(sumi) + m_w·s_y)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn accumulate_q4_1(acc: __m512, sums: __m512i, w: &[[u8; 20]], y: &Group<'_>) -> __m512 {
    let heads = block_heads(w);
    let t = _mm512_mul_ps(
        _mm512_mul_ps(f16_of::<false>(heads), ld_ps(y.d)),
        _mm512_cvtepi32_ps(sums),
    );
    let m = _mm512_mul_ps(f16_of::<true>(heads), ld_ps(y.s));
    _mm512_add_ps(acc, _mm512_add_ps(t, m))
}

/// u8×i8 dot of 4-byte groups into i32 lanes, AVX-512 BW: `vpmaddubsw` (pairs into i16; no
/// saturation for our operand ranges, see the module docs) then `vpmaddwd` by 1.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dp_bw(u: __m512i, s: __m512i) -> __m512i {
    _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
}

/// u8×i8 dot of 4-byte groups into i32 lanes, AVX-512 VNNI `vpdpbusd` (no saturation).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dp_vnni(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

/// A row's dot: full groups of 16 blocks, then the rest (`$ytail`: the activation's zero-padded
/// last group, made once per call), then the fixed reduction.
macro_rules! row_dot {
    ($row:expr, $y:expr, $ytail:expr, $bytes:expr, $group:ident) => {{
        let (blocks, _) = $row.as_chunks::<{ $bytes }>();
        let (groups, tail) = blocks.as_chunks::<LANES>();
        let mut acc = _mm512_setzero_ps();
        for (g, wg) in groups.iter().enumerate() {
            acc = $group(wg, &$y.group(g), acc);
        }
        if let Some(yt) = $ytail {
            acc = $group(tail, &yt.group(), acc);
        }
        hsum(acc)
    }};
}

/// The pairs of a group of at most 16 blocks: `$ops(w0, w1, y01)` gives the i32 lanes of blocks
/// 2k and 2k + 1; an odd last block is paired with a zero block (its activation partner is a
/// zero-padded block, so it adds nothing). Lanes of missing pairs are 0.
macro_rules! pair_sums {
    ($w:expr, $y:expr, $bytes:expr, |$w0:ident, $w1:ident, $yk:ident| $ops:expr) => {{
        let (wp, rest) = $w.as_chunks::<2>();
        let (yp, _) = $y.qs.as_chunks::<2>();
        let mut v = [_mm512_setzero_si512(); 8];
        for (vk, (wk, yk)) in v.iter_mut().zip(wp.iter().zip(yp)) {
            let ($w0, $w1, $yk) = (&wk[0], &wk[1], ld_i8x64(yk));
            *vk = $ops;
        }
        if let [last] = rest {
            let k = wp.len();
            let ($w0, $w1, $yk) = (last, &[0u8; $bytes], ld_i8x64(&yp[k]));
            v[k] = $ops;
        }
        block_sums(&v)
    }};
}

/// The group and row kernels for one product instruction (`$dp`) and feature set.
macro_rules! q8_kernels {
    ($m:ident, $feat:literal, $dp:ident) => {
        pub(super) mod $m {
            use super::*;

            #[inline]
            #[target_feature(enable = $feat)]
            fn group_q8_0(w: &[[u8; 34]], y: &Group<'_>, acc: __m512) -> __m512 {
                let sums = pair_sums!(w, y, 34, |w0, w1, yk| {
                    let (u, s) = q8_0_ops(w0, w1, yk);
                    $dp(u, s)
                });
                accumulate(acc, sums, f16_of::<false>(block_heads(w)), y)
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn group_mxfp4(w: &[[u8; 17]], y: &Group<'_>, acc: __m512) -> __m512 {
                let table = _mm512_broadcast_i32x4(ld_128(&MXFP4_U));
                let sums = pair_sums!(w, y, 17, |w0, w1, yk| $dp(mxfp4_ops(w0, w1, table), yk));
                let sums = minus_offset(sums, y.sum, MXFP4_OFFSET);
                accumulate(acc, sums, e8m0_half(block_heads(w)), y)
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn group_q4_0(w: &[[u8; 18]], y: &Group<'_>, acc: __m512) -> __m512 {
                let sums = pair_sums!(w, y, 18, |w0, w1, yk| $dp(
                    nibble_pair(bytes16::<18, 2>(w0), bytes16::<18, 2>(w1)),
                    yk
                ));
                let sums = minus_offset(sums, y.sum, 8);
                accumulate(acc, sums, f16_of::<false>(block_heads(w)), y)
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn group_q4_1(w: &[[u8; 20]], y: &Group<'_>, acc: __m512) -> __m512 {
                let sums = pair_sums!(w, y, 20, |w0, w1, yk| $dp(
                    nibble_pair(bytes16::<20, 4>(w0), bytes16::<20, 4>(w1)),
                    yk
                ));
                accumulate_q4_1(acc, sums, w, y)
            }

            /// `out[i] = row_i · y` for consecutive rows of `rb` bytes (lengths checked by
            /// the caller).
            #[target_feature(enable = $feat)]
            pub(in crate::kernels) fn dots(
                ty: GgmlType,
                w: &[u8],
                rb: usize,
                y: Q8Ref<'_>,
                out: &mut [f32],
            ) {
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
        }
    };
}

q8_kernels!(bw, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", dp_bw);
q8_kernels!(
    vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dp_vnni
);

// ---------------------------------------------------------------------------------------------
// Quantization, bit-identical to `q8act::quantize_block`.

/// 16 values → `clamp(round_half_even(x·id), −127, 127)` with NaN → 0, as i32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn quant16(x: __m512, id: __m512) -> __m512i {
    let p = _mm512_mul_ps(x, id);
    let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p);
    // Clamping before rounding is the same as after: the bounds are integers.
    let p = _mm512_min_ps(
        _mm512_max_ps(p, _mm512_set1_ps(-127.0)),
        _mm512_set1_ps(127.0),
    );
    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p)
}

/// `|x|` with NaN → 0 (so a max over lanes ignores NaN, like `f32::max` from 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn abs_or_zero(x: __m512) -> __m512 {
    let a = _mm512_abs_ps(x);
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a), a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn quantize(x: &[f32], out: &mut Q8Acts) {
    for b in x.as_chunks::<QK>().0 {
        let (h0, h1) = b.split_at(16);
        let x0 = ld_ps(h0.try_into().expect("16"));
        let x1 = ld_ps(h1.try_into().expect("16"));
        // Max of non-negative, non-NaN values: exact in any order.
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_or_zero(x0), abs_or_zero(x1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let (q0, q1) = (quant16(x0, id), quant16(x1, id));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        let mut qs = [0i8; QK];
        let (s0, s1) = qs.split_at_mut(16);
        st_128(s0.try_into().expect("16"), _mm512_cvtepi32_epi8(q0));
        st_128(s1.try_into().expect("16"), _mm512_cvtepi32_epi8(q1));
        out.push(d, qs, sum);
    }
}

/// Entry points for `q8act` (BW kernels and quantization).
pub(super) mod checked_bw {
    use super::{GgmlType, Q8Acts, Q8Ref};
    use crate::kernels::SimdLevel;

    /// See `bw::dots`.
    #[inline]
    pub(in crate::kernels) fn dots(
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        y: Q8Ref<'_>,
        out: &mut [f32],
    ) {
        assert!(SimdLevel::Avx512.is_available(), "CPU lacks Avx512");
        // SAFETY: the assertion above established that the CPU has AVX-512 F/BW/VL, AVX2, FMA
        // and F16C, the features this kernel is compiled for.
        unsafe { super::bw::dots(ty, w, rb, y, out) }
    }

    /// See `quantize`.
    #[inline]
    pub(in crate::kernels) fn quantize(x: &[f32], out: &mut Q8Acts) {
        assert!(SimdLevel::Avx512.is_available(), "CPU lacks Avx512");
        // SAFETY: as in `dots`.
        unsafe { super::quantize(x, out) }
    }
}

/// Entry points for `q8act` (VNNI kernels).
pub(super) mod checked_vnni {
    use super::{GgmlType, Q8Ref};
    use crate::kernels::q8act::Q8Kernel;

    /// See `vnni::dots`.
    #[inline]
    pub(in crate::kernels) fn dots(
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        y: Q8Ref<'_>,
        out: &mut [f32],
    ) {
        assert!(
            Q8Kernel::Avx512Vnni.is_available(),
            "CPU lacks Avx512 + VNNI"
        );
        // SAFETY: the assertion above established that the CPU has AVX-512 F/BW/VL/VNNI, AVX2,
        // FMA and F16C, the features this kernel is compiled for.
        unsafe { super::vnni::dots(ty, w, rb, y, out) }
    }
}

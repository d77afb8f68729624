//! F16 and BF16 element codecs (bit patterns as `u16`).
//!
//! F16 uses the `half` crate (IEEE round to nearest even, like ggml's `GGML_FP32_TO_FP16` on
//! F16C hardware). BF16 follows ggml's `ggml_compute_fp32_to_bf16` ([LC] `ggml-impl.h`): NaN is
//! truncated and forced quiet (`(bits >> 16) | 0x40`), everything else rounds to nearest even,
//! so values that round past the largest finite bf16 become infinity.

/// f32 → IEEE binary16 bits, round to nearest even.
#[inline]
pub fn f16_from_f32(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// IEEE binary16 bits → f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 → bfloat16 bits, as ggml: quiet NaN, otherwise round to nearest even.
#[inline]
pub fn bf16_from_f32(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    // No overflow: the largest non-NaN input 0xff80_0000 plus 0x8000 stays below 2^32.
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// bfloat16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

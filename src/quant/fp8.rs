//! FP8 E4M3 ("E4M3FN", OCP 8-bit floating point spec v1.0), the KV cache's 8-bit format.
//!
//! Layout: sign bit, 4 exponent bits (bias 7), 3 mantissa bits. There is no infinity: codes
//! `0x7F` and `0xFF` are NaN; every other code with exponent 15 is a normal number, so the
//! largest finite value is `0x7E` = 448. Exponent 0 holds ±0 and the subnormals `m · 2^-9`.
//!
//! Encoding ([`e4m3_from_f32`]) rounds to nearest, ties to even, and **saturates**: every
//! |x| ≥ 448, including ±infinity, becomes ±448 (unlike `ml_dtypes`, which returns NaN above
//! 464). NaN becomes NaN with the input's sign. Values below half the smallest subnormal
//! (2^-10) become ±0. Decoding is exact; NaN decodes to a quiet f32 NaN with the code's sign.
//! Both directions are checked against `ml_dtypes.float8_e4m3fn` fixtures and exhaustively.

use super::QuantError;

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Code of +NaN (`0xFF` is −NaN).
pub const E4M3_NAN: u8 = 0x7f;

/// f32 → E4M3 code: round to nearest even, saturate to ±448, NaN → NaN.
#[inline]
pub fn e4m3_from_f32(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | E4M3_NAN;
    }
    if abs >= 0x43e0_0000 {
        // |x| >= 448 (or infinite): saturate.
        return sign | 0x7e;
    }
    if abs < 0x3c80_0000 {
        // |x| < 2^-6: subnormal range, multiples of 2^-9. Scaling by 512 is exact; a result of
        // 8 is the code of the smallest normal, 2^-6, so it needs no special case.
        let m = (f32::from_bits(abs) * 512.0).round_ties_even() as u8;
        return sign | m;
    }
    // Normal: keep 3 of the 23 mantissa bits, round to nearest even on the dropped 20 bits; a
    // carry moves into the exponent, which is what rounding up to the next binade means.
    let r = (abs + 0x7_ffff + ((abs >> 20) & 1)) >> 20;
    sign | (r - (120 << 3)) as u8
}

/// E4M3 code → f32 (exact).
#[inline]
pub const fn e4m3_to_f32(b: u8) -> f32 {
    let sign = ((b as u32) & 0x80) << 24;
    let e = ((b >> 3) & 0x0f) as u32;
    let m = (b & 0x07) as u32;
    if e == 15 && m == 7 {
        return f32::from_bits(sign | 0x7fc0_0000);
    }
    if e == 0 {
        // m · 2^-9: m is at most 7, so the product is exact.
        let v = m as f32 * (1.0 / 512.0);
        return f32::from_bits(v.to_bits() | sign);
    }
    f32::from_bits(sign | ((e + 120) << 23) | (m << 20))
}

/// Decoding table: `E4M3_TO_F32[code] == e4m3_to_f32(code)` (bit for bit).
pub const E4M3_TO_F32: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_to_f32(i as u8);
        i += 1;
    }
    t
};

/// Encode a slice; `dst` must have `src.len()` elements.
pub fn e4m3_from_f32_slice(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if src.len() != dst.len() {
        return Err(QuantError::LengthMismatch {
            what: "fp8 e4m3 encode",
            src: src.len(),
            dst: dst.len(),
        });
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = e4m3_from_f32(s);
    }
    Ok(())
}

/// Decode a slice; `dst` must have `src.len()` elements.
pub fn e4m3_to_f32_slice(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if src.len() != dst.len() {
        return Err(QuantError::LengthMismatch {
            what: "fp8 e4m3 decode",
            src: src.len(),
            dst: dst.len(),
        });
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E4M3_TO_F32[s as usize];
    }
    Ok(())
}

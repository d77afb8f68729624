//! Q8_0 ([LC] `ggml-common.h` `block_q8_0`): an f16 scale `d` and 32 signed bytes;
//! `x[j] = qs[j] · d` (exact in f32).

use super::float::{f16_from_f32, f16_to_f32};
use super::QK;

/// One Q8_0 block as stored on disk (34 bytes, alignment 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, IEEE f16 little-endian.
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);

impl BlockQ8_0 {
    /// Bytes per block.
    pub const BYTES: usize = 34;

    /// Parse a block from its bytes.
    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let mut qs = [0i8; QK];
        for (q, &s) in qs.iter_mut().zip(&b[2..]) {
            *q = s as i8;
        }
        Self {
            d: [b[0], b[1]],
            qs,
        }
    }

    /// The block's bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..2].copy_from_slice(&self.d);
        for (o, &q) in b[2..].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        b
    }

    /// Scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }

    /// Decode the 32 values.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.scale();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// `quantize_row_q8_0_ref`: `d = amax / 127`, `qs = roundf(x / d)` (half away from zero).
    pub fn quantize(x: &[f32; QK]) -> Self {
        let amax = x
            .iter()
            .fold(0.0f32, |a, v| if a < v.abs() { v.abs() } else { a });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        for (q, &v) in qs.iter_mut().zip(x) {
            // f32::round is roundf: half away from zero.
            *q = super::trunc_to_u8_x86((v * id).round()) as i8;
        }
        Self {
            d: f16_from_f32(d).to_le_bytes(),
            qs,
        }
    }
}

//! Q4_0 ([LC] `ggml-common.h` `block_q4_0`): an f16 scale `d` and 16 bytes of nibbles;
//! `x[j] = (lo(qs[j]) − 8) · d`, `x[j + 16] = (hi(qs[j]) − 8) · d` (exact in f32).

use super::float::{f16_from_f32, f16_to_f32};
use super::QK;

/// One Q4_0 block as stored on disk (18 bytes, alignment 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, IEEE f16 little-endian.
    pub d: [u8; 2],
    /// Nibbles: element `j` in the low half of `qs[j]`, element `j + 16` in the high half.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == BlockQ4_0::BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 1);

impl BlockQ4_0 {
    /// Bytes per block.
    pub const BYTES: usize = 18;

    /// Parse a block from its bytes.
    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[2..]);
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
        b[2..].copy_from_slice(&self.qs);
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
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&self.qs) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }

    /// `quantize_row_q4_0_ref`: `d = max / −8` where `max` is the first element of largest
    /// magnitude (with its sign); nibble = `min(15, trunc(x/d + 8.5))`.
    pub fn quantize(x: &[f32; QK]) -> Self {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let x0 = super::trunc_to_u8_x86(x[j] * id + 8.5).min(15);
            let x1 = super::trunc_to_u8_x86(x[j + QK / 2] * id + 8.5).min(15);
            *q = x0 | (x1 << 4);
        }
        Self {
            d: f16_from_f32(d).to_le_bytes(),
            qs,
        }
    }
}

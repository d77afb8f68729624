//! Q4_1 ([LC] `ggml-common.h` `block_q4_1`): f16 scale `d`, f16 minimum `m`, 16 bytes of
//! nibbles; `x[j] = lo(qs[j]) · d + m`, `x[j + 16] = hi(qs[j]) · d + m`, evaluated in f32 as a
//! rounded product then a rounded sum (gguf-py; not a fused multiply-add).

use super::float::{f16_from_f32, f16_to_f32};
use super::QK;

/// One Q4_1 block as stored on disk (20 bytes, alignment 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, IEEE f16 little-endian.
    pub d: [u8; 2],
    /// Minimum (offset), IEEE f16 little-endian.
    pub m: [u8; 2],
    /// Nibbles: element `j` in the low half of `qs[j]`, element `j + 16` in the high half.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ4_1>() == 1);

impl BlockQ4_1 {
    /// Bytes per block.
    pub const BYTES: usize = 20;

    /// Parse a block from its bytes.
    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..]);
        Self {
            d: [b[0], b[1]],
            m: [b[2], b[3]],
            qs,
        }
    }

    /// The block's bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..2].copy_from_slice(&self.d);
        b[2..4].copy_from_slice(&self.m);
        b[4..].copy_from_slice(&self.qs);
        b
    }

    /// Scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }

    /// Minimum as f32.
    #[inline]
    pub fn min(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.m))
    }

    /// Decode the 32 values.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.scale();
        let m = self.min();
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&self.qs) {
            *l = (q & 0x0f) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }

    /// `quantize_row_q4_1_ref`: `d = (max − min) / 15`, `m = min`,
    /// nibble = `min(15, trunc((x − min)/d + 0.5))`.
    pub fn quantize(x: &[f32; QK]) -> Self {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let x0 = super::trunc_to_u8_x86((x[j] - min) * id + 0.5).min(15);
            let x1 = super::trunc_to_u8_x86((x[j + QK / 2] - min) * id + 0.5).min(15);
            *q = x0 | (x1 << 4);
        }
        Self {
            d: f16_from_f32(d).to_le_bytes(),
            m: f16_from_f32(min).to_le_bytes(),
            qs,
        }
    }
}

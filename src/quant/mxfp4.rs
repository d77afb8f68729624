//! MXFP4 ([LC] `ggml-common.h` `block_mxfp4`; spec §4.2): an E8M0 exponent byte `e` and 16 bytes
//! of E2M1 nibbles; `x[j] = KVALUES_MXFP4[lo(qs[j])] · 2^(e−128)`, `x[j + 16]` from the high
//! nibble. The table holds E2M1 values doubled, so the scale is the E8M0 value halved
//! (ggml's "half" convention); every product is exact in f32. `e = 255` is not NaN.

use super::QK;

/// E2M1 code → value × 2, as ggml's `kvalues_mxfp4` (bit 3 is the sign; 0 and 8 are ±0).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `ggml_e8m0_to_fp32_half`: `2^(e−128)` built bit-exactly, including the two
/// subnormal results for `e < 2`.
#[inline]
pub const fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// `E8M0_TO_F32_HALF[e] == e8m0_to_f32_half(e)` for every exponent byte (a 1 KiB table the SIMD
/// kernels broadcast from memory).
pub static E8M0_TO_F32_HALF: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut e = 0;
    while e < 256 {
        t[e] = e8m0_to_f32_half(e as u8);
        e += 1;
    }
    t
};

/// One MXFP4 block as stored on disk (17 bytes, alignment 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMxfp4 {
    /// Shared E8M0 exponent (bias 127).
    pub e: u8,
    /// Nibbles: element `j` in the low half of `qs[j]`, element `j + 16` in the high half.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockMxfp4>() == BlockMxfp4::BYTES);
const _: () = assert!(std::mem::align_of::<BlockMxfp4>() == 1);

impl BlockMxfp4 {
    /// Bytes per block.
    pub const BYTES: usize = 17;

    /// Parse a block from its bytes.
    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[1..]);
        Self { e: b[0], qs }
    }

    /// The block's bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[0] = self.e;
        b[1..].copy_from_slice(&self.qs);
        b
    }

    /// Decode the 32 values.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = e8m0_to_f32_half(self.e);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&self.qs) {
            *l = KVALUES_MXFP4[(q & 0x0f) as usize] as f32 * d;
            *h = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }

    /// `quantize_row_mxfp4_ref`: `e = floor(log2(amax)) − 2 + 127` (0 when `amax = 0`), then the
    /// table entry nearest to each element (lowest index on ties).
    ///
    /// `log2` is evaluated in f64 and rounded to f32 before the floor, which reproduces the f32
    /// `log2` of the reference near powers of two (checked by the fixtures). For amax below
    /// 2^-125 the reference's float → u8 conversion wraps (x86 behaviour, reproduced here).
    pub fn quantize(x: &[f32; QK]) -> Self {
        let amax = x
            .iter()
            .fold(0.0f32, |a, v| if a < v.abs() { v.abs() } else { a });
        let e = if amax > 0.0 {
            let l = ((amax as f64).log2() as f32).floor();
            super::trunc_to_u8_x86(l - 2.0 + 127.0)
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = best_index(x[j], d) | (best_index(x[j + QK / 2], d) << 4);
        }
        Self { e, qs }
    }
}

/// ggml's `best_index_mxfp4`: first index of the smallest `|kvalues[i]·d − x|`.
#[inline]
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

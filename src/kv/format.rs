//! The byte format of one KV block, its codecs, the per-block key bounds, and attention read
//! directly from encoded blocks (see `docs/kv-format.md`).
//!
//! A block holds `block_tokens` positions of K and V for all KV heads of one layer. Layout
//! (offsets in bytes, `H = n_head_kv`, `T = block_tokens`, `D = head_dim`, `e` = bytes per
//! element: 4 / 2 / 1 for f32 / f16 / fp8):
//!
//! | region   | offset          | size        | order                      |
//! |----------|-----------------|-------------|----------------------------|
//! | K values | `0`             | `H·T·D·e`   | `[head][token][channel]`   |
//! | V values | `H·T·D·e`       | `H·T·D·e`   | `[head][token][channel]`   |
//! | K scales | `2·H·T·D·e`     | `H·T·2`     | `[head][token]`, bf16 LE (fp8 only) |
//! | V scales | `+ H·T·2`       | `H·T·2`     | `[head][token]`, bf16 LE (fp8 only) |
//! | padding  | end of scales   | to a multiple of [`BLOCK_ALIGN`] | zeros        |
//!
//! All multi-byte values are little endian. FP8 is E4M3 with one bf16 scale per (token, KV head)
//! row of K and of V: `value = E4M3(code) · scale`, `scale = max|row| / 448` rounded *up* to
//! bf16 (1 for an all-zero row), so no code saturates. A token's codes and scales are final
//! when it is appended.
//!
//! Invariants: slot `t` of a block is written only by [`encode_token`] and never rewritten while
//! the block lives; [`KeyBounds`] of a block bound the *decoded* keys of every slot written so
//! far (so a Quest-style bound `Σ max(q·min, q·max)` bounds the scores attention computes, up to
//! f32 rounding of the dot product).

use super::KvError;
use crate::kernels::attention::AttnState;
use crate::quant::f16_from_f32;
use crate::quant::fp8::e4m3_from_f32;
use std::fmt;
use std::str::FromStr;

/// Blocks are padded to a multiple of this many bytes (O_DIRECT friendly).
pub const BLOCK_ALIGN: usize = 4096;

/// Largest head dimension the block attention kernels support (row scratch lives on the stack).
pub const MAX_HEAD_DIM: usize = 256;

/// Rows decoded at a time by the block attention kernels (a stack tile of `TILE × head_dim`).
const TILE: usize = 16;

/// Bytes of one stored fp8 row scale (bf16).
const SCALE_BYTES: usize = 2;

/// `x` (positive, finite) rounded up to the next bf16 value; returns its bits.
#[inline]
fn bf16_round_up(x: f32) -> u16 {
    let b = x.to_bits();
    let hi = (b >> 16) as u16;
    if b & 0xffff == 0 {
        hi
    } else {
        hi + 1
    }
}

/// The f32 value of bf16 bits.
#[inline]
fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Largest finite f16 value; f16 encoding clamps to it instead of producing infinity.
const F16_MAX: f32 = 65504.0;

/// Element format of the K and V values in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// IEEE binary32, exact (the reference).
    F32,
    /// IEEE binary16, round to nearest even, clamped to ±65504.
    F16,
    /// FP8 E4M3 with one bf16 scale per (token, KV head) row of K and of V.
    Fp8,
}

impl KvDtype {
    /// Every dtype, in order of decreasing precision.
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Fp8];

    /// Bytes per stored K or V element (scales not included).
    pub fn elem_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
            KvDtype::Fp8 => 1,
        }
    }

    /// Whether blocks of this dtype carry per-row scales.
    pub fn has_scales(self) -> bool {
        self == KvDtype::Fp8
    }

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Fp8 => "fp8",
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown KV dtype name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV dtype {0:?}: expected one of f32, f16, fp8")]
pub struct ParseKvDtypeError(pub String);

impl FromStr for KvDtype {
    type Err = ParseKvDtypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "fp8" => Ok(KvDtype::Fp8),
            _ => Err(ParseKvDtypeError(s.to_string())),
        }
    }
}

/// Shape of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockGeometry {
    /// Positions per block.
    pub block_tokens: usize,
    /// KV heads per layer.
    pub n_head_kv: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

/// Byte offsets of the regions of a block (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Start of the K values.
    pub k_values: usize,
    /// Start of the V values.
    pub v_values: usize,
    /// Start of the K scales (fp8), else `None`.
    pub k_scales: Option<usize>,
    /// Start of the V scales (fp8), else `None`.
    pub v_scales: Option<usize>,
    /// Bytes of K and V values (the "payload").
    pub payload_bytes: usize,
    /// Bytes actually used: values plus scales.
    pub used_bytes: usize,
    /// Size of the block: `used_bytes` rounded up to [`BLOCK_ALIGN`].
    pub block_bytes: usize,
}

impl BlockGeometry {
    /// Values of K (or V) per position: `n_head_kv × head_dim`.
    pub fn row_len(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Check the geometry is usable: nothing zero, `head_dim ≤ MAX_HEAD_DIM`.
    pub fn validate(&self) -> Result<(), KvError> {
        if self.block_tokens == 0 || self.n_head_kv == 0 || self.head_dim == 0 {
            return Err(KvError::Contract(format!("empty block geometry {self:?}")));
        }
        if self.head_dim > MAX_HEAD_DIM {
            return Err(KvError::Contract(format!(
                "head_dim {} exceeds the supported maximum {MAX_HEAD_DIM}",
                self.head_dim
            )));
        }
        Ok(())
    }

    /// The byte layout of a block of this geometry in `dtype`.
    pub fn layout(&self, dtype: KvDtype) -> BlockLayout {
        let values = self.n_head_kv * self.block_tokens * self.head_dim * dtype.elem_bytes();
        let scales = self.n_head_kv * self.block_tokens * SCALE_BYTES;
        let (k_scales, v_scales, used) = if dtype.has_scales() {
            (
                Some(2 * values),
                Some(2 * values + scales),
                2 * values + 2 * scales,
            )
        } else {
            (None, None, 2 * values)
        };
        BlockLayout {
            k_values: 0,
            v_values: values,
            k_scales,
            v_scales,
            payload_bytes: 2 * values,
            used_bytes: used,
            block_bytes: used.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN,
        }
    }

    /// Size in bytes of one block in `dtype` (padded to [`BLOCK_ALIGN`]).
    pub fn block_bytes(&self, dtype: KvDtype) -> usize {
        self.layout(dtype).block_bytes
    }

    /// Byte offset of the value row `(kv_head, t)` of K (`v = false`) or V (`v = true`).
    #[inline]
    fn row_offset(&self, dtype: KvDtype, v: bool, kv_head: usize, t: usize) -> usize {
        let e = dtype.elem_bytes();
        let region = if v {
            self.n_head_kv * self.block_tokens * self.head_dim * e
        } else {
            0
        };
        region + (kv_head * self.block_tokens + t) * self.head_dim * e
    }

    /// Byte offset of the scale of row `(kv_head, t)` (fp8 only).
    #[inline]
    fn scale_offset(&self, v: bool, kv_head: usize, t: usize) -> usize {
        let values = 2 * self.n_head_kv * self.block_tokens * self.head_dim;
        let region = if v {
            values + self.n_head_kv * self.block_tokens * SCALE_BYTES
        } else {
            values
        };
        region + (kv_head * self.block_tokens + t) * SCALE_BYTES
    }
}

/// Per-channel min, max and sum of the decoded keys of one block, for every KV head.
///
/// With no key added, `min = +∞` and `max = −∞` (an empty interval) and the mean is 0.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBounds {
    head_dim: usize,
    min: Vec<f32>,
    max: Vec<f32>,
    /// Per-channel sum of the keys added, and per head how many.
    sum: Vec<f32>,
    count: Vec<u32>,
}

impl KeyBounds {
    /// Empty bounds for `n_head_kv` heads of `head_dim`.
    pub fn new(n_head_kv: usize, head_dim: usize) -> Self {
        KeyBounds {
            head_dim,
            min: vec![f32::INFINITY; n_head_kv * head_dim],
            max: vec![f32::NEG_INFINITY; n_head_kv * head_dim],
            sum: vec![0.0; n_head_kv * head_dim],
            count: vec![0; n_head_kv],
        }
    }

    /// Bounds of `min.len() / head_dim` heads from their per-channel minima and maxima (no
    /// mean: [`Self::mean`] is 0).
    pub fn from_parts(head_dim: usize, min: Vec<f32>, max: Vec<f32>) -> Self {
        let n = min.len();
        KeyBounds {
            head_dim,
            min,
            max,
            sum: vec![0.0; n],
            count: vec![0; n / head_dim.max(1)],
        }
    }

    /// Back to empty without reallocating.
    pub fn reset(&mut self) {
        self.min.iter_mut().for_each(|x| *x = f32::INFINITY);
        self.max.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        self.sum.iter_mut().for_each(|x| *x = 0.0);
        self.count.iter_mut().for_each(|x| *x = 0);
    }

    /// Per-channel mean of the keys of `kv_head` added so far (0 with none) into `out`.
    pub fn mean(&self, kv_head: usize, out: &mut [f32]) {
        let d = self.head_dim;
        let n = self.count.get(kv_head).copied().unwrap_or(0).max(1) as f32;
        for (o, &x) in out.iter_mut().zip(&self.sum[kv_head * d..][..d]) {
            *o = x / n;
        }
    }

    /// Widen the bounds of `kv_head` to include `key` (`head_dim` values).
    pub fn update(&mut self, kv_head: usize, key: &[f32]) {
        let d = self.head_dim;
        let lo = &mut self.min[kv_head * d..][..d];
        let hi = &mut self.max[kv_head * d..][..d];
        for ((l, h), &k) in lo.iter_mut().zip(hi.iter_mut()).zip(key) {
            *l = l.min(k);
            *h = h.max(k);
        }
        for (s, &k) in self.sum[kv_head * d..][..d].iter_mut().zip(key) {
            *s += k;
        }
        self.count[kv_head] += 1;
    }

    /// Per-channel minimum of `kv_head`.
    pub fn min(&self, kv_head: usize) -> &[f32] {
        &self.min[kv_head * self.head_dim..][..self.head_dim]
    }

    /// Per-channel maximum of `kv_head`.
    pub fn max(&self, kv_head: usize) -> &[f32] {
        &self.max[kv_head * self.head_dim..][..self.head_dim]
    }

    /// [`Self::upper_bound_dot`] with the query split once into its positive part `qp =
    /// max(q, 0)` and negative part `qn = min(q, 0)` (both possibly pre-scaled):
    /// `Σ_j qp_j · max_j + qn_j · min_j`, summed in 16 independent lanes (vectorizes), −∞ for
    /// empty bounds. Equal to `upper_bound_dot` up to float summation order.
    pub fn upper_bound_split(&self, kv_head: usize, qp: &[f32], qn: &[f32]) -> f32 {
        let (lo, hi) = (self.min(kv_head), self.max(kv_head));
        let d = self.head_dim.min(qp.len()).min(qn.len());
        let mut acc = [0.0f32; 16];
        let full = d / 16 * 16;
        for (((h, l), p), n) in hi[..full]
            .chunks_exact(16)
            .zip(lo[..full].chunks_exact(16))
            .zip(qp[..full].chunks_exact(16))
            .zip(qn[..full].chunks_exact(16))
        {
            for i in 0..16 {
                acc[i] += p[i] * h[i] + n[i] * l[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for j in full..d {
            s += qp[j] * hi[j] + qn[j] * lo[j];
        }
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    }

    /// Quest-style upper bound of `q · k` over the keys of `kv_head`:
    /// `Σ_j max(q_j · min_j, q_j · max_j)` (−∞ for empty bounds).
    pub fn upper_bound_dot(&self, kv_head: usize, q: &[f32]) -> f32 {
        self.min(kv_head)
            .iter()
            .zip(self.max(kv_head))
            .zip(q)
            .map(|((&lo, &hi), &qj)| if qj >= 0.0 { qj * hi } else { qj * lo })
            .sum()
    }
}

/// Encode one row of `head_dim` values at `dst`; returns the bf16 bits of the scale (fp8), or
/// `None`.
#[inline]
fn encode_row(dtype: KvDtype, src: &[f32], dst: &mut [u8]) -> Option<u16> {
    match dtype {
        KvDtype::F32 => {
            for (d, &s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
            None
        }
        KvDtype::F16 => {
            for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
                // NaN passes through (clamp keeps NaN); finite overflow clamps to ±65504.
                d.copy_from_slice(&f16_from_f32(s.clamp(-F16_MAX, F16_MAX)).to_le_bytes());
            }
            None
        }
        KvDtype::Fp8 => {
            let amax = src
                .iter()
                .filter(|x| x.is_finite())
                .fold(0.0f32, |m, &x| m.max(x.abs()));
            let scale = amax / 448.0;
            // Rounded up to bf16, so |x| / scale <= 448 for every element; a zero, subnormal
            // or non-finite candidate falls back to 1.
            let bits = if scale >= f32::MIN_POSITIVE && scale.is_finite() {
                bf16_round_up(scale)
            } else {
                bf16_round_up(1.0)
            };
            let scale = bf16_value(bits);
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = e4m3_from_f32(s / scale);
            }
            Some(bits)
        }
    }
}

/// Decode the `c` consecutive unscaled rows `t..t + c` of K (`is_v = false`) or V of
/// `kv_head` into `out[..c · head_dim]` (one kernel call: the rows are contiguous in the block)
/// and their scales into `rs[..c]` (1 for f32 and f16).
#[allow(clippy::too_many_arguments)]
#[inline]
fn decode_tile(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    is_v: bool,
    kv_head: usize,
    t: usize,
    c: usize,
    out: &mut [f32],
    rs: &mut [f32],
) {
    let n = c * geo.head_dim;
    let off = geo.row_offset(dtype, is_v, kv_head, t);
    let src = &block[off..off + n * dtype.elem_bytes()];
    let out = &mut out[..n];
    match dtype {
        KvDtype::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            rs[..c].fill(1.0);
        }
        KvDtype::F16 => {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            let mut bits = [0u16; MAX_HEAD_DIM];
            for (o, s) in out
                .chunks_mut(MAX_HEAD_DIM)
                .zip(src.chunks(2 * MAX_HEAD_DIM))
            {
                let m = o.len();
                for (x, b) in bits.iter_mut().zip(s.chunks_exact(2)) {
                    *x = u16::from_le_bytes([b[0], b[1]]);
                }
                bits[..m]
                    .reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(o);
            }
            rs[..c].fill(1.0);
        }
        KvDtype::Fp8 => {
            crate::kernels::e4m3_decode(src, out);
            let so = geo.scale_offset(is_v, kv_head, t);
            for (r, b) in rs[..c]
                .iter_mut()
                .zip(block[so..so + SCALE_BYTES * c].chunks_exact(SCALE_BYTES))
            {
                *r = bf16_value(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

/// Reusable buffers of the block attention kernel (allocate once per thread).
#[derive(Debug, Clone)]
pub struct BlockScratch {
    tile: Vec<f32>,
    accbuf: Vec<f32>,
    w: Vec<f32>,
    scores: Vec<f32>,
}

impl BlockScratch {
    /// Buffers for blocks of `geo` and up to `max_queries` query heads per call (more are
    /// handled by growing the score buffer).
    pub fn new(geo: &BlockGeometry, max_queries: usize) -> Self {
        BlockScratch {
            tile: vec![0.0; TILE * geo.head_dim],
            accbuf: vec![0.0; SG * geo.head_dim],
            w: vec![0.0; SG * TILE],
            scores: vec![0.0; max_queries * geo.block_tokens],
        }
    }
}

/// Query heads whose accumulators pass 2 keeps in one buffer.
const SG: usize = 16;

fn check_block(geo: &BlockGeometry, dtype: KvDtype, block: &[u8], t: usize) -> Result<(), KvError> {
    geo.validate()?;
    let need = geo.layout(dtype).used_bytes;
    if block.len() < need || t >= geo.block_tokens {
        return Err(KvError::Contract(format!(
            "block of {} bytes, slot {t}: need ≥ {need} bytes and slot < {}",
            block.len(),
            geo.block_tokens
        )));
    }
    Ok(())
}

/// Encode the K and V rows (`n_head_kv × head_dim` f32 each) of one token into slot `t` of
/// `block`, and widen `bounds` (if given) with the decoded keys.
pub fn encode_token(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &mut [u8],
    t: usize,
    k: &[f32],
    v: &[f32],
    bounds: Option<&mut KeyBounds>,
) -> Result<(), KvError> {
    check_block(geo, dtype, block, t)?;
    let row = geo.row_len();
    if k.len() != row || v.len() != row {
        return Err(KvError::Contract(format!(
            "encode_token: rows of {}/{} values, expected {row}",
            k.len(),
            v.len()
        )));
    }
    let d = geo.head_dim;
    let rb = d * dtype.elem_bytes();
    for h in 0..geo.n_head_kv {
        for (is_v, src) in [(false, k), (true, v)] {
            let off = geo.row_offset(dtype, is_v, h, t);
            if let Some(bits) = encode_row(dtype, &src[h * d..][..d], &mut block[off..off + rb]) {
                let so = geo.scale_offset(is_v, h, t);
                block[so..so + SCALE_BYTES].copy_from_slice(&bits.to_le_bytes());
            }
        }
    }
    if let Some(b) = bounds {
        let mut key = [0.0f32; MAX_HEAD_DIM];
        for h in 0..geo.n_head_kv {
            decode_k_row(geo, dtype, block, h, t, &mut key[..d]);
            b.update(h, &key[..d]);
        }
    }
    Ok(())
}

/// Decoded K (`is_v = false`) or V row of `(kv_head, t)`, scale applied, into `out[..head_dim]`.
fn decode_row(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    is_v: bool,
    kv_head: usize,
    t: usize,
    out: &mut [f32],
) {
    let out = &mut out[..geo.head_dim];
    let mut s = [0.0f32; 1];
    decode_tile(geo, dtype, block, is_v, kv_head, t, 1, out, &mut s);
    let s = s[0];
    if s != 1.0 {
        out.iter_mut().for_each(|x| *x *= s);
    }
}

/// Decoded K row of `(kv_head, t)` (`head_dim` values, scale applied) into `out`.
pub fn decode_k_row(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    kv_head: usize,
    t: usize,
    out: &mut [f32],
) {
    decode_row(geo, dtype, block, false, kv_head, t, out)
}

/// Decoded V row of `(kv_head, t)` (`head_dim` values, scale applied) into `out`.
pub fn decode_v_row(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    kv_head: usize,
    t: usize,
    out: &mut [f32],
) {
    decode_row(geo, dtype, block, true, kv_head, t, out)
}

/// Decode the first `n` K and V rows of `kv_head` as two `n × head_dim` f32 arrays (tests,
/// references; attention never makes this copy).
pub fn decode_head(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    kv_head: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let d = geo.head_dim;
    let mut k = vec![0.0; n * d];
    let mut v = vec![0.0; n * d];
    for t in 0..n {
        decode_k_row(geo, dtype, block, kv_head, t, &mut k[t * d..][..d]);
        decode_v_row(geo, dtype, block, kv_head, t, &mut v[t * d..][..d]);
    }
    (k, v)
}

/// One block being filled in RAM: its bytes, fill level and key bounds.
#[derive(Debug, Clone)]
pub struct BlockBuf {
    geo: BlockGeometry,
    dtype: KvDtype,
    bytes: Vec<u8>,
    len: usize,
    bounds: KeyBounds,
}

impl BlockBuf {
    /// An empty, zeroed block.
    pub fn new(geo: BlockGeometry, dtype: KvDtype) -> Result<Self, KvError> {
        geo.validate()?;
        Ok(BlockBuf {
            bytes: vec![0; geo.block_bytes(dtype)],
            bounds: KeyBounds::new(geo.n_head_kv, geo.head_dim),
            len: 0,
            geo,
            dtype,
        })
    }

    /// Append the next token's K and V rows (`n_head_kv × head_dim` each).
    pub fn push(&mut self, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        if self.is_full() {
            return Err(KvError::Contract("push to a full block".into()));
        }
        encode_token(
            &self.geo,
            self.dtype,
            &mut self.bytes,
            self.len,
            k,
            v,
            Some(&mut self.bounds),
        )?;
        self.len += 1;
        Ok(())
    }

    /// Tokens stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether all `block_tokens` slots are stored.
    pub fn is_full(&self) -> bool {
        self.len == self.geo.block_tokens
    }

    /// The block's bytes (`block_bytes` long, padding zeroed).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key bounds of the stored tokens.
    pub fn bounds(&self) -> &KeyBounds {
        &self.bounds
    }

    /// Geometry.
    pub fn geometry(&self) -> &BlockGeometry {
        &self.geo
    }

    /// Dtype.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Empty the block (zeroes the bytes and the bounds).
    pub fn clear(&mut self) {
        self.bytes.iter_mut().for_each(|b| *b = 0);
        self.bounds.reset();
        self.len = 0;
    }
}

/// Attention of one query head over the first `n_valid` slots of `kv_head` in an encoded block,
/// fed into `state`'s online softmax. `scores` is scratch of at least `n_valid` elements.
///
/// K and V rows are decoded a tile of 16 rows at a time into a stack buffer (no block-sized
/// f32 copy). Same
/// bits as [`attend_block_gqa`] with one query.
#[allow(clippy::too_many_arguments)]
pub fn attend_block(
    state: &mut AttnState,
    q: &[f32],
    block: &[u8],
    geo: &BlockGeometry,
    dtype: KvDtype,
    kv_head: usize,
    n_valid: usize,
    scale: f32,
    scores: &mut [f32],
) {
    attend_block_gqa(
        std::slice::from_mut(state),
        q,
        block,
        geo,
        dtype,
        kv_head,
        n_valid,
        scale,
        scores,
    )
}

/// Grouped-query attention over one block: `states.len()` query heads that share `kv_head`
/// (`q` holds their `group × head_dim` queries, head after head). Each K and V row is decoded
/// once and used by every query of the group. `scores` is scratch of at least
/// `group × n_valid` elements.
///
/// For fp8, the row scale is applied to the score (`(q · codes) · (scale_k · scale)`) and to
/// the softmax weight of the value row, never to the row itself.
///
/// Panics (caller contract) if the slices are too short, `kv_head` or `n_valid` are out of
/// range, or a state's `head_dim` differs from the geometry's.
#[allow(clippy::too_many_arguments)]
pub fn attend_block_gqa(
    states: &mut [AttnState],
    q: &[f32],
    block: &[u8],
    geo: &BlockGeometry,
    dtype: KvDtype,
    kv_head: usize,
    n_valid: usize,
    scale: f32,
    scores: &mut [f32],
) {
    assert!(
        scores.len() >= states.len() * n_valid,
        "scores scratch too short"
    );
    let mut scratch = BlockScratch::new(geo, states.len());
    attend_block_range(
        states,
        q,
        block,
        geo,
        dtype,
        kv_head,
        0..n_valid,
        scale,
        &mut scratch,
    )
}

/// [`attend_block_gqa`] over the slots `range` of the block only (a sliding window or a causal
/// limit that starts or ends inside the block), with reusable buffers.
#[allow(clippy::too_many_arguments)]
pub fn attend_block_range(
    states: &mut [AttnState],
    q: &[f32],
    block: &[u8],
    geo: &BlockGeometry,
    dtype: KvDtype,
    kv_head: usize,
    range: std::ops::Range<usize>,
    scale: f32,
    scratch: &mut BlockScratch,
) {
    attend_block_runs(
        states,
        q,
        block,
        geo,
        dtype,
        kv_head,
        std::slice::from_ref(&range),
        scale,
        scratch,
    )
}

/// Decode the rows `runs` (slot ranges, in order) from logical row `from` on into `tile` (up
/// to [`TILE`] rows) and their scales into `rs`; returns how many rows it decoded. A tile
/// packs rows of consecutive runs, so short runs cost no extra kernel calls downstream.
#[allow(clippy::too_many_arguments)]
fn decode_runs_tile(
    geo: &BlockGeometry,
    dtype: KvDtype,
    block: &[u8],
    is_v: bool,
    kv_head: usize,
    runs: &[std::ops::Range<usize>],
    from: usize,
    tile: &mut [f32],
    rs: &mut [f32],
) -> usize {
    let d = geo.head_dim;
    let (mut skip, mut filled) = (from, 0);
    for r in runs {
        let len = r.end.saturating_sub(r.start);
        if skip >= len {
            skip -= len;
            continue;
        }
        let start = r.start + skip;
        let k = (len - skip).min(TILE - filled);
        skip = 0;
        decode_tile(
            geo,
            dtype,
            block,
            is_v,
            kv_head,
            start,
            k,
            &mut tile[filled * d..],
            &mut rs[filled..],
        );
        filled += k;
        if filled == TILE {
            break;
        }
    }
    filled
}

/// [`attend_block_range`] over several slot ranges of the block at once (`runs`, increasing and
/// disjoint): the rows of all of them are one softmax update, decoded in tiles that pack
/// consecutive runs. One call per (block, KV head) whatever the number of runs (sparse
/// selection units inside a block).
#[allow(clippy::too_many_arguments)]
pub fn attend_block_runs(
    states: &mut [AttnState],
    q: &[f32],
    block: &[u8],
    geo: &BlockGeometry,
    dtype: KvDtype,
    kv_head: usize,
    runs: &[std::ops::Range<usize>],
    scale: f32,
    scratch: &mut BlockScratch,
) {
    let d = geo.head_dim;
    let g = states.len();
    let n: usize = runs.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    assert!(d <= MAX_HEAD_DIM, "head_dim {d} > {MAX_HEAD_DIM}");
    assert!(kv_head < geo.n_head_kv && runs.iter().all(|r| r.end <= geo.block_tokens));
    assert!(
        runs.windows(2).all(|w| w[0].end <= w[1].start),
        "runs out of order"
    );
    assert!(q.len() >= g * d);
    if scratch.scores.len() < g * n {
        scratch.scores.resize(g * n, 0.0);
    }
    if scratch.tile.len() < TILE * d {
        scratch.tile.resize(TILE * d, 0.0);
        scratch.accbuf.resize(SG * d, 0.0);
    }
    let BlockScratch {
        tile,
        accbuf,
        w,
        scores,
    } = scratch;
    assert!(
        block.len() >= geo.layout(dtype).used_bytes,
        "block too short"
    );
    assert!(states.iter().all(|s| s.acc.len() == d), "state head_dim");
    if n == 0 || g == 0 {
        return;
    }
    let mut rs = [0.0f32; TILE];
    // Pass 1: scores. A tile of decoded K rows serves every query of the group.
    let mut t0 = 0;
    while t0 < n {
        let c = decode_runs_tile(geo, dtype, block, false, kv_head, runs, t0, tile, &mut rs);
        crate::kernels::dots_multi(&q[..g * d], d, &tile[..c * d], c, &mut scores[t0..], n);
        for gi in 0..g {
            for (s, r) in scores[gi * n + t0..][..c].iter_mut().zip(&rs[..c]) {
                *s *= r * scale;
            }
        }
        t0 += c;
    }
    // Online softmax update per query head; scores become exp(score − m).
    for (gi, st) in states.iter_mut().enumerate() {
        let sc = &mut scores[gi * n..][..n];
        let cmax = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let new_m = st.m.max(cmax);
        let corr = if st.m == f32::NEG_INFINITY {
            0.0
        } else {
            (st.m - new_m).exp()
        };
        if corr != 1.0 {
            st.l *= corr;
            st.acc.iter_mut().for_each(|a| *a *= corr);
        }
        st.l += crate::kernels::exp_shift_sum(sc, new_m);
        st.m = new_m;
    }
    // Pass 2: values, for up to SG query heads at a time whose accumulators sit in one
    // contiguous buffer. A tile of decoded V rows serves all of them; the fp8 row scale goes
    // into the weight. Each accumulator element gets one FMA per row, rows in order, whatever
    // the grouping.
    for sg0 in (0..g).step_by(SG) {
        let sgn = SG.min(g - sg0);
        let group = &mut states[sg0..sg0 + sgn];
        for (j, st) in group.iter().enumerate() {
            accbuf[j * d..(j + 1) * d].copy_from_slice(&st.acc);
        }
        let mut t0 = 0;
        while t0 < n {
            let c = decode_runs_tile(geo, dtype, block, true, kv_head, runs, t0, tile, &mut rs);
            for j in 0..sgn {
                let sc = &scores[(sg0 + j) * n + t0..][..c];
                for i in 0..c {
                    w[j * TILE + i] = sc[i] * rs[i];
                }
            }
            crate::kernels::axpys_multi(w, TILE, &tile[..c * d], c, &mut accbuf[..sgn * d], d);
            t0 += c;
        }
        for (j, st) in group.iter_mut().enumerate() {
            st.acc.copy_from_slice(&accbuf[j * d..(j + 1) * d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_oss_fp8_block_is_64k_payload_plus_2k_scales() {
        let geo = BlockGeometry {
            block_tokens: 64,
            n_head_kv: 8,
            head_dim: 64,
        };
        let l = geo.layout(KvDtype::Fp8);
        assert_eq!(l.payload_bytes, 65536);
        assert_eq!(l.k_scales, Some(65536));
        assert_eq!(l.v_scales, Some(65536 + 1024));
        assert_eq!(l.used_bytes, 65536 + 2048);
        assert_eq!(l.block_bytes, 69632);
        assert_eq!(geo.block_bytes(KvDtype::F16), 131072);
        assert_eq!(geo.block_bytes(KvDtype::F32), 262144);
    }

    #[test]
    fn dtype_parses_and_displays() {
        for d in KvDtype::ALL {
            assert_eq!(d.to_string().parse::<KvDtype>().unwrap(), d);
        }
        assert_eq!("FP8".parse::<KvDtype>().unwrap(), KvDtype::Fp8);
        assert!("bf16".parse::<KvDtype>().is_err());
    }

    #[test]
    fn bounds_contain_decoded_keys_and_bound_dots() {
        let geo = BlockGeometry {
            block_tokens: 4,
            n_head_kv: 2,
            head_dim: 3,
        };
        let mut b = BlockBuf::new(geo, KvDtype::F32).unwrap();
        b.push(&[1.0, -2.0, 3.0, 0.5, 0.5, 0.5], &[0.0; 6]).unwrap();
        b.push(&[-1.0, 2.0, 0.0, 0.1, 0.2, 0.3], &[0.0; 6]).unwrap();
        assert_eq!(b.bounds().min(0), &[-1.0, -2.0, 0.0]);
        assert_eq!(b.bounds().max(0), &[1.0, 2.0, 3.0]);
        let q = [1.0, -1.0, 2.0];
        assert_eq!(b.bounds().upper_bound_dot(0, &q), 1.0 + 2.0 + 6.0);
    }
}

//! Portable kernels: always compiled, the reference for the SIMD levels, and the fallback on
//! CPUs without AVX2.
//!
//! Dot products keep 8 interleaved partial sums (element `i` goes to sum `i % 8`, combined
//! pairwise at the end), the same shape as the SIMD kernels, so every level has a rounding-error
//! chain of depth at most `⌈n/8⌉ + 8` (see the module docs of `kernels`).

use crate::gguf::GgmlType;
use crate::quant::{bf16_to_f32, f16_to_f32, BlockMxfp4, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

#[inline]
fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `Σ w[i]·x[i]` for `w` given element by element.
#[inline]
fn dot_elems(n: usize, w: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += w(i + l) * x[i + l];
        }
    }
    for i in full..n {
        acc[i - full] += w(i) * x[i];
    }
    reduce8(acc)
}

#[inline]
fn dot_blocks<const B: usize>(
    row: &[u8],
    x: &[f32],
    decode: impl Fn(&[u8; B], &mut [f32; QK]),
) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut w = [0.0f32; QK];
    let (blocks, _) = row.as_chunks::<B>();
    let (xs, _) = x.as_chunks::<QK>();
    for (b, xb) in blocks.iter().zip(xs) {
        decode(b, &mut w);
        for i in (0..QK).step_by(8) {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += w[i + l] * xb[i + l];
            }
        }
    }
    reduce8(acc)
}

/// One weight row (raw bytes of `ty`) · `x`. Lengths checked by the caller.
pub(crate) fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => dot_elems(
            x.len(),
            |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
            x,
        ),
        GgmlType::F16 => dot_elems(
            x.len(),
            |i| f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
            x,
        ),
        GgmlType::BF16 => dot_elems(
            x.len(),
            |i| bf16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
            x,
        ),
        GgmlType::Q8_0 => dot_blocks::<{ BlockQ8_0::BYTES }>(row, x, |b, w| {
            BlockQ8_0::from_bytes(b).dequantize(w)
        }),
        GgmlType::Q4_0 => dot_blocks::<{ BlockQ4_0::BYTES }>(row, x, |b, w| {
            BlockQ4_0::from_bytes(b).dequantize(w)
        }),
        GgmlType::Q4_1 => dot_blocks::<{ BlockQ4_1::BYTES }>(row, x, |b, w| {
            BlockQ4_1::from_bytes(b).dequantize(w)
        }),
        GgmlType::MXFP4 => dot_blocks::<{ BlockMxfp4::BYTES }>(row, x, |b, w| {
            BlockMxfp4::from_bytes(b).dequantize(w)
        }),
        _ => unreachable!("type checked by the caller"),
    }
}

/// `y[i] = row_i · x` for consecutive rows of `row_bytes` bytes.
pub(crate) fn dot_rows(ty: GgmlType, w: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) {
    for (yi, row) in y.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *yi = dot_row(ty, row, x);
    }
}

/// Decode a row to f32 (bit-identical to `quant::dequantize_row`). Lengths checked by the caller.
pub(crate) fn dequant_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    crate::quant::dequantize_row(ty, row, out).expect("lengths and type checked by the caller");
}

/// `Σ a[i]·b[i]`, 8 partial sums.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_elems(a.len(), |i| a[i], b)
}

/// `y += a·x`, element-wise (one rounding for the product, one for the sum).
pub(crate) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `Σ x[i]²` with each square rounded to f32 and the sum accumulated in f64, in order (ggml's
/// `rms_norm_f32`).
pub(crate) fn sum_squares_f64(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v * v) as f64).sum()
}

/// Dot products of `mr` decoded weight rows (`w`, row stride `cols`) with `nt` activation rows
/// (`x`, row stride `cols`): `out[t * ldo + r] = w_r · x_t`.
pub(crate) fn tile_dots(
    w: &[f32],
    mr: usize,
    x: &[f32],
    nt: usize,
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for t in 0..nt {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..mr {
            out[t * ldo + r] = dot_f32(&w[r * cols..(r + 1) * cols], xt);
        }
    }
}

/// Constants of the exp kernel (Cephes `expf`): `exp(x) = 2^n · e^r`, `n = round(x·log2 e)`,
/// `r = x − n·ln2` in two parts, `e^r ≈ 1 + r + r²·P(r)`. Every level runs these exact
/// operations (fused multiply-adds where written `mul_add`), so all levels agree bit for bit.
pub(crate) mod expc {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P0: f32 = 1.987_569_1e-4;
    pub const P1: f32 = 1.398_199_9e-3;
    pub const P2: f32 = 8.333_452e-3;
    pub const P3: f32 = 4.166_579_6e-2;
    pub const P4: f32 = 1.666_666_5e-1;
    pub const P5: f32 = 0.5;
    /// Below this, the result is 0 (it would be subnormal).
    pub const MIN_X: f32 = -87.33;
    /// Above this, the result is clamped (callers pass x ≤ 0).
    pub const MAX_X: f32 = 88.37;
}

/// `exp(x)` by the [`expc`] recipe.
#[inline]
pub(crate) fn exp_one(x: f32) -> f32 {
    use expc::*;
    if x.is_nan() {
        return x;
    }
    if x < MIN_X {
        return 0.0;
    }
    let x = x.min(MAX_X);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = P0;
    p = p.mul_add(r, P1);
    p = p.mul_add(r, P2);
    p = p.mul_add(r, P3);
    p = p.mul_add(r, P4);
    p = p.mul_add(r, P5);
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `x[i] = exp(x[i] − m)`; returns `Σ x[i]` (summed in order).
pub(crate) fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = exp_one(*v - m);
        s += *v;
    }
    s
}

/// FP8 E4M3 codes to f32 (exact; table lookup).
pub(crate) fn e4m3_decode(src: &[u8], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(src) {
        *o = crate::quant::fp8::E4M3_TO_F32[b as usize];
    }
}

/// `out[q·ldo + i] = qs[q] · keys[i]` for the `qs.len() / d` queries and `c` key rows of `d`.
pub(crate) fn dots_multi(
    qs: &[f32],
    d: usize,
    keys: &[f32],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for (qi, q) in qs.chunks_exact(d).enumerate() {
        for i in 0..c {
            out[qi * ldo + i] = dot_f32(q, &keys[i * d..(i + 1) * d]);
        }
    }
}

/// `out[q·ldo + i] = Σ_j qt[j·nq + q] · tile[j·COL_TILE + i]` for the `nq` queries (stored
/// transposed) and the first `c` columns of a column-major bf16 tile (products summed in `j`
/// order).
pub(crate) fn col_dots_bf16(
    qt: &[f32],
    nq: usize,
    tile: &[u16],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let n = qt.len() / nq.max(1);
    for q in 0..nq {
        for i in 0..c {
            let mut acc = 0.0f32;
            for j in 0..n {
                let k = f32::from_bits((tile[j * super::COL_TILE + i] as u32) << 16);
                acc = qt[j * nq + q].mul_add(k, acc);
            }
            out[q * ldo + i] = acc;
        }
    }
}

/// `accs[q] += Σᵢ w[q·ldw + i] · values[i]` for the `accs.len() / d` accumulators and `c` value
/// rows of `d` (rows in order, like [`axpy`] per row).
pub(crate) fn axpys_multi(
    w: &[f32],
    ldw: usize,
    values: &[f32],
    c: usize,
    accs: &mut [f32],
    d: usize,
) {
    for (qi, acc) in accs.chunks_exact_mut(d).enumerate() {
        for i in 0..c {
            axpy(w[qi * ldw + i], &values[i * d..(i + 1) * d], acc);
        }
    }
}

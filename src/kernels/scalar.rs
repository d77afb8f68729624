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

/// `out[i] = q · keys[i·stride ..][..q.len()]` for every `i < out.len()`.
pub(crate) fn dots_strided(q: &[f32], keys: &[f32], stride: usize, out: &mut [f32]) {
    let d = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_f32(q, &keys[i * stride..i * stride + d]);
    }
}

/// `acc += Σᵢ p[i] · values[i·stride ..][..acc.len()]`.
pub(crate) fn axpys_strided(p: &[f32], values: &[f32], stride: usize, acc: &mut [f32]) {
    let d = acc.len();
    for (i, &pi) in p.iter().enumerate() {
        axpy(pi, &values[i * stride..i * stride + d], acc);
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

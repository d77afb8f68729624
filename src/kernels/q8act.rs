//! Activations quantized to 8 bits, as llama.cpp does before a quantized dot product.
//!
//! llama.cpp does not multiply Q4_1/Q8_0/Q4_0 weights against f32 activations: it first quantizes
//! each 32-element block of the activation row (Q8_1 for Q4_0/Q4_1 weights, Q8_0 for Q8_0
//! weights) and then computes integer dot products per block (gpt-oss-spec.md §5 "B").
//! kvspool's `--precision exact` path keeps f32 activations (more exact); this module is the
//! `--precision fast` path, which reproduces llama.cpp's arithmetic and is the basis of the
//! integer (VNNI) kernels. Scalar reference code; results are deterministic.
//!
//! Invariant: a quantized activation row has `cols / 32` blocks, each with `d` (and for Q8_1
//! `s = d·Σq`) rounded through f16 exactly as ggml stores them.

use crate::gguf::GgmlType;
use half::f16;
use rayon::prelude::*;

/// One 32-element block of a quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct Q8Block {
    /// Scale (f16-rounded).
    pub d: f32,
    /// `d · Σ qs` (f16-rounded; used by Q8_1 dots with offset formats).
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; 32],
}

/// Quantize `x` (a multiple of 32 long) into blocks as ggml's x86 `quantize_row_q8_0/q8_1` do
/// at run time: `d = max|x|/127`, `q = round_ties_even(x · 127/max|x|)`, `s = d·Σq`.
pub fn quantize_q8(x: &[f32], out: &mut Vec<Q8Block>) {
    out.clear();
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(b) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        out.push(Q8Block {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(sum as f32 * d).to_f32(),
            qs,
        });
    }
}

/// Whether `ty` has an 8-bit-activation dot here.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dot of one weight row (raw GGUF bytes) with a quantized activation row, per ggml's
/// `ggml_vec_dot_{q4_0_q8_0, q4_1_q8_1, q8_0_q8_0}` generic code.
pub fn dot_q8(ty: GgmlType, row: &[u8], y: &[Q8Block]) -> f32 {
    let mut sumf = 0.0f32;
    match ty {
        GgmlType::Q4_1 => {
            for (w, yb) in row.chunks_exact(20).zip(y) {
                let (d, m) = (h(&w[0..2]), h(&w[2..4]));
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += (w[4 + j] & 15) as i32 * yb.qs[j] as i32
                        + (w[4 + j] >> 4) as i32 * yb.qs[j + 16] as i32;
                }
                sumf += (d * yb.d) * sumi as f32 + m * yb.s;
            }
        }
        GgmlType::Q4_0 => {
            for (w, yb) in row.chunks_exact(18).zip(y) {
                let d = h(&w[0..2]);
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += ((w[2 + j] & 15) as i32 - 8) * yb.qs[j] as i32
                        + ((w[2 + j] >> 4) as i32 - 8) * yb.qs[j + 16] as i32;
                }
                sumf += sumi as f32 * (d * yb.d);
            }
        }
        GgmlType::Q8_0 => {
            for (w, yb) in row.chunks_exact(34).zip(y) {
                let d = h(&w[0..2]);
                let mut sumi = 0i32;
                for j in 0..32 {
                    sumi += (w[2 + j] as i8) as i32 * yb.qs[j] as i32;
                }
                sumf += sumi as f32 * (d * yb.d);
            }
        }
        _ => unreachable!("dot_q8 called for {ty}; check supports() first"),
    }
    sumf
}

/// `y (n × rows) = x (n × cols) · Wᵀ` with activations quantized to 8 bits per row.
/// Panics if `ty` is not [`supports`]ed or lengths disagree (caller contract).
pub fn matmat_q8(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert!(supports(ty) && cols.is_multiple_of(32) && x.len() == n * cols && y.len() == n * rows);
    let rb = cols / 32 * ty.type_size();
    assert!(w.len() >= rows * rb);
    let qx: Vec<Vec<Q8Block>> = x
        .chunks_exact(cols)
        .map(|r| {
            let mut v = Vec::with_capacity(cols / 32);
            quantize_q8(r, &mut v);
            v
        })
        .collect();
    // Parallel over chunks of output rows; each task writes its rows for every token.
    const CHUNK: usize = 32;
    let parts: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * CHUNK;
            let r1 = (r0 + CHUNK).min(rows);
            let mut out = vec![0.0f32; (r1 - r0) * n];
            for r in r0..r1 {
                let row = &w[r * rb..(r + 1) * rb];
                for (t, q) in qx.iter().enumerate() {
                    out[(r - r0) * n + t] = dot_q8(ty, row, q);
                }
            }
            (r0, out)
        })
        .collect();
    for (r0, out) in parts {
        let m = out.len() / n;
        for i in 0..m {
            for t in 0..n {
                y[t * rows + r0 + i] = out[i * n + t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn q8_dot_is_close_to_f32_dot_within_quantization_error() {
        let mut s = 3u64;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for cols in [32usize, 96, 576, 1536] {
                let wf: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
                let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 4.0).collect();
                let mut w = vec![0u8; cols / 32 * ty.type_size()];
                crate::quant::quantize_row(ty, &wf, &mut w).unwrap();
                let mut wd = vec![0.0f32; cols];
                crate::quant::dequantize_row(ty, &w, &mut wd).unwrap();
                let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mut q = Vec::new();
                quantize_q8(&x, &mut q);
                let got = dot_q8(ty, &w, &q) as f64;
                // Each activation is off by at most d/2 = max|x_block|/254, plus f16 rounding of
                // d and s (relative 2^-11): bound by Σ|w|·(max|x|/254 + |x|·2^-10).
                let bound: f64 = wd
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a.abs() as f64 * (4.0 / 254.0 + b.abs() as f64 / 1024.0))
                    .sum();
                assert!(
                    (got - exact).abs() <= bound,
                    "{ty} cols {cols}: {got} vs {exact} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn matmat_q8_matches_per_row_dots() {
        let (rows, cols, n) = (70, 64, 3);
        let mut s = 9u64;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let ty = GgmlType::Q4_1;
        let rb = cols / 32 * ty.type_size();
        let mut w = vec![0u8; rows * rb];
        for r in 0..rows {
            crate::quant::quantize_row(
                ty,
                &wf[r * cols..(r + 1) * cols],
                &mut w[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut s)).collect();
        let mut y = vec![0.0; n * rows];
        matmat_q8(ty, &w, rows, cols, &x, n, &mut y);
        for t in 0..n {
            let mut q = Vec::new();
            quantize_q8(&x[t * cols..(t + 1) * cols], &mut q);
            for r in 0..rows {
                assert_eq!(y[t * rows + r], dot_q8(ty, &w[r * rb..(r + 1) * rb], &q));
            }
        }
    }
}

//! Element-wise and reduction kernels on f32 vectors: norms, softmax, activations, BLAS-1.

use super::dispatch::{assert_available, simd_level, SimdLevel};
use super::matmul::at_level;
use super::scalar;

/// RMS normalisation as ggml's fused `rms_norm` + `mul`:
/// `out[i] = (x[i] · s) · weight[i]` with `s = 1 / sqrt(mean + eps)`,
/// `mean = (Σ x[i]² accumulated in f64) / n` rounded to f32, each square rounded to f32 first.
///
/// ggml sums the squares sequentially; the SIMD levels sum them in 8 or 16 f64 lanes, which
/// changes the f64 sum by a few f64 ulps and therefore the f32 `mean` essentially never.
/// Panics (caller contract) unless `x`, `weight` and `out` have equal lengths. Empty input is a
/// no-op.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rmsnorm_at(simd_level(), x, weight, eps, out)
}

/// [`rmsnorm`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn rmsnorm_at(level: SimdLevel, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_available(level);
    assert_eq!(
        x.len(),
        weight.len(),
        "rmsnorm: x and weight lengths differ"
    );
    assert_eq!(x.len(), out.len(), "rmsnorm: x and out lengths differ");
    if x.is_empty() {
        return;
    }
    let sum = at_level!(level, sum_squares_f64(x));
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * scale * wi;
    }
}

/// In-place softmax, as ggml's `soft_max` without mask or scale: `e[i] = exp(x[i] − max)`,
/// `sum` accumulated in f64, then `x[i] = e[i] · (1/sum as f32)`.
///
/// An empty slice is left alone; a slice whose maximum is not finite produces NaNs.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU as ggml's `ggml_silu_f32`: `x / (1 + exp(−x))`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = silu(gate[i]) · up[i]` (ggml's `swiglu`). Panics (caller contract) if the
/// lengths differ.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up lengths differ");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// `Σ a[i]·b[i]` in f32 with SIMD (at least 8 interleaved partial sums at every level).
/// Panics (caller contract) if the lengths differ.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_at(simd_level(), a, b)
}

/// [`dot_f32`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn dot_f32_at(level: SimdLevel, a: &[f32], b: &[f32]) -> f32 {
    assert_available(level);
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    at_level!(level, dot_f32(a, b))
}

/// `y[i] += a · x[i]`. The scalar level rounds the product and the sum separately; the SIMD
/// levels use one fused multiply-add per element. Panics (caller contract) if lengths differ.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_at(simd_level(), a, x, y)
}

/// [`axpy`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn axpy_at(level: SimdLevel, a: f32, x: &[f32], y: &mut [f32]) {
    assert_available(level);
    assert_eq!(x.len(), y.len(), "axpy: lengths differ");
    at_level!(level, axpy(a, x, y))
}

/// `x[i] = exp(x[i] − m)` and the sum of the results: the softmax step of attention.
/// Every SIMD level computes each `exp` with the same operations as the scalar path (bit-equal
/// values, ≤ 2 ulp from the true exponential; 0 below −87.33); the sum's order differs by level.
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    exp_shift_sum_at(simd_level(), x, m)
}

/// [`exp_shift_sum`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn exp_shift_sum_at(level: SimdLevel, x: &mut [f32], m: f32) -> f32 {
    assert_available(level);
    at_level!(level, exp_shift_sum(x, m))
}

/// FP8 E4M3 codes to f32 (exact at every level): `out[i] = e4m3(src[i])` for
/// `i < min(src.len(), out.len())`.
pub fn e4m3_decode(src: &[u8], out: &mut [f32]) {
    e4m3_decode_at(simd_level(), src, out)
}

/// [`e4m3_decode`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn e4m3_decode_at(level: SimdLevel, src: &[u8], out: &mut [f32]) {
    assert_available(level);
    at_level!(level, e4m3_decode(src, out))
}

/// `out[q·ldo + i] = qs[q] · keys[i·d ..][..d]` for every query `q < qs.len() / d` and key row
/// `i < c`: the scores of a group of queries against a tile of keys, each key row loaded once
/// for several queries. Panics (caller contract) if a slice is too short.
pub fn dots_multi(qs: &[f32], d: usize, keys: &[f32], c: usize, out: &mut [f32], ldo: usize) {
    dots_multi_at(simd_level(), qs, d, keys, c, out, ldo)
}

/// `out[q·ldo + i] = Σ_j qt[j·nq + q] · tile[j·COL_TILE + i]` for the `nq` queries, stored
/// transposed (`n = qt.len() / nq` elements each), and every column `i < c ≤ COL_TILE` of a
/// column-major bf16 tile (`n` rows of [`COL_TILE`](super::COL_TILE) values, the high halves of f32): the scores
/// of a group of queries against up to 16 vectors stored as columns, without horizontal sums. Every level sums the products in `j` order with one FMA
/// each, so all levels agree bit for bit. Panics (caller contract) if a slice is too short or
/// `c > COL_TILE`.
pub fn col_dots_bf16(qt: &[f32], nq: usize, tile: &[u16], c: usize, out: &mut [f32], ldo: usize) {
    col_dots_bf16_at(simd_level(), qt, nq, tile, c, out, ldo)
}

/// [`col_dots_bf16`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn col_dots_bf16_at(
    level: SimdLevel,
    qt: &[f32],
    nq: usize,
    tile: &[u16],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert_available(level);
    assert!(
        nq > 0 && qt.len().is_multiple_of(nq),
        "col_dots_bf16: queries"
    );
    let n = qt.len() / nq;
    assert!(
        c <= super::COL_TILE,
        "col_dots_bf16: more than COL_TILE columns"
    );
    assert!(
        tile.len() >= n * super::COL_TILE,
        "col_dots_bf16: tile too short"
    );
    assert!(
        c == 0 || (ldo >= c && out.len() >= (nq - 1) * ldo + c),
        "col_dots_bf16: out too short"
    );
    at_level!(level, col_dots_bf16(qt, nq, tile, c, out, ldo))
}

/// [`dots_multi`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn dots_multi_at(
    level: SimdLevel,
    qs: &[f32],
    d: usize,
    keys: &[f32],
    c: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert_available(level);
    assert!(d > 0 && qs.len().is_multiple_of(d), "dots_multi: queries");
    let nq = qs.len() / d;
    assert!(keys.len() >= c * d, "dots_multi: keys too short");
    assert!(
        nq == 0 || c == 0 || (ldo >= c && out.len() >= (nq - 1) * ldo + c),
        "dots_multi: out too short"
    );
    at_level!(level, dots_multi(qs, d, keys, c, out, ldo))
}

/// `accs[q·d ..][..d] += Σᵢ w[q·ldw + i] · values[i·d ..][..d]` for every accumulator
/// `q < accs.len() / d` over the value rows `i < c`, rows in order with the arithmetic of
/// [`axpy`] per row (same bits). Panics (caller contract) if a slice is too short.
pub fn axpys_multi(w: &[f32], ldw: usize, values: &[f32], c: usize, accs: &mut [f32], d: usize) {
    axpys_multi_at(simd_level(), w, ldw, values, c, accs, d)
}

/// [`axpys_multi`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn axpys_multi_at(
    level: SimdLevel,
    w: &[f32],
    ldw: usize,
    values: &[f32],
    c: usize,
    accs: &mut [f32],
    d: usize,
) {
    assert_available(level);
    assert!(
        d > 0 && accs.len().is_multiple_of(d),
        "axpys_multi: accumulators"
    );
    let nq = accs.len() / d;
    assert!(values.len() >= c * d, "axpys_multi: values too short");
    assert!(
        nq == 0 || c == 0 || (ldw >= c && w.len() >= (nq - 1) * ldw + c),
        "axpys_multi: weights too short"
    );
    at_level!(level, axpys_multi(w, ldw, values, c, accs, d))
}

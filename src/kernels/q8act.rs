//! Activations quantized to 8 bits, as llama.cpp does before a quantized dot product.
//!
//! llama.cpp does not multiply Q4_0/Q4_1/Q8_0/MXFP4 weights against f32 activations: it first
//! quantizes each 32-element block of the activation row (Q8_1 for Q4_0/Q4_1 weights, Q8_0 for
//! Q8_0 and MXFP4 weights) and then computes integer dot products per block (gpt-oss-spec.md
//! §6.3 "B"). kvspool's `--precision exact` path keeps f32 activations (more exact); this module
//! is the `--precision fast` path, which reproduces llama.cpp's per-block arithmetic.
//!
//! # Arithmetic (every level, bit for bit)
//! * Quantization ([`quantize_q8`]), as ggml's x86 `quantize_row_q8_0/q8_1`: per block
//!   `amax = max|x|` (NaN ignored), `d = amax/127`, `id = 127/amax` (0 if `amax = 0`),
//!   `q = clamp(round_half_even(x·id), −127, 127)` (NaN → 0; the clamp only matters for
//!   non-finite `x·id`, where ggml's result is not meaningful either), `d` stored f16-rounded,
//!   `s = f16(d·Σq)` (Q8_1), and the exact `Σq`.
//! * Block products, as ggml's generic `ggml_vec_dot_{q8_0_q8_0, q4_0_q8_0, mxfp4_q8_0,
//!   q4_1_q8_1}`: an exact i32 `sumi` per block, then
//!   `p = f32(sumi)·(d_w·d_y)` (Q8_0, Q4_0; MXFP4 with `d_w = 2^(e−128)`), or
//!   `p = (d_w·d_y)·f32(sumi) + m_w·s_y` (Q4_1), each operation rounded to f32 (no FMA).
//! * The row result sums the block products in a fixed order: block `b` is added to lane
//!   `b mod 16` (lanes start at +0), then the 16 lanes are reduced as lane `l` + lane `l + 8`,
//!   then `+4`, `+2`, `+1`. ggml's generic code adds the same products left to right instead (and
//!   its AVX code in yet another order); the difference is a pure reordering of the same rounded
//!   products, bounded by `(γ(nb − 1) + γ(⌈nb/16⌉ + 4))·Σ|p_b|` with `γ(k) = k·u/(1 − k·u)`,
//!   `u = 2⁻²⁴` (tested). The fixed order lets the SIMD kernels (`q8_avx2`, `q8_avx512`, which
//!   sum the i32 lanes of 8 or 16 blocks with a transpose and then handle 16 block products per
//!   vector step) produce exactly the scalar bits.
//!
//! Invariant: every activation value is in −127..=127 (the SIMD kernels rely on it: a u8×i8
//! product pair then fits in i16) and `sum` is its exact block sum; [`Q8Acts`] can only be
//! filled by [`quantize_q8`].

use std::cell::RefCell;
use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::dispatch::{assert_available, avx512_vnni_detected, simd_level, SimdLevel};
use super::matmul::{PAR_MIN_WORK, TASK_MIN_WORK};
use crate::gguf::GgmlType;
use crate::quant::{E8M0_TO_F32_HALF, KVALUES_MXFP4};

/// Elements per block.
pub const QK: usize = 32;
/// Lanes of the fixed float summation order (see the module docs).
pub const LANES: usize = 16;

/// MXFP4 values are looked up as `KVALUES_MXFP4 + MXFP4_OFFSET` (unsigned, 0..=24) by the SIMD
/// kernels, which then subtract `MXFP4_OFFSET·Σy` per block.
pub(super) const MXFP4_OFFSET: i32 = 12;
/// `KVALUES_MXFP4 + MXFP4_OFFSET` as bytes.
pub(super) const MXFP4_U: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (KVALUES_MXFP4[i] as i32 + MXFP4_OFFSET) as u8;
        i += 1;
    }
    t
};

/// Activation rows quantized to 8 bits per 32-block, stored as arrays per field (so the SIMD
/// kernels load 16 blocks' scales at once). Rows of a multiple of 32 elements are stored back to
/// back: row `t` of `cols` elements is blocks `t·cols/32 ..`.
#[derive(Debug, Clone, Default)]
pub struct Q8Acts {
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<i32>,
    qs: Vec<[i8; QK]>,
}

/// A borrowed run of quantized blocks (all or part of a [`Q8Acts`]).
#[derive(Debug, Clone, Copy)]
pub struct Q8Ref<'a> {
    pub(super) d: &'a [f32],
    pub(super) s: &'a [f32],
    pub(super) sum: &'a [i32],
    pub(super) qs: &'a [[i8; QK]],
}

impl Q8Acts {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// All blocks.
    pub fn view(&self) -> Q8Ref<'_> {
        Q8Ref {
            d: &self.d,
            s: &self.s,
            sum: &self.sum,
            qs: &self.qs,
        }
    }

    fn clear(&mut self) {
        self.d.clear();
        self.s.clear();
        self.sum.clear();
        self.qs.clear();
    }

    /// Append one block from its integer values and the f32 scale `d = amax/127`.
    #[inline]
    pub(super) fn push(&mut self, d: f32, qs: [i8; QK], sum: i32) {
        self.d.push(f16::from_f32(d).to_f32());
        self.s.push(f16::from_f32(sum as f32 * d).to_f32());
        self.sum.push(sum);
        self.qs.push(qs);
    }

    fn reserve(&mut self, blocks: usize) {
        self.d.reserve(blocks);
        self.s.reserve(blocks);
        self.sum.reserve(blocks);
        self.qs.reserve(blocks);
    }
}

impl<'a> Q8Ref<'a> {
    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Blocks `r` (panics if out of range).
    pub fn slice(&self, r: Range<usize>) -> Q8Ref<'a> {
        Q8Ref {
            d: &self.d[r.clone()],
            s: &self.s[r.clone()],
            sum: &self.sum[r.clone()],
            qs: &self.qs[r],
        }
    }

    /// Per-block scales (f16-rounded).
    pub fn d(&self) -> &'a [f32] {
        self.d
    }

    /// Per-block `f16(d·Σq)`.
    pub fn s(&self) -> &'a [f32] {
        self.s
    }

    /// Per-block exact `Σq`.
    pub fn sum(&self) -> &'a [i32] {
        self.sum
    }

    /// Per-block values.
    pub fn qs(&self) -> &'a [[i8; QK]] {
        self.qs
    }
}

/// 16 consecutive blocks of an activation (one vector step of the SIMD kernels).
pub(super) struct Group<'a> {
    pub d: &'a [f32; LANES],
    pub s: &'a [f32; LANES],
    pub sum: &'a [i32; LANES],
    pub qs: &'a [[i8; QK]; LANES],
}

/// A zero-padded copy of a partial last group: padded blocks have `d = s = sum = 0` and
/// `qs = 0`, so their products are +0 and adding them leaves a lane unchanged (lanes start at
/// +0 and so are never −0).
#[derive(Default)]
pub(super) struct PaddedGroup {
    d: [f32; LANES],
    s: [f32; LANES],
    sum: [i32; LANES],
    qs: [[i8; QK]; LANES],
}

impl PaddedGroup {
    pub fn group(&self) -> Group<'_> {
        Group {
            d: &self.d,
            s: &self.s,
            sum: &self.sum,
            qs: &self.qs,
        }
    }
}

impl<'a> Q8Ref<'a> {
    /// Group `g` (blocks `16g .. 16g + 16`), which must be complete.
    #[inline]
    pub(super) fn group(&self, g: usize) -> Group<'a> {
        let r = g * LANES..(g + 1) * LANES;
        Group {
            d: self.d[r.clone()].try_into().expect("16 blocks"),
            s: self.s[r.clone()].try_into().expect("16 blocks"),
            sum: self.sum[r.clone()].try_into().expect("16 blocks"),
            qs: self.qs[r].try_into().expect("16 blocks"),
        }
    }

    /// Blocks `16g ..` (fewer than 16), zero-padded to a group.
    pub(super) fn padded_group(&self, g: usize) -> PaddedGroup {
        let b0 = g * LANES;
        let n = self.blocks() - b0;
        assert!(n < LANES);
        let mut p = PaddedGroup::default();
        p.d[..n].copy_from_slice(&self.d[b0..]);
        p.s[..n].copy_from_slice(&self.s[b0..]);
        p.sum[..n].copy_from_slice(&self.sum[b0..]);
        p.qs[..n].copy_from_slice(&self.qs[b0..]);
        p
    }
}

/// Whether `ty` has an 8-bit-activation dot here.
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::MXFP4
    )
}

// ---------------------------------------------------------------------------------------------
// Kernel selection.

/// Implementation of the 8-bit dots. Every kernel gives the same bits (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Q8Kernel {
    /// Portable reference.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`, one block per 256-bit vector.
    Avx2,
    /// AVX-512 BW `vpmaddubsw` + `vpmaddwd`, two blocks per 512-bit vector.
    Avx512,
    /// AVX-512 VNNI `vpdpbusd`, two blocks per 512-bit vector.
    Avx512Vnni,
}

impl Q8Kernel {
    /// Every kernel, lowest first.
    pub const ALL: [Q8Kernel; 4] = [
        Q8Kernel::Scalar,
        Q8Kernel::Avx2,
        Q8Kernel::Avx512,
        Q8Kernel::Avx512Vnni,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::Scalar => "scalar",
            Q8Kernel::Avx2 => "avx2",
            Q8Kernel::Avx512 => "avx512bw",
            Q8Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    /// The SIMD level the kernel needs (also used for quantizing).
    pub fn level(self) -> SimdLevel {
        match self {
            Q8Kernel::Scalar => SimdLevel::Scalar,
            Q8Kernel::Avx2 => SimdLevel::Avx2,
            Q8Kernel::Avx512 | Q8Kernel::Avx512Vnni => SimdLevel::Avx512,
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        self.level().is_available() && (self != Q8Kernel::Avx512Vnni || avx512_vnni_detected())
    }

    /// The best kernel at `level`: at AVX-512, VNNI if the CPU has it.
    pub fn for_level(level: SimdLevel) -> Q8Kernel {
        match level {
            SimdLevel::Scalar => Q8Kernel::Scalar,
            SimdLevel::Avx2 => Q8Kernel::Avx2,
            SimdLevel::Avx512 if avx512_vnni_detected() => Q8Kernel::Avx512Vnni,
            SimdLevel::Avx512 => Q8Kernel::Avx512,
        }
    }

    /// Every kernel this CPU can run, lowest first.
    pub fn available() -> Vec<Q8Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }
}

impl std::fmt::Display for Q8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel the process uses: [`Q8Kernel::for_level`] of [`simd_level`].
pub fn q8_kernel() -> Q8Kernel {
    Q8Kernel::for_level(simd_level())
}

#[track_caller]
fn assert_kernel(k: Q8Kernel) {
    assert!(
        k.is_available(),
        "q8 kernel {k} is not supported by this CPU"
    );
}

// ---------------------------------------------------------------------------------------------
// Scalar reference.

#[inline]
fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Quantize one block (scalar reference): `(d = amax/127 in f32, values, Σ values)`.
pub(super) fn quantize_block(b: &[f32; QK]) -> (f32, [i8; QK], i32) {
    let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(b) {
        // `as i32` maps NaN to 0 and saturates infinities; the clamp keeps −127..=127.
        let r = ((v * id).round_ties_even() as i32).clamp(-127, 127);
        *q = r as i8;
        sum += r;
    }
    (d, qs, sum)
}

fn quantize_scalar(x: &[f32], out: &mut Q8Acts) {
    for b in x.as_chunks::<QK>().0 {
        let (d, qs, sum) = quantize_block(b);
        out.push(d, qs, sum);
    }
}

/// Exact integer dot of one weight block (raw bytes of `ty`) with one activation block:
/// ggml's `sumi`.
pub fn block_sumi(ty: GgmlType, w: &[u8], q: &[i8; QK]) -> i32 {
    let mut s = 0i32;
    match ty {
        GgmlType::Q8_0 => {
            for j in 0..32 {
                s += (w[2 + j] as i8) as i32 * q[j] as i32;
            }
        }
        GgmlType::Q4_0 => {
            for j in 0..16 {
                s += ((w[2 + j] & 15) as i32 - 8) * q[j] as i32
                    + ((w[2 + j] >> 4) as i32 - 8) * q[j + 16] as i32;
            }
        }
        GgmlType::Q4_1 => {
            for j in 0..16 {
                s += (w[4 + j] & 15) as i32 * q[j] as i32
                    + (w[4 + j] >> 4) as i32 * q[j + 16] as i32;
            }
        }
        GgmlType::MXFP4 => {
            for j in 0..16 {
                s += KVALUES_MXFP4[(w[1 + j] & 15) as usize] as i32 * q[j] as i32
                    + KVALUES_MXFP4[(w[1 + j] >> 4) as usize] as i32 * q[j + 16] as i32;
            }
        }
        _ => unreachable!("block_sumi called for {ty}; check supports() first"),
    }
    s
}

/// The f32 product of weight block `w` and activation block `b` of `y` (module docs).
pub fn block_product(ty: GgmlType, w: &[u8], y: Q8Ref<'_>, b: usize) -> f32 {
    let sumi = block_sumi(ty, w, &y.qs[b]) as f32;
    match ty {
        GgmlType::Q4_1 => (h(&w[0..2]) * y.d[b]) * sumi + h(&w[2..4]) * y.s[b],
        GgmlType::MXFP4 => sumi * (E8M0_TO_F32_HALF[w[0] as usize] * y.d[b]),
        _ => sumi * (h(&w[0..2]) * y.d[b]),
    }
}

/// The fixed reduction of the 16 lanes (module docs).
#[inline]
pub(super) fn reduce16(a: [f32; LANES]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|l| a[l] + a[l + 8]);
    let q: [f32; 4] = std::array::from_fn(|l| h[l] + h[l + 4]);
    let r = [q[0] + q[2], q[1] + q[3]];
    r[0] + r[1]
}

fn dot_scalar(ty: GgmlType, row: &[u8], y: Q8Ref<'_>) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (b, w) in row.chunks_exact(ty.type_size()).enumerate() {
        acc[b % LANES] += block_product(ty, w, y, b);
    }
    reduce16(acc)
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

/// Dispatch on the kernel; the SIMD modules' `checked` wrappers re-check the CPU.
macro_rules! q8_at {
    ($k:expr, $scalar:ident, $f:ident($($arg:expr),*)) => {
        match $k {
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => super::q8_avx2::checked::$f($($arg),*),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512 => super::q8_avx512::checked_bw::$f($($arg),*),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => super::q8_avx512::checked_vnni::$f($($arg),*),
            _ => $scalar($($arg),*),
        }
    };
}

fn dots_scalar(ty: GgmlType, w: &[u8], rb: usize, y: Q8Ref<'_>, out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        *o = dot_scalar(ty, row, y);
    }
}

/// Quantize `x` (a multiple of 32 long) into `out` (replacing its contents).
pub fn quantize_q8(x: &[f32], out: &mut Q8Acts) {
    quantize_q8_at(simd_level(), x, out)
}

/// [`quantize_q8`] at an explicit level (same bits at every level; panics if the CPU lacks it).
pub fn quantize_q8_at(level: SimdLevel, x: &[f32], out: &mut Q8Acts) {
    assert_available(level);
    assert!(
        x.len().is_multiple_of(QK),
        "quantize_q8: {} elements are not a whole number of blocks",
        x.len()
    );
    out.clear();
    out.reserve(x.len() / QK);
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => super::q8_avx2::checked::quantize(x, out),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => super::q8_avx512::checked_bw::quantize(x, out),
        _ => quantize_scalar(x, out),
    }
}

#[track_caller]
fn row_bytes(ty: GgmlType, cols: usize) -> usize {
    assert!(
        supports(ty) && cols.is_multiple_of(QK),
        "q8act: {ty} × {cols} columns is not supported"
    );
    cols / QK * ty.type_size()
}

/// Dot of one weight row (raw GGUF bytes, `y.blocks()` blocks) with a quantized activation.
pub fn dot_q8(ty: GgmlType, row: &[u8], y: Q8Ref<'_>) -> f32 {
    dot_q8_at(q8_kernel(), ty, row, y)
}

/// [`dot_q8`] with an explicit kernel (panics if the CPU lacks it).
pub fn dot_q8_at(k: Q8Kernel, ty: GgmlType, row: &[u8], y: Q8Ref<'_>) -> f32 {
    assert_kernel(k);
    let rb = row_bytes(ty, y.blocks() * QK);
    assert_eq!(
        row.len(),
        rb,
        "dot_q8: row has {} bytes, needs {rb}",
        row.len()
    );
    let mut out = [0.0f32];
    q8_at!(k, dots_scalar, dots(ty, row, rb, y, &mut out));
    out[0]
}

/// One mat-vec of a [`matvec_q8_multi`] batch: `out = W · y` for `rows × cols` weights `w` of type
/// `ty` and an activation row `y` quantized to 8 bits.
pub struct Q8Job<'a> {
    /// Weight type (one [`supports`]).
    pub ty: GgmlType,
    /// The `rows × row_bytes` weight bytes.
    pub w: &'a [u8],
    /// Output rows.
    pub rows: usize,
    /// Input length (a multiple of 32).
    pub cols: usize,
    /// The quantized activation.
    pub y: Q8Ref<'a>,
    /// `rows` outputs.
    pub out: &'a mut [f32],
}

/// Several independent mat-vecs in one parallel region (decode: the gate and up projections of
/// every chosen expert, or their down projections): one fork-join instead of one per matrix, and
/// the row chunks of all jobs balance across threads together. Each output row is the same dot
/// [`matvec_q8`] computes (bit-identical: a row's sum does not depend on the chunking).
/// Panics on a shape mismatch (caller contract), like [`matvec_q8`].
pub fn matvec_q8_multi(jobs: Vec<Q8Job<'_>>) {
    let k = q8_kernel();
    let threads = rayon::current_num_threads().max(1);
    let total: usize = jobs.iter().map(|j| j.rows).sum();
    let mut tasks: Vec<Q8Job<'_>> = Vec::new();
    for j in jobs {
        let rb = row_bytes(j.ty, j.cols);
        assert!(
            j.y.blocks() * QK == j.cols && j.w.len() == j.rows * rb && j.out.len() == j.rows,
            "matvec_q8_multi: {} × {} {}: weights {} bytes, activation {} blocks, output {}",
            j.rows,
            j.cols,
            j.ty,
            j.w.len(),
            j.y.blocks(),
            j.out.len()
        );
        if j.rows == 0 {
            continue;
        }
        let min_rows = TASK_MIN_WORK.div_ceil(j.cols.max(1)).max(1);
        let chunk = total.div_ceil(threads * 4).max(min_rows).min(j.rows);
        for (oc, wc) in j.out.chunks_mut(chunk).zip(j.w.chunks(chunk * rb)) {
            tasks.push(Q8Job {
                ty: j.ty,
                w: wc,
                rows: oc.len(),
                cols: j.cols,
                y: j.y,
                out: oc,
            });
        }
    }
    tasks.into_par_iter().for_each(|t| {
        let rb = row_bytes(t.ty, t.cols);
        q8_at!(k, dots_scalar, dots(t.ty, t.w, rb, t.y, t.out))
    });
}

/// `out[r] = row_r · y` for a `[rows × cols]` matrix of raw `ty` bytes and one quantized
/// activation row (`cols / 32` blocks); rows are split into chunks run in parallel with rayon,
/// like [`super::matvec`]. Panics (caller contract) on unsupported types or length mismatches.
pub fn matvec_q8(ty: GgmlType, w: &[u8], rows: usize, cols: usize, y: Q8Ref<'_>, out: &mut [f32]) {
    matvec_q8_at(q8_kernel(), ty, w, rows, cols, y, out)
}

/// [`matvec_q8`] with an explicit kernel (panics if the CPU lacks it).
pub fn matvec_q8_at(
    k: Q8Kernel,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    y: Q8Ref<'_>,
    out: &mut [f32],
) {
    assert_kernel(k);
    let rb = row_bytes(ty, cols);
    assert!(
        y.blocks() * QK == cols && w.len() == rows * rb && out.len() == rows,
        "matvec_q8: {rows} × {cols} {ty}: weights {} bytes, activation {} blocks, output {}",
        w.len(),
        y.blocks(),
        out.len()
    );
    if rows == 0 {
        return;
    }
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows * cols < PAR_MIN_WORK {
        q8_at!(k, dots_scalar, dots(ty, w, rb, y, out));
        return;
    }
    let min_rows = TASK_MIN_WORK.div_ceil(cols).max(1);
    let chunk = rows.div_ceil(threads * 4).max(min_rows);
    out.par_chunks_mut(chunk)
        .zip(w.par_chunks(chunk * rb))
        .for_each(|(oc, wc)| q8_at!(k, dots_scalar, dots(ty, wc, rb, y, oc)));
}

thread_local! {
    /// Quantized activations of the current `matmat_q8` call.
    static QX: RefCell<Q8Acts> = RefCell::new(Q8Acts::new());
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
    matmat_q8_at(q8_kernel(), ty, w, rows, cols, x, n, y)
}

/// [`matmat_q8`] with an explicit kernel (panics if the CPU lacks it).
#[allow(clippy::too_many_arguments)]
pub fn matmat_q8_at(
    k: Q8Kernel,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert_kernel(k);
    let rb = row_bytes(ty, cols);
    assert!(
        x.len() == n * cols && y.len() == n * rows && w.len() == rows * rb,
        "matmat_q8: {rows} × {cols} {ty} with {n} rows: weights {} bytes, x {}, y {}",
        w.len(),
        x.len(),
        y.len()
    );
    let mut run = |qx: &mut Q8Acts| {
        quantize_q8_at(k.level(), x, qx);
        let q = qx.view();
        if n == 1 {
            return matvec_q8_at(k, ty, w, rows, cols, q, y);
        }
        matmat_q8_rows(k, ty, w, rb, rows, cols, q, n, y);
    };
    QX.with(|cell| match cell.try_borrow_mut() {
        Ok(mut qx) => run(&mut qx),
        Err(_) => run(&mut Q8Acts::new()),
    })
}

/// The `n > 1` case: chunks of rows in parallel, each against every token (rows stay in cache).
#[allow(clippy::too_many_arguments)]
fn matmat_q8_rows(
    k: Q8Kernel,
    ty: GgmlType,
    w: &[u8],
    rb: usize,
    rows: usize,
    cols: usize,
    q: Q8Ref<'_>,
    n: usize,
    y: &mut [f32],
) {
    const CHUNK: usize = 32;
    let nb = cols / QK;
    let parts: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * CHUNK;
            let r1 = (r0 + CHUNK).min(rows);
            // Token-major within the chunk: out[t · m + i] is row r0 + i, token t.
            let m = r1 - r0;
            let mut out = vec![0.0f32; m * n];
            let wc = &w[r0 * rb..r1 * rb];
            for (t, o) in out.chunks_exact_mut(m).enumerate() {
                let qt = q.slice(t * nb..(t + 1) * nb);
                q8_at!(k, dots_scalar, dots(ty, wc, rb, qt, o));
            }
            (r0, out)
        })
        .collect();
    for (r0, out) in parts {
        let m = out.len() / n;
        for (t, o) in out.chunks_exact(m).enumerate() {
            y[t * rows + r0..t * rows + r0 + m].copy_from_slice(o);
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

    const TYPES: [GgmlType; 4] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::MXFP4,
    ];

    fn quantized_row(ty: GgmlType, wf: &[f32]) -> Vec<u8> {
        let mut w = vec![0u8; wf.len() / 32 * ty.type_size()];
        crate::quant::quantize_row(ty, wf, &mut w).unwrap();
        w
    }

    #[test]
    fn q8_dot_is_close_to_f32_dot_within_quantization_error() {
        let mut s = 3u64;
        for ty in TYPES {
            for cols in [32usize, 96, 576, 1536, 2880] {
                let wf: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
                let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 4.0).collect();
                let w = quantized_row(ty, &wf);
                let mut wd = vec![0.0f32; cols];
                crate::quant::dequantize_row(ty, &w, &mut wd).unwrap();
                let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mut q = Q8Acts::new();
                quantize_q8_at(SimdLevel::Scalar, &x, &mut q);
                let got = dot_q8_at(Q8Kernel::Scalar, ty, &w, q.view()) as f64;
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

    /// The fixed 16-lane order against ggml's left-to-right sum of the same block products:
    /// a reordering of the same terms, so |Δ| ≤ (γ(nb − 1) + γ(⌈nb/16⌉ + 4))·Σ|p_b|.
    #[test]
    fn fixed_order_is_a_reordering_of_ggml_generic_sum() {
        let mut s = 11u64;
        for ty in TYPES {
            for nb in [1usize, 3, 7, 16, 17, 31, 90, 129] {
                let cols = nb * 32;
                let wf: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
                let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 3.0).collect();
                let w = quantized_row(ty, &wf);
                let mut q = Q8Acts::new();
                quantize_q8_at(SimdLevel::Scalar, &x, &mut q);
                let (mut seq, mut abs) = (0.0f32, 0.0f64);
                for (b, wb) in w.chunks_exact(ty.type_size()).enumerate() {
                    let p = block_product(ty, wb, q.view(), b);
                    seq += p;
                    abs += p.abs() as f64;
                }
                let got = dot_q8_at(Q8Kernel::Scalar, ty, &w, q.view());
                let gamma = |k: f64| k * 2f64.powi(-24) / (1.0 - k * 2f64.powi(-24));
                let bound = (gamma(nb as f64 - 1.0) + gamma(nb.div_ceil(16) as f64 + 4.0)) * abs;
                assert!(
                    (got as f64 - seq as f64).abs() <= bound,
                    "{ty} nb {nb}: {got} vs {seq} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn mxfp4_block_matches_the_spec_worked_example() {
        // gpt-oss-spec.md §4.2: bytes 7E 9A 71 00.. → elements 0, 16, 1, 17 = −0.5, −0.25,
        // 0.25, 3.0 (d = 0.25; table values −2, −1, 1, 12).
        let mut w = [0u8; 17];
        w[0] = 0x7e;
        w[1] = 0x9a;
        w[2] = 0x71;
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[16] = -127.0;
        x[1] = 2.0;
        x[17] = 1.0;
        let mut q = Q8Acts::new();
        quantize_q8_at(SimdLevel::Scalar, &x, &mut q);
        // d = 1, values exact: sumi = −2·127 + (−1)·(−127) + 1·2 + 12·1 = −113.
        assert_eq!(block_sumi(GgmlType::MXFP4, &w, &q.view().qs()[0]), -113);
        assert_eq!(
            dot_q8_at(Q8Kernel::Scalar, GgmlType::MXFP4, &w, q.view()),
            -113.0 * 0.25
        );
    }

    #[test]
    fn quantize_handles_non_finite_and_tiny_blocks() {
        let mut x = [0.0f32; 64];
        x[0] = f32::NAN;
        x[1] = 1.0;
        x[2] = -2.0;
        // Second block: amax so small that 127/amax overflows to +inf.
        x[32] = 1e-40;
        x[33] = -1e-40;
        let mut q = Q8Acts::new();
        quantize_q8_at(SimdLevel::Scalar, &x, &mut q);
        let v = q.view();
        assert_eq!(&v.qs()[0][..3], &[0, 64, -127]);
        assert_eq!(&v.qs()[1][..3], &[127, -127, 0]);
        assert_eq!(v.sum(), &[-63, 0]);
        assert_eq!(v.d()[1], 0.0);
    }

    #[test]
    fn matmat_q8_matches_per_row_dots() {
        let (rows, cols, n) = (70, 64, 3);
        let mut s = 9u64;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        for ty in TYPES {
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
            for nn in [1, n] {
                let mut y = vec![0.0; nn * rows];
                matmat_q8(ty, &w, rows, cols, &x[..nn * cols], nn, &mut y);
                for t in 0..nn {
                    let mut q = Q8Acts::new();
                    quantize_q8_at(SimdLevel::Scalar, &x[t * cols..(t + 1) * cols], &mut q);
                    for r in 0..rows {
                        let want =
                            dot_q8_at(Q8Kernel::Scalar, ty, &w[r * rb..(r + 1) * rb], q.view());
                        assert_eq!(y[t * rows + r].to_bits(), want.to_bits(), "{ty} n {nn}");
                    }
                }
            }
        }
    }
}

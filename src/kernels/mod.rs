//! Compute kernels: dot products, mat-vec and mat-mat over GGUF weight formats, RMSNorm,
//! softmax, SiLU/SwiGLU, RoPE (with YaRN), f32 BLAS-1, and the attention kernel ([`attention`]).
//! Kernels know nothing about files, models or KV tiers.
//!
//! # Layouts
//! * Weights are raw GGUF bytes read in place (from the mmap), row-major: row `r` of a
//!   `[rows × cols]` matrix starts at byte `r · row_bytes(cols)`; `cols` must be a whole number
//!   of blocks (32 for the block formats). Supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//!   MXFP4 (`GgmlType::is_supported`); the block layouts are in [`crate::quant`].
//! * Activations are f32. In [`matmat`], `x` holds `n` tokens of `cols` values (`x[t·cols + k]`)
//!   and `y` holds `n` tokens of `rows` values (`y[t·rows + r]`).
//! * RoPE works on one token's heads laid out head-major (`x[h·head_dim + d]`).
//!
//! # SIMD selection
//! The level ([`SimdLevel`]) is chosen once per process, on first use ([`simd_level`]): the best
//! the CPU supports — AVX-512 (F+BW+VL, with AVX2/FMA/F16C), else AVX2+FMA+F16C, else scalar —
//! lowered by `KVSPOOL_SIMD=scalar|avx2|avx512` if set. The scalar kernels are always compiled
//! and are the reference. Every public kernel has an `*_at(level, …)` twin that runs a given
//! level (panicking if the CPU lacks it), which the tests use to check each level against the
//! scalar one. `unsafe` exists only in the SIMD modules (`avx2`, `avx512`): loads and stores
//! through pointers, and their `checked` wrappers, which call a `#[target_feature]` kernel only
//! after asserting the CPU has the level; every block has a `// SAFETY:` comment.
//!
//! # What is exact
//! * Weight decoding (`dequant_row_at`, the first step of [`matmat`]) is bit-identical to
//!   `quant::dequantize_row` at every level.
//! * Dot products are f32 sums whose order depends on the level. Every kernel splits a sum of
//!   `n` products over at least 8 interleaved partial sums, so each product passes through at
//!   most `⌈n/8⌉ + 8` roundings (including weight decoding and the final reduction), and
//!   `|computed − exact| ≤ γ(⌈n/8⌉ + 8) · Σ|wᵢ·xᵢ|` with `γ(k) = k·u/(1 − k·u)`, `u = 2⁻²⁴`
//!   (for Q4_1, `|wᵢ|` is taken as `|qᵢ·d| + |m|`, since `qᵢ·d + m` is rounded before use).
//!   The SIMD levels decode Q4_1 with one FMA (`q·d + m`) and use FMA for the products.
//!   The tests check exactly this bound for every level.
//! * [`rmsnorm`], [`softmax_inplace`], [`silu`], [`swiglu_inplace`] and [`rope_inplace`] follow
//!   ggml's CPU formulas operation by operation (see each function), so they match llama.cpp
//!   up to libm differences (and, for `rmsnorm`, the f64 summation order).
//!
//! # Caller contracts
//! Kernels take lengths that the model code derives from validated GGUF metadata; a mismatch is
//! a programming error and panics (`assert!`) with a message naming the lengths. They never
//! panic on values (NaN and infinities propagate).
//!
//! # Parallelism and determinism
//! [`matvec`] and [`matmat`] split rows into chunks run on the global rayon pool (small
//! problems run on the calling thread). [`matmat`] decodes each chunk's weight rows once into a
//! thread-local f32 buffer and multiplies them with all tokens in register tiles (4 rows × 4
//! tokens of 16-lane accumulators with AVX-512, 3 × 4 of 8 lanes with AVX2), reducing each
//! accumulator in one fixed tree order. Results therefore depend only on the level, never on
//! the thread count, the chunking or the tile an output landed in (tested bit for bit), and
//! [`matvec`] row `r` equals [`dot_row`] of row `r`.
//!
//! # Hot loops (per 32-element block)
//! Q4_1 with AVX-512 builds the block's 16 possible weights `k·d + m` with one FMA and looks the
//! nibbles up with `vpermps`; MXFP4 looks codes up in the E2M1 table the same way; Q8_0/Q4_0
//! widen bytes to i32 lanes and convert. The block partial `Σ q·x` is scaled by `d` with one FMA
//! into one of two interleaved accumulators. AVX2 does the same with byte-level nibble splits,
//! `pshufb` tables and 8-lane vectors. `q8act` (not part of this contract) holds the separate
//! llama.cpp-style 8-bit-activation path (Q8_0, Q4_0, Q4_1, MXFP4 weights), with its own
//! scalar, AVX2 (`q8_avx2`), AVX-512 BW and AVX-512 VNNI (`q8_avx512`) kernels, all
//! bit-identical; VNNI is detected once ([`avx512_vnni_detected`]) and used at the AVX-512 level.

pub mod attention;
pub mod q8act;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod matmul;
mod ops;
#[cfg(target_arch = "x86_64")]
mod q8_avx2;
#[cfg(target_arch = "x86_64")]
mod q8_avx512;
mod rope;
mod scalar;

pub use dispatch::{avx512_vnni_detected, resolve_level, simd_level, SimdLevel, SIMD_ENV};
pub use matmul::{
    dequant_row_at, dot_row, dot_row_at, matmat, matmat_at, matvec, matvec_at, matvec_serial,
};
/// Columns of a column-major tile ([`col_dots_bf16`]).
pub const COL_TILE: usize = 16;

pub use ops::{
    axpy, axpy_at, axpys_multi, axpys_multi_at, col_dots_bf16, col_dots_bf16_at, dot_f32,
    dot_f32_at, dots_multi, dots_multi_at, e4m3_decode, e4m3_decode_at, exp_shift_sum,
    exp_shift_sum_at, rmsnorm, rmsnorm_at, silu, softmax_inplace, swiglu_inplace,
};
pub use rope::{rope_inplace, RopeCache, RopeMode, RopeParams, YarnParams, YarnRounding};

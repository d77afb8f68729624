//! Row dot products, mat-vec and mat-mat over raw GGUF weight bytes.

use std::cell::RefCell;

use rayon::prelude::*;

use super::dispatch::{assert_available, simd_level, SimdLevel};
use super::scalar;
use crate::gguf::GgmlType;

/// Work (multiply-adds) below which a mat-vec or mat-mat runs on the calling thread.
pub(super) const PAR_MIN_WORK: usize = 1 << 16;
/// Minimum multiply-adds per rayon task (keeps task overhead small next to the work).
pub(super) const TASK_MIN_WORK: usize = 1 << 15;
/// Upper bound on the decoded f32 rows a mat-mat task keeps (bytes), sized for L2.
const DECODED_BYTES: usize = 256 << 10;

#[track_caller]
fn row_bytes_of(ty: GgmlType, cols: usize) -> usize {
    assert!(
        ty.is_supported(),
        "kernels: tensor type {ty} is not supported (caller must check GgmlType::is_supported)"
    );
    match ty.row_bytes(cols as u64) {
        Some(b) => b as usize,
        None => panic!("kernels: {cols} columns are not a whole number of {ty} blocks"),
    }
}

/// Dispatch to the level's kernel. The SIMD modules' `checked` wrappers re-check that the CPU
/// has the level (the callers here already asserted it), so this module needs no `unsafe`.
macro_rules! at_level {
    ($level:expr, $f:ident($($arg:expr),*)) => {
        match $level {
            SimdLevel::Scalar => scalar::$f($($arg),*),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => super::avx2::checked::$f($($arg),*),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => super::avx512::checked::$f($($arg),*),
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::$f($($arg),*),
        }
    };
}
pub(super) use at_level;

/// One weight row (raw bytes of `ty`, `x.len()` elements) · `x`.
///
/// Panics (caller contract) if `ty` is unsupported, `x.len()` is not a whole number of blocks,
/// or `row.len()` is not the row's byte size.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    dot_row_at(simd_level(), ty, row, x)
}

/// [`dot_row`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn dot_row_at(level: SimdLevel, ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    assert_available(level);
    let rb = row_bytes_of(ty, x.len());
    assert_eq!(
        row.len(),
        rb,
        "dot_row: row has {} bytes, {ty} × {} needs {rb}",
        row.len(),
        x.len()
    );
    at_level!(level, dot_row(ty, row, x))
}

/// Decode a weight row to f32 with the level's kernel; bit-identical to
/// `quant::dequantize_row` at every level. Same contract as [`dot_row`].
pub fn dequant_row_at(level: SimdLevel, ty: GgmlType, row: &[u8], out: &mut [f32]) {
    assert_available(level);
    let rb = row_bytes_of(ty, out.len());
    assert_eq!(
        row.len(),
        rb,
        "dequant_row: row has {} bytes, needs {rb}",
        row.len()
    );
    at_level!(level, dequant_row(ty, row, out))
}

fn check_matrix(ty: GgmlType, w: &[u8], rows: usize, cols: usize) -> usize {
    let rb = row_bytes_of(ty, cols);
    let need = rows.checked_mul(rb).expect("matrix size overflows usize");
    assert_eq!(
        w.len(),
        need,
        "weights have {} bytes, {rows} × {cols} {ty} needs {need}",
        w.len()
    );
    rb
}

/// `y[r] = row_r · x` for a row-major `[rows × cols]` matrix of raw `ty` bytes (row `r` at
/// `r * row_bytes`). Rows are split into chunks run in parallel with rayon.
///
/// Panics (caller contract) on unsupported `ty`, `cols` not a whole number of blocks,
/// `w.len() != rows * row_bytes`, `x.len() != cols` or `y.len() != rows`.
pub fn matvec(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    matvec_at(simd_level(), ty, w, rows, cols, x, y)
}

/// [`matvec`] at an explicit SIMD level (panics if the CPU lacks it).
pub fn matvec_at(
    level: SimdLevel,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) {
    assert_available(level);
    let rb = check_matrix(ty, w, rows, cols);
    assert_eq!(
        x.len(),
        cols,
        "matvec: x has {} elements, expected {cols}",
        x.len()
    );
    assert_eq!(
        y.len(),
        rows,
        "matvec: y has {} elements, expected {rows}",
        y.len()
    );
    if rows == 0 {
        return;
    }
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let work = rows * cols;
    if threads <= 1 || work < PAR_MIN_WORK {
        at_level!(level, dot_rows(ty, w, rb, x, y));
        return;
    }
    let min_rows = TASK_MIN_WORK.div_ceil(cols).max(1);
    let chunk = rows.div_ceil(threads * 4).max(min_rows);
    y.par_chunks_mut(chunk)
        .zip(w.par_chunks(chunk * rb))
        .for_each(|(yc, wc)| at_level!(level, dot_rows(ty, wc, rb, x, yc)));
}

/// [`matvec`] on the calling thread only (no rayon), for callers that parallelise over several
/// matrices themselves. Same bits as [`matvec`] at the process level; same caller contract.
pub fn matvec_serial(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    let level = simd_level();
    let rb = check_matrix(ty, w, rows, cols);
    assert_eq!(
        x.len(),
        cols,
        "matvec_serial: x has {} elements, expected {cols}",
        x.len()
    );
    assert_eq!(
        y.len(),
        rows,
        "matvec_serial: y has {} elements, expected {rows}",
        y.len()
    );
    if rows == 0 {
        return;
    }
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    at_level!(level, dot_rows(ty, w, rb, x, y));
}

thread_local! {
    /// Decoded weight rows of the current mat-mat task.
    static DECODED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-call output staging of `matmat` on the calling thread.
    static STAGING: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Thread-local scratch buffers larger than this are freed after use instead of kept.
const SCRATCH_KEEP_ELEMS: usize = 4 << 20;

/// Run `f` on a thread-local scratch buffer of `len` elements (contents unspecified), or on a
/// fresh one if this thread's buffer is already in use (re-entrancy through rayon). Buffers up
/// to 16 MiB are kept for the next call, so steady-state decoding and prefill don't allocate.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            let r = f(&mut v[..len]);
            if v.len() > SCRATCH_KEEP_ELEMS {
                *v = Vec::new();
            }
            r
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Rows per mat-mat task: a multiple of 12 (both micro-kernel heights divide it), enough tasks
/// for load balance, decoded rows within `DECODED_BYTES`.
fn matmat_chunk_rows(rows: usize, cols: usize, n: usize, threads: usize) -> usize {
    let cap = (DECODED_BYTES / (4 * cols.max(1))).max(1);
    let balance = rows.div_ceil(threads * 4);
    let min = TASK_MIN_WORK.div_ceil(cols.max(1) * n.max(1)).max(1);
    let c = balance.max(min).min(cap).max(1);
    if c >= 12 {
        c / 12 * 12
    } else {
        c
    }
}

/// `y[t * rows + r] = row_r · x_t` for `n` activation rows `x_t = x[t * cols..(t + 1) * cols]`:
/// the prefill path. Each task decodes a chunk of weight rows to f32 once (bit-identical to
/// `quant::dequantize_row`) and multiplies it with all `n` tokens in register tiles; chunks of
/// rows run in parallel with rayon.
///
/// Panics (caller contract) like [`matvec`], with `x.len() == n * cols` and `y.len() == n * rows`.
pub fn matmat(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    matmat_at(simd_level(), ty, w, rows, cols, x, n, y)
}

/// [`matmat`] at an explicit SIMD level (panics if the CPU lacks it).
#[allow(clippy::too_many_arguments)]
pub fn matmat_at(
    level: SimdLevel,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert_available(level);
    let rb = check_matrix(ty, w, rows, cols);
    assert_eq!(
        x.len(),
        n * cols,
        "matmat: x has {} elements, expected {n} × {cols}",
        x.len()
    );
    assert_eq!(
        y.len(),
        n * rows,
        "matmat: y has {} elements, expected {n} × {rows}",
        y.len()
    );
    if rows == 0 || n == 0 {
        return;
    }
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    if n == 1 {
        return matvec_at(level, ty, w, rows, cols, x, y);
    }
    let threads = rayon::current_num_threads();
    let serial = threads <= 1 || rows * cols * n < PAR_MIN_WORK;
    let chunk = matmat_chunk_rows(rows, cols, n, if serial { 1 } else { threads });

    // One task: decode rows [r0, r0 + mr) and write their dot products with every token to
    // `out[t * mr + i]` (token-major within the chunk).
    let task = |r0: usize, out: &mut [f32]| {
        let mr = out.len() / n;
        with_scratch(&DECODED, mr * cols, |dec| {
            for (i, d) in dec.chunks_exact_mut(cols).enumerate().take(mr) {
                let r = r0 + i;
                at_level!(level, dequant_row(ty, &w[r * rb..(r + 1) * rb], d));
            }
            at_level!(level, tile_dots(dec, mr, x, n, cols, out, mr));
        });
    };

    if serial && rows <= chunk {
        // A single chunk: its token-major layout is exactly y's.
        task(0, y);
        return;
    }
    with_scratch(&STAGING, n * rows, |staging| {
        // Chunk c occupies staging[c * n * chunk ..][.. n * mr_c], token-major.
        if serial {
            staging
                .chunks_mut(n * chunk)
                .enumerate()
                .for_each(|(c, out)| task(c * chunk, out));
        } else {
            staging
                .par_chunks_mut(n * chunk)
                .enumerate()
                .for_each(|(c, out)| task(c * chunk, out));
        }
        let scatter = |t: usize, yt: &mut [f32]| {
            for (c, ys) in yt.chunks_mut(chunk).enumerate() {
                let mr = ys.len();
                let base = c * n * chunk + t * mr;
                ys.copy_from_slice(&staging[base..base + mr]);
            }
        };
        if serial {
            y.chunks_mut(rows)
                .enumerate()
                .for_each(|(t, yt)| scatter(t, yt));
        } else {
            y.par_chunks_mut(rows)
                .enumerate()
                .for_each(|(t, yt)| scatter(t, yt));
        }
    });
}

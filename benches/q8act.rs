//! Decode-shaped mat-vec, exact (f32 activations, `kernels::matvec_at`) against fast (8-bit
//! activations, `q8act`), for one gpt-oss-20b expert matrix (2880 × 2880 MXFP4) and a Q8_0
//! matrix of the same shape, at every SIMD level / q8 kernel the CPU supports. Prints the median
//! and minimum over repetitions (a plain harness: medians are what we report).
//!
//!     cargo bench --bench q8act                      # rayon's default pool
//!     RAYON_NUM_THREADS=1 cargo bench --bench q8act  # one core
//!
//! Rows: `exact/<level>` = `matvec_at`; `fast/<kernel>` = `matmat_q8_at` with n = 1 (quantizes
//! the activation, then the parallel 8-bit mat-vec: what `Weight::matmul` runs);
//! `fast-prequant/<kernel>` = `matvec_q8_at` on an already quantized activation (what the
//! gpt-oss experts run for gate/up after the first); `quantize/<level>` = the quantization alone.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kvspool::gguf::GgmlType;
use kvspool::kernels::q8act::{self, Q8Acts, Q8Kernel};
use kvspool::kernels::{self, SimdLevel};
use kvspool::quant;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn weights(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let vals = data(rows * cols, 7);
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut w = vec![0u8; rows * rb];
    for (r, chunk) in w.chunks_exact_mut(rb).enumerate() {
        quant::quantize_row(ty, &vals[r * cols..(r + 1) * cols], chunk).unwrap();
    }
    w
}

/// Median and minimum time of `f` over repetitions (after warm-up), in microseconds.
fn time(mut f: impl FnMut()) -> (f64, f64) {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
    let mut ts = Vec::new();
    let start = Instant::now();
    while ts.len() < 15 || (ts.len() < 400 && start.elapsed() < Duration::from_secs(2)) {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    ts.sort_by(f64::total_cmp);
    (ts[ts.len() / 2], ts[0])
}

fn report(name: &str, bytes: usize, (med, min): (f64, f64)) {
    println!(
        "{name:<40} median {med:>9.1} µs   min {min:>9.1} µs   {:>6.1} GB/s (median)",
        bytes as f64 / med / 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a further argument filters by substring.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let (rows, cols) = (2880usize, 2880usize);
    println!(
        "threads: {}; SIMD levels {:?}; q8 kernels {:?}",
        rayon::current_num_threads(),
        SimdLevel::available(),
        Q8Kernel::available()
    );
    let x = data(cols, 3);
    for ty in [GgmlType::MXFP4, GgmlType::Q8_0] {
        let w = weights(ty, rows, cols);
        let mut y = vec![0.0f32; rows];
        let shape = format!("{ty}/{rows}x{cols}");
        let want = |n: &str| filter.as_ref().is_none_or(|f| n.contains(f.as_str()));
        for level in SimdLevel::available() {
            let n = format!("{shape}/exact/{level}");
            if want(&n) {
                let t = time(|| {
                    kernels::matvec_at(level, ty, black_box(&w), rows, cols, black_box(&x), &mut y)
                });
                report(&n, w.len(), t);
            }
        }
        for k in Q8Kernel::available() {
            let n = format!("{shape}/fast/{k}");
            if want(&n) {
                let t = time(|| {
                    q8act::matmat_q8_at(k, ty, black_box(&w), rows, cols, black_box(&x), 1, &mut y)
                });
                report(&n, w.len(), t);
            }
        }
        let mut q = Q8Acts::new();
        q8act::quantize_q8(&x, &mut q);
        for k in Q8Kernel::available() {
            let n = format!("{shape}/fast-prequant/{k}");
            if want(&n) {
                let t = time(|| {
                    q8act::matvec_q8_at(k, ty, black_box(&w), rows, cols, q.view(), &mut y)
                });
                report(&n, w.len(), t);
            }
        }
    }
    for level in SimdLevel::available() {
        let n = format!("quantize/{cols}/{level}");
        if filter.as_ref().is_none_or(|f| n.contains(f.as_str())) {
            let mut q = Q8Acts::new();
            let t = time(|| q8act::quantize_q8_at(level, black_box(&x), &mut q));
            report(&n, cols * 4, t);
        }
    }
}

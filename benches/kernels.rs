//! Kernel micro-benchmarks at every SIMD level the CPU supports.
//!
//!     cargo bench --bench kernels                 # all
//!     cargo bench --bench kernels -- matvec/Q4_1  # a filter
//!
//! Shapes are SmolLM2-135M's (d_model 576, d_ff 1536, vocab 49152; Q4_1 layers, Q8_0 tied
//! embedding) and one gpt-oss-20b expert (2880 × 2880 MXFP4). Throughput: mat-vec in bytes of
//! weights read per second (decode is bandwidth-shaped); mat-mat in elements = floating-point
//! operations (2 per multiply-add), so criterion's "Gelem/s" reads as GFLOP/s.
//! Threads: rayon's global pool (`RAYON_NUM_THREADS` to change).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvspool::gguf::GgmlType;
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

fn matvec(c: &mut Criterion) {
    let shapes = [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q4_1, 576, 576),
        (GgmlType::Q8_0, 49152, 576),
        (GgmlType::MXFP4, 2880, 2880),
        (GgmlType::F32, 576, 576),
    ];
    let mut g = c.benchmark_group("matvec");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for (ty, rows, cols) in shapes {
        let w = weights(ty, rows, cols);
        let x = data(cols, 3);
        let mut y = vec![0.0f32; rows];
        g.throughput(Throughput::Bytes(w.len() as u64));
        for level in SimdLevel::available() {
            let id = BenchmarkId::new(format!("{ty}/{rows}x{cols}"), level);
            g.bench_function(id, |b| {
                b.iter(|| {
                    kernels::matvec_at(level, ty, black_box(&w), rows, cols, black_box(&x), &mut y)
                })
            });
        }
    }
    g.finish();
}

fn matmat(c: &mut Criterion) {
    let n = 64;
    let shapes = [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 2048, 576),
        (GgmlType::MXFP4, 2880, 2880),
    ];
    let mut g = c.benchmark_group("matmat");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for (ty, rows, cols) in shapes {
        let w = weights(ty, rows, cols);
        let x = data(n * cols, 5);
        let mut y = vec![0.0f32; n * rows];
        g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
        for level in SimdLevel::available() {
            if level == SimdLevel::Scalar && cols > 1000 {
                continue; // minutes per sample; the scalar path is for correctness
            }
            let id = BenchmarkId::new(format!("{ty}/{rows}x{cols}/n{n}"), level);
            g.bench_function(id, |b| {
                b.iter(|| {
                    kernels::matmat_at(
                        level,
                        ty,
                        black_box(&w),
                        rows,
                        cols,
                        black_box(&x),
                        n,
                        &mut y,
                    )
                })
            });
        }
    }
    g.finish();
}

fn small(c: &mut Criterion) {
    let mut g = c.benchmark_group("vec");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    let a = data(2880, 1);
    let w = data(2880, 2);
    let mut out = vec![0.0f32; 2880];
    let codes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 & 0xFE)
        .collect();
    let mut decoded = vec![0.0f32; 4096];
    for level in SimdLevel::available() {
        g.bench_function(BenchmarkId::new("dot_f32/2880", level), |b| {
            b.iter(|| kernels::dot_f32_at(level, black_box(&a), black_box(&w)))
        });
        g.bench_function(BenchmarkId::new("rmsnorm/2880", level), |b| {
            b.iter(|| kernels::rmsnorm_at(level, black_box(&a), &w, 1e-5, &mut out))
        });
        // One 64-token block of one KV head's keys (64 × 64 fp8 codes), as attention decodes it.
        g.bench_function(BenchmarkId::new("e4m3_decode/4096", level), |b| {
            b.iter(|| kernels::e4m3_decode_at(level, black_box(&codes), &mut decoded))
        });
    }
    let p = kernels::RopeParams {
        n_dims: 64,
        freq_base: 150000.0,
        mode: kernels::RopeMode::Neox,
        yarn: Some(kernels::YarnParams {
            factor: 32.0,
            original_ctx: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
            rounding: kernels::YarnRounding::LlamaCpp,
        }),
    };
    let mut q = data(64 * 64, 4);
    g.bench_function("rope/gpt-oss-q-64x64", |b| {
        b.iter(|| kernels::rope_inplace(&p, black_box(&mut q), 64, 12345))
    });
    g.finish();
}

criterion_group!(benches, matvec, matmat, small);
criterion_main!(benches);

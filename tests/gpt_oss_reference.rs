//! gpt-oss against independent implementations, on the committed tiny fixtures
//! (tests/fixtures/gpt_oss, made by tools/make-tiny-gpt-oss.sh).
//!
//! - `--precision exact` (f32 activations, f32 KV) against HF transformers' `GptOssForCausalLM`
//!   run on the dequantized weights (the golden, cross-checked there against OpenAI's reference
//!   code): max |Δlogit| ≤ 2e-3 at every position, argmax equal wherever the golden's top-2 margin
//!   is ≥ 0.02, and the greedy continuation equal.
//! - With `--rope-compat llamacpp`, the same bounds against llama.cpp b11434's logits on the same
//!   GGUF (F32 KV, flash attention off; tools/gpt-oss-llama-ref.sh).
//! - Tiering is exact: bit-identical logits whatever the RAM budget and disk backend.

mod common;

use kvspool::engine::Session;
use kvspool::kernels::YarnRounding;
use kvspool::kv::disk::BackendKind;
use kvspool::kv::format::KvDtype;
use kvspool::kv::{TieredConfig, TieredKv};
use kvspool::model::{LogitsFor, Precision};
use serde_json::Value;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 3] = ["tiny-a", "tiny-b", "tiny-c"];
const MAX_ABS: f32 = 2e-3;
const ARGMAX_MARGIN: f32 = 0.02;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt_oss")
}

struct Golden {
    tokens: Vec<u32>,
    greedy: Vec<u32>,
    n_vocab: usize,
    logits: Vec<f32>,
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn golden(name: &str, logits_file: &str) -> Golden {
    let j: Value =
        serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.golden.json"))).unwrap())
            .unwrap();
    let ids = |k: &str| -> Vec<u32> {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let g = Golden {
        tokens: ids("tokens"),
        greedy: ids("greedy"),
        n_vocab: j["n_vocab"].as_u64().unwrap() as usize,
        logits: read_f32(&dir().join(logits_file)),
    };
    assert_eq!(g.logits.len(), g.tokens.len() * g.n_vocab, "{logits_file}");
    g
}

fn run(
    name: &str,
    tokens: &[u32],
    rounding: YarnRounding,
    ram: usize,
    backend: BackendKind,
    batch: usize,
) -> Vec<f32> {
    let loaded = kvspool::model::load_opts(
        &dir().join(format!("{name}.gguf")),
        Precision::Exact,
        rounding,
    )
    .unwrap();
    let m = &*loaded.model;
    let mut c = TieredConfig::new(ram, common::kv_dir());
    c.dtype = KvDtype::F32;
    c.backend = backend;
    c.max_batch = batch;
    let kv = TieredKv::new(m.kv_geometry(tokens.len() + 32), c).unwrap();
    let mut s = Session::new(m, Box::new(kv));
    s.prefill(tokens, batch, LogitsFor::All, &mut |_, _| {})
        .unwrap()
}

fn argmax(r: &[f32]) -> usize {
    r.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .unwrap()
        .0
}

/// Max |Δ| and the argmax check against `want`; returns the max.
fn compare(what: &str, got: &[f32], want: &Golden) -> f32 {
    let v = want.n_vocab;
    let (mut maxd, mut checked) = (0.0f32, 0usize);
    for p in 0..want.tokens.len() {
        let (g, w) = (&got[p * v..(p + 1) * v], &want.logits[p * v..(p + 1) * v]);
        for (a, b) in g.iter().zip(w) {
            maxd = maxd.max((a - b).abs());
        }
        let mut s = w.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        if s[0] - s[1] >= ARGMAX_MARGIN {
            checked += 1;
            assert_eq!(
                argmax(g),
                argmax(w),
                "{what}: argmax differs at position {p}"
            );
        }
    }
    assert!(
        maxd <= MAX_ABS,
        "{what}: max |Δlogit| {maxd:e} > {MAX_ABS:e}"
    );
    assert!(
        checked * 10 >= want.tokens.len() * 9,
        "{what}: too few decisive positions"
    );
    eprintln!(
        "{what}: max |Δlogit| {maxd:.3e} over {} positions, argmax checked at {checked}",
        want.tokens.len()
    );
    maxd
}

#[test]
fn exact_mode_matches_hf_transformers_at_every_position() {
    for name in FIXTURES {
        let g = golden(name, &format!("{name}.hf.f32"));
        // One batch, and in chunks of 7 (prefill across window slides and block boundaries).
        for batch in [512, 7] {
            let got = run(
                name,
                &g.tokens,
                YarnRounding::Reference,
                1 << 30,
                BackendKind::Pread,
                batch,
            );
            compare(&format!("{name} vs HF (batch {batch})"), &got, &g);
        }
    }
}

#[test]
fn greedy_continuations_equal_hf() {
    for name in FIXTURES {
        let g = golden(name, &format!("{name}.hf.f32"));
        let loaded = kvspool::model::load_opts(
            &dir().join(format!("{name}.gguf")),
            Precision::Exact,
            YarnRounding::Reference,
        )
        .unwrap();
        let m = &*loaded.model;
        let kv = common::ram_kv(m.kv_geometry(g.tokens.len() + g.greedy.len() + 1));
        let mut s = Session::new(m, kv);
        let last = s
            .prefill(&g.tokens, 512, LogitsFor::Last, &mut |_, _| {})
            .unwrap();
        let mut next = argmax(&last) as u32;
        let mut out = vec![next];
        while out.len() < g.greedy.len() {
            next = argmax(s.step(next).unwrap()) as u32;
            out.push(next);
        }
        assert_eq!(out, g.greedy, "{name}: greedy continuation differs from HF");
    }
}

/// On the quantized files llama.cpp quantizes activations to 8 bits before every Q8_0/MXFP4
/// product; `--precision fast` does the same arithmetic (ggml's block formulas). The two then
/// agree exactly until an activation lands on a rounding boundary on one side only (a 1-ulp
/// difference upstream, e.g. from a different summation order in attention): from that position
/// on the K/V differ slightly. Measured (b11434): tiny-a identical to 2e-6 at all 48 positions;
/// tiny-b identical for the first 20 positions, tiny-c for the first 5. So: tiny-a within 2e-3
/// everywhere; every fixture within a fifth of the 8-bit noise floor (kvspool exact vs fast,
/// measured in the same run; measured ratio 0.11-0.15), argmax equal wherever llama.cpp's margin
/// is >= 0.5.
#[test]
fn fast_mode_reproduces_llama_cpp_on_quantized_files() {
    for name in FIXTURES {
        let g = golden(name, &format!("{name}.llamacpp.f32"));
        let path = dir().join(format!("{name}.gguf"));
        let logits = |p: Precision| {
            let loaded = kvspool::model::load_opts(&path, p, YarnRounding::LlamaCpp).unwrap();
            let m = &*loaded.model;
            let kv = common::ram_kv(m.kv_geometry(g.tokens.len() + 1));
            let mut s = Session::new(m, kv);
            s.prefill(&g.tokens, 512, LogitsFor::All, &mut |_, _| {})
                .unwrap()
        };
        let (fast, exact) = (logits(Precision::Fast), logits(Precision::Exact));
        let mean = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() as f64)
                .sum::<f64>()
                / a.len() as f64
        };
        let (vs_llama, floor) = (mean(&fast, &g.logits), mean(&fast, &exact));
        let maxd = fast
            .iter()
            .zip(&g.logits)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{name}: fast vs llama.cpp mean {vs_llama:.4} max {maxd:.3e}; 8-bit noise floor (exact vs fast) {floor:.4}"
        );
        assert!(
            vs_llama <= 0.2 * floor,
            "{name}: kvspool fast vs llama.cpp {vs_llama} > 0.2 x noise floor {floor}"
        );
        if name == "tiny-a" {
            assert!(maxd <= MAX_ABS, "tiny-a: {maxd} > {MAX_ABS}");
        }
        let v = g.n_vocab;
        for p in 0..g.tokens.len() {
            let w = &g.logits[p * v..(p + 1) * v];
            let mut s = w.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            if s[0] - s[1] >= 0.5 {
                assert_eq!(
                    argmax(&fast[p * v..(p + 1) * v]),
                    argmax(w),
                    "{name} position {p}"
                );
            }
        }
    }
}

#[test]
fn tiering_is_bit_exact_for_gpt_oss() {
    // tiny-b: 320 tokens = 5 blocks of 64 per full layer, window 16 on the sliding layers.
    let g = golden("tiny-b", "tiny-b.hf.f32");
    let base = run(
        "tiny-b",
        &g.tokens,
        YarnRounding::Reference,
        1 << 30,
        BackendKind::Pread,
        512,
    );
    for ram in [0usize, 64 * 1024, 3 * 64 * 1024] {
        for backend in [BackendKind::Pread, BackendKind::Mmap, BackendKind::Uring] {
            let got = run(
                "tiny-b",
                &g.tokens,
                YarnRounding::Reference,
                ram,
                backend,
                512,
            );
            assert!(
                got.iter()
                    .zip(&base)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "tiny-b: logits differ with --kv-ram {ram} and {backend:?}"
            );
        }
    }
}

/// The default fast mode (8-bit activations; f16 KV, the default when the context fits the RAM
/// budget as here) is at least as accurate as llama.cpp with its defaults (F16 K/V, flash
/// attention auto; `tools/gpt-oss-llama-ref.py --settings default`): mean |Δlogit| against the
/// HF golden no larger.
#[test]
fn fast_mode_is_at_least_as_accurate_as_llama_cpp() {
    for name in FIXTURES {
        let hf = golden(name, &format!("{name}.hf.f32"));
        let lc = golden(name, &format!("{name}.llamacpp-default.f32"));
        let loaded = kvspool::model::load_opts(
            &dir().join(format!("{name}.gguf")),
            Precision::Fast,
            YarnRounding::Reference,
        )
        .unwrap();
        let m = &*loaded.model;
        let mut c = TieredConfig::new(1 << 30, common::kv_dir());
        c.dtype = KvDtype::F16;
        let kv = TieredKv::new(m.kv_geometry(hf.tokens.len() + 1), c).unwrap();
        let mut s = Session::new(m, Box::new(kv));
        let got = s
            .prefill(&hf.tokens, 512, LogitsFor::All, &mut |_, _| {})
            .unwrap();
        let mean = |x: &[f32]| {
            x.iter()
                .zip(&hf.logits)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>()
                / x.len() as f64
        };
        let (ours, theirs) = (mean(&got), mean(&lc.logits));
        eprintln!(
            "{name}: mean |Δlogit| vs HF: kvspool fast {ours:.4}, llama.cpp default {theirs:.4}"
        );
        assert!(
            ours <= theirs,
            "{name}: kvspool fast {ours} > llama.cpp {theirs}"
        );
    }
}

/// Rewrite the GGUF `src` into `dst` (a directory) as `stem.gguf`, or as `n` shards
/// `stem-0000K-of-0000N.gguf` (the split layout the 120b ships in: the first shard carries the
/// metadata, every shard `split.no`/`split.count`/`split.tensors.count`), with every tensor
/// either copied or dequantized to F32. Returns the path to open.
fn rewrite(src: &Path, dst: &Path, stem: &str, f32: bool, n: usize) -> PathBuf {
    use kvspool::gguf::{GgmlType, GgufFile, GgufWriter, Value};
    let f = GgufFile::open(src).unwrap();
    let ts = f.tensors();
    let per = ts.len().div_ceil(n);
    let mut first = None;
    for (k, part) in ts.chunks(per).enumerate() {
        let mut w = GgufWriter::new();
        if k == 0 {
            for (key, v) in f.metadata() {
                w.add_metadata(key.clone(), v.clone()).unwrap();
            }
        }
        if n > 1 {
            w.add_metadata("split.no", Value::U16(k as u16)).unwrap();
            w.add_metadata("split.count", Value::U16(n as u16)).unwrap();
            w.add_metadata("split.tensors.count", Value::I32(ts.len() as i32))
                .unwrap();
        }
        let mut data = Vec::new();
        for t in part {
            let bytes = f.tensor_bytes(t);
            if f32 && t.ty != GgmlType::F32 {
                let mut out = vec![0f32; t.n_elements() as usize];
                let rb = t.row_bytes() as usize;
                for (r, o) in bytes.chunks(rb).zip(out.chunks_mut(t.dims[0] as usize)) {
                    kvspool::quant::dequantize_row(t.ty, r, o).unwrap();
                }
                w.add_tensor(t.name.clone(), &t.dims, GgmlType::F32)
                    .unwrap();
                data.push(
                    out.iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>(),
                );
            } else {
                w.add_tensor(t.name.clone(), &t.dims, t.ty).unwrap();
                data.push(bytes.to_vec());
            }
        }
        let name = if n > 1 {
            format!("{stem}-{:05}-of-{n:05}.gguf", k + 1)
        } else {
            format!("{stem}.gguf")
        };
        let p = dst.join(name);
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        w.write_file(&p, &refs).unwrap();
        first.get_or_insert(p);
    }
    first.unwrap()
}

fn run_path(path: &Path, tokens: &[u32], rounding: YarnRounding) -> Vec<f32> {
    let loaded = kvspool::model::load_opts(path, Precision::Exact, rounding).unwrap();
    let m = &*loaded.model;
    let kv = common::ram_kv(m.kv_geometry(tokens.len() + 1));
    let mut s = Session::new(m, kv);
    s.prefill(tokens, 512, LogitsFor::All, &mut |_, _| {})
        .unwrap()
}

/// llama.cpp quantizes activations to 8 bits before every Q8_0/MXFP4 product, so on the
/// quantized fixtures it cannot be matched at 2e-3 by f32 arithmetic. The F32 variants (the
/// same dequantized values stored as F32; tools/make_tiny_gpt_oss.py writes them for llama.cpp,
/// this test rebuilds them with our GGUF writer) make llama.cpp multiply in f32 too: there the
/// whole graph -- floor/ceil YaRN, sinks, sliding windows, router, SwiGLU-OAI -- must agree.
#[test]
fn llamacpp_rope_matches_llama_cpp_on_f32_variants() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-a", "tiny-c"] {
        let g = golden(name, &format!("{name}-f32.llamacpp.f32"));
        let p = rewrite(
            &dir().join(format!("{name}.gguf")),
            tmp.path(),
            &format!("{name}-f32"),
            true,
            1,
        );
        let got = run_path(&p, &g.tokens, YarnRounding::LlamaCpp);
        compare(
            &format!("{name}-f32 --rope-compat llamacpp vs llama.cpp"),
            &got,
            &g,
        );
        // and the F32 file is the same model as the quantized one, per HF
        let hf = golden(name, &format!("{name}.hf.f32"));
        let got = run_path(&p, &g.tokens, YarnRounding::Reference);
        compare(&format!("{name}-f32 vs HF"), &got, &hf);
    }
}

#[test]
fn split_gguf_loads_and_computes_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let g = golden("tiny-a", "tiny-a.hf.f32");
    let one = run_path(
        &dir().join("tiny-a.gguf"),
        &g.tokens,
        YarnRounding::Reference,
    );
    let first = rewrite(&dir().join("tiny-a.gguf"), tmp.path(), "split", false, 3);
    let f = kvspool::gguf::GgufFile::open(&first).unwrap();
    assert_eq!(f.n_shards(), 3);
    let got = run_path(&first, &g.tokens, YarnRounding::Reference);
    assert!(
        got.iter()
            .zip(&one)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "split model computes different logits"
    );
    // Opening a later shard names the first; a missing shard is named.
    let second = tmp.path().join("split-00002-of-00003.gguf");
    let e = kvspool::gguf::GgufFile::open(&second)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("open the first one, split-00001-of-00003.gguf"),
        "{e}"
    );
    std::fs::remove_file(tmp.path().join("split-00003-of-00003.gguf")).unwrap();
    let e = kvspool::gguf::GgufFile::open(&first)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard 3 of 3") && e.contains("missing"), "{e}");
}

//! Helpers shared by the `gguf_*` integration tests: a raw byte builder for hand-made (hostile)
//! headers and a small valid GGUF built with the library's writer.
#![allow(dead_code)]

use kvspool::gguf::{GgmlType, GgufWriter, Value};

/// Little-endian byte builder for hand-made GGUF headers.
#[derive(Default, Clone)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, kv count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A gguf string: u64 length + bytes.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A u32 metadata record.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A string metadata record.
    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(8).str(v)
    }
    /// A tensor-table record.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn done(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small valid GGUF: every value type, nested arrays, three tensors of different types.
/// The last tensor's size is a multiple of the alignment, so the file ends with tensor data
/// (trailing padding is optional in GGUF, so cutting it would not be an error). Returns the writer (for its declarations), the tensor data and the file bytes.
pub fn sample() -> (GgufWriter, Vec<Vec<u8>>, Vec<u8>) {
    let mut w = GgufWriter::new();
    let meta = sample_metadata();
    for (k, v) in meta {
        w.add_metadata(k, v).expect("valid metadata");
    }
    w.add_tensor("token_embd.weight", &[32, 5], GgmlType::Q8_0)
        .expect("tensor");
    w.add_tensor("output_norm.weight", &[7], GgmlType::F32)
        .expect("tensor");
    w.add_tensor("blk.0.ffn_up_exps.weight", &[64, 2, 8], GgmlType::MXFP4)
        .expect("tensor");
    let data = vec![noise(5 * 34, 1), noise(28, 2), noise(2 * 17 * 2 * 8, 3)];
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let bytes = w.to_bytes(&refs).expect("to_bytes");
    (w, data, bytes)
}

/// Metadata with one value of every type, including nested and empty arrays.
pub fn sample_metadata() -> Vec<(String, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("tiny ✓ test")),
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f32".into(), Value::F32(1.5e-5)),
        ("t.f64".into(), Value::F64(-2.25e100)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.empty".into(), s("")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(vec![s("a"), s("b"), s("Ġhello"), s("<|end|>")]),
        ),
        (
            "t.nested".into(),
            Value::Array(vec![
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
                Value::Array(vec![s("x")]),
                Value::Array(vec![]),
            ]),
        ),
        (
            "t.bools".into(),
            Value::Array(vec![Value::Bool(false), Value::Bool(true)]),
        ),
        (
            "t.f64s".into(),
            Value::Array(vec![Value::F64(0.5), Value::F64(-1.0)]),
        ),
    ]
}

/// Tiny GGUFs whose metadata makes valid llama and gpt-oss configs; committed as fuzz seeds
/// (`fuzz/seeds/*.bin`, checked by `gguf_roundtrip::fuzz_seeds_are_current`).
pub fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s = |x: &str| Value::String(x.to_string());
    let tokens = Value::Array(vec![s("a"), s("b"), s("ab"), s("<s>")]);

    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", s("llama")),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.scaling.type", s("linear")),
        ("llama.rope.scaling.factor", Value::F32(2.0)),
        ("tokenizer.ggml.tokens", tokens.clone()),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1); 4]),
        ),
        (
            "t.nested",
            Value::Array(vec![Value::Array(vec![Value::Bool(true)])]),
        ),
    ] {
        w.add_metadata(k, v).expect("seed metadata");
    }
    w.add_tensor("token_embd.weight", &[32, 4], GgmlType::Q4_1)
        .expect("seed tensor");
    w.add_tensor("output_norm.weight", &[32], GgmlType::F16)
        .expect("seed tensor");
    let llama = w
        .to_bytes(&[&noise(80, 11), &noise(64, 12)])
        .expect("llama seed");

    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", s("gpt-oss")),
        ("gpt-oss.block_count", Value::U32(4)),
        ("gpt-oss.context_length", Value::U32(256)),
        ("gpt-oss.embedding_length", Value::U32(32)),
        ("gpt-oss.attention.head_count", Value::U32(4)),
        ("gpt-oss.attention.head_count_kv", Value::U32(2)),
        ("gpt-oss.rope.freq_base", Value::F32(150000.0)),
        ("gpt-oss.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("gpt-oss.expert_count", Value::U32(4)),
        ("gpt-oss.expert_used_count", Value::U32(2)),
        ("gpt-oss.attention.key_length", Value::U32(8)),
        ("gpt-oss.attention.value_length", Value::U32(8)),
        ("gpt-oss.attention.sliding_window", Value::U32(16)),
        ("gpt-oss.expert_feed_forward_length", Value::U32(32)),
        ("gpt-oss.rope.scaling.type", s("yarn")),
        ("gpt-oss.rope.scaling.factor", Value::F32(32.0)),
        (
            "gpt-oss.rope.scaling.original_context_length",
            Value::U32(64),
        ),
        ("general.alignment", Value::U32(64)),
        ("tokenizer.ggml.tokens", tokens),
    ] {
        w.add_metadata(k, v).expect("seed metadata");
    }
    w.add_tensor("blk.0.ffn_up_exps.weight", &[32, 8, 4], GgmlType::MXFP4)
        .expect("seed tensor");
    w.add_tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q8_0)
        .expect("seed tensor");
    let gpt_oss = w
        .to_bytes(&[&noise(17 * 8 * 4, 21), &noise(68, 22)])
        .expect("gpt-oss seed");
    vec![("llama_tiny.bin", llama), ("gpt_oss_tiny.bin", gpt_oss)]
}

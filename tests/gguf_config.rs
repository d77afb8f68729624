//! Typed configs: llama and gpt-oss from metadata, defaults, and collect-all-errors reporting.

use kvspool::gguf::{
    ConfigError, ConfigProblem, GgmlType, GgufFile, GgufHeader, GgufWriter, ModelConfig,
    RopeScaling, Value,
};

fn header(meta: &[(&str, Value)], tensors: &[(&str, &[u64])]) -> GgufHeader {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(*k, v.clone()).expect("meta");
    }
    let mut data = Vec::new();
    for (name, dims) in tensors {
        w.add_tensor(*name, dims, GgmlType::F32).expect("tensor");
        data.push(vec![0u8; 4 * dims.iter().product::<u64>() as usize]);
    }
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    GgufFile::parse_bytes(&w.to_bytes(&refs).expect("bytes")).expect("parse")
}

fn s(x: &str) -> Value {
    Value::String(x.into())
}

/// SmolLM2-135M's llama metadata.
fn smollm_meta() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", s("llama")),
        ("llama.block_count", Value::U32(30)),
        ("llama.context_length", Value::U32(8192)),
        ("llama.embedding_length", Value::U32(576)),
        ("llama.feed_forward_length", Value::U32(1536)),
        ("llama.attention.head_count", Value::U32(9)),
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.rope.freq_base", Value::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(49152)),
        ("llama.rope.dimension_count", Value::U32(64)),
    ]
}

/// gpt-oss-20b's metadata (gpt-oss-spec.md §2), without the tokenizer arrays.
fn gpt_oss_meta() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", s("gpt-oss")),
        ("gpt-oss.block_count", Value::U32(24)),
        ("gpt-oss.context_length", Value::U32(131072)),
        ("gpt-oss.embedding_length", Value::U32(2880)),
        ("gpt-oss.feed_forward_length", Value::U32(2880)),
        ("gpt-oss.attention.head_count", Value::U32(64)),
        ("gpt-oss.attention.head_count_kv", Value::U32(8)),
        ("gpt-oss.rope.freq_base", Value::F32(150000.0)),
        ("gpt-oss.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("gpt-oss.expert_count", Value::U32(32)),
        ("gpt-oss.expert_used_count", Value::U32(4)),
        ("gpt-oss.attention.key_length", Value::U32(64)),
        ("gpt-oss.attention.value_length", Value::U32(64)),
        ("gpt-oss.attention.sliding_window", Value::U32(128)),
        ("gpt-oss.expert_feed_forward_length", Value::U32(2880)),
        ("gpt-oss.rope.scaling.type", s("yarn")),
        ("gpt-oss.rope.scaling.factor", Value::F32(32.0)),
        (
            "gpt-oss.rope.scaling.original_context_length",
            Value::U32(4096),
        ),
    ]
}

fn with(
    mut meta: Vec<(&'static str, Value)>,
    key: &'static str,
    v: Option<Value>,
) -> Vec<(&'static str, Value)> {
    meta.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        meta.push((key, v));
    }
    meta
}

fn invalid(meta: &[(&str, Value)]) -> (String, Vec<ConfigProblem>) {
    let e = ModelConfig::from_header(&header(meta, &[]), "test.gguf").expect_err("invalid config");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    (msg, e.problems().to_vec())
}

#[test]
fn llama_config_of_smollm2() {
    let c = ModelConfig::from_header(&header(&smollm_meta(), &[]), "smol").expect("config");
    let ModelConfig::Llama(l) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (
            l.n_layer,
            l.n_embd,
            l.n_head,
            l.n_head_kv,
            l.head_dim,
            l.n_ff,
            l.n_vocab
        ),
        (30, 576, 9, 3, 64, 1536, 49152)
    );
    assert_eq!((l.context_length, l.rope_dim), (8192, 64));
    assert_eq!((l.rope_freq_base, l.rms_eps), (100000.0, 1e-5));
    assert_eq!(l.rope_scaling, RopeScaling::None);
    assert_eq!(c.arch_name(), "llama");
    assert_eq!(c.full_attention_layers(), (0..30).collect::<Vec<_>>());
    // 30 layers · 2 · 3 heads · 64 · 2 bytes (f16).
    assert_eq!(c.kv_bytes_per_token(2.0), 23040.0);
}

#[test]
fn llama_defaults_and_inferred_vocab() {
    let meta = smollm_meta();
    let meta = with(meta, "llama.vocab_size", None);
    let meta = with(meta, "llama.rope.dimension_count", None);
    let meta = with(meta, "llama.rope.freq_base", None);
    let meta = with(meta, "llama.attention.head_count_kv", None);
    // Vocab from the embedding table when there is no tokenizer.
    let c = ModelConfig::from_header(&header(&meta, &[("token_embd.weight", &[8, 77])]), "x")
        .expect("config");
    let ModelConfig::Llama(l) = c else { panic!() };
    assert_eq!(
        (l.n_vocab, l.rope_dim, l.rope_freq_base, l.n_head_kv),
        (77, 64, 10000.0, 9)
    );
    // Vocab from the tokenizer before the embedding table.
    let tokens = Value::Array(vec![s("a"), s("b"), s("c")]);
    let meta = with(meta, "tokenizer.ggml.tokens", Some(tokens));
    let c = ModelConfig::from_header(&header(&meta, &[("token_embd.weight", &[8, 77])]), "x")
        .expect("config");
    assert_eq!(c.n_vocab(), 3);
    // Linear scaling; integer types other than u32 are accepted.
    let meta = with(meta, "llama.rope.scaling.factor", Some(Value::F32(4.0)));
    let meta = with(meta, "llama.block_count", Some(Value::I64(30)));
    let c = ModelConfig::from_header(&header(&meta, &[]), "x").expect("config");
    let ModelConfig::Llama(l) = c else { panic!() };
    assert_eq!(l.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    assert_eq!(l.n_layer, 30);
}

#[test]
fn llama_collects_all_problems_in_one_line() {
    let meta = with(smollm_meta(), "llama.block_count", None);
    let meta = with(meta, "llama.attention.head_count_kv", Some(Value::U32(0)));
    let (msg, problems) = invalid(&meta);
    assert_eq!(
        msg,
        "invalid llama config in test.gguf: missing llama.block_count; \
         llama.attention.head_count_kv = 0 must be > 0 and divide head_count 9"
    );
    assert_eq!(problems.len(), 2);

    // Many at once: wrong type, negative, non-divisible, bad float, missing vocab, bad rope.
    let meta = vec![
        ("general.architecture", s("llama")),
        ("llama.block_count", s("thirty")),
        ("llama.context_length", Value::I32(-1)),
        ("llama.embedding_length", Value::U32(100)),
        ("llama.feed_forward_length", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(9)),
        ("llama.attention.head_count_kv", Value::U32(4)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
        ("llama.rope.scaling.type", s("yarn")),
    ];
    let (msg, problems) = invalid(&meta);
    let keys: Vec<&str> = problems.iter().map(ConfigProblem::key).collect();
    for k in [
        "llama.block_count",
        "llama.context_length",
        "llama.attention.head_count_kv",
        "llama.embedding_length",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.scaling.type",
        "llama.vocab_size",
    ] {
        assert!(keys.contains(&k), "{k} not reported: {msg}");
    }
    assert!(
        msg.contains("llama.block_count is string \"thirty\", expected an unsigned integer"),
        "{msg}"
    );
    assert!(
        msg.contains("llama.context_length = -1 must not be negative"),
        "{msg}"
    );
}

#[test]
fn llama_rejects_bad_rope_dims_and_mismatched_value_length() {
    let meta = with(
        smollm_meta(),
        "llama.rope.dimension_count",
        Some(Value::U32(65)),
    );
    let meta = with(meta, "llama.attention.value_length", Some(Value::U32(32)));
    let (_, problems) = invalid(&meta);
    let keys: Vec<&str> = problems.iter().map(ConfigProblem::key).collect();
    assert_eq!(
        keys,
        ["llama.attention.value_length", "llama.rope.dimension_count"]
    );
    let meta = with(
        smollm_meta(),
        "llama.block_count",
        Some(Value::U64(1 << 40)),
    );
    let (msg, _) = invalid(&meta);
    assert!(msg.contains("implausible"), "{msg}");
}

#[test]
fn gpt_oss_config_of_the_20b() {
    let tokens = Value::Array((0..201088).map(|_| s("t")).collect());
    let meta = with(gpt_oss_meta(), "tokenizer.ggml.tokens", Some(tokens));
    let c = ModelConfig::from_header(&header(&meta, &[]), "20b").expect("config");
    let ModelConfig::GptOss(g) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (
            g.n_layer,
            g.n_embd,
            g.n_head,
            g.n_head_kv,
            g.head_dim,
            g.n_vocab
        ),
        (24, 2880, 64, 8, 64, 201088)
    );
    assert_eq!(
        (g.n_expert, g.n_expert_used, g.n_ff_exp, g.n_ff),
        (32, 4, 2880, Some(2880))
    );
    assert_eq!((g.sliding_window, g.swa_pattern, g.rope_dim), (128, 2, 64));
    assert_eq!(
        (g.rope_freq_base, g.rope_freq_base_swa),
        (150000.0, 150000.0)
    );
    assert_eq!(
        g.rope_scaling,
        RopeScaling::Yarn {
            factor: 32.0,
            original_context_length: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attn_factor: 1.0
        }
    );
    assert_eq!(g.attention_scale, 0.125);
    assert!((g.yarn_mscale() - 1.346_573_6).abs() < 1e-6);
    assert_eq!((g.swiglu_alpha, g.swiglu_limit), (1.702, 7.0));
    // Even layers slide, odd layers are full attention (spec §6.1e).
    assert!(g.is_sliding(0) && !g.is_sliding(1) && g.is_sliding(22) && !g.is_sliding(23));
    let full = c.full_attention_layers();
    assert_eq!(full, (0..24).filter(|l| l % 2 == 1).collect::<Vec<_>>());
    // DESIGN.md: 12 KiB per token in FP8, 3.0 GiB at 131072 tokens in FP16.
    assert_eq!(c.kv_bytes_per_token(1.0), 12288.0);
    assert_eq!(
        c.kv_bytes_per_token(2.0) * 131072.0,
        3.0 * (1u64 << 30) as f64
    );
    assert_eq!(
        (
            c.arch_name(),
            c.context_length(),
            c.head_dim(),
            c.n_head_kv()
        ),
        ("gpt-oss", 131072, 64, 8)
    );
}

#[test]
fn gpt_oss_requires_key_length_and_collects_all_problems() {
    let meta = with(gpt_oss_meta(), "gpt-oss.attention.key_length", None);
    let meta = with(meta, "gpt-oss.expert_used_count", Some(Value::U32(33)));
    let meta = with(meta, "gpt-oss.rope.scaling.original_context_length", None);
    let meta = with(meta, "gpt-oss.rope.freq_base", Some(Value::F32(-1.0)));
    let meta = with(
        meta,
        "gpt-oss.attention.sliding_window",
        Some(Value::U32(0)),
    );
    let (msg, problems) = invalid(&meta);
    let keys: Vec<&str> = problems.iter().map(ConfigProblem::key).collect();
    assert_eq!(
        keys,
        [
            "gpt-oss.attention.key_length",
            "gpt-oss.expert_used_count",
            "gpt-oss.attention.sliding_window",
            "gpt-oss.rope.freq_base",
            "gpt-oss.rope.scaling.original_context_length",
            "gpt-oss.vocab_size",
        ],
        "{msg}"
    );
    assert!(
        msg.starts_with(
            "invalid gpt-oss config in test.gguf: missing gpt-oss.attention.key_length;"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("gpt-oss.expert_used_count = 33 must be at most expert_count 32"),
        "{msg}"
    );
}

#[test]
fn gpt_oss_optional_overrides() {
    let meta = with(
        gpt_oss_meta(),
        "gpt-oss.attention.sliding_window_pattern",
        Some(Value::U32(3)),
    );
    let meta = with(meta, "gpt-oss.attention.scale", Some(Value::F32(0.5)));
    let meta = with(
        meta,
        "gpt-oss.rope.freq_base_swa",
        Some(Value::F32(10000.0)),
    );
    let meta = with(meta, "gpt-oss.vocab_size", Some(Value::U32(1000)));
    let c = ModelConfig::from_header(&header(&meta, &[]), "x").expect("config");
    let ModelConfig::GptOss(g) = &c else { panic!() };
    assert_eq!(
        (g.attention_scale, g.rope_freq_base_swa, g.n_vocab),
        (0.5, 10000.0, 1000)
    );
    // Pattern 3: layers 2, 5, 8, ... are full.
    assert_eq!(c.full_attention_layers(), [2, 5, 8, 11, 14, 17, 20, 23]);
}

#[test]
fn unknown_and_missing_architectures() {
    let e = ModelConfig::from_header(
        &header(&[("general.architecture", s("mamba"))], &[]),
        "m.gguf",
    )
    .expect_err("mamba");
    assert!(matches!(&e, ConfigError::UnsupportedArchitecture { arch, .. } if arch == "mamba"));
    let msg = e.to_string();
    assert!(
        msg.contains("\"mamba\"") && msg.contains("llama") && msg.contains("gpt-oss"),
        "{msg}"
    );
    let e = ModelConfig::from_header(&header(&[], &[]), "n.gguf").expect_err("none");
    assert!(matches!(e, ConfigError::Architecture { .. }), "{e:?}");
    assert!(e.to_string().contains("general.architecture"), "{e}");
}

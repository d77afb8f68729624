//! Typed model hyperparameters read from GGUF metadata, one place per architecture.
//!
//! [`ModelConfig::from_gguf`] reads every key an architecture needs, applies the documented
//! defaults (those llama.cpp applies; see `docs/gpt-oss-spec.md` §2 for gpt-oss), checks every
//! value, and only then either returns a config whose invariants hold or fails with one
//! [`ConfigError::Invalid`] that lists *every* missing or invalid key.
//!
//! Invariants of a returned config: all counts and sizes are > 0; `n_head_kv` divides `n_head`;
//! `rope_dim` is even and ≤ `head_dim`; V heads have the same size as K heads (`head_dim`);
//! epsilons, bases and factors are finite and > 0; `n_layer` ≤ [`MAX_LAYERS`]; for gpt-oss
//! `1 ≤ n_expert_used ≤ n_expert`. Integer keys may be stored as any integer type; a key of the
//! wrong type is an error, never silently a default.

use std::fmt;

use super::error::GgufError;
use super::file::GgufFile;
use super::reader::GgufHeader;
use super::value::Value;

/// Architectures kvspool can run (values of `general.architecture`).
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["llama", "gpt-oss"];

/// Upper bound on `block_count`, so a corrupt value cannot make per-layer tables huge.
pub const MAX_LAYERS: usize = 4096;

/// A model's hyperparameters, by architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    GptOss(GptOssConfig),
}

/// RoPE context scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// YaRN (gpt-oss-spec.md §6.1c).
    Yarn {
        /// Context extension factor F (gpt-oss: 32).
        factor: f32,
        /// Training context N₀ before extension (gpt-oss: 4096).
        original_context_length: usize,
        /// β_fast (default 32).
        beta_fast: f32,
        /// β_slow (default 1).
        beta_slow: f32,
        /// Extra factor on the YaRN magnitude m (`rope.scaling.attn_factor`, default 1).
        attn_factor: f32,
    },
}

/// Hyperparameters of the `llama` architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_vocab: usize,
    pub context_length: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Size of each K and V head (`attention.key_length`, else `n_embd / n_head`).
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    /// Default 10000.
    pub rope_freq_base: f32,
    /// Rotated dimensions per head (default `head_dim`).
    pub rope_dim: usize,
    /// `None` or `Linear` (other kinds are rejected for llama).
    pub rope_scaling: RopeScaling,
}

/// Hyperparameters of the `gpt-oss` architecture (gpt-oss-spec.md §2, §5).
#[derive(Debug, Clone, PartialEq)]
pub struct GptOssConfig {
    pub n_vocab: usize,
    pub context_length: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Size of each Q, K and V head (`attention.key_length`, required: 64).
    pub head_dim: usize,
    /// `feed_forward_length` if present (unused by the graph).
    pub n_ff: Option<usize>,
    /// Experts per layer (20b: 32).
    pub n_expert: usize,
    /// Experts chosen per token (20b: 4).
    pub n_expert_used: usize,
    /// Expert intermediate size (20b: 2880).
    pub n_ff_exp: usize,
    /// Keys a sliding layer sees, the current token included (128).
    pub sliding_window: usize,
    /// Layer `il` is sliding iff `il % swa_pattern < swa_pattern - 1` (llama.cpp
    /// `set_swa_pattern`); default 2: even layers sliding, odd layers full.
    pub swa_pattern: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// RoPE base of sliding layers (`rope.freq_base_swa`, default `rope_freq_base`).
    pub rope_freq_base_swa: f32,
    /// Rotated dimensions per head (default `head_dim`).
    pub rope_dim: usize,
    /// YaRN for the ggml-org files.
    pub rope_scaling: RopeScaling,
    /// Scale of q·k logits (`attention.scale`, default 1/√head_dim = 0.125).
    pub attention_scale: f32,
    /// SwiGLU-OAI α (not stored in GGUF; llama.cpp constant 1.702).
    pub swiglu_alpha: f32,
    /// SwiGLU-OAI clamp limit (not stored in GGUF; llama.cpp constant 7.0).
    pub swiglu_limit: f32,
}

impl GptOssConfig {
    /// Whether layer `il` uses sliding-window attention.
    pub fn is_sliding(&self, il: usize) -> bool {
        self.swa_pattern > 1 && il % self.swa_pattern < self.swa_pattern - 1
    }

    /// YaRN magnitude m = attn_factor · (1 + 0.1 · ln F), applied to cos and sin (1 without YaRN).
    pub fn yarn_mscale(&self) -> f32 {
        match self.rope_scaling {
            RopeScaling::Yarn {
                factor,
                attn_factor,
                ..
            } if factor > 1.0 => attn_factor * (1.0 + 0.1 * factor.ln()),
            RopeScaling::Yarn { attn_factor, .. } => attn_factor,
            _ => 1.0,
        }
    }
}

/// One missing or invalid key.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigProblem {
    /// A required key is absent (`hint` says what else would have done).
    Missing { key: String, hint: &'static str },
    /// A key has a type that cannot mean what it should.
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A key's value breaks a rule.
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

impl ConfigProblem {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            ConfigProblem::Missing { key, .. }
            | ConfigProblem::WrongType { key, .. }
            | ConfigProblem::Invalid { key, .. } => key,
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigProblem::Missing { key, hint } => write!(f, "missing {key}{hint}"),
            ConfigProblem::WrongType {
                key,
                expected,
                found,
            } => write!(f, "{key} is {found}, expected {expected}"),
            ConfigProblem::Invalid { key, value, reason } => write!(f, "{key} = {value} {reason}"),
        }
    }
}

/// Why a config could not be built. Displays as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `general.architecture` is missing or not a string.
    #[error("{file}: {source}")]
    Architecture {
        file: String,
        #[source]
        source: GgufError,
    },
    /// An architecture kvspool does not run.
    #[error(
        "unsupported architecture {arch:?} in {file}; kvspool supports {}: use a GGUF of one of those",
        SUPPORTED_ARCHITECTURES.join(", ")
    )]
    UnsupportedArchitecture { arch: String, file: String },
    /// Every missing or invalid key, in the order they were checked.
    #[error("invalid {arch} config in {file}: {}", join(problems))]
    Invalid {
        arch: &'static str,
        file: String,
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other variants).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ModelConfig {
    /// Read the config of the file's architecture.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
        Self::from_header(file.header(), &file.path().display().to_string())
    }

    /// Read the config from a parsed header; `file` names the source in messages.
    pub fn from_header(h: &GgufHeader, file: &str) -> Result<ModelConfig, ConfigError> {
        let arch = h
            .architecture()
            .map_err(|source| ConfigError::Architecture {
                file: file.to_string(),
                source,
            })?;
        match arch {
            "llama" => llama(h, file).map(ModelConfig::Llama),
            "gpt-oss" => gpt_oss(h, file).map(ModelConfig::GptOss),
            other => Err(ConfigError::UnsupportedArchitecture {
                arch: other.to_string(),
                file: file.to_string(),
            }),
        }
    }

    /// `general.architecture` of this config.
    pub fn arch_name(&self) -> &'static str {
        match self {
            ModelConfig::Llama(_) => "llama",
            ModelConfig::GptOss(_) => "gpt-oss",
        }
    }

    pub fn n_layer(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.n_layer,
            ModelConfig::GptOss(c) => c.n_layer,
        }
    }

    pub fn n_vocab(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.n_vocab,
            ModelConfig::GptOss(c) => c.n_vocab,
        }
    }

    pub fn n_embd(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.n_embd,
            ModelConfig::GptOss(c) => c.n_embd,
        }
    }

    pub fn n_head(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.n_head,
            ModelConfig::GptOss(c) => c.n_head,
        }
    }

    pub fn n_head_kv(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.n_head_kv,
            ModelConfig::GptOss(c) => c.n_head_kv,
        }
    }

    pub fn head_dim(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.head_dim,
            ModelConfig::GptOss(c) => c.head_dim,
        }
    }

    /// Training context length.
    pub fn context_length(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.context_length,
            ModelConfig::GptOss(c) => c.context_length,
        }
    }

    /// Layers with full (not sliding-window) attention, ascending: all layers for llama, the
    /// odd layers for gpt-oss (with the default pattern).
    pub fn full_attention_layers(&self) -> Vec<usize> {
        match self {
            ModelConfig::Llama(c) => (0..c.n_layer).collect(),
            ModelConfig::GptOss(c) => (0..c.n_layer).filter(|&il| !c.is_sliding(il)).collect(),
        }
    }

    /// KV-cache bytes one token occupies in the full-attention layers (sliding layers keep a
    /// fixed ring instead): layers · 2 (K and V) · n_head_kv · head_dim · `bytes_per_value`.
    /// gpt-oss-20b at 1 byte per value (FP8): 12 · 2 · 8 · 64 = 12288.
    pub fn kv_bytes_per_token(&self, bytes_per_value: f64) -> f64 {
        let layers = self.full_attention_layers().len() as f64;
        layers * 2.0 * (self.n_head_kv() * self.head_dim()) as f64 * bytes_per_value
    }
}

/// Reads `{arch}.{suffix}` keys, recording problems instead of stopping at the first.
/// Getters return a placeholder (0) when a key is missing or invalid; the caller returns an
/// error whenever any problem was recorded, so placeholders never escape.
struct Keys<'a> {
    h: &'a GgufHeader,
    arch: &'static str,
    problems: Vec<ConfigProblem>,
}

impl<'a> Keys<'a> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn invalid(&mut self, key: String, value: impl fmt::Display, reason: impl Into<String>) {
        self.problems.push(ConfigProblem::Invalid {
            key,
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    fn wrong_type(&mut self, key: String, expected: &'static str, v: &Value) {
        self.problems.push(ConfigProblem::WrongType {
            key,
            expected,
            found: format!("{} {v}", v.type_name()),
        });
    }

    /// An unsigned integer key: `Ok(None)` if absent, `Err(())` if present but unusable.
    fn opt_uint(&mut self, suffix: &str) -> Result<Option<usize>, ()> {
        let key = self.key(suffix);
        let Some(v) = self.h.get(&key) else {
            return Ok(None);
        };
        match (v.as_u64(), v.as_i64()) {
            (Some(x), _) => match usize::try_from(x) {
                Ok(x) => Ok(Some(x)),
                Err(_) => {
                    self.invalid(key, x, "is too large for this machine");
                    Err(())
                }
            },
            (None, Some(neg)) => {
                self.invalid(key, neg, "must not be negative");
                Err(())
            }
            _ => {
                self.wrong_type(key, "an unsigned integer", v);
                Err(())
            }
        }
    }

    /// A required count that must be > 0 (0 if missing or invalid; a problem is recorded).
    fn count(&mut self, suffix: &str) -> usize {
        match self.opt_uint(suffix) {
            Ok(Some(0)) => {
                self.invalid(self.key(suffix), 0, "must be > 0");
                0
            }
            Ok(Some(x)) => x,
            Ok(None) => {
                self.problems.push(ConfigProblem::Missing {
                    key: self.key(suffix),
                    hint: "",
                });
                0
            }
            Err(()) => 0,
        }
    }

    /// An optional count that must be > 0 when present.
    fn opt_count(&mut self, suffix: &str) -> Option<usize> {
        match self.opt_uint(suffix) {
            Ok(Some(0)) => {
                self.invalid(self.key(suffix), 0, "must be > 0");
                Some(0)
            }
            Ok(x) => x,
            Err(()) => Some(0),
        }
    }

    /// An optional float that must be finite and > 0 when present.
    fn opt_positive_f32(&mut self, suffix: &str) -> Option<f32> {
        let key = self.key(suffix);
        let v = self.h.get(&key)?;
        match v.as_f32() {
            Some(x) if x.is_finite() && x > 0.0 => Some(x),
            Some(x) => {
                self.invalid(key, x, "must be finite and > 0");
                Some(0.0)
            }
            None => {
                self.wrong_type(key, "a number", v);
                Some(0.0)
            }
        }
    }

    /// A required float that must be finite and > 0.
    fn positive_f32(&mut self, suffix: &str) -> f32 {
        match self.opt_positive_f32(suffix) {
            Some(x) => x,
            None => {
                self.problems.push(ConfigProblem::Missing {
                    key: self.key(suffix),
                    hint: "",
                });
                0.0
            }
        }
    }

    fn opt_str(&mut self, suffix: &str) -> Option<&'a str> {
        let key = self.key(suffix);
        let v = self.h.get(&key)?;
        match v.as_str() {
            Some(s) => Some(s),
            None => {
                self.wrong_type(key, "a string", v);
                None
            }
        }
    }

    /// `n_layer`: required, > 0, at most MAX_LAYERS.
    fn n_layer(&mut self) -> usize {
        let n = self.count("block_count");
        if n > MAX_LAYERS {
            self.invalid(
                self.key("block_count"),
                n,
                format!("is implausible (kvspool accepts at most {MAX_LAYERS} layers)"),
            );
            return 0;
        }
        n
    }

    /// `vocab_size`, else the length of `tokenizer.ggml.tokens`, else dims[1] of
    /// `token_embd.weight`.
    fn n_vocab(&mut self) -> usize {
        if let Some(n) = self.opt_count("vocab_size") {
            return n;
        }
        if let Some(tokens) = self.h.get("tokenizer.ggml.tokens") {
            match tokens.as_array() {
                Some(a) if !a.is_empty() => return a.len(),
                Some(_) => {
                    self.invalid("tokenizer.ggml.tokens".into(), tokens, "must not be empty");
                    return 0;
                }
                None => {
                    self.wrong_type(
                        "tokenizer.ggml.tokens".into(),
                        "an array of strings",
                        tokens,
                    );
                    return 0;
                }
            }
        }
        if let Some(n) = self
            .h
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1))
            .and_then(|&n| usize::try_from(n).ok())
        {
            return n;
        }
        self.problems.push(ConfigProblem::Missing {
            key: self.key("vocab_size"),
            hint: " (and no tokenizer.ggml.tokens or token_embd.weight to infer it from)",
        });
        0
    }

    /// `n_head_kv` must divide `n_head`.
    fn check_kv_heads(&mut self, n_head: usize, n_head_kv: usize) {
        if n_head_kv == 0 || (n_head > 0 && !n_head.is_multiple_of(n_head_kv)) {
            let reason = format!("must be > 0 and divide head_count {n_head}");
            // A zero already recorded by `count` needs no second entry.
            let key = self.key("attention.head_count_kv");
            if !self.problems.iter().any(|p| p.key() == key) {
                self.invalid(key, n_head_kv, reason);
            }
        }
    }

    /// `attention.value_length`, if present, must equal the K head size.
    fn check_value_length(&mut self, head_dim: usize) {
        if let Some(vl) = self.opt_count("attention.value_length") {
            if vl != 0 && head_dim != 0 && vl != head_dim {
                self.invalid(
                    self.key("attention.value_length"),
                    vl,
                    format!(
                        "must equal the key head size {head_dim}: kvspool needs K and V heads of the same size"
                    ),
                );
            }
        }
    }

    /// `rope.dimension_count` (default `head_dim`): even and ≤ head_dim.
    fn rope_dim(&mut self, head_dim: usize) -> usize {
        let dim = self.opt_count("rope.dimension_count").unwrap_or(head_dim);
        if dim != 0 && head_dim != 0 && (!dim.is_multiple_of(2) || dim > head_dim) {
            self.invalid(
                self.key("rope.dimension_count"),
                dim,
                format!("must be even and at most the head size {head_dim}"),
            );
        }
        dim
    }

    /// `rope.scaling.*` as llama.cpp reads it: the type defaults to linear; a linear factor of 0
    /// or 1 means no scaling.
    fn rope_scaling(&mut self) -> RopeScaling {
        let kind = self.opt_str("rope.scaling.type");
        // llama.cpp reads a factor of 0 as "not set".
        let unset = self
            .h
            .get(&self.key("rope.scaling.factor"))
            .and_then(Value::as_f32)
            == Some(0.0);
        let factor = if unset {
            None
        } else {
            self.opt_positive_f32("rope.scaling.factor")
        };
        match kind {
            None | Some("linear") => match factor.filter(|&f| f != 1.0) {
                None => RopeScaling::None,
                Some(factor) => RopeScaling::Linear { factor },
            },
            Some("none") => RopeScaling::None,
            Some("yarn") => {
                if factor.is_none() {
                    self.problems.push(ConfigProblem::Missing {
                        key: self.key("rope.scaling.factor"),
                        hint: " (required by rope.scaling.type = yarn)",
                    });
                }
                let original_context_length =
                    match self.opt_count("rope.scaling.original_context_length") {
                        Some(n) => n,
                        None => {
                            self.problems.push(ConfigProblem::Missing {
                                key: self.key("rope.scaling.original_context_length"),
                                hint: " (required by rope.scaling.type = yarn)",
                            });
                            0
                        }
                    };
                RopeScaling::Yarn {
                    factor: factor.unwrap_or(0.0),
                    original_context_length,
                    beta_fast: self
                        .opt_positive_f32("rope.scaling.yarn_beta_fast")
                        .unwrap_or(32.0),
                    beta_slow: self
                        .opt_positive_f32("rope.scaling.yarn_beta_slow")
                        .unwrap_or(1.0),
                    attn_factor: self
                        .opt_positive_f32("rope.scaling.attn_factor")
                        .unwrap_or(1.0),
                }
            }
            Some(other) => {
                self.invalid(
                    self.key("rope.scaling.type"),
                    format!("{other:?}"),
                    "is not supported (kvspool knows none, linear, yarn)",
                );
                RopeScaling::None
            }
        }
    }

    fn finish<T>(self, file: &str, config: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                arch: self.arch,
                file: file.to_string(),
                problems: self.problems,
            })
        }
    }
}

fn llama(h: &GgufHeader, file: &str) -> Result<LlamaConfig, ConfigError> {
    let mut k = Keys {
        h,
        arch: "llama",
        problems: Vec::new(),
    };
    let n_layer = k.n_layer();
    let context_length = k.count("context_length");
    let n_embd = k.count("embedding_length");
    let n_ff = k.count("feed_forward_length");
    let n_head = k.count("attention.head_count");
    // llama.cpp: head_count_kv defaults to head_count (plain multi-head attention).
    let n_head_kv = match k.opt_uint("attention.head_count_kv") {
        Ok(Some(n)) => n,
        Ok(None) => n_head,
        Err(()) => 0,
    };
    k.check_kv_heads(n_head, n_head_kv);
    let head_dim = match k.opt_count("attention.key_length") {
        Some(d) => d,
        None if n_head > 0 && n_embd.is_multiple_of(n_head) => n_embd / n_head,
        None => {
            if n_head > 0 {
                k.invalid(
                    k.key("embedding_length"),
                    n_embd,
                    format!(
                        "must be divisible by head_count {n_head} (or set attention.key_length)"
                    ),
                );
            }
            0
        }
    };
    k.check_value_length(head_dim);
    let rms_eps = k.positive_f32("attention.layer_norm_rms_epsilon");
    let rope_freq_base = k.opt_positive_f32("rope.freq_base").unwrap_or(10000.0);
    let rope_dim = k.rope_dim(head_dim);
    let rope_scaling = k.rope_scaling();
    if let RopeScaling::Yarn { .. } = rope_scaling {
        k.invalid(
            k.key("rope.scaling.type"),
            "\"yarn\"",
            "is not supported for llama (kvspool's llama path does none and linear)",
        );
    }
    let n_vocab = k.n_vocab();
    let config = LlamaConfig {
        n_vocab,
        context_length,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff,
        rms_eps,
        rope_freq_base,
        rope_dim,
        rope_scaling,
    };
    k.finish(file, config)
}

fn gpt_oss(h: &GgufHeader, file: &str) -> Result<GptOssConfig, ConfigError> {
    let mut k = Keys {
        h,
        arch: "gpt-oss",
        problems: Vec::new(),
    };
    let n_layer = k.n_layer();
    let context_length = k.count("context_length");
    let n_embd = k.count("embedding_length");
    let n_ff = k.opt_count("feed_forward_length");
    let n_head = k.count("attention.head_count");
    let n_head_kv = k.count("attention.head_count_kv");
    k.check_kv_heads(n_head, n_head_kv);
    // Required: the llama.cpp default n_embd / n_head = 45 would be wrong (spec §2).
    let head_dim = k.count("attention.key_length");
    k.check_value_length(head_dim);
    let n_expert = k.count("expert_count");
    let n_expert_used = k.count("expert_used_count");
    if n_expert > 0 && n_expert_used > n_expert {
        k.invalid(
            k.key("expert_used_count"),
            n_expert_used,
            format!("must be at most expert_count {n_expert}"),
        );
    }
    let n_ff_exp = k.count("expert_feed_forward_length");
    let sliding_window = k.count("attention.sliding_window");
    let swa_pattern = k.opt_count("attention.sliding_window_pattern").unwrap_or(2);
    let rms_eps = k.positive_f32("attention.layer_norm_rms_epsilon");
    let rope_freq_base = k.positive_f32("rope.freq_base");
    let rope_freq_base_swa = k
        .opt_positive_f32("rope.freq_base_swa")
        .unwrap_or(rope_freq_base);
    let rope_dim = k.rope_dim(head_dim);
    let rope_scaling = k.rope_scaling();
    let attention_scale = match k.opt_positive_f32("attention.scale") {
        Some(s) => s,
        None if head_dim > 0 => 1.0 / (head_dim as f32).sqrt(),
        None => 0.0,
    };
    let n_vocab = k.n_vocab();
    let config = GptOssConfig {
        n_vocab,
        context_length,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff,
        n_expert,
        n_expert_used,
        n_ff_exp,
        sliding_window,
        swa_pattern,
        rms_eps,
        rope_freq_base,
        rope_freq_base_swa,
        rope_dim,
        rope_scaling,
        attention_scale,
        swiglu_alpha: 1.702,
        swiglu_limit: 7.0,
    };
    k.finish(file, config)
}

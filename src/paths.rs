//! Where kvspool keeps files outside the repository.
//!
//! `KVSPOOL_CACHE` (default `~/.cache/kvspool`) holds `models/` (overridable by `KVSPOOL_MODELS`)
//! and the peer build `llama.cpp-b11434/`. Nothing here is ever written into the repository.

use std::path::PathBuf;

/// File name of the default model, fetched by `tools/fetch-models.sh`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache root: `$KVSPOOL_CACHE`, else `$HOME/.cache/kvspool`, else `.kvspool-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KVSPOOL_CACHE").filter(|s| !s.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache").join("kvspool"),
        None => PathBuf::from(".kvspool-cache"),
    }
}

/// The model directory: `$KVSPOOL_MODELS`, else `<cache>/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("KVSPOOL_MODELS").filter(|s| !s.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => cache_dir().join("models"),
    }
}

/// Path of the default model (may not exist).
pub fn default_model() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

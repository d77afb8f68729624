//! GGUF files: mmap once, parse and validate the header, typed configs per architecture, and a
//! writer for tests and tools.
//!
//! - [`GgufFile::open`] maps a file (the module's only `unsafe`, see `file.rs`) and validates
//!   it with [`GgufHeader::parse`], the single parser also used on in-memory bytes
//!   ([`GgufFile::parse_bytes`]) and by the fuzz target (`fuzz/fuzz_targets/gguf_parse.rs`).
//! - After `open` succeeds, every [`TensorInfo`]'s bytes are in bounds, aligned to
//!   [`GgufFile::alignment`], non-overlapping, and exactly as long as its dims and type need;
//!   metadata keys and tensor names are unique; `general.alignment` is a power of two. See
//!   `reader.rs` for the full list of checks. The parser never panics and never allocates from
//!   an unchecked length.
//! - [`ModelConfig::from_gguf`] turns metadata into a [`LlamaConfig`] or [`GptOssConfig`],
//!   reporting every missing or invalid key at once.
//! - [`GgufWriter`] writes GGUF v3 files that the reader accepts, streaming tensor data and
//!   renaming a temporary file into place only when complete.
//!
//! This module knows nothing about the models' maths.

mod config;
mod error;
mod file;
mod reader;
mod types;
mod value;
mod writer;

pub use config::{
    ConfigError, ConfigProblem, GptOssConfig, LlamaConfig, ModelConfig, RopeScaling, MAX_LAYERS,
    SUPPORTED_ARCHITECTURES,
};
pub use error::{GgufError, GgufWriteError};
pub use file::GgufFile;
pub use reader::{
    GgufHeader, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT,
    MAX_METADATA_ENTRIES, MAX_METADATA_VALUES, MAX_TENSORS,
};
pub use types::GgmlType;
pub use value::{Value, ValueType, MAX_ARRAY_DEPTH};
pub use writer::{GgufFileWriter, GgufWriter, TensorStream};

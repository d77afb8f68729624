//! kvspool: LLM inference on CPU with an out-of-core, tiered KV cache.
//!
//! Module dependencies point one way (see `docs/ARCHITECTURE.md`):
//! `gguf` → `quant` → `kernels` → `model` → `kv` → `engine`; `tokenizer` sits beside them.
//! The command-line front end lives in the binary (`src/main.rs`, `src/cli/`).
//!
//! `unsafe` is confined to `gguf` (the mmap), `kernels` (SIMD intrinsics) and nowhere else;
//! every block carries a `// SAFETY:` comment (enforced by clippy's `undocumented_unsafe_blocks`).

pub mod engine;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod paths;
pub mod profile;
pub mod quant;
pub mod tokenizer;
pub mod units;

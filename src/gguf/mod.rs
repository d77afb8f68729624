//! GGUF reader (placeholder; being written).
mod types;
pub use types::GgmlType;

//! Attention kernel (owned by the model/kv work; being written).

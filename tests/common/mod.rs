//! Helpers shared by integration tests.
#![allow(dead_code)]

use kvspool::model::{self, Loaded};
use std::path::PathBuf;

/// The default model; fails (does not skip) with instructions when it is missing.
pub fn default_model_path() -> PathBuf {
    let p = kvspool::paths::default_model();
    assert!(
        p.exists(),
        "test model missing at {}: run tools/fetch-models.sh (the README's test command does this)",
        p.display()
    );
    p
}

/// Load the default model.
pub fn load_default_model() -> Loaded {
    model::load(&default_model_path()).expect("default model loads")
}

/// Directory for the disk tier files of tests (under the cache, so O_DIRECT is exercised where
/// the filesystem allows it; each cache removes its own file when dropped).
pub fn kv_dir() -> PathBuf {
    kvspool::paths::cache_dir().join("test-kv")
}

/// A tiered KV cache for `geo` with the exact f32 format and a RAM budget that holds it all.
pub fn ram_kv(geo: kvspool::kv::KvGeometry) -> Box<kvspool::kv::TieredKv> {
    let mut cfg = kvspool::kv::TieredConfig::new(1 << 30, kv_dir());
    cfg.dtype = kvspool::kv::format::KvDtype::F32;
    Box::new(kvspool::kv::TieredKv::new(geo, cfg).expect("tiered KV cache"))
}

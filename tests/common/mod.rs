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

//! `kvspool plan` arithmetic on the real SmolLM2 file.

mod common;

use kvspool::engine::plan::{plan, PlanInput};
use kvspool::gguf::{GgufFile, ModelConfig};

#[test]
fn plan_splits_kv_between_ram_and_disk_within_the_budget() {
    let f = GgufFile::open(&common::default_model_path()).unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    // SmolLM2: 30 full layers × 3 KV heads × 64 dims × (K+V) × 1 byte (fp8) = 11,520 B/token.
    let roomy = plan(
        &f,
        &cfg,
        &PlanInput {
            ram_bytes: 16 << 30,
            ctx: 8192,
            kv_bytes_per_value: 1.0,
            block_tokens: 64,
        },
    );
    assert_eq!(roomy.kv_total_bytes, 11_520 * 8192);
    assert_eq!(roomy.kv_ram_bytes, roomy.kv_total_bytes);
    assert_eq!(roomy.attention, "dense");
    assert!(roomy.weights_fit && roomy.ctx_exceeds_training.is_none());

    let tight = plan(
        &f,
        &cfg,
        &PlanInput {
            ram_bytes: 2 << 30,
            ctx: 131_072,
            kv_bytes_per_value: 1.0,
            block_tokens: 64,
        },
    );
    assert_eq!(tight.kv_total_bytes, 11_520 * 131_072);
    assert_eq!(tight.kv_disk_bytes, tight.kv_total_bytes);
    assert!(tight.kv_ram_bytes < tight.kv_total_bytes);
    assert_eq!(
        tight.reserve_bytes + tight.weights_bytes + tight.overhead_bytes + tight.kv_ram_bytes,
        tight.ram_bytes,
        "the RAM tier takes exactly what is left"
    );
    assert_eq!(tight.attention, "sparse");
    assert_eq!(tight.ctx_exceeds_training, Some(8192));
    assert!(tight
        .flags("fp8")
        .contains(&format!("--kv-ram {}MiB", tight.kv_ram_bytes >> 20)));

    // Too little RAM for the weights: flagged, and the RAM tier falls back to one block per layer.
    let tiny = plan(
        &f,
        &cfg,
        &PlanInput {
            ram_bytes: 1 << 30,
            ctx: 4096,
            kv_bytes_per_value: 2.0,
            block_tokens: 64,
        },
    );
    assert!(!tiny.weights_fit);
    assert_eq!(tiny.kv_ram_bytes, 30 * 64 * 192 * 2 * 2);
}

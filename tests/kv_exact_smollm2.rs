//! Tiering is exact on the real model: SmolLM2 on a 2,038-token real prompt, greedy, 64 new
//! tokens. For every KV dtype, the tokens and the final logits are bit-identical whatever the
//! RAM budget (64 KiB: every block streams from disk; 1 MiB: a few dozen frames; 1 GiB: all
//! resident), the disk backend and the prefetcher: the baseline (1 GiB, uring, prefetch on)
//! against two runs that together use every other value; `tools/check-tiering-exact.sh` runs
//! the full cross product (18 runs per dtype) through the CLI.

mod common;

use kvspool::engine::Session;
use kvspool::kv::disk::BackendKind;
use kvspool::kv::format::KvDtype;
use kvspool::kv::prefetch::PrefetchMode;
use kvspool::kv::{KvStats, TieredConfig, TieredKv};
use kvspool::model::LogitsFor;
use kvspool::tokenizer::Tokenizer;

const N_NEW: usize = 64;

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i as u32)
}

struct Out {
    tokens: Vec<u32>,
    logits: Vec<u32>,
    stats: KvStats,
}

fn run(
    m: &dyn kvspool::model::Model,
    prompt: &[u32],
    dtype: KvDtype,
    ram: usize,
    backend: BackendKind,
    prefetch: bool,
) -> Out {
    let mut c = TieredConfig::new(ram, common::kv_dir());
    c.dtype = dtype;
    c.backend = backend;
    c.prefetch = if prefetch {
        PrefetchMode::Auto
    } else {
        PrefetchMode::Off
    };
    let kv = TieredKv::new(m.kv_geometry(prompt.len() + N_NEW + 1), c).unwrap();
    let mut s = Session::new(m, Box::new(kv));
    let last = s
        .prefill(prompt, 512, LogitsFor::Last, &mut |_, _| {})
        .unwrap();
    let mut tok = argmax(&last);
    let mut tokens = vec![tok];
    let mut logits = Vec::new();
    for _ in 1..N_NEW {
        let l = s.step(tok).unwrap();
        tok = argmax(l);
        tokens.push(tok);
        logits = l.iter().map(|x| x.to_bits()).collect();
    }
    let stats = s.kv().stats().unwrap();
    Out {
        tokens,
        logits,
        stats,
    }
}

#[test]
fn tokens_and_logits_are_bit_identical_across_budgets_backends_and_prefetch() {
    let loaded = common::load_default_model();
    let tok = Tokenizer::from_gguf(&loaded.file).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/prompts/long-2k.txt"
    ))
    .unwrap();
    let prompt = tok.encode(&text, true);
    assert!(prompt.len() >= 2000, "prompt of {} tokens", prompt.len());
    let m = &*loaded.model;
    const GIB: usize = 1 << 30;
    for dtype in KvDtype::ALL {
        let base = run(m, &prompt, dtype, GIB, BackendKind::Uring, true);
        assert_eq!(base.tokens.len(), N_NEW);
        assert_eq!(base.stats.misses + base.stats.late, 0, "{:?}", base.stats);
        // Every value of every setting appears at least once (the CI time budget allows three
        // runs per dtype; the script covers all 18 combinations).
        let variants = [
            (
                "64KiB pread prefetch off",
                64 << 10,
                BackendKind::Pread,
                false,
            ),
            ("1MiB mmap prefetch on", 1 << 20, BackendKind::Mmap, true),
        ];
        for (name, ram, backend, prefetch) in variants {
            let o = run(m, &prompt, dtype, ram, backend, prefetch);
            assert_eq!(o.tokens, base.tokens, "{dtype} {name}: tokens differ");
            assert!(
                o.logits == base.logits,
                "{dtype} {name}: final logits differ"
            );
            assert!(
                o.stats.ram_peak_bytes <= ram as u64,
                "{dtype} {name}: RAM peak {} > budget {ram}",
                o.stats.ram_peak_bytes
            );
            if ram < GIB {
                assert!(
                    o.stats.bytes_read > 0,
                    "{dtype} {name}: nothing read from disk"
                );
            }
            eprintln!(
                "{dtype} {name}: hit rate {:.3}, {} blocks read, {} MiB read, peak {} KiB",
                o.stats.hit_rate,
                o.stats.blocks_read,
                o.stats.bytes_read >> 20,
                o.stats.ram_peak_bytes >> 10
            );
        }
    }
}

//! Needle in a haystack: sparse attention (`--attention sparse`) must retrieve a pass key
//! wherever dense attention does. SmolLM2-135M-Instruct (fast arithmetic, f16 KV, 16-token
//! blocks); a pass-key sentence inserted at depths 0%, 11%, ..., 100% into the classic repeated
//! filler, ~4K or ~8K tokens in all, then the question; greedy decoding of 8 tokens, densely and
//! with sparse selections of 25% of the context (mass 1.0 = budget only, and the default mass
//! 0.95; the default `--sparse-unit auto`: 4-token selection units in the 16-token blocks at ~4K,
//! 8-token at ~8K, whose cache holds a few positions more than 8,192),
//! must contain the key in every sparse mode whenever it does densely.
//!
//! `cargo test` runs 4 of the 10 depths at ~4K (CI time); all 10 at ~4K and ~8K are `#[ignore]`d:
//! `cargo test --release --test sparse_retrieval -- --ignored --nocapture` (each depth's answers
//! are printed as soon as it is done).
//!
//! The prompt is prefilled densely in every mode, so one prefill serves all of them: the caches
//! of the modes are fed the same K/V ([`Tee`]) while the first one, dense with 64-token blocks
//! (prefill is slower with 16-token blocks: ~55 s against ~27 s for 4K tokens in our runs),
//! computes the attention; then each mode decodes on its own cache. The reference is dense
//! decoding with the sparse modes' 16-token blocks (the 64-token dense mode is printed too). The
//! prompt's last token is a decode step too, so every answer token comes from a sparse attention
//! pass. Consecutive depths share the filler before the needle: the caches are truncated back to
//! the common prefix (rounded down to a block) and only the rest is prefilled again.

mod common;

use kvspool::kv::format::KvDtype;
use kvspool::kv::tiered::SparseConfig;
use kvspool::kv::{AttnQuery, KvCache, KvError, KvGeometry, KvStats, TieredConfig, TieredKv};
use kvspool::model::{self, LogitsFor, Model, Precision};
use kvspool::tokenizer::Tokenizer;
use std::time::Instant;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it \
and memorize it. I will quiz you about the important information there.";
const FILLER: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = " What is the pass key? The pass key is";
const BLOCK_TOKENS: usize = 16;
/// Block size of the cache that computes the (dense) prefill.
const PREFILL_BLOCK_TOKENS: usize = 64;
const N_NEW: usize = 8;
const DEPTHS: usize = 10;
const PREFILL_CHUNK: usize = 512;

/// Several KV caches fed the same prompt. With `active == None` every append goes to all of
/// them and the first (dense) one computes the attention; with `Some(i)` only cache `i` is used.
struct Tee {
    caches: Vec<TieredKv>,
    active: Option<usize>,
}

impl Tee {
    fn current(&self) -> &TieredKv {
        &self.caches[self.active.unwrap_or(0)]
    }
}

impl KvCache for Tee {
    fn geometry(&self) -> &KvGeometry {
        self.caches[0].geometry()
    }

    fn len(&self, layer: usize) -> usize {
        self.current().len(layer)
    }

    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        match self.active {
            Some(i) => self.caches[i].append(layer, k, v),
            None => self
                .caches
                .iter_mut()
                .try_for_each(|c| c.append(layer, k, v)),
        }
    }

    fn attend(
        &mut self,
        layer: usize,
        query: &AttnQuery<'_>,
        out: &mut [f32],
    ) -> Result<(), KvError> {
        let i = self.active.unwrap_or(0);
        self.caches[i].attend(layer, query, out)
    }

    fn truncate(&mut self, n: usize) {
        match self.active {
            Some(i) => self.caches[i].truncate(n),
            None => self.caches.iter_mut().for_each(|c| c.truncate(n)),
        }
    }

    fn stats(&self) -> Option<KvStats> {
        KvCache::stats(self.current())
    }
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i as u32)
}

/// One way of attending during decoding.
struct Mode {
    name: String,
    block_tokens: usize,
    sparse: Option<SparseConfig>,
}

/// Index of the reference mode (dense, 16-token blocks) in [`modes`].
const REFERENCE: usize = 1;

/// The modes at a context of `n` tokens: dense with 64-token blocks first (it computes the
/// shared prefill), dense with 16-token blocks (the reference), then sparse selections of 25% of
/// the context, budget only (mass 1.0) and with the default mass rule (0.95).
fn modes(n: usize) -> Vec<Mode> {
    let budget = n / 4;
    let mut v = vec![
        Mode {
            name: format!("dense/{PREFILL_BLOCK_TOKENS}"),
            block_tokens: PREFILL_BLOCK_TOKENS,
            sparse: None,
        },
        Mode {
            name: "dense".into(),
            block_tokens: BLOCK_TOKENS,
            sparse: None,
        },
    ];
    for mass in [1.0f32, 0.95] {
        v.push(Mode {
            name: format!("sparse b{budget} m{mass}"),
            block_tokens: BLOCK_TOKENS,
            sparse: Some(SparseConfig {
                mass,
                budget_tokens: budget,
                ..SparseConfig::default()
            }),
        });
    }
    v
}

/// What one mode produced at one depth.
struct Answer {
    text: String,
    found: bool,
    /// Sealed + tail blocks selected over all decode passes / candidates (1.0 = dense).
    blocks_fraction: f64,
}

/// One depth: its index in the 10-depth grid, where the needle is, the prompt's length, one
/// answer per mode.
struct Depth {
    index: usize,
    needle_pos: usize,
    len: usize,
    answers: Vec<Answer>,
}

/// The pass key of depth `i` (five digits, different per depth).
fn key(i: usize) -> String {
    format!("{}", 71432 + 1111 * i as u32 % 28000)
}

fn percent(i: usize) -> usize {
    i * 100 / (DEPTHS - 1)
}

fn print_depth(d: &Depth, modes: &[Mode]) {
    let cells: Vec<String> = d
        .answers
        .iter()
        .zip(modes)
        .map(|(a, md)| {
            format!(
                "{}: {} {:?} {:.1}%",
                md.name,
                if a.found { "yes" } else { "NO" },
                a.text,
                100.0 * a.blocks_fraction
            )
        })
        .collect();
    eprintln!(
        "depth {:>3}% (needle at {} of {}, key {}): {}",
        percent(d.index),
        d.needle_pos,
        d.len,
        key(d.index),
        cells.join(" | ")
    );
}

/// Runs the depths `depths` (indices into the grid 0%, 11%, ..., 100%) at about `target`
/// tokens; returns the modes and the depths' answers (in increasing depth) and prints a table
/// (each depth as it is done: deepest first, then sorted).
fn haystack(target: usize, depths: &[usize]) -> (Vec<Mode>, Vec<Depth>) {
    let t0 = Instant::now();
    let path = common::default_model_path();
    let loaded = model::load_with(&path, Precision::Fast).expect("default model loads");
    let tok = Tokenizer::from_gguf(&loaded.file).unwrap();
    let m: &dyn Model = &*loaded.model;
    let intro = tok.encode(INTRO, false);
    let unit = tok.encode_with(FILLER, false, false);
    let question = tok.encode_with(QUESTION, false, false);
    let needle_len = tok.encode_with(&needle_text(&key(0)), false, false).len();
    let n_units = (target - intro.len() - needle_len - question.len()) / unit.len();
    let modes = modes(target);
    assert!(
        modes[0].sparse.is_none() && modes[REFERENCE].sparse.is_none(),
        "the first mode computes the prefill and the reference is dense"
    );
    let caches = modes
        .iter()
        .map(|md| {
            let mut c = TieredConfig::new(1 << 30, common::kv_dir());
            c.dtype = KvDtype::F16;
            c.block_tokens = md.block_tokens;
            c.max_batch = PREFILL_CHUNK;
            c.sparse = md.sparse;
            TieredKv::new(m.kv_geometry(target + N_NEW + 1), c).unwrap()
        })
        .collect();
    let mut tee = Tee {
        caches,
        active: None,
    };
    let mut logits = Vec::new();
    let mut prev: Vec<u32> = Vec::new();
    let mut rows = Vec::new();
    let mut order = depths.to_vec();
    order.sort_unstable();
    order.dedup();
    // Deepest needle first: the filler before the needle only shrinks, so the caches keep it.
    for &i in order.iter().rev() {
        assert!(i < DEPTHS, "depth index {i}");
        let before = (n_units * i + (DEPTHS - 1) / 2) / (DEPTHS - 1);
        let key = key(i);
        let mut prompt = intro.clone();
        for _ in 0..before {
            prompt.extend_from_slice(&unit);
        }
        let needle_pos = prompt.len();
        prompt.extend(tok.encode_with(&needle_text(&key), false, false));
        for _ in before..n_units {
            prompt.extend_from_slice(&unit);
        }
        prompt.extend_from_slice(&question);
        assert!(prompt.len() <= target, "{} > {target}", prompt.len());
        // Keep the common prefix (whole blocks), prefill the rest but the last token.
        let common = prev.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
        let keep = (common / PREFILL_BLOCK_TOKENS * PREFILL_BLOCK_TOKENS).min(prompt.len() - 1);
        tee.active = None;
        tee.truncate(keep);
        for (c, chunk) in prompt[keep..prompt.len() - 1]
            .chunks(PREFILL_CHUNK)
            .enumerate()
        {
            m.forward(
                chunk,
                keep + c * PREFILL_CHUNK,
                &mut tee,
                LogitsFor::None,
                &mut logits,
            )
            .unwrap();
        }
        let p = prompt.len() - 1;
        let mut answers = Vec::new();
        for (mi, _) in modes.iter().enumerate() {
            tee.active = Some(mi);
            tee.caches[mi].reset_counters();
            let mut t = prompt[p];
            let mut out = Vec::new();
            for s in 0..N_NEW {
                m.forward(&[t], p + s, &mut tee, LogitsFor::Last, &mut logits)
                    .unwrap();
                t = argmax(&logits);
                out.push(t);
            }
            let st = KvCache::stats(&tee.caches[mi]).unwrap();
            let (cand, sel) = st.layers.iter().fold((0u64, 0u64), |(c, s), l| {
                (c + l.sparse_candidates, s + l.sparse_selected)
            });
            let text = tok.decode_lossy(&out);
            answers.push(Answer {
                found: text.contains(&key),
                text,
                blocks_fraction: if cand == 0 {
                    1.0
                } else {
                    sel as f64 / cand as f64
                },
            });
            tee.caches[mi].truncate(p);
        }
        let d = Depth {
            index: i,
            needle_pos,
            len: prompt.len(),
            answers,
        };
        print_depth(&d, &modes);
        rows.push(d);
        prev = prompt;
    }
    rows.reverse();
    eprintln!(
        "needle in ~{target} tokens ({:.0} s); key found? (decoded text; fraction of blocks selected)",
        t0.elapsed().as_secs_f64()
    );
    for d in &rows {
        print_depth(d, &modes);
    }
    (modes, rows)
}

fn needle_text(key: &str) -> String {
    format!(" The pass key is {key}. Remember it. {key} is the pass key.")
}

fn check(target: usize, depths: &[usize]) {
    // `KVSPOOL_NEEDLE_DEPTHS=1,4`: only these depth indices (0-9) of the test's grid.
    let only: Option<Vec<usize>> = std::env::var("KVSPOOL_NEEDLE_DEPTHS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let depths: Vec<usize> = depths
        .iter()
        .copied()
        .filter(|d| only.as_ref().is_none_or(|o| o.contains(d)))
        .collect();
    let (modes, rows) = haystack(target, &depths);
    let dense_found = rows.iter().filter(|r| r.answers[REFERENCE].found).count();
    // The test means something only if the model does retrieve the key densely.
    assert!(
        dense_found * 2 >= rows.len(),
        "dense attention found the key at only {dense_found} of {} depths",
        rows.len()
    );
    let mut failures = Vec::new();
    for row in &rows {
        let answers = &row.answers;
        let reference = &answers[REFERENCE];
        for (a, md) in answers
            .iter()
            .zip(&modes)
            .filter(|(_, md)| md.sparse.is_some())
        {
            // Every sparse mode must really be sparse (the union of the KV heads' selections;
            // over 3/4 of the blocks would be the dense fallback) ...
            assert!(
                a.blocks_fraction < 0.75,
                "{}: {:.1}% of blocks selected",
                md.name,
                100.0 * a.blocks_fraction
            );
            // ... and find the key wherever dense attention does.
            if reference.found && !a.found {
                failures.push(format!(
                    "depth {}%: {} answered {:?} (dense {:?})",
                    percent(row.index),
                    md.name,
                    a.text,
                    reference.text
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "sparse attention missed the key where dense found it:\n{}",
        failures.join("\n")
    );
}

/// CI: 4 of the 10 depths (0%, 33%, 66%, 100%) at ~4K tokens (all 10 take ~10 minutes).
#[test]
fn needle_4k_sparse_retrieves_whenever_dense_does() {
    check(4096, &[0, 3, 6, 9]);
}

#[test]
#[ignore = "all 10 depths at ~4K tokens take ~3 minutes on 2 cores (187 s, docs/BENCHMARKS.md session 12); run with --ignored"]
fn needle_4k_all_depths_sparse_retrieves_whenever_dense_does() {
    check(4096, &(0..DEPTHS).collect::<Vec<_>>());
}

#[test]
#[ignore = "~8K-token prompts: ~7 minutes on 2 cores (435 s, session 11) (KVSPOOL_NEEDLE_DEPTHS=1,4 runs only those depth indices); passes with the default mix score (with --sparse-score bound sparse misses the 11% depth), see docs/BENCHMARKS.md; run with --ignored"]
fn needle_8k_all_depths_sparse_retrieves_whenever_dense_does() {
    check(8192, &(0..DEPTHS).collect::<Vec<_>>());
}

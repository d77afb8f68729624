//! kvspool against llama.cpp on SmolLM2-135M-Instruct (Q4_1), from committed fixtures.
//!
//! The fixtures (tests/fixtures/reference/*.json) were written by `tools/compare-llama-cpp.py
//! --write-fixtures` from llama.cpp b11434 with an F32 KV cache, flash attention off and each
//! prompt in one batch: llama.cpp's top-10 logits at every position, and a 64-token greedy
//! continuation. The acceptance bar (issue 2): top-1 agreement >= 99% where llama.cpp's
//! top-1/top-2 margin exceeds 0.5 and >= 95% overall; greedy tokens equal up to the first step
//! whose llama.cpp margin is below 0.1.
//!
//! Size of the differences: llama.cpp quantizes activations to 8 bits per 32-block before every
//! Q4_1/Q8_0 product; kvspool's exact path keeps them in f32. On this model that quantization
//! alone moves logits by ~0.15 mean |delta| (measured here as kvspool exact vs kvspool
//! `Precision::Fast`, which does what llama.cpp does). So the test requires kvspool-vs-llama.cpp
//! to be no larger than that 8-bit noise floor, measured in the same run, with 25% headroom for
//! summation order. (For scale, llama.cpp against itself with flash attention or an F16 KV cache
//! differs by 0.13-0.30.)

mod common;

use kvspool::engine::sampler::argmax;
use kvspool::engine::Session;
use kvspool::model::{self, LogitsFor, Precision};
use serde_json::Value;

struct Fixture {
    name: String,
    prompt: Vec<u32>,
    top: Vec<Vec<(u32, f32)>>,
    greedy: Vec<u32>,
    greedy_top: Vec<Vec<(u32, f32)>>,
}

fn tops(v: &Value) -> Vec<Vec<(u32, f32)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
                .collect()
        })
        .collect()
}

fn fixtures() -> Vec<Fixture> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let out: Vec<Fixture> = names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let ids = |k: &str| -> Vec<u32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            Fixture {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                prompt: ids("prompt_tokens"),
                top: tops(&v["logits_top"]),
                greedy: ids("greedy_tokens"),
                greedy_top: tops(&v["greedy_top"]),
            }
        })
        .collect();
    assert!(
        out.len() >= 5,
        "expected at least 5 reference fixtures in {}",
        dir.display()
    );
    out
}

#[test]
fn teacher_forced_logits_agree_with_llama_cpp() {
    let loaded = common::load_default_model();
    let fast = model::load_with(&common::default_model_path(), Precision::Fast).unwrap();
    let m = &*loaded.model;
    let nv = m.n_vocab();
    let (mut noise_sum, mut noise_n) = (0.0f64, 0usize);
    let (mut n, mut agree, mut n_conf, mut agree_conf) = (0usize, 0usize, 0usize, 0usize);
    let (mut dmax, mut dsum, mut dn) = (0.0f32, 0.0f64, 0usize);
    for fx in fixtures() {
        assert!(
            fx.prompt.len() >= 200,
            "{}: prompt shorter than 200 tokens",
            fx.name
        );
        let mut s = Session::new(m, common::ram_kv(m.kv_geometry(fx.prompt.len())));
        let logits = s
            .prefill(&fx.prompt, fx.prompt.len(), LogitsFor::All, &mut |_, _| {})
            .unwrap();
        let fm = &*fast.model;
        let mut s8 = Session::new(fm, common::ram_kv(fm.kv_geometry(fx.prompt.len())));
        let logits8 = s8
            .prefill(&fx.prompt, fx.prompt.len(), LogitsFor::All, &mut |_, _| {})
            .unwrap();
        let (mut a, mut ac, mut nc) = (0, 0, 0);
        for (p, top) in fx.top.iter().enumerate() {
            let row = &logits[p * nv..(p + 1) * nv];
            let ok = argmax(row) == top[0].0;
            a += ok as usize;
            if top[0].1 - top[1].1 > 0.5 {
                nc += 1;
                ac += ok as usize;
            }
            for &(id, l) in top.iter().take(10) {
                noise_sum += (row[id as usize] - logits8[p * nv + id as usize]).abs() as f64;
                noise_n += 1;
                let d = (row[id as usize] - l).abs();
                dmax = dmax.max(d);
                dsum += d as f64;
                dn += 1;
            }
        }
        eprintln!(
            "{}: {} positions, top-1 {:.4}, top-1 where margin > 0.5 {:.4} ({nc})",
            fx.name,
            fx.top.len(),
            a as f64 / fx.top.len() as f64,
            ac as f64 / nc.max(1) as f64
        );
        n += fx.top.len();
        agree += a;
        n_conf += nc;
        agree_conf += ac;
    }
    let mean = dsum / dn as f64;
    let noise = noise_sum / noise_n as f64;
    eprintln!(
        "all: {n} positions, top-1 {:.4}, confident {:.4} ({n_conf}), |dlogit| over llama.cpp top-10: max {dmax:.4} mean {mean:.4}; 8-bit activation noise floor (exact vs fast) mean {noise:.4}",
        agree as f64 / n as f64,
        agree_conf as f64 / n_conf as f64
    );
    assert!(
        agree as f64 >= 0.95 * n as f64,
        "overall top-1 agreement below 95%"
    );
    assert!(
        agree_conf as f64 >= 0.99 * n_conf as f64,
        "confident top-1 agreement below 99%"
    );
    assert!(
        mean <= 1.25 * noise,
        "mean |delta logit| vs llama.cpp {mean} exceeds 1.25 x the 8-bit activation noise floor {noise}"
    );
}

#[test]
fn greedy_generation_matches_llama_cpp_until_a_near_tie() {
    let loaded = common::load_default_model();
    let m = &*loaded.model;
    for fx in fixtures() {
        let n_gen = fx.greedy.len();
        let mut s = Session::new(m, common::ram_kv(m.kv_geometry(fx.prompt.len() + n_gen)));
        let mut logits = s
            .prefill(&fx.prompt, 128, LogitsFor::Last, &mut |_, _| {})
            .unwrap();
        let first_low = fx
            .greedy_top
            .iter()
            .position(|t| t[0].1 - t[1].1 < 0.1)
            .unwrap_or(n_gen);
        let mut mine = Vec::new();
        for _ in 0..n_gen {
            let t = argmax(&logits);
            mine.push(t);
            logits = s.step(t).unwrap().to_vec();
        }
        let same = mine
            .iter()
            .zip(&fx.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{}: greedy matches {same}/{n_gen} (first llama.cpp margin < 0.1 at step {first_low})",
            fx.name
        );
        assert!(
            same >= first_low.min(n_gen),
            "{}: diverged at step {same} before the first near-tie at {first_low}",
            fx.name
        );
    }
}

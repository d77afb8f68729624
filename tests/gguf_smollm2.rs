//! The real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by `tools/fetch-models.sh`). This test
//! fails, rather than skips, when the file is absent: the model is part of the test setup.

use std::time::Instant;

use kvspool::gguf::{GgmlType, GgufFile, ModelConfig, RopeScaling};

fn model() -> std::path::PathBuf {
    let path = kvspool::paths::default_model();
    assert!(
        path.is_file(),
        "{} is missing: run tools/fetch-models.sh first (it downloads and verifies SmolLM2-135M-Instruct)",
        path.display()
    );
    path
}

#[test]
fn smollm2_opens_and_validates() {
    let path = model();
    let t0 = Instant::now();
    let f = GgufFile::open(&path).expect("open SmolLM2");
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!("opened {} in {open_ms:.1} ms", path.display());
    // Release-ish (tests build with opt-level 2) parsing is a few ms; this bound only catches
    // something pathological on a loaded 2-core machine.
    assert!(open_ms < 1000.0, "open took {open_ms:.1} ms");

    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().expect("arch"), "llama");
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.file_size(), std::fs::metadata(&path).expect("stat").len());

    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .expect("tokens");
    assert_eq!(tokens.len(), 49152);
    assert!(tokens.iter().all(|t| t.as_str().is_some()));
    let merges = f
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .expect("merges");
    assert!(merges.len() > 40_000, "{} merges", merges.len());

    let emb = f.tensor("token_embd.weight").expect("token_embd");
    assert_eq!(emb.dims, [576, 49152]);
    assert_eq!(f.tensor_bytes(emb).len() as u64, emb.n_bytes);
    let q = f.tensor("blk.0.attn_q.weight").expect("attn_q");
    assert_eq!(
        (q.dims.as_slice(), q.ty),
        (&[576u64, 576][..], GgmlType::Q4_1)
    );
    assert_eq!(q.row_bytes(), 18 * 20);
    // The tensor table covers the data section without overlap (checked by the parser) and
    // every tensor type is one kvspool computes with.
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    assert!(total <= f.file_size() - f.data_offset());
    for t in f.tensors() {
        assert!(t.ty.is_supported(), "{} has {}", t.name, t.ty);
        assert_eq!(t.offset % 32, 0);
    }
}

#[test]
fn smollm2_config() {
    let f = GgufFile::open(&model()).expect("open SmolLM2");
    let c = ModelConfig::from_gguf(&f).expect("config");
    let ModelConfig::Llama(l) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (
            l.n_layer,
            l.n_embd,
            l.n_head,
            l.n_head_kv,
            l.n_ff,
            l.n_vocab,
            l.head_dim
        ),
        (30, 576, 9, 3, 1536, 49152, 64)
    );
    assert_eq!(l.rope_dim, 64);
    assert_eq!(l.rope_scaling, RopeScaling::None);
    assert!(l.rms_eps > 0.0 && l.rms_eps < 1e-3);
    assert!(l.context_length >= 2048);
    eprintln!("{l:?}");
}

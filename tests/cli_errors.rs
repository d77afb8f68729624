//! Bad input gives one clear error line on stderr and a non-zero exit, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn kvspool(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvspool"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run kvspool")
}

fn assert_one_line_error(o: &Output, must_contain: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0]
            .to_lowercase()
            .contains(&must_contain.to_lowercase()),
        "expected '{must_contain}' in: {err}"
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn truncated_corrupt_and_foreign_files_fail_cleanly() {
    let model = common::default_model_path();
    let bytes = std::fs::read(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Truncated in the header, in the tensor table, and in the tensor data.
    for (i, cut) in [20usize, 2_000_000, bytes.len() - 1000]
        .into_iter()
        .enumerate()
    {
        let p = write(dir.path(), &format!("trunc{i}.gguf"), &bytes[..cut]);
        for cmd in [
            vec!["inspect", p.as_str()],
            vec!["run", "--model", p.as_str(), "--prompt", "hi"],
        ] {
            assert_one_line_error(&kvspool(&cmd, &[]), "trunc");
        }
    }
    // Not a GGUF at all.
    let p = write(
        dir.path(),
        "notes.txt",
        b"hello, this is not a model file\n",
    );
    assert_one_line_error(&kvspool(&["inspect", &p], &[]), "not a GGUF");
    // Corrupt: a tensor type id that does not exist. Patch the first tensor's type field.
    let mut bad = bytes.clone();
    let f = kvspool::gguf::GgufFile::open(&model).unwrap();
    let t = &f.tensors()[0];
    // The tensor table entry: name (u64 len + bytes), n_dims u32, dims u64 × n, type u32, offset u64.
    let name = t.name.as_bytes();
    let pos = bytes
        .windows(name.len() + 8)
        .position(|w| w[..8] == (name.len() as u64).to_le_bytes() && &w[8..] == name)
        .unwrap();
    let type_pos = pos + 8 + name.len() + 4 + 8 * t.dims.len();
    bad[type_pos..type_pos + 4].copy_from_slice(&77u32.to_le_bytes());
    let p = write(dir.path(), "badtype.gguf", &bad);
    assert_one_line_error(&kvspool(&["inspect", &p], &[]), "77");
    // An empty file.
    let p = write(dir.path(), "empty.gguf", b"");
    assert_one_line_error(
        &kvspool(&["run", "--model", &p, "--prompt", "hi"], &[]),
        "gguf",
    );
}

#[test]
fn unknown_architecture_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    let mut w = kvspool::gguf::GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        kvspool::gguf::Value::String("mamba".into()),
    )
    .unwrap();
    w.write_file(&p, &[]).unwrap();
    let ps = p.to_string_lossy();
    assert_one_line_error(&kvspool(&["inspect", &ps], &[]), "mamba");
    assert_one_line_error(
        &kvspool(&["run", "--model", &ps, "--prompt", "hi"], &[]),
        "mamba",
    );
}

#[test]
fn missing_model_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let o = kvspool(&["run", "--prompt", "hi"], &[("KVSPOOL_MODELS", &d)]);
    assert_one_line_error(&o, "tools/fetch-models.sh");
    let o = kvspool(
        &[
            "run",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
        ],
        &[],
    );
    assert_one_line_error(&o, "does not exist");
}

#[test]
fn bad_flags_fail_without_panicking() {
    let model = common::default_model_path();
    let m = model.to_string_lossy();
    let o = kvspool(
        &["run", "--model", &m, "--prompt", "hi", "--top-p", "0"],
        &[],
    );
    assert_one_line_error(&o, "--top-p");
    let o = kvspool(&["detokenize", "--model", &m, "--ids", "1,x"], &[]);
    assert_one_line_error(&o, "not a token id");
    let o = kvspool(&["detokenize", "--model", &m, "--ids", "99999999"], &[]);
    assert_one_line_error(&o, "out of range");
    let o = kvspool(&["run", "--model", &m, "--bogus-flag"], &[]);
    assert_one_line_error(&o, "unexpected argument '--bogus-flag'");
    assert_eq!(o.status.code(), Some(2));
    let o = kvspool(
        &["run", "--model", &m, "--prompt", "hi", "--temp", "-1"],
        &[],
    );
    assert_one_line_error(&o, "--temp");
    let o = kvspool(&["tokenize", "--model", &m], &[]);
    assert_one_line_error(&o, "--text");
    let o = kvspool(
        &["run", "--model", &m, "--chat", "hi", "-n", "1"],
        &[("SOURCE_DATE_EPOCH", "yesterday")],
    );
    assert_one_line_error(&o, "SOURCE_DATE_EPOCH");
    let o = kvspool(&["plan", "--model", &m, "--ram", "16G"], &[]);
    assert_one_line_error(&o, "ambiguous");
    let o = kvspool(&["plan", "--model", &m, "--ram", "8GiB", "--json"], &[]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["kv_ram_bytes"].as_u64().unwrap() <= v["kv_total_bytes"].as_u64().unwrap());
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let model = common::default_model_path();
    let m = model.to_string_lossy();
    let o = kvspool(
        &["tokenize", "--model", &m, "--text", "Hello  2048 world"],
        &[],
    );
    assert!(o.status.success());
    // llama.cpp b11434's ids for this text (digits split individually by the smollm pre-tokenizer).
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[19556,256,34,32,36,40,905]"
    );
    let o = kvspool(
        &[
            "detokenize",
            "--model",
            &m,
            "--ids",
            "19556,256,34,32,36,40,905",
        ],
        &[],
    );
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
        "Hello  2048 world"
    );
}

#[test]
fn run_json_greedy_is_deterministic_and_well_formed() {
    let model = common::default_model_path();
    let m = model.to_string_lossy();
    let args = [
        "run",
        "--model",
        &m,
        "--chat",
        "What is 2+2?",
        "-n",
        "12",
        "--temp",
        "0",
        "--json",
    ];
    let a = kvspool(&args, &[]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = kvspool(&args, &[]);
    let va: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let vb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(va["tokens"], vb["tokens"]);
    for k in [
        "prompt_tokens",
        "tokens",
        "text",
        "stop_reason",
        "timings",
        "kv",
    ] {
        assert!(!va[k].is_null(), "missing {k}");
    }
    assert!(va["tokens"].as_array().unwrap().len() <= 12);
    // Not a harmony model: no harmony fields.
    assert!(va.get("reasoning").is_none() && va.get("messages").is_none());
    for k in ["prefill_s", "prefill_tok_s", "decode_s", "decode_tok_s"] {
        assert!(va["timings"][k].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn bad_kv_options_fail_cleanly() {
    let model = common::default_model_path();
    let m = model.to_string_lossy().into_owned();
    let base = ["run", "--model", m.as_str(), "--prompt", "hi", "-n", "2"];
    let cases: [(&[&str], &str); 10] = [
        (&["--kv-ram", "abc"], "--kv-ram"),
        (&["--block-tokens", "0"], "--block-tokens"),
        (&["--kv-dtype", "bf16"], "kv-dtype"),
        (&["--kv-backend", "aio"], "kv-backend"),
        (
            &["--attention", "sparse", "--sparse-mass", "1.5"],
            "--sparse-mass",
        ),
        (
            &["--attention", "sparse", "--sparse-budget", "0"],
            "--sparse-budget",
        ),
        (
            &["--attention", "sparse", "--sparse-share=-0.5"],
            "--sparse-share",
        ),
        (
            &["--attention", "sparse", "--sparse-unit", "5"],
            "--sparse-unit",
        ),
        (
            &[
                "--attention",
                "sparse",
                "--block-tokens",
                "256",
                "--sparse-unit",
                "2",
            ],
            "--sparse-unit",
        ),
        // sysfs refuses new files even to root.
        (&["--kv-disk", "/sys/kernel/kvspool-test"], "not writable"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        assert_one_line_error(&kvspool(&args, &[]), want);
    }
    let o = kvspool(
        &[
            "bench",
            "decode",
            "--geometry",
            "gpt-oss-20b",
            "--context",
            "0",
        ],
        &[],
    );
    assert_one_line_error(&o, "--context");
}

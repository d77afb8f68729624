//! Harmony chat prompts on a tiny gpt-oss fixture: the GGUF's chat template rendered by kvspool
//! gives exactly the token ids HF transformers' `apply_chat_template` gives for the same
//! conversation and date (tests/fixtures/gpt_oss/chat.golden.json, written by
//! tools/make_tiny_gpt_oss.py; llama.cpp's tokenizer gives the same ids for that text).

use kvspool::gguf::GgufFile;
use kvspool::tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt_oss")
}

fn golden() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("chat.golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn rendered_conversations_tokenize_to_hf_ids() {
    let g = golden();
    let f = GgufFile::open(&dir().join("tiny-a.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let tpl = tok
        .chat_template()
        .unwrap()
        .with_now(g["source_date_epoch"].as_i64().unwrap());
    for case in g["cases"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let text = tpl.render(&msgs, true).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text, true), ids(&case["ids"]));
    }
}

/// `kvspool run --chat` end to end: the prompt it feeds the model is the golden's ids.
#[test]
fn run_chat_prompt_tokens_equal_hf_ids() {
    let g = golden();
    let case = &g["cases"][0];
    assert_eq!(case["messages"].as_array().unwrap().len(), 1);
    let kv = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvspool"))
        .env(
            "SOURCE_DATE_EPOCH",
            g["source_date_epoch"].as_i64().unwrap().to_string(),
        )
        .args(["run", "--model"])
        .arg(dir().join("tiny-a.gguf"))
        .args(["--chat", case["messages"][0]["content"].as_str().unwrap()])
        .args(["-n", "4", "--json", "--ctx", "512", "--kv-disk"])
        .arg(kv.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v["prompt_tokens"]), ids(&case["ids"]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
}

//! Chat templates rendered by minijinja against jinja2 renderings made with transformers'
//! `apply_chat_template` environment (`tests/fixtures/tokenizer/chat_expected.json`, written by
//! `tools/gen-tokenizer-fixtures.py chat`): SmolLM2's template from its GGUF and gpt-oss's harmony
//! template (`gpt-oss.jinja`, llama.cpp's copy of the HF template).
//!
//! Needs the SmolLM2 model (for its template); fails with a hint if it is missing.

use kvspool::gguf::GgufFile;
use kvspool::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

fn smollm2() -> Tokenizer {
    let p = kvspool::paths::default_model();
    assert!(
        p.exists(),
        "model {} not found: run tools/fetch-models.sh",
        p.display()
    );
    Tokenizer::from_gguf(&GgufFile::open(&p).expect("open GGUF")).expect("tokenizer")
}

fn gpt_oss_source() -> String {
    std::fs::read_to_string(format!("{FIXTURES}/gpt-oss.jinja")).expect("gpt-oss.jinja")
}

#[test]
fn templates_render_like_transformers() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/chat_expected.json")).expect("fixture"),
    )
    .expect("json");
    let now = doc["now_unix"].as_i64().expect("now_unix");
    let smol_src = smollm2()
        .chat_template_source()
        .expect("SmolLM2 has a chat template")
        .to_string();
    let oss_src = gpt_oss_source();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    let mut bad = Vec::new();
    for case in cases {
        let src = match case["template"].as_str() {
            Some("smollm2") => &smol_src,
            Some("gpt-oss") => &oss_src,
            other => panic!("unknown template {other:?}"),
        };
        let sp = |k: &str| case["special_tokens"][k].as_str().unwrap_or("").to_string();
        let t = ChatTemplate::new(src)
            .expect("compiles")
            .with_special_tokens(
                &sp("bos_token"),
                &sp("eos_token"),
                &sp("unk_token"),
                &sp("pad_token"),
            )
            .with_now(now);
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let agp = case["add_generation_prompt"].as_bool().expect("flag");
        let got = t
            .render_with(&messages, agp, &case["extra"])
            .expect("renders");
        let want = case["expected"].as_str().expect("expected");
        if got != want {
            bad.push(format!(
                "{} / {}:\n--- jinja2\n{want}\n--- kvspool\n{got}",
                case["template"], case["name"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} renderings differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn gpt_oss_prompt_matches_the_spec() {
    // gpt-oss-spec.md §7.4: one user message, date 2025-08-05.
    let t = ChatTemplate::new(&gpt_oss_source())
        .unwrap()
        .with_now(1_754_352_000);
    let got = t
        .render(&[ChatMessage::user("What is 2+2?")], true)
        .unwrap();
    assert_eq!(
        got,
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
         Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n\
         # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
         <|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"
    );
}

#[test]
fn template_errors_are_reported() {
    let t = ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok").unwrap();
    assert_eq!(t.render(&[ChatMessage::user("x")], false).unwrap(), "ok");
    match t.render(&[ChatMessage::assistant("x")], false) {
        Err(TokenizerError::Template(m)) => assert!(m.contains("first must be user"), "{m}"),
        other => panic!("expected a template error, got {other:?}"),
    }
    // Indexing an empty conversation is an error, not a panic.
    assert!(t.render(&[], false).is_err());
}

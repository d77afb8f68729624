//! The tokenizer against llama.cpp on SmolLM2-135M-Instruct's real GGUF vocabulary.
//!
//! Fixtures (`tests/fixtures/tokenizer/`, written by `tools/gen-tokenizer-fixtures.py fixtures`):
//! `corpus.json` (the texts), `smollm2_ids.json` (llama-tokenize ids, `smollm` pre-tokenizer) and
//! `gpt4o_ids.json` (llama-tokenize ids for the same vocabulary with `tokenizer.ggml.pre` set to
//! `gpt-4o`, i.e. gpt-oss's pre-tokenizer), each with special parsing on and off.
//!
//! The model is required: without it these tests fail, they do not skip.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use kvspool::gguf::GgufFile;
use kvspool::tokenizer::{ChatMessage, StreamDecoder, Tokenizer, TokenizerData};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

fn model_path() -> PathBuf {
    let p = kvspool::paths::default_model();
    assert!(
        p.exists(),
        "model {} not found: run tools/fetch-models.sh (the tokenizer tests need the real SmolLM2 vocabulary)",
        p.display()
    );
    p
}

fn data() -> &'static TokenizerData {
    static DATA: OnceLock<TokenizerData> = OnceLock::new();
    DATA.get_or_init(|| {
        let g = GgufFile::open(&model_path()).expect("open SmolLM2 GGUF");
        TokenizerData::from_gguf(&g).expect("tokenizer metadata")
    })
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let g = GgufFile::open(&model_path()).expect("open SmolLM2 GGUF");
        Tokenizer::from_gguf(&g).expect("tokenizer from GGUF")
    })
}

fn with_pre(pre: &str) -> Tokenizer {
    let mut d = data().clone();
    d.pre = pre.to_string();
    Tokenizer::new(d).expect("tokenizer")
}

fn json(name: &str) -> serde_json::Value {
    let path = format!("{FIXTURES}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn corpus() -> Vec<String> {
    json("corpus.json")["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

fn ids(doc: &serde_json::Value, key: &str) -> Vec<Vec<u32>> {
    doc[key]
        .as_array()
        .expect("ids")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

/// Compare every corpus text in both modes; report all mismatches at once.
fn check_against(tok: &Tokenizer, fixture: &str) {
    let texts = corpus();
    let doc = json(fixture);
    assert_eq!(
        doc["model"].as_str(),
        Some(kvspool::paths::DEFAULT_MODEL_FILE)
    );
    let mut bad = Vec::new();
    for (key, parse_special) in [("parse_special", true), ("no_parse_special", false)] {
        let expected = ids(&doc, key);
        assert_eq!(
            expected.len(),
            texts.len(),
            "{fixture}: {key} has one row per corpus text"
        );
        for (i, (text, want)) in texts.iter().zip(&expected).enumerate() {
            let got = tok.encode(text, parse_special);
            if &got != want {
                bad.push(format!(
                    "#{i} {key} {text:?}\n    llama.cpp {want:?}\n    kvspool   {got:?}"
                ));
            }
        }
    }
    assert!(texts.len() >= 300, "corpus too small: {}", texts.len());
    assert!(
        bad.is_empty(),
        "{} of {} encodings differ from {fixture}:\n{}",
        bad.len(),
        2 * texts.len(),
        bad.join("\n")
    );
}

#[test]
fn corpus_matches_llama_cpp_smollm_pre_tokenizer() {
    assert_eq!(smollm2().pre_tokenizer(), "smollm");
    check_against(smollm2(), "smollm2_ids.json");
}

#[test]
fn corpus_matches_llama_cpp_gpt4o_pre_tokenizer() {
    check_against(&with_pre("gpt-4o"), "gpt4o_ids.json");
}

#[test]
fn decode_inverts_encode_without_special_parsing() {
    let tok = smollm2();
    for text in corpus() {
        let ids = tok.encode(&text, false);
        assert_eq!(tok.decode(&ids), text.as_bytes(), "round trip of {text:?}");
        // With specials parsed, control tokens are written back as their text.
        let ids = tok.encode(&text, true);
        assert_eq!(
            tok.decode(&ids),
            text.as_bytes(),
            "round trip (special) of {text:?}"
        );
        assert_eq!(
            tok.detokenize(&ids, false, true),
            text.as_bytes(),
            "detokenize of {text:?}"
        );
    }
}

#[test]
fn stream_decoder_reproduces_every_text() {
    let tok = smollm2();
    for text in corpus() {
        let mut d = StreamDecoder::new(true);
        let mut out = String::new();
        for id in tok.encode(&text, true) {
            let piece = d.push(tok, id);
            assert!(
                text.starts_with(&(out.clone() + &piece)),
                "stream of {text:?} went wrong at {out:?} + {piece:?}"
            );
            out.push_str(&piece);
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
    }
}

#[test]
fn smollm2_vocabulary_facts() {
    let tok = smollm2();
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.eot_id(), Some(0)); // llama.cpp log: "EOT token = 0 '<|endoftext|>'"
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.unk_id(), Some(0));
    assert!(!tok.add_bos(), "SmolLM2 sets add_bos_token = false");
    // llama.cpp log: "EOG token = 0 '<|endoftext|>'", "= 2 '<|im_end|>'", "= 4 '<reponame>'".
    assert_eq!(tok.eog_ids(), &[0, 2, 4]);
    assert!(tok.is_eog(2) && !tok.is_eog(1));
    assert_eq!(tok.special_ids().len(), 17); // "special tokens cache size = 17"
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_bytes(198), b"\n"); // "LF token = 198 'Ċ'"
    assert_eq!(tok.token_piece(2, false), b"");
    assert_eq!(tok.token_piece(2, true), b"<|im_end|>");
    // Digits are isolated: "  2048" → "  " + four digit tokens.
    let ids = tok.encode("  2048", false);
    assert_eq!(ids.len(), 5);
    assert_eq!(tok.decode(&ids[1..]), b"2048");
}

const SYSTEM_DEFAULT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_chat_template_renders_like_hf() {
    let t = smollm2().chat_template().expect("template");
    let one = [ChatMessage::user("What is 2+2?")];
    assert_eq!(
        t.render(&one, true).unwrap(),
        format!(
            "{SYSTEM_DEFAULT}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    assert_eq!(
        t.render(&one, false).unwrap(),
        format!("{SYSTEM_DEFAULT}<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    );
    let convo = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi!"),
        ChatMessage::assistant("Hello. How can I help?"),
        ChatMessage::user("Name a colour.\nJust one."),
    ];
    assert_eq!(
        t.render(&convo, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello. How can I help?<|im_end|>\n\
         <|im_start|>user\nName a colour.\nJust one.<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered prompt tokenizes with its control tokens (no BOS: add_bos is false).
    let ids = smollm2().encode(&t.render(&one, true).unwrap(), true);
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    let mut tail = vec![1];
    tail.extend(smollm2().encode("assistant\n", false));
    assert_eq!(&ids[ids.len() - tail.len()..], &tail[..]);
}

#[test]
fn encodes_a_megabyte_quickly() {
    let tok = smollm2();
    let mut text = String::new();
    let texts = corpus();
    while text.len() < 1 << 20 {
        for t in &texts {
            text.push_str(t);
            text.push(' ');
        }
    }
    let t0 = Instant::now();
    let ids = tok.encode(&text, false);
    let dt = t0.elapsed();
    eprintln!(
        "encoded {} bytes into {} tokens in {:?} ({:.1} MB/s)",
        text.len(),
        ids.len(),
        dt,
        text.len() as f64 / dt.as_secs_f64() / 1e6
    );
    assert_eq!(tok.decode(&ids), text.as_bytes());
    // Generous bound for unoptimized/slow CI machines; release builds are far below it.
    assert!(dt.as_secs_f64() < 10.0, "encoding 1 MB took {dt:?}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn gpt4o() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| with_pre("gpt-4o"))
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ \\t\\n\\r'a-zA-Z0-9.,!?/<>|_\\p{L}\\p{N}\\p{M}\\p{P}\\p{S}\\p{Z}\\u{1F600}-\\u{1F64F}\\u{200D}]{0,64}",
            proptest::collection::vec(
                prop_oneof![Just("<|im_start|>"), Just("<|im_end|>"), Just("<|endoftext|>"), Just(" "), Just("\n"), Just("x"), Just("1")],
                0..16
            )
            .prop_map(|v| v.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Any string: no panic, and decode(encode(s)) == s, for the real vocabulary with both
        /// pre-tokenizers; without special parsing no control token appears.
        #[test]
        fn real_vocab_round_trips(s in text()) {
            for tok in [smollm2(), gpt4o()] {
                let ids = tok.encode(&s, false);
                prop_assert!(ids.iter().all(|&i| !tok.is_control(i)));
                prop_assert_eq!(tok.decode(&ids), s.as_bytes());
                let ids = tok.encode(&s, true);
                prop_assert_eq!(tok.decode(&ids), s.as_bytes());
            }
        }
    }
}

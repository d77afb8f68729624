//! Unit tests on small hand-made vocabularies.

use super::*;
use proptest::prelude::*;

/// A complete byte-level vocabulary: ids 0..256 are the bytes (byte order), then the merge
/// results in merge order, then `specials` with their token types.
fn tiny(pre: &str, merges: &[(&str, &str)], specials: &[(&str, i32)]) -> TokenizerData {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
    let mut merge_lines = Vec::new();
    for (l, r) in merges {
        let (l, r) = (
            bytes_to_byte_level(l.as_bytes()),
            bytes_to_byte_level(r.as_bytes()),
        );
        merge_lines.push(format!("{l} {r}"));
        let joined = format!("{l}{r}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
    }
    let mut types = vec![token_type::NORMAL; tokens.len()];
    for (s, ty) in specials {
        tokens.push(s.to_string());
        types.push(*ty);
    }
    TokenizerData {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens,
        token_types: types,
        merges: merge_lines,
        ..TokenizerData::default()
    }
}

const MERGES: &[(&str, &str)] = &[
    (" ", "t"),
    ("h", "e"),
    (" t", "he"),
    ("i", "n"),
    (" ", "w"),
    ("o", "r"),
    (" w", "or"),
    ("l", "d"),
    (" wor", "ld"),
    ("1", "2"),
    ("12", "3"),
];

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(&bytes_to_byte_level(s.as_bytes()))
        .or_else(|| t.token_id(s))
        .unwrap_or_else(|| panic!("no token {s:?}"))
}

#[test]
fn bpe_on_a_tiny_vocab() {
    let t = Tokenizer::new(tiny("gpt-2", MERGES, &[])).unwrap();
    let ids = t.encode("the world in", false);
    let expect: Vec<u32> = vec![
        id(&t, "t"),
        id(&t, "he"),
        id(&t, " world"),
        id(&t, " "),
        id(&t, "in"),
    ];
    assert_eq!(ids, expect);
    assert_eq!(t.decode(&ids), b"the world in");
    // gpt2 keeps digit runs together; smollm isolates digits so "12" never merges.
    assert_eq!(t.encode("123", false), vec![id(&t, "123")]);
    let s = Tokenizer::new(tiny("smollm", MERGES, &[])).unwrap();
    assert_eq!(
        s.encode("123", false),
        vec![b'1' as u32, b'2' as u32, b'3' as u32]
    );
    assert!(t.encode("", true).is_empty());
}

#[test]
fn special_tokens_split_only_when_asked() {
    let specials = [
        ("<|im_start|>", token_type::CONTROL),
        ("<|im_end|>", token_type::CONTROL),
        ("<|endoftext|>", token_type::CONTROL),
    ];
    let t = Tokenizer::new(tiny("smollm", MERGES, &specials)).unwrap();
    let start = t.token_id("<|im_start|>").unwrap();
    let end = t.token_id("<|im_end|>").unwrap();
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", true);
    assert_eq!(ids[0], start);
    assert_eq!(*ids.last().unwrap(), end);
    assert_eq!(t.decode(&ids), b"<|im_start|>user\nhi<|im_end|>");
    let plain = t.encode("<|im_start|>", false);
    assert!(!plain.contains(&start) && plain.len() > 1);
    assert_eq!(t.decode(&plain), b"<|im_start|>");
    // Control tokens render only with special = true.
    assert_eq!(t.token_piece(start, false), b"");
    assert_eq!(t.token_piece(start, true), b"<|im_start|>");
    assert_eq!(t.token_bytes(start), b"<|im_start|>");
    // EOG by text, plus eos, which falls back to llama.cpp's gpt2 default id 11 (byte 0x0B here);
    // no BOS because add_bos is unset.
    assert_eq!(
        t.eog_ids(),
        &[11, end, t.token_id("<|endoftext|>").unwrap()]
    );
    assert!(t.is_eog(end) && !t.is_eog(start));
    assert!(!t.add_bos());
    assert_eq!(t.bos_id(), Some(11));
    assert_eq!(t.eot_id(), Some(end)); // first EOT-looking text by id
}

#[test]
fn longer_special_tokens_are_cut_first() {
    // "<a><ab>" contains "<ab>" once; "<a>" is shorter and only sees what is left.
    let specials = [
        ("<a>", token_type::CONTROL),
        ("a><ab", token_type::CONTROL),
        ("<ab>", token_type::CONTROL),
    ];
    let t = Tokenizer::new(tiny("gpt-2", &[], &specials)).unwrap();
    let (a, long) = (t.token_id("<a>").unwrap(), t.token_id("a><ab").unwrap());
    // The longest text wins even though "<a>" starts earlier.
    assert_eq!(
        t.encode("<a><ab>", true),
        vec![b'<' as u32, long, b'>' as u32]
    );
    assert_eq!(t.encode("x<a>y", true), vec![b'x' as u32, a, b'y' as u32]);
    assert_eq!(t.special_ids()[0], long);
}

#[test]
fn user_defined_tokens_split_even_without_parse_special() {
    let specials = [
        ("<tool>", token_type::USER_DEFINED),
        ("<ctl>", token_type::CONTROL),
    ];
    let t = Tokenizer::new(tiny("gpt-2", &[], &specials)).unwrap();
    let (tool, ctl) = (t.token_id("<tool>").unwrap(), t.token_id("<ctl>").unwrap());
    assert_eq!(
        t.encode("a<tool>b", false),
        vec![b'a' as u32, tool, b'b' as u32]
    );
    assert!(!t.encode("a<ctl>b", false).contains(&ctl));
    assert_eq!(t.token_piece(tool, false), b"<tool>");
}

#[test]
fn harmony_eog_rules() {
    let specials = [
        ("<|startoftext|>", token_type::CONTROL),
        ("<|endoftext|>", token_type::CONTROL),
        ("<|return|>", token_type::CONTROL),
        ("<|start|>", token_type::CONTROL),
        ("<|end|>", token_type::CONTROL),
        ("<|message|>", token_type::CONTROL),
        ("<|channel|>", token_type::CONTROL),
        ("<|call|>", token_type::CONTROL),
        ("<unused0>", token_type::CONTROL),
    ];
    let mut data = tiny("gpt-4o", MERGES, &specials);
    let eot_text_id = data
        .tokens
        .iter()
        .position(|s| s == "<|endoftext|>")
        .unwrap() as u32;
    data.special.bos = Some(eot_text_id - 1);
    data.special.eos = Some(data.tokens.iter().position(|s| s == "<|return|>").unwrap() as u32);
    data.add_bos = Some(false);
    let t = Tokenizer::new(data).unwrap();
    let g = |s: &str| t.token_id(s).unwrap();
    let eog: Vec<u32> = t.eog_ids().to_vec();
    assert_eq!(
        eog,
        vec![g("<|endoftext|>"), g("<|return|>"), g("<|call|>")]
    );
    assert!(!t.is_eog(g("<|end|>")));
    assert_eq!(t.token_attr(g("<|end|>")), TokenAttr::USER_DEFINED);
    assert_eq!(t.token_attr(g("<|channel|>")), TokenAttr::USER_DEFINED);
    assert!(t.is_control(g("<|return|>")));
    // No BOS is added for gpt-oss.
    let ids = t.encode("<|start|>user<|message|>hi<|end|>", false);
    assert_eq!(ids[0], g("<|start|>"));
    assert!(ids.contains(&g("<|message|>")) && ids.contains(&g("<|end|>")));
    // USER_DEFINED tokens render even with special = false; CONTROL ones do not.
    assert_eq!(t.token_piece(g("<|channel|>"), false), b"<|channel|>");
    assert_eq!(t.token_piece(g("<|return|>"), false), b"");
    // "unused"-named control tokens are flagged but still split out.
    assert!(t.token_attr(g("<unused0>")).has(TokenAttr::UNUSED));
    assert!(t.special_ids().contains(&g("<unused0>")));
}

#[test]
fn bos_and_eos_follow_the_vocabulary() {
    let specials = [("<s>", token_type::CONTROL), ("</s>", token_type::CONTROL)];
    let mut data = tiny("llama-bpe", MERGES, &specials);
    let n = data.tokens.len() as u32;
    data.special.bos = Some(n - 2);
    data.special.eos = Some(n - 1);
    let t = Tokenizer::new(data.clone()).unwrap();
    assert!(t.add_bos()); // llama3 pre-tokenizers default to add_bos
    assert_eq!(t.encode("hi", false), vec![n - 2, b'h' as u32, b'i' as u32]);
    assert_eq!(
        t.encode_with("hi", false, false),
        vec![b'h' as u32, b'i' as u32]
    );
    data.add_bos = Some(false);
    data.add_eos = Some(true);
    let t = Tokenizer::new(data.clone()).unwrap();
    assert_eq!(t.encode("hi", false), vec![b'h' as u32, b'i' as u32, n - 1]);
    assert_eq!(t.detokenize(&t.encode("hi", false), true, true), b"hi");
    assert_eq!(t.detokenize(&t.encode("hi", false), false, true), b"hi</s>");
    assert_eq!(t.detokenize(&t.encode("hi", false), false, false), b"hi");
    // Out-of-range metadata ids fall back to the default (11), which is in range here.
    data.special.bos = Some(1_000_000);
    assert_eq!(Tokenizer::new(data).unwrap().bos_id(), Some(11));
}

#[test]
fn ignore_merges_emits_whole_word_tokens() {
    // llama3 family: a word that is a token is emitted as is, whatever the merges say.
    let mut data = tiny("llama-bpe", &[("a", "b"), ("ab", "c")], &[]);
    data.tokens.push(bytes_to_byte_level(b"abcd"));
    data.token_types.push(token_type::NORMAL);
    data.add_bos = Some(false);
    let t = Tokenizer::new(data).unwrap();
    assert_eq!(t.encode("abcd", false), vec![t.token_id("abcd").unwrap()]);
    assert_eq!(t.encode("abc", false), vec![t.token_id("abc").unwrap()]);
}

#[test]
fn detokenize_clean_spaces_like_llama_cpp() {
    assert_eq!(clean_spaces(b"a , b . c ? d !".to_vec()), b"a, b. c? d!");
    assert_eq!(clean_spaces(b"a ' b".to_vec()), b"a'b");
    assert_eq!(clean_spaces(b"a ' ' b".to_vec()), b"a'' b");
    assert_eq!(
        clean_spaces(b"it 's we 're I 'm they 've x 'll y 't z 'd".to_vec()),
        b"it's we're I'm they've x 'll y 't z 'd"
    );
    assert_eq!(clean_spaces(Vec::new()), b"");
    // Only pre-tokenizers that ask for it clean spaces.
    let gpt2 = Tokenizer::new(tiny("gpt-2", MERGES, &[])).unwrap();
    let smol = Tokenizer::new(tiny("smollm", MERGES, &[])).unwrap();
    let text = "x , y";
    assert_eq!(
        gpt2.detokenize(&gpt2.encode(text, false), false, true),
        b"x, y"
    );
    assert_eq!(
        smol.detokenize(&smol.encode(text, false), false, true),
        b"x , y"
    );
}

#[test]
fn pieces_of_odd_tokens() {
    assert_eq!(piece_of("Ġhi", TokenAttr::NORMAL), b" hi");
    assert_eq!(
        piece_of("a€", TokenAttr::NORMAL),
        b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]"
    );
    assert_eq!(piece_of("<0x41>", TokenAttr::BYTE), b"A");
    assert_eq!(piece_of("<x>", TokenAttr::UNUSED), b"");
    assert_eq!(
        piece_of("<x>", TokenAttr::NORMAL | TokenAttr::CONTROL),
        b"<x>"
    );
}

#[test]
fn bad_data_is_an_error() {
    let mut d = tiny("smollm", &[], &[]);
    d.model = "llama".into();
    match Tokenizer::new(d) {
        Err(TokenizerError::UnsupportedModel(m)) => assert_eq!(m, "llama"),
        other => panic!("{other:?}"),
    }
    let d = tiny("qwen2", &[], &[]);
    assert!(
        matches!(Tokenizer::new(d), Err(TokenizerError::UnsupportedPreTokenizer(p)) if p == "qwen2")
    );
    let mut d = tiny("smollm", &[], &[]);
    d.token_types.truncate(3);
    assert!(matches!(
        Tokenizer::new(d),
        Err(TokenizerError::TokenTypeCount { .. })
    ));
    let d = TokenizerData {
        model: "gpt2".into(),
        ..TokenizerData::default()
    };
    assert!(matches!(Tokenizer::new(d), Err(TokenizerError::EmptyVocab)));
}

#[test]
fn out_of_range_ids_decode_to_nothing() {
    let t = Tokenizer::new(tiny("smollm", MERGES, &[])).unwrap();
    assert_eq!(
        t.decode(&[b'a' as u32, u32::MAX, 1_000_000, b'b' as u32]),
        b"ab"
    );
    assert_eq!(t.token_text(u32::MAX), None);
    let mut sd = StreamDecoder::new(true);
    assert_eq!(sd.push(&t, u32::MAX), "");
}

#[test]
fn stream_decoder_over_tokens() {
    let t = Tokenizer::new(tiny(
        "smollm",
        MERGES,
        &[("<|im_end|>", token_type::CONTROL)],
    ))
    .unwrap();
    let text = "héllo 😊 中文";
    let ids = t.encode(text, false);
    assert!(ids.len() > text.chars().count()); // byte tokens: multi-byte chars are split
    let mut sd = StreamDecoder::new(false);
    let mut got = String::new();
    for &i in &ids {
        let piece = sd.push(&t, i);
        assert!(text.starts_with(&format!("{got}{piece}")));
        got.push_str(&piece);
    }
    got.push_str(&sd.finish());
    assert_eq!(got, text);
    let end = t.token_id("<|im_end|>").unwrap();
    assert_eq!(StreamDecoder::new(false).push(&t, end), "");
    assert_eq!(StreamDecoder::new(true).push(&t, end), "<|im_end|>");
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just(" ".to_string()),
                Just("\n".to_string()),
                Just("\t".to_string()),
                Just("'s".to_string()),
                Just("'LL".to_string()),
                Just("<|im_end|>".to_string()),
                Just("é".to_string()),
                Just("\u{301}".to_string()),
                Just("😊".to_string()),
                Just("\u{3000}".to_string()),
                "[a-zA-Z0-9]{1,6}",
                "[\\p{L}\\p{N}\\p{P}\\p{S}\\p{M}\\p{Z}]{1,4}",
            ],
            0..24
        )
        .prop_map(|v| v.concat()),
    ]
}

fn tiny_tokenizers() -> &'static [Tokenizer] {
    static TOKS: std::sync::OnceLock<Vec<Tokenizer>> = std::sync::OnceLock::new();
    TOKS.get_or_init(|| {
        ["smollm", "gpt-4o", "gpt-2", "default", "llama-bpe"]
            .iter()
            .map(|pre| {
                let mut data = tiny(pre, MERGES, &[("<|im_end|>", token_type::CONTROL)]);
                data.add_bos = Some(false);
                Tokenizer::new(data).unwrap()
            })
            .collect()
    })
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn encode_never_panics_and_round_trips(text in any_text()) {
        for t in tiny_tokenizers() {
            let pre = t.pre_tokenizer();
            let ids = t.encode(&text, false);
            prop_assert_eq!(t.decode(&ids), text.as_bytes().to_vec(), "pre {}", pre);
            let ids = t.encode(&text, true);
            prop_assert_eq!(t.decode(&ids), text.as_bytes().to_vec(), "pre {} (special)", pre);
        }
    }
}

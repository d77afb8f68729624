//! Our tokenizer on the o200k_harmony vocabulary (gpt-oss) against tiktoken (`tiktoken-rs`'s
//! `o200k_base`, the tokenizer gpt-oss was trained with), without a GGUF file.
//!
//! The vocabulary is built the way the GGUF conversion builds it (gpt-oss-spec.md §7.1):
//! - ids 0…199997 = the o200k_base mergeable ranks (id = rank), each token's bytes written with
//!   the GPT-2 byte-level alphabet;
//! - merges derived from the ranks as HF's `TikTokenConverter` does: for every token of two or
//!   more bytes, every split into two parts that are both tokens is a merge, ordered by the
//!   merged token's rank, then by the parts' ranks. This gives exactly the 446,189 merges the
//!   ggml-org GGUF holds (asserted);
//! - the 21 harmony special tokens at 199998…200018 as CONTROL; `pre = "gpt-4o"`.
//!
//! Then `encode` (no special parsing) is compared with tiktoken's `encode_ordinary` on every text
//! file of the repository, the tokenizer fixture corpus and generated multilingual strings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvspool::tokenizer::{
    bytes_to_byte_level, token_type, ChatMessage, SpecialIds, Tokenizer, TokenizerData,
};
use rand::{Rng, SeedableRng};
use tiktoken_rs::CoreBPE;

const N_RANKS: u32 = 199_998;
const N_GENERATED: usize = 20_000;
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The harmony special tokens at 199998…200018 (gpt-oss-spec.md §7.2).
fn special_text(id: u32) -> String {
    match id {
        199_998 => "<|startoftext|>".into(),
        199_999 => "<|endoftext|>".into(),
        200_002 => "<|return|>".into(),
        200_003 => "<|constrain|>".into(),
        200_005 => "<|channel|>".into(),
        200_006 => "<|start|>".into(),
        200_007 => "<|end|>".into(),
        200_008 => "<|message|>".into(),
        200_012 => "<|call|>".into(),
        200_018 => "<|endofprompt|>".into(),
        _ => format!("<|reserved_{id}|>"),
    }
}

struct O200k {
    tiktoken: CoreBPE,
    /// tiktoken with the same 21 special tokens (`tiktoken-rs`'s `o200k_harmony` names 200018
    /// `<|reserved_200018|>`; the GGUF/HF vocabulary has `<|endofprompt|>` there).
    harmony: CoreBPE,
    /// Built as `Tokenizer::from_gguf` builds a gpt-oss GGUF's tokenizer (tiktoken semantics).
    ours: Tokenizer,
    /// The same vocabulary with llama.cpp's `gpt-4o` semantics (`TokenizerData::tiktoken = false`).
    llama: Tokenizer,
    n_merges: usize,
    merges: Vec<String>,
    /// Tokens (ids) that tiktoken's BPE, run on the token's own bytes without the whole-piece
    /// shortcut, does not merge back into that token.
    not_self_merging: Vec<u32>,
}

fn o200k() -> &'static O200k {
    static O: OnceLock<O200k> = OnceLock::new();
    O.get_or_init(|| {
        let tiktoken = tiktoken_rs::o200k_base().expect("tiktoken o200k_base");
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(N_RANKS as usize);
        let mut rank: HashMap<Vec<u8>, u32> = HashMap::with_capacity(N_RANKS as usize);
        for r in 0..N_RANKS {
            let b = tiktoken.decode_bytes(&[r]).expect("rank in vocabulary");
            rank.insert(b.clone(), r);
            bytes.push(b);
        }
        assert_eq!(rank.len(), N_RANKS as usize, "token bytes are unique");
        // HF TikTokenConverter.extract_vocab_merges_from_model.
        let mut merges = Vec::new();
        let mut local: Vec<(u32, u32)> = Vec::new();
        for b in &bytes {
            local.clear();
            for i in 1..b.len() {
                if let (Some(&l), Some(&r)) = (rank.get(&b[..i]), rank.get(&b[i..])) {
                    local.push((l, r));
                }
            }
            local.sort_unstable();
            for &(l, r) in &local {
                merges.push(format!(
                    "{} {}",
                    bytes_to_byte_level(&bytes[l as usize]),
                    bytes_to_byte_level(&bytes[r as usize])
                ));
            }
        }
        let n_merges = merges.len();
        let ranks: rustc_hash::FxHashMap<Vec<u8>, u32> =
            rank.iter().map(|(b, &r)| (b.clone(), r)).collect();
        let not_self_merging: Vec<u32> = (0..N_RANKS)
            .filter(|&r| {
                let b = &bytes[r as usize];
                b.len() > 1 && tiktoken_rs::byte_pair_split(b, &ranks) != [b.as_slice()]
            })
            .collect();
        let mut tokens: Vec<String> = bytes.iter().map(|b| bytes_to_byte_level(b)).collect();
        let mut token_types = vec![token_type::NORMAL; N_RANKS as usize];
        for id in N_RANKS..=200_018 {
            tokens.push(special_text(id));
            token_types.push(token_type::CONTROL);
        }
        // Special ids as in the ggml-org GGUF (gpt-oss-spec.md §2).
        let special = SpecialIds {
            bos: Some(199_998),
            eos: Some(200_002),
            pad: Some(199_999),
            ..SpecialIds::default()
        };
        let mut data = TokenizerData {
            model: "gpt2".into(),
            pre: "gpt-4o".into(),
            tokens,
            token_types,
            merges: merges.clone(),
            special,
            add_bos: Some(false),
            chat_template: Some(
                std::fs::read_to_string(format!("{ROOT}/tests/fixtures/tokenizer/gpt-oss.jinja"))
                    .expect("gpt-oss.jinja"),
            ),
            tiktoken: true,
            ..TokenizerData::default()
        };
        let ours = Tokenizer::new(data.clone()).expect("o200k tokenizer");
        data.tiktoken = false;
        let llama = Tokenizer::new(data).expect("o200k tokenizer, llama.cpp semantics");
        O200k {
            tiktoken,
            harmony: CoreBPE::new(
                rank.into_iter().collect(),
                (N_RANKS..=200_018)
                    .map(|id| (special_text(id), id))
                    .collect(),
                tiktoken_rs::O200K_BASE_PAT_STR,
            )
            .expect("tiktoken o200k_harmony"),
            ours,
            llama,
            n_merges,
            merges,
            not_self_merging,
        }
    })
}

fn collect_files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, exts, out);
        } else if exts.is_empty()
            || p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        {
            out.push(p);
        }
    }
}

/// Text files of the repository: sources, tests, docs, prompts, the tokenizer fixture corpus.
fn repo_texts() -> Vec<String> {
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    collect_files(&root.join("src"), &["rs"], &mut files);
    collect_files(&root.join("tests"), &["rs"], &mut files);
    collect_files(&root.join("benches"), &["rs"], &mut files);
    collect_files(&root.join("tools"), &[], &mut files);
    collect_files(&root.join("docs"), &[], &mut files);
    collect_files(&root.join("tests/fixtures/prompts"), &[], &mut files);
    for f in ["README.md", "Cargo.toml"] {
        files.push(root.join(f));
    }
    let mut texts: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let corpus = std::fs::read_to_string(root.join("tests/fixtures/tokenizer/corpus.json"))
        .expect("tokenizer corpus");
    let v: serde_json::Value = serde_json::from_str(&corpus).expect("corpus json");
    for t in v["texts"].as_array().expect("texts") {
        texts.push(t.as_str().expect("text").to_string());
    }
    texts
}

/// Deterministic strings from pools of scripts, marks, emoji, digits, whitespace and contractions.
fn generated_texts(n: usize) -> Vec<String> {
    const POOLS: &[&[&str]] = &[
        // ASCII words, mixed case, contractions.
        &[
            "Hello",
            "world",
            "HTTPServer",
            "isOK",
            "camelCase",
            "I",
            "a",
            "THE",
            "x",
            "don",
            "'s",
            "'S",
            "'t",
            "'T",
            "'re",
            "'RE",
            "'ve",
            "'Ve",
            "'m",
            "'M",
            "'ll",
            "'LL",
            "'d",
            "'D",
            "'x",
            "''",
            "'",
        ],
        // Digits.
        &[
            "0", "1", "12", "123", "1234", "12345678", "٣", "४२", "①", "Ⅻ", "３４",
        ],
        // Whitespace runs and line breaks.
        &[
            " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\u{a0}", "\u{3000}",
            "\u{2028}", "\u{200b}", "\t\t\n", " \r\n ",
        ],
        // Punctuation and symbols.
        &[
            ".", ",", "!", "?", "...", "—", "–", "/", "//", "\\", "(", ")", "{", "}", "<|", "|>",
            "#", "$", "€", "%", "&&", "=>", "`", "~", "«", "»", "¿", "„", "“", "”",
        ],
        // Latin with diacritics, precomposed and combining (NFD).
        &[
            "Café",
            "déjà",
            "naïve",
            "ÉCOLE",
            "École",
            "Straße",
            "ÆØÅ",
            "e\u{301}",
            "E\u{301}",
            "a\u{308}bc",
            "n\u{303}",
            "o\u{302}\u{323}",
            "\u{301}",
            "x\u{20d7}",
        ],
        // Greek, Cyrillic (mixed case).
        &[
            "Ελληνικά",
            "ΑΒΓ",
            "αβγ",
            "Привет",
            "МИР",
            "мир",
            "приветМир",
            "ПРИВЕТмир",
            "ǅungla",
            "ǈ",
        ],
        // CJK, Japanese, Korean.
        &[
            "中文",
            "漢字テスト",
            "日本語",
            "ひらがな",
            "カタカナ",
            "한국어",
            "ㄱ",
            "가각",
            "々",
            "ー",
        ],
        // Arabic, Hebrew (with marks), Devanagari, Thai, Tamil.
        &[
            "العربية",
            "مَرْحَبًا",
            "שָׁלוֹם",
            "עברית",
            "नमस्ते",
            "हिन्दी",
            "ภาษาไทย",
            "தமிழ்",
            "ಕನ್ನಡ",
        ],
        // Emoji, ZWJ sequences, flags, skin tones, variation selectors.
        &[
            "😊",
            "👍🏽",
            "👨‍👩‍👧",
            "🇫🇷",
            "❤️",
            "☃",
            "🤖",
            "✓",
            "🦀",
            "\u{fe0f}",
        ],
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x0200_0000);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let parts = rng.gen_range(1..=12);
        let mut s = String::new();
        for _ in 0..parts {
            let pool = POOLS[rng.gen_range(0..POOLS.len())];
            s.push_str(pool[rng.gen_range(0..pool.len())]);
            if rng.gen_bool(0.3) {
                s.push(' ');
            }
        }
        out.push(s);
    }
    out
}

/// The harmony tokens llama.cpp (and so `encode(_, false)`) splits out even without special
/// parsing (USER_DEFINED after load, gpt-oss-spec.md §7.2); everything else is ordinary text.
const ALWAYS_SPLIT: [(&str, u32); 5] = [
    ("<|constrain|>", 200_003),
    ("<|channel|>", 200_005),
    ("<|start|>", 200_006),
    ("<|end|>", 200_007),
    ("<|message|>", 200_008),
];

/// tiktoken's `encode_ordinary` on the text between [`ALWAYS_SPLIT`] tokens.
fn tiktoken_ordinary(bpe: &CoreBPE, text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let next = ALWAYS_SPLIT
            .iter()
            .filter_map(|&(s, id)| rest.find(s).map(|p| (p, s.len(), id)))
            .min();
        match next {
            Some((p, n, id)) => {
                out.extend(bpe.encode_ordinary(&rest[..p]));
                out.push(id);
                rest = &rest[p + n..];
            }
            None => {
                out.extend(bpe.encode_ordinary(rest));
                return out;
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    strings: usize,
    tokens: usize,
    /// Texts where `encode(_, false)` differs from tiktoken's `encode_ordinary`.
    mismatches: Vec<String>,
    /// Texts where `encode(_, true)` differs from tiktoken `o200k_harmony` with every special allowed.
    special_mismatches: Vec<String>,
    /// Texts where llama.cpp's semantics differ from tiktoken's (informational).
    llama_mismatches: Vec<String>,
}

fn compare(texts: &[String], tally: &mut Tally) {
    let o = o200k();
    for t in texts {
        let want = tiktoken_ordinary(&o.tiktoken, t);
        tally.strings += 1;
        tally.tokens += want.len();
        if o.ours.encode(t, false) != want {
            tally.mismatches.push(t.clone());
        }
        if o.llama.encode(t, false) != want {
            tally.llama_mismatches.push(t.clone());
        }
        if o.ours.encode(t, true) != o.harmony.encode_with_special_tokens(t) {
            tally.special_mismatches.push(t.clone());
        }
    }
}

fn show(o: &O200k, tok: &Tokenizer, text: &str) -> String {
    let want = tiktoken_ordinary(&o.tiktoken, text);
    let got = tok.encode(text, false);
    let piece = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .map(|&i| format!("{i}:{:?}", String::from_utf8_lossy(o.ours.token_bytes(i))))
            .collect()
    };
    // First differing token and a window around it.
    let k = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
    let a = k.saturating_sub(2);
    format!(
        "  text {:?}\n    tiktoken {:?}\n    kvspool  {:?}",
        text.chars().take(200).collect::<String>(),
        piece(&want[a..want.len().min(k + 4)]),
        piece(&got[a..got.len().min(k + 4)])
    )
}

#[test]
fn vocabulary_matches_the_gguf_conversion() {
    let o = o200k();
    assert_eq!(o.n_merges, 446_189, "HF TikTokenConverter merge count");
    assert_eq!(o.ours.n_vocab(), 200_019);
    assert_eq!(o.ours.token_text(0), Some("!"));
    assert_eq!(o.ours.token_text(198), Some("Ċ"));
    assert_eq!(o.ours.token_text(220), Some("Ġ"));
    assert_eq!(o.ours.token_bytes(199_997), b" cocos");
    assert_eq!(o.ours.pre_tokenizer(), "gpt-4o");
    // Stop tokens: <|endoftext|>, <|return|>, <|call|> — not <|end|> (§7.4).
    assert_eq!(o.ours.eog_ids(), &[199_999, 200_002, 200_012]);
    assert!(!o.ours.is_eog(200_007));
    assert!(!o.ours.add_bos());
}

/// llama.cpp has no whole-piece shortcut for `gpt-4o` (gpt-oss-spec.md §7.3); for o200k it does
/// not matter: every token's bytes merge back into that token.
#[test]
fn whole_piece_shortcut_is_a_no_op_for_o200k() {
    let o = o200k();
    assert_eq!(o.not_self_merging, Vec::<u32>::new());
}

#[test]
fn spec_checked_encodings() {
    let o = o200k();
    // gpt-oss-spec.md §7.3.
    let text = "Hello world! Café déjà vu — 123 4567 😊\n\n  x";
    let want = [
        13225, 2375, 0, 58639, 21229, 12005, 2733, 220, 7633, 220, 19354, 22, 156273, 279, 220,
        1215,
    ];
    assert_eq!(o.ours.encode(text, false), want);
    assert_eq!(o.ours.encode(text, true), want);
    assert_eq!(o.tiktoken.encode_ordinary(text), want);
    // §7.4: the minimal generation prompt.
    let prompt = "<|start|>user<|message|>Hello<|end|><|start|>assistant";
    let want = [200006, 1428, 200008, 13225, 200007, 200006, 173781];
    assert_eq!(o.ours.encode(prompt, true), want);
    assert_eq!(o.harmony.encode_with_special_tokens(prompt), want);
    assert_eq!(o.ours.decode(&want), prompt.as_bytes());
    // Channel names of the expected output (§7.4).
    assert_eq!(o.ours.encode("analysis", false), [35644]);
    assert_eq!(o.ours.encode("final", false), [17196]);
}

/// gpt-oss-spec.md §7.4: the GGUF template for one user message, date 2025-08-05 — text and the
/// 74 ids `run --chat` feeds the model.
#[test]
fn harmony_chat_prompt_matches_the_spec() {
    let o = o200k();
    let msgs = [ChatMessage::user("What is 2+2?")];
    let now = Some(1_754_352_000);
    assert_eq!(
        o.ours.render_chat(&msgs, now).unwrap(),
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
         Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n\
         # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
         <|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"
    );
    let want: [u32; 74] = [
        200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656,
        7788, 17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 198, 6576, 3521, 25, 220,
        1323, 20, 12, 3062, 12, 2922, 279, 30377, 289, 25, 14093, 279, 2, 13888, 18403, 25, 8450,
        11, 49159, 11, 1721, 13, 21030, 2804, 413, 7360, 395, 1753, 3176, 13, 200007, 200006, 1428,
        200008, 4827, 382, 220, 17, 10, 17, 30, 200007, 200006, 173781,
    ];
    assert_eq!(o.ours.encode_chat(&msgs, now).unwrap(), want);
}

/// The vocabulary of a real gpt-oss-20b GGUF (ggml-org layout; weights may be random) equals the
/// one built here from tiktoken, and its tokenizer encodes like tiktoken.
#[test]
#[ignore = "needs a gpt-oss-20b GGUF at ~/.cache/kvspool/models/gpt-oss-20b-random.gguf"]
fn real_gguf_vocabulary_equals_the_tiktoken_derived_one() {
    let path = kvspool::paths::cache_dir().join("models/gpt-oss-20b-random.gguf");
    assert!(path.exists(), "{} not found", path.display());
    let g = kvspool::gguf::GgufFile::open(&path).expect("open GGUF");
    let real = TokenizerData::from_gguf(&g).expect("tokenizer metadata");
    assert!(real.tiktoken, "gpt-oss GGUFs get tiktoken semantics");
    assert_eq!(real.pre, "gpt-4o");
    let o = o200k();
    let n = o.ours.n_vocab();
    for id in 0..n as u32 {
        assert_eq!(
            Some(real.tokens[id as usize].as_str()),
            o.ours.token_text(id),
            "token {id}"
        );
    }
    assert!(real.merges == o.merges, "merges differ");
    // gpt-oss-spec.md §12's open questions: 200018 is <|endofprompt|> (CONTROL), the padding
    // rows 200019… are <|reserved_N|> (UNUSED).
    assert_eq!(real.tokens.len(), 201_088);
    assert_eq!(real.token_types[200_018], token_type::CONTROL);
    for id in 200_019..201_088usize {
        assert_eq!(real.tokens[id], format!("<|reserved_{id}|>"));
        assert_eq!(real.token_types[id], token_type::UNUSED);
    }
    assert_eq!(real.special.bos, Some(199_998));
    assert_eq!(real.special.eos, Some(200_002));
    assert_eq!(real.special.pad, Some(199_999));
    let tok = Tokenizer::new(real).expect("tokenizer");
    assert_eq!(tok.eog_ids(), o.ours.eog_ids());
    for t in repo_texts().iter().chain(&generated_texts(2_000)) {
        assert_eq!(tok.encode(t, false), o.ours.encode(t, false), "{t:?}");
    }
    let msgs = [ChatMessage::user("What is 2+2?")];
    assert_eq!(
        tok.encode_chat(&msgs, Some(1_754_352_000)).unwrap(),
        o.ours.encode_chat(&msgs, Some(1_754_352_000)).unwrap()
    );
}

#[test]
fn encodes_like_tiktoken() {
    let o = o200k();
    let mut repo = Tally::default();
    compare(&repo_texts(), &mut repo);
    let mut gen = Tally::default();
    compare(&generated_texts(N_GENERATED), &mut gen);
    for (name, t) in [("repository", &repo), ("generated", &gen)] {
        eprintln!(
            "{name}: {} strings, {} tokens; mismatches: {} ordinary, {} with specials; llama.cpp semantics: {}",
            t.strings,
            t.tokens,
            t.mismatches.len(),
            t.special_mismatches.len(),
            t.llama_mismatches.len()
        );
    }
    for t in repo.mismatches.iter().chain(&gen.mismatches).take(20) {
        eprintln!("{}", show(o, &o.ours, t));
    }
    for t in repo
        .llama_mismatches
        .iter()
        .chain(&gen.llama_mismatches)
        .take(10)
    {
        eprintln!("llama.cpp semantics:\n{}", show(o, &o.llama, t));
    }
    // llama.cpp's adaptation (kept for pre = "gpt-4o" outside gpt-oss) differs only in how it
    // classifies non-ASCII codepoints (combining marks are not letters; letter case is ignored
    // outside ASCII): every text where it disagrees with tiktoken has a non-ASCII character.
    for t in repo.llama_mismatches.iter().chain(&gen.llama_mismatches) {
        assert!(
            !t.is_ascii(),
            "llama.cpp semantics differ on ASCII text {t:?}"
        );
    }
    assert!(
        repo.strings > 100 && repo.tokens > 100_000,
        "corpus too small"
    );
    assert!(gen.tokens > 100_000, "corpus too small");
    assert!(
        repo.mismatches.is_empty() && gen.mismatches.is_empty(),
        "encode(_, false) differs from tiktoken"
    );
    assert!(
        repo.special_mismatches.is_empty() && gen.special_mismatches.is_empty(),
        "encode(_, true) differs from tiktoken o200k_harmony"
    );
}

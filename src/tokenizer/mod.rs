//! Byte-level BPE tokenizer for GGUF vocabularies (`tokenizer.ggml.model = "gpt2"`), matching
//! llama.cpp b11434 (`src/llama-vocab.cpp`, `src/unicode.cpp`) token for token.
//!
//! Pipeline of [`Tokenizer::encode`]:
//! 1. **Special tokens.** Tokens of type CONTROL, USER_DEFINED or UNKNOWN are cut out of the text,
//!    longest text first, each occurrence left to right (llama.cpp `tokenizer_st_partition`). With
//!    `parse_special = false` CONTROL/UNKNOWN tokens are left in the text (and tokenized as text)
//!    but USER_DEFINED ones are still cut out, as the peer does.
//! 2. **Pre-tokenizer** (`tokenizer.ggml.pre`): each remaining fragment is split into words
//!    ([`pretokenize`]): `smollm`/`starcoder` isolate every digit then apply the GPT-2 splitter;
//!    `gpt-4o` (o200k) applies the peer's adaptation of the o200k regex to the peer's
//!    codepoint classes — which, unlike tiktoken, does not count combining marks (`\p{M}`) as
//!    parts of words and ignores letter case outside ASCII; `gpt-2`, `default` and the `llama3`
//!    family are supported as well. With [`TokenizerData::tiktoken`] (set for gpt-oss GGUFs) a
//!    `gpt-4o` vocabulary follows tiktoken instead: the o200k regex on real Unicode classes, and
//!    a word that is a token is emitted whole (tests/tokenizer_o200k.rs checks this against
//!    `tiktoken-rs` token for token).
//! 3. **BPE** ([`bpe`]) over the bytes of each word with the merge ranks of `tokenizer.ggml.merges`
//!    (a word's tokens are cached for the rest of the `encode` call).
//! 4. BOS is prepended only if the vocabulary says `add_bos` (SmolLM2 and gpt-oss: no), EOS
//!    appended only if `add_eos`.
//!
//! Invariants:
//! - `encode` never panics, for any `&str`.
//! - With a complete byte-level vocabulary (every byte's character is a token, true for SmolLM2
//!   and o200k), `decode(encode(s, _)) == s` for every string (BOS/EOS aside): special tokens
//!   decode to their text. With `parse_special = false` no CONTROL token is produced (as long as
//!   the merges never build a control token's text, true for SmolLM2).
//! - `decode`/`token_bytes` render every token as its bytes; control tokens as their literal text.
//!   Ids outside the vocabulary render as nothing (no panic).
//! - `eog_ids()` is llama.cpp's end-of-generation set (see [`Tokenizer::is_eog`]).
//!
//! Where llama.cpp's behaviour depends on `std::unordered_map` iteration order (which of several
//! EOT-looking tokens becomes `eot_id`, which of several FIM-repo-looking tokens joins the EOG
//! set) we pick the lowest id. Per-model attribute tweaks by `general.name` (phi-3 RSTRIP, jina
//! LSTRIP) are not applied: no lstrip/rstrip around special tokens.

mod bpe;
mod chat;
mod gguf_adapter;
mod harmony;
mod pretokenize;
mod stream;
mod unicode;
mod unicode_data;

use std::collections::{BTreeSet, HashMap};

pub use chat::{ChatMessage, ChatTemplate};
pub use harmony::{Delta, HarmonyIds, HarmonyMessage, HarmonyOutput, HarmonyParser, MessageEnd};
pub use stream::StreamDecoder;
pub use unicode::{byte_to_char, bytes_to_byte_level, char_to_byte};

use bpe::{Bpe, Scratch, NO_TOKEN};
use pretokenize::{pre_config, pre_config_tiktoken, PreConfig, Splitter};

/// Errors of the tokenizer and chat templates.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model '{0}': only byte-level BPE ('gpt2') is supported")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer '{0}' (tokenizer.ggml.pre); supported: default, gpt-2 family, smollm/starcoder family, llama3 family, gpt-4o family")]
    UnsupportedPreTokenizer(String),
    #[error("GGUF metadata key '{0}' is missing")]
    MissingKey(&'static str),
    #[error("GGUF metadata key '{key}' has the wrong type (expected {expected})")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("token_type has {got} entries for {n_vocab} tokens")]
    TokenTypeCount { got: usize, n_vocab: usize },
    #[error("pre-tokenizer regex {pattern:?} does not compile: {message}")]
    Regex { pattern: String, message: String },
    #[error("the model has no chat template (tokenizer.chat_template)")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Token attributes after load (llama.cpp `llama_token_attr` bits), see [`Tokenizer::token_attr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenAttr(pub u32);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);

    /// True if any bit of `other` is set.
    pub fn has(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }

    fn from_type(t: i32) -> TokenAttr {
        match t {
            token_type::UNKNOWN => TokenAttr::UNKNOWN,
            token_type::UNUSED => TokenAttr::UNUSED,
            token_type::NORMAL => TokenAttr::NORMAL,
            token_type::CONTROL => TokenAttr::CONTROL,
            token_type::USER_DEFINED => TokenAttr::USER_DEFINED,
            token_type::BYTE => TokenAttr::BYTE,
            _ => TokenAttr::UNDEFINED,
        }
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, rhs: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | rhs.0)
    }
}

/// Special token ids as stored in GGUF (`tokenizer.ggml.*_token_id`); `None` = key absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Everything the tokenizer is built from, as plain data (no GGUF dependency).
#[derive(Clone, Debug, Default)]
pub struct TokenizerData {
    /// `tokenizer.ggml.model`; must be `"gpt2"`.
    pub model: String,
    /// `tokenizer.ggml.pre` (empty = llama.cpp's `default`).
    pub pre: String,
    /// `tokenizer.ggml.tokens`: byte-level strings (GPT-2 mapping), special tokens literal.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` ([`token_type`]); empty = all NORMAL.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, rank = index.
    pub merges: Vec<String>,
    pub special: SpecialIds,
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` / `add_space_prefix`.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Use tiktoken's semantics instead of llama.cpp's for a `gpt-4o`-family pre-tokenizer: the
    /// o200k regex on real Unicode classes (case in every script, combining marks inside words)
    /// and whole-word tokens emitted without BPE. [`TokenizerData::from_gguf`] sets it for
    /// `general.architecture = "gpt-oss"` (trained with tiktoken's `o200k_harmony`); ignored for
    /// other pre-tokenizers.
    pub tiktoken: bool,
}

/// Tokens of the words already encoded by one `encode` call.
#[derive(Default)]
struct WordCache<'t> {
    map: HashMap<&'t [u8], (u32, u32), bpe::FxBuild>,
    arena: Vec<u32>,
}

/// Fragment of the input after special-token partitioning: a byte range of text, or a token.
#[derive(Clone, Copy, Debug)]
enum Frag {
    Text(usize, usize),
    Token(u32),
}

struct TokenInfo {
    text: String,
    attr: TokenAttr,
    /// llama.cpp `token_to_piece(special = true)`.
    piece: Vec<u8>,
}

/// A loaded byte-level BPE tokenizer. Immutable and `Sync`: share it across threads.
pub struct Tokenizer {
    tokens: Vec<TokenInfo>,
    token_to_id: HashMap<String, u32>,
    token_of_ascii: [u32; 128],
    pre_name: String,
    pre: PreConfig,
    splitter: Splitter,
    bpe: Bpe,
    /// Ids with CONTROL | USER_DEFINED | UNKNOWN, longest text first (ties: lower id first).
    special_cache: Vec<u32>,
    special_trie: Trie,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.tokens.len())
            .field("pre", &self.pre_name)
            .field("pre_kind", &self.pre.kind)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that make a token end-of-generation (llama.cpp b11434 list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl Tokenizer {
    /// Build a tokenizer from plain data, applying llama.cpp's load-time rules (default special
    /// ids, EOT/FIM/EOG detection by token text, gpt-oss attribute fixes).
    pub fn new(data: TokenizerData) -> Result<Tokenizer, TokenizerError> {
        if data.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(data.model));
        }
        let pre = pre_config(&data.pre)
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(data.pre.clone()))?;
        let pre = match data.tiktoken {
            true => pre_config_tiktoken(&data.pre).unwrap_or(pre),
            false => pre,
        };
        let n = data.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if !data.token_types.is_empty() && data.token_types.len() < n {
            return Err(TokenizerError::TokenTypeCount {
                got: data.token_types.len(),
                n_vocab: n,
            });
        }
        let splitter = Splitter::new(pre.exprs)?;

        // Vocabulary: empty strings are renamed like the peer; last duplicate wins in the map.
        let mut tokens: Vec<TokenInfo> = Vec::with_capacity(n);
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in data.tokens.into_iter().enumerate() {
            let text = if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t
            };
            let attr = match data.token_types.get(i) {
                Some(&ty) => TokenAttr::from_type(ty),
                None => TokenAttr::NORMAL,
            };
            token_to_id.insert(text.clone(), i as u32);
            tokens.push(TokenInfo {
                text,
                attr,
                piece: Vec::new(),
            });
        }
        let bpe = Bpe::new(n, &token_to_id, &data.merges);

        // Special ids: metadata if in range, else llama.cpp's gpt2 defaults (bos = eos = 11) if in range.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let default11 = in_range(Some(11));
        let sp = &data.special;
        let bos = in_range(sp.bos).or(default11);
        let eos = in_range(sp.eos).or(default11);
        let mut eot = in_range(sp.eot);
        let mut eom = in_range(sp.eom);
        let unk = in_range(sp.unk);
        let pad = in_range(sp.pad);
        let mut fim_pre = in_range(sp.fim_pre);
        let mut fim_suf = in_range(sp.fim_suf);
        let mut fim_mid = in_range(sp.fim_mid);
        let mut fim_pad = in_range(sp.fim_pad);
        let mut fim_rep = in_range(sp.fim_rep);
        let mut fim_sep = in_range(sp.fim_sep);

        let add_bos = data.add_bos.unwrap_or(pre.add_bos);
        let add_eos = data.add_eos.unwrap_or(false);

        // Unique strings in id order (the peer iterates its string → id map).
        let unique: Vec<u32> = (0..n as u32)
            .filter(|&i| token_to_id.get(&tokens[i as usize].text) == Some(&i))
            .collect();
        let set_control = |tokens: &mut Vec<TokenInfo>, id: u32| {
            let a = &mut tokens[id as usize].attr;
            *a = *a | TokenAttr::CONTROL;
        };
        for &id in &unique {
            let text = tokens[id as usize].text.as_str();
            let slots: [(&mut Option<u32>, &[&str]); 8] = [
                (&mut eot, EOT_TEXTS),
                (&mut eom, &["<|eom_id|>"]),
                (&mut fim_pre, FIM_PRE_TEXTS),
                (&mut fim_suf, FIM_SUF_TEXTS),
                (&mut fim_mid, FIM_MID_TEXTS),
                (&mut fim_pad, FIM_PAD_TEXTS),
                (&mut fim_rep, FIM_REP_TEXTS),
                (&mut fim_sep, FIM_SEP_TEXTS),
            ];
            let mut hit = false;
            for (slot, texts) in slots {
                if slot.is_none() && texts.contains(&text) {
                    *slot = Some(id);
                    hit = true;
                }
            }
            if hit {
                set_control(&mut tokens, id);
            }
        }
        // Control tokens named "...unused..." are unused.
        for &id in &unique {
            let t = &mut tokens[id as usize];
            if t.attr.has(TokenAttr::CONTROL) && t.text.contains("unused") {
                t.attr = t.attr | TokenAttr::UNUSED;
            }
        }

        // End-of-generation set.
        let mut eog: BTreeSet<u32> = BTreeSet::new();
        eog.extend(fim_pad);
        eog.extend(fim_rep);
        eog.extend(fim_sep);
        for &id in &unique {
            if EOG_TEXTS.contains(&tokens[id as usize].text.as_str()) {
                eog.insert(id);
                set_control(&mut tokens, id);
            }
        }
        // gpt-oss: these are always rendered (USER_DEFINED: split out even without parse_special).
        for &id in &unique {
            if matches!(
                tokens[id as usize].text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                tokens[id as usize].attr = TokenAttr::USER_DEFINED;
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.extend(eom);
        {
            let has = |s: &str| eog.iter().any(|&i| tokens[i as usize].text == s);
            let end_id = eog
                .iter()
                .copied()
                .find(|&i| tokens[i as usize].text == "<|end|>");
            if let Some(end_id) = end_id {
                if (has("<|return|>") && (has("<|call|>") || has("<|calls|>")))
                    || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>"))
                {
                    // gpt-oss / solar-open: <|end|> closes a message, not the generation.
                    eog.remove(&end_id);
                    tokens[end_id as usize].attr = TokenAttr::USER_DEFINED;
                }
            }
            let has_marker = eog.iter().any(|&i| {
                matches!(
                    tokens[i as usize].text.as_str(),
                    "<|tool_response>" | "<|plamo:eos|>"
                )
            });
            let s_id = eog
                .iter()
                .copied()
                .find(|&i| tokens[i as usize].text == "</s>");
            if let (true, Some(s_id)) = (has_marker, s_id) {
                eog.remove(&s_id);
                tokens[s_id as usize].attr = TokenAttr::NORMAL;
            }
        }

        // Special-token cache: longest text first.
        let special = TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN;
        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| tokens[i as usize].attr.has(special))
            .collect();
        special_cache.sort_by(|&a, &b| {
            tokens[b as usize]
                .text
                .len()
                .cmp(&tokens[a as usize].text.len())
                .then(a.cmp(&b))
        });
        let special_trie = Trie::new(
            special_cache
                .iter()
                .map(|&id| tokens[id as usize].text.as_bytes()),
        );

        // Pieces (llama.cpp token_to_piece with special = true).
        for t in tokens.iter_mut() {
            t.piece = piece_of(&t.text, t.attr);
        }

        let mut token_of_ascii = [NO_TOKEN; 128];
        for (b, slot) in token_of_ascii.iter_mut().enumerate() {
            if let Some(&id) = token_to_id.get((b as u8 as char).encode_utf8(&mut [0u8; 4])) {
                *slot = id;
            }
        }

        Ok(Tokenizer {
            tokens,
            token_to_id,
            token_of_ascii,
            pre_name: data.pre,
            pre,
            splitter,
            bpe,
            special_cache,
            special_trie,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            eog: eog.into_iter().collect(),
            add_bos,
            add_eos,
            add_space_prefix: data.add_space_prefix.unwrap_or(false),
            chat_template: data.chat_template,
        })
    }

    /// Tokenize `text`, adding BOS/EOS as the vocabulary asks (`add_bos`, `add_eos`). With
    /// `parse_special`, control-token texts in `text` (e.g. `<|im_start|>`) become those tokens.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_with(text, true, parse_special)
    }

    /// [`Tokenizer::encode`] with explicit `add_special` (llama.cpp `llama_tokenize` arguments):
    /// `add_special = false` never adds BOS/EOS.
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut scratch = Scratch::default();
        let mut words = Vec::new();
        let mut cache = WordCache::default();
        for frag in self.partition(text, parse_special) {
            match frag {
                Frag::Token(id) => out.push(id),
                Frag::Text(a, b) => self.encode_fragment(
                    &text[a..b],
                    &mut out,
                    &mut words,
                    &mut scratch,
                    &mut cache,
                ),
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn encode_fragment<'t>(
        &self,
        frag: &'t str,
        out: &mut Vec<u32>,
        words: &mut Vec<(usize, usize)>,
        scratch: &mut Scratch,
        cache: &mut WordCache<'t>,
    ) {
        words.clear();
        self.splitter.split(frag, words);
        let mut enc = String::new();
        for &(a, b) in words.iter() {
            let word = &frag.as_bytes()[a..b];
            // A word's tokens depend only on its bytes: reuse them within this call.
            if word.len() > 1 {
                if let Some(&(s, n)) = cache.map.get(word) {
                    out.extend_from_slice(&cache.arena[s as usize..(s + n) as usize]);
                    continue;
                }
            }
            let before = out.len();
            if self.pre.ignore_merges {
                enc.clear();
                enc.extend(word.iter().map(|&x| byte_to_char(x)));
                if let Some(&id) = self.token_to_id.get(&enc) {
                    out.push(id);
                    continue;
                }
            }
            self.bpe
                .encode_word(word, out, scratch, &self.token_of_ascii);
            if word.len() > 1 {
                let s = cache.arena.len() as u32;
                cache.arena.extend_from_slice(&out[before..]);
                cache.map.insert(word, (s, (out.len() - before) as u32));
            }
        }
    }

    /// llama.cpp `tokenizer_st_partition`.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Frag::Text(0, text.len())];
        if self.special_cache.is_empty() {
            return frags;
        }
        let present = self.special_trie.present(text.as_bytes());
        let skip = TokenAttr::CONTROL | TokenAttr::UNKNOWN;
        for (ci, &id) in self.special_cache.iter().enumerate() {
            if !present[ci] {
                continue;
            }
            let tok = &self.tokens[id as usize];
            if !parse_special && tok.attr.has(skip) {
                continue;
            }
            let needle = tok.text.as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Frag::Token(_) => next.push(f),
                    Frag::Text(a, b) => {
                        let mut cur = a;
                        while let Some(p) = text[cur..b].find(needle) {
                            let m = cur + p;
                            if m > cur {
                                next.push(Frag::Text(cur, m));
                            }
                            next.push(Frag::Token(id));
                            cur = m + needle.len();
                        }
                        if cur < b {
                            next.push(Frag::Text(cur, b));
                        }
                    }
                }
            }
            frags = next;
        }
        frags
    }

    /// Bytes of `ids`, control tokens written as their text (llama.cpp `llama_detokenize` with
    /// `remove_special = false, unparse_special = true` and no space clean-up). This is the exact
    /// inverse of `encode(s, false)` for the supported vocabularies.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// [`Tokenizer::decode`] as text; invalid UTF-8 (a split multi-byte character) becomes U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }

    /// llama.cpp `llama_detokenize(remove_special, unparse_special)`, including its
    /// `clean_spaces` pass (only on for vocabularies whose pre-tokenizer asks for it, not for
    /// SmolLM2 or gpt-oss) and leading-space removal when `add_space_prefix` is set.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == self.eos
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut text: Vec<u8> = Vec::new();
        for &id in ids {
            let mut p = self.token_piece(id, unparse_special);
            if remove_space && p.first() == Some(&b' ') {
                p = &p[1..];
            }
            remove_space = false;
            text.extend_from_slice(p);
        }
        if self.pre.clean_spaces {
            text = clean_spaces(text);
        }
        text
    }

    /// The bytes token `id` stands for, control tokens as their text (empty if out of range).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.tokens
            .get(id as usize)
            .map_or(&[], |t| t.piece.as_slice())
    }

    /// llama.cpp `token_to_piece(id, special)`: with `special = false` CONTROL and UNKNOWN tokens
    /// render as nothing.
    pub fn token_piece(&self, id: u32, special: bool) -> &[u8] {
        match self.tokens.get(id as usize) {
            Some(t) if special || !t.attr.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN) => &t.piece,
            _ => &[],
        }
    }

    /// The vocabulary string of `id` (byte-level encoded for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id whose vocabulary string is exactly `text` (llama.cpp `text_to_token`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Attributes after load-time fixes ([`TokenAttr`]); `UNDEFINED` if out of range.
    pub fn token_attr(&self, id: u32) -> TokenAttr {
        self.tokens
            .get(id as usize)
            .map_or(TokenAttr::UNDEFINED, |t| t.attr)
    }

    /// True for CONTROL tokens (rendered only with `special = true`).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id).has(TokenAttr::CONTROL)
    }

    /// End of generation (llama.cpp `llama_vocab_is_eog`): eos, eot, eom, FIM pad/repo/sep, and
    /// every token whose text is in llama.cpp's EOG list (`<|im_end|>`, `<|endoftext|>`,
    /// `<|return|>`, `<|call|>`, …) — minus `<|end|>` when `<|return|>` and `<|call|>` exist (gpt-oss).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }
    pub fn eom_id(&self) -> Option<u32> {
        self.eom
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Whether `encode` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }
    /// The `tokenizer.ggml.pre` name this tokenizer was built with.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre_name
    }

    /// Ids of the special tokens that `encode(…, true)` splits out, longest text first.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_cache
    }

    /// The raw `tokenizer.chat_template`, if any.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The prompt text for a conversation: the model's chat template rendered with the
    /// generation prompt (`add_generation_prompt`), `strftime_now` reading `now` (Unix seconds,
    /// UTC) when given, else the clock. For gpt-oss this is the harmony prompt ending in
    /// `<|start|>assistant` (gpt-oss-spec.md §7.4).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        now: Option<i64>,
    ) -> Result<String, TokenizerError> {
        let mut t = self.chat_template()?;
        if let Some(now) = now {
            t = t.with_now(now);
        }
        t.render(messages, true)
    }

    /// The prompt ids `kvspool run --chat` feeds the model: [`Tokenizer::render_chat`], tokenized
    /// with special tokens parsed (BOS only if the vocabulary asks for it; never for gpt-oss).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        now: Option<i64>,
    ) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode(&self.render_chat(messages, now)?, true))
    }

    /// The model's chat template, with `bos_token`/`eos_token`/`unk_token`/`pad_token` bound.
    pub fn chat_template(&self) -> Result<ChatTemplate, TokenizerError> {
        let src = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or("");
        Ok(ChatTemplate::new(src)?.with_special_tokens(
            text(self.bos),
            text(self.eos),
            text(self.unk),
            text(self.pad),
        ))
    }
}

/// llama.cpp `token_to_piece` for a BPE vocabulary with `special = true`.
fn piece_of(text: &str, attr: TokenAttr) -> Vec<u8> {
    if attr.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN | TokenAttr::USER_DEFINED) {
        return text.as_bytes().to_vec();
    }
    if attr.has(TokenAttr::NORMAL) {
        // llama_decode_text: each character back to its byte; characters outside the byte
        // alphabet produce the peer's "[UNK_BYTE_0x…]" marker.
        let mut out = Vec::with_capacity(text.len());
        for ch in text.chars() {
            match char_to_byte(ch) {
                Some(b) => out.push(b),
                None => {
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for &b in ch.encode_utf8(&mut buf).as_bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
        return out;
    }
    if attr.has(TokenAttr::BYTE) {
        // "<0xXX>": strtol of the two hex digits (0 if they are not hex).
        let hex = text.get(3..5).unwrap_or("");
        let v = hex
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .fold(0u8, |acc, c| {
                acc.wrapping_mul(16)
                    .wrapping_add(c.to_digit(16).unwrap_or(0) as u8)
            });
        return vec![v];
    }
    Vec::new()
}

/// llama.cpp's `clean_spaces` pass of `llama_detokenize`, ported literally (three in-place
/// compaction passes over the same buffer, including the NUL it writes over a skipped space).
fn clean_spaces(mut text: Vec<u8>) -> Vec<u8> {
    let n1 = text.len();
    if n1 == 0 {
        return text;
    }
    // Pass 1: " ?", " !", " .", " ," lose the space.
    let mut total = 1usize;
    for i in 1..n1 {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // Pass 2: " ' " loses both spaces.
    let n2 = total;
    total = 1;
    let mut i = 1usize;
    while i < n2 {
        let x = text[i];
        if x == b'\'' && i + 1 < n2 && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let n3 = total;
    total = 1;
    for i in 1..n3 {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n3 {
            let x1 = text[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if (x1 == b'r' || x1 == b'v') && i + 2 < n3 && text[i + 2] == b'e' {
                total -= 1; // " 're", " 've"; " 't", " 'd", " 'll" keep their space
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
    text
}

/// Byte trie over the special-token texts, used to find which of them occur in a text at all
/// before the (order-sensitive) partition runs.
struct Trie {
    /// children[node] sorted by byte.
    children: Vec<Vec<(u8, u32)>>,
    /// Cache indices ending at node.
    terminal: Vec<Vec<u32>>,
    first: [bool; 256],
}

impl Trie {
    fn new<'a>(texts: impl Iterator<Item = &'a [u8]>) -> Trie {
        let mut t = Trie {
            children: vec![Vec::new()],
            terminal: vec![Vec::new()],
            first: [false; 256],
        };
        for (ci, text) in texts.enumerate() {
            let Some(&b0) = text.first() else { continue };
            t.first[b0 as usize] = true;
            let mut node = 0usize;
            for &b in text {
                node = match t.children[node].binary_search_by_key(&b, |&(c, _)| c) {
                    Ok(k) => t.children[node][k].1 as usize,
                    Err(k) => {
                        let new = t.children.len();
                        t.children.push(Vec::new());
                        t.terminal.push(Vec::new());
                        t.children[node].insert(k, (b, new as u32));
                        new
                    }
                };
            }
            t.terminal[node].push(ci as u32);
        }
        t
    }

    /// `present[ci]`: special token `ci` occurs somewhere in `text`.
    fn present(&self, text: &[u8]) -> Vec<bool> {
        let n = self.terminal.iter().map(Vec::len).sum::<usize>();
        let mut present = vec![false; n];
        for i in 0..text.len() {
            if !self.first[text[i] as usize] {
                continue;
            }
            let mut node = 0usize;
            for &b in &text[i..] {
                match self.children[node].binary_search_by_key(&b, |&(c, _)| c) {
                    Ok(k) => node = self.children[node][k].1 as usize,
                    Err(_) => break,
                }
                for &ci in &self.terminal[node] {
                    present[ci as usize] = true;
                }
            }
        }
        present
    }
}

#[cfg(test)]
mod tests;

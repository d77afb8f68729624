//! Pre-tokenizers: split a text fragment into the words that BPE runs on, exactly as llama.cpp
//! (`unicode_regex_split` in `src/unicode.cpp`) does.
//!
//! A pre-tokenizer is a list of *stages*; each stage refines the segments of the previous one
//! (it never merges across a boundary). A stage is either
//! - one of llama.cpp's hand-written splitters (`gpt2`, `llama3`), ported line by line, or
//! - a regex, run the way llama.cpp runs its std::regex fallback: when the pattern uses a Unicode
//!   class (`\p{L}`, `\p{N}`, `\p{P}`, `\p{M}`, `\p{S}`, `\p{Lu}`, ...), every non-ASCII codepoint of
//!   the text is first *collapsed* to one stand-in character per llama.cpp category (non-ASCII
//!   whitespace to `\x0B`), and each class in the pattern is rewritten to "stand-in + its ASCII
//!   members". So `\p{Lu}` and `\p{Ll}` both mean "any letter" for non-ASCII text and combining
//!   marks are not letters (this is how the peer behaves on the `gpt-4o` pattern, and differs from
//!   tiktoken for scripts with combining marks, e.g. Devanagari).
//!
//! The exception is tiktoken mode ([`pre_config_tiktoken`], used for gpt-oss): tiktoken's o200k
//! pattern runs as written on the original text, with the regex engine's Unicode general
//! categories — the same engine and tables tiktoken uses, so the words are tiktoken's.
//!
//! The `gpt-4o` pattern and `\p{N}` are also matched by hand on the same collapsed classes (about
//! 5x faster than the regex engine); property tests check the hand-written matchers against the
//! regex engine on the same patterns, and the fixtures check everything against llama.cpp.
//!
//! Invariants: the words returned are non-empty, in order, and their concatenation is the input
//! fragment (every codepoint belongs to exactly one word); splitting never panics — if the regex
//! engine gives up (backtrack limit), the rest of that segment becomes one word.

use super::unicode::{cpt_flags, CptFlags, LETTER, MARK, NUMBER, PUNCTUATION, SYMBOL};
use super::TokenizerError;
use fancy_regex::Regex;

/// How a vocabulary's `tokenizer.ggml.pre` name configures the BPE tokenizer (llama.cpp
/// `llama_vocab::impl::load` and `llm_tokenizer_bpe`).
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    /// The llama.cpp pre-tokenizer type this name maps to (for messages).
    pub kind: &'static str,
    pub exprs: &'static [&'static str],
    /// llama.cpp `clean_spaces` (applied by [`super::Tokenizer::detokenize`] only).
    pub clean_spaces: bool,
    /// If a whole word is a token, emit it without running merges.
    pub ignore_merges: bool,
    /// Default for `add_bos` before `tokenizer.ggml.add_bos_token` overrides it.
    pub add_bos: bool,
}

const GPT2_RE: &str =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const LLAMA3_RE: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// llama.cpp's adaptation of the o200k pattern (gpt-oss-spec.md §7.3): `\p{Lu}…`/`\p{Ll}…` written
/// as "a letter that is not a-z" / "a letter that is not A-Z", `(?i:…)` spelled out, no `\p{M}`.
const GPT4O_RE: &str = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// tiktoken's o200k pattern exactly as written (`o200k_base().pat_str`, gpt-oss-spec.md §7.3),
/// matched on the text itself with the regex engine's Unicode general categories (so `\p{Lu}` and
/// `\p{Ll}` distinguish case in every script and combining marks `\p{M}` belong to words).
const O200K_RE: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

const EXPRS_DEFAULT: &[&str] = &[
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    GPT2_RE,
    "\\p{N}+",
    "[0-9][0-9][0-9]",
];
const EXPRS_GPT2: &[&str] = &[GPT2_RE];
const EXPRS_STARCODER: &[&str] = &["\\p{N}", GPT2_RE];
const EXPRS_LLAMA3: &[&str] = &[LLAMA3_RE];
const EXPRS_GPT4O: &[&str] = &[GPT4O_RE];
const EXPRS_O200K: &[&str] = &[O200K_RE];

/// tiktoken's semantics for the `gpt-4o` family (the o200k vocabulary gpt-oss was trained with):
/// [`O200K_RE`] on real Unicode classes, and a word that is itself a token is emitted whole
/// (tiktoken's shortcut before BPE). `None` if `name` is not in the `gpt-4o` family.
pub(crate) fn pre_config_tiktoken(name: &str) -> Option<PreConfig> {
    let base = pre_config(name)?;
    (base.kind == "gpt-4o").then_some(PreConfig {
        kind: "o200k (tiktoken)",
        exprs: EXPRS_O200K,
        ignore_merges: true,
        ..base
    })
}

/// The supported `tokenizer.ggml.pre` names (llama.cpp b11434). `None` for anything else.
pub(crate) fn pre_config(name: &str) -> Option<PreConfig> {
    let cfg = |kind, exprs, clean_spaces, ignore_merges, add_bos| PreConfig {
        kind,
        exprs,
        clean_spaces,
        ignore_merges,
        add_bos,
    };
    Some(match name {
        "" | "default" => cfg("default", EXPRS_DEFAULT, true, false, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais" => {
            cfg("gpt2", EXPRS_GPT2, true, false, false)
        }
        "trillion" | "granite-docling" => cfg("gpt2", EXPRS_GPT2, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg("starcoder", EXPRS_STARCODER, true, false, false)
        }
        "smollm" | "command-r" => cfg("starcoder", EXPRS_STARCODER, false, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => cfg("llama3", EXPRS_LLAMA3, true, true, true),
        "dbrx" | "smaug-bpe" => cfg("llama3", EXPRS_LLAMA3, true, false, false),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
            cfg("gpt-4o", EXPRS_GPT4O, false, false, false)
        }
        _ => return None,
    })
}

enum Stage {
    Gpt2,
    Llama3,
    /// The `gpt-4o` pattern matched by hand ([`split_gpt4o`]); equal to `Regex` on that pattern
    /// and several times faster.
    Gpt4o,
    /// `\p{N}` (every number codepoint on its own), by hand.
    Digits,
    Regex {
        re: Regex,
        collapsed: bool,
    },
    /// A regex matched on the original text, without llama.cpp's class collapsing ([`O200K_RE`]).
    Exact(Regex),
}

/// A compiled pre-tokenizer.
pub(crate) struct Splitter {
    stages: Vec<Stage>,
    need_collapse: bool,
}

/// The `\p{…}` classes llama.cpp understands, with their collapsed stand-in and ASCII members
/// (written in Rust regex syntax; same sets as `k_ucat_map` in llama.cpp).
const UCATS: &[(&str, u8)] = &[
    ("\\p{N}", NUMBER),
    ("\\p{L}", LETTER),
    ("\\p{P}", PUNCTUATION),
    ("\\p{M}", MARK),
    ("\\p{S}", SYMBOL),
    ("\\p{Lu}", LETTER),
    ("\\p{Ll}", LETTER),
    ("\\p{Lt}", LETTER),
    ("\\p{Lm}", LETTER),
    ("\\p{Lo}", LETTER),
];

fn ucat_class(cat: u8) -> (char, &'static str) {
    match cat {
        NUMBER => ('\u{D1}', "0-9"),
        LETTER => ('\u{D2}', "A-Za-z"),
        PUNCTUATION => ('\u{D3}', "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"),
        MARK => ('\u{D4}', ""),
        _ => ('\u{D5}', "\\$\\+<->\\^`\\|~"), // SYMBOL
    }
}

/// Stand-in for a codepoint in the collapsed text (llama.cpp `text_collapsed`).
#[inline]
fn collapse(c: char, f: CptFlags) -> char {
    if (c as u32) < 128 {
        return c;
    }
    if f.is_whitespace() {
        return '\x0B';
    }
    match f.category {
        NUMBER => '\u{D1}',
        LETTER => '\u{D2}',
        PUNCTUATION => '\u{D3}',
        MARK => '\u{D4}',
        SYMBOL => '\u{D5}',
        _ => '\u{D0}',
    }
}

/// Rewrite `\p{…}` classes as llama.cpp does before handing the pattern to std::regex.
fn collapse_regex(expr: &str) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b[i] == b']' && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'p' && b[i + 2] == b'{' {
            if let Some(close) = expr[i + 3..].find('}').map(|p| p + i + 3) {
                if close <= i + 10 {
                    let pat = &expr[i..=close];
                    if let Some(&(_, cat)) = UCATS.iter().find(|(p, _)| *p == pat) {
                        let (stand_in, ascii) = ucat_class(cat);
                        if !inside {
                            out.push('[');
                        }
                        out.push(stand_in);
                        out.push_str(ascii);
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        // Copy one (possibly multi-byte) character.
        let ch_len = expr[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&expr[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn compile(pat: &str, shown: &str) -> Result<Regex, TokenizerError> {
    fancy_regex::RegexBuilder::new(pat)
        .backtrack_limit(10_000_000)
        .build()
        .map_err(|err| TokenizerError::Regex {
            pattern: shown.to_string(),
            message: err.to_string(),
        })
}

impl Splitter {
    pub fn new(exprs: &[&str]) -> Result<Splitter, TokenizerError> {
        Splitter::build(exprs, true)
    }

    /// `hand_written = false` runs the `gpt-4o` and `\p{N}` patterns through the regex engine
    /// (the reference their hand-written matchers are tested against).
    fn build(exprs: &[&str], hand_written: bool) -> Result<Splitter, TokenizerError> {
        let uses_ucat = |e: &str| UCATS.iter().any(|(p, _)| e.contains(p));
        let mut stages = Vec::with_capacity(exprs.len());
        for &e in exprs {
            let stage = if e == GPT2_RE {
                Stage::Gpt2
            } else if e == LLAMA3_RE {
                Stage::Llama3
            } else if hand_written && e == GPT4O_RE {
                Stage::Gpt4o
            } else if hand_written && e == "\\p{N}" {
                Stage::Digits
            } else if e == O200K_RE {
                Stage::Exact(compile(e, e)?)
            } else {
                let collapsed = uses_ucat(e);
                let pat = if collapsed {
                    collapse_regex(e)
                } else {
                    e.to_string()
                };
                Stage::Regex {
                    re: compile(&pat, e)?,
                    collapsed,
                }
            };
            stages.push(stage);
        }
        let need_collapse = stages.iter().any(|s| {
            matches!(
                s,
                Stage::Regex {
                    collapsed: true,
                    ..
                }
            )
        });
        Ok(Splitter {
            stages,
            need_collapse,
        })
    }

    /// Split `text` into words; pushes `(start, end)` byte ranges of `text` to `out`.
    pub fn split(&self, text: &str, out: &mut Vec<(usize, usize)>) {
        if text.is_empty() {
            return;
        }
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<CptFlags> = cpts.iter().map(|&c| cpt_flags(c as u32)).collect();
        let mut byte_off = Vec::with_capacity(cpts.len() + 1);
        let mut o = 0usize;
        for &c in &cpts {
            byte_off.push(o);
            o += c.len_utf8();
        }
        byte_off.push(o);

        // The texts the regex stages run on, built once: collapsed, and/or "raw" (non-ASCII
        // whitespace → \x0B, llama.cpp's std::wregex path).
        let mut collapsed: Option<RegexText> = None;
        let mut raw: Option<RegexText> = None;
        let mut exact: Option<RegexText> = None;

        let mut offsets: Vec<usize> = vec![cpts.len()];
        for stage in &self.stages {
            offsets = match stage {
                Stage::Gpt2 => split_gpt2(&cpts, &flags, &offsets),
                Stage::Llama3 => split_llama3(&cpts, &flags, &offsets),
                Stage::Gpt4o => split_gpt4o(&cpts, &flags, &offsets),
                Stage::Digits => split_digits(&cpts, &flags, &offsets),
                Stage::Regex {
                    re,
                    collapsed: true,
                } => {
                    debug_assert!(self.need_collapse);
                    let t = collapsed.get_or_insert_with(|| RegexText::new(&cpts, &flags, true));
                    split_regex(re, t, &offsets)
                }
                Stage::Regex {
                    re,
                    collapsed: false,
                } => {
                    let t = raw.get_or_insert_with(|| RegexText::new(&cpts, &flags, false));
                    split_regex(re, t, &offsets)
                }
                Stage::Exact(re) => {
                    let t = exact.get_or_insert_with(|| RegexText::exact(text, &cpts));
                    split_regex(re, t, &offsets)
                }
            };
        }

        let mut start = 0usize;
        for len in offsets {
            if len == 0 {
                continue;
            }
            out.push((byte_off[start], byte_off[start + len]));
            start += len;
        }
    }
}

/// The text a regex stage matches on, one char per codepoint of the input.
struct RegexText {
    s: String,
    /// Byte offset in `s` of codepoint i (len = n + 1).
    off: Vec<usize>,
    /// Codepoint index of each byte offset of `s` that starts a char (len = s.len() + 1).
    cpt_at: Vec<u32>,
}

impl RegexText {
    fn new(cpts: &[char], flags: &[CptFlags], collapsed: bool) -> RegexText {
        let mut s = String::with_capacity(cpts.len() + 8);
        let mut off = Vec::with_capacity(cpts.len() + 1);
        for (&c, &f) in cpts.iter().zip(flags) {
            off.push(s.len());
            let m = if collapsed {
                collapse(c, f)
            } else if (c as u32) > 0x7F && f.is_whitespace() {
                '\x0B'
            } else {
                c
            };
            s.push(m);
        }
        off.push(s.len());
        RegexText::index(s, off)
    }

    /// The text unchanged.
    fn exact(text: &str, cpts: &[char]) -> RegexText {
        let mut off = Vec::with_capacity(cpts.len() + 1);
        let mut o = 0usize;
        for &c in cpts {
            off.push(o);
            o += c.len_utf8();
        }
        off.push(o);
        RegexText::index(text.to_string(), off)
    }

    fn index(s: String, off: Vec<usize>) -> RegexText {
        let mut cpt_at = vec![0u32; s.len() + 1];
        for (i, &o) in off.iter().enumerate() {
            cpt_at[o] = i as u32;
        }
        RegexText { s, off, cpt_at }
    }
}

/// llama.cpp `unicode_regex_split_stl`: matches become words, and so do the gaps between them.
fn split_regex(re: &Regex, t: &RegexText, offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let mut start = 0usize;
    for &len in offsets {
        let (a, b) = (t.off[start], t.off[start + len]);
        let seg = &t.s[a..b];
        let mut last = 0usize; // cpt index within segment
        for m in re.find_iter(seg) {
            let Ok(m) = m else { break }; // engine gave up: the rest is one word
            let ms = t.cpt_at[a + m.start()] as usize - start;
            let me = t.cpt_at[a + m.end()] as usize - start;
            if ms > last {
                out.push(ms - last);
            }
            if me > ms {
                out.push(me - ms);
            }
            last = me;
        }
        if last < len {
            out.push(len - last);
        }
        start += len;
    }
    out
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

/// Shared cursor helpers of llama.cpp's hand-written splitters.
struct Seg<'a> {
    cpts: &'a [char],
    flags: &'a [CptFlags],
    ini: usize,
    end: usize,
    prev_end: usize,
}

impl Seg<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos] as u32
        } else {
            OUT_OF_RANGE
        }
    }
    #[inline]
    fn flags(&self, pos: usize) -> CptFlags {
        if self.ini <= pos && pos < self.end {
            self.flags[pos]
        } else {
            CptFlags::NONE
        }
    }
    #[inline]
    fn add(&mut self, end: usize, out: &mut Vec<usize>) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            out.push(len);
        }
        self.prev_end = end;
        len
    }
}

const fn c(ch: char) -> u32 {
    ch as u32
}

/// llama.cpp `unicode_regex_split_custom_gpt2`:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(cpts: &[char], flags: &[CptFlags], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for &len in offsets {
        let mut s = Seg {
            cpts,
            flags,
            ini: start,
            end: start + len,
            prev_end: start,
        };
        start += len;
        let end = s.end;
        let mut pos = s.ini;
        while pos < end {
            let cpt = s.cpt(pos);
            let fl = s.flags(pos);

            if cpt == c('\'') && pos + 1 < end {
                let next = s.cpt(pos + 1);
                if next == c('s') || next == c('t') || next == c('m') || next == c('d') {
                    pos += s.add(pos + 2, &mut out);
                    continue;
                }
                if pos + 2 < end {
                    let nn = s.cpt(pos + 2);
                    if (next == c('r') && nn == c('e'))
                        || (next == c('v') && nn == c('e'))
                        || (next == c('l') && nn == c('l'))
                    {
                        pos += s.add(pos + 3, &mut out);
                        continue;
                    }
                }
            }

            let mut f2 = if cpt == c(' ') { s.flags(pos + 1) } else { fl };
            if f2.is_letter() {
                pos += usize::from(cpt == c(' '));
                while f2.is_letter() {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                s.add(pos, &mut out);
                continue;
            }
            if f2.is_number() {
                pos += usize::from(cpt == c(' '));
                while f2.is_number() {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                s.add(pos, &mut out);
                continue;
            }
            let other =
                |f: CptFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some();
            if other(f2) {
                pos += usize::from(cpt == c(' '));
                while other(f2) {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                s.add(pos, &mut out);
                continue;
            }

            let mut n_ws = 0usize;
            while s.flags(pos + n_ws).is_whitespace() {
                n_ws += 1;
            }
            if n_ws > 1 && s.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                s.add(pos, &mut out);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                s.add(pos, &mut out);
                continue;
            }
            pos += 1;
            s.add(pos, &mut out);
        }
    }
    out
}

/// llama.cpp `unicode_regex_split_custom_llama3`:
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(cpts: &[char], flags: &[CptFlags], offsets: &[usize]) -> Vec<usize> {
    // unicode_tolower maps only ASCII letters onto the letters tested here.
    let lower = |x: u32| {
        if (c('A')..=c('Z')).contains(&x) {
            x + 32
        } else {
            x
        }
    };
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for &len in offsets {
        let mut s = Seg {
            cpts,
            flags,
            ini: start,
            end: start + len,
            prev_end: start,
        };
        start += len;
        let end = s.end;
        let mut pos = s.ini;
        while pos < end {
            let cpt = s.cpt(pos);
            let fl = s.flags(pos);

            if cpt == c('\'') && pos + 1 < end {
                let next = lower(s.cpt(pos + 1));
                if next == c('s') || next == c('t') || next == c('m') || next == c('d') {
                    pos += s.add(pos + 2, &mut out);
                    continue;
                }
                if pos + 2 < end {
                    let nn = lower(s.cpt(pos + 2));
                    if (next == c('r') && nn == c('e'))
                        || (next == c('v') && nn == c('e'))
                        || (next == c('l') && nn == c('l'))
                    {
                        pos += s.add(pos + 3, &mut out);
                        continue;
                    }
                }
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == c('\r') || cpt == c('\n') || fl.is_number())
                && (fl.is_letter() || s.flags(pos + 1).is_letter())
            {
                pos += 1;
                while s.flags(pos).is_letter() {
                    pos += 1;
                }
                s.add(pos, &mut out);
                continue;
            }

            // \p{N}{1,3}
            if fl.is_number() {
                let mut ini = pos;
                while s.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= 3 {
                        s.add(pos, &mut out);
                        ini = pos;
                    }
                }
                s.add(pos, &mut out);
                continue;
            }

            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let mut f2 = if cpt == c(' ') { s.flags(pos + 1) } else { fl };
            if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && fl.is_some() {
                pos += usize::from(cpt == c(' '));
                while !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.is_some() {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                let mut c2 = s.cpt(pos);
                while c2 == c('\r') || c2 == c('\n') {
                    pos += 1;
                    c2 = s.cpt(pos);
                }
                s.add(pos, &mut out);
                continue;
            }

            let mut n_ws = 0usize;
            let mut last_rn = 0usize;
            while s.flags(pos + n_ws).is_whitespace() {
                let c2 = s.cpt(pos + n_ws);
                if c2 == c('\r') || c2 == c('\n') {
                    last_rn = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            if last_rn > 0 {
                pos = last_rn;
                s.add(pos, &mut out);
                continue;
            }
            if n_ws > 1 && s.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                s.add(pos, &mut out);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                s.add(pos, &mut out);
                continue;
            }
            pos += 1;
            s.add(pos, &mut out);
        }
    }
    out
}

/// `\p{N}` through llama.cpp's collapsed std::regex path: each codepoint that collapses to a
/// number (an ASCII digit, or a non-ASCII, non-whitespace codepoint of category N) is a word;
/// the runs between them are words too.
fn split_digits(cpts: &[char], flags: &[CptFlags], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let mut start = 0usize;
    for &len in offsets {
        let mut run = 0usize;
        for i in start..start + len {
            let c = cpts[i];
            let digit = if (c as u32) < 128 {
                c.is_ascii_digit()
            } else {
                !flags[i].is_whitespace() && flags[i].is_number()
            };
            if digit {
                if run > 0 {
                    out.push(run);
                    run = 0;
                }
                out.push(1);
            } else {
                run += 1;
            }
        }
        if run > 0 {
            out.push(run);
        }
        start += len;
    }
    out
}

/// Classes of a codepoint in llama.cpp's collapsed text, as the `gpt-4o` pattern tests them.
#[derive(Clone, Copy)]
struct Cls {
    inside: bool,
    letter: bool,
    number: bool,
    ws: bool,
    /// `((?=[\p{L}])([^a-z]))`: a letter that is not a-z.
    upper: bool,
    /// `((?=[\p{L}])([^A-Z]))`: a letter that is not A-Z.
    lower: bool,
}

impl Cls {
    const OUTSIDE: Cls = Cls {
        inside: false,
        letter: false,
        number: false,
        ws: false,
        upper: false,
        lower: false,
    };

    /// `[^\s\p{L}\p{N}]`
    #[inline]
    fn other(self) -> bool {
        self.inside && !self.ws && !self.letter && !self.number
    }
}

#[inline]
fn cls(c: char, f: CptFlags) -> Cls {
    let (letter, number, ws) = if (c as u32) < 128 {
        // ASCII is not collapsed; std::regex's `\s` is C `isspace`.
        (
            c.is_ascii_alphabetic(),
            c.is_ascii_digit(),
            matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'),
        )
    } else if f.is_whitespace() {
        (false, false, true)
    } else {
        (f.category == LETTER, f.category == NUMBER, false)
    };
    Cls {
        inside: true,
        letter,
        number,
        ws,
        upper: letter && !c.is_ascii_lowercase(),
        lower: letter && !c.is_ascii_uppercase(),
    }
}

/// The `gpt-4o` pattern ([`GPT4O_RE`]) on llama.cpp's collapsed classes, matched by hand with a
/// backtracking regex engine's leftmost-first, greedy semantics. The alternatives, in order, are
/// `P? U* W+ C?`, `P? U+ W* C?`, `N{1,3}`, ` ?O+[\r\n/]*`, `\s*[\r\n]+`, `\s+(?!\S)` and `\s+`,
/// where P = `[^\r\n\p{L}\p{N}]`, U / W = a letter not a-z / not A-Z, O = `[^\s\p{L}\p{N}]`
/// and C = `'s|'t|'re|'ve|'m|'ll|'d` (ASCII case-insensitive). Tested equal to the regex engine
/// on the same pattern (`gpt4o_hand_matcher_equals_regex`).
fn split_gpt4o(cpts: &[char], flags: &[CptFlags], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let mut k: Vec<Cls> = Vec::new();
    let mut start = 0usize;
    for &len in offsets {
        let seg = &cpts[start..start + len];
        k.clear();
        k.extend(
            seg.iter()
                .zip(&flags[start..start + len])
                .map(|(&c, &f)| cls(c, f)),
        );
        start += len;
        let at = |i: usize| k.get(i).copied().unwrap_or(Cls::OUTSIDE);
        let ch = |i: usize| seg.get(i).copied().unwrap_or('\0');
        let contraction = |i: usize| -> usize {
            if ch(i) != '\'' {
                return 0;
            }
            match (
                ch(i + 1).to_ascii_lowercase(),
                ch(i + 2).to_ascii_lowercase(),
            ) {
                ('s' | 't' | 'm' | 'd', _) => 2,
                ('r' | 'v', 'e') | ('l', 'l') => 3,
                _ => 0,
            }
        };
        // `U* W+` from q: U* greedy, then backtrack until W+ can start.
        let u_star_w_plus = |q: usize| -> Option<usize> {
            let mut j = q;
            while at(j).upper {
                j += 1;
            }
            loop {
                if at(j).lower {
                    let mut e = j;
                    while at(e).lower {
                        e += 1;
                    }
                    return Some(e);
                }
                if j == q {
                    return None;
                }
                j -= 1;
            }
        };
        // `U+ W*` from q.
        let u_plus_w_star = |q: usize| -> Option<usize> {
            let mut e = q;
            while at(e).upper {
                e += 1;
            }
            if e == q {
                return None;
            }
            while at(e).lower {
                e += 1;
            }
            Some(e)
        };
        let letters = |pos: usize, alt: &dyn Fn(usize) -> Option<usize>| -> Option<usize> {
            let c = at(pos);
            if !c.letter && !c.number && ch(pos) != '\r' && ch(pos) != '\n' {
                if let Some(e) = alt(pos + 1) {
                    return Some(e);
                }
            }
            alt(pos)
        };

        let mut pos = 0usize;
        let mut gap = 0usize; // positions where nothing matched (cannot happen; kept for fidelity)
        while pos < len {
            let c = at(pos);
            let m = if let Some(e) =
                letters(pos, &u_star_w_plus).or_else(|| letters(pos, &u_plus_w_star))
            {
                Some(e + contraction(e))
            } else if c.number {
                let mut e = pos + 1;
                while e < pos + 3 && at(e).number {
                    e += 1;
                }
                Some(e)
            } else if c.other() || (ch(pos) == ' ' && at(pos + 1).other()) {
                let mut e = if c.other() { pos } else { pos + 1 };
                while at(e).other() {
                    e += 1;
                }
                while matches!(ch(e), '\r' | '\n' | '/') {
                    e += 1;
                }
                Some(e)
            } else if c.ws {
                let mut e = pos;
                let mut last_crlf = None;
                while at(e).ws {
                    if matches!(ch(e), '\r' | '\n') {
                        last_crlf = Some(e);
                    }
                    e += 1;
                }
                Some(match last_crlf {
                    Some(r) => r + 1,                      // \s*[\r\n]+
                    None if e == len || e - pos == 1 => e, // \s+(?!\S) to the end, or \s+
                    None => e - 1,                         // \s+(?!\S)
                })
            } else {
                None
            };
            match m {
                Some(e) if e > pos => {
                    if gap > 0 {
                        out.push(gap);
                        gap = 0;
                    }
                    out.push(e - pos);
                    pos = e;
                }
                _ => {
                    gap += 1;
                    pos += 1;
                }
            }
        }
        if gap > 0 {
            out.push(gap);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_oneof, Just, Strategy};

    fn words(pre: &str, text: &str) -> Vec<String> {
        words_cfg(pre_config(pre).expect("known pre-tokenizer"), text)
    }

    fn words_cfg(cfg: PreConfig, text: &str) -> Vec<String> {
        let sp = Splitter::new(cfg.exprs).expect("compiles");
        let mut out = Vec::new();
        sp.split(text, &mut out);
        // Invariant: the words tile the text.
        let mut at = 0;
        for &(a, b) in &out {
            assert_eq!(a, at, "gap or overlap in split of {text:?}");
            assert!(b > a, "empty word in split of {text:?}");
            at = b;
        }
        assert_eq!(at, text.len());
        out.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    #[test]
    fn gpt2_splits() {
        assert_eq!(words("gpt-2", "Hello world"), ["Hello", " world"]);
        assert_eq!(
            words("gpt-2", "I'm don't  x"),
            ["I", "'m", " don", "'t", " ", " x"]
        );
        assert_eq!(words("gpt-2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(words("gpt-2", "x   "), ["x", "   "]);
        assert_eq!(words("gpt-2", "2048 3.14"), ["2048", " 3", ".", "14"]);
        assert_eq!(words("gpt-2", "a\n\n\nb"), ["a", "\n\n", "\n", "b"]);
        assert_eq!(words("gpt-2", "I'M"), ["I", "'", "M"]); // contractions are case-sensitive in gpt2
        assert_eq!(words("gpt-2", "héllo wörld"), ["héllo", " wörld"]);
        assert_eq!(words("gpt-2", "!!! ??"), ["!!!", " ??"]);
    }

    #[test]
    fn smollm_isolates_digits_first() {
        assert_eq!(words("smollm", "  2048"), ["  ", "2", "0", "4", "8"]);
        assert_eq!(
            words("smollm", "3.14159"),
            ["3", ".", "1", "4", "1", "5", "9"]
        );
        assert_eq!(words("smollm", "abc123def"), ["abc", "1", "2", "3", "def"]);
        assert_eq!(words("smollm", "x ²"), ["x", " ", "²"]);
        assert_eq!(
            words("smollm", "Hello, world!"),
            ["Hello", ",", " world", "!"]
        );
    }

    #[test]
    fn gpt4o_splits_like_llama_cpp() {
        // gpt-oss-spec.md §7.3's text; `[\r\n/]*` after a symbol run takes the newlines along.
        assert_eq!(
            words("gpt-4o", "Hello world! Café déjà vu — 123 4567 😊\n\n  x"),
            [
                "Hello",
                " world",
                "!",
                " Café",
                " déjà",
                " vu",
                " —",
                " ",
                "123",
                " ",
                "456",
                "7",
                " 😊\n\n",
                " ",
                " x"
            ]
        );
        assert_eq!(
            words("gpt-4o", "HTTPServer isOK"),
            ["HTTPServer", " is", "OK"]
        );
        assert_eq!(words("gpt-4o", "I'M you'RE"), ["I'M", " you'RE"]);
        assert_eq!(words("gpt-4o", "a/b//\n"), ["a", "/b", "//\n"]);
        assert_eq!(words("gpt-4o", "x \u{3000}y"), ["x", " ", "\u{3000}y"]);
        // Combining marks are not letters for the peer (tiktoken keeps "नमस्ते" whole).
        assert_eq!(words("gpt-4o", "नमस्ते"), ["नमस", "्त", "े"]);
    }

    #[test]
    fn o200k_splits_like_tiktoken() {
        let w = |t: &str| words_cfg(pre_config_tiktoken("gpt-4o").unwrap(), t);
        // Combining marks belong to words; case matters in every script.
        assert_eq!(w("नमस्ते"), ["नमस्ते"]);
        assert_eq!(w("ПРИВЕТмир"), ["ПРИВЕТмир"]);
        assert_eq!(w("приветМир"), ["привет", "Мир"]);
        assert_eq!(w("e\u{301}'S x"), ["e\u{301}'S", " x"]);
        assert_eq!(w("HTTPServer isOK"), ["HTTPServer", " is", "OK"]);
        assert_eq!(w("a/b//\n"), ["a", "/b", "//\n"]);
        assert!(pre_config_tiktoken("smollm").is_none());
        assert!(pre_config_tiktoken("llama4").unwrap().ignore_merges);
    }

    #[test]
    fn llama3_splits() {
        assert_eq!(
            words("llama-bpe", "I'M 12345  x\n\n y"),
            ["I", "'M", " ", "123", "45", " ", " x", "\n\n", " y"]
        );
    }

    #[test]
    fn collapse_regex_rewrites_classes() {
        assert_eq!(collapse_regex("\\p{N}"), "[\u{D1}0-9]");
        assert_eq!(collapse_regex("[^\\s\\p{L}]"), "[^\\s\u{D2}A-Za-z]");
        assert_eq!(collapse_regex("\\p{M}+"), "[\u{D4}]+");
    }

    fn split_with(sp: &Splitter, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        sp.split(text, &mut out);
        out
    }

    fn tricky_text() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("A"),
            Just("Z"),
            Just("a"),
            Just("z"),
            Just("É"),
            Just("é"),
            Just("中"),
            Just("ß"),
            Just("ǅ"),
            Just("\u{301}"),
            Just("\u{93f}"),
            Just("1"),
            Just("٣"),
            Just("²"),
            Just(" "),
            Just("  "),
            Just("\t"),
            Just("\n"),
            Just("\r"),
            Just("\r\n"),
            Just("\x0B"),
            Just("\u{3000}"),
            Just("\u{a0}"),
            Just("\u{85}"),
            Just("'"),
            Just("s"),
            Just("S"),
            Just("re"),
            Just("RE"),
            Just("ll"),
            Just("/"),
            Just("!"),
            Just("😊"),
            Just("\u{200d}"),
            Just("\u{378}"),
            Just("\x00"),
            Just("-"),
            Just("_"),
            Just("$"),
            Just("<|x|>"),
        ];
        prop_oneof![
            proptest::collection::vec(atoms, 0..40).prop_map(|v| v.concat()),
            any::<String>(),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]
        #[test]
        fn gpt4o_hand_matcher_equals_regex(text in tricky_text()) {
            let exprs = pre_config("gpt-4o").unwrap().exprs;
            let fast = Splitter::build(exprs, true).unwrap();
            let reference = Splitter::build(exprs, false).unwrap();
            proptest::prop_assert_eq!(split_with(&fast, &text), split_with(&reference, &text), "text {:?}", text);
        }

        #[test]
        fn o200k_split_tiles_the_text(text in tricky_text()) {
            // words_cfg asserts that the words are non-empty and tile the text.
            let w = words_cfg(pre_config_tiktoken("gpt-4o").unwrap(), &text);
            proptest::prop_assert_eq!(w.concat(), text);
        }

        #[test]
        fn smollm_hand_digit_split_equals_regex(text in tricky_text()) {
            let exprs = pre_config("smollm").unwrap().exprs;
            let fast = Splitter::build(exprs, true).unwrap();
            let reference = Splitter::build(exprs, false).unwrap();
            proptest::prop_assert_eq!(split_with(&fast, &text), split_with(&reference, &text), "text {:?}", text);
        }
    }

    #[test]
    fn every_known_pattern_compiles() {
        for name in ["default", "gpt-2", "smollm", "llama-bpe", "gpt-4o"] {
            Splitter::new(pre_config(name).unwrap().exprs).unwrap();
        }
        assert!(pre_config("no-such-pre").is_none());
    }
}

//! Byte-level BPE merges, as llama.cpp's `llm_tokenizer_bpe_session` runs them.
//!
//! A word (a piece from the pre-tokenizer) starts as one symbol per byte, each the byte-level
//! character of that byte. The adjacent pair whose merge has the lowest rank (index in
//! `tokenizer.ggml.merges`), leftmost on ties, is merged until no adjacent pair has a merge. Each
//! final symbol that is a token string emits that token; one that is not (possible only with
//! inconsistent vocabularies) emits the tokens of its single ASCII characters, like the peer.
//!
//! Strings are interned once at load: a *symbol id* below `n_vocab` is the token id of that
//! string (the last id if the vocabulary repeats a string, as llama.cpp's `token_to_id`), larger
//! ids name merge operands/results that are not tokens. The merge loop is a binary heap over
//! candidate pairs plus a doubly linked list of live symbols, so a word of n bytes costs
//! O(n log n) hash lookups and no string allocation.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::unicode::byte_to_char;

/// A small multiplicative hasher (FxHash) for the hot integer-keyed tables.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

const NONE: u32 = u32::MAX;

pub(crate) struct Bpe {
    n_vocab: u32,
    /// `(left << 32 | right)` → `(rank, merged symbol)`.
    merges: HashMap<u64, (u32, u32), FxBuild>,
    /// Symbol of each byte's byte-level character (`NONE` if that string occurs nowhere).
    byte_sym: [u32; 256],
    /// Texts of the symbols `>= n_vocab`.
    extra_text: Vec<Box<str>>,
}

/// Reusable buffers for [`Bpe::encode_word`].
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<std::cmp::Reverse<Cand>>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Cand {
    rank: u32,
    left: u32,
    right: u32,
    lsym: u32,
    rsym: u32,
}

impl Bpe {
    /// `token_to_id`: string → token id (last occurrence wins). `merges`: `"A B"` strings in rank order.
    pub fn new(n_vocab: usize, token_to_id: &HashMap<String, u32>, merges: &[String]) -> Bpe {
        let mut extra: HashMap<String, u32> = HashMap::new();
        let mut extra_text: Vec<Box<str>> = Vec::new();
        let n = n_vocab as u32;
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n + extra_text.len() as u32;
            extra.insert(s.to_string(), id);
            extra_text.push(s.into());
            id
        };

        let mut table: HashMap<u64, (u32, u32), FxBuild> =
            HashMap::with_capacity_and_hasher(merges.len(), FxBuild::default());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp: split at the first ' ' at byte index >= 1; a line without one can match nothing.
            let Some(pos) = m
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
            else {
                continue;
            };
            let (l, r) = (&m[..pos], &m[pos + 1..]);
            if l.is_empty() || r.is_empty() {
                continue;
            }
            let ls = intern(l);
            let rs = intern(r);
            let key = (u64::from(ls) << 32) | u64::from(rs);
            if table.contains_key(&key) {
                continue; // first rank wins (std::map::emplace)
            }
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            let js = intern(&joined);
            table.insert(key, (rank as u32, js));
        }

        let mut byte_sym = [NONE; 256];
        let mut buf = [0u8; 4];
        for (b, slot) in byte_sym.iter_mut().enumerate() {
            let s = byte_to_char(b as u8).encode_utf8(&mut buf);
            *slot = token_to_id
                .get(&*s)
                .copied()
                .or_else(|| extra.get(&*s).copied())
                .unwrap_or(NONE);
        }
        Bpe {
            n_vocab: n,
            merges: table,
            byte_sym,
            extra_text,
        }
    }

    #[inline]
    fn lookup(&self, l: u32, r: u32) -> Option<(u32, u32)> {
        if l == NONE || r == NONE {
            return None;
        }
        self.merges
            .get(&((u64::from(l) << 32) | u64::from(r)))
            .copied()
    }

    /// Merge the bytes of one word and append its token ids to `out`. `token_of_ascii` maps an
    /// ASCII byte to the token whose text is that single character (for the peer's fallback).
    pub fn encode_word(
        &self,
        word: &[u8],
        out: &mut Vec<u32>,
        sc: &mut Scratch,
        token_of_ascii: &[u32; 128],
    ) {
        match word.len() {
            0 => return,
            1 => {
                self.emit(self.byte_sym[word[0] as usize], out, token_of_ascii);
                return;
            }
            _ => {}
        }
        let syms = &mut sc.syms;
        syms.clear();
        let n = word.len() as u32;
        for (i, &b) in word.iter().enumerate() {
            let i = i as u32;
            syms.push(Sym {
                id: self.byte_sym[b as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                alive: true,
            });
        }
        let heap = &mut sc.heap;
        heap.clear();
        for i in 0..n - 1 {
            let (l, r) = (syms[i as usize].id, syms[i as usize + 1].id);
            if let Some((rank, _)) = self.lookup(l, r) {
                heap.push(std::cmp::Reverse(Cand {
                    rank,
                    left: i,
                    right: i + 1,
                    lsym: l,
                    rsym: r,
                }));
            }
        }
        while let Some(std::cmp::Reverse(c)) = heap.pop() {
            let (li, ri) = (c.left as usize, c.right as usize);
            let (ls, rs) = (syms[li], syms[ri]);
            if !ls.alive || !rs.alive || ls.next != c.right || ls.id != c.lsym || rs.id != c.rsym {
                continue; // outdated
            }
            let Some((_, merged)) = self.lookup(c.lsym, c.rsym) else {
                continue;
            };
            syms[li].id = merged;
            syms[li].next = rs.next;
            syms[ri].alive = false;
            if rs.next != NONE {
                syms[rs.next as usize].prev = c.left;
            }
            if ls.prev != NONE {
                let p = ls.prev;
                let pid = syms[p as usize].id;
                if let Some((rank, _)) = self.lookup(pid, merged) {
                    heap.push(std::cmp::Reverse(Cand {
                        rank,
                        left: p,
                        right: c.left,
                        lsym: pid,
                        rsym: merged,
                    }));
                }
            }
            if rs.next != NONE {
                let nx = rs.next;
                let nid = syms[nx as usize].id;
                if let Some((rank, _)) = self.lookup(merged, nid) {
                    heap.push(std::cmp::Reverse(Cand {
                        rank,
                        left: c.left,
                        right: nx,
                        lsym: merged,
                        rsym: nid,
                    }));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            self.emit(s.id, out, token_of_ascii);
            i = s.next;
        }
    }

    #[inline]
    fn emit(&self, sym: u32, out: &mut Vec<u32>, token_of_ascii: &[u32; 128]) {
        if sym < self.n_vocab {
            out.push(sym);
        } else if sym != NONE {
            // Not a token: the peer looks up each byte of the symbol's text as a one-byte token;
            // only ASCII bytes can name a (valid UTF-8) token.
            for &b in self.extra_text[(sym - self.n_vocab) as usize].as_bytes() {
                if b < 128 && token_of_ascii[b as usize] != NONE {
                    out.push(token_of_ascii[b as usize]);
                }
            }
        }
    }
}

pub(crate) const NO_TOKEN: u32 = NONE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::unicode::bytes_to_byte_level;

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    fn ascii_table(t2i: &HashMap<String, u32>) -> [u32; 128] {
        let mut t = [NONE; 128];
        for (b, slot) in t.iter_mut().enumerate() {
            if let Some(&id) = t2i.get(&(b as u8 as char).to_string()) {
                *slot = id;
            }
        }
        t
    }

    fn run(bpe: &Bpe, t2i: &HashMap<String, u32>, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(
            word.as_bytes(),
            &mut out,
            &mut Scratch::default(),
            &ascii_table(t2i),
        );
        out
    }

    #[test]
    fn merges_follow_rank_then_leftmost() {
        // a b c + merges by rank: "b c" (0), "a b" (1), "a bc" (2)
        let t2i = vocab(&["a", "b", "c", "bc", "ab", "abc"]);
        let merges: Vec<String> = ["b c", "a b", "a bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let bpe = Bpe::new(6, &t2i, &merges);
        assert_eq!(run(&bpe, &t2i, "abc"), [5]); // b+c first, then a+bc
        assert_eq!(run(&bpe, &t2i, "ab"), [4]);
        assert_eq!(run(&bpe, &t2i, "cab"), [2, 4]);
        assert_eq!(run(&bpe, &t2i, "bcbc"), [3, 3]);
        assert_eq!(run(&bpe, &t2i, "aaa"), [0, 0, 0]); // no "a a" merge
    }

    #[test]
    fn leftmost_pair_wins_for_same_merge() {
        let t2i = vocab(&["a", "aa"]);
        let bpe = Bpe::new(2, &t2i, &["a a".to_string()]);
        assert_eq!(run(&bpe, &t2i, "aaa"), [1, 0]);
        assert_eq!(run(&bpe, &t2i, "aaaa"), [1, 1]);
    }

    #[test]
    fn byte_level_symbols_and_missing_tokens() {
        let sp = bytes_to_byte_level(b" ");
        let t2i = vocab(&["x", &sp, &format!("{sp}x"), "y"]);
        let merges = vec![format!("{sp} x"), "x y".to_string()];
        let bpe = Bpe::new(4, &t2i, &merges);
        assert_eq!(run(&bpe, &t2i, " x"), [2]);
        // "xy" merges into a symbol that is no token: falls back to its ASCII characters.
        assert_eq!(run(&bpe, &t2i, "xy"), [0, 3]);
        // A byte whose character is not in the vocabulary yields nothing (like the peer).
        assert_eq!(run(&bpe, &t2i, "zx"), [0]);
    }

    #[test]
    fn first_duplicate_merge_keeps_its_rank() {
        let t2i = vocab(&["a", "b", "c", "ab", "bc"]);
        let merges: Vec<String> = ["a b", "b c", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let bpe = Bpe::new(5, &t2i, &merges);
        assert_eq!(run(&bpe, &t2i, "abc"), [3, 2]);
    }
}

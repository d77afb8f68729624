//! Codepoint classes as llama.cpp sees them, and the GPT-2 byte ↔ unicode mapping.
//!
//! llama.cpp does not use a regex engine's own Unicode tables: it classifies every codepoint with
//! the table in `unicode_data.rs` (one category per codepoint: undefined, number, letter,
//! separator, mark, punctuation, symbol, control; plus a whitespace bit). Both its hand-written
//! splitters and its "collapsed" std::regex path use these classes, so we do too; this is what
//! makes our splits equal to the peer's on any input, independent of the Unicode version Rust's
//! regex crate ships.

use super::unicode_data::{RANGES_FLAGS, WHITESPACE};
use std::sync::OnceLock;

/// Category bits (exactly one is set for a codepoint below U+110000; separator 0x08 and
/// control 0x80 complete the set).
pub(crate) const UNDEFINED: u8 = 0x01;
pub(crate) const NUMBER: u8 = 0x02;
pub(crate) const LETTER: u8 = 0x04;
#[cfg(test)]
pub(crate) const SEPARATOR: u8 = 0x08;
pub(crate) const MARK: u8 = 0x10;
pub(crate) const PUNCTUATION: u8 = 0x20;
pub(crate) const SYMBOL: u8 = 0x40;
#[cfg(test)]
pub(crate) const CONTROL: u8 = 0x80;

/// The flags of one codepoint. `CptFlags::NONE` (all clear) stands for "outside the text", the
/// value llama.cpp's splitters read past the end of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CptFlags {
    pub category: u8,
    pub whitespace: bool,
}

impl CptFlags {
    pub const NONE: CptFlags = CptFlags {
        category: 0,
        whitespace: false,
    };

    #[inline]
    pub fn is_letter(self) -> bool {
        self.category == LETTER
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.category == NUMBER
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.whitespace
    }
    /// llama.cpp's `as_uint() != 0`: true for every codepoint, false only for [`CptFlags::NONE`].
    #[inline]
    pub fn is_some(self) -> bool {
        self.category != 0 || self.whitespace
    }
}

const WS_BIT: u8 = 0x80;

/// Packed flags for the BMP: low 7 bits = log2(category) + 1, bit 7 = whitespace.
fn bmp_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 0x10000];
        for w in RANGES_FLAGS.windows(2) {
            let (start, flag) = w[0];
            let end = w[1].0.min(0x10000);
            if start >= 0x10000 {
                break;
            }
            let code = flag.trailing_zeros() as u8 + 1;
            for v in &mut t[start as usize..end as usize] {
                *v = code;
            }
        }
        for &c in WHITESPACE.iter() {
            if c < 0x10000 {
                t[c as usize] |= WS_BIT;
            }
        }
        t
    })
}

fn category_slow(cpt: u32) -> u8 {
    // Last range whose start is <= cpt.
    let idx = RANGES_FLAGS.partition_point(|&(start, _)| start <= cpt);
    if idx == 0 || idx >= RANGES_FLAGS.len() {
        return UNDEFINED; // >= U+110000: llama.cpp's `undef`
    }
    RANGES_FLAGS[idx - 1].1
}

/// The llama.cpp flags of codepoint `cpt`.
#[inline]
pub(crate) fn cpt_flags(cpt: u32) -> CptFlags {
    if cpt < 0x10000 {
        let v = bmp_table()[cpt as usize];
        CptFlags {
            category: 1u8 << ((v & 0x7F) - 1),
            whitespace: v & WS_BIT != 0,
        }
    } else {
        CptFlags {
            category: category_slow(cpt),
            whitespace: WHITESPACE.contains(&cpt),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// GPT-2 byte-level mapping
// ------------------------------------------------------------------------------------------------

const fn build_byte_to_cpt() -> [u32; 256] {
    let mut map = [0u32; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable =
            (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if printable {
            map[b] = b as u32;
        } else {
            map[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    map
}

/// Byte → codepoint of the GPT-2 byte-level alphabet (`' '` → `'Ġ'` U+0120, `'\n'` → `'Ċ'` U+010A).
pub(crate) const BYTE_TO_CPT: [u32; 256] = build_byte_to_cpt();

/// Highest codepoint used by the byte alphabet, plus one.
const ALPHABET_END: usize = 0x144;

const fn build_cpt_to_byte() -> [i16; ALPHABET_END] {
    let mut inv = [-1i16; ALPHABET_END];
    let mut b = 0usize;
    while b < 256 {
        inv[BYTE_TO_CPT[b] as usize] = b as i16;
        b += 1;
    }
    inv
}

const CPT_TO_BYTE: [i16; ALPHABET_END] = build_cpt_to_byte();

/// The byte-level character for byte `b`.
#[inline]
pub fn byte_to_char(b: u8) -> char {
    // Every entry is below U+0144, hence a valid scalar value.
    char::from_u32(BYTE_TO_CPT[b as usize]).unwrap_or('\u{FFFD}')
}

/// The byte that byte-level character `c` stands for, or `None` if `c` is not in the alphabet.
#[inline]
pub fn char_to_byte(c: char) -> Option<u8> {
    let i = c as usize;
    if i < ALPHABET_END && CPT_TO_BYTE[i] >= 0 {
        Some(CPT_TO_BYTE[i] as u8)
    } else {
        None
    }
}

/// Map raw bytes to their byte-level string (what GGUF `tokenizer.ggml.tokens` store).
pub fn bytes_to_byte_level(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_is_gpt2() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0x00), '\u{100}');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
        assert_eq!(byte_to_char(0xFF), 'ÿ');
        assert_eq!(byte_to_char(0x7F), '\u{121}');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "byte {b} maps to a duplicate char");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(bytes_to_byte_level(" hi\n".as_bytes()), "ĠhiĊ");
    }

    #[test]
    fn flags_follow_llama_cpp_tables() {
        assert!(cpt_flags('a' as u32).is_letter());
        assert!(cpt_flags('Z' as u32).is_letter());
        assert!(cpt_flags('7' as u32).is_number());
        assert!(cpt_flags(' ' as u32).is_whitespace());
        assert_eq!(cpt_flags(' ' as u32).category, SEPARATOR);
        assert!(cpt_flags('\n' as u32).is_whitespace());
        assert_eq!(cpt_flags('\n' as u32).category, CONTROL);
        assert!(!cpt_flags(0x1C).is_whitespace()); // unlike Python's str.isspace
        assert!(cpt_flags(0x85).is_whitespace());
        assert!(cpt_flags(0x3000).is_whitespace());
        assert_eq!(cpt_flags('.' as u32).category, PUNCTUATION);
        assert_eq!(cpt_flags('$' as u32).category, SYMBOL);
        assert_eq!(cpt_flags('é' as u32).category, LETTER);
        assert_eq!(cpt_flags(0x0301).category, MARK); // combining acute
        assert_eq!(cpt_flags('²' as u32).category, NUMBER);
        assert_eq!(cpt_flags('中' as u32).category, LETTER);
        assert_eq!(cpt_flags(0x1F600).category, SYMBOL); // 😀
        assert_eq!(cpt_flags(0x200D).category, CONTROL); // ZWJ is Cf
        assert_eq!(cpt_flags(0x0378).category, UNDEFINED); // unassigned
        assert_eq!(cpt_flags(0x10FFFF).category, UNDEFINED);
        assert_eq!(cpt_flags(0x110000).category, UNDEFINED);
        assert!(cpt_flags(0x0378).is_some());
        assert!(!CptFlags::NONE.is_some());
    }
}

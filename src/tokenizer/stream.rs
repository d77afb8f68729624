//! Incremental detokenization for streaming output.
//!
//! Tokens are byte sequences, and a multi-byte UTF-8 character is often split across tokens
//! (emoji, CJK). [`StreamDecoder`] buffers bytes and releases only complete text:
//! - a valid prefix is returned at once;
//! - an incomplete sequence at the end (at most 3 bytes) is held back until more bytes arrive;
//! - bytes that can never become valid UTF-8 are replaced by U+FFFD (one per invalid sequence, as
//!   `String::from_utf8_lossy` does), so the stream never stalls on bad input;
//! - [`StreamDecoder::finish`] flushes a dangling incomplete tail as U+FFFD.
//!
//! Invariant: the concatenation of everything returned by `push*` and `finish` equals
//! `String::from_utf8_lossy` of the concatenated input bytes.

use super::Tokenizer;

#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    render_special: bool,
}

impl StreamDecoder {
    /// `render_special`: write control/unknown tokens as their text (llama.cpp `special = true`);
    /// if false they produce no output, like `llama-cli` without `--special`.
    pub fn new(render_special: bool) -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            render_special,
        }
    }

    /// Add one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        let piece = tokenizer.token_piece(id, self.render_special);
        self.push_bytes(piece)
    }

    /// Add raw bytes; returns the text that became complete (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0usize;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The prefix up to `valid` is UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid + bad;
                        }
                        None => {
                            start = valid; // incomplete tail: keep it
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Bytes held back (an incomplete UTF-8 sequence).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// End of stream: returns the held-back bytes, lossily (U+FFFD), and resets.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_multibyte_chars() {
        let mut d = StreamDecoder::new(false);
        let smile = "😊".as_bytes(); // 4 bytes
        assert_eq!(d.push_bytes(b"hi "), "hi ");
        assert_eq!(d.push_bytes(&smile[..1]), "");
        assert_eq!(d.push_bytes(&smile[1..3]), "");
        assert_eq!(d.pending().len(), 3);
        assert_eq!(d.push_bytes(&[smile[3], b'!']), "😊!");
        assert!(d.pending().is_empty());
        let e = "é".as_bytes();
        assert_eq!(d.push_bytes(&[b'a', e[0]]), "a");
        assert_eq!(d.push_bytes(&e[1..]), "é");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut d = StreamDecoder::new(false);
        assert_eq!(d.push_bytes(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        // A lead byte followed by a non-continuation byte is invalid, not pending.
        assert_eq!(d.push_bytes(&[0xE2, b'x']), "\u{FFFD}x");
        assert_eq!(d.push_bytes(&[0xF0, 0x9F]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert!(d.pending().is_empty());
    }

    #[test]
    fn output_equals_lossy_decoding_of_the_whole() {
        let data: Vec<u8> = "añ😊中\u{10FFFF}z"
            .bytes()
            .chain([0xC3, 0x28, 0xF0, 0x9F, 0x98])
            .collect();
        for chunk in 1..=5 {
            let mut d = StreamDecoder::new(false);
            let mut got = String::new();
            for c in data.chunks(chunk) {
                got.push_str(&d.push_bytes(c));
            }
            got.push_str(&d.finish());
            assert_eq!(got, String::from_utf8_lossy(&data), "chunk size {chunk}");
        }
    }
}

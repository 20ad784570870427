//! Streaming detokenizer: ids in, UTF-8-safe text pieces out.

use super::Tokenizer;
use crate::error::Result;

/// Turns ids into text pieces as they arrive. A character whose bytes are split across
/// tokens (byte-fallback pieces, byte-level fragments of an emoji) is held back until it
/// is complete, so no U+FFFD appears mid-stream; bytes that can never become valid UTF-8
/// come out as U+FFFD at once. Special tokens are skipped unless [`StreamDecoder::keep_special`].
///
/// Unlike [`Tokenizer::decode`], the leading space of a SentencePiece continuation is kept:
/// the stream continues a prompt, so `"▁Max"` after `"named"` is `" Max"`.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    /// Bytes of an incomplete character, at most 3.
    pending: Vec<u8>,
    /// Everything emitted so far.
    text: String,
    keep_special: bool,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder with nothing emitted yet, skipping special tokens.
    pub fn new() -> Self {
        Self { pending: Vec::new(), text: String::new(), keep_special: false }
    }

    /// Emit special tokens' text (e.g. `<|im_end|>`) instead of skipping them.
    pub fn keep_special(mut self, keep: bool) -> Self {
        self.keep_special = keep;
        self
    }

    /// Add one id; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        let piece = tok.piece(id)?;
        if piece.special && !self.keep_special {
            return Ok(String::new());
        }
        self.pending.extend_from_slice(&piece.bytes);
        let out = take_complete(&mut self.pending);
        self.text.push_str(&out);
        Ok(out)
    }

    /// End of stream: whatever is still held back, incomplete characters as U+FFFD.
    pub fn finish(&mut self, _tok: &Tokenizer) -> Result<String> {
        Ok(self.flush())
    }

    /// [`StreamDecoder::finish`] where no tokenizer is at hand (it needs none).
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.text.push_str(&out);
        out
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Forget everything (a new generation).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.text.clear();
    }
}

/// Take the longest prefix of `buf` that is text now, leaving an incomplete trailing
/// character in `buf`. Invalid bytes become U+FFFD.
fn take_complete(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` is valid UTF-8 by construction.
                out.push_str(&String::from_utf8_lossy(good));
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &bad[n..];
                    }
                    // An incomplete character at the end: wait for more bytes.
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let start = buf.len() - keep;
    buf.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::take_complete;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let emoji = "🐱".as_bytes(); // 4 bytes
        let mut buf = b"a".to_vec();
        buf.push(emoji[0]);
        assert_eq!(take_complete(&mut buf), "a");
        buf.extend_from_slice(&emoji[1..3]);
        assert_eq!(take_complete(&mut buf), "");
        buf.push(emoji[3]);
        assert_eq!(take_complete(&mut buf), "🐱");
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_bytes_do_not_block_the_stream() {
        let mut buf = vec![0xFF, b'x', 0xE2, 0x82];
        assert_eq!(take_complete(&mut buf), "\u{FFFD}x");
        assert_eq!(buf, vec![0xE2, 0x82]);
        buf.push(0xAC);
        assert_eq!(take_complete(&mut buf), "€");
    }
}

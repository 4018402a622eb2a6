//! Streaming detokenization: token bytes in, complete UTF-8 text out.
//!
//! A token may end in the middle of a multi-byte character (byte-fallback tokens, byte-level
//! BPE pieces of emoji). [`TextStream`] holds such a tail back until the character completes,
//! so a consumer never sees half a character; invalid sequences come out as U+FFFD.

/// Accumulates token bytes and releases only whole characters.
#[derive(Default, Debug, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // SAFETY-free: `good` bytes are valid UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // An invalid sequence: replace it and carry on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Releases whatever is held back (as U+FFFD if it never completed).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_emits_half_a_character() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut s = TextStream::new();
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'a']), "€a");
        assert_eq!(s.push(&[0xF0, 0x9F]), "");
        assert_eq!(s.push(&[0x98, 0x80, b'!']), "😀!");
        assert_eq!(s.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(s.push(&[0xE2]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}

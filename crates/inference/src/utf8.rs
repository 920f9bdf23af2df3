//! Token bytes to text without splitting a character: a token may end in the middle of a UTF-8
//! sequence (byte-fallback tokens, emoji), so bytes wait here until their character is whole.

/// Collects token bytes and hands out the longest whole-character prefix.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and appends every complete character to `out`. A byte sequence that can never be
    /// valid UTF-8 becomes U+FFFD; an incomplete one at the end waits for the next call.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes from `at` are UTF-8 by the check above.
                    out.push_str(&String::from_utf8_lossy(&self.pending[at..at + valid]));
                    at += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            at += bad;
                        }
                        None => break, // an incomplete character at the end: keep it
                    }
                }
            }
        }
        self.pending.drain(..at);
    }

    /// Ends the stream: what is still pending can no longer become a character.
    pub(crate) fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        let bytes = "é🙂x".as_bytes();
        let mut s = Utf8Stream::default();
        let mut pieces = Vec::new();
        for b in bytes {
            let mut out = String::new();
            s.push(&[*b], &mut out);
            pieces.push(out);
        }
        assert_eq!(pieces.concat(), "é🙂x");
        assert_eq!(pieces.iter().filter(|p| !p.is_empty()).count(), 3);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_the_rest_goes_on() {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        s.push(b"a\xffb\xe2\x82", &mut out);
        assert_eq!(out, "a\u{fffd}b");
        s.finish(&mut out);
        assert_eq!(out, "a\u{fffd}b\u{fffd}");
    }
}

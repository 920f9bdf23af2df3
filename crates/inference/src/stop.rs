//! Stop sequences over streamed text: text is released only once no stop sequence can still begin
//! in it, so a stop sequence is never sent to the caller, even in part.

#[derive(Debug)]
pub(crate) struct StopText {
    stops: Vec<String>,
    held: String,
}

/// What [`StopText::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Text that can be released (may be empty).
    Text(String),
    /// A stop sequence was found: the text before it, and generation ends.
    Stop(String),
}

impl StopText {
    pub(crate) fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> Seen {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return Seen::Text(std::mem::take(&mut self.held));
        }
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return Seen::Stop(before);
        }
        // Hold back the longest tail of `held` that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_tail_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Seen::Text(out)
    }

    /// The generation ended without a stop sequence: what was held back is text after all.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, on a character
/// boundary of `text`.
fn longest_tail_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.as_bytes().starts_with(&text.as_bytes()[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match s.push(p) {
                Seen::Text(t) => out.push_str(&t),
                Seen::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_sequence_across_pieces_is_cut_and_never_sent() {
        assert_eq!(run(&["END"], &["abc E", "N", "D tail"]), ("abc ".into(), true));
        assert_eq!(
            run(&["\n\n", "###"], &["one\n", "two##", "#x"]),
            ("one\ntwo".into(), true)
        );
    }

    #[test]
    fn held_text_is_released_when_it_cannot_start_a_stop() {
        let mut s = StopText::new(vec!["END".into()]);
        assert_eq!(s.push("xE"), Seen::Text("x".into()));
        assert_eq!(s.push("x"), Seen::Text("Ex".into()));
        assert_eq!(run(&["END"], &["E", "N"]), ("EN".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        assert_eq!(run(&["éé"], &["aé", "b"]), ("aéb".into(), false));
        assert_eq!(run(&["éé"], &["aé", "é"]), ("a".into(), true));
    }
}

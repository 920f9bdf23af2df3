//! `sky-text`: deterministic transformations of a prompt. `seed` only matters for mode "words" (a
//! seeded shuffle of the words); without it the seed is derived from the prompt.

use serde_json::Value;

use super::params::{fnv1a, optional_str, required_str, seed_or, truncate_chars, Rng};
use crate::control::{Control, ModelError};
use crate::Output;

pub(crate) const MODES: [&str; 6] = ["reverse", "upper", "lower", "title", "words", "rot13"];

pub(super) fn run(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    let prompt = truncate_chars(required_str(input, "prompt")?, 10_000);
    let mode = optional_str(input, "mode").unwrap_or("title");
    let seed = seed_or(input, fnv1a(prompt.as_bytes()));
    ctl.checkpoint()?;
    let out = match mode {
        "reverse" => prompt.chars().rev().collect(),
        "upper" => prompt.to_uppercase(),
        "lower" => prompt.to_lowercase(),
        "title" => title_case(prompt),
        "words" => shuffle_words(prompt, seed),
        "rot13" => prompt.chars().map(rot13).collect(),
        other => {
            return Err(ModelError::Failed(format!(
                "input.mode {other:?} is not one of {}",
                MODES.join(", ")
            )))
        }
    };
    ctl.progress(100);
    Ok(Output::Text(out))
}

/// Upper-cases the first letter of every whitespace-separated word and lower-cases the rest, keeping the
/// whitespace as it was.
fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_start = true;
    for c in s.chars() {
        if c.is_whitespace() {
            out.push(c);
            at_start = true;
        } else if at_start {
            out.extend(c.to_uppercase());
            at_start = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The words in a seeded order (Fisher-Yates), joined by single spaces.
fn shuffle_words(s: &str, seed: u64) -> String {
    let mut words: Vec<&str> = s.split_whitespace().collect();
    let mut rng = Rng::new(seed);
    for i in (1..words.len()).rev() {
        words.swap(i, rng.below(i + 1));
    }
    words.join(" ")
}

fn rot13(c: char) -> char {
    match c {
        'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
        'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
        _ => c,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::NullControl;

    fn text(input: Value) -> String {
        match run(&input, &NullControl).unwrap() {
            Output::Text(s) => s,
            Output::Files(_) => String::new(),
        }
    }

    #[test]
    fn modes() {
        let p = "hello WORLD  of Rust";
        assert_eq!(text(json!({"prompt": p})), "Hello World  Of Rust");
        assert_eq!(
            text(json!({"prompt": p, "mode": "reverse"})),
            "tsuR fo  DLROW olleh"
        );
        assert_eq!(
            text(json!({"prompt": p, "mode": "upper"})),
            "HELLO WORLD  OF RUST"
        );
        assert_eq!(
            text(json!({"prompt": p, "mode": "lower"})),
            "hello world  of rust"
        );
        assert_eq!(
            text(json!({"prompt": "Hello, World!", "mode": "rot13"})),
            "Uryyb, Jbeyq!"
        );
        assert_eq!(text(json!({"prompt": "ÿé x", "mode": "title"})), "Ÿé X");
        assert!(matches!(
            run(&json!({"prompt": "x", "mode": "nope"}), &NullControl),
            Err(ModelError::Failed(_))
        ));
    }

    #[test]
    fn words_are_a_seeded_permutation() {
        let p = "one two three four five six seven eight nine ten";
        let a = text(json!({"prompt": p, "mode": "words", "seed": 1}));
        let b = text(json!({"prompt": p, "mode": "words", "seed": 1}));
        let c = text(json!({"prompt": p, "mode": "words", "seed": 2}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted: Vec<&str> = a.split(' ').collect();
        sorted.sort_unstable();
        let mut want: Vec<&str> = p.split(' ').collect();
        want.sort_unstable();
        assert_eq!(sorted, want);
        assert_eq!(text(json!({"prompt": "   ", "mode": "words"})), "");
    }
}

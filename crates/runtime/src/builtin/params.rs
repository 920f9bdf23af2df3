//! Reading model inputs leniently (schema defaults for missing fields, clamping for out-of-range ones)
//! and the small deterministic hash/PRNG every model seeds from.

use serde_json::Value;

use crate::control::ModelError;

/// A required string field; `Failed` naming the field when it is missing or not a string.
pub(crate) fn required_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, ModelError> {
    optional_str(input, key)
        .ok_or_else(|| ModelError::Failed(format!("input.{key} is required and must be a string")))
}

pub(crate) fn optional_str<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

/// An integer field: `default` when missing or not a number, rounded, clamped to `min..=max`.
pub(crate) fn int_or(input: &Value, key: &str, default: i64, min: i64, max: i64) -> i64 {
    let v = match input.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.round() as i64)),
        _ => None,
    };
    v.unwrap_or(default).clamp(min, max)
}

/// A number field: `default` when missing or not a finite number, clamped to `min..=max`.
pub(crate) fn num_or(input: &Value, key: &str, default: f64, min: f64, max: f64) -> f64 {
    input
        .get(key)
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite())
        .unwrap_or(default)
        .clamp(min, max)
}

/// The `seed` field as a u64, or `fallback` when missing. Negative or fractional seeds still map to a
/// fixed value rather than failing.
pub(crate) fn seed_or(input: &Value, fallback: u64) -> u64 {
    match input.get("seed") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .or_else(|| n.as_f64().map(|f| f.to_bits()))
            .unwrap_or(fallback),
        _ => fallback,
    }
}

/// At most `max` chars of `s` (on a char boundary).
pub(crate) fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// FNV-1a 64: a stable hash for deriving default seeds from prompts (not `DefaultHasher`, whose output
/// may change between Rust releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's output function: a good 64-bit mixer for combining seeds.
pub(crate) fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(GAMMA))
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: small, fast, fully determined by its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        finalize(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (n > 0); the tiny modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lenient_numbers() {
        let v = json!({"a": 5, "b": 5000, "c": -3, "d": 2.6, "e": "x", "f": 1e300, "g": u64::MAX});
        assert_eq!(int_or(&v, "a", 1, 1, 10), 5);
        assert_eq!(int_or(&v, "b", 1, 1, 10), 10);
        assert_eq!(int_or(&v, "c", 1, 1, 10), 1);
        assert_eq!(int_or(&v, "d", 1, 1, 10), 3);
        assert_eq!(int_or(&v, "e", 7, 1, 10), 7);
        assert_eq!(int_or(&v, "f", 7, 1, 10), 10);
        assert_eq!(int_or(&v, "g", 7, 1, 10), 10);
        assert_eq!(int_or(&v, "missing", 7, 1, 10), 7);
        assert_eq!(num_or(&v, "d", 1.0, 0.0, 2.0), 2.0);
        assert_eq!(num_or(&v, "e", 1.5, 0.0, 2.0), 1.5);
    }

    #[test]
    fn seeds() {
        assert_eq!(seed_or(&json!({"seed": 42}), 7), 42);
        assert_eq!(seed_or(&json!({}), 7), 7);
        assert_eq!(seed_or(&json!({"seed": "x"}), 7), 7);
        assert_ne!(seed_or(&json!({"seed": -1}), 7), 7);
        assert_ne!(seed_or(&json!({"seed": 1.5}), 7), 7);
    }

    #[test]
    fn truncation_is_char_safe() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(1);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut r = Rng::new(2);
        assert_ne!(a[0], r.next_u64());
        let mut r = Rng::new(3);
        assert!((0..1000).map(|_| r.next_f32()).all(|f| (0.0..1.0).contains(&f)));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}

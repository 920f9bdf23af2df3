//! Base62 (`0-9A-Za-z`) helpers used by credential and id formats.

use ring::rand::{SecureRandom, SystemRandom};

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether every byte is in the base62 alphabet.
pub fn is_base62(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_alphanumeric)
}

/// `n` uniformly random base62 characters from the OS CSPRNG (rejection sampling, no modulo bias).
/// Fails only if the OS random source fails.
pub fn random(n: usize) -> Result<String, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill(&mut buf)?;
        for b in buf {
            // 248 = 4 * 62: values at or above it would bias the low characters.
            if b < 248 && out.len() < n {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// `v` as exactly `out.len()` base62 digits into `out`, most significant first, zero-padded (the
/// higher digits of a `v` too large for the width are dropped).
pub fn encode_into(mut v: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_encoding_pads_and_orders() {
        let fixed = |v: u64, width: usize| {
            let mut out = vec![0u8; width];
            encode_into(v, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(fixed(0, 6), "000000");
        assert_eq!(fixed(61, 2), "0z");
        assert_eq!(fixed(62, 2), "10");
        assert_eq!(fixed(u64::from(u32::MAX), 6), "4gfFC3");
    }

    #[test]
    fn random_is_base62_and_varied() {
        let a = random(32).unwrap();
        let b = random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(is_base62(a.as_bytes()));
        assert_ne!(a, b);
    }
}

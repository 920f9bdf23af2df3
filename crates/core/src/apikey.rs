//! API key format and hashing.
//!
//! Format: `sk_live_` or `sk_test_`, then 32 random base62 characters (≈190 bits), then 6 base62
//! characters encoding the CRC-32 of everything before them. The checksum lets secret scanners and the
//! server reject typos and truncations without a lookup; it carries no secret.
//!
//! The server stores only `HMAC-SHA256(pepper, key)`. The pepper never lives in the database, so a stolen
//! database cannot be used to test guesses offline. [`KeyHasher`] is the one small interface behind which
//! the pepper sits; the server derives it from the key provider at start (inside the HSM with PKCS#11).

use std::fmt;

use ring::hmac;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::base62;
use crate::records::Mode;
use crate::secret::SecretString;

pub const LIVE_PREFIX: &str = "sk_live_";
pub const TEST_PREFIX: &str = "sk_test_";
const PREFIX_LEN: usize = 8;
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = PREFIX_LEN + RANDOM_LEN + CHECKSUM_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("an API key is {KEY_LEN} characters long")]
    Length,
    #[error("an API key starts with sk_live_ or sk_test_")]
    Prefix,
    #[error("an API key has only letters and digits after its prefix")]
    Alphabet,
    #[error("the API key's checksum does not match (mistyped or truncated?)")]
    Checksum,
}

/// A well-formed API key. Holds the secret: redacted in `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    secret: SecretString,
    mode: Mode,
}

/// The base62 checksum characters of a key's prefix and random part.
fn checksum(head: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut sum = [b'0'; CHECKSUM_LEN];
    base62::encode_into(u64::from(crc32fast::hash(head)), &mut sum);
    sum
}

impl ApiKey {
    /// A new random key for `mode`. Fails only if the OS random source fails.
    pub fn generate(mode: Mode) -> Result<Self, ring::error::Unspecified> {
        let prefix = match mode {
            Mode::Live => LIVE_PREFIX,
            Mode::Test => TEST_PREFIX,
        };
        let mut s = String::with_capacity(KEY_LEN);
        s.push_str(prefix);
        s.push_str(&base62::random(RANDOM_LEN)?);
        let sum = checksum(s.as_bytes());
        s.extend(sum.iter().copied().map(char::from));
        Ok(ApiKey {
            secret: SecretString::new(s),
            mode,
        })
    }

    /// Checks length, prefix, alphabet and checksum. Constant work for every input of the right length
    /// (no early exit inside the character checks); anything else is refused on length alone.
    pub fn parse(raw: &str) -> Result<Self, KeyFormatError> {
        let mode = Self::check(raw)?;
        Ok(ApiKey {
            secret: SecretString::new(raw),
            mode,
        })
    }

    /// [`ApiKey::parse`]'s checks alone, without copying the key: its mode when it is well formed.
    pub fn check(raw: &str) -> Result<Mode, KeyFormatError> {
        let b = raw.as_bytes();
        if b.len() != KEY_LEN {
            return Err(KeyFormatError::Length);
        }
        let mode = match &b[..PREFIX_LEN] {
            p if p == LIVE_PREFIX.as_bytes() => Mode::Live,
            p if p == TEST_PREFIX.as_bytes() => Mode::Test,
            _ => return Err(KeyFormatError::Prefix),
        };
        let alphabet_ok = b[PREFIX_LEN..]
            .iter()
            .fold(true, |ok, c| ok & c.is_ascii_alphanumeric());
        let (head, sum) = b.split_at(PREFIX_LEN + RANDOM_LEN);
        let sum_ok = checksum(head) == sum;
        match (alphabet_ok, sum_ok) {
            (true, true) => Ok(mode),
            (false, _) => Err(KeyFormatError::Alphabet),
            (true, false) => Err(KeyFormatError::Checksum),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `sk_live_` or `sk_test_`: safe to display.
    pub fn prefix(&self) -> &str {
        &self.secret.expose()[..PREFIX_LEN]
    }

    /// The last 4 characters (checksum characters, so they reveal nothing of the random part).
    pub fn last4(&self) -> &str {
        &self.secret.expose()[KEY_LEN - 4..]
    }

    /// The whole key. Only the creation path (to show it once) and the hasher call this.
    pub fn expose(&self) -> &str {
        self.secret.expose()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…{})", self.prefix(), self.last4())
    }
}

/// Computes the keyed lookup hash of a credential. Implemented by the pepper holder.
pub trait KeyHasher: Send + Sync {
    fn hash(&self, credential: &[u8]) -> [u8; 32];
}

/// Whether two credential hashes are equal, in constant time: compared as four 64-bit words (one
/// optimisation barrier each, where a byte-wise `ct_eq` has 32).
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let word = |h: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(h.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
        u64::from_ne_bytes(w)
    };
    let eq = (0..4).fold(subtle::Choice::from(1), |acc, i| {
        acc & word(a, i).ct_eq(&word(b, i))
    });
    bool::from(eq)
}

/// 32 secret bytes used as the HMAC-SHA256 key for credential hashes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pepper {
    bytes: [u8; 32],
    #[zeroize(skip)]
    key: hmac::Key,
}

impl Pepper {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        Pepper { bytes, key }
    }
}

impl KeyHasher for Pepper {
    fn hash(&self, credential: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, credential);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_compare_equal_only_when_every_byte_is() {
        let a = [7u8; 32];
        assert!(hashes_equal(&a, &a.clone()));
        for i in 0..32 {
            for bit in [0x01u8, 0x80] {
                let mut b = a;
                b[i] ^= bit;
                assert!(!hashes_equal(&a, &b), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn generated_keys_parse_and_have_mode() {
        for mode in [Mode::Live, Mode::Test] {
            let k = ApiKey::generate(mode).unwrap();
            assert_eq!(k.expose().len(), KEY_LEN);
            let p = ApiKey::parse(k.expose()).unwrap();
            assert_eq!(p.mode(), mode);
            assert_eq!(p, k);
        }
        assert!(ApiKey::generate(Mode::Test)
            .unwrap()
            .expose()
            .starts_with("sk_test_"));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let k = ApiKey::generate(Mode::Live).unwrap();
        let s = k.expose().to_owned();
        for i in PREFIX_LEN..KEY_LEN {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let t = String::from_utf8(b).unwrap();
            assert!(ApiKey::parse(&t).is_err(), "typo at {i} accepted");
        }
    }

    #[test]
    fn malformed_keys_are_refused_with_reason() {
        let k = ApiKey::generate(Mode::Live).unwrap();
        let s = k.expose();
        assert_eq!(ApiKey::parse(""), Err(KeyFormatError::Length));
        assert_eq!(ApiKey::parse(&s[..KEY_LEN - 1]), Err(KeyFormatError::Length));
        assert_eq!(
            ApiKey::parse(&s.replace("sk_live_", "sk_prod_")),
            Err(KeyFormatError::Prefix)
        );
        let bad = format!("{}é{}", &s[..10], &s[12..]);
        assert_eq!(bad.len(), KEY_LEN);
        assert!(ApiKey::parse(&bad).is_err());
        assert_eq!(ApiKey::parse(&"x".repeat(10_000)), Err(KeyFormatError::Length));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = ApiKey::generate(Mode::Live).unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains(&k.expose()[8..40]), "{d}");
        assert!(d.contains(k.last4()));
    }

    #[test]
    fn hash_is_keyed() {
        let a = Pepper::from_bytes([1; 32]);
        let b = Pepper::from_bytes([2; 32]);
        assert_ne!(a.hash(b"sk_live_x"), b.hash(b"sk_live_x"));
        assert_eq!(a.hash(b"sk_live_x"), a.hash(b"sk_live_x"));
        assert!(!format!("{a:?}").contains('1'));
    }
}

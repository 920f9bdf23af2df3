//! Console passwords: the policy a new password must meet, and argon2id hashing.
//!
//! Policy: at least 12 characters (and at most 256), not one of the ~20,000 most common passwords
//! (a list bundled in the binary, `data/common-passwords.txt`, from Django's), not a common password
//! with digits or symbols tacked on (`sunshine2024!`), and not the account's own email.
//!
//! Hashing: argon2id with m = 19,456 KiB, t = 2, p = 1 (OWASP's minimum), a 16-byte random salt, stored
//! as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`). [`PasswordHasher::verify_or_dummy`] runs one
//! full verification whether or not the account exists, against a dummy hash made at start, so a login
//! takes the same time for an unknown email as for a wrong password. Each call costs tens of
//! milliseconds of one core: the server runs them on a bounded blocking pool, never on the async
//! threads.

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};

use crate::SecretString;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 256;
/// argon2id memory cost in KiB.
pub const M_COST: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

const COMMON: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON.lines().filter(|l| !l.is_empty()).collect())
}

/// Why a new password was refused. The messages are shown to the user as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a password needs at least {MIN_CHARS} characters")]
    TooShort,
    #[error("a password has at most {MAX_CHARS} characters")]
    TooLong,
    #[error("this password is on the list of commonly used passwords; choose another")]
    Common,
    #[error("a password must not contain your email address")]
    ContainsEmail,
}

/// Checks a new password for the account `email` (already normalised).
pub fn check_policy(password: &str, email: &str) -> Result<(), PolicyError> {
    let n = password.chars().count();
    if n < MIN_CHARS {
        return Err(PolicyError::TooShort);
    }
    if n > MAX_CHARS {
        return Err(PolicyError::TooLong);
    }
    let lower = password.to_lowercase();
    let set = common();
    if set.contains(lower.as_str()) {
        return Err(PolicyError::Common);
    }
    // A common word with a suffix of digits and symbols is as guessable as the word.
    let stem = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    if stem.chars().count() >= 4 && set.contains(stem) {
        return Err(PolicyError::Common);
    }
    let local = email.split('@').next().unwrap_or("");
    if !email.is_empty() && (lower.contains(email) || (local.chars().count() >= 4 && lower.contains(local))) {
        return Err(PolicyError::ContainsEmail);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the system random source failed")]
    Random,
    #[error("password hashing failed: {0}")]
    Argon(String),
    /// The hashing threads are gone (or the task ended without an answer).
    #[error("the password hashing threads are unavailable")]
    Unavailable,
}

/// argon2id with the fixed parameters, and the dummy hash for unknown accounts.
pub struct PasswordHasher {
    argon: Argon2<'static>,
    dummy: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHasher(argon2id m=19456 t=2 p=1)")
    }
}

impl PasswordHasher {
    /// Builds the hasher and its dummy hash (one hash of a random password: ~tens of ms).
    pub fn new() -> Result<Self, HashError> {
        let params =
            Params::new(M_COST, T_COST, P_COST, None).map_err(|e| HashError::Argon(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut filler = [0u8; 32];
        SystemRandom::new()
            .fill(&mut filler)
            .map_err(|_| HashError::Random)?;
        let mut me = PasswordHasher {
            argon,
            dummy: String::new(),
        };
        me.dummy = me.hash_bytes(&filler)?;
        Ok(me)
    }

    fn hash_bytes(&self, pw: &[u8]) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| HashError::Random)?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Argon(e.to_string()))?;
        self.argon
            .hash_password(pw, &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError::Argon(e.to_string()))
    }

    /// The PHC string for a new password (which the caller checked against the policy).
    pub fn hash(&self, password: &SecretString) -> Result<String, HashError> {
        self.hash_bytes(password.expose().as_bytes())
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown account, or no password set
    /// yet), the same work is done against the dummy hash and the answer is false. A stored hash that
    /// does not parse counts as a mismatch.
    pub fn verify_or_dummy(&self, password: &SecretString, stored: Option<&str>) -> bool {
        let (phc, real) = match stored {
            Some(s) => (s, true),
            None => (self.dummy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            // Still spend the time, so a corrupt row is not a timing oracle either.
            let _ = self.argon.verify_password(
                password.expose().as_bytes(),
                &match PasswordHash::new(&self.dummy) {
                    Ok(p) => p,
                    Err(_) => return false,
                },
            );
            return false;
        };
        let ok = self
            .argon
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok();
        ok && real
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_long_common_and_email() {
        let email = "dana.scully@example.com";
        assert_eq!(check_policy("short-pw", email), Err(PolicyError::TooShort));
        assert_eq!(check_policy(&"x".repeat(257), email), Err(PolicyError::TooLong));
        // On the bundled list (12+ characters), whatever the case.
        for common in ["qwerty123456", "1q2w3e4r5t6y", "Q1W2E3R4T5Y6"] {
            assert_eq!(check_policy(common, email), Err(PolicyError::Common), "{common}");
        }
        // A common word with a suffix.
        assert_eq!(check_policy("sunshine2024!!", email), Err(PolicyError::Common));
        assert_eq!(check_policy("Password123456", email), Err(PolicyError::Common));
        assert_eq!(
            check_policy("dana.scully@example.com1", email),
            Err(PolicyError::ContainsEmail)
        );
        assert_eq!(
            check_policy("my dana.scully pw", email),
            Err(PolicyError::ContainsEmail)
        );
        // Counted in characters, not bytes.
        assert_eq!(check_policy("ééééééééééé", email), Err(PolicyError::TooShort));
        check_policy("correct horse battery staple", email).unwrap();
        check_policy("lighthouse-at-dusk-42", email).unwrap();
        assert!(common().len() > 19_000);
    }

    #[test]
    fn argon2id_with_the_fixed_parameters_round_trips() {
        let h = PasswordHasher::new().unwrap();
        let pw = SecretString::new("correct horse battery staple");
        let phc = h.hash(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify_or_dummy(&pw, Some(&phc)));
        assert!(!h.verify_or_dummy(&SecretString::new("correct horse battery stapler"), Some(&phc)));
        // Salted: the same password hashes differently each time.
        assert_ne!(h.hash(&pw).unwrap(), phc);
        // No stored hash, or a corrupt one: false, never an error.
        assert!(!h.verify_or_dummy(&pw, None));
        assert!(!h.verify_or_dummy(&pw, Some("not a phc string")));
        assert!(!format!("{h:?}").contains("argon2id$"));
    }
}

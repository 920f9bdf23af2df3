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

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

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

/// The largest stored parameters a verification will run with (a stored hash is ours, but a corrupt or
/// edited row must not make a login allocate gigabytes or spin for minutes): 256 MiB, 16 passes, 8 lanes.
const MAX_STORED_M_COST: u32 = 256 * 1024;
const MAX_STORED_T_COST: u32 = 16;
const MAX_STORED_P_COST: u32 = 8;

thread_local! {
    /// The argon2 working memory of this thread, kept between hashes and zeroed after each one. A fresh
    /// 19 MiB allocation per hash came back from the kernel as ~5,000 page faults (and the TLB shootdowns
    /// of giving it back) that slowed the other cores' requests; reused, a hash touches no new page.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `argon` over `pw` and `salt` into `out` in this thread's reused memory: grown to `params`'
/// block count, zeroed after use whatever the outcome, and given back when a stored hash with a larger
/// memory cost than ours made it grow (so one odd row does not pin up to 256 MiB per thread).
fn hash_into(
    argon: &Argon2<'_>,
    params: &Params,
    pw: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        let need = params.block_count();
        if m.len() < need {
            m.resize(need, Block::default());
        }
        let blocks = &mut m[..need];
        let done = argon.hash_password_into_with_memory(pw, salt, out, &mut *blocks);
        blocks.iter_mut().for_each(Zeroize::zeroize);
        if m.len() > M_COST as usize {
            *m = Vec::new();
        }
        done
    })
}

/// argon2id with the fixed parameters, and the dummy hash for unknown accounts.
pub struct PasswordHasher {
    argon: Argon2<'static>,
    params: Params,
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
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut filler = [0u8; 32];
        SystemRandom::new()
            .fill(&mut filler)
            .map_err(|_| HashError::Random)?;
        let mut me = PasswordHasher {
            argon,
            params,
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
        self.hash_with_salt(pw, &salt)
    }

    /// The PHC string of `pw` with `salt`: what `argon2`'s own `hash_password` writes, computed in the
    /// thread's reused memory.
    fn hash_with_salt(&self, pw: &[u8], salt: &[u8]) -> Result<String, HashError> {
        let argon = |e: &dyn std::fmt::Display| HashError::Argon(e.to_string());
        let mut out = Zeroizing::new([0u8; Params::DEFAULT_OUTPUT_LEN]);
        hash_into(&self.argon, &self.params, pw, salt, &mut out[..]).map_err(|e| argon(&e))?;
        let salt = SaltString::encode_b64(salt).map_err(|e| argon(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| argon(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out[..]).map_err(|e| argon(&e))?),
        };
        Ok(phc.to_string())
    }

    /// The PHC string for a new password (which the caller checked against the policy).
    pub fn hash(&self, password: &SecretString) -> Result<String, HashError> {
        self.hash_bytes(password.expose().as_bytes())
    }

    /// Whether `pw` matches the parsed PHC hash, recomputed with its own parameters (within the
    /// bounds above) in the thread's reused memory and compared in constant time. `None`: the hash
    /// cannot be checked (not argon2, out-of-bounds parameters, no salt or output).
    fn check(pw: &[u8], phc: &PasswordHash<'_>) -> Option<bool> {
        let algorithm = Algorithm::try_from(phc.algorithm).ok()?;
        let version = match phc.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(phc).ok()?;
        if params.m_cost() > MAX_STORED_M_COST
            || params.t_cost() > MAX_STORED_T_COST
            || params.p_cost() > MAX_STORED_P_COST
        {
            return None;
        }
        let expected = phc.hash?;
        let mut salt = [0u8; 64];
        let salt = phc.salt?.decode_b64(&mut salt).ok()?;
        let mut out = Zeroizing::new([0u8; Output::MAX_LENGTH]);
        let out = out.get_mut(..expected.len())?;
        let argon = Argon2::new(algorithm, version, params.clone());
        hash_into(&argon, &params, pw, salt, out).ok()?;
        Some(Output::new(out).ok()? == expected)
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown account, or no password set
    /// yet), the same work is done against the dummy hash and the answer is false. A stored hash that
    /// does not parse or cannot be checked counts as a mismatch (after the dummy's work, so a corrupt
    /// row is not a timing oracle either).
    pub fn verify_or_dummy(&self, password: &SecretString, stored: Option<&str>) -> bool {
        let pw = password.expose().as_bytes();
        let checked = stored
            .and_then(|s| PasswordHash::new(s).ok())
            .and_then(|phc| Self::check(pw, &phc));
        if let Some(ok) = checked {
            return ok;
        }
        if let Ok(dummy) = PasswordHash::new(&self.dummy) {
            let _ = Self::check(pw, &dummy);
        }
        false
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

    #[test]
    fn the_reused_memory_path_matches_argon2s_own() {
        use argon2::password_hash::PasswordHasher as _;
        let h = PasswordHasher::new().unwrap();
        let salt = [7u8; 16];
        let ours = h.hash_with_salt(b"correct horse battery staple", &salt).unwrap();
        let theirs = h
            .argon
            .hash_password(
                b"correct horse battery staple",
                &SaltString::encode_b64(&salt).unwrap(),
            )
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        // A hash argon2 wrote with other parameters verifies too (within the bounds) ...
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 3, 2, None).unwrap(),
        )
        .hash_password(b"another password", &SaltString::encode_b64(&salt).unwrap())
        .unwrap()
        .to_string();
        assert!(h.verify_or_dummy(&SecretString::new("another password"), Some(&other)));
        assert!(!h.verify_or_dummy(&SecretString::new("another passwore"), Some(&other)));
        // ... and one out of bounds (a huge memory cost in an edited row) is a mismatch, not an allocation.
        let huge = theirs.replace("m=19456", "m=4000000");
        assert!(!h.verify_or_dummy(&SecretString::new("correct horse battery staple"), Some(&huge)));
        // The working memory is zeroed after each hash.
        MEMORY.with(|m| {
            let m = m.borrow();
            assert_eq!(m.len(), M_COST as usize, "the memory is kept");
            assert!(m.iter().all(|b| b.as_ref().iter().all(|&x| x == 0)));
        });
        // A stored hash with a larger (in-bounds) memory cost verifies, and the larger memory is given back.
        let larger = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(2 * M_COST, 1, 1, None).unwrap(),
        )
        .hash_password(b"a third password", &SaltString::encode_b64(&salt).unwrap())
        .unwrap()
        .to_string();
        assert!(h.verify_or_dummy(&SecretString::new("a third password"), Some(&larger)));
        MEMORY.with(|m| assert!(m.borrow().is_empty(), "the larger memory is given back"));
    }
}

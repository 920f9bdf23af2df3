//! Time-based one-time passwords (RFC 6238) for the console's second factor, and recovery codes.
//!
//! Fixed parameters, the ones every authenticator app supports: HMAC-SHA-1, 6 digits, 30-second steps,
//! a code accepted one step early or late (±30 s of clock drift). The HOTP arithmetic is `totp-rs`'s;
//! this module adds what a server needs around it: which step a code matched, so a code (or an older
//! one) is never accepted twice ([`verify`] takes the last step used and refuses anything at or before
//! it), the `otpauth://` enrolment URI, and secrets as types that zeroize and never print.
//!
//! Recovery codes are 10 random codes of 60 bits each shown once; the server keeps only their keyed
//! hashes (HMAC with the provider-held pepper, like API keys: the codes are random, so a slow hash adds
//! nothing), and each works once.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Timestamp;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;
/// Steps accepted either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Bytes of a new secret (160 bits, RFC 4226's recommendation for SHA-1).
pub const SECRET_LEN: usize = 20;
/// How many recovery codes an enrolment makes.
pub const RECOVERY_CODES: usize = 10;

/// A TOTP shared secret. Zeroized on drop; `Debug` redacts.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut b = vec![0u8; SECRET_LEN];
        SystemRandom::new().fill(&mut b)?;
        Ok(TotpSecret(b))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        TotpSecret(bytes)
    }

    /// The raw bytes (for sealing).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Base32 (RFC 4648, no padding), as authenticator apps take it when typed in.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(base32::encode(
            base32::Alphabet::Rfc4648 { padding: false },
            &self.0,
        ))
    }

    /// The `otpauth://totp/…` URI an authenticator app scans (Key Uri Format): label `issuer:account`,
    /// with the parameters spelled out so no app guesses.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let issuer = percent_encode(issuer);
        Zeroizing::new(format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            account = percent_encode(account),
            secret = self.base32().as_str(),
        ))
    }

    fn totp(&self, digits: usize) -> TOTP {
        // `new_unchecked`: the secret length is ours to choose (RFC 6238's test secret is 20 bytes; ours
        // are too), and the digit count is fixed by the callers in this module.
        TOTP::new_unchecked(Algorithm::SHA1, digits, 0, STEP_SECS, self.0.clone())
    }

    /// The code for Unix time `secs` with `digits` digits (6 in use; 8 for the RFC's test vectors).
    pub fn code_at(&self, secs: u64, digits: usize) -> Zeroizing<String> {
        Zeroizing::new(self.totp(digits).generate(secs))
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// RFC 3986 unreserved characters pass; everything else is %-encoded byte by byte.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a code was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("an authentication code is 6 digits")]
    Format,
    #[error("the authentication code is wrong or expired")]
    Wrong,
    #[error("this authentication code was already used; wait for the next one")]
    Replayed,
}

/// The step number of Unix time `secs`.
pub fn step_of(secs: u64) -> u64 {
    secs / STEP_SECS
}

/// Checks `code` at `now` against `secret`, one step either side. `last_step` is the step of the last
/// code accepted for this secret: a code of that step or an earlier one is refused as a replay, even
/// inside the window. Returns the step matched, to be stored as the new `last_step`.
///
/// Every candidate step is computed and compared in constant time, so the timing does not tell which
/// step (if any) matched.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now: Timestamp,
    last_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Format);
    }
    let secs = u64::try_from(now.as_micros() / 1_000_000).unwrap_or(0);
    let current = step_of(secs);
    let totp = secret.totp(DIGITS);
    let mut matched = None;
    for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
        let expected = Zeroizing::new(totp.generate(step * STEP_SECS));
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            // The latest matching step wins (codes of two steps can collide by chance).
            matched = Some(step);
        }
    }
    match matched {
        None => Err(TotpError::Wrong),
        Some(step) if last_step.is_some_and(|last| step <= last) => Err(TotpError::Replayed),
        Some(step) => Ok(step),
    }
}

/// An account's stored second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpState {
    pub secret: TotpSecret,
    pub created_at: Timestamp,
    /// `None` while the enrolment waits for its first code.
    pub enabled_at: Option<Timestamp>,
    /// The step of the last code accepted (the replay guard).
    pub last_step: Option<u64>,
    /// Wrong codes since the last success or lock.
    pub failures: u32,
    pub locked_until: Option<Timestamp>,
}

/// Recovery code alphabet: lowercase letters without i, l and o, and the digits 1-9 (no look-alikes).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz123456789";
/// Characters of a recovery code, without its dash (12 × 5 bits = 60 bits).
const RECOVERY_CHARS: usize = 12;

/// One recovery code, shown as `xxxxxx-xxxxxx`. Zeroized on drop; `Debug` redacts.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl RecoveryCode {
    /// Ten fresh codes.
    pub fn generate_set() -> Result<Vec<RecoveryCode>, ring::error::Unspecified> {
        let rng = SystemRandom::new();
        (0..RECOVERY_CODES)
            .map(|_| {
                let mut b = [0u8; RECOVERY_CHARS];
                rng.fill(&mut b)?;
                let chars: String = b
                    .iter()
                    .map(|x| char::from(RECOVERY_ALPHABET[usize::from(x & 31)]))
                    .collect();
                b.zeroize();
                Ok(RecoveryCode(format!("{}-{}", &chars[..6], &chars[6..])))
            })
            .collect()
    }

    /// The code as typed by a user, normalised (case, spaces and dashes ignored); `None` if it cannot be
    /// a recovery code at all.
    pub fn parse(typed: &str) -> Option<RecoveryCode> {
        let chars: String = typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let ok = chars.len() == RECOVERY_CHARS && chars.bytes().all(|b| RECOVERY_ALPHABET.contains(&b));
        ok.then(|| RecoveryCode(format!("{}-{}", &chars[..6], &chars[6..])))
    }

    /// The normalised text: what is shown once, and what the keyed hash is taken over.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_micros(i64::try_from(secs).unwrap() * 1_000_000)
    }

    /// RFC 6238 Appendix B, the SHA-1 rows (8 digits, secret "12345678901234567890").
    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        for (secs, code) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(secret.code_at(secs, 8).as_str(), code, "T = {secs}");
        }
        // The 6-digit code is the last six digits of the same truncation.
        assert_eq!(secret.code_at(59, 6).as_str(), "287082");
    }

    #[test]
    fn window_is_one_step_either_side() {
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        let t = 1_111_111_111u64; // step 37037037
        let code = s.code_at(t, 6);
        assert_eq!(verify(&s, &code, at(t), None), Ok(step_of(t)));
        // Still accepted 30 s later and from a clock 30 s behind.
        assert_eq!(verify(&s, &code, at(t + 30), None), Ok(step_of(t)));
        assert_eq!(verify(&s, &code, at(t - 30), None), Ok(step_of(t)));
        // Two steps away: refused.
        assert_eq!(verify(&s, &code, at(t + 60), None), Err(TotpError::Wrong));
        assert_eq!(verify(&s, &code, at(t - 60), None), Err(TotpError::Wrong));
        // Another secret's code: refused.
        let other = TotpSecret::generate().unwrap();
        let wrong = other.code_at(t, 6);
        if wrong.as_str() != code.as_str() {
            assert_eq!(verify(&s, &wrong, at(t), None), Err(TotpError::Wrong));
        }
    }

    #[test]
    fn a_code_is_accepted_once_and_older_codes_never_again() {
        let s = TotpSecret::generate().unwrap();
        let t = 1_700_000_000u64;
        let code = s.code_at(t, 6);
        let step = verify(&s, &code, at(t), None).unwrap();
        assert_eq!(verify(&s, &code, at(t), Some(step)), Err(TotpError::Replayed));
        assert_eq!(
            verify(&s, &code, at(t + 20), Some(step)),
            Err(TotpError::Replayed)
        );
        // The previous step's code is inside the window but older than the last use.
        let older = s.code_at(t - 30, 6);
        if older.as_str() != code.as_str() {
            assert_eq!(verify(&s, &older, at(t), Some(step)), Err(TotpError::Replayed));
        }
        // The next step's code works.
        let next = s.code_at(t + 30, 6);
        assert_eq!(verify(&s, &next, at(t + 30), Some(step)), Ok(step + 1));
    }

    #[test]
    fn malformed_codes_are_refused_before_any_hmac() {
        let s = TotpSecret::generate().unwrap();
        for bad in ["", "12345", "1234567", "abcdef", "12 34 5x", "１２３４５６"] {
            assert_eq!(verify(&s, bad, at(1000), None), Err(TotpError::Format), "{bad:?}");
        }
        // Spaces inside a code are ignored, as apps show "123 456".
        let c = s.code_at(1000, 6);
        let spaced = format!("{} {}", &c[..3], &c[3..]);
        assert!(verify(&s, &spaced, at(1000), None).is_ok());
    }

    #[test]
    fn otpauth_uri_carries_every_parameter_and_secrets_never_print() {
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        assert_eq!(s.base32().as_str(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            s.otpauth_uri("sky gate", "a+b@example.com").as_str(),
            "otpauth://totp/sky%20gate:a%2Bb%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=sky%20gate&algorithm=SHA1&digits=6&period=30"
        );
        assert!(!format!("{s:?}").contains("GEZ"));
        let codes = RecoveryCode::generate_set().unwrap();
        assert!(!format!("{codes:?}").contains(codes[0].expose()));
    }

    #[test]
    fn recovery_codes_are_distinct_and_parse_back_normalised() {
        let codes = RecoveryCode::generate_set().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::BTreeSet<_> = codes.iter().map(|c| c.expose().to_owned()).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        for c in &codes {
            assert_eq!(c.expose().len(), 13);
            let typed = c.expose().to_uppercase().replace('-', " ");
            assert_eq!(RecoveryCode::parse(&typed).as_ref(), Some(c));
        }
        for bad in ["", "abc", "abcdef-abcde0", "abcdef-abcdefg", "123456"] {
            assert!(RecoveryCode::parse(bad).is_none(), "{bad}");
        }
    }
}

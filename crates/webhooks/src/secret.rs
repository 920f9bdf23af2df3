//! Webhook signing secrets: `whsec_` + standard base64 of random bytes.
//!
//! A [`WebhookSecret`] keeps its text in zeroizing memory, never prints it in `Debug`, and
//! carries the two HMAC keys derived from it (one per signature scheme) so that signing
//! and verifying do no per-call key setup.

use std::fmt;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use ring::{hmac, rand::SecureRandom as _};
use zeroize::Zeroizing;

/// Prefix of every webhook secret.
pub const PREFIX: &str = "whsec_";

/// Random bytes in a generated secret.
const GENERATED_LEN: usize = 32;

/// Fewest key bytes [`WebhookSecret::parse`] accepts (Standard Webhooks secrets are 24..64).
const MIN_LEN: usize = 16;

/// Standard alphabet; padding optional when decoding (some senders strip it).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a secret could not be generated or parsed. Never contains the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The text does not start with `whsec_`.
    #[error("a webhook secret must start with {PREFIX}")]
    Prefix,
    /// The part after `whsec_` is not standard base64.
    #[error("a webhook secret must be {PREFIX} followed by standard base64")]
    Base64,
    /// The decoded key is shorter than 16 bytes.
    #[error("a webhook secret must decode to at least {MIN_LEN} bytes, got {0}")]
    TooShort(usize),
}

/// A webhook signing secret (`whsec_…`) with its precomputed HMAC-SHA256 keys.
#[derive(Clone)]
pub struct WebhookSecret {
    text: Zeroizing<String>,
    /// Keyed by the full `whsec_…` text (X-Skytells-Signature).
    full_key: hmac::Key,
    /// Keyed by the base64-decoded bytes after the prefix (Standard Webhooks).
    decoded_key: hmac::Key,
}

impl WebhookSecret {
    /// A fresh secret: `whsec_` + base64 of 32 bytes from the system CSPRNG.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = Zeroizing::new([0u8; GENERATED_LEN]);
        ring::rand::SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SecretError::Random)?;
        let mut text = Zeroizing::new(String::with_capacity(PREFIX.len() + 44));
        text.push_str(PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(bytes.as_ref(), &mut text);
        Ok(Self::from_parts(text, bytes.as_ref()))
    }

    /// Parses `whsec_<base64>`; the key must decode to at least 16 bytes.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let decoded = Zeroizing::new(LENIENT.decode(encoded).map_err(|_| SecretError::Base64)?);
        if decoded.len() < MIN_LEN {
            return Err(SecretError::TooShort(decoded.len()));
        }
        Ok(Self::from_parts(Zeroizing::new(s.to_owned()), &decoded))
    }

    /// The full secret text, `whsec_…`, for sealing at rest or showing once to its owner.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// HMAC key for the X-Skytells scheme (the full text as UTF-8).
    pub(crate) fn full_key(&self) -> &hmac::Key {
        &self.full_key
    }

    /// HMAC key for the Standard Webhooks scheme (the decoded bytes).
    pub(crate) fn decoded_key(&self) -> &hmac::Key {
        &self.decoded_key
    }

    fn from_parts(text: Zeroizing<String>, decoded: &[u8]) -> Self {
        Self {
            full_key: hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()),
            decoded_key: hmac::Key::new(hmac::HMAC_SHA256, decoded),
            text,
        }
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecret({PREFIX}…redacted)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn generated_secret_has_prefix_and_32_bytes() {
        let s = WebhookSecret::generate().unwrap();
        let encoded = s.expose().strip_prefix(PREFIX).unwrap();
        assert_eq!(encoded.len(), 44);
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(decoded.len(), 32);
        assert_ne!(s.expose(), WebhookSecret::generate().unwrap().expose());
    }

    #[test]
    fn parse_round_trips_and_checks_shape() {
        let s = WebhookSecret::generate().unwrap();
        assert_eq!(WebhookSecret::parse(s.expose()).unwrap().expose(), s.expose());
        // Standard Webhooks' 24-byte test secret.
        assert!(WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::Base64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAA").unwrap_err(),
            SecretError::TooShort(15)
        );
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = WebhookSecret::generate().unwrap();
        let shown = format!("{s:?}");
        assert_eq!(shown, "WebhookSecret(whsec_…redacted)");
        let body = s.expose().strip_prefix(PREFIX).unwrap();
        assert!(!shown.contains(body));
        assert!(!shown.contains(&body[..8]));
    }
}

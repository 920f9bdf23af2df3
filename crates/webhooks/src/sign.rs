//! Delivery signatures: `X-Skytells-Signature` and the Standard Webhooks headers.
//!
//! * `x-skytells-signature`: lowercase hex HMAC-SHA256 of the raw body, keyed by the full
//!   `whsec_…` text; comma-separated when several secrets are active.
//! * `webhook-id`, `webhook-timestamp`, `webhook-signature`: `v1,` + base64 HMAC-SHA256 of
//!   `{id}.{timestamp}.{body}`, keyed by the decoded secret; space-separated when several.
//!
//! Verification compares in constant time and requires every scheme whose headers are
//! present to match.

use std::{fmt, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;
use subtle::ConstantTimeEq as _;

use crate::secret::WebhookSecret;

/// `webhook-id` header name.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp` header name.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature` header name.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// `x-skytells-signature` header name.
pub const X_SKYTELLS_SIGNATURE: HeaderName = HeaderName::from_static("x-skytells-signature");

/// Version tag of Standard Webhooks symmetric signatures.
const V1: &str = "v1,";

fn skytells_tag(secret: &WebhookSecret, body: &[u8]) -> hmac::Tag {
    hmac::sign(secret.full_key(), body)
}

fn standard_tag(secret: &WebhookSecret, id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(secret.decoded_key());
    for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        ctx.update(part);
    }
    ctx.sign()
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// `X-Skytells-Signature` value for one secret: lowercase hex HMAC-SHA256 of `body`,
/// keyed by the full `whsec_…` text.
pub fn skytells_signature(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    push_hex(&mut out, skytells_tag(secret, body).as_ref());
    out
}

/// Standard Webhooks signature for one secret: `v1,` + base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, keyed by the decoded secret.
pub fn standard_signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::from(V1);
    STANDARD.encode_string(standard_tag(secret, id, &timestamp.to_string(), body), &mut out);
    out
}

/// The four signature headers of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`: the message id, stable across retries.
    pub webhook_id: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub webhook_timestamp: String,
    /// `webhook-signature`: space-separated `v1,…` values, one per secret.
    pub webhook_signature: String,
    /// `x-skytells-signature`: comma-separated hex values, one per secret.
    pub skytells_signature: String,
}

impl SignedHeaders {
    /// Sets the four headers on `headers`, replacing any previous values.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let pairs = [
            (WEBHOOK_ID, &self.webhook_id),
            (WEBHOOK_TIMESTAMP, &self.webhook_timestamp),
            (WEBHOOK_SIGNATURE, &self.webhook_signature),
            (X_SKYTELLS_SIGNATURE, &self.skytells_signature),
        ];
        for (name, value) in pairs {
            // Every value is built from visible ASCII except the caller's id; an id that is not
            // a valid header value is left out, which the receiver reports as a missing header.
            match HeaderValue::from_str(value) {
                Ok(value) => {
                    headers.insert(name, value);
                }
                Err(_) => tracing::warn!(header = %name, "signature header value is not valid"),
            }
        }
    }
}

/// Signs one delivery with every active secret, in the order given (several during a
/// secret rotation overlap). With no secret both signature values are empty.
pub fn sign(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
    let ts = timestamp.to_string();
    let mut standard = String::with_capacity(secrets.len() * 48);
    let mut skytells = String::with_capacity(secrets.len() * 65);
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            standard.push(' ');
            skytells.push(',');
        }
        standard.push_str(V1);
        STANDARD.encode_string(standard_tag(secret, id, &ts, body), &mut standard);
        push_hex(&mut skytells, skytells_tag(secret, body).as_ref());
    }
    SignedHeaders {
        webhook_id: id.to_owned(),
        webhook_timestamp: ts,
        webhook_signature: standard,
        skytells_signature: skytells,
    }
}

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// `X-Skytells-Signature`.
    Skytells,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standard => "webhook-signature",
            Self::Skytells => "x-skytells-signature",
        })
    }
}

/// A successful verification: the schemes that were present and matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Matched schemes, Standard first.
    pub schemes: Vec<Scheme>,
}

/// Why a delivery failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Neither signature header is present.
    #[error("no signature header (expected webhook-signature or x-skytells-signature)")]
    NoSignature,
    /// A header the present scheme needs is missing.
    #[error("missing header {0}")]
    MissingHeader(HeaderName),
    /// A header is not visible ASCII.
    #[error("header {0} is not valid text")]
    InvalidHeader(HeaderName),
    /// `webhook-timestamp` is not an integer.
    #[error("timestamp is not a number")]
    TimestampNotNumber,
    /// `webhook-timestamp` is older than the tolerance.
    #[error("timestamp too old")]
    TimestampTooOld,
    /// `webhook-timestamp` is further ahead than the tolerance.
    #[error("timestamp too far in the future")]
    TimestampTooNew,
    /// A present scheme had no signature matching any secret.
    #[error("no signature matched ({0})")]
    NoMatch(Scheme),
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, VerifyError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| VerifyError::InvalidHeader(name.clone())))
        .transpose()
}

fn required<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, VerifyError> {
    header(headers, name)?.ok_or_else(|| VerifyError::MissingHeader(name.clone()))
}

fn any_match<'c>(
    tags: impl Iterator<Item = hmac::Tag>,
    candidates: impl Iterator<Item = &'c [u8]> + Clone,
) -> bool {
    // Fold with `|` rather than short-circuiting so timing does not depend on which matched.
    tags.fold(false, |found, tag| {
        candidates
            .clone()
            .fold(found, |found, c| found | bool::from(tag.as_ref().ct_eq(c)))
    })
}

fn verify_standard(
    secrets: &[WebhookSecret],
    headers: &HeaderMap,
    signatures: &str,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let id = required(headers, &WEBHOOK_ID)?;
    let ts_text = required(headers, &WEBHOOK_TIMESTAMP)?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::TimestampNotNumber)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now_unix.saturating_sub(ts) > tolerance {
        return Err(VerifyError::TimestampTooOld);
    }
    if ts.saturating_sub(now_unix) > tolerance {
        return Err(VerifyError::TimestampTooNew);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_ascii_whitespace()
        .filter_map(|s| s.strip_prefix(V1))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    // The signed content carries the timestamp exactly as sent.
    let tags = secrets.iter().map(|s| standard_tag(s, id, ts_text, body));
    if any_match(tags, candidates.iter().map(Vec::as_slice)) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch(Scheme::Standard))
    }
}

fn verify_skytells(secrets: &[WebhookSecret], signatures: &str, body: &[u8]) -> Result<(), VerifyError> {
    let candidates: Vec<Vec<u8>> = signatures
        .split(',')
        .filter_map(|s| decode_hex(s.trim()))
        .collect();
    let tags = secrets.iter().map(|s| skytells_tag(s, body));
    if any_match(tags, candidates.iter().map(Vec::as_slice)) {
        Ok(())
    } else {
        Err(VerifyError::NoMatch(Scheme::Skytells))
    }
}

/// Verifies a received delivery against the receiver's active secrets.
///
/// Every scheme whose signature header is present is checked and must match; at least one
/// must be present. Standard Webhooks also requires `webhook-id` and a `webhook-timestamp`
/// within `tolerance` of `now_unix` either way.
pub fn verify(
    secrets: &[WebhookSecret],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    let standard = header(headers, &WEBHOOK_SIGNATURE)?;
    let skytells = header(headers, &X_SKYTELLS_SIGNATURE)?;
    let mut schemes = Vec::with_capacity(2);
    if let Some(signatures) = standard {
        verify_standard(secrets, headers, signatures, body, now_unix, tolerance)?;
        schemes.push(Scheme::Standard);
    }
    if let Some(signatures) = skytells {
        verify_skytells(secrets, signatures, body)?;
        schemes.push(Scheme::Skytells);
    }
    if schemes.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    Ok(Verified { schemes })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    // Reference vector from the Standard Webhooks libraries' tests (test_sign_function).
    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TS: i64 = 1_614_265_330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(s).unwrap()
    }

    fn signed(secrets: &[WebhookSecret], ts: i64, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        sign(secrets, REF_ID, ts, body).apply(&mut headers);
        headers
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        let s = secret(REF_SECRET);
        assert_eq!(standard_signature(&s, REF_ID, REF_TS, REF_BODY), REF_SIG);
        assert_eq!(sign(&[s], REF_ID, REF_TS, REF_BODY).webhook_signature, REF_SIG);
    }

    #[test]
    fn skytells_vector() {
        // Computed independently:
        // printf '%s' '{"test": 2432232314}' | openssl dgst -sha256 -hmac 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
        assert_eq!(
            skytells_signature(&secret(REF_SECRET), REF_BODY),
            "80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
        );
    }

    #[test]
    fn several_secrets_are_listed_in_order() {
        let a = secret(REF_SECRET);
        let b = WebhookSecret::generate().unwrap();
        let h = sign(&[a.clone(), b.clone()], REF_ID, REF_TS, REF_BODY);
        assert_eq!(h.webhook_id, REF_ID);
        assert_eq!(h.webhook_timestamp, REF_TS.to_string());
        assert_eq!(
            h.webhook_signature,
            format!("{REF_SIG} {}", standard_signature(&b, REF_ID, REF_TS, REF_BODY))
        );
        assert_eq!(
            h.skytells_signature,
            format!(
                "{},{}",
                skytells_signature(&a, REF_BODY),
                skytells_signature(&b, REF_BODY)
            )
        );
        let mut headers = HeaderMap::new();
        h.apply(&mut headers);
        assert_eq!(headers.len(), 4);
        assert_eq!(headers[&WEBHOOK_SIGNATURE], h.webhook_signature.as_str());
    }

    #[test]
    fn verify_matrix() {
        let a = secret(REF_SECRET);
        let b = WebhookSecret::generate().unwrap();
        let c = WebhookSecret::generate().unwrap();
        let both = [Scheme::Standard, Scheme::Skytells];

        // Valid.
        let h = signed(std::slice::from_ref(&a), REF_TS, REF_BODY);
        let ok = verify(std::slice::from_ref(&a), &h, REF_BODY, REF_TS, FIVE_MIN).unwrap();
        assert_eq!(ok.schemes, both);

        // Sender signs with [b, a] (rotation); a receiver that knows only a, or [c, a], accepts.
        let h = signed(&[b.clone(), a.clone()], REF_TS, REF_BODY);
        assert!(verify(std::slice::from_ref(&a), &h, REF_BODY, REF_TS, FIVE_MIN).is_ok());
        assert!(verify(&[c.clone(), a.clone()], &h, REF_BODY, REF_TS, FIVE_MIN).is_ok());

        // Body altered; wrong secret.
        let h = signed(std::slice::from_ref(&a), REF_TS, REF_BODY);
        let err = verify(std::slice::from_ref(&a), &h, b"{}", REF_TS, FIVE_MIN).unwrap_err();
        assert_eq!(err, VerifyError::NoMatch(Scheme::Standard));
        let err = verify(std::slice::from_ref(&c), &h, REF_BODY, REF_TS, FIVE_MIN).unwrap_err();
        assert_eq!(err.to_string(), "no signature matched (webhook-signature)");

        // Timestamps outside the tolerance, either way; the edge is inside.
        let verify_at = |now| verify(std::slice::from_ref(&a), &h, REF_BODY, now, FIVE_MIN);
        assert!(verify_at(REF_TS + 300).is_ok());
        assert_eq!(verify_at(REF_TS + 301), Err(VerifyError::TimestampTooOld));
        assert_eq!(verify_at(REF_TS - 301), Err(VerifyError::TimestampTooNew));

        // Only one scheme present: it alone is checked.
        let mut only_skytells = h.clone();
        only_skytells.remove(&WEBHOOK_SIGNATURE);
        let ok = verify(std::slice::from_ref(&a), &only_skytells, REF_BODY, 0, FIVE_MIN).unwrap();
        assert_eq!(ok.schemes, [Scheme::Skytells]);
        let mut tampered = only_skytells.clone();
        tampered.insert(X_SKYTELLS_SIGNATURE, HeaderValue::from_static("00ff,zz"));
        assert_eq!(
            verify(std::slice::from_ref(&a), &tampered, REF_BODY, 0, FIVE_MIN),
            Err(VerifyError::NoMatch(Scheme::Skytells))
        );
        let mut only_standard = h.clone();
        only_standard.remove(&X_SKYTELLS_SIGNATURE);
        let ok = verify(
            std::slice::from_ref(&a),
            &only_standard,
            REF_BODY,
            REF_TS,
            FIVE_MIN,
        );
        assert_eq!(ok.unwrap().schemes, [Scheme::Standard]);
    }

    #[test]
    fn verify_reports_missing_and_malformed_headers() {
        let a = secret(REF_SECRET);
        let h = signed(std::slice::from_ref(&a), REF_TS, REF_BODY);
        let check = |h: &HeaderMap| verify(std::slice::from_ref(&a), h, REF_BODY, REF_TS, FIVE_MIN);

        assert_eq!(check(&HeaderMap::new()), Err(VerifyError::NoSignature));
        for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP] {
            let mut missing = h.clone();
            missing.remove(&name);
            let err = check(&missing).unwrap_err();
            assert_eq!(err.to_string(), format!("missing header {name}"));
        }
        let mut bad_ts = h.clone();
        bad_ts.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_static("yesterday"));
        assert_eq!(check(&bad_ts), Err(VerifyError::TimestampNotNumber));
        assert_eq!(
            VerifyError::NoSignature.to_string(),
            "no signature header (expected webhook-signature or x-skytells-signature)"
        );
    }

    #[test]
    fn hex_helpers() {
        let mut s = String::new();
        push_hex(&mut s, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(s, "000fa5ff");
        assert_eq!(decode_hex("000FA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}

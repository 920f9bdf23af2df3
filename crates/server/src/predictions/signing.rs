//! Signed, expiring output URLs: `GET /v1/outputs/{prediction_id}/{file}?exp=UNIX&sig=…`, like a CDN
//! link. `sig` is HMAC-SHA256 over the prediction id, file name and expiry under a key the key provider
//! derives (the same on every node, never in the database), base64url without padding. `exp` is the
//! prediction's purge time, so a link stops working when the data is destroyed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use skygate_core::predictions::PredictionId;

/// The key provider purpose of the URL-signing key.
pub const PURPOSE: &str = "output-url-signing-v1";

#[derive(Clone)]
pub struct OutputSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for OutputSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSigner(..)")
    }
}

impl OutputSigner {
    pub fn new(secret: &skygate_crypto::Secret32) -> Self {
        OutputSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose()),
        }
    }

    fn message(id: &PredictionId, file: &str, exp: i64) -> String {
        format!("skygate-output-v1\n{id}\n{file}\n{exp}")
    }

    pub fn sign(&self, id: &PredictionId, file: &str, exp: i64) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, Self::message(id, file, exp).as_bytes()))
    }

    /// The absolute URL of one output file.
    pub fn url(&self, base: &str, id: &PredictionId, file: &str, exp: i64) -> String {
        format!(
            "{base}/v1/outputs/{id}/{file}?exp={exp}&sig={}",
            self.sign(id, file, exp)
        )
    }

    /// Whether `sig` is this server's signature of (id, file, exp) and `exp` is still ahead of `now`
    /// (Unix seconds). Constant-time in the signature.
    pub fn verify(&self, id: &PredictionId, file: &str, exp: i64, sig: &str, now: i64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(sig.as_bytes()) else {
            return false;
        };
        let ok = hmac::verify(&self.key, Self::message(id, file, exp).as_bytes(), &raw).is_ok();
        ok && exp > now
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signer(b: u8) -> OutputSigner {
        OutputSigner::new(&skygate_crypto::Secret32::from_bytes([b; 32]))
    }

    #[test]
    fn signatures_bind_id_file_and_expiry() {
        let s = signer(1);
        let id = PredictionId::generate().unwrap();
        let other = PredictionId::generate().unwrap();
        let sig = s.sign(&id, "output-0.png", 2000);
        assert!(s.verify(&id, "output-0.png", 2000, &sig, 1999));
        assert!(!s.verify(&id, "output-0.png", 2000, &sig, 2000), "expired");
        assert!(!s.verify(&id, "output-1.png", 2000, &sig, 1000));
        assert!(!s.verify(&other, "output-0.png", 2000, &sig, 1000));
        assert!(!s.verify(&id, "output-0.png", 2001, &sig, 1000));
        assert!(
            !signer(2).verify(&id, "output-0.png", 2000, &sig, 1000),
            "another key"
        );
        assert!(!s.verify(&id, "output-0.png", 2000, "", 1000));
        assert!(!s.verify(&id, "output-0.png", 2000, "!!not base64!!", 1000));
        let url = s.url("https://h:1", &id, "a.wav", 5);
        assert!(url.starts_with(&format!("https://h:1/v1/outputs/{id}/a.wav?exp=5&sig=")));
    }
}

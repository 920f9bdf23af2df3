//! Key material as types: redacting `Debug`, zeroize on drop, no `Clone` on data keys.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 256-bit data-encryption key. One per sealed value (or per streamed object).
#[derive(Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Dek([u8; 32]);

impl Dek {
    pub const LEN: usize = 32;

    /// A fresh key from the system random source.
    pub fn generate() -> crate::Result<Self> {
        let mut k = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| crate::CryptoError::Random)?;
        Ok(Dek(k))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Dek(bytes)
    }

    /// Copies a 32-byte slice; anything else is a format error.
    pub fn from_slice(bytes: &[u8]) -> crate::Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| crate::CryptoError::Format("data key is not 32 bytes"))?;
        Ok(Dek(arr))
    }

    /// The key bytes. Call sites are the few places that feed them to an AEAD or a wrap.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// A 256-bit secret derived by a key provider for one purpose (API-key pepper, blind-index key, URL
/// signing key). Same redaction rules as [`Dek`]; cloneable because services hold it for their lifetime.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let d = Dek::from_bytes([0xab; 32]);
        assert_eq!(format!("{d:?}"), "Dek(<redacted>)");
        let s = Secret32::from_bytes([0xcd; 32]);
        assert!(!format!("{s:?}").contains("cd"));
    }
}

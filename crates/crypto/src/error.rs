//! One error type for sealing and for key providers. Messages name what failed, never key material.

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The value or its wrapped key failed authentication: tampered, truncated, swapped between rows, or
    /// opened with the wrong AAD. No plaintext is ever returned in this case.
    #[error("sealed value failed authentication (tampered, truncated, or opened in the wrong place)")]
    Authentication,
    /// The bytes are not a sealed value this version understands.
    #[error("not a sealed value: {0}")]
    Format(&'static str),
    /// The value was sealed by a different keyring.
    #[error("sealed value belongs to keyring {found:08x}, this keyring is {expected:08x}")]
    WrongKeyring { expected: u32, found: u32 },
    /// The KEK version the value names does not exist (never created, or retired).
    #[error("key-encryption key version {0} is not available (retired or never created)")]
    UnknownVersion(u32),
    /// The shred key the value names was destroyed (crypto-shredding) or never existed.
    #[error("shred key {0} does not exist (the data it protected was destroyed)")]
    Shredded(u64),
    /// The key provider refused or failed (keyring unreadable, HSM absent, wrong PIN, …).
    #[error("key provider: {0}")]
    Provider(String),
    /// A request that the provider's state does not allow (e.g. retiring the newest version).
    #[error("{0}")]
    Refused(String),
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
}

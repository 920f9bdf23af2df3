//! The [`KeyProvider`] trait: where key-encryption keys live.
//!
//! A provider holds a *keyring*: numbered KEK versions (1, 2, …), of which the newest wraps every new data
//! key. Old versions stay usable for unwrapping until they are retired; retiring makes a version unusable
//! for ever (the local keyring zeroizes and deletes it, an HSM destroys the object). Providers also hold:
//!
//! * **derived secrets**: fixed 256-bit secrets for one purpose each (`derive_secret("api-key-pepper")`),
//!   computed from a root secret that never leaves the provider's storage (inside the HSM for PKCS#11),
//!   identical on every node sharing the provider;
//! * **shred keys**: keys named by a random [`ShredId`], mixed into the data key of values that must be
//!   destroyable (an account's data, a retention window's outputs). Destroying the shred key makes those
//!   values unreadable everywhere, including in database and object-store backups, because the shred key
//!   was never in either.
//!
//! Calls are synchronous: the local keyring works in memory after start, and PKCS#11 calls are short. All
//! implementations are `Send + Sync` and safe to share between threads and nodes' worth of tasks.

use crate::{Dek, Result, Secret32};

/// Identifies a shred key. Never 0 (0 in a sealed header means "no shred key").
pub type ShredId = u64;

/// The lifecycle state of one KEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekState {
    /// Usable for wrap (if newest) and unwrap.
    Active,
    /// Destroyed: nothing sealed under it can be opened.
    Retired,
}

/// One KEK version as `keyring status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekInfo {
    pub version: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub state: KekState,
}

pub trait KeyProvider: Send + Sync + 'static {
    /// `"local"` or `"pkcs11"`, for status output and logs.
    fn kind(&self) -> &'static str;

    /// A random identifier fixed when the keyring was created; written into every sealed header so a value
    /// from another keyring is reported as such rather than as tampering.
    fn keyring_id(&self) -> u32;

    /// The newest active KEK version; new wraps use it.
    fn current_version(&self) -> u32;

    /// Every version the provider knows, oldest first, retired ones included.
    fn versions(&self) -> Result<Vec<KekInfo>>;

    /// Wraps `dek` under the current version. Returns `(version, wrapped bytes)`.
    fn wrap(&self, dek: &Dek) -> Result<(u32, Vec<u8>)>;

    /// Unwraps bytes produced by [`KeyProvider::wrap`] under `version`. Tampered bytes →
    /// `CryptoError::Authentication`; a missing or retired version → `CryptoError::UnknownVersion`.
    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<Dek>;

    /// Creates a new KEK version, makes it current, and returns it. Durable before it returns: a crash
    /// right after leaves the new version usable.
    fn rotate(&self) -> Result<u32>;

    /// Destroys `version`. Refuses the current version. The caller (which can see the data) checks that
    /// nothing references it first.
    fn retire(&self, version: u32) -> Result<()>;

    /// Picks up versions created or retired by another process sharing this provider.
    fn refresh(&self) -> Result<()>;

    /// A fixed secret for one `purpose`, the same on every call and every node sharing the provider.
    fn derive_secret(&self, purpose: &str) -> Result<Secret32>;

    /// Creates a shred key and returns its id.
    fn create_shred_key(&self) -> Result<ShredId>;

    /// Mixes shred key `id` into `dek`: the key that actually encrypts a shreddable value. Destroyed or
    /// unknown id → `CryptoError::Shredded(id)`.
    fn shred_mix(&self, id: ShredId, dek: &Dek) -> Result<Dek>;

    /// Destroys shred key `id` for ever. Destroying an absent key is not an error (idempotent).
    fn destroy_shred_key(&self, id: ShredId) -> Result<()>;
}

//! skygate envelope encryption.
//!
//! * [`envelope`]: `seal`/`open` of one value with AES-256-GCM under a fresh data key (DEK), the DEK
//!   wrapped by the key provider's current key-encryption key (KEK). The sealed bytes carry everything
//!   needed to open them except the KEK: `format ‖ kek_id ‖ kek_version ‖ shred_id ‖ nonce ‖ wrapped_dek ‖
//!   ciphertext ‖ tag`.
//! * [`provider`]: the [`KeyProvider`] trait, which holds KEK versions and wraps/unwraps DEKs, derives the
//!   service's fixed secrets (API-key pepper, blind-index key), and holds *shred keys* whose destruction
//!   makes every value sealed under them unreadable, backups included.
//!
//! Nothing here does I/O beyond what a provider needs for its own key storage.

pub mod envelope;
pub mod error;
mod kekset;
pub mod local;
pub mod memory;
pub mod pkcs11;
pub mod provider;
pub mod secret;
pub mod stream;

pub use envelope::{Aad, Cipher, Header, SealedRef, FORMAT_V1};
pub use error::CryptoError;
pub use local::{LocalKeyring, MasterKey};
pub use memory::MemoryKeyring;
pub use pkcs11::{Pkcs11Config, Pkcs11Pin, Pkcs11Provider};
pub use provider::{KekInfo, KekState, KeyProvider, ShredId};
pub use secret::{Dek, Secret32};
pub use stream::{StreamHeader, StreamOpener, StreamSealer};

pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

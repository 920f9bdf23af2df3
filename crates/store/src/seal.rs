//! Field sealing for the store: every sensitive column goes through [`Sealer`] on its way in and out, so
//! no plaintext reaches the database and no caller above the store handles ciphertext.
//!
//! [`SEALED_COLUMNS`] is the one list of sealed columns: rewrap walks it, `keyring status` counts it, and
//! the conformance suite checks that every column not on it, and not on its reviewed allowlist of
//! non-sensitive columns, fails the test.

use ring::hmac;
use skygate_crypto::{Aad, Cipher, CryptoError, Secret32, ShredId};

use crate::{Result, StoreError};

/// The purpose string of the blind-index key, derived by the key provider.
const BLIND_INDEX_PURPOSE: &str = "email-blind-index-v1";

/// A sealed column: `table.column` and the row's key column. Columns may be NULL (purged data); NULLs are
/// not values and are skipped by counting and rewrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedColumn {
    pub table: &'static str,
    pub key: &'static str,
    pub column: &'static str,
}

/// Every sealed column in the schema.
pub const SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "accounts",
        key: "id",
        column: "email",
    },
    SealedColumn {
        table: "projects",
        key: "id",
        column: "name",
    },
    SealedColumn {
        table: "api_keys",
        key: "id",
        column: "name",
    },
    SealedColumn {
        table: "account_totp",
        key: "account_id",
        column: "secret",
    },
    SealedColumn {
        table: "access_tokens",
        key: "id",
        column: "name",
    },
    SealedColumn {
        table: "predictions",
        key: "id",
        column: "input",
    },
    SealedColumn {
        table: "predictions",
        key: "id",
        column: "output",
    },
    SealedColumn {
        table: "predictions",
        key: "id",
        column: "error",
    },
    SealedColumn {
        table: "predictions",
        key: "id",
        column: "webhook",
    },
    SealedColumn {
        table: "predictions",
        key: "id",
        column: "webhook_target",
    },
    SealedColumn {
        table: "usage_records",
        key: "prediction_id",
        column: "record",
    },
    SealedColumn {
        table: "webhook_secrets",
        key: "id",
        column: "secret",
    },
    SealedColumn {
        table: "webhook_attempts",
        key: "id",
        column: "response",
    },
];

/// Seals and opens column values and computes blind indexes. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    cipher: Cipher,
    blind: Secret32,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(cipher: Cipher) -> Result<Self> {
        let blind = cipher.provider().derive_secret(BLIND_INDEX_PURPOSE)?;
        Ok(Sealer { cipher, blind })
    }

    /// A sealer over a fresh in-memory keyring, for tests.
    pub fn ephemeral() -> Result<Self> {
        let ring = skygate_crypto::MemoryKeyring::new()?;
        Sealer::new(Cipher::new(std::sync::Arc::new(ring)))
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// Seals a column value, bound to its place and (for account-owned data) the account's shred key.
    pub(crate) fn seal(
        &self,
        at: (&'static str, &str, &'static str),
        account: &str,
        shred: ShredId,
        plaintext: &str,
    ) -> Result<Vec<u8>> {
        self.seal_bytes(at, account, shred, plaintext.as_bytes())
    }

    /// [`Sealer::seal`] for a value that need not be text (a webhook response excerpt).
    pub(crate) fn seal_bytes(
        &self,
        at: (&'static str, &str, &'static str),
        account: &str,
        shred: ShredId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let (table, row, column) = at;
        Ok(self
            .cipher
            .seal_shreddable(plaintext, &Aad::field(table, row, column, account), shred)?)
    }

    /// Opens a column value sealed by [`Sealer::seal`]. A failure names the place, never the value.
    pub(crate) fn open(
        &self,
        at: (&'static str, &str, &'static str),
        account: &str,
        sealed: &[u8],
    ) -> Result<String> {
        let (table, row, column) = at;
        self.cipher
            .open_string(sealed, &Aad::field(table, row, column, account))
            .map_err(|source| StoreError::Sealed {
                place: format!("{table}.{column} of {row}"),
                source,
            })
    }

    /// Opens a value sealed by [`Sealer::seal_bytes`]. A failure names the place, never the value.
    pub(crate) fn open_bytes(
        &self,
        at: (&'static str, &str, &'static str),
        account: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let (table, row, column) = at;
        self.cipher
            .open(sealed, &Aad::field(table, row, column, account))
            .map(|plain| plain.to_vec())
            .map_err(|source| StoreError::Sealed {
                place: format!("{table}.{column} of {row}"),
                source,
            })
    }

    /// The blind index of a normalised email: HMAC-SHA256 under a provider-held key, so equal emails
    /// match without the database holding the address or anything an attacker can brute-force offline.
    pub(crate) fn email_index(&self, email: &str) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.blind.expose());
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&key, email.as_bytes()).as_ref());
        out
    }
}

impl From<CryptoError> for StoreError {
    fn from(e: CryptoError) -> Self {
        StoreError::Crypto(e)
    }
}

/// The KEK version written in a sealed value's header (bytes 5..9), as SQL reads it with
/// `substr(col, 6, 4)`.
pub(crate) fn version_bytes(version: u32) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}

/// Decodes a `substr(col, 6, 4)` result.
pub(crate) fn version_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

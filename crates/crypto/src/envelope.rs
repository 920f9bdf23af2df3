//! Sealing one value: AES-256-GCM under a fresh data key, the key wrapped by the provider.
//!
//! Layout of a sealed value (all integers big-endian):
//!
//! ```text
//! 0       u8   format (1)
//! 1..5    u32  kek_id      the keyring that wrapped the data key
//! 5..9    u32  kek_version the KEK version that wrapped it
//! 9..17   u64  shred_id    0, or the shred key mixed into the data key
//! 17..29  [12] nonce       random
//! 29..31  u16  n           length of the wrapped data key
//! 31..    [n]  wrapped_dek
//! ..      ciphertext
//! last 16      GCM tag
//! ```
//!
//! The GCM additional data is `"skygate-seal" ‖ format ‖ kek_id ‖ shred_id ‖ caller AAD`. It leaves out
//! `kek_version` and `wrapped_dek` on purpose: rewrapping (moving the data key to a newer KEK) rewrites
//! only those two fields and never touches the ciphertext. Tampering with them still fails, at the unwrap.
//! The caller AAD ([`Aad`]) binds the value to where it lives, so a value copied to another row, field or
//! account fails authentication.

use ring::aead::{Aad as GcmAad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;
use zeroize::Zeroizing;

use crate::{CryptoError, Dek, KeyProvider, Result, ShredId};

pub const FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;
const FIXED: usize = 31;
const AAD_DOMAIN: &[u8] = b"skygate-seal";

/// Where a value lives: length-prefixed parts, so `("ab","c")` and `("a","bc")` differ.
#[derive(Clone, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// The binding for a database field: table, row id, column, and the owning account (empty for values
    /// no account owns).
    pub fn field(table: &str, row_id: &str, column: &str, account: &str) -> Self {
        Aad::parts(&[
            b"field",
            table.as_bytes(),
            row_id.as_bytes(),
            column.as_bytes(),
            account.as_bytes(),
        ])
    }

    /// An arbitrary binding built from parts.
    pub fn parts(parts: &[&[u8]]) -> Self {
        let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
        for p in parts {
            v.extend_from_slice(&(p.len() as u32).to_be_bytes());
            v.extend_from_slice(p);
        }
        Aad(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Aad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // AAD names places, not secrets, but it can contain an account id: keep it out of logs anyway.
        write!(f, "Aad({} bytes)", self.0.len())
    }
}

/// The parsed fixed part of a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: u8,
    pub kek_id: u32,
    pub kek_version: u32,
    pub shred_id: ShredId,
    pub nonce: [u8; NONCE_LEN],
}

/// A borrowed, parsed sealed value.
#[derive(Debug, Clone, Copy)]
pub struct SealedRef<'a> {
    pub header: Header,
    pub wrapped_dek: &'a [u8],
    /// Ciphertext followed by the tag.
    pub body: &'a [u8],
}

impl<'a> SealedRef<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < FIXED + TAG_LEN {
            return Err(CryptoError::Format("too short"));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(CryptoError::Format("unknown format version"));
        }
        let be32 = |r: std::ops::Range<usize>| u32::from_be_bytes(bytes[r].try_into().unwrap_or_default());
        let kek_id = be32(1..5);
        let kek_version = be32(5..9);
        let shred_id = u64::from_be_bytes(bytes[9..17].try_into().unwrap_or_default());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[17..29]);
        let n = u16::from_be_bytes([bytes[29], bytes[30]]) as usize;
        let rest = &bytes[FIXED..];
        if rest.len() < n + TAG_LEN {
            return Err(CryptoError::Format("truncated"));
        }
        let (wrapped_dek, body) = rest.split_at(n);
        Ok(SealedRef {
            header: Header {
                format: FORMAT_V1,
                kek_id,
                kek_version,
                shred_id,
                nonce,
            },
            wrapped_dek,
            body,
        })
    }
}

/// Reads the header of a sealed value without opening it (for status counts and rewrap selection).
pub fn header_of(bytes: &[u8]) -> Result<Header> {
    Ok(SealedRef::parse(bytes)?.header)
}

fn write_header(out: &mut Vec<u8>, h: &Header, wrapped: &[u8]) -> Result<()> {
    let n: u16 = wrapped
        .len()
        .try_into()
        .map_err(|_| CryptoError::Provider("wrapped data key longer than 65535 bytes".into()))?;
    out.push(h.format);
    out.extend_from_slice(&h.kek_id.to_be_bytes());
    out.extend_from_slice(&h.kek_version.to_be_bytes());
    out.extend_from_slice(&h.shred_id.to_be_bytes());
    out.extend_from_slice(&h.nonce);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(wrapped);
    Ok(())
}

fn gcm_aad(h: &Header, aad: &Aad) -> Vec<u8> {
    let mut v = Vec::with_capacity(AAD_DOMAIN.len() + 13 + aad.0.len());
    v.extend_from_slice(AAD_DOMAIN);
    v.push(h.format);
    v.extend_from_slice(&h.kek_id.to_be_bytes());
    v.extend_from_slice(&h.shred_id.to_be_bytes());
    v.extend_from_slice(&aad.0);
    v
}

pub(crate) fn gcm_key(key: &Dek) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key.expose())
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Format("bad key length"))
}

/// Seals and opens values with one [`KeyProvider`]. Cheap to clone.
#[derive(Clone)]
pub struct Cipher {
    provider: Arc<dyn KeyProvider>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("provider", &self.provider.kind())
            .finish()
    }
}

impl Cipher {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Cipher {
            provider,
            rng: SystemRandom::new(),
        }
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// A fresh data key and its wrapping, with the data-encryption key (the DEK, or the DEK mixed with
    /// the shred key). Shared with streaming sealing.
    pub(crate) fn new_key(&self, shred_id: ShredId) -> Result<(Header, Vec<u8>, Dek)> {
        let dek = Dek::generate()?;
        let (kek_version, wrapped) = self.provider.wrap(&dek)?;
        let key = self.data_key(shred_id, dek)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let header = Header {
            format: FORMAT_V1,
            kek_id: self.provider.keyring_id(),
            kek_version,
            shred_id,
            nonce,
        };
        Ok((header, wrapped, key))
    }

    /// Unwraps the data key a header and wrapped key name, checking the keyring first.
    pub(crate) fn key_for(&self, header: &Header, wrapped: &[u8]) -> Result<Dek> {
        let expected = self.provider.keyring_id();
        if header.kek_id != expected {
            return Err(CryptoError::WrongKeyring {
                expected,
                found: header.kek_id,
            });
        }
        let dek = match self.provider.unwrap(header.kek_version, wrapped) {
            // Another node may have rotated since our last refresh: look once more.
            Err(CryptoError::UnknownVersion(_)) => {
                self.provider.refresh()?;
                self.provider.unwrap(header.kek_version, wrapped)?
            }
            other => other?,
        };
        self.data_key(header.shred_id, dek)
    }

    fn data_key(&self, shred_id: ShredId, dek: Dek) -> Result<Dek> {
        if shred_id == 0 {
            Ok(dek)
        } else {
            self.provider.shred_mix(shred_id, &dek)
        }
    }

    /// Seals `plaintext` bound to `aad`, not tied to any shred key.
    pub fn seal(&self, plaintext: &[u8], aad: &Aad) -> Result<Vec<u8>> {
        self.seal_shreddable(plaintext, aad, 0)
    }

    /// Seals `plaintext` bound to `aad`, its data key mixed with shred key `shred_id` (0 = none).
    pub fn seal_shreddable(&self, plaintext: &[u8], aad: &Aad, shred_id: ShredId) -> Result<Vec<u8>> {
        let (header, wrapped, key) = self.new_key(shred_id)?;
        let mut out = Vec::with_capacity(FIXED + wrapped.len() + plaintext.len() + TAG_LEN);
        write_header(&mut out, &header, &wrapped)?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = gcm_key(&key)?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(header.nonce),
                GcmAad::from(gcm_aad(&header, aad)),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Format("plaintext too long"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed value. Any tampering, a swap between places, or a wrong `aad` →
    /// `CryptoError::Authentication`, never plaintext.
    pub fn open(&self, sealed: &[u8], aad: &Aad) -> Result<Zeroizing<Vec<u8>>> {
        let s = SealedRef::parse(sealed)?;
        let key = self.key_for(&s.header, s.wrapped_dek)?;
        let mut buf = Zeroizing::new(s.body.to_vec());
        let len = gcm_key(&key)?
            .open_in_place(
                Nonce::assume_unique_for_key(s.header.nonce),
                GcmAad::from(gcm_aad(&s.header, aad)),
                &mut buf,
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a sealed UTF-8 string.
    pub fn open_string(&self, sealed: &[u8], aad: &Aad) -> Result<String> {
        let bytes = self.open(sealed, aad)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CryptoError::Format("sealed text is not UTF-8"))
    }

    /// Moves a sealed value's data key to the current KEK version without touching the ciphertext.
    /// `Ok(None)` when it is already current (or newer, when another node rotated after our last
    /// refresh).
    pub fn rewrap(&self, sealed: &[u8]) -> Result<Option<Vec<u8>>> {
        let s = SealedRef::parse(sealed)?;
        // Only ever forwards: a value under a newer version than this process knows stays as it is.
        if s.header.kek_version >= self.provider.current_version() {
            return Ok(None);
        }
        let (header, wrapped) = self.rewrap_header(&s.header, s.wrapped_dek)?;
        let mut out = Vec::with_capacity(sealed.len() + 8);
        write_header(&mut out, &header, &wrapped)?;
        out.extend_from_slice(s.body);
        Ok(Some(out))
    }

    /// The new header and wrapped key after moving a data key to the current KEK (shared with streams).
    pub(crate) fn rewrap_header(&self, header: &Header, wrapped: &[u8]) -> Result<(Header, Vec<u8>)> {
        let expected = self.provider.keyring_id();
        if header.kek_id != expected {
            return Err(CryptoError::WrongKeyring {
                expected,
                found: header.kek_id,
            });
        }
        let dek = self.provider.unwrap(header.kek_version, wrapped)?;
        let (kek_version, wrapped) = self.provider.wrap(&dek)?;
        Ok((
            Header {
                kek_version,
                ..*header
            },
            wrapped,
        ))
    }
}

//! KEK versions held as key bytes in process memory, shared by the providers that keep keys themselves
//! (`local`, `memory`): the current-version rule, AES-256-GCM wrapping bound to (keyring id, version),
//! and the HMAC used for derived secrets and shred mixing. The PKCS#11 provider does all of this inside
//! the token instead.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ring::aead::{Aad, Nonce, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::envelope::gcm_key;
use crate::{CryptoError, Dek, KekInfo, KekState, Result};

/// One version: its key (None once retired) and creation time (unix seconds).
pub(crate) struct Kek {
    pub(crate) key: Option<Dek>,
    pub(crate) created_at: i64,
}

pub(crate) struct KekSet {
    id: u32,
    domain: &'static [u8],
    keks: RwLock<BTreeMap<u32, Kek>>,
    rng: SystemRandom,
}

fn poisoned() -> CryptoError {
    CryptoError::Provider("keyring lock poisoned".into())
}

impl KekSet {
    /// `domain` separates one provider's wrapped keys from another's.
    pub(crate) fn new(id: u32, domain: &'static [u8]) -> Self {
        KekSet {
            id,
            domain,
            keks: RwLock::new(BTreeMap::new()),
            rng: SystemRandom::new(),
        }
    }

    pub(crate) fn read(&self) -> Result<RwLockReadGuard<'_, BTreeMap<u32, Kek>>> {
        self.keks.read().map_err(|_| poisoned())
    }

    pub(crate) fn write(&self) -> Result<RwLockWriteGuard<'_, BTreeMap<u32, Kek>>> {
        self.keks.write().map_err(|_| poisoned())
    }

    fn aad(&self, version: u32) -> Vec<u8> {
        let mut v = self.domain.to_vec();
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&version.to_be_bytes());
        v
    }

    /// The newest version that still has its key.
    pub(crate) fn current_version(&self) -> u32 {
        self.keks
            .read()
            .map(|k| {
                k.iter()
                    .rev()
                    .find(|(_, k)| k.key.is_some())
                    .map_or(0, |(v, _)| *v)
            })
            .unwrap_or(0)
    }

    pub(crate) fn versions(&self) -> Result<Vec<KekInfo>> {
        Ok(self
            .read()?
            .iter()
            .map(|(v, k)| KekInfo {
                version: *v,
                created_at: k.created_at,
                state: if k.key.is_some() {
                    KekState::Active
                } else {
                    KekState::Retired
                },
            })
            .collect())
    }

    /// `nonce ‖ AES-256-GCM(kek, dek) ‖ tag` under the current version.
    pub(crate) fn wrap(&self, dek: &Dek) -> Result<(u32, Vec<u8>)> {
        let keks = self.read()?;
        let (version, key) = keks
            .iter()
            .rev()
            .find_map(|(v, k)| k.key.as_ref().map(|key| (*v, key)))
            .ok_or(CryptoError::UnknownVersion(0))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut body = dek.expose().to_vec();
        gcm_key(key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(version)),
                &mut body,
            )
            .map_err(|_| CryptoError::Provider("wrap failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        Ok((version, out))
    }

    pub(crate) fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<Dek> {
        let keks = self.read()?;
        let key = keks
            .get(&version)
            .and_then(|k| k.key.as_ref())
            .ok_or(CryptoError::UnknownVersion(version))?;
        if wrapped.len() != NONCE_LEN + Dek::LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Authentication);
        }
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Authentication)?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain = gcm_key(key)?
            .open_in_place(nonce, Aad::from(self.aad(version)), &mut body)
            .map_err(|_| CryptoError::Authentication)?;
        Dek::from_slice(plain)
    }
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub(crate) fn hmac32(key: &Dek, parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// A derived secret for one purpose (`KeyProvider::derive_secret`).
pub(crate) fn derive(root: &Dek, purpose: &str) -> crate::Secret32 {
    crate::Secret32::from_bytes(hmac32(root, &[b"skygate-derive-v1", purpose.as_bytes()]))
}

/// The data key mixed with a shred key (`KeyProvider::shred_mix`).
pub(crate) fn mix(shred_key: &Dek, dek: &Dek) -> Dek {
    Dek::from_bytes(hmac32(shred_key, &[b"skygate-shred-v1", dek.expose()]))
}

/// A fresh random shred id (never 0).
pub(crate) fn new_shred_id() -> Result<crate::ShredId> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CryptoError::Random)?;
    Ok(u64::from_be_bytes(b) | 1)
}

/// Unix seconds now.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The [`crate::KeyProvider`] methods a provider with fields `id: u32` and `keks: KekSet` answers from
/// its [`KekSet`].
macro_rules! delegate_keks {
    ($kind:literal) => {
        fn kind(&self) -> &'static str {
            $kind
        }

        fn keyring_id(&self) -> u32 {
            self.id
        }

        fn current_version(&self) -> u32 {
            self.keks.current_version()
        }

        fn versions(&self) -> $crate::Result<Vec<$crate::KekInfo>> {
            self.keks.versions()
        }

        fn wrap(&self, dek: &$crate::Dek) -> $crate::Result<(u32, Vec<u8>)> {
            self.keks.wrap(dek)
        }

        fn unwrap(&self, version: u32, wrapped: &[u8]) -> $crate::Result<$crate::Dek> {
            self.keks.unwrap(version, wrapped)
        }
    };
}

pub(crate) use delegate_keks;

//! An in-memory key provider: real AES-256-GCM wrapping and HMAC derivation, but every key lives only as
//! long as the value. For tests and benchmarks of code above the provider (stores, servers) where a
//! keyring on disk adds nothing; never selectable in configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use ring::aead::{Aad, Nonce, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::envelope::gcm_key;
use crate::{CryptoError, Dek, KekInfo, KekState, KeyProvider, Result, Secret32, ShredId};

const WRAP_DOMAIN: &[u8] = b"skygate-memory-wrap";

struct Kek {
    key: Option<Dek>,
    created_at: i64,
}

/// Keys in memory only. See the module docs.
pub struct MemoryKeyring {
    id: u32,
    root: Dek,
    keks: RwLock<BTreeMap<u32, Kek>>,
    shreds: RwLock<HashMap<ShredId, Dek>>,
    rng: SystemRandom,
}

impl MemoryKeyring {
    /// A new keyring with version 1.
    pub fn new() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut id = [0u8; 4];
        rng.fill(&mut id).map_err(|_| CryptoError::Random)?;
        let ring = MemoryKeyring {
            id: u32::from_be_bytes(id) | 1,
            root: Dek::generate()?,
            keks: RwLock::new(BTreeMap::new()),
            shreds: RwLock::new(HashMap::new()),
            rng,
        };
        ring.rotate()?;
        Ok(ring)
    }

    fn poisoned() -> CryptoError {
        CryptoError::Provider("in-memory keyring lock poisoned".into())
    }

    fn aad(&self, version: u32) -> Vec<u8> {
        let mut v = WRAP_DOMAIN.to_vec();
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&version.to_be_bytes());
        v
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hmac32(key: &Dek, parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

impl KeyProvider for MemoryKeyring {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn keyring_id(&self) -> u32 {
        self.id
    }

    fn current_version(&self) -> u32 {
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

    fn versions(&self) -> Result<Vec<KekInfo>> {
        let keks = self.keks.read().map_err(|_| Self::poisoned())?;
        Ok(keks
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

    fn wrap(&self, dek: &Dek) -> Result<(u32, Vec<u8>)> {
        let keks = self.keks.read().map_err(|_| Self::poisoned())?;
        let (version, key) = keks
            .iter()
            .rev()
            .find_map(|(v, k)| k.key.as_ref().map(|key| (*v, key)))
            .ok_or(CryptoError::UnknownVersion(0))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = nonce.to_vec();
        let mut body = dek.expose().to_vec();
        gcm_key(key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(version)),
                &mut body,
            )
            .map_err(|_| CryptoError::Provider("wrap failed".into()))?;
        out.extend_from_slice(&body);
        Ok((version, out))
    }

    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<Dek> {
        let keks = self.keks.read().map_err(|_| Self::poisoned())?;
        let key = keks
            .get(&version)
            .and_then(|k| k.key.as_ref())
            .ok_or(CryptoError::UnknownVersion(version))?;
        if wrapped.len() != NONCE_LEN + 32 + AES_256_GCM.tag_len() {
            return Err(CryptoError::Authentication);
        }
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Authentication)?;
        let mut body = zeroize::Zeroizing::new(body.to_vec());
        let plain = gcm_key(key)?
            .open_in_place(nonce, Aad::from(self.aad(version)), &mut body)
            .map_err(|_| CryptoError::Authentication)?;
        Dek::from_slice(plain)
    }

    fn rotate(&self) -> Result<u32> {
        let mut keks = self.keks.write().map_err(|_| Self::poisoned())?;
        let version = keks.keys().next_back().map_or(1, |v| v + 1);
        keks.insert(
            version,
            Kek {
                key: Some(Dek::generate()?),
                created_at: now_secs(),
            },
        );
        Ok(version)
    }

    fn retire(&self, version: u32) -> Result<()> {
        if version == self.current_version() {
            return Err(CryptoError::Refused(format!(
                "version {version} is the current key-encryption key; rotate first"
            )));
        }
        let mut keks = self.keks.write().map_err(|_| Self::poisoned())?;
        let kek = keks
            .get_mut(&version)
            .ok_or(CryptoError::UnknownVersion(version))?;
        kek.key = None;
        Ok(())
    }

    fn refresh(&self) -> Result<()> {
        Ok(())
    }

    fn derive_secret(&self, purpose: &str) -> Result<Secret32> {
        Ok(Secret32::from_bytes(hmac32(
            &self.root,
            &[b"skygate-derive-v1", purpose.as_bytes()],
        )))
    }

    fn create_shred_key(&self) -> Result<ShredId> {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
        let id = u64::from_be_bytes(b) | 1;
        self.shreds
            .write()
            .map_err(|_| Self::poisoned())?
            .insert(id, Dek::generate()?);
        Ok(id)
    }

    fn shred_mix(&self, id: ShredId, dek: &Dek) -> Result<Dek> {
        let shreds = self.shreds.read().map_err(|_| Self::poisoned())?;
        let key = shreds.get(&id).ok_or(CryptoError::Shredded(id))?;
        Ok(Dek::from_bytes(hmac32(key, &[b"skygate-shred-v1", dek.expose()])))
    }

    fn destroy_shred_key(&self, id: ShredId) -> Result<()> {
        self.shreds.write().map_err(|_| Self::poisoned())?.remove(&id);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Aad as Place, Cipher};

    #[test]
    fn seal_open_rotate_retire_shred() {
        let ring = Arc::new(MemoryKeyring::new().unwrap());
        let c = Cipher::new(ring.clone());
        let at = Place::field("t", "r1", "c", "acct");
        let v1 = c.seal(b"hello", &at).unwrap();
        assert_eq!(&c.open(&v1, &at).unwrap()[..], b"hello");
        assert_eq!(ring.rotate().unwrap(), 2);
        let moved = c.rewrap(&v1).unwrap().unwrap();
        ring.retire(1).unwrap();
        assert!(matches!(c.open(&v1, &at), Err(CryptoError::UnknownVersion(1))));
        assert_eq!(&c.open(&moved, &at).unwrap()[..], b"hello");
        let s = ring.create_shred_key().unwrap();
        let v = c.seal_shreddable(b"gone", &at, s).unwrap();
        assert_eq!(&c.open(&v, &at).unwrap()[..], b"gone");
        ring.destroy_shred_key(s).unwrap();
        assert!(matches!(c.open(&v, &at), Err(CryptoError::Shredded(_))));
        assert!(matches!(ring.retire(2), Err(CryptoError::Refused(_))));
    }
}

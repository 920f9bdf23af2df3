//! An in-memory key provider: real AES-256-GCM wrapping and HMAC derivation, but every key lives only as
//! long as the value. For tests and benchmarks of code above the provider (stores, servers) where a
//! keyring on disk adds nothing; never selectable in configuration.

use std::collections::HashMap;
use std::sync::RwLock;

use ring::rand::{SecureRandom, SystemRandom};

use crate::kekset::{derive, mix, new_shred_id, now_secs, Kek, KekSet};
use crate::{CryptoError, Dek, KeyProvider, Result, Secret32, ShredId};

/// Keys in memory only. See the module docs.
pub struct MemoryKeyring {
    id: u32,
    root: Dek,
    keks: KekSet,
    shreds: RwLock<HashMap<ShredId, Dek>>,
}

impl MemoryKeyring {
    /// A new keyring with version 1.
    pub fn new() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut id = [0u8; 4];
        rng.fill(&mut id).map_err(|_| CryptoError::Random)?;
        let id = u32::from_be_bytes(id) | 1;
        let ring = MemoryKeyring {
            id,
            root: Dek::generate()?,
            keks: KekSet::new(id, b"skygate-memory-wrap"),
            shreds: RwLock::new(HashMap::new()),
        };
        ring.rotate()?;
        Ok(ring)
    }

    fn poisoned() -> CryptoError {
        CryptoError::Provider("in-memory keyring lock poisoned".into())
    }
}

impl KeyProvider for MemoryKeyring {
    crate::kekset::delegate_keks!("memory");

    fn rotate(&self) -> Result<u32> {
        let mut keks = self.keks.write()?;
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
        let mut keks = self.keks.write()?;
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
        Ok(derive(&self.root, purpose))
    }

    fn create_shred_key(&self) -> Result<ShredId> {
        let id = new_shred_id()?;
        self.shreds
            .write()
            .map_err(|_| Self::poisoned())?
            .insert(id, Dek::generate()?);
        Ok(id)
    }

    fn shred_mix(&self, id: ShredId, dek: &Dek) -> Result<Dek> {
        let shreds = self.shreds.read().map_err(|_| Self::poisoned())?;
        let key = shreds.get(&id).ok_or(CryptoError::Shredded(id))?;
        Ok(mix(key, dek))
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

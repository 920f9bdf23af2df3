//! A short-lived cache of credential lookups (found and not found), keyed by the credential's keyed
//! hash. Entries live at most the configured TTL (≤ 1 s), so a revocation made anywhere is in force
//! everywhere within that time. Sharded read-write locks keep the hot path free of one global lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use skygate_core::KeyAuthRecord;

const SHARDS: usize = 16;
/// Entries per shard before stale ones are swept (and, if still full, the shard is cleared).
const SHARD_CAP: usize = 4096;

/// Hashes a map key that is itself a keyed hash (HMAC-SHA256 under the provider-held pepper, so
/// uniformly distributed and not choosable by a client): its bytes 8..16 are the map's hash as they are,
/// instead of running SipHash over all 32 bytes on every request. (Byte 0 picks the shard.)
#[derive(Default)]
struct PresortedHasher(u64);

impl std::hash::Hasher for PresortedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => self.0 ^= u64::from_le_bytes(b),
            // Only the slice's length prefix comes here; folded in, harmlessly.
            None => {
                for &b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }
}

type Shard = HashMap<[u8; 32], Entry, std::hash::BuildHasherDefault<PresortedHasher>>;

struct Entry {
    found: Option<Arc<KeyAuthRecord>>,
    at: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    shards: Vec<RwLock<Shard>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, hash: &[u8; 32]) -> &RwLock<Shard> {
        &self.shards[usize::from(hash[0]) % SHARDS]
    }

    /// `Some(found)` if a fresh entry exists (`found` may be `None`: known not to exist).
    pub fn get(&self, hash: &[u8; 32]) -> Option<Option<Arc<KeyAuthRecord>>> {
        if self.ttl.is_zero() {
            return None;
        }
        let shard = self.shard(hash).read().ok()?;
        let e = shard.get(hash)?;
        (e.at.elapsed() < self.ttl).then(|| e.found.clone())
    }

    pub fn insert(&self, hash: [u8; 32], found: Option<Arc<KeyAuthRecord>>) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut shard) = self.shard(&hash).write() else {
            return;
        };
        if shard.len() >= SHARD_CAP {
            let ttl = self.ttl;
            shard.retain(|_, e| e.at.elapsed() < ttl);
            if shard.len() >= SHARD_CAP {
                shard.clear();
            }
        }
        shard.insert(
            hash,
            Entry {
                found,
                at: Instant::now(),
            },
        );
    }

    /// Forgets everything (after an in-process revocation).
    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.write() {
                s.clear();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_zero_ttl_disables() {
        let c = KeyCache::new(Duration::from_millis(50));
        c.insert([1; 32], None);
        assert_eq!(c.get(&[1; 32]), Some(None));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&[1; 32]), None);
        let off = KeyCache::new(Duration::ZERO);
        off.insert([1; 32], None);
        assert_eq!(off.get(&[1; 32]), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = KeyCache::new(Duration::from_secs(1));
        for i in 0..(SHARD_CAP * 2) {
            let mut h = [0u8; 32];
            // Byte 0 (the shard) stays 0; bytes 8..16 (the map's hash) vary as a keyed hash's would.
            h[8..16].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            c.insert(h, None);
        }
        assert!(c.shards[0].read().unwrap().len() <= SHARD_CAP);
    }
}

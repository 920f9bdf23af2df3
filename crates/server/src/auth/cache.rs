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

struct Entry {
    found: Option<Arc<KeyAuthRecord>>,
    at: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    shards: Vec<RwLock<HashMap<[u8; 32], Entry>>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, hash: &[u8; 32]) -> &RwLock<HashMap<[u8; 32], Entry>> {
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
            h[1..9].copy_from_slice(&(i as u64).to_le_bytes());
            c.insert(h, None);
        }
        assert!(c.shards[0].read().unwrap().len() <= SHARD_CAP);
    }
}

//! The in-process backend: each bucket's TAT in one of 64 mutex-guarded shards chosen by a hash of its
//! key, so checks of different keys rarely contend and no global lock sits on the hot path.
//!
//! Each key is hashed once (SipHash with a per-limiter random key): the hash picks the shard and finds
//! the entry in that shard's table.
//!
//! A check of several limits locks every shard it needs, in ascending shard order (each shard once),
//! decides all limits, and stores all new TATs or none before unlocking: all or nothing under
//! concurrency, and no deadlock since every check takes the locks in the same order. A key whose TAT
//! has passed is equivalent to one never used, so such entries are dropped whenever a shard grows past
//! its sweep threshold: memory stays proportional to the keys active within their windows. Checking an
//! existing key allocates nothing.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use skygate_core::ratelimit::{adjust, check, Verdict};
use smallvec::{smallvec, SmallVec};

use crate::{Decision, Limit, LimitError, Limiter, INLINE_LIMITS};

/// A source of the current time in microseconds since the Unix epoch (injectable for tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system time read once, then advanced by the monotonic clock: a wall-clock step (NTP) cannot
/// move limits backwards or forwards.
pub fn system_clock() -> Clock {
    let anchor = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let start = Instant::now();
    Arc::new(move || {
        let elapsed = i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX);
        anchor.saturating_add(elapsed)
    })
}

const SHARDS: usize = 64;
/// Entries a shard may hold before it first sweeps out replenished keys.
const DEFAULT_SWEEP_THRESHOLD: usize = 1024;

/// One bucket's state, with its key's hash kept so the table never rehashes a key.
struct Entry {
    hash: u64,
    key: Box<str>,
    tat: i64,
}

struct Shard {
    tats: HashTable<Entry>,
    /// Sweep when `tats` reaches this size: twice what survived the last sweep, so sweeping stays
    /// amortised O(1) per insert.
    sweep_at: usize,
}

impl Shard {
    fn get(&self, hash: u64, key: &str) -> Option<i64> {
        self.tats.find(hash, |e| &*e.key == key).map(|e| e.tat)
    }

    /// Stores `tat` for `key`, allocating the key only when it is new.
    fn store(&mut self, hash: u64, key: &str, tat: i64, now: i64, threshold: usize) {
        if let Some(e) = self.tats.find_mut(hash, |e| &*e.key == key) {
            e.tat = tat;
            return;
        }
        if self.tats.len() >= self.sweep_at {
            self.tats.retain(|e| e.tat > now);
            self.sweep_at = (self.tats.len() * 2).max(threshold);
            // Give back what a burst of keys left behind, so memory follows the live keys down too.
            if self.tats.capacity() > 4 * self.sweep_at {
                self.tats.shrink_to(self.sweep_at, |e| e.hash);
            }
        }
        let entry = Entry {
            hash,
            key: key.into(),
            tat,
        };
        self.tats.insert_unique(hash, entry, |e| e.hash);
    }
}

/// The default backend: GCRA state in this process's memory.
pub struct InProcessLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Clock,
    sweep_threshold: usize,
}

impl fmt::Debug for InProcessLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessLimiter")
            .field("shards", &self.shards.len())
            .field("sweep_threshold", &self.sweep_threshold)
            .finish_non_exhaustive()
    }
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessLimiter {
    /// A limiter on the [`system_clock`].
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// A limiter reading the time from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tats: HashTable::new(),
                    sweep_at: DEFAULT_SWEEP_THRESHOLD,
                })
            })
            .collect();
        InProcessLimiter {
            shards,
            hasher: RandomState::new(),
            clock,
            sweep_threshold: DEFAULT_SWEEP_THRESHOLD,
        }
    }

    /// Sets how many entries a shard holds before it first sweeps out replenished keys (default 1024).
    pub fn with_sweep_threshold(mut self, entries: usize) -> Self {
        let entries = entries.max(1);
        self.sweep_threshold = entries;
        for shard in self.shards.iter_mut() {
            let shard = shard.get_mut().unwrap_or_else(PoisonError::into_inner);
            shard.sweep_at = entries;
        }
        self
    }

    /// The time this limiter decides at, in microseconds (its clock).
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// [`Limiter::check`] without the async wrapper (which boxes its future): the zero-allocation
    /// path for an existing key.
    pub fn check_sync(&self, limits: &[Limit<'_>], cost: u32) -> Decision {
        let now = (self.clock)();
        match limits {
            [] => Decision::from_verdicts(limits, SmallVec::new()),
            [one] => {
                let hash = self.hasher.hash_one(one.key);
                let mut shard = self.lock(shard_of(hash));
                let v = check(shard.get(hash, one.key), now, &one.quota, one.cost(cost));
                if v.allowed {
                    shard.store(hash, one.key, v.new_tat, now, self.sweep_threshold);
                }
                Decision::from_verdicts(limits, smallvec![v])
            }
            _ => self.check_many(limits, cost, now),
        }
    }

    fn check_many(&self, limits: &[Limit<'_>], cost: u32, now: i64) -> Decision {
        let hashes: SmallVec<[u64; INLINE_LIMITS]> =
            limits.iter().map(|l| self.hasher.hash_one(l.key)).collect();
        let wanted: SmallVec<[usize; INLINE_LIMITS]> = hashes.iter().map(|&h| shard_of(h)).collect();
        let mut order = wanted.clone();
        order.sort_unstable();
        order.dedup();
        // Ascending shard order, the same in every check: two checks never wait on each other in a cycle.
        let mut guards: SmallVec<[MutexGuard<'_, Shard>; INLINE_LIMITS]> =
            order.iter().map(|&i| self.lock(i)).collect();
        let slot = |shard: usize| order.binary_search(&shard).unwrap_or_else(|i| i);

        let verdicts: SmallVec<[Verdict; INLINE_LIMITS]> = (0..limits.len())
            .map(|i| {
                let tat = guards[slot(wanted[i])].get(hashes[i], limits[i].key);
                check(tat, now, &limits[i].quota, limits[i].cost(cost))
            })
            .collect();
        let decision = Decision::from_verdicts(limits, verdicts);
        if decision.allowed {
            for (i, v) in decision.verdicts.iter().enumerate() {
                let shard = &mut guards[slot(wanted[i])];
                shard.store(hashes[i], limits[i].key, v.new_tat, now, self.sweep_threshold);
            }
        }
        decision
    }

    /// [`Limiter::adjust`] without the async wrapper.
    pub fn adjust_sync(&self, limit: &Limit<'_>, delta: i64) {
        let now = (self.clock)();
        let hash = self.hasher.hash_one(limit.key);
        let mut shard = self.lock(shard_of(hash));
        let tat = shard.get(hash, limit.key);
        // A full bucket is stored as `now`: the same as no entry, and swept like one.
        let moved = adjust(tat, now, &limit.quota, delta).unwrap_or(now);
        if tat.is_some() || moved > now {
            shard.store(hash, limit.key, moved, now, self.sweep_threshold);
        }
    }

    /// How many buckets are held (replenished ones may linger until their shard's next sweep).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).tats.len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A shard only holds numbers, each written whole: a panic elsewhere cannot leave it inconsistent.
        self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shard of a key hash: bits 32 to 37, which the shard's table uses for neither the slot (low bits)
/// nor the tag (top 7 bits), so keys spread evenly within each shard too.
fn shard_of(hash: u64) -> usize {
    ((hash >> 32) % SHARDS as u64) as usize
}

#[async_trait::async_trait]
impl Limiter for InProcessLimiter {
    async fn check(&self, limits: &[Limit<'_>], cost: u32) -> Result<Decision, LimitError> {
        Ok(self.check_sync(limits, cost))
    }

    async fn adjust(&self, limit: &Limit<'_>, delta: i64) -> Result<(), LimitError> {
        self.adjust_sync(limit, delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::Quota;

    fn fake_clock() -> (Arc<AtomicI64>, Clock) {
        let t = Arc::new(AtomicI64::new(1_000_000));
        let c = t.clone();
        (t, Arc::new(move || c.load(Ordering::SeqCst)))
    }

    #[test]
    fn replenished_keys_are_swept_once_a_shard_fills() {
        let (time, clock) = fake_clock();
        let limiter = InProcessLimiter::with_clock(clock).with_sweep_threshold(4);
        let quota = Quota {
            limit: 10,
            window: Duration::from_secs(1),
        };
        let keys: Vec<String> = (0..2_000).map(|i| format!("k:{i}")).collect();
        for k in &keys {
            assert!(limiter.check_sync(&[Limit::new("requests", k, quota)], 1).allowed);
        }
        assert_eq!(limiter.len(), 2_000);
        // Every TAT has passed: the next inserts sweep them all out.
        time.fetch_add(2_000_000, Ordering::SeqCst);
        // Every shard then grows past its threshold (at most twice what it held), sweeping all the old.
        for i in 0..8_000 {
            let k = format!("new:{i}");
            assert!(
                limiter
                    .check_sync(&[Limit::new("requests", &k, quota)], 1)
                    .allowed
            );
        }
        assert_eq!(limiter.len(), 8_000);
    }

    #[test]
    fn the_system_clock_is_microseconds_since_the_epoch() {
        let now = system_clock()();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
        assert!((now - wall).abs() < 1_000_000);
    }
}

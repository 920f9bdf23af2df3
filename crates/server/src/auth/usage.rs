//! Coalesced key-use tracking: requests record `(key, time)` in memory and a background task writes
//! the latest time per key in one batch every few seconds, so authentication costs no database write.

use std::collections::HashMap;
use std::sync::Mutex;

use skygate_core::{KeyId, Timestamp};

#[derive(Default)]
pub struct UsageLog {
    pending: Mutex<HashMap<KeyId, Timestamp>>,
}

impl UsageLog {
    pub fn record(&self, key: &KeyId, at: Timestamp) {
        if let Ok(mut m) = self.pending.lock() {
            match m.get_mut(key) {
                Some(t) if *t >= at => {}
                Some(t) => *t = at,
                None => {
                    m.insert(key.clone(), at);
                }
            }
        }
    }

    /// Takes every pending update.
    pub fn drain(&self) -> Vec<(KeyId, Timestamp)> {
        match self.pending.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_latest_per_key() {
        let log = UsageLog::default();
        let k = KeyId::generate().unwrap();
        log.record(&k, Timestamp::from_micros(5));
        log.record(&k, Timestamp::from_micros(3));
        log.record(&k, Timestamp::from_micros(9));
        assert_eq!(log.drain(), vec![(k, Timestamp::from_micros(9))]);
        assert!(log.drain().is_empty());
    }
}

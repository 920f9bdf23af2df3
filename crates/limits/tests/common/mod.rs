//! Shared by the integration tests: a fake clock (the Redis helpers are `skygate_testkit::redis`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use skygate_limits::Clock;

/// A clock that moves only when the test moves it (microseconds).
pub fn fake_clock(start: i64) -> (Arc<AtomicI64>, Clock) {
    let time = Arc::new(AtomicI64::new(start));
    let read = time.clone();
    (time, Arc::new(move || read.load(Ordering::SeqCst)))
}

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

/// The same on every backend: a weighted limit (a token limit checked with a request limit, all or
/// nothing) and corrections after the fact. Windows of an hour, so the milliseconds between calls
/// (on Redis time) cannot change a count; `prefix` keeps the buckets apart from other tests'.
pub async fn weighted_limits_and_adjustments(limiter: &dyn skygate_limits::Limiter, prefix: &str) {
    use skygate_limits::{Limit, Quota};
    use std::time::Duration;
    let hour = Duration::from_secs(3_600);
    let (rk, tk) = (format!("{prefix}k:key_w"), format!("{prefix}t:acct_w:m"));
    let requests = Limit::new(
        "requests",
        &rk,
        Quota {
            limit: 10,
            window: hour,
        },
    );
    let tokens_q = Quota {
        limit: 1_000,
        window: hour,
    };
    let tokens = |estimate: u32| Limit::new("tokens", &tk, tokens_q).weighted(estimate);

    let d = limiter.check(&[requests, tokens(300)], 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.verdicts[0].remaining, d.verdicts[1].remaining), (9, 700));
    // 800 more tokens do not fit: refused, and the request limit is not consumed either.
    let d = limiter.check(&[requests, tokens(800)], 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.tripped().unwrap().name, "tokens");
    assert_eq!(d.verdicts[1].remaining, 700);
    // The request used 100 of its 300: 200 come back, so 900 fit now, and nothing more.
    limiter.adjust(&tokens(1), -200).await.unwrap();
    let d = limiter.check(&[requests, tokens(900)], 1).await.unwrap();
    assert!(d.allowed, "{d:?}");
    // Two requests counted: the refused one took nothing.
    assert_eq!((d.verdicts[0].remaining, d.verdicts[1].remaining), (8, 0));
    // It used 50 more than it was admitted for: the bucket is in debt and refuses even one token.
    limiter.adjust(&tokens(1), 50).await.unwrap();
    let d = limiter.check(&[tokens(1)], 1).await.unwrap();
    assert!(!d.allowed);
    let wait = d.tripped().unwrap().retry_after.as_secs_f64();
    assert!(
        (wait - 51.0 * 3.6).abs() < 1.0,
        "waits off the debt and one token: {wait}"
    );
    // A refund larger than everything taken leaves a full bucket, never more than the burst.
    limiter.adjust(&tokens(1), -1_000_000).await.unwrap();
    assert!(limiter.check(&[tokens(1_000)], 1).await.unwrap().allowed);
    assert!(!limiter.check(&[tokens(1)], 1).await.unwrap().allowed);
    limiter.adjust(&tokens(1), -5_000).await.unwrap();
    assert!(
        !limiter.check(&[tokens(1_001)], 1).await.unwrap().allowed,
        "beyond the burst"
    );
    // A weight of zero (a look) consumes nothing.
    assert_eq!(
        limiter.check(&[tokens(0)], 1).await.unwrap().verdicts[0].remaining,
        1_000
    );
}

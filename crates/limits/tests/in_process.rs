//! The in-process backend: accuracy (burst B and rate r over t seconds pass B + r·t ± 1) with a fake
//! clock and with two threads on the real clock, and atomicity (a denied check consumes no limit),
//! alone and under contention.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skygate_limits::{InProcessLimiter, Limit, Limiter, Quota};

const SEC: i64 = 1_000_000;

fn quota(limit: u32, window: Duration) -> Quota {
    Quota { limit, window }
}

fn within(got: u64, want: f64, tolerance: f64) -> bool {
    (got as f64 - want).abs() <= tolerance
}

#[test]
fn fake_clock_accuracy_is_burst_plus_rate_times_time() {
    for (limit, window_s, t_s, step_us) in [
        (10u32, 1u64, 5i64, 1_000i64),
        (25, 60, 30, 7_000),
        (600, 60, 10, 100),
    ] {
        let (time, clock) = common::fake_clock(1_700_000_000 * SEC);
        let limiter = InProcessLimiter::with_clock(clock);
        let q = quota(limit, Duration::from_secs(window_s));
        let start = time.load(Ordering::SeqCst);
        let mut allowed = 0u64;
        while time.load(Ordering::SeqCst) - start <= t_s * SEC {
            if limiter
                .check_sync(&[Limit::new("requests", "k:key_a", q)], 1)
                .allowed
            {
                allowed += 1;
            }
            time.fetch_add(step_us, Ordering::SeqCst);
        }
        let want = f64::from(limit) + f64::from(limit) / window_s as f64 * t_s as f64;
        assert!(
            within(allowed, want, 1.0),
            "{limit}/{window_s}s over {t_s}s: {allowed} vs {want}"
        );
    }
}

#[test]
fn two_threads_on_the_real_clock_share_one_limit() {
    let limiter = Arc::new(InProcessLimiter::new());
    let q = quota(50, Duration::from_secs(1)); // B = 50, r = 50/s
    let limit = [Limit::new("requests", "k:key_shared", q)];
    // The limit's clock starts at its first check, made here between two instants; at the end the
    // main thread drains what is left, again between two instants. Whatever the scheduler does to
    // the threads in between (a preempted thread sleeping past the end, both threads paused), the
    // total allowed must lie within B + r·t ± 1 for t bracketed by those instants: no request lost
    // and none allowed twice between the two threads.
    let start = Instant::now();
    assert!(limiter.check_sync(&limit, 1).allowed);
    let first_checked = Instant::now();
    let allowed = Arc::new(AtomicU64::new(1));
    let run_for = Duration::from_millis(1_500);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (limiter, allowed) = (limiter.clone(), allowed.clone());
            std::thread::spawn(move || {
                while start.elapsed() < run_for {
                    if limiter.check_sync(&limit, 1).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let threaded = allowed.load(Ordering::Relaxed);
    let drain_start = Instant::now();
    let mut got = threaded;
    while limiter.check_sync(&limit, 1).allowed {
        got += 1;
    }
    let drain_end = Instant::now();
    let low = 50.0 + 50.0 * drain_start.duration_since(first_checked).as_secs_f64() - 1.0;
    let high = 50.0 + 50.0 * drain_end.duration_since(start).as_secs_f64() + 1.0;
    println!(
        "in-process, 2 threads, {:.3} s: allowed {threaded} by the threads, {got} with the rest; \
         B + r·t ± 1 spans [{low:.1}, {high:.1}]",
        drain_end.duration_since(start).as_secs_f64()
    );
    assert!(threaded > 50, "the threads were allowed only {threaded}");
    assert!(
        (low..=high).contains(&(got as f64)),
        "allowed {got}, want within [{low:.1}, {high:.1}]"
    );
}

#[tokio::test]
async fn a_denied_second_limit_leaves_the_first_unconsumed() {
    let (_time, clock) = common::fake_clock(1_700_000_000 * SEC);
    let limiter = InProcessLimiter::with_clock(clock);
    let key = Limit::new("requests", "k:key_a", quota(100, Duration::from_secs(60)));
    let create = Limit::new("predictions", "c:acct_a:echo", quota(1, Duration::from_secs(60)));

    let first = limiter.check(&[key, create], 1).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.verdicts[0].remaining, 99);

    let second = limiter.check(&[key, create], 1).await.unwrap();
    assert!(!second.allowed);
    let tripped = second.tripped().unwrap();
    assert_eq!(tripped.name, "predictions");
    assert_eq!(tripped.retry_after, Duration::from_secs(60));
    assert!(
        second.verdicts[0].allowed,
        "the key limit alone would have allowed it"
    );

    // Had the denied check consumed the key limit, this would say 97.
    let alone = limiter.check(&[key], 1).await.unwrap();
    assert_eq!(alone.verdicts[0].remaining, 98);
}

#[test]
fn all_or_nothing_holds_under_contention() {
    // A frozen clock: nothing replenishes, so every unit consumed is accounted for at the end.
    let (_time, clock) = common::fake_clock(1_700_000_000 * SEC);
    let limiter = Arc::new(InProcessLimiter::with_clock(clock));
    let hour = Duration::from_secs(3_600);
    let key = quota(1_000, hour);
    let model_a = quota(50, hour);
    let model_b = quota(30, hour);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let limiter = limiter.clone();
            std::thread::spawn(move || {
                let mut allowed = [0u64; 2];
                for n in 0..2_000 {
                    // Both orders of the same keys, so lock ordering is exercised too.
                    let d = if (i + n) % 2 == 0 {
                        let limits = [
                            Limit::new("requests", "k:key_s", key),
                            Limit::new("predictions", "c:acct_s:a", model_a),
                        ];
                        (limiter.check_sync(&limits, 1).allowed, 0)
                    } else {
                        let limits = [
                            Limit::new("predictions", "c:acct_s:b", model_b),
                            Limit::new("requests", "k:key_s", key),
                        ];
                        (limiter.check_sync(&limits, 1).allowed, 1)
                    };
                    if d.0 {
                        allowed[d.1] += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = [0u64; 2];
    for t in threads {
        let a = t.join().unwrap();
        allowed[0] += a[0];
        allowed[1] += a[1];
    }
    assert_eq!(
        allowed,
        [50, 30],
        "each model limit lets exactly its burst through"
    );
    // The shared key limit was consumed by exactly the allowed requests, not by the 7,920 denied ones.
    let peek = limiter.check_sync(&[Limit::new("requests", "k:key_s", key)], 0);
    assert_eq!(peek.verdicts[0].remaining, 1_000 - 80);
}

#[test]
fn cost_counts_as_that_many_requests() {
    let (_time, clock) = common::fake_clock(0);
    let limiter = InProcessLimiter::with_clock(clock);
    let limits = [Limit::new(
        "daily_quota",
        "d:acct_a",
        quota(10, Duration::from_secs(86_400)),
    )];
    assert_eq!(limiter.check_sync(&limits, 4).verdicts[0].remaining, 6);
    assert!(!limiter.check_sync(&limits, 7).allowed);
    assert_eq!(limiter.check_sync(&limits, 6).verdicts[0].remaining, 0);
    assert!(limiter.check_sync(&[], 1).allowed, "no limits: nothing to deny");
}

#[tokio::test]
async fn weighted_limits_and_adjustments() {
    let limiter = InProcessLimiter::new();
    common::weighted_limits_and_adjustments(&limiter, "").await;
}

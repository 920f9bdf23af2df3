//! The in-process hot path allocates nothing once a key exists: counted with an instrumented global
//! allocator (which is why this is its own test binary, with a single test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::hint::black_box;
use std::time::Duration;

use skygate_limits::{InProcessLimiter, Limit, Quota};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CHECKS: usize = 10_000;

fn allocations(f: impl Fn()) -> usize {
    let region = Region::new(GLOBAL);
    for _ in 0..CHECKS {
        f();
    }
    let change = region.change();
    change.allocations + change.reallocations
}

#[test]
fn checks_on_existing_keys_allocate_nothing() {
    // The counter works: a Box is seen.
    assert!(allocations(|| drop(black_box(Box::new(1u64)))) >= CHECKS);

    let limiter = InProcessLimiter::new();
    let loose = Quota {
        limit: u32::MAX,
        window: Duration::from_secs(1),
    };
    let tight = Quota {
        limit: 1,
        window: Duration::from_secs(3_600),
    };
    let three = [
        Limit::new("requests", "k:key_alloc", loose),
        Limit::new("predictions", "c:acct_alloc:echo", loose),
        Limit::new("daily_quota", "d:acct_alloc", loose),
    ];
    let denied = [Limit::new("predictions", "c:acct_alloc:tight", tight)];
    // Warm-up: the keys are created (allocated) here.
    assert!(limiter.check_sync(&three, 1).allowed);
    assert!(limiter.check_sync(&denied, 1).allowed);

    let one = allocations(|| assert!(black_box(limiter.check_sync(black_box(&three[..1]), 1)).allowed));
    let all = allocations(|| assert!(black_box(limiter.check_sync(black_box(&three), 1)).allowed));
    let no = allocations(|| assert!(!black_box(limiter.check_sync(black_box(&denied), 1)).allowed));
    println!("allocations per {CHECKS} checks: 1 limit {one}, 3 limits {all}, denied {no}");
    // The counter is process-wide: the test harness's other threads may allocate a few times while
    // 10,000 checks run. An allocation per check would show as ≥ 10,000.
    for (what, n) in [("1 limit", one), ("3 limits", all), ("denied", no)] {
        assert!(n < 50, "{what}: {n} allocations per {CHECKS} checks");
    }
}

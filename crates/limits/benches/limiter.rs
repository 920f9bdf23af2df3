//! Per-check cost of the limiters: the in-process GCRA on an existing key (one limit and three, sync
//! and through the async trait), and, when `SKYGATE_TEST_REDIS_URL` is set, the Redis script round trip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use skygate_limits::{InProcessLimiter, Limit, Limiter, Quota, RedisConfig, RedisLimiter};

fn quota(limit: u32) -> Quota {
    Quota {
        limit,
        window: Duration::from_secs(1),
    }
}

/// Limits so loose that every benchmarked check is allowed (and so stores).
fn limits() -> [Limit<'static>; 3] {
    [
        Limit::new("requests", "k:key_bench", quota(u32::MAX)),
        Limit::new("predictions", "c:acct_bench:echo", quota(u32::MAX)),
        Limit::new("daily_quota", "d:acct_bench", quota(u32::MAX)),
    ]
}

fn in_process(c: &mut Criterion) {
    let limiter = InProcessLimiter::new();
    let three = limits();
    let one = &three[..1];
    limiter.check_sync(&three, 1);
    c.bench_function("in_process/1_limit", |b| {
        b.iter(|| black_box(limiter.check_sync(black_box(one), 1)))
    });
    c.bench_function("in_process/3_limits", |b| {
        b.iter(|| black_box(limiter.check_sync(black_box(&three), 1)))
    });
    // The async trait boxes its future: one allocation the sync path does not make. The in-process
    // future is ready on its first poll, so poll it once, without a runtime.
    c.bench_function("in_process/1_limit_via_trait", |b| {
        b.iter(|| {
            let mut cx = Context::from_waker(Waker::noop());
            let mut check = Limiter::check(&limiter, black_box(one), 1);
            black_box(check.as_mut().poll(&mut cx))
        })
    });
}

fn redis(c: &mut Criterion) {
    let Ok(url) = std::env::var("SKYGATE_TEST_REDIS_URL") else {
        println!("SKIPPED redis benchmarks: SKYGATE_TEST_REDIS_URL is not set");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = RedisConfig::new(url);
    config.prefix = format!("skygate:bench:{}:", std::process::id());
    config.timeout = Duration::from_secs(1);
    let limiter = rt.block_on(RedisLimiter::connect(config)).unwrap();
    let three = limits();
    let one = &three[..1];
    c.bench_function("redis/1_limit", |b| {
        b.iter(|| rt.block_on(limiter.check(black_box(one), 1)).unwrap())
    });
    c.bench_function("redis/3_limits", |b| {
        b.iter(|| rt.block_on(limiter.check(black_box(&three), 1)).unwrap())
    });
}

criterion_group!(benches, in_process, redis);
criterion_main!(benches);

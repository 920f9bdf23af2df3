//! The Redis backend against the shared Redis (`SKYGATE_TEST_REDIS_URL`, loopback only; skipped when
//! unset, failed instead under `SKYGATE_TEST_REQUIRE_ALL`): the script decides as the core GCRA does,
//! two limiter instances (two nodes) enforce one limit together, a denied check consumes nothing, and
//! buckets vanish from Redis once replenished. Every test uses its own key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use skygate_core::ratelimit::check;
use skygate_limits::{Limit, Limiter, Quota, RedisConfig, RedisLimiter};

async fn node(url: &str, prefix: &str) -> RedisLimiter {
    let mut config = RedisConfig::new(url);
    config.prefix = prefix.to_owned();
    // Generous: these tests are about counting, not about the timeout (see redis_killed.rs).
    config.timeout = Duration::from_secs(2);
    RedisLimiter::connect(config).await.unwrap()
}

#[test]
fn only_loopback_urls_are_used() {
    assert!(skygate_testkit::redis::is_loopback_url("redis://127.0.0.1:6379"));
    assert!(skygate_testkit::redis::is_loopback_url(
        "redis://:pw@localhost:6379/2"
    ));
    assert!(skygate_testkit::redis::is_loopback_url("redis://[::1]:6379"));
    assert!(!skygate_testkit::redis::is_loopback_url("redis://10.0.0.5:6379"));
    assert!(!skygate_testkit::redis::is_loopback_url(
        "redis://cache.example.com:6379"
    ));
    assert!(!skygate_testkit::redis::is_loopback_url(
        "redis://user@203.0.113.9"
    ));
}

#[tokio::test]
async fn the_script_decides_as_the_core_gcra_does() {
    let test = "the_script_decides_as_the_core_gcra_does";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let limiter = node(&url, &skygate_testkit::redis::unique_prefix(test)).await;
    // One per 12 minutes: the few milliseconds between calls cannot change a count.
    let q = Quota {
        limit: 5,
        window: Duration::from_secs(3_600),
    };
    let limits = [Limit::new("predictions", "c:acct_m:echo", q)];
    let mut tat = None;
    for cost in [1, 2, 1, 3, 1, 1, 0] {
        let want = check(tat, 0, &q, cost);
        if want.allowed {
            tat = Some(want.new_tat);
        }
        let got = limiter.check(&limits, cost).await.unwrap();
        let v = got.verdicts[0];
        assert_eq!(
            (got.allowed, v.allowed, v.remaining),
            (want.allowed, want.allowed, want.remaining),
            "cost {cost}"
        );
        assert!(
            (v.reset_us - want.reset_us).abs() < 1_000_000,
            "reset {v:?} vs {want:?}"
        );
        assert!(
            (v.retry_after_us - want.retry_after_us).abs() < 1_000_000,
            "retry {v:?} vs {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_enforce_one_limit() {
    let test = "two_nodes_sharing_redis_enforce_one_limit";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let prefix = skygate_testkit::redis::unique_prefix(test);
    let nodes = [
        Arc::new(node(&url, &prefix).await),
        Arc::new(node(&url, &prefix).await),
    ];
    let q = Quota {
        limit: 20,
        window: Duration::from_secs(1),
    }; // B = 20, r = 20/s
       // r·t lands half-way between two whole requests (see the in-process test).
    let run_for = Duration::from_millis(1_525);
    let start = Instant::now();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move {
                let limits = [Limit::new("requests", "k:key_shared", q)];
                let (mut allowed, mut calls, mut last) = (0u64, 0u64, start);
                while last.duration_since(start) < run_for {
                    if n.check(&limits, 1).await.unwrap().allowed {
                        allowed += 1;
                    }
                    calls += 1;
                    last = Instant::now();
                }
                (allowed, calls, last)
            })
        })
        .collect();
    let (mut allowed, mut calls, mut last) = (0, 0, start);
    for t in tasks {
        let (a, c, l) = t.await.unwrap();
        (allowed, calls, last) = (allowed + a, calls + c, last.max(l));
    }
    let t = last.duration_since(start).as_secs_f64();
    let want = 20.0 + 20.0 * t;
    println!("redis, 2 nodes, {t:.3} s, {calls} checks: allowed {allowed}, B + r·t = {want:.1}");
    assert!(
        (allowed as f64 - want).abs() <= 1.0,
        "allowed {allowed}, want {want:.1} ± 1"
    );
}

#[tokio::test]
async fn a_denied_second_limit_leaves_the_first_unconsumed() {
    let test = "redis_a_denied_second_limit_leaves_the_first_unconsumed";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let limiter = node(&url, &skygate_testkit::redis::unique_prefix(test)).await;
    let hour = Duration::from_secs(3_600);
    let key = Limit::new(
        "requests",
        "k:key_a",
        Quota {
            limit: 100,
            window: hour,
        },
    );
    let create = Limit::new(
        "predictions",
        "c:acct_a:echo",
        Quota {
            limit: 1,
            window: hour,
        },
    );

    let first = limiter.check(&[key, create], 1).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.verdicts[0].remaining, 99);

    let second = limiter.check(&[key, create], 1).await.unwrap();
    assert!(!second.allowed);
    assert_eq!(second.tripped().unwrap().name, "predictions");
    assert!(second.verdicts[0].allowed);

    // Had the denied check consumed the key limit, this would say 97.
    let alone = limiter.check(&[key], 1).await.unwrap();
    assert_eq!(alone.verdicts[0].remaining, 98);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_holds_across_nodes_under_contention() {
    let test = "all_or_nothing_holds_across_nodes_under_contention";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let prefix = skygate_testkit::redis::unique_prefix(test);
    let hour = Duration::from_secs(3_600);
    let key = Quota {
        limit: 1_000,
        window: hour,
    };
    let model = Quota {
        limit: 25,
        window: hour,
    };
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let n = Arc::new(node(&url, &prefix).await);
        for _ in 0..2 {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                let limits = [
                    Limit::new("requests", "k:key_s", key),
                    Limit::new("predictions", "c:acct_s:echo", model),
                ];
                let mut allowed = 0u64;
                for _ in 0..100 {
                    allowed += u64::from(n.check(&limits, 1).await.unwrap().allowed);
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    assert_eq!(allowed, 25);
    let peek = node(&url, &prefix).await;
    let d = peek
        .check(&[Limit::new("requests", "k:key_s", key)], 0)
        .await
        .unwrap();
    assert_eq!(
        d.verdicts[0].remaining,
        1_000 - 25,
        "375 denied checks consumed nothing"
    );
}

#[tokio::test]
async fn buckets_vanish_once_replenished() {
    let test = "buckets_vanish_once_replenished";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let prefix = skygate_testkit::redis::unique_prefix(test);
    let limiter = node(&url, &prefix).await;
    let q = Quota {
        limit: 2,
        window: Duration::from_millis(200),
    };
    let limits = [Limit::new("requests", "k:key_e", q)];
    assert!(limiter.check(&limits, 1).await.unwrap().allowed);

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let bucket = format!("{prefix}k:key_e");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=100).contains(&ttl),
        "expires when its TAT passes (100 ms), PTTL {ttl}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn weighted_limits_and_adjustments() {
    let test = "weighted_limits_and_adjustments";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let prefix = skygate_testkit::redis::unique_prefix(test);
    let limiter = node(&url, &prefix).await;
    common::weighted_limits_and_adjustments(&limiter, "").await;
    // A bucket refunded to full is gone from Redis, as a replenished one is.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let q = Quota {
        limit: 10,
        window: Duration::from_secs(60),
    };
    let l = Limit::new("tokens", "t:gone", q);
    assert!(limiter.check(&[l.weighted(3)], 1).await.unwrap().allowed);
    let key = format!("{prefix}t:gone");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists);
    limiter.adjust(&l, -3).await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "refunded to full: nothing left in Redis");
}

//! Redis dies mid-test: a throwaway `redis-server` of this test's own (never the shared one) is killed
//! under a working limiter. Every check must then fail fast with `Unavailable` (bounded latency, never
//! a hang), the policy helper must map that to allowed (open) or a marked denial (closed), failures
//! must be counted, and checks must recover once Redis is back on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use skygate_limits::{
    check_with_policy, FailurePolicy, Limit, LimitError, Limiter, Quota, RedisConfig, RedisLimiter,
    UNAVAILABLE,
};

const BOUND: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_fast_by_policy_and_recovers() {
    let test = "a_killed_redis_fails_fast_by_policy_and_recovers";
    let Some(mut server) = skygate_testkit::redis::ThrowawayRedis::start(test) else {
        return;
    };
    let mut config = RedisConfig::new(server.url());
    config.prefix = skygate_testkit::redis::unique_prefix(test);
    config.timeout = Duration::from_millis(50);
    let limiter = RedisLimiter::connect(config).await.unwrap();
    let limits = [Limit::new(
        "requests",
        "k:key_k",
        Quota {
            limit: 1_000,
            window: Duration::from_secs(60),
        },
    )];
    assert!(limiter.check(&limits, 1).await.unwrap().allowed);
    assert_eq!(limiter.failures(), 0);

    server.kill();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        let r = limiter.check(&limits, 1).await;
        let took = t0.elapsed();
        worst = worst.max(took);
        assert!(matches!(r, Err(LimitError::Unavailable(_))), "check {i}: {r:?}");
        assert!(took < BOUND, "check {i} took {took:?}");
    }
    let t0 = Instant::now();
    let open = check_with_policy(&limiter, &limits, 1, FailurePolicy::Open).await;
    let closed = check_with_policy(&limiter, &limits, 1, FailurePolicy::Closed).await;
    assert!(t0.elapsed() < 2 * BOUND);
    assert!(open.allowed && open.fallback == Some(FailurePolicy::Open));
    assert!(!closed.allowed && closed.fallback == Some(FailurePolicy::Closed));
    assert_eq!(closed.tripped().unwrap().name, UNAVAILABLE);
    assert_eq!(limiter.failures(), 22);
    println!("redis down: 20 checks Unavailable, worst {worst:?} (bound {BOUND:?})");

    server.restart();
    let back = Instant::now();
    loop {
        match limiter.check(&limits, 1).await {
            Ok(d) => {
                assert!(d.allowed);
                break;
            }
            Err(e) => {
                assert!(back.elapsed() < Duration::from_secs(10), "not recovered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    println!("redis back: checks recovered after {:?}", back.elapsed());
    let d = check_with_policy(&limiter, &limits, 1, FailurePolicy::Closed).await;
    assert!(d.allowed && d.fallback.is_none());
}

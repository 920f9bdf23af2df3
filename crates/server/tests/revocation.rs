//! Revocation announced through Redis: a server holding a key in its credential cache (TTL 1 s) refuses
//! it within milliseconds of the announcement, not when the cache entry would have expired. Uses the
//! shared Redis from `SKYGATE_TEST_REDIS_URL` (loopback).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use skygate_core::{Mode, Timestamp};
use skygate_server::{admin, revocation};
use skygate_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_announced_through_redis_applies_at_once() {
    let test = "a_revocation_announced_through_redis_applies_at_once";
    let Some(url) = skygate_testkit::redis::redis_url(test) else {
        return;
    };
    let srv = TestServer::start_with(|c| {
        c.limits.redis_url = Some(url.clone());
        c.auth.key_cache_ttl = Duration::from_secs(1);
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let get = || {
        srv.client()
            .get(srv.url("/v1/models"))
            .header("x-api-key", &k.key)
            .send()
    };
    // Let the subscription settle, then put the key in the cache (its entry would live ~1 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get().await.unwrap().status(), 200);
    admin::revoke_key(&srv.store, k.key_id.as_str(), Timestamp::now())
        .await
        .unwrap();
    // Still cached: without an announcement the key would pass until the entry expires.
    assert_eq!(get().await.unwrap().status(), 200);
    let announced = Instant::now();
    revocation::publish(&url, k.key_id.as_str()).await.unwrap();
    let took = loop {
        if get().await.unwrap().status() == 401 {
            break announced.elapsed();
        }
        assert!(announced.elapsed() < Duration::from_secs(2), "never refused");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    println!("revocation announced through Redis: refused after {took:?} (cache TTL 1 s)");
    assert!(took < Duration::from_millis(300), "{took:?}");
    srv.stop().await.unwrap();
}

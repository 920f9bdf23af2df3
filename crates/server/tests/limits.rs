//! Rate limits by tier through the API: the per-key request limit on routed and fast-path answers,
//! the per-account-and-model create limit and the daily quota checked all-or-nothing with it, the
//! `x-skytells-ratelimit-*` headers, the 429 envelope with `Retry-After`, tier changes, the Redis
//! backend, and the failure policy when Redis dies (a throwaway `redis-server` of this test's own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use skygate_core::{Mode, Tier};
use skygate_server::admin;
use skygate_server::config::{Config, TierLimits};
use skygate_testkit::{TestKey, TestServer};

fn free(c: &mut Config, requests: u32, predictions: u32, daily: Option<u32>) {
    c.limits.tiers.insert(
        "free".into(),
        TierLimits {
            requests_per_minute: requests,
            predictions_per_minute: predictions,
            concurrent_predictions: 5,
            daily_predictions: daily,
            tokens_per_minute: None,
        },
    );
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<u64> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }

    fn remaining(&self) -> u64 {
        self.header("x-skytells-ratelimit-remaining-requests").unwrap()
    }

    fn assert_limited(&self, limit: &str) {
        assert_eq!(self.status, 429, "{}", self.body);
        assert_eq!(self.body["error"]["error_id"], "RATE_LIMIT_EXCEEDED");
        let details = self.body["error"]["details"].as_str().unwrap();
        assert!(details.starts_with(&format!("{limit}:")), "{details}");
        assert!(self.header("retry-after").unwrap() >= 1);
    }
}

async fn send(
    srv: &TestServer,
    k: &TestKey,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut req = srv
        .client()
        .request(method, srv.url(path))
        .header("x-api-key", &k.key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    Answer {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.json().await.unwrap(),
    }
}

async fn get(srv: &TestServer, k: &TestKey, path: &str) -> Answer {
    send(srv, k, reqwest::Method::GET, path, None).await
}

async fn create(srv: &TestServer, k: &TestKey, model: &str) -> Answer {
    let input = if model == "countdown" {
        json!({"seconds": 0})
    } else {
        json!({"prompt": "x"})
    };
    send(
        srv,
        k,
        reqwest::Method::POST,
        "/v1/predictions",
        Some(json!({"model": model, "input": input})),
    )
    .await
}

#[tokio::test]
async fn requests_are_limited_per_key_on_every_route_with_headers() {
    let srv = TestServer::start_with(|c| free(c, 5, 25, None)).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    // Routed and fast-path answers share the one per-key limit.
    let mut remaining = Vec::new();
    for path in [
        "/v1/models/echo",
        "/v1/models",
        "/v1/model/echo",
        "/v1/models",
        "/v1/predictions",
    ] {
        let a = get(&srv, &k, path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(a.header("x-skytells-ratelimit-limit-requests"), Some(5));
        assert_eq!(a.header("x-skytells-ratelimit-window"), Some(60));
        assert!(a.header("x-skytells-ratelimit-reset-requests").unwrap() <= 60);
        remaining.push(a.remaining());
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    for path in ["/v1/models", "/v1/models/echo", "/v1/predictions"] {
        let a = get(&srv, &k, path).await;
        a.assert_limited("requests");
        assert_eq!(a.remaining(), 0);
        // One request every 12 s at 5 per minute.
        assert!((1..=12).contains(&a.header("retry-after").unwrap()));
        assert!(a.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("5 per minute per API key (tier free)"));
    }
    // Another key (same account) has its own limit; unauthenticated answers carry no rate headers.
    let other = srv
        .key_in(&k.account, &k.project, Mode::Live, None)
        .await
        .unwrap();
    assert_eq!(get(&srv, &other, "/v1/models").await.status, 200);
    let res = srv.client().get(srv.url("/v1/models")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("x-skytells-ratelimit-limit-requests").is_none());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn creates_are_limited_per_account_and_model_all_or_nothing() {
    let srv = TestServer::start_with(|c| free(c, 100, 2, None)).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    assert!(create(&srv, &k, "echo").await.status.is_success());
    let second = create(&srv, &k, "echo").await;
    assert!(second.status.is_success());
    let before = second.remaining();
    let denied = create(&srv, &k, "echo").await;
    denied.assert_limited("predictions");
    assert!(denied.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("2 per minute per account and model"));
    // The denied create consumed nothing: the key's request count moved by this GET alone.
    let after = get(&srv, &k, "/v1/predictions").await;
    assert_eq!(
        after.remaining(),
        before - 1,
        "the denied create took no request token"
    );
    // Another model has its own create limit; another key of the same account shares the account's.
    assert!(create(&srv, &k, "countdown").await.status.is_success());
    let other = srv
        .key_in(&k.account, &k.project, Mode::Live, None)
        .await
        .unwrap();
    create(&srv, &other, "echo").await.assert_limited("predictions");
    // Another account is not affected.
    let stranger = srv.new_key(Mode::Live).await.unwrap();
    assert!(create(&srv, &stranger, "echo").await.status.is_success());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn the_daily_quota_and_a_tier_change_apply() {
    let srv = TestServer::start_with(|c| free(c, 100, 100, Some(3)))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    for model in ["echo", "countdown", "fail"] {
        let a = create(&srv, &k, model).await;
        assert!(a.status.is_success(), "{}", a.body);
    }
    let a = create(&srv, &k, "echo").await;
    a.assert_limited("daily_predictions");
    assert!(
        a.header("retry-after").unwrap() > 60,
        "a daily quota refills slowly"
    );
    // Pro has no daily quota by default: after the change (seen within the 1 s key cache) it passes.
    admin::set_tier(
        &srv.store,
        k.account.as_str(),
        Tier::Pro,
        skygate_core::Timestamp::now(),
    )
    .await
    .unwrap();
    tokio::time::sleep(srv.config.auth.key_cache_ttl + Duration::from_millis(100)).await;
    let a = create(&srv, &k, "echo").await;
    assert!(a.status.is_success(), "{}", a.body);
    assert_eq!(a.header("x-skytells-ratelimit-limit-requests"), Some(1200));
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_on_redis_and_its_failure_policy_applies_when_it_dies() {
    let test = "limits_hold_on_redis_and_its_failure_policy_applies_when_it_dies";
    let Some(mut redis) = skygate_testkit::redis::ThrowawayRedis::start(test) else {
        return;
    };
    let url = redis.url();
    let srv = TestServer::start_with(|c| {
        free(c, 4, 25, None);
        c.limits.redis_url = Some(url);
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let remaining: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let a = get(&srv, &k, "/v1/models").await;
            assert_eq!(a.status, 200);
            v.push(a.remaining());
        }
        v
    };
    assert_eq!(remaining, [3, 2, 1, 0]);
    get(&srv, &k, "/v1/models").await.assert_limited("requests");

    // Redis dies: reads pass (open), creates are refused (closed), each answer within a bounded time.
    redis.kill();
    let other = srv
        .key_in(&k.account, &k.project, Mode::Live, None)
        .await
        .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let read = get(&srv, &other, "/v1/predictions").await;
        assert_eq!(read.status, 200, "{}", read.body);
        let refused = create(&srv, &other, "echo").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert!(refused.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("unavailable"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(srv.state.limits().failures() >= 6);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn limits_off_check_nothing_and_send_no_rate_headers() {
    let srv = TestServer::start_with(|c| {
        free(c, 2, 1, Some(1));
        c.limits.enabled = false;
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    for _ in 0..4 {
        for a in [get(&srv, &k, "/v1/models").await, create(&srv, &k, "echo").await] {
            assert!(a.status.is_success(), "{}", a.body);
            assert!(a.header("x-skytells-ratelimit-limit-requests").is_none());
        }
    }
    srv.stop().await.unwrap();
}

#[test]
fn absurd_limits_are_refused_at_start() {
    for (edit, key) in [
        (
            TierLimits {
                requests_per_minute: 0,
                ..limits()
            },
            "requests_per_minute",
        ),
        (
            TierLimits {
                predictions_per_minute: 2_000_000,
                ..limits()
            },
            "predictions_per_minute",
        ),
        (
            TierLimits {
                daily_predictions: Some(0),
                ..limits()
            },
            "daily_predictions",
        ),
        (
            TierLimits {
                tokens_per_minute: Some(0),
                ..limits()
            },
            "tokens_per_minute",
        ),
    ] {
        let mut c = Config::default();
        c.limits.tiers.insert("pro".into(), edit);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("limits.tiers.pro.{key}")), "{e}");
    }
    let mut c = Config::default();
    c.limits.tiers.insert("gold".into(), limits());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("limits.tiers.gold: unknown tier"));
    let mut c = Config::default();
    c.limits.redis_url = Some("http://127.0.0.1:6379".into());
    assert!(c.validate().unwrap_err().to_string().contains("limits.redis_url"));
}

fn limits() -> TierLimits {
    TierLimits {
        requests_per_minute: 10,
        predictions_per_minute: 10,
        concurrent_predictions: 1,
        daily_predictions: None,
        tokens_per_minute: None,
    }
}

#[tokio::test]
async fn failed_authentications_throttle_the_address_not_the_others() {
    let srv = TestServer::start_with(|c| {
        c.limits.auth_failures_per_minute = 5;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let from = |ip: &'static str, key: &str, path: &str| {
        srv.client()
            .get(srv.url(path))
            .header("x-api-key", key)
            .header("x-forwarded-for", ip)
            .send()
    };
    let bad = "sk_live_0000000000000000000000000000000000000000";
    // Five failures (fast path and routed alike) are answered 401; the sixth is a 429.
    for path in [
        "/v1/models",
        "/v1/predictions",
        "/v1/models",
        "/v1/models/echo",
        "/v1/models",
    ] {
        assert_eq!(
            from("198.51.100.1", bad, path).await.unwrap().status(),
            401,
            "{path}"
        );
    }
    let res = from("198.51.100.1", bad, "/v1/predictions").await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["details"]
        .as_str()
        .unwrap()
        .starts_with("failed_authentications:"));
    // Now even a valid key from that address waits; other addresses are not affected.
    for path in ["/v1/models", "/v1/predictions"] {
        assert_eq!(
            from("198.51.100.1", &k.key, path).await.unwrap().status(),
            429,
            "{path}"
        );
        assert_eq!(
            from("198.51.100.2", &k.key, path).await.unwrap().status(),
            200,
            "{path}"
        );
        assert_eq!(
            from("198.51.100.2", bad, path).await.unwrap().status(),
            401,
            "{path}"
        );
    }
    srv.stop().await.unwrap();
}

/// The largest number of `[start, end)` intervals that overlap at one instant.
fn max_overlap(mut spans: Vec<(String, String)>) -> usize {
    let mut events: Vec<(String, i32)> = Vec::new();
    for (s, e) in spans.drain(..) {
        events.push((s, 1));
        events.push((e, -1));
    }
    // RFC 3339 UTC with microseconds sorts as text; an end sorts before a start at the same instant.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_running_predictions_are_capped_and_the_rest_wait() {
    let srv = TestServer::start_with(|c| {
        c.limits.tiers.insert(
            "free".into(),
            TierLimits {
                requests_per_minute: 600,
                predictions_per_minute: 25,
                concurrent_predictions: 2,
                daily_predictions: None,
                tokens_per_minute: None,
            },
        );
        c.queue.workers = 6;
    })
    .await
    .unwrap();
    let (a, b) = (
        srv.new_key(Mode::Live).await.unwrap(),
        srv.new_key(Mode::Live).await.unwrap(),
    );
    let mut ids = Vec::new();
    for (k, n) in [(&a, 5), (&b, 2)] {
        for _ in 0..n {
            let r = send(
                &srv,
                k,
                reqwest::Method::POST,
                "/v1/predictions",
                Some(json!({"model": "countdown", "input": {"seconds": 0.6}})),
            )
            .await;
            // Excess creates are accepted and wait in the queue; none is refused.
            assert!(r.status.is_success(), "{}", r.body);
            ids.push((k, r.body["id"].as_str().unwrap().to_owned()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
    for (k, id) in &ids {
        let done = loop {
            let p = get(&srv, k, &format!("/v1/predictions/{id}")).await;
            if p.body["status"] == "succeeded" {
                break p.body;
            }
            assert!(
                p.body["status"] != "failed" && Instant::now() < deadline,
                "{}",
                p.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let who = usize::from(std::ptr::eq(*k, &b));
        spans[who].push((
            done["started_at"].as_str().unwrap().to_owned(),
            done["completed_at"].as_str().unwrap().to_owned(),
        ));
    }
    let (most_a, most_b) = (max_overlap(spans[0].clone()), max_overlap(spans[1].clone()));
    // A never ran more than its ceiling at once, and did reach it; B ran both of its own meanwhile
    // instead of waiting behind A's queue.
    assert_eq!(most_a, 2, "{spans:?}");
    assert_eq!(most_b, 2, "{spans:?}");
    let all: Vec<_> = spans.concat();
    assert!(max_overlap(all) >= 4, "{spans:?}");
    srv.stop().await.unwrap();
}

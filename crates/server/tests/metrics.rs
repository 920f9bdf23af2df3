//! The Prometheus endpoint: off by default, on a separate plaintext loopback listener when
//! `[metrics] listen` is set, counting requests by route template, method and status on the fast and
//! the routed path, rate-limiter decisions and WAF blocks. A non-loopback address is refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use skygate_core::Mode;
use skygate_server::config::{Config, TierLimits};
use skygate_testkit::TestServer;

fn with_metrics(c: &mut Config) {
    c.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.limits.tiers.insert(
        "free".into(),
        TierLimits {
            requests_per_minute: 4,
            predictions_per_minute: 25,
            concurrent_predictions: 5,
            daily_predictions: None,
            tokens_per_minute: None,
        },
    );
}

/// The value of the sample line that starts with `series` (exact name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn requests_decisions_and_blocks_are_counted_on_a_loopback_listener() {
    let srv = TestServer::start_with(with_metrics).await.unwrap();
    let metrics = srv.metrics_addr.expect("the metrics listener is bound");
    assert!(metrics.ip().is_loopback());
    let k = srv.new_key(Mode::Live).await.unwrap();
    let c = srv.client();
    let get = |path: &str, key: Option<&str>| {
        let mut r = c.get(srv.url(path));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send()
    };
    // Fast path three times, routed once: the key's 4 requests; the fifth is limited.
    for _ in 0..3 {
        assert_eq!(get("/v1/models", Some(&k.key)).await.unwrap().status(), 200);
    }
    assert_eq!(get("/v1/models/echo", Some(&k.key)).await.unwrap().status(), 200);
    assert_eq!(get("/v1/models", Some(&k.key)).await.unwrap().status(), 429);
    assert_eq!(get("/v1/predictions/abc", None).await.unwrap().status(), 401);
    assert_eq!(get("/no/such/route", None).await.unwrap().status(), 404);
    assert_eq!(get("/.env", None).await.unwrap().status(), 403);
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);

    let res = reqwest::Client::new()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = res.text().await.unwrap();
    let req = |route: &str, status: u16| {
        sample(
            &text,
            &format!("skygate_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(req("/v1/models", 200), Some(3.0), "{text}");
    assert_eq!(req("/v1/models", 429), Some(1.0), "{text}");
    assert_eq!(req("/v1/models/{slug}", 200), Some(1.0), "{text}");
    assert_eq!(req("/v1/predictions/{id}", 401), Some(1.0), "{text}");
    // Unknown paths, the WAF's probe path included, share one bounded label.
    assert_eq!(req("other", 404), Some(1.0), "{text}");
    assert_eq!(req("other", 403), Some(1.0), "{text}");
    assert_eq!(req("/healthz", 200), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "skygate_http_request_duration_seconds_count{route=\"/v1/models\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "skygate_ratelimit_decisions_total{limit=\"requests\",decision=\"allowed\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "skygate_ratelimit_decisions_total{limit=\"requests\",decision=\"limited\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "skygate_waf_blocks_total{rule=\"default.probe-path\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "skygate_ratelimit_backend_failures_total"),
        Some(0.0),
        "{text}"
    );
    // No secret or address in any label.
    assert!(
        !text.contains(&k.key) && !text.contains(k.key_id.as_str()),
        "{text}"
    );
    assert!(!text.contains("127.0.0.1"), "{text}");
    // Only /metrics is served there.
    let other = reqwest::get(format!("http://{metrics}/v1/models")).await.unwrap();
    assert_eq!(other.status(), 404);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let srv = TestServer::start().await.unwrap();
    assert!(srv.metrics_addr.is_none());
    assert!(srv.state.metrics().is_none());
    srv.stop().await.unwrap();
}

#[test]
fn a_metrics_listener_off_loopback_is_refused_at_start() {
    for addr in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
        let mut c = Config::default();
        c.metrics.listen = Some(addr.parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("metrics.listen must be a loopback address"),
            "{addr}: {e}"
        );
    }
    let mut c = Config::default();
    c.metrics.listen = Some("[::1]:9464".parse().unwrap());
    c.validate().unwrap();
}

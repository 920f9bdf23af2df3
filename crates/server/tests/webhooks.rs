//! Webhooks end to end against an in-process server: signed deliveries checked with an independent HMAC,
//! event subscriptions, the retry schedule driven by a fake clock against misbehaving receivers, the SSRF
//! guard on create and at delivery time (through an injected resolver and a connector that refuses
//! anything but loopback), and secret rotation. Every socket opened here is on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use skygate_core::predictions::PredictionId;
use skygate_core::webhooks::{Delivery, DeliveryFilter, DeliveryState};
use skygate_core::{Mode, Timestamp};
use skygate_server::admin;
use skygate_server::config::Config;
use skygate_server::webhooks::dispatcher::dispatch_due;
use skygate_testkit::api::{assert_error, call, create, post, terminal, until};
use skygate_testkit::net::{LoopbackOnly, MapResolver};
use skygate_testkit::receiver::{BadListener, Misbehave, Receiver, Reply};
use skygate_testkit::{TestKey, TestServer};
use skygate_webhooks::WebhookSecret;

/// Local receivers: plain http to loopback.
fn local(c: &mut Config) {
    c.webhooks.allow_insecure_http = true;
    c.webhooks.allow_private_networks = true;
}

/// As [`local`], with no background dispatcher: the test sends with `dispatch_due` and a fake clock.
fn manual(c: &mut Config) {
    local(c);
    c.webhooks.concurrency = 0;
    c.webhooks.jitter = 0.0;
    c.webhooks.timeout = Duration::from_millis(500);
    c.webhooks.resolve_timeout = Duration::from_millis(500);
}

async fn deliveries(srv: &TestServer, prediction: &str) -> Vec<Delivery> {
    let mut d = srv
        .store
        .list_deliveries(&DeliveryFilter {
            prediction: Some(prediction.parse::<PredictionId>().unwrap()),
            failed_only: false,
            limit: 100,
        })
        .await
        .unwrap();
    d.sort_by_key(|d| d.created_at);
    d
}

async fn secrets(srv: &TestServer, k: &TestKey) -> Vec<WebhookSecret> {
    admin::webhook_secret(
        &srv.store,
        k.project.as_str(),
        false,
        Duration::ZERO,
        Timestamp::now(),
    )
    .await
    .unwrap()
    .iter()
    .map(|s| WebhookSecret::parse(s.secret.expose()).unwrap())
    .collect()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

/// Runs an echo to its end with a webhook, and returns the prediction.
async fn finished(srv: &TestServer, k: &TestKey, webhook: Value) -> Value {
    let p = create(
        srv,
        k,
        json!({"model": "echo", "input": {"prompt": "hi"}, "webhook": webhook}),
    )
    .await;
    until(srv, k, p["id"].as_str().unwrap(), terminal).await
}

#[tokio::test]
async fn a_finished_prediction_is_delivered_signed_both_ways() {
    let rx = Receiver::ok().await.unwrap();
    let srv = TestServer::start_with(local).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = finished(&srv, &k, json!({"url": rx.url("/hook")})).await;
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "one terminal event by default");
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["id"], p["id"]);
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["output"], p["output"]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("skygate-webhooks/"));

    // The headers, recomputed here with ring directly (not with skygate's signing code).
    let id = r.header("webhook-id").unwrap();
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((ts - Timestamp::now().as_unix_seconds()).abs() < 60);
    let s = secrets(&srv, &k).await;
    assert_eq!(s.len(), 1);
    let full = s[0].expose();
    let hex: String = hmac(full.as_bytes(), &r.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r.header("x-skytells-signature"), Some(hex.as_str()));
    let key = base64::engine::general_purpose::STANDARD
        .decode(full.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut msg = format!("{id}.{ts}.").into_bytes();
    msg.extend_from_slice(&r.body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac(&key, &msg))
    );
    assert_eq!(r.header("webhook-signature"), Some(want.as_str()));
    // And our verifier agrees; a changed body fails it.
    let now = Timestamp::now().as_unix_seconds();
    skygate_webhooks::verify(&s, &r.headers, &r.body, now, Duration::from_secs(300)).unwrap();
    let mut altered = r.body.to_vec();
    altered.push(b' ');
    assert!(skygate_webhooks::verify(&s, &r.headers, &altered, now, Duration::from_secs(300)).is_err());

    // The delivery log: the webhook-id is the delivery id; one attempt, 200, the answer kept.
    let ds = deliveries(&srv, p["id"].as_str().unwrap()).await;
    assert_eq!(ds.len(), 1);
    let d = &ds[0];
    assert_eq!(d.id.as_str(), id);
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!((d.attempts, d.last_status), (1, Some(200)));
    let attempts = srv.store.delivery_attempts(&d.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(200));
    assert_eq!(attempts[0].response.as_deref(), Some(&b"{\"ok\":true}"[..]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1, "no event that was not subscribed to");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn events_are_filtered_and_the_sdk_names_are_mapped() {
    let rx = Receiver::ok().await.unwrap();
    let srv = TestServer::start_with(local).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();

    // started + completed (the SDK's names): a processing and a succeeded delivery.
    let a = finished(
        &srv,
        &k,
        json!({"url": rx.url("/a"), "events": ["started", "completed"]}),
    )
    .await;
    // Only failures, on a success: nothing.
    let b = finished(
        &srv,
        &k,
        json!({"url": rx.url("/b"), "events": ["prediction.failed"]}),
    )
    .await;
    // A failing model with the default (every terminal event).
    let c = create(
        &srv,
        &k,
        json!({"model": "fail", "input": {"message": "boom"}, "webhook": {"url": rx.url("/c")}}),
    )
    .await;
    until(&srv, &k, c["id"].as_str().unwrap(), terminal).await;
    // A cancel, subscribed by the SDK's spelling.
    let d = create(
        &srv,
        &k,
        json!({"model": "countdown", "input": {"seconds": 60}, "webhook": {"url": rx.url("/d"), "events": ["canceled"]}}),
    )
    .await;
    let d_id = d["id"].as_str().unwrap();
    let (s, v) = call(
        &srv,
        reqwest::Method::POST,
        &format!("/v1/predictions/{d_id}/cancel"),
        &k.key,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    until(&srv, &k, d_id, |v| v["status"] == "cancelled").await;

    let got = rx.wait_for(4, Duration::from_secs(30)).await;
    let statuses = |path: &str| -> Vec<String> {
        let mut v: Vec<String> = got
            .iter()
            .filter(|r| r.path == path)
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    };
    // The started event shows the prediction as it was when sent: starting or already processing.
    let a_statuses = statuses("/a");
    assert_eq!(a_statuses.len(), 2, "{a_statuses:?}");
    assert!(
        ["processing", "starting"].contains(&a_statuses[0].as_str()),
        "{a_statuses:?}"
    );
    assert_eq!(a_statuses[1], "succeeded");
    assert_eq!(statuses("/c"), ["failed"]);
    assert_eq!(statuses("/d"), ["cancelled"]);
    assert!(statuses("/b").is_empty());
    let failed: Value = serde_json::from_slice(&got.iter().find(|r| r.path == "/c").unwrap().body).unwrap();
    assert!(failed["error"].as_str().unwrap().contains("boom"), "{failed}");
    assert_eq!(deliveries(&srv, a["id"].as_str().unwrap()).await.len(), 2);
    assert!(deliveries(&srv, b["id"].as_str().unwrap()).await.is_empty());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn private_targets_are_refused_on_create_and_at_delivery() {
    let rx = Receiver::ok().await.unwrap();
    let resolver = MapResolver::default();
    let connector = LoopbackOnly::default();
    resolver.set("localhost", &["127.0.0.1", "::1"]);
    resolver.set("rebind.test", &["127.0.0.1"]);
    resolver.set("mixed.test", &["93.184.216.34", "127.0.0.1"]);
    resolver.set("flip.test", &["93.184.216.34"]);
    let srv = TestServer::start_with_network(
        |c| {
            manual(c);
            c.webhooks.allow_private_networks = false;
        },
        Some((Arc::new(resolver.clone()), Arc::new(connector.clone()))),
    )
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let port = rx.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://rebind.test:{port}/"),
        format!("http://mixed.test:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        format!("http://nowhere.test:{port}/"),
        format!("http://0.0.0.0:{port}/"),
    ] {
        let got = post(
            &srv,
            "/v1/predictions",
            &k.key,
            &json!({"model": "echo", "input": {"prompt": "x"}, "webhook": {"url": url}}),
        )
        .await;
        assert_error(&got, 422, "VALIDATION_ERROR");
        let details = got.1["error"]["details"].as_str().unwrap_or_default().to_owned();
        assert!(details.starts_with("webhook.url:"), "{url}: {details}");
    }
    assert!(connector.attempts().is_empty(), "create only resolves");

    // Accepted while the name resolved to a public address, then the name moves to loopback (DNS
    // rebinding): the delivery resolves again, is refused, and is not retried.
    let p = finished(&srv, &k, json!({"url": format!("http://flip.test:{port}/")})).await;
    resolver.set("flip.test", &["127.0.0.1"]);
    assert_eq!(dispatch_due(&srv.state, Timestamp::now()).await.unwrap(), 1);
    let ds = deliveries(&srv, p["id"].as_str().unwrap()).await;
    assert_eq!(ds[0].state, DeliveryState::Failed);
    assert_eq!(ds[0].attempts, 1);
    let why = ds[0].last_error.clone().unwrap();
    assert!(why.contains("loopback"), "{why}");
    assert!(connector.attempts().is_empty(), "no connection was attempted");
    assert!(rx.received().is_empty());
    let later = Timestamp::now().saturating_add(Duration::from_secs(86400));
    assert_eq!(dispatch_due(&srv.state, later).await.unwrap(), 0, "not retried");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn bad_webhooks_get_a_422_naming_the_field() {
    let resolver = MapResolver::default();
    resolver.set("hooks.example", &["93.184.216.34"]);
    let srv = TestServer::start_with_network(
        |_| {},
        Some((Arc::new(resolver), Arc::new(LoopbackOnly::default()))),
    )
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let long = format!("https://hooks.example/{}", "a".repeat(3000));
    for (webhook, field) in [
        (json!({"url": "http://hooks.example/x"}), "webhook.url"),
        (json!({"url": "https://user:pw@hooks.example/x"}), "webhook.url"),
        (json!({"url": long}), "webhook.url"),
        (json!({"url": "not a url"}), "webhook.url"),
        (json!({"url": "ftp://hooks.example/x"}), "webhook.url"),
        (json!({"url": "https://10.0.0.1/x"}), "webhook.url"),
        (json!({"url": "https://169.254.169.254/latest"}), "webhook.url"),
        (
            json!({"url": "https://hooks.example/x", "events": ["started", "nope"]}),
            "webhook.events[1]",
        ),
    ] {
        let got = post(
            &srv,
            "/v1/predictions",
            &k.key,
            &json!({"model": "echo", "input": {"prompt": "x"}, "webhook": webhook}),
        )
        .await;
        assert_error(&got, 422, "VALIDATION_ERROR");
        let details = got.1["error"]["details"].as_str().unwrap_or_default();
        assert!(details.starts_with(&format!("{field}:")), "{webhook}: {details}");
        assert!(details.len() < 400, "{details}");
    }
    // A good one is accepted (nothing is sent: the test connector refuses non-loopback addresses).
    let (s, v) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": "echo", "input": {"prompt": "x"}, "webhook": {"url": "https://hooks.example/x"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn the_retry_schedule_follows_each_answer() {
    let rx = Receiver::start(|path| match path {
        "/500" => Reply::status(500),
        "/429" => Reply::status(429).header("retry-after", "120"),
        "/301" => Reply::status(301).header("location", "/elsewhere"),
        "/410" => Reply::status(410),
        _ => Reply::status(200),
    })
    .await
    .unwrap();
    let reset = BadListener::start(Misbehave::Reset).await.unwrap();
    let stall = BadListener::start(Misbehave::Stall).await.unwrap();
    let srv = TestServer::start_with(manual).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let mut ids = HashMap::new();
    for (name, url) in [
        ("500", rx.url("/500")),
        ("429", rx.url("/429")),
        ("301", rx.url("/301")),
        ("410", rx.url("/410")),
        ("reset", reset.url("/")),
        ("stall", stall.url("/")),
    ] {
        let p = finished(&srv, &k, json!({"url": url, "events": ["completed"]})).await;
        ids.insert(name, p["id"].as_str().unwrap().to_owned());
    }
    let one = |ds: Vec<Delivery>| {
        assert_eq!(ds.len(), 1);
        ds.into_iter().next().unwrap()
    };
    let t0 = Timestamp::now();
    let sent = std::time::Instant::now();
    assert_eq!(dispatch_due(&srv.state, t0).await.unwrap(), 6);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the stall is cut by the timeout"
    );
    let s = Duration::from_secs;
    for (name, next) in [
        ("500", s(5)),
        ("429", s(120)),
        ("301", s(5)),
        ("reset", s(5)),
        ("stall", s(5)),
    ] {
        let d = one(deliveries(&srv, &ids[name]).await);
        assert_eq!(d.state, DeliveryState::Pending, "{name}");
        let at = d.next_attempt_at.unwrap();
        let wait = at.as_micros() - t0.as_micros();
        assert!(
            (wait - next.as_micros() as i64).abs() < 2_000_000,
            "{name}: next attempt in {wait} µs, want {next:?}"
        );
    }
    let gone = one(deliveries(&srv, &ids["410"]).await);
    assert_eq!((gone.state, gone.last_status), (DeliveryState::Failed, Some(410)));
    assert!(gone.last_error.unwrap().contains("410"));
    assert_eq!(rx.count("/301"), 1);
    assert_eq!(rx.count("/elsewhere"), 0, "redirects are not followed");
    let attempts = srv
        .store
        .delivery_attempts(&one(deliveries(&srv, &ids["stall"]).await).id)
        .await
        .unwrap();
    assert!(
        attempts[0].error.as_deref().unwrap().contains("time"),
        "{:?}",
        attempts[0].error
    );
    assert!(attempts[0].duration_us >= 400_000 && attempts[0].duration_us < 3_000_000);
    assert!(reset.connections() >= 1 && stall.connections() >= 1);

    // Nothing is due before its time; then the 500 walks the whole schedule (the clock jumps each
    // time to just after the next attempt is due) and gives up after the 8th attempt.
    assert_eq!(
        dispatch_due(&srv.state, t0.saturating_add(s(3))).await.unwrap(),
        0
    );
    let id500 = ids["500"].clone();
    let mut now = t0;
    for attempt in 2..=8u32 {
        let d = one(deliveries(&srv, &id500).await);
        assert_eq!(d.state, DeliveryState::Pending);
        now = d
            .next_attempt_at
            .unwrap()
            .saturating_add(Duration::from_millis(1));
        dispatch_due(&srv.state, now).await.unwrap();
        let d = one(deliveries(&srv, &id500).await);
        assert_eq!(d.attempts, attempt);
    }
    let d = one(deliveries(&srv, &id500).await);
    assert_eq!(d.state, DeliveryState::Failed);
    assert!(d.last_error.unwrap().contains("gave up"));
    assert_eq!(rx.count("/500"), 8);
    // The schedule's gaps: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    let log = srv.store.delivery_attempts(&d.id).await.unwrap();
    let gaps: Vec<i64> = log
        .windows(2)
        .map(|w| (w[1].at.as_micros() - w[0].at.as_micros()) / 1_000_000)
        .collect();
    assert_eq!(gaps, [5, 300, 1800, 7200, 18000, 36000, 36000]);
    assert!(log.last().unwrap().next_attempt_at.is_none());
    // Past the whole schedule, nothing more is sent to anyone still failing... except what is due.
    let _ = now;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends() {
    let rx = Receiver::ok().await.unwrap();
    let srv = TestServer::start_with(manual).await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let old = secrets(&srv, &k).await;
    assert_eq!(old.len(), 1);
    let t0 = Timestamp::now();
    let rotated = admin::webhook_secret(
        &srv.store,
        k.project.as_str(),
        true,
        Duration::from_secs(3600),
        t0,
    )
    .await
    .unwrap();
    assert_eq!(rotated.len(), 2);
    assert_eq!(
        rotated[1].secret.expose(),
        old[0].expose(),
        "the old one is still listed"
    );
    let new = WebhookSecret::parse(rotated[0].secret.expose()).unwrap();

    let _a = finished(&srv, &k, json!({"url": rx.url("/a")})).await;
    dispatch_due(&srv.state, Timestamp::now()).await.unwrap();
    let r = &rx.wait_for(1, Duration::from_secs(5)).await[0];
    let sigs: Vec<&str> = r.header("webhook-signature").unwrap().split(' ').collect();
    assert_eq!(sigs.len(), 2);
    assert_eq!(r.header("x-skytells-signature").unwrap().split(',').count(), 2);
    let ts = r.header("webhook-timestamp").unwrap().parse().unwrap();
    for s in [&new, &old[0]] {
        skygate_webhooks::verify(
            std::slice::from_ref(s),
            &r.headers,
            &r.body,
            ts,
            Duration::from_secs(300),
        )
        .unwrap();
    }

    // After the overlap only the new secret signs.
    let _b = finished(&srv, &k, json!({"url": rx.url("/b")})).await;
    let later = t0.saturating_add(Duration::from_secs(3601));
    dispatch_due(&srv.state, later).await.unwrap();
    let r = rx.received().into_iter().find(|r| r.path == "/b").unwrap();
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 1);
    let ts = r.header("webhook-timestamp").unwrap().parse().unwrap();
    skygate_webhooks::verify(
        std::slice::from_ref(&new),
        &r.headers,
        &r.body,
        ts,
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(skygate_webhooks::verify(&old, &r.headers, &r.body, ts, Duration::from_secs(300)).is_err());

    // The rotation is in the audit chain.
    let audit = srv.store.audit_page(0, 1000).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.entry.action == "webhooks.secret.rotate" && e.entry.target == k.project.as_str()));
    srv.stop().await.unwrap();
}

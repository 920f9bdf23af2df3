//! The predictions API end to end against an in-process server over real TLS: lifecycle, await, cancel,
//! SSE, signed output downloads, retention (with a fake clock), usage records, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use skygate_core::predictions::PredictionId;
use skygate_core::{Mode, Timestamp};
use skygate_server::predictions::worker;
use skygate_testkit::api::{assert_error, call, create, get, post, read, run, terminal, until};
use skygate_testkit::TestServer;

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn create_get_await_list_and_scoping() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let other = srv.new_key(Mode::Live).await.unwrap();

    let (s, p) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": "echo", "input": {"prompt": "hi"}, "extra": 1}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["status"], "pending");
    let id = p["id"].as_str().unwrap().to_owned();
    assert!(id.parse::<PredictionId>().is_ok());
    for field in [
        "id",
        "status",
        "stream",
        "type",
        "input",
        "output",
        "response",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
        "privacy",
        "source",
        "model",
        "webhook",
        "metrics",
        "metadata",
        "data_removed",
        "urls",
    ] {
        assert!(p.get(field).is_some(), "missing {field}: {p}");
    }
    assert_eq!(p["urls"]["get"], srv.url(&format!("/v1/predictions/{id}")));
    let done = until(&srv, &k, &id, terminal).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"], "hi");
    assert_eq!(done["metrics"]["progress"], 100);
    assert!(done["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(ts(&done["started_at"]) <= ts(&done["completed_at"]));

    // await: the final object in one call, on both create paths.
    let (s, a) = post(
        &srv,
        "/v1/predict",
        &k.key,
        &json!({"model": "sky-text", "input": {"prompt": "abc", "mode": "reverse"}, "await": true}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (a["status"].as_str(), a["output"].as_str()),
        (Some("succeeded"), Some("cba"))
    );

    // Another project's prediction is indistinguishable from an unknown one.
    let theirs = get(&srv, &format!("/v1/predictions/{id}"), &other.key).await;
    assert_error(&theirs, 404, "PREDICTION_NOT_FOUND");
    let unknown = get(&srv, &format!("/v1/predictions/{}", uuid::Uuid::new_v4()), &k.key).await;
    assert_eq!(unknown, theirs);
    assert_error(
        &get(&srv, "/v1/predictions/not-a-uuid", &k.key).await,
        404,
        "PREDICTION_NOT_FOUND",
    );
    assert_error(
        &call(
            &srv,
            reqwest::Method::POST,
            &format!("/v1/predictions/{id}/cancel"),
            &other.key,
        )
        .await,
        404,
        "PREDICTION_NOT_FOUND",
    );
    assert_error(
        &call(
            &srv,
            reqwest::Method::DELETE,
            &format!("/v1/predictions/{id}"),
            &other.key,
        )
        .await,
        404,
        "PREDICTION_NOT_FOUND",
    );

    // List: newest first, paginated, filtered; the other project sees none of it.
    for i in 0..3 {
        create(
            &srv,
            &k,
            json!({"model": "echo", "input": {"prompt": format!("n{i}")}}),
        )
        .await;
    }
    let (s, l) = get(&srv, "/v1/predictions?per_page=2&page=1", &k.key).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(
        l["pagination"],
        json!({"current_page": 1, "per_page": 2, "total": 5, "last_page": 3})
    );
    let first: Vec<_> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| ts(&d["created_at"]))
        .collect();
    assert!(first[0] >= first[1]);
    let (_, l3) = get(&srv, "/v1/predictions?per_page=2&page=3", &k.key).await;
    assert_eq!(l3["data"].as_array().unwrap().len(), 1);
    let (_, f) = get(&srv, "/v1/predictions?model=sky-text", &k.key).await;
    assert_eq!(f["pagination"]["total"], 1);
    let today = Timestamp::now().to_rfc3339()[..10].to_owned();
    let (_, d) = get(&srv, &format!("/v1/predictions?from={today}&to={today}"), &k.key).await;
    assert_eq!(d["pagination"]["total"], 5);
    let (_, old) = get(&srv, "/v1/predictions?from=2020-01-01&to=2020-01-31", &k.key).await;
    assert_eq!(old["pagination"]["total"], 0);
    let (_, none) = get(&srv, "/v1/predictions", &other.key).await;
    assert_eq!(none["pagination"]["total"], 0);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn await_returns_the_current_state_at_the_timeout_and_the_run_goes_on() {
    let srv = TestServer::start_with(|c| c.server.await_timeout = Duration::from_secs(1))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let (s, p) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": "countdown", "input": {"seconds": 2.5}, "await": true}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert!(!terminal(&p), "{p}");
    let done = until(&srv, &k, p["id"].as_str().unwrap(), terminal).await;
    assert_eq!(done["status"], "succeeded");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_cancel() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let res = srv
        .client()
        .post(srv.url("/v1/predictions"))
        .header("x-api-key", &k.key)
        .json(&json!({"model": "countdown", "input": {"seconds": 1}, "await": true}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(res.is_err(), "the client should have timed out");
    // The one prediction of this project finishes regardless.
    let id = loop {
        let (_, l) = get(&srv, "/v1/predictions", &k.key).await;
        if let Some(p) = l["data"].get(0) {
            break p["id"].as_str().unwrap().to_owned();
        }
    };
    assert_eq!(until(&srv, &k, &id, terminal).await["status"], "succeeded");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_reaches_a_running_job_within_a_second() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    // A pending one is cancelled at once.
    let srv_busy = create(&srv, &k, json!({"model": "countdown", "input": {"seconds": 60}})).await;
    let busy2 = create(&srv, &k, json!({"model": "countdown", "input": {"seconds": 60}})).await;
    let queued = create(&srv, &k, json!({"model": "echo", "input": {"prompt": "never"}})).await;
    let (s, c) = call(
        &srv,
        reqwest::Method::POST,
        &format!("/v1/predictions/{}/cancel", queued["id"].as_str().unwrap()),
        &k.key,
    )
    .await;
    // Two workers are busy, so the echo is still queued (or, rarely, already done).
    assert!(s == 200 || s == 409, "{c}");

    for p in [&srv_busy, &busy2] {
        let id = p["id"].as_str().unwrap();
        until(&srv, &k, id, |v| v["status"] == "processing").await;
        let asked = Timestamp::now();
        let (s, c) = call(
            &srv,
            reqwest::Method::POST,
            &format!("/v1/predictions/{id}/cancel"),
            &k.key,
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["status"], "cancelled", "{c}");
        let stopped = ts(&c["completed_at"]);
        assert!(
            stopped.as_micros() - asked.as_micros() < 1_000_000,
            "cancel took {} µs",
            stopped.as_micros() - asked.as_micros()
        );
        assert!(c["output"].is_null());
        // A second cancel is refused in the documented shape.
        let again = call(
            &srv,
            reqwest::Method::POST,
            &format!("/v1/predictions/{id}/cancel"),
            &k.key,
        )
        .await;
        assert_error(&again, 409, "PREDICTION_NOT_CANCELLABLE");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_made_on_another_node_is_seen_within_a_second() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = create(&srv, &k, json!({"model": "countdown", "input": {"seconds": 60}})).await;
    let id_s = p["id"].as_str().unwrap();
    until(&srv, &k, id_s, |v| v["status"] == "processing").await;
    // Straight through the store, as another node would: nothing is announced in this process.
    let asked = Timestamp::now();
    let id: PredictionId = id_s.parse().unwrap();
    srv.store
        .cancel_prediction(&k.project, &id, asked, Duration::from_secs(300))
        .await
        .unwrap();
    let done = until(&srv, &k, id_s, terminal).await;
    assert_eq!(done["status"], "cancelled");
    let took = ts(&done["completed_at"]).as_micros() - asked.as_micros();
    assert!(took < 1_000_000, "cancel seen after {took} µs");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn failing_crashing_and_slow_models_fail_with_a_clear_error() {
    let srv = TestServer::start_with(|c| c.queue.job_timeout = Duration::from_secs(1))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let cases = [
        (
            json!({"mode": "error", "message": "out of capacity"}),
            "fail",
            "out of capacity",
        ),
        (json!({"mode": "panic"}), "fail", "crashed"),
        (json!({"seconds": 30}), "countdown", "time limit"),
    ];
    for (input, model, want) in cases {
        let (s, p) = post(
            &srv,
            "/v1/predictions",
            &k.key,
            &json!({"model": model, "input": input, "await": true}),
        )
        .await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(p["status"], "failed", "{p}");
        assert!(p["error"].as_str().unwrap().contains(want), "{p}");
        assert_eq!(p["response"], p["error"]);
        assert!(p["output"].is_null());
    }
    // The server is still fine.
    let ok = run(&srv, &k, "echo", json!({"prompt": "ok"})).await;
    assert_eq!(ok["output"], "ok");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn sse_sends_status_progress_output_and_done_then_ends() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = create(&srv, &k, json!({"model": "countdown", "input": {"seconds": 0.6}})).await;
    let id = p["id"].as_str().unwrap();
    // Without the SSE accept header: the Prediction JSON, as the SDK's stream_prediction expects.
    let (s, j) = get(&srv, &format!("/v1/predictions/{id}/stream"), &k.key).await;
    assert_eq!((s.as_u16(), j["id"].as_str()), (200, Some(id)));
    let res = srv
        .client()
        .get(srv.url(&format!("/v1/predictions/{id}/stream")))
        .header("x-api-key", &k.key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself at the terminal status (the client's 30 s timeout would fail this).
    let body = res.text().await.unwrap();
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events.first(), Some(&"status"), "{body}");
    assert!(events.contains(&"progress"), "{body}");
    let n = events.len();
    assert_eq!(&events[n - 2..], &["output", "done"], "{body}");
    let done: Value = serde_json::from_str(
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"], "done after 0.6s");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn outputs_download_by_signed_url_and_retention_destroys_them() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = run(
        &srv,
        &k,
        "sky-image",
        json!({"prompt": "dunes", "width": 48, "height": 32, "steps": 2, "num_outputs": 2}),
    )
    .await;
    assert_eq!(p["status"], "succeeded", "{p}");
    let files = p["metadata"]["storage"]["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 2);
    assert_eq!(p["metrics"]["image_count"], 2);
    let url = files[0]["url"].as_str().unwrap().to_owned();
    assert_eq!(p["output"][0], files[0]["url"]);

    // No API key needed; content type and length from the record; a real PNG.
    let res = srv.client().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(
        res.headers()["content-length"].to_str().unwrap(),
        files[0]["size"].to_string()
    );
    let png = res.bytes().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));

    // Any change to the link is a 404.
    let id = p["id"].as_str().unwrap();
    let pid: PredictionId = id.parse().unwrap();
    let exp = ts(&p["completed_at"]).as_unix_seconds();
    let stale = srv.state.signer().url(
        &format!("https://{}", srv.addr),
        &pid,
        "output-0.png",
        Timestamp::now().as_unix_seconds() - 1,
    );
    let bad = [
        url.replace("sig=", "sig=A"),
        url.replace("output-0.png", "output-1.png"),
        url.replace("&sig=", "&x=").to_string(),
        url.split('?').next().unwrap().to_owned(),
        url.replace(&format!("exp={}", exp + 300), &format!("exp={}", exp + 301)),
        stale,
        srv.url(&format!(
            "/v1/outputs/{}/output-0.png?exp=1&sig=x",
            uuid::Uuid::new_v4()
        )),
        srv.url("/v1/outputs/not-an-id/output-0.png?exp=1&sig=x"),
    ];
    for b in &bad {
        let res = srv.client().get(b).send().await.unwrap();
        assert_eq!(res.status(), 404, "{b}");
        let (_, v) = read(res).await;
        assert_eq!(v["error"]["error_id"], "NOT_FOUND");
    }

    // Retention, on a fake clock: nothing before 5 minutes, everything after.
    let account = skygate_core::AccountId::clone(&k.account);
    let prefix = skygate_core::predictions::object_prefix(&account, &pid);
    let objects = || async {
        srv.state
            .objects()
            .keys()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .count()
    };
    assert_eq!(objects().await, 2);
    let done_at = ts(&p["completed_at"]);
    let early = worker::sweep(&srv.state, done_at.saturating_add(Duration::from_secs(299)))
        .await
        .unwrap();
    assert_eq!(early.purged, 0);
    assert_eq!(srv.client().get(&url).send().await.unwrap().status(), 200);
    let late = worker::sweep(&srv.state, done_at.saturating_add(Duration::from_secs(301)))
        .await
        .unwrap();
    assert_eq!(late.purged, 1);
    assert_eq!(objects().await, 0);
    let (s, gone) = get(&srv, &format!("/v1/predictions/{id}"), &k.key).await;
    assert_eq!(s, 200);
    assert_eq!(gone["data_removed"], true);
    assert!(gone["output"].is_null() && gone["input"].is_null());
    assert_eq!(gone["urls"], json!({}));
    assert_eq!(gone["metadata"]["data_available"], false);
    assert_eq!(gone["metadata"]["storage"]["files"], json!([]));
    assert_eq!(gone["status"], "succeeded");
    assert_eq!(srv.client().get(&url).send().await.unwrap().status(), 404);
    // The window's shred key goes once the window is spent (and its grace period passed).
    let retire = worker::sweep(&srv.state, done_at.saturating_add(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(retire.windows_retired >= 1, "{retire:?}");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn delete_destroys_at_once_and_twice_is_not_found() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = run(
        &srv,
        &k,
        "sky-audio",
        json!({"notes": "C4 E4 G4", "duration": 0.5}),
    )
    .await;
    assert_eq!(p["status"], "succeeded", "{p}");
    let url = p["output"][0].as_str().unwrap().to_owned();
    let res = srv.client().get(&url).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "audio/wav");
    assert!(res.bytes().await.unwrap().starts_with(b"RIFF"));
    let id = p["id"].as_str().unwrap();
    for path in [
        format!("/v1/predictions/{id}/delete"),
        format!("/v1/predictions/{id}"),
    ] {
        let r = call(&srv, reqwest::Method::DELETE, &path, &k.key).await;
        if path.ends_with("/delete") {
            assert_eq!(r, (StatusCode::OK, json!({"success": true})));
        } else {
            assert_error(&r, 404, "PREDICTION_NOT_FOUND");
        }
    }
    assert_eq!(srv.client().get(&url).send().await.unwrap().status(), 404);
    assert!(srv
        .state
        .objects()
        .keys()
        .await
        .unwrap()
        .iter()
        .all(|o| !o.contains(id)));
    // Deleting a running prediction stops it.
    let run = create(&srv, &k, json!({"model": "countdown", "input": {"seconds": 60}})).await;
    let rid = run["id"].as_str().unwrap();
    until(&srv, &k, rid, |v| v["status"] == "processing").await;
    assert_eq!(
        call(
            &srv,
            reqwest::Method::DELETE,
            &format!("/v1/predictions/{rid}"),
            &k.key
        )
        .await
        .0,
        200
    );
    assert_error(
        &get(&srv, &format!("/v1/predictions/{rid}"), &k.key).await,
        404,
        "PREDICTION_NOT_FOUND",
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn usage_is_recorded_sealed_per_account() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let p = run(&srv, &k, "sky-text", json!({"prompt": "héllo", "mode": "upper"})).await;
    assert_eq!(p["status"], "succeeded");
    let usage = srv
        .store
        .usage(&k.account, Timestamp::from_micros(0), 10)
        .await
        .unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].model, "sky-text");
    assert_eq!(usage[0].prediction.as_str(), p["id"].as_str().unwrap());
    assert_eq!((usage[0].units, usage[0].unit.as_str()), (5.0, "characters"));
    assert!(usage[0].predict_time >= 0.0);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_the_documented_envelope() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let t = srv.new_key(Mode::Test).await.unwrap();
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"input": {"prompt": "x"}}),
            422,
            "VALIDATION_ERROR",
            "model",
        ),
        (json!({"model": 5, "input": {}}), 422, "VALIDATION_ERROR", "model"),
        (json!({"model": "echo"}), 422, "VALIDATION_ERROR", "input"),
        (
            json!({"model": "echo", "input": [1]}),
            422,
            "INVALID_INPUT",
            "input",
        ),
        (
            json!({"model": "echo", "input": {}}),
            422,
            "INVALID_INPUT",
            "prompt",
        ),
        (
            json!({"model": "echo", "input": {"prompt": 7}}),
            422,
            "INVALID_INPUT",
            "input.prompt",
        ),
        (
            json!({"model": "sky-image", "input": {"prompt": "x", "width": 99999}}),
            422,
            "INVALID_INPUT",
            "input.width",
        ),
        (
            json!({"model": "nope", "input": {}}),
            404,
            "MODEL_NOT_FOUND",
            "nope",
        ),
        (
            json!({"model": "../etc", "input": {}}),
            404,
            "MODEL_NOT_FOUND",
            "invalid slug",
        ),
        (
            json!({"model": "echo", "input": {"prompt": "x"}, "webhook": {"url": "ftp://x"}}),
            422,
            "VALIDATION_ERROR",
            "webhook.url",
        ),
        (
            json!({"model": "echo", "input": {"prompt": "x"}, "webhook": {"url": "https://example.com/h", "events": ["boom"]}}),
            422,
            "VALIDATION_ERROR",
            "webhook.events",
        ),
        (
            json!({"model": "echo", "input": {"prompt": "x"}, "await": "yes"}),
            422,
            "VALIDATION_ERROR",
            "",
        ),
    ];
    for (body, status, id, details) in cases {
        let got = post(&srv, "/v1/predictions", &k.key, &body).await;
        assert_error(&got, status, id);
        assert!(
            got.1["error"]["details"].as_str().unwrap().contains(details),
            "{body}: {}",
            got.1
        );
    }
    assert_error(
        &post(
            &srv,
            "/v1/predictions",
            &t.key,
            &json!({"model": "sky-image", "input": {"prompt": "x"}}),
        )
        .await,
        403,
        "FORBIDDEN",
    );
    // Not JSON, too deep, too big.
    let raw = |body: Vec<u8>| {
        srv.client()
            .post(srv.url("/v1/predictions"))
            .header("x-api-key", &k.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(
        &read(raw(b"{nope".to_vec()).await.unwrap()).await,
        400,
        "INVALID_JSON",
    );
    let deep = format!(
        r#"{{"model":"echo","input":{{"prompt":"x","n":{}{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_error(
        &read(raw(deep.into_bytes()).await.unwrap()).await,
        400,
        "INVALID_JSON",
    );
    let huge = format!(
        r#"{{"model":"echo","input":{{"prompt":"{}"}}}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    assert_error(
        &read(raw(huge.into_bytes()).await.unwrap()).await,
        413,
        "PAYLOAD_TOO_LARGE",
    );
    // Query parameters.
    for (q, id) in [
        ("page=0", "INVALID_PARAMETER"),
        ("page=x", "INVALID_PARAMETER"),
        ("per_page=51", "INVALID_PARAMETER"),
        ("per_page=-1", "INVALID_PARAMETER"),
        ("model=Bad/Slug", "INVALID_PARAMETER"),
        ("from=2026-02-30", "INVALID_DATE_FORMAT"),
        ("to=yesterday", "INVALID_DATE_FORMAT"),
        ("from=2026-03-02&to=2026-03-01", "INVALID_DATE_RANGE"),
    ] {
        let got = get(&srv, &format!("/v1/predictions?{q}"), &k.key).await;
        assert_error(&got, 400, id);
    }
    // Nothing above created a prediction.
    let (_, l) = get(&srv, "/v1/predictions", &k.key).await;
    assert_eq!(l["pagination"]["total"], 0);
    srv.stop().await.unwrap();
}

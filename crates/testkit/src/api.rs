//! Calls to a [`TestServer`]'s API as a client would make them, with the envelope and status checks
//! every API test repeats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{TestKey, TestServer};

pub async fn post(srv: &TestServer, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let res = srv
        .client()
        .post(srv.url(path))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    read(res).await
}

pub async fn call(srv: &TestServer, method: reqwest::Method, path: &str, key: &str) -> (StatusCode, Value) {
    // As the SDK does: a JSON content type and no body on cancel and delete.
    let res = srv
        .client()
        .request(method, srv.url(path))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    read(res).await
}

pub async fn get(srv: &TestServer, path: &str, key: &str) -> (StatusCode, Value) {
    call(srv, reqwest::Method::GET, path, key).await
}

pub async fn read(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{status}: {ct}");
    (status, res.json().await.unwrap())
}

pub fn assert_error(got: &(StatusCode, Value), status: u16, id: &str) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(v["status"], false, "{v}");
    assert_eq!(v["error"]["error_id"], id, "{v}");
    assert_eq!(v["error"]["http_status"], status, "{v}");
    assert_eq!(v["response"], v["error"]["message"], "{v}");
}

pub async fn create(srv: &TestServer, k: &TestKey, body: Value) -> Value {
    let (s, v) = post(srv, "/v1/predictions", &k.key, &body).await;
    assert!(s.is_success(), "{s}: {v}");
    v
}

/// Runs `model` with `"await": true` on `/v1/predict` and returns the answer (which must be a 200).
pub async fn run(srv: &TestServer, k: &TestKey, model: &str, input: Value) -> Value {
    let (s, v) = post(
        srv,
        "/v1/predict",
        &k.key,
        &json!({"model": model, "input": input, "await": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Polls until `pred` satisfies `done` (≤ 30 s).
pub async fn until(srv: &TestServer, k: &TestKey, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (s, v) = get(srv, &format!("/v1/predictions/{id}"), &k.key).await;
        assert_eq!(s, 200, "{v}");
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("prediction {id} never reached the expected state");
}

pub fn terminal(v: &Value) -> bool {
    matches!(v["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

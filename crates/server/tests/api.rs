//! End-to-end API tests against an in-process server over real TLS on a loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use skygate_core::Mode;
use skygate_testkit::TestServer;

async fn get(srv: &TestServer, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = srv.client().get(srv.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

fn assert_envelope(v: &Value, status: u16, id: &str) {
    assert_eq!(v["status"], false, "{v}");
    assert_eq!(v["error"]["http_status"], status, "{v}");
    assert_eq!(v["error"]["error_id"], id, "{v}");
    assert!(
        v["error"]["message"].is_string() && v["error"]["details"].is_string(),
        "{v}"
    );
    assert_eq!(v["response"], v["error"]["message"], "{v}");
}

async fn envelope_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("application/json"), "{status}: content-type {ct}");
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn healthz_needs_no_auth() {
    let srv = TestServer::start().await.unwrap();
    let res = get(&srv, "/healthz", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    assert_eq!(get(&srv, "/readyz", None).await.status(), 200);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn models_list_and_get_with_a_live_key() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let res = get(&srv, "/v1/models", Some(&k.key)).await;
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["namespace"].as_str().unwrap())
        .collect();
    assert!(
        slugs.contains(&"echo") && slugs.contains(&"sky-image") && slugs.contains(&"countdown"),
        "{slugs:?}"
    );
    assert!(list[0].get("input_schema").is_none());

    let res = get(&srv, "/v1/models?fields=input_schema,output_schema", Some(&k.key)).await;
    let list: Value = res.json().await.unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["input_schema"].is_object() && m["output_schema"].is_object()));

    for path in ["/v1/models/echo", "/v1/model/echo"] {
        let m: Value = get(&srv, path, Some(&k.key)).await.json().await.unwrap();
        assert_eq!(m["namespace"], "echo");
        assert_eq!(m["type"], "text");
    }
    let m: Value = get(&srv, "/v1/model/echo?fields=input_schema", Some(&k.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["input_schema"]["required"][0], "prompt");
    assert!(m.get("output_schema").is_none());

    let (s, v) = envelope_of(get(&srv, "/v1/model/no-such-model", Some(&k.key)).await).await;
    assert_eq!(s, 404);
    assert_envelope(&v, 404, "MODEL_NOT_FOUND");
    let (s, v) = envelope_of(get(&srv, "/v1/models?fields=secrets", Some(&k.key)).await).await;
    assert_eq!(s, 400);
    assert_envelope(&v, 400, "INVALID_PARAMETER");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn test_keys_see_only_test_models() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Test).await.unwrap();
    assert!(k.key.starts_with("sk_test_"));
    let list: Value = get(&srv, "/v1/models", Some(&k.key)).await.json().await.unwrap();
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["namespace"].as_str().unwrap())
        .collect();
    assert!(slugs.contains(&"echo"));
    assert!(!slugs.contains(&"sky-image"), "{slugs:?}");
    let (s, v) = envelope_of(get(&srv, "/v1/model/sky-image", Some(&k.key)).await).await;
    assert_eq!(s, 403);
    assert_envelope(&v, 403, "FORBIDDEN");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn every_bad_credential_gets_the_identical_401() {
    let srv = TestServer::start_with(|c| c.auth.key_cache_ttl = Duration::from_millis(200))
        .await
        .unwrap();
    let good = srv.new_key(Mode::Live).await.unwrap();
    let expiring = srv
        .key_in(
            &good.account,
            &good.project,
            Mode::Live,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let revoked = srv
        .key_in(&good.account, &good.project, Mode::Live, None)
        .await
        .unwrap();
    assert_eq!(get(&srv, "/v1/models", Some(&revoked.key)).await.status(), 200);
    srv.revoke(&revoked.key_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // A well-formed key that was never issued (valid checksum, unknown).
    let unknown = skygate_core::ApiKey::generate(Mode::Live)
        .unwrap()
        .expose()
        .to_owned();
    let mut bad_sum = good.key.clone().into_bytes();
    bad_sum[20] = if bad_sum[20] == b'a' { b'b' } else { b'a' };
    let bad_sum = String::from_utf8(bad_sum).unwrap();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty", Some(String::new())),
        ("wrong prefix", Some(good.key.replacen("sk_live_", "sk_prod_", 1))),
        ("bad checksum", Some(bad_sum)),
        ("unknown", Some(unknown)),
        ("revoked", Some(revoked.key.clone())),
        ("expired", Some(expiring.key.clone())),
        ("10 KB", Some("k".repeat(10 * 1024))),
        ("truncated", Some(good.key[..20].to_owned())),
    ];
    let mut bodies = Vec::new();
    for (what, key) in &cases {
        let res = get(&srv, "/v1/models", key.as_deref()).await;
        assert_eq!(res.status(), 401, "{what}");
        let mut headers: Vec<(String, String)> = res
            .headers()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let body = res.bytes().await.unwrap();
        bodies.push((what, headers, body));
    }
    // Non-ASCII bytes in the header (sent raw through a header value built from bytes).
    let raw = reqwest::header::HeaderValue::from_bytes("sk_live_ÿÿÿ".as_bytes()).unwrap();
    let res = srv
        .client()
        .get(srv.url("/v1/models"))
        .header("x-api-key", raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body = res.bytes().await.unwrap();
    let (_, first_headers, first) = &bodies[0];
    assert_eq!(&body, first);
    for (what, headers, b) in &bodies {
        assert_eq!(b, first, "{what}: body differs");
        assert_eq!(headers, first_headers, "{what}: headers differ");
    }
    let v: Value = serde_json::from_slice(first).unwrap();
    assert_envelope(&v, 401, "UNAUTHORIZED");
    // Bearer works too, and the good key still works.
    let res = srv
        .client()
        .get(srv.url("/v1/models"))
        .bearer_auth(&good.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn revocation_applies_to_the_next_request() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get(&srv, "/v1/models", Some(&k.key)).await.status(), 200);
    }
    // The operator path returns only once the lookup cache (≤ 1 s) can no longer hold the key.
    srv.revoke(&k.key_id).await.unwrap();
    assert_eq!(get(&srv, "/v1/models", Some(&k.key)).await.status(), 401);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn last_used_is_recorded_without_a_write_per_request() {
    let srv = TestServer::start_with(|c| c.auth.last_used_flush = Duration::from_millis(100))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let before = srv.store.list_api_keys(&k.project).await.unwrap();
    assert!(before[0].last_used_at.is_none());
    for _ in 0..5 {
        assert_eq!(get(&srv, "/v1/models", Some(&k.key)).await.status(), 200);
    }
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = srv.store.list_api_keys(&k.project).await.unwrap()[0].last_used_at;
        if seen.is_some() {
            break;
        }
    }
    assert!(seen.is_some(), "last_used_at was never written");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn framework_errors_use_the_envelope() {
    let srv = TestServer::start_with(|c| c.server.body_limit = skygate_server::config::ByteSize(1024))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let c = srv.client();

    let (s, v) = envelope_of(get(&srv, "/nope", None).await).await;
    assert_eq!(s, 404);
    assert_envelope(&v, 404, "NOT_FOUND");

    let res = c
        .delete(srv.url("/v1/models"))
        .header("x-api-key", &k.key)
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("allow").is_some());
    let (s, v) = envelope_of(res).await;
    assert_eq!(s, 405);
    assert_envelope(&v, 405, "METHOD_NOT_ALLOWED");

    let res = c
        .post(srv.url("/v1/models"))
        .header("x-api-key", &k.key)
        .header("content-type", "application/json")
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    let (s, v) = envelope_of(res).await;
    assert_eq!(s, 413);
    assert_envelope(&v, 413, "PAYLOAD_TOO_LARGE");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn request_ids_and_security_headers() {
    let srv = TestServer::start().await.unwrap();
    let res = srv
        .client()
        .get(srv.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    for h in [
        "strict-transport-security",
        "x-content-type-options",
        "referrer-policy",
        "content-security-policy",
    ] {
        assert!(res.headers().get(h).is_some(), "missing {h}");
    }
    let res = srv
        .client()
        .get(srv.url("/healthz"))
        .header("x-request-id", "bad id <script>")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id <script>");
    let (prefix, counter) = id.split_once('-').expect("<prefix>-<counter>");
    assert_eq!(prefix.len(), 12, "{id}");
    assert!(u64::from_str_radix(counter, 16).is_ok(), "{id}");
    let res = srv.client().get(srv.url("/nope")).send().await.unwrap();
    assert!(res.headers().get("x-request-id").is_some());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let srv = TestServer::start().await.unwrap();
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&srv.ca_pem).unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = c.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn stored_key_rows_hold_no_secret() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let keys = srv.store.list_api_keys(&k.project).await.unwrap();
    let dump = format!("{keys:?}");
    assert!(
        !dump.contains(&k.key[8..40]),
        "Debug of stored rows shows the secret"
    );
    assert_eq!(keys[0].last4, &k.key[k.key.len() - 4..]);
    srv.stop().await.unwrap();
}

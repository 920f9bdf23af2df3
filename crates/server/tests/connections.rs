//! Connection-level edge limits on the real TLS listener: too many header fields answer 431 (the
//! envelope up to hyper's parse limit, hyper's own 431 past it), and a connection that sits idle — no
//! request in flight, no bytes moving — is closed after `server.idle_timeout`, while one waiting on a
//! long request is not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skygate_core::Mode;
use skygate_testkit::tlsclient::{client_config, connect};
use skygate_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_headers(n: usize) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    for i in 0..n {
        h.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-extra-{i}").as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_static("1"),
        );
    }
    h
}

#[tokio::test]
async fn too_many_header_fields_get_431() {
    let srv = TestServer::start_with(|c| c.server.max_headers = 20)
        .await
        .unwrap();
    let c = srv.client();
    // Fast path and routed path alike.
    for path in ["/healthz", "/v1/predictions"] {
        let ok = c
            .get(srv.url(path))
            .headers(with_headers(10))
            .send()
            .await
            .unwrap();
        assert_ne!(ok.status(), 431, "{path}");
        let res = c
            .get(srv.url(path))
            .headers(with_headers(30))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 431, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["error_id"], "HEADERS_TOO_LARGE", "{path}: {v}");
        assert_eq!(v["error"]["http_status"], 431);
    }
    // Past hyper's HTTP/1 parse limit (100 fields) hyper itself refuses with 431.
    let res = c
        .get(srv.url("/healthz"))
        .headers(with_headers(150))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    // The server is fine afterwards.
    assert_eq!(c.get(srv.url("/healthz")).send().await.unwrap().status(), 200);
    srv.stop().await.unwrap();
}

/// Sends one keep-alive request on `tls` and reads the whole response (Content-Length framed).
async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    path: &str,
) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let srv = TestServer::start_with(|c| {
        c.server.idle_timeout = Duration::from_millis(600);
        // Longer than the test, so only the idle timeout can close the connection.
        c.server.header_read_timeout = Duration::from_secs(30);
    })
    .await
    .unwrap();
    let cfg = client_config(&srv.ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"]).unwrap();

    // One request, then silence: closed after 600 ms .. about 750 ms.
    let mut tls = connect(srv.addr, cfg.clone(), "localhost").await.unwrap();
    let first = round_trip(&mut tls, "/healthz").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let quiet = Instant::now();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte))
        .await
        .expect("the idle connection was closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF, not data");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(2),
        "closed after {waited:?}"
    );

    // A connection that keeps sending requests more often than the timeout stays open.
    let mut tls = connect(srv.addr, cfg.clone(), "localhost").await.unwrap();
    for _ in 0..5 {
        let r = round_trip(&mut tls, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A request that takes longer than the idle timeout (an awaited 1.5 s countdown) is not cut off.
    let k = srv.new_key(Mode::Live).await.unwrap();
    let started = Instant::now();
    let res = srv
        .client()
        .post(srv.url("/v1/predictions"))
        .header("x-api-key", &k.key)
        .json(&json!({"model": "countdown", "input": {"seconds": 1.5}, "await": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    srv.stop().await.unwrap();
}

/// Sends `body` chunked (no Content-Length) on a fresh HTTP/1.1 connection; returns the status line.
async fn post_chunked(srv: &TestServer, path: &str, key: &str, body: &[u8]) -> String {
    let cfg = client_config(&srv.ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"]).unwrap();
    let mut tls = connect(srv.addr, cfg, "localhost").await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-api-key: {key}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1000) {
        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        tls.write_all(chunk).await.unwrap();
        tls.write_all(b"\r\n").await.unwrap();
    }
    tls.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_route_may_have_its_own_body_limit() {
    let srv = TestServer::start_with(|c| {
        c.server.body_limit = skygate_server::config::ByteSize(1024);
        c.server.body_limits.insert(
            "/v1/predictions".into(),
            skygate_server::config::ByteSize(64 * 1024),
        );
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let big = json!({"model": "echo", "input": {"prompt": "x".repeat(10_000)}});
    let c = srv.client();
    // Declared length: the override admits it on /v1/predictions, the default refuses it on /v1/predict.
    let on = c
        .post(srv.url("/v1/predictions"))
        .header("x-api-key", &k.key)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert!(on.status().is_success(), "{}", on.text().await.unwrap());
    let off = c
        .post(srv.url("/v1/predict"))
        .header("x-api-key", &k.key)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 413);
    let v: Value = off.json().await.unwrap();
    assert_eq!(v["error"]["error_id"], "PAYLOAD_TOO_LARGE");
    // Chunked, so only the extractors can tell: the same verdicts.
    let body = serde_json::to_vec(&big).unwrap();
    let line = post_chunked(&srv, "/v1/predictions", &k.key, &body).await;
    assert!(line.starts_with("HTTP/1.1 20"), "{line}");
    let line = post_chunked(&srv, "/v1/predict", &k.key, &body).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    // Past the override, /v1/predictions refuses too.
    let huge = json!({"model": "echo", "input": {"prompt": "x".repeat(70_000)}});
    let res = c
        .post(srv.url("/v1/predictions"))
        .header("x-api-key", &k.key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    srv.stop().await.unwrap();
}

#[test]
fn a_body_limit_for_an_unknown_route_is_refused_at_start() {
    let mut c = skygate_server::config::Config::default();
    c.server
        .body_limits
        .insert("/v1/nope".into(), skygate_server::config::ByteSize(10));
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("server.body_limits.\"/v1/nope\": not a route template"),
        "{e}"
    );
    let mut c = skygate_server::config::Config::default();
    c.server
        .body_limits
        .insert("/v1/predict".into(), skygate_server::config::ByteSize(0));
    assert!(c.validate().is_err());
}

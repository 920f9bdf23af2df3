//! Graceful shutdown: after the signal, no new connections are accepted, in-flight requests finish, and
//! the listener returns within the grace period.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use skygate_server::listener::{serve_tls, ListenerSettings, Routed};
use skygate_server::tls;
use tokio_util::sync::CancellationToken;

async fn start(
    grace: Duration,
) -> (
    std::net::SocketAddr,
    Vec<u8>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let settings = tls::TlsSettings {
        cert: None,
        key: None,
        extra_names: Vec::new(),
    };
    let m = tls::prepare(
        &dir.path().join("tls"),
        &settings,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let ca = std::fs::read(m.ca_path.clone().unwrap()).unwrap();
    let cfg = tls::server_config(Arc::new(tls::CertResolver::new(m.certified_key))).unwrap();
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        }),
    );
    let app = skygate_server::api::with_edge_layers(app, 1024, Duration::from_secs(30));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let settings = ListenerSettings {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 64,
        shutdown_grace: grace,
        idle_timeout: Duration::from_secs(60),
        max_headers: 100,
    };
    let h = tokio::spawn(serve_tls(listener, cfg, Routed(app), settings, stop.clone()));
    (addr, ca, stop, h, dir)
}

#[tokio::test]
async fn in_flight_requests_finish_after_the_signal() {
    let (addr, ca, stop, handle, _dir) = start(Duration::from_secs(10)).await;
    let client = skygate_testkit::client_trusting(&ca);
    let url = format!("https://{addr}/slow");
    let inflight = tokio::spawn({
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    stop.cancel();
    assert_eq!(inflight.await.unwrap(), "done");
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    // No longer accepting.
    let fresh = skygate_testkit::client_trusting(&ca);
    assert!(fresh.get(format!("https://{addr}/slow")).send().await.is_err());
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let (addr, ca, stop, handle, _dir) = start(Duration::from_millis(200)).await;
    let client = skygate_testkit::client_trusting(&ca);
    let url = format!("https://{addr}/slow");
    let inflight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), handle)
        .await
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        t0.elapsed()
    );
    drop(inflight);
}

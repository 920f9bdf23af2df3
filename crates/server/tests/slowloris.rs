//! Slowloris: 1,000 connections that send one byte a second — half of them still in the TLS handshake,
//! half with a finished handshake trickling HTTP headers — are closed by the handshake and header-read
//! timeouts, while normal requests keep succeeding the whole time. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use skygate_core::Mode;
use skygate_testkit::{tlsclient, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

const SLOW: usize = 500;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Writes `bytes` one per second (then keeps going) until the server closes the connection; returns
/// how long that took.
async fn trickle<S: AsyncRead + AsyncWrite + Send + 'static>(
    s: S,
    bytes: Vec<u8>,
    started: Instant,
) -> Duration {
    let (mut r, mut w) = tokio::io::split(s);
    let writer = async move {
        for b in bytes.iter().chain(std::iter::repeat(&b'a')) {
            if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let reader = async move {
        let mut buf = [0u8; 512];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_normal_requests_go_on() {
    let srv = TestServer::start_with(|c| {
        c.server.handshake_timeout = TIMEOUT;
        c.server.header_read_timeout = TIMEOUT;
        c.limits.enabled = false;
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let tls = tlsclient::client_config(&srv.ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"]).unwrap();
    let mut slow = JoinSet::new();
    for i in 0..SLOW * 2 {
        let (addr, tls) = (srv.addr, tls.clone());
        // The handshakes of the second half are done first, so every connection starts trickling now.
        if i < SLOW {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let hello = tlsclient::legacy_client_hello(0x0303);
            slow.spawn(async move { trickle(tcp, hello, Instant::now()).await });
        } else {
            let s = tlsclient::connect(addr, tls, "127.0.0.1").await.unwrap();
            let head = b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ".to_vec();
            slow.spawn(async move { trickle(s, head, Instant::now()).await });
        }
    }
    // Normal traffic on other connections meanwhile.
    let started = Instant::now();
    let mut normal = 0;
    while started.elapsed() < TIMEOUT + Duration::from_secs(1) {
        let res = srv
            .client()
            .get(srv.url("/v1/models"))
            .header("x-api-key", &k.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        normal += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut closed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, slow.join_next()).await {
        closed.push(r.unwrap());
    }
    assert_eq!(closed.len(), SLOW * 2, "every slow connection was closed");
    let worst = closed.iter().max().unwrap();
    println!(
        "{} slow connections closed, the last after {worst:?} (timeouts {TIMEOUT:?}); {normal} normal requests succeeded meanwhile",
        closed.len()
    );
    assert!(*worst < TIMEOUT + Duration::from_secs(4), "{worst:?}");
    assert!(normal >= 10);
    srv.stop().await.unwrap();
}

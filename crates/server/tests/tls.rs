//! Transport tests: TLS 1.3 only. Older ClientHellos fail at the handshake, plaintext HTTP gets no HTTP
//! response, and `openssl s_client` agrees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use skygate_testkit::{have_command, skip, tlsclient, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn tls13_client_connects_for_every_san() {
    let srv = TestServer::start().await.unwrap();
    let cfg =
        tlsclient::client_config(&srv.ca_pem, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let s = tlsclient::connect(srv.addr, cfg.clone(), name).await.unwrap();
        let (_, conn) = s.get_ref();
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn tls12_client_is_refused_at_the_handshake() {
    let srv = TestServer::start().await.unwrap();
    let cfg = tlsclient::client_config(&srv.ca_pem, &[&rustls::version::TLS12], &[]).unwrap();
    let err = tlsclient::connect(srv.addr, cfg, "localhost")
        .await
        .expect_err("TLS 1.2 must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("ProtocolVersion") || msg.contains("protocol version") || msg.contains("alert"),
        "{msg}"
    );
    srv.stop().await.unwrap();
}

async fn first_bytes_after(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(payload).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn legacy_client_hellos_get_an_alert_not_a_server_hello() {
    let srv = TestServer::start().await.unwrap();
    for (name, v) in [("TLS 1.0", 0x0301u16), ("TLS 1.1", 0x0302), ("TLS 1.2", 0x0303)] {
        let reply = first_bytes_after(srv.addr, &tlsclient::legacy_client_hello(v)).await;
        // 0x15 = alert record; a ServerHello would be a 0x16 handshake record.
        assert!(!reply.is_empty(), "{name}: connection closed without an alert");
        assert_eq!(
            reply[0], 0x15,
            "{name}: expected an alert record, got {reply:02x?}"
        );
        // Fatal protocol_version (70) or handshake_failure (40).
        assert!(
            reply.len() >= 7 && reply[5] == 2 && matches!(reply[6], 70 | 40),
            "{name}: {reply:02x?}"
        );
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn plaintext_http_gets_no_http_response() {
    let srv = TestServer::start().await.unwrap();
    let reply = first_bytes_after(srv.addr, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plaintext request got an HTTP answer: {reply:?}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn openssl_s_client_agrees() {
    if !have_command("openssl") {
        return skip("openssl_s_client_agrees", "the openssl command is not installed");
    }
    let srv = TestServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &srv.ca_pem).unwrap();
    let connect = srv.addr.to_string();
    let run = |flag: &'static str| {
        let (ca, connect) = (ca.clone(), connect.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    flag,
                    "-connect",
                    &connect,
                    "-servername",
                    "localhost",
                    "-verify_return_error",
                ])
                .arg("-CAfile")
                .arg(&ca)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let ok = run("-tls1_3").await.unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "tls1_3 failed: {out}");
    assert!(
        out.contains("TLSv1.3") && out.contains("Verify return code: 0"),
        "{out}"
    );
    let bad = run("-tls1_2").await.unwrap();
    assert!(!bad.status.success(), "openssl -tls1_2 must fail");
    let text = String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("alert protocol version") && text.contains("Cipher is (NONE)"),
        "{text}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn slow_handshake_is_cut_off() {
    let srv = TestServer::start_with(|c| c.server.handshake_timeout = Duration::from_millis(300))
        .await
        .unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // Say nothing: the server must close the connection after the handshake deadline.
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection was not closed: {r:?}"
    );
    srv.stop().await.unwrap();
}

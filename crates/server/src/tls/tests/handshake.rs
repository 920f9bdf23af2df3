//! Real handshakes over an in-memory pipe against [`server_config`]: TLS 1.3 with ALPN accepted, TLS 1.2
//! refused even though rustls's `tls12` feature is on in test builds, hot certificate replacement.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, SupportedProtocolVersion};
use time::OffsetDateTime;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{ca_roots, local, tls_dir};
use crate::tls::{prepare, provider, renew_if_needed, server_config, CertResolver};

#[test]
fn the_provider_offers_only_tls13_suites_and_three_groups() {
    let p = provider();
    let suites: Vec<String> = p
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(
        suites,
        [
            "TLS13_AES_256_GCM_SHA384",
            "TLS13_AES_128_GCM_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256"
        ]
    );
    let groups: Vec<String> = p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect();
    assert_eq!(groups, ["X25519", "secp256r1", "secp384r1"]);
}

/// A server for today's real clock (handshake clients check validity against the system time).
fn live_server(dir: &Path) -> (Arc<CertResolver>, Arc<rustls::ServerConfig>) {
    let m = prepare(dir, &local(), OffsetDateTime::now_utc()).unwrap();
    let resolver = Arc::new(CertResolver::new(m.certified_key));
    let config = server_config(resolver.clone()).unwrap();
    (resolver, config)
}

fn client(dir: &Path, versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    // The full default provider, so a TLS 1.2 client really offers TLS 1.2 suites.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca_roots(dir))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type ClientStream = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

/// One handshake over an in-memory pipe; the client's result (the server side must agree).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<ClientStream> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let accept = TlsAcceptor::from(server).accept(server_io);
    let connect = TlsConnector::from(client).connect(name, client_io);
    let both = async { tokio::join!(accept, connect) };
    let (server_side, client_side) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
        .await
        .expect("handshake hung");
    assert_eq!(
        server_side.is_ok(),
        client_side.is_ok(),
        "both ends agree on the outcome"
    );
    client_side
}

#[tokio::test]
async fn a_tls13_client_trusting_the_ca_connects_and_gets_h2() {
    let (_tmp, dir) = tls_dir();
    let (_, server) = live_server(&dir);
    for name in ["localhost", "127.0.0.1", "::1"] {
        let tls = client(&dir, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
        let stream = handshake(server.clone(), tls, name).await.unwrap();
        let conn = stream.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }
}

#[tokio::test]
async fn an_http11_only_client_gets_http11() {
    let (_tmp, dir) = tls_dir();
    let (_, server) = live_server(&dir);
    let stream = handshake(
        server,
        client(&dir, &[&rustls::version::TLS13], &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_tls12_only_client_fails_the_handshake() {
    let (_tmp, dir) = tls_dir();
    let (_, server) = live_server(&dir);
    let err = handshake(
        server,
        client(&dir, &[&rustls::version::TLS12], &[b"h2"]),
        "localhost",
    )
    .await
    .expect_err("a TLS 1.2 handshake must fail");
    assert!(
        err.to_string().to_lowercase().contains("protocolversion"),
        "{err}"
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_handshakes() {
    let (_tmp, dir) = tls_dir();
    let (resolver, server) = live_server(&dir);
    let tls = client(&dir, &[&rustls::version::TLS13], &[b"h2"]);
    let first = handshake(server.clone(), tls.clone(), "localhost").await.unwrap();
    let first_cert = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    std::fs::remove_file(dir.join("server.key")).unwrap();
    assert!(renew_if_needed(&dir, &local(), &resolver, OffsetDateTime::now_utc()).unwrap());
    let second = handshake(server, tls, "localhost").await.unwrap();
    let second_cert = &second.get_ref().1.peer_certificates().unwrap()[0];
    assert_ne!(*second_cert, first_cert);
    assert_eq!(*second_cert, resolver.current().cert[0]);
}

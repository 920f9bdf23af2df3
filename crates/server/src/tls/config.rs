//! The rustls server side: a crypto provider cut down to TLS 1.3 suites and three groups, a server
//! configuration that allows TLS 1.3 only whatever rustls features are enabled elsewhere, and a
//! certificate resolver whose certificate can be swapped while the server runs.

use std::sync::{Arc, RwLock};

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// The ring provider restricted to `TLS13_AES_256_GCM_SHA384`, `TLS13_AES_128_GCM_SHA256`,
/// `TLS13_CHACHA20_POLY1305_SHA256` and the X25519, P-256 and P-384 key exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// A TLS 1.3-only server configuration, without client authentication, presenting whatever `resolver`
/// holds at each handshake, offering ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    // The explicit version list is what keeps TLS 1.2 out: rustls's `tls12` feature may be switched on
    // by another crate (the test clients do), and the provider alone would not stop a 1.2 handshake.
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Holds the certificate and key in force. [`CertResolver::replace`] swaps them; handshakes that start
/// afterwards present the new ones, established connections are not affected.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(ck: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(ck),
        }
    }

    pub fn replace(&self, ck: Arc<CertifiedKey>) {
        // A poisoned lock still holds a whole `Arc`: writers only ever assign it.
        match self.current.write() {
            Ok(mut guard) => *guard = ck,
            Err(poisoned) => *poisoned.into_inner() = ck,
        }
    }

    /// The certificate and key new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

//! TLS for every listener: TLS 1.3 only (rustls with the ring provider, the three TLS 1.3 suites,
//! X25519/P-256/P-384, ALPN h2 and http/1.1), and the certificate it presents — either the operator's
//! own chain and key, or a server certificate signed by a local CA that skygate creates on first start
//! and renews by itself well before it expires.

mod certs;
mod config;

pub use certs::{prepare, renew_if_needed, TlsError, TlsMaterial, TlsSettings};
pub use config::{provider, server_config, CertResolver};

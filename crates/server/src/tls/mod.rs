//! TLS for skygate's listener: the certificate the server presents and the rustls configuration that
//! presents it.
//!
//! Promises:
//! - TLS 1.3 only (the three TLS 1.3 suites, groups X25519, P-256 and P-384), ALPN `h2` then `http/1.1`,
//!   whatever rustls features other crates of the workspace enable.
//! - With an operator certificate ([`TlsSettings::cert`] and [`TlsSettings::key`]): the chain and key are
//!   loaded and checked to match, and nothing is ever written.
//! - Otherwise a local CA (`ca.pem`, `ca.key`) is created once in the TLS directory and never replaced,
//!   and the server certificate it signs (`server.pem`, `server.key`, ≤ 90 days) is renewed by the same CA
//!   well before it expires or when the configured names change, so clients that trust `ca.pem` keep
//!   working. The directory is 0700, private keys 0600 from their first byte, and every file is written
//!   atomically.
//! - A corrupt, mismatched or half-missing file is an error that names it; it is never silently replaced.
//! - [`CertResolver`] lets a renewed certificate take effect for new handshakes without a restart.

mod certs;
mod config;
mod files;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

pub use certs::{prepare, renew_if_needed};
pub use config::{provider, server_config, CertResolver};

/// Where the server certificate comes from.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The operator's PEM certificate chain (leaf first); given together with `key` or not at all.
    pub cert: Option<PathBuf>,
    /// The operator's PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// Names the local-CA server certificate covers besides `localhost`, `127.0.0.1` and `::1`: IP
    /// addresses, or DNS names (a leading `*.` is allowed). Ignored with an operator certificate.
    pub extra_names: Vec<String>,
}

/// The certificate and key to serve, and facts about them.
#[derive(Debug)]
pub struct TlsMaterial {
    pub certified_key: Arc<CertifiedKey>,
    /// The local CA certificate clients should trust; `None` with an operator certificate.
    pub ca_path: Option<PathBuf>,
    /// When the server (leaf) certificate expires.
    pub not_after: OffsetDateTime,
    /// Whether this call generated or renewed the server certificate.
    pub renewed: bool,
}

/// Why TLS material could not be loaded or created. Every message is one line; file problems name the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("cannot parse TLS certificate {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot parse TLS private key {}: {reason}", path.display())]
    PrivateKey { path: PathBuf, reason: String },
    #[error("TLS private key {} does not match the certificate {}{hint}", key.display(), cert.display())]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        hint: &'static str,
    },
    #[error("TLS file {} is missing but {} exists{hint}", missing.display(), present.display())]
    Missing {
        missing: PathBuf,
        present: PathBuf,
        hint: &'static str,
    },
    #[error("local CA certificate {} {reason}", path.display())]
    UnusableCa { path: PathBuf, reason: String },
    #[error("invalid TLS server name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("a TLS certificate and key must be given together, but only the {given} is set")]
    HalfPair { given: &'static str },
    #[error("cannot generate the TLS {what}: {reason}")]
    Generate { what: &'static str, reason: String },
    #[error("cannot build the TLS server configuration: {reason}")]
    Config { reason: String },
}

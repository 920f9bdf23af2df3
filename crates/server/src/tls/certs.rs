//! Certificate material. With an operator certificate: load the chain and key, check they match, never
//! write anything. Otherwise: a local CA (`ca.pem`, `ca.key`; ECDSA P-256, 10 years) created once and
//! never replaced, and a server certificate it signs (`server.pem`, `server.key`; ECDSA P-256, 90 days,
//! SANs `localhost`, `127.0.0.1`, `::1` and the configured names), renewed when fewer than 30 days
//! remain or the names change. Key files are created 0600 and every file is written atomically. A
//! corrupt file is an error naming it; it is never silently replaced.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::config::{provider, CertResolver};

const SERVER_VALIDITY: Duration = Duration::days(90);
const RENEW_BEFORE: Duration = Duration::days(30);
const CA_VALIDITY: Duration = Duration::days(3650);
const BACKDATE: Duration = Duration::minutes(5);
const ALWAYS_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("cannot parse TLS file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error(
        "TLS file {missing} is missing while {present} exists; restore it or remove both to make a new CA"
    )]
    Incomplete { missing: String, present: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Operator PEM chain and key (both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra SANs for the generated certificate: IP addresses or DNS names.
    pub extra_names: Vec<String>,
}

/// The loaded certificate and key, and facts about them.
pub struct TlsMaterial {
    pub certified_key: Arc<CertifiedKey>,
    /// The local CA clients should trust; `None` for operator certificates.
    pub ca_path: Option<PathBuf>,
    pub not_after: OffsetDateTime,
    /// Whether this call generated or renewed the server certificate.
    pub renewed: bool,
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

fn parse_err(p: &Path, reason: impl ToString) -> TlsError {
    TlsError::Parse {
        path: shown(p),
        reason: reason.to_string(),
    }
}

fn gen_err(e: impl ToString) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|e| TlsError::Read {
        path: shown(p),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename), with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let werr = |e: std::io::Error| TlsError::Write {
        path: shown(path),
        reason: e.to_string(),
    };
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| gen_err("the system random source failed"))?;
    let tmp = path.with_extension(format!(
        "tmp-{}",
        suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    let r = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(werr)
}

fn load_chain(p: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(p)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(p, e))?;
    if chain.is_empty() {
        return Err(parse_err(p, "no PEM certificate found"));
    }
    for c in &chain {
        x509_parser::parse_x509_certificate(c).map_err(|e| parse_err(p, e))?;
    }
    Ok(chain)
}

fn load_key(p: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(p)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| parse_err(p, e))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| parse_err(key_path, format!("key does not fit the certificate ({e})")))?;
    Ok(Arc::new(ck))
}

/// Facts read off a certificate.
struct CertFacts {
    not_after: OffsetDateTime,
    names: BTreeSet<String>,
    issuer: Vec<u8>,
    subject: Vec<u8>,
}

fn facts(der: &[u8], p: &Path) -> Result<CertFacts, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(p, e))?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| parse_err(p, e))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.insert(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        not_after,
        names,
        issuer: cert.issuer().as_raw().to_vec(),
        subject: cert.subject().as_raw().to_vec(),
    })
}

/// The names the server certificate must cover, normalised (IPs in canonical form, DNS lower-case).
fn wanted_names(extra: &[String]) -> Result<BTreeSet<String>, TlsError> {
    let mut out = BTreeSet::new();
    for n in ALWAYS_NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
    {
        let n = n.trim().to_ascii_lowercase();
        if n.is_empty() {
            return Err(TlsError::Config("server.tls_names has an empty name".into()));
        }
        match n.parse::<IpAddr>() {
            Ok(ip) => out.insert(ip.to_string()),
            Err(_) => out.insert(n),
        };
    }
    Ok(out)
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| gen_err("the system random source failed"))?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from(b.to_vec()))
}

fn new_key() -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)
}

fn create_ca(ca_pem: &Path, ca_key: &Path, now: OffsetDateTime) -> Result<(), TlsError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skygate local CA");
    dn.push(DnType::OrganizationName, "skygate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    // Key first: a crash in between leaves "key without cert", which is reported, never a cert whose key
    // is lost.
    write_atomic(ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(ca_pem, cert.pem().as_bytes(), 0o644)
}

fn issue_server_cert(
    issuer: &Issuer<'_, KeyPair>,
    names: &BTreeSet<String>,
    now: OffsetDateTime,
    pem: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skygate server");
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| TlsError::Config(format!("server.tls_names: {n:?}: {e}"))),
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVER_VALIDITY;
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(pem, cert.pem().as_bytes(), 0o644)
}

struct LocalPaths {
    ca_pem: PathBuf,
    ca_key: PathBuf,
    pem: PathBuf,
    key: PathBuf,
}

impl LocalPaths {
    fn new(dir: &Path) -> Self {
        LocalPaths {
            ca_pem: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            pem: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), TlsError> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| TlsError::Write {
                path: shown(dir),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// Loads the local CA, creating it if neither file exists.
fn local_ca(
    paths: &LocalPaths,
    now: OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, CertFacts), TlsError> {
    match (paths.ca_pem.exists(), paths.ca_key.exists()) {
        (false, false) => create_ca(&paths.ca_pem, &paths.ca_key, now)?,
        (true, false) => {
            return Err(TlsError::Incomplete {
                missing: shown(&paths.ca_key),
                present: shown(&paths.ca_pem),
            })
        }
        (false, true) => {
            return Err(TlsError::Incomplete {
                missing: shown(&paths.ca_pem),
                present: shown(&paths.ca_key),
            })
        }
        (true, true) => {}
    }
    let ca_chain = load_chain(&paths.ca_pem)?;
    let ca_facts = facts(&ca_chain[0], &paths.ca_pem)?;
    let key_pem = String::from_utf8(read(&paths.ca_key)?).map_err(|e| parse_err(&paths.ca_key, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| parse_err(&paths.ca_key, e))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != ca_public_key(&ca_chain[0], &paths.ca_pem)? {
        return Err(parse_err(
            &paths.ca_key,
            format!("key does not belong to {}", shown(&paths.ca_pem)),
        ));
    }
    let ca_pem_text = String::from_utf8(read(&paths.ca_pem)?).map_err(|e| parse_err(&paths.ca_pem, e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem_text, key).map_err(|e| parse_err(&paths.ca_pem, e))?;
    Ok((issuer, ca_facts))
}

fn ca_public_key(der: &[u8], p: &Path) -> Result<Vec<u8>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(p, e))?;
    Ok(cert.public_key().raw.to_vec())
}

/// Whether the existing server certificate must be replaced.
fn needs_renewal(
    paths: &LocalPaths,
    ca: &CertFacts,
    wanted: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<bool, TlsError> {
    match (paths.pem.exists(), paths.key.exists()) {
        (false, false) => return Ok(true),
        (true, false) => {
            return Err(TlsError::Incomplete {
                missing: shown(&paths.key),
                present: shown(&paths.pem),
            })
        }
        (false, true) => {
            return Err(TlsError::Incomplete {
                missing: shown(&paths.pem),
                present: shown(&paths.key),
            })
        }
        (true, true) => {}
    }
    let chain = load_chain(&paths.pem)?;
    load_key(&paths.key)?;
    let f = facts(&chain[0], &paths.pem)?;
    Ok(f.not_after - now < RENEW_BEFORE || !wanted.is_subset(&f.names) || f.issuer != ca.subject)
}

/// Loads (and in local-CA mode creates or renews) the certificate material.
pub fn prepare(tls_dir: &Path, settings: &TlsSettings, now: OffsetDateTime) -> Result<TlsMaterial, TlsError> {
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = load_chain(cert)?;
            let f = facts(&chain[0], cert)?;
            let ck = certified(chain, load_key(key)?, key)?;
            Ok(TlsMaterial {
                certified_key: ck,
                ca_path: None,
                not_after: f.not_after,
                renewed: false,
            })
        }
        (None, None) => {
            ensure_dir(tls_dir)?;
            let paths = LocalPaths::new(tls_dir);
            let (issuer, ca) = local_ca(&paths, now)?;
            let wanted = wanted_names(&settings.extra_names)?;
            let renewed = needs_renewal(&paths, &ca, &wanted, now)?;
            if renewed {
                issue_server_cert(&issuer, &wanted, now, &paths.pem, &paths.key)?;
            }
            let mut chain = load_chain(&paths.pem)?;
            let f = facts(&chain[0], &paths.pem)?;
            chain.truncate(1);
            chain.extend(load_chain(&paths.ca_pem)?);
            let ck = certified(chain, load_key(&paths.key)?, &paths.key)?;
            Ok(TlsMaterial {
                certified_key: ck,
                ca_path: Some(paths.ca_pem),
                not_after: f.not_after,
                renewed,
            })
        }
        _ => Err(TlsError::Config(
            "server.tls_cert and server.tls_key must be given together".into(),
        )),
    }
}

/// Renews the local server certificate if due and swaps it into `resolver`. Returns whether it did.
/// With an operator certificate it only reloads the files (so a replaced certificate is picked up).
pub fn renew_if_needed(
    tls_dir: &Path,
    settings: &TlsSettings,
    resolver: &CertResolver,
    now: OffsetDateTime,
) -> Result<bool, TlsError> {
    let m = prepare(tls_dir, settings, now)?;
    let changed = m.renewed || m.certified_key.cert != resolver.current().cert;
    if changed {
        resolver.replace(m.certified_key);
    }
    Ok(changed)
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;

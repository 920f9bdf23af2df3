//! Where the server certificate comes from, and when it is replaced.
//!
//! Operator mode loads the given chain and key, checks that they match and writes nothing. Local-CA mode
//! keeps four files in the TLS directory: `ca.pem` and `ca.key` (ECDSA P-256, 10 years, path length 0),
//! created once and never rewritten, and `server.pem` and `server.key` (ECDSA P-256, ≤ 90 days), issued
//! by that CA and reissued when fewer than 30 days remain, when the certificate no longer verifies
//! against the CA, or when it does not cover `localhost`, `127.0.0.1`, `::1` and the configured names.
//! Every existing file is fully checked before anything is decided, so a corrupt file is reported by
//! name and never overwritten.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use super::config::{provider, CertResolver};
use super::files::{self, CERT_MODE, KEY_MODE};
use super::{TlsError, TlsMaterial, TlsSettings};

const SERVER_VALIDITY: Duration = Duration::days(90);
const RENEW_BEFORE: Duration = Duration::days(30);
const CA_VALIDITY: Duration = Duration::days(3650);
/// From here on every load warns that the local CA will need replacing.
const CA_WARN_BEFORE: Duration = Duration::days(180);
/// Tolerates clients whose clock is a little behind ours.
const BACKDATE: Duration = Duration::minutes(5);
const BUILTIN_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const CA_COMMON_NAME: &str = "skygate local CA";
const SERVER_COMMON_NAME: &str = "skygate server";

const CA_HINT: &str = "; restore the right file, or remove both ca.pem and ca.key to create a new local CA \
                       (clients must then trust the new one)";
const CA_RESET_HINT: &str =
    "; remove ca.pem and ca.key to create a new local CA (clients must then trust the new one)";
const SERVER_HINT: &str = "; remove both server.pem and server.key to have the local CA issue new ones";

/// Loads the certificate to serve; in local-CA mode creates the CA and the server certificate on first
/// use and renews the server certificate when it is due (see the module doc). `now` is the clock.
pub fn prepare(tls_dir: &Path, settings: &TlsSettings, now: OffsetDateTime) -> Result<TlsMaterial, TlsError> {
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => operator(cert, key, now),
        (None, None) => local(tls_dir, &settings.extra_names, now),
        (Some(_), None) => Err(TlsError::HalfPair { given: "certificate" }),
        (None, Some(_)) => Err(TlsError::HalfPair { given: "key" }),
    }
}

/// Runs [`prepare`] and, when it issued a new certificate or the files on disk no longer hold the one
/// `resolver` serves (an operator replaced their certificate, another process renewed), swaps the new
/// one into `resolver`. Returns whether it swapped. On error the resolver keeps what it had.
pub fn renew_if_needed(
    tls_dir: &Path,
    settings: &TlsSettings,
    resolver: &CertResolver,
    now: OffsetDateTime,
) -> Result<bool, TlsError> {
    let material = prepare(tls_dir, settings, now)?;
    if material.renewed || material.certified_key.cert != resolver.current().cert {
        resolver.replace(material.certified_key);
        return Ok(true);
    }
    Ok(false)
}

fn operator(cert: &Path, key: &Path, now: OffsetDateTime) -> Result<TlsMaterial, TlsError> {
    let chain = files::load_certs(cert)?;
    let pair = ServerPair::new(chain, files::load_key(key)?, cert, key, "")?;
    let not_after = pair.facts.not_after;
    if not_after <= now {
        tracing::warn!(path = %cert.display(), %not_after, "the TLS certificate has expired");
    } else if not_after - now < RENEW_BEFORE {
        tracing::warn!(path = %cert.display(), %not_after, "the TLS certificate expires in fewer than 30 days");
    }
    Ok(pair.into_material(None, false))
}

fn local(dir: &Path, extra_names: &[String], now: OffsetDateTime) -> Result<TlsMaterial, TlsError> {
    // Certificates carry whole seconds; comparing with a sub-second `now` would only add noise.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let names = wanted_names(extra_names)?;
    files::ensure_private_dir(dir)?;
    let paths = LocalPaths::new(dir);
    let ca = LocalCa::load_or_create(&paths, now)?;
    if let Some(current) = ServerPair::load(&paths)? {
        match current.renewal_reason(&ca, &names, now) {
            None => return Ok(current.into_material(Some(paths.ca_pem), false)),
            Some(reason) => {
                tracing::info!(path = %paths.server_pem.display(), %reason, "renewing the server certificate");
            }
        }
    }
    let issued = ca.issue(&names, now, &paths)?;
    Ok(issued.into_material(Some(paths.ca_pem), true))
}

struct LocalPaths {
    dir: PathBuf,
    ca_pem: PathBuf,
    ca_key: PathBuf,
    server_pem: PathBuf,
    server_key: PathBuf,
}

impl LocalPaths {
    fn new(dir: &Path) -> Self {
        LocalPaths {
            dir: dir.to_path_buf(),
            ca_pem: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_pem: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// Both files of a pair exist, neither does, or it is an error naming the missing one.
fn pair_exists(first: &Path, second: &Path, hint: &'static str) -> Result<bool, TlsError> {
    match (files::exists(first)?, files::exists(second)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(TlsError::Missing {
            missing: second.into(),
            present: first.into(),
            hint,
        }),
        (false, true) => Err(TlsError::Missing {
            missing: first.into(),
            present: second.into(),
            hint,
        }),
    }
}

/// A name the server certificate covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    /// Lower-case, without a trailing dot; may start with `*.`.
    Dns(String),
    Ip(IpAddr),
}

impl Name {
    fn parse(raw: &str) -> Result<Name, TlsError> {
        let s = raw.trim();
        let unbracketed = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Name::Ip(ip));
        }
        let dns = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let base = dns.strip_prefix("*.").unwrap_or(&dns);
        if DnsName::try_from(base).is_err() {
            return Err(TlsError::InvalidName {
                name: raw.to_string(),
                reason: "neither an IP address nor a valid DNS name",
            });
        }
        Ok(Name::Dns(dns))
    }

    fn to_san(&self) -> Result<SanType, TlsError> {
        match self {
            Name::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            Name::Dns(d) => d
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::InvalidName {
                    name: d.clone(),
                    reason: "not representable in a certificate",
                }),
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Dns(d) => f.write_str(d),
            Name::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `localhost`, `127.0.0.1`, `::1`, then the configured names, without duplicates, in that order.
fn wanted_names(extra: &[String]) -> Result<Vec<Name>, TlsError> {
    let mut out: Vec<Name> = Vec::new();
    for raw in BUILTIN_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let name = Name::parse(raw)?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn cert_err(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Certificate {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn generate_err(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
    move |e| TlsError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn asn1_time(path: &Path, t: x509_parser::time::ASN1Time) -> Result<OffsetDateTime, TlsError> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| cert_err(path, e))
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap_or(0),
    ))
}

/// What is read off a leaf certificate.
struct LeafFacts {
    not_after: OffsetDateTime,
    names: BTreeSet<Name>,
}

fn leaf_facts(path: &Path, der: &[u8]) -> Result<LeafFacts, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| cert_err(path, e))?;
    let not_after = asn1_time(path, cert.validity().not_after)?;
    let mut names = BTreeSet::new();
    let san = cert.subject_alternative_name().map_err(|e| cert_err(path, e))?;
    for general in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match general {
            GeneralName::DNSName(d) => {
                names.insert(Name::Dns(d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    names.insert(Name::Ip(IpAddr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    names.insert(Name::Ip(IpAddr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(LeafFacts { not_after, names })
}

/// A certificate chain with the key that matches its leaf.
struct ServerPair {
    certified_key: CertifiedKey,
    facts: LeafFacts,
}

impl ServerPair {
    /// Checks that `key` is usable and belongs to the leaf of `chain`.
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_path: &Path,
        key_path: &Path,
        hint: &'static str,
    ) -> Result<Self, TlsError> {
        let signing_key =
            provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::PrivateKey {
                    path: key_path.to_path_buf(),
                    reason: format!("not a usable private key ({e})"),
                })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    key: key_path.into(),
                    cert: cert_path.into(),
                    hint,
                });
            }
            Err(e) => {
                return Err(cert_err(
                    cert_path,
                    format_args!("cannot check it against its key ({e})"),
                ))
            }
        }
        let leaf = certified_key
            .end_entity_cert()
            .map_err(|e| cert_err(cert_path, e))?;
        let facts = leaf_facts(cert_path, leaf)?;
        Ok(ServerPair { certified_key, facts })
    }

    /// The existing `server.pem` and `server.key`, fully checked; `None` if neither exists.
    fn load(paths: &LocalPaths) -> Result<Option<Self>, TlsError> {
        if !pair_exists(&paths.server_pem, &paths.server_key, SERVER_HINT)? {
            return Ok(None);
        }
        let chain = files::load_certs(&paths.server_pem)?;
        let key = files::load_key(&paths.server_key)?;
        Self::new(chain, key, &paths.server_pem, &paths.server_key, SERVER_HINT).map(Some)
    }

    /// Why this local-CA certificate must be replaced at `now`, if it must.
    fn renewal_reason(&self, ca: &LocalCa, wanted: &[Name], now: OffsetDateTime) -> Option<String> {
        let not_after = self.facts.not_after;
        if not_after <= now {
            return Some(format!("it expired on {}", not_after.date()));
        }
        if let Err(e) = ca.verify(&self.certified_key, now) {
            return Some(format!("it does not verify against the local CA ({e})"));
        }
        // Never past the CA's own end: a certificate capped there is as good as it gets.
        if not_after - now < RENEW_BEFORE && not_after < ca.not_after {
            return Some(format!("it expires on {}", not_after.date()));
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|n| !self.facts.names.contains(n))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Some(format!("it does not cover {}", missing.join(", ")));
        }
        None
    }

    fn into_material(self, ca_path: Option<PathBuf>, renewed: bool) -> TlsMaterial {
        TlsMaterial {
            certified_key: Arc::new(self.certified_key),
            ca_path,
            not_after: self.facts.not_after,
            renewed,
        }
    }
}

/// The local CA, loaded and checked: able to issue and to verify server certificates.
struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    roots: RootCertStore,
}

impl LocalCa {
    fn load_or_create(paths: &LocalPaths, now: OffsetDateTime) -> Result<Self, TlsError> {
        if pair_exists(&paths.ca_pem, &paths.ca_key, CA_HINT)? {
            Self::load(paths, now)
        } else {
            Self::create(paths, now)
        }
    }

    fn load(paths: &LocalPaths, now: OffsetDateTime) -> Result<Self, TlsError> {
        let path = &paths.ca_pem;
        let der = files::load_certs(path)?
            .into_iter()
            .next()
            .ok_or_else(|| cert_err(path, "empty"))?;
        let (is_ca, not_before, not_after, spki) = {
            let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| cert_err(path, e))?;
            let v = x.validity();
            (
                x.is_ca(),
                asn1_time(path, v.not_before)?,
                asn1_time(path, v.not_after)?,
                x.public_key().raw.to_vec(),
            )
        };
        let unusable = |reason: String| TlsError::UnusableCa {
            path: path.clone(),
            reason,
        };
        if !is_ca {
            return Err(unusable(format!("is not a CA certificate{CA_RESET_HINT}")));
        }
        if not_after <= now {
            return Err(unusable(format!(
                "expired on {}{CA_RESET_HINT}",
                not_after.date()
            )));
        }
        if not_before > now {
            let from = not_before
                .format(&Rfc3339)
                .unwrap_or_else(|_| not_before.to_string());
            return Err(unusable(format!(
                "is not valid before {from}: is the system clock right?"
            )));
        }
        if not_after - now < CA_WARN_BEFORE {
            tracing::warn!(
                path = %path.display(), %not_after,
                "the local CA expires soon; remove ca.pem and ca.key to create a new one and have clients trust it"
            );
        }
        if files::mode(&paths.ca_key)? & 0o077 != 0 {
            tracing::warn!(path = %paths.ca_key.display(), "the local CA key is accessible to other users");
        }
        let key = KeyPair::try_from(&files::load_key(&paths.ca_key)?).map_err(|e| TlsError::PrivateKey {
            path: paths.ca_key.clone(),
            reason: format!("not a usable PKCS#8 ECDSA or Ed25519 key ({e})"),
        })?;
        if key.subject_public_key_info() != spki {
            return Err(TlsError::KeyMismatch {
                key: paths.ca_key.clone(),
                cert: path.clone(),
                hint: CA_HINT,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| cert_err(path, e))?;
        let mut roots = RootCertStore::empty();
        roots.add(der).map_err(|e| cert_err(path, e))?;
        Ok(LocalCa {
            issuer,
            not_after,
            roots,
        })
    }

    fn create(paths: &LocalPaths, now: OffsetDateTime) -> Result<Self, TlsError> {
        let key = new_key("local CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(generate_err("local CA certificate"))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let staged_key = files::stage(&paths.ca_key, key_pem.as_bytes(), KEY_MODE)?;
        let staged_cert = files::stage(&paths.ca_pem, cert.pem().as_bytes(), CERT_MODE)?;
        // Key first: an interrupted first start leaves a key without its certificate, which is reported,
        // never a certificate clients may already trust whose key is lost.
        staged_key.commit()?;
        staged_cert.commit()?;
        files::sync_dir(&paths.dir)?;
        tracing::info!(path = %paths.ca_pem.display(), "created a local CA; clients should trust this certificate");
        let not_after = params.not_after;
        let mut roots = RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .map_err(|e| cert_err(&paths.ca_pem, e))?;
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            not_after,
            roots,
        })
    }

    /// Whether `ck` chains to this CA and is valid at `now` (signature, validity, serverAuth usage).
    fn verify(&self, ck: &CertifiedKey, now: OffsetDateTime) -> Result<(), rustls::Error> {
        let leaf = ParsedCertificate::try_from(ck.end_entity_cert()?)?;
        let algorithms = provider().signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&leaf, &self.roots, &[], unix_time(now), algorithms)
    }

    /// Issues a new server key and certificate for `names` and writes them over the old pair.
    fn issue(&self, names: &[Name], now: OffsetDateTime, paths: &LocalPaths) -> Result<ServerPair, TlsError> {
        let key = new_key("server key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(SERVER_COMMON_NAME);
        params.subject_alt_names = names.iter().map(Name::to_san).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + SERVER_VALIDITY).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_err("server certificate"))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        // Both files are complete on disk before either is renamed into place, so the two can disagree
        // only if the process dies between two renames.
        let staged_key = files::stage(&paths.server_key, key_pem.as_bytes(), KEY_MODE)?;
        let staged_cert = files::stage(&paths.server_pem, cert.pem().as_bytes(), CERT_MODE)?;
        staged_key.commit()?;
        staged_cert.commit()?;
        files::sync_dir(&paths.dir)?;
        let chain = vec![cert.der().clone()];
        ServerPair::new(
            chain,
            PrivateKeyDer::from(key),
            &paths.server_pem,
            &paths.server_key,
            SERVER_HINT,
        )
    }
}

fn new_key(what: &'static str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_err(what))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 126 random bits, positive, with a non-zero first byte (so the DER encoding is exactly 16 bytes).
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TlsError::Generate {
            what: "certificate serial number",
            reason: "the system random source failed".into(),
        })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from(bytes.to_vec()))
}

//! Tests of certificate creation, reuse, renewal and refusal of corrupt material.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn local() -> TlsSettings {
    TlsSettings::default()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Verifies the presented chain for `name` at `at` against `ca.pem`.
fn verify(dir: &Path, ck: &CertifiedKey, name: &str, at: OffsetDateTime) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_chain(&dir.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.unix_timestamp() as u64));
    v.verify_server_cert(
        &ck.cert[0],
        &ck.cert[1..],
        &ServerName::try_from(name.to_owned()).unwrap(),
        &[],
        when,
    )
    .map(|_| ())
}

#[test]
fn first_start_creates_ca_and_server_cert_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let m = prepare(&dir, &local(), now()).unwrap();
    assert!(m.renewed);
    assert_eq!(m.ca_path.as_deref(), Some(dir.join("ca.pem").as_path()));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify(&dir, &m.certified_key, name, now()).unwrap();
    }
    assert!(verify(&dir, &m.certified_key, "example.com", now()).is_err());
    let left = m.not_after - now();
    assert!(left <= Duration::days(90) && left > Duration::days(89), "{left}");
}

#[test]
fn second_start_reuses_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    prepare(&dir, &local(), now()).unwrap();
    let before: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let m = prepare(&dir, &local(), now() + Duration::days(10)).unwrap();
    assert!(!m.renewed);
    let after: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn renews_within_30_days_of_expiry_keeping_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    prepare(&dir, &local(), now()).unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let old = std::fs::read(dir.join("server.pem")).unwrap();
    let later = now() + Duration::days(61);
    let m = prepare(&dir, &local(), later).unwrap();
    assert!(m.renewed);
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap(),
        ca,
        "the CA must never change"
    );
    assert_ne!(std::fs::read(dir.join("server.pem")).unwrap(), old);
    verify(&dir, &m.certified_key, "localhost", later).unwrap();
    assert!(m.not_after > later + Duration::days(89));
}

#[test]
fn new_names_trigger_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    prepare(&dir, &local(), now()).unwrap();
    let s = TlsSettings {
        extra_names: vec!["api.example.test".into(), "10.1.2.3".into()],
        ..local()
    };
    let m = prepare(&dir, &s, now()).unwrap();
    assert!(m.renewed);
    verify(&dir, &m.certified_key, "api.example.test", now()).unwrap();
    verify(&dir, &m.certified_key, "10.1.2.3", now()).unwrap();
    assert!(!prepare(&dir, &s, now()).unwrap().renewed);
}

#[test]
fn renew_if_needed_swaps_the_resolver() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let m = prepare(&dir, &local(), now()).unwrap();
    let r = CertResolver::new(m.certified_key.clone());
    assert!(!renew_if_needed(&dir, &local(), &r, now()).unwrap());
    assert!(renew_if_needed(&dir, &local(), &r, now() + Duration::days(70)).unwrap());
    assert_ne!(r.current().cert[0], m.certified_key.cert[0]);
}

#[test]
fn corrupt_files_are_reported_by_name_and_left_alone() {
    for (file, content) in [
        (
            "ca.pem",
            &b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"[..],
        ),
        ("ca.pem", &b"not pem at all"[..]),
        ("ca.key", &b"garbage"[..]),
        (
            "server.key",
            &b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"[..],
        ),
        ("server.pem", &b""[..]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        prepare(&dir, &local(), now()).unwrap();
        std::fs::write(dir.join(file), content).unwrap();
        let err = prepare(&dir, &local(), now()).err().unwrap().to_string();
        assert!(
            err.contains(&dir.join(file).display().to_string()),
            "{file}: {err}"
        );
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            content,
            "{file} was overwritten"
        );
    }
}

#[test]
fn a_missing_half_of_the_ca_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    prepare(&dir, &local(), now()).unwrap();
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let err = prepare(&dir, &local(), now()).err().unwrap().to_string();
    assert!(err.contains("ca.key") && err.contains("missing"), "{err}");
    assert!(!dir.join("ca.key").exists());
}

#[test]
fn a_foreign_ca_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    prepare(&dir, &local(), now()).unwrap();
    std::fs::write(dir.join("ca.key"), new_key().unwrap().serialize_pem()).unwrap();
    let err = prepare(&dir, &local(), now()).err().unwrap().to_string();
    assert!(err.contains("ca.key") && err.contains("does not belong"), "{err}");
}

#[test]
fn operator_certificate_is_loaded_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let key = new_key().unwrap();
    let cert = CertificateParams::new(vec!["api.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cp, kp) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    let s = TlsSettings {
        cert: Some(cp.clone()),
        key: Some(kp.clone()),
        extra_names: vec![],
    };
    let m = prepare(&tmp.path().join("tls"), &s, now()).unwrap();
    assert!(m.ca_path.is_none() && !m.renewed);
    assert!(!tmp.path().join("tls").exists(), "operator mode writes nothing");
    std::fs::write(&kp, new_key().unwrap().serialize_pem()).unwrap();
    let err = prepare(&tmp.path().join("tls"), &s, now())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("k.pem"), "{err}");
}

//! Tests of the TLS module: creation, reuse and renewal of the local-CA certificates with an injected
//! clock, refusal of corrupt or mismatched files, and operator certificates. Handshakes are in
//! [`handshake`].

mod handshake;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;

const FILES: [&str; 4] = ["ca.pem", "ca.key", "server.pem", "server.key"];

/// A fixed clock, in whole seconds, so expected validity dates are exact.
const T0: OffsetDateTime = datetime!(2031-03-04 05:06:07 UTC);

fn local() -> TlsSettings {
    TlsSettings::default()
}

fn with_names(names: &[&str]) -> TlsSettings {
    TlsSettings {
        extra_names: names.iter().map(|s| s.to_string()).collect(),
        ..local()
    }
}

/// A temp dir and the (not yet existing) TLS directory inside it.
fn tls_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").join("tls");
    (tmp, dir)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn snapshot(dir: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
}

fn ca_roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(roots)
}

/// Verifies the chain `ck` presents, for `name`, at `at`, as a client trusting only `dir/ca.pem` would.
fn verify(dir: &Path, ck: &CertifiedKey, name: &str, at: OffsetDateTime) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(ca_roots(dir), provider())
        .build()
        .unwrap();
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.unix_timestamp() as u64));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&ck.cert[0], &ck.cert[1..], &name, &[], when)
        .map(|_| ())
}

fn err_of(dir: &Path, settings: &TlsSettings, now: OffsetDateTime) -> String {
    match prepare(dir, settings, now) {
        Ok(_) => panic!("prepare succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn first_call_creates_the_ca_and_server_files_with_private_modes() {
    let (_tmp, dir) = tls_dir();
    let m = prepare(&dir, &local(), T0).unwrap();
    assert!(m.renewed);
    assert_eq!(m.ca_path.as_deref(), Some(dir.join("ca.pem").as_path()));
    assert_eq!(m.not_after, T0 + Duration::days(90));
    for f in FILES {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        4,
        "no temp files are left behind"
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
}

#[test]
fn the_ca_and_server_certificates_have_the_promised_shape() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let ca_der = CertificateDer::from_pem_slice(&ca_pem).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let cn = ca.subject().iter_common_name().next().unwrap().as_str().unwrap();
    assert_eq!(cn, "skygate local CA");
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        ca.validity().not_after.timestamp(),
        (T0 + Duration::days(3650)).unix_timestamp()
    );

    let pem = std::fs::read(dir.join("server.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!leaf.is_ca());
    assert!(leaf.extended_key_usage().unwrap().unwrap().value.server_auth);
    assert_eq!(
        leaf.validity().not_before.timestamp(),
        (T0 - Duration::minutes(5)).unix_timestamp()
    );
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        (T0 + Duration::days(90)).unix_timestamp()
    );
    assert_eq!(leaf.raw_serial().len(), 16);
    assert_ne!(leaf.raw_serial(), ca.raw_serial());
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("server.key")).unwrap()).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
}

#[test]
fn the_server_certificate_chains_to_the_ca_for_localhost_and_loopback_addresses() {
    let (_tmp, dir) = tls_dir();
    let m = prepare(&dir, &local(), T0).unwrap();
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify(&dir, &m.certified_key, name, T0).unwrap();
    }
    assert!(verify(&dir, &m.certified_key, "example.com", T0).is_err());
    assert!(verify(&dir, &m.certified_key, "localhost", T0 + Duration::days(91)).is_err());
}

#[test]
fn a_second_call_reuses_the_same_files() {
    let (_tmp, dir) = tls_dir();
    let first = prepare(&dir, &local(), T0).unwrap();
    let before = snapshot(&dir);
    let second = prepare(&dir, &local(), T0 + Duration::hours(1)).unwrap();
    assert!(!second.renewed);
    assert_eq!(snapshot(&dir), before);
    assert_eq!(second.certified_key.cert, first.certified_key.cert);
    assert_eq!(second.not_after, first.not_after);
}

#[test]
fn no_renewal_while_more_than_30_days_remain() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let before = snapshot(&dir);
    for days in [10, 59] {
        assert!(
            !prepare(&dir, &local(), T0 + Duration::days(days))
                .unwrap()
                .renewed,
            "day {days}"
        );
    }
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn renewal_within_30_days_of_expiry_keeps_the_ca() {
    let (_tmp, dir) = tls_dir();
    let first = prepare(&dir, &local(), T0).unwrap();
    let before = snapshot(&dir);
    let later = T0 + Duration::days(61);
    let m = prepare(&dir, &local(), later).unwrap();
    assert!(m.renewed);
    assert_eq!(m.not_after, later + Duration::days(90));
    let after = snapshot(&dir);
    assert_eq!(after[..2], before[..2], "ca.pem and ca.key must never change");
    assert_ne!(after[2], before[2], "server.pem is reissued");
    assert_ne!(after[3], before[3], "with a new key");
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    // The CA on disk is the one read before renewal: clients that trusted it keep working.
    for name in ["localhost", "127.0.0.1", "::1"] {
        verify(&dir, &m.certified_key, name, later).unwrap();
    }
    assert_ne!(m.certified_key.cert, first.certified_key.cert);
    assert!(
        !prepare(&dir, &local(), later + Duration::days(1))
            .unwrap()
            .renewed
    );
}

#[test]
fn an_expired_certificate_is_renewed() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let later = T0 + Duration::days(400);
    let m = prepare(&dir, &local(), later).unwrap();
    assert!(m.renewed);
    verify(&dir, &m.certified_key, "localhost", later).unwrap();
}

#[test]
fn a_new_extra_name_triggers_renewal_and_appears_in_the_certificate() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let names = [
        "API.Example.test",
        "10.1.2.3",
        "2001:db8::1",
        "*.svc.example.test",
    ];
    let m = prepare(&dir, &with_names(&names), T0).unwrap();
    assert!(m.renewed);
    for name in [
        "api.example.test",
        "10.1.2.3",
        "2001:db8::1",
        "node1.svc.example.test",
        "localhost",
        "::1",
    ] {
        verify(&dir, &m.certified_key, name, T0).unwrap();
    }
    assert!(
        !prepare(&dir, &with_names(&names), T0).unwrap().renewed,
        "same names: no renewal"
    );
    assert!(
        !prepare(&dir, &with_names(&["10.1.2.3"]), T0).unwrap().renewed,
        "a subset is still covered"
    );
    assert!(
        prepare(&dir, &with_names(&["other.example.test"]), T0)
            .unwrap()
            .renewed
    );
}

#[test]
fn an_invalid_extra_name_is_refused_before_anything_is_written() {
    let (_tmp, dir) = tls_dir();
    let err = err_of(&dir, &with_names(&["bad name!"]), T0);
    assert!(err.contains("bad name!"), "{err}");
    assert!(!dir.exists());
}

#[test]
fn corrupt_files_are_reported_by_path_and_never_overwritten() {
    let cases: [(&str, &[u8]); 7] = [
        ("ca.pem", b"not pem at all"),
        (
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ),
        ("ca.key", b"garbage"),
        (
            "ca.key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        (
            "server.key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        ("server.key", b""),
        ("server.pem", b"-----BEGIN CERTIFICATE-----\nnot base64\n"),
    ];
    for (file, content) in cases {
        // Also when a renewal is due, which must not paper over the damage.
        for now in [T0, T0 + Duration::days(80)] {
            let (_tmp, dir) = tls_dir();
            prepare(&dir, &local(), T0).unwrap();
            std::fs::write(dir.join(file), content).unwrap();
            let err = err_of(&dir, &local(), now);
            assert!(
                err.contains(&dir.join(file).display().to_string()),
                "{file}: {err}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
            assert_eq!(
                std::fs::read(dir.join(file)).unwrap(),
                content,
                "{file} was overwritten"
            );
        }
    }
}

#[test]
fn the_error_for_a_file_without_a_certificate_reads_well() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    std::fs::write(dir.join("server.pem"), "nothing here\n").unwrap();
    let err = err_of(&dir, &local(), T0);
    let expected = format!(
        "cannot parse TLS certificate {}: no PEM certificate found",
        dir.join("server.pem").display()
    );
    assert_eq!(err, expected);
}

#[test]
fn a_missing_half_of_a_pair_is_an_error_naming_it() {
    for (remove, other) in [
        ("ca.key", "ca.pem"),
        ("ca.pem", "ca.key"),
        ("server.key", "server.pem"),
    ] {
        let (_tmp, dir) = tls_dir();
        prepare(&dir, &local(), T0).unwrap();
        std::fs::remove_file(dir.join(remove)).unwrap();
        let before = std::fs::read(dir.join(other)).unwrap();
        let err = err_of(&dir, &local(), T0);
        assert!(
            err.contains(&dir.join(remove).display().to_string()) && err.contains("missing"),
            "{err}"
        );
        assert!(!dir.join(remove).exists(), "{remove} must not be recreated");
        assert_eq!(std::fs::read(dir.join(other)).unwrap(), before);
    }
}

#[test]
fn a_ca_key_that_does_not_match_the_ca_is_refused() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let foreign = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(dir.join("ca.key"), &foreign).unwrap();
    let err = err_of(&dir, &local(), T0 + Duration::days(80));
    assert!(
        err.contains(&dir.join("ca.key").display().to_string()) && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("ca.key")).unwrap(), foreign);
}

#[test]
fn a_server_key_that_does_not_match_the_certificate_is_refused() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let foreign = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(dir.join("server.key"), &foreign).unwrap();
    let err = err_of(&dir, &local(), T0);
    assert!(
        err.contains(&dir.join("server.key").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(&dir.join("server.pem").display().to_string()),
        "{err}"
    );
}

#[test]
fn an_expired_ca_is_an_error_not_a_silent_new_ca() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let before = snapshot(&dir);
    let err = err_of(&dir, &local(), T0 + Duration::days(3651));
    assert!(
        err.contains(&dir.join("ca.pem").display().to_string()) && err.contains("expired"),
        "{err}"
    );
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn near_the_ca_expiry_the_server_certificate_is_capped_and_not_reissued_daily() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    let late = T0 + Duration::days(3650 - 40);
    let m = prepare(&dir, &local(), late).unwrap();
    assert!(m.renewed);
    assert_eq!(m.not_after, T0 + Duration::days(3650));
    assert!(
        !prepare(&dir, &local(), late + Duration::days(20))
            .unwrap()
            .renewed
    );
}

#[test]
fn a_replaced_ca_gets_a_server_certificate_it_signed() {
    let (_tmp, dir) = tls_dir();
    prepare(&dir, &local(), T0).unwrap();
    std::fs::remove_file(dir.join("ca.pem")).unwrap();
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let m = prepare(&dir, &local(), T0 + Duration::days(1)).unwrap();
    assert!(m.renewed);
    verify(&dir, &m.certified_key, "localhost", T0 + Duration::days(1)).unwrap();
}

#[test]
fn renew_if_needed_swaps_the_resolver_only_when_it_renews() {
    let (_tmp, dir) = tls_dir();
    let m = prepare(&dir, &local(), T0).unwrap();
    let resolver = CertResolver::new(m.certified_key.clone());
    assert!(!renew_if_needed(&dir, &local(), &resolver, T0 + Duration::days(1)).unwrap());
    assert!(Arc::ptr_eq(&resolver.current(), &m.certified_key));
    let later = T0 + Duration::days(70);
    assert!(renew_if_needed(&dir, &local(), &resolver, later).unwrap());
    assert_ne!(resolver.current().cert, m.certified_key.cert);
    verify(&dir, &resolver.current(), "localhost", later).unwrap();
    assert!(!renew_if_needed(&dir, &local(), &resolver, later).unwrap());
}

/// A self-signed certificate for `api.example.test` and its key, written as PEM under `dir`.
fn operator_pair(dir: &Path) -> (PathBuf, PathBuf, rcgen::Certificate) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::new(vec!["api.example.test".to_string()]).unwrap();
    params.not_after = T0 + Duration::days(365);
    let cert = params.self_signed(&key).unwrap();
    let (cp, kp) = (dir.join("op-cert.pem"), dir.join("op-key.pem"));
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp, cert)
}

#[test]
fn an_operator_certificate_is_loaded_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (cp, kp, cert) = operator_pair(tmp.path());
    let settings = TlsSettings {
        cert: Some(cp),
        key: Some(kp),
        extra_names: vec!["ignored.test".into()],
    };
    let dir = tmp.path().join("tls");
    let m = prepare(&dir, &settings, T0).unwrap();
    assert!(m.ca_path.is_none());
    assert!(!m.renewed);
    assert_eq!(m.not_after, T0 + Duration::days(365));
    assert_eq!(m.certified_key.cert, vec![cert.der().clone()]);
    assert!(!dir.exists(), "operator mode writes nothing");
    let resolver = CertResolver::new(m.certified_key);
    assert!(!renew_if_needed(&dir, &settings, &resolver, T0 + Duration::days(400)).unwrap());
}

#[test]
fn an_operator_key_that_does_not_match_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (cp, kp, _) = operator_pair(tmp.path());
    std::fs::write(
        &kp,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let settings = TlsSettings {
        cert: Some(cp.clone()),
        key: Some(kp.clone()),
        extra_names: vec![],
    };
    let err = err_of(&tmp.path().join("tls"), &settings, T0);
    assert!(
        err.contains(&kp.display().to_string()) && err.contains(&cp.display().to_string()),
        "{err}"
    );
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn an_operator_certificate_without_its_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (cp, _, _) = operator_pair(tmp.path());
    let settings = TlsSettings {
        cert: Some(cp),
        key: None,
        extra_names: vec![],
    };
    let err = err_of(&tmp.path().join("tls"), &settings, T0);
    assert!(err.contains("together"), "{err}");
}

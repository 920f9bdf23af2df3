//! The tamper matrix on single sealed values, with the local keyring: every bit of every region of a
//! sealed value flipped, truncations, extensions, values moved between rows, tables, columns and
//! accounts. Each must fail with the expected error kind and never return plaintext.
//!
//! Layout (see `envelope`): `format(0) ‖ kek_id(1..5) ‖ kek_version(5..9) ‖ shred_id(9..17) ‖
//! nonce(17..29) ‖ n(29..31) ‖ wrapped_dek(31..31+n) ‖ ciphertext ‖ tag(16)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Range;
use std::sync::Arc;

use base64::Engine;
use skygate_crypto::envelope::header_of;
use skygate_crypto::local::{LocalKeyring, MasterKey};
use skygate_crypto::{Aad, Cipher, CryptoError, KeyProvider};

const SECRET: &[u8] = b"the model output nobody else may read";

struct Setup {
    _tmp: tempfile::TempDir,
    ring: Arc<LocalKeyring>,
    cipher: Cipher,
}

fn keyring(master: u8) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([master; 32]);
    let (ring, _) =
        LocalKeyring::open_or_create(&tmp.path().join("keyring"), MasterKey::from_base64(&key).unwrap())
            .unwrap();
    let ring = Arc::new(ring);
    let cipher = Cipher::new(ring.clone());
    Setup {
        _tmp: tmp,
        ring,
        cipher,
    }
}

fn at(row: &str) -> Aad {
    Aad::field("predictions", row, "output", "acct_1")
}

/// Opening must fail; returns the error, after checking no plaintext came back.
fn refused(c: &Cipher, sealed: &[u8], aad: &Aad, what: &str) -> CryptoError {
    match c.open(sealed, aad) {
        Ok(p) => panic!("{what}: opened to {} bytes", p.len()),
        Err(e) => {
            assert!(
                !e.to_string().contains("nobody else"),
                "{what}: the error shows plaintext: {e}"
            );
            e
        }
    }
}

/// Flips every bit of `region` in turn and checks the error with `expect`.
fn flip_each_bit(
    c: &Cipher,
    sealed: &[u8],
    region: Range<usize>,
    name: &str,
    expect: &dyn Fn(usize, &[u8], &CryptoError) -> bool,
) {
    for i in region {
        for bit in 0..8 {
            let mut bad = sealed.to_vec();
            bad[i] ^= 1 << bit;
            let e = refused(c, &bad, &at("p_1"), &format!("{name} byte {i} bit {bit}"));
            assert!(expect(i, &bad, &e), "{name} byte {i} bit {bit}: {e:?}");
        }
    }
}

fn regions(sealed: &[u8]) -> (Range<usize>, Range<usize>, Range<usize>) {
    let n = u16::from_be_bytes([sealed[29], sealed[30]]) as usize;
    let wrapped = 31..31 + n;
    let tag = sealed.len() - 16..sealed.len();
    let body = wrapped.end..tag.start;
    (wrapped, body, tag)
}

#[test]
fn every_bit_of_every_region() {
    let s = keyring(1);
    let c = &s.cipher;
    let sealed = c.seal(SECRET, &at("p_1")).unwrap();
    assert_eq!(&c.open(&sealed, &at("p_1")).unwrap()[..], SECRET);
    let (wrapped, body, tag) = regions(&sealed);
    assert_eq!(wrapped.len(), 60);
    assert_eq!(body.len(), SECRET.len());
    let auth = |_: usize, _: &[u8], e: &CryptoError| matches!(e, CryptoError::Authentication);

    flip_each_bit(c, &sealed, 0..1, "format", &|_, _, e| {
        matches!(e, CryptoError::Format(_))
    });
    let id = s.ring.keyring_id();
    flip_each_bit(c, &sealed, 1..5, "kek_id", &|_, bad, e| {
        let found = u32::from_be_bytes(bad[1..5].try_into().unwrap());
        matches!(e, CryptoError::WrongKeyring { expected, found: f } if *expected == id && *f == found)
    });
    flip_each_bit(c, &sealed, 5..9, "kek_version", &|_, bad, e| {
        let v = u32::from_be_bytes(bad[5..9].try_into().unwrap());
        matches!(e, CryptoError::UnknownVersion(x) if *x == v)
    });
    flip_each_bit(c, &sealed, 9..17, "shred_id", &|_, bad, e| {
        let id = u64::from_be_bytes(bad[9..17].try_into().unwrap());
        matches!(e, CryptoError::Shredded(x) if *x == id)
    });
    flip_each_bit(c, &sealed, 17..29, "nonce", &auth);
    // A changed length either runs past the end (format) or hands the provider a wrapped key of the
    // wrong size (authentication).
    flip_each_bit(c, &sealed, 29..31, "length", &|_, _, e| {
        matches!(e, CryptoError::Format(_) | CryptoError::Authentication)
    });
    flip_each_bit(c, &sealed, wrapped, "wrapped_dek", &auth);
    flip_each_bit(c, &sealed, body, "ciphertext", &auth);
    flip_each_bit(c, &sealed, tag, "tag", &auth);
}

#[test]
fn shreddable_values_and_other_versions() {
    let s = keyring(1);
    let c = &s.cipher;
    let shred = s.ring.create_shred_key().unwrap();
    let sealed = c.seal_shreddable(SECRET, &at("p_1"), shred).unwrap();
    let (wrapped, body, tag) = regions(&sealed);
    let auth = |_: usize, _: &[u8], e: &CryptoError| matches!(e, CryptoError::Authentication);
    // Another shred id: no such key.
    flip_each_bit(c, &sealed, 9..17, "shred_id", &|_, bad, e| {
        let id = u64::from_be_bytes(bad[9..17].try_into().unwrap());
        matches!(e, CryptoError::Shredded(x) if *x == id)
    });
    flip_each_bit(c, &sealed, wrapped, "wrapped_dek", &auth);
    flip_each_bit(c, &sealed, body.start..body.start + 4, "ciphertext", &auth);
    flip_each_bit(c, &sealed, tag, "tag", &auth);

    // Relabelled to a version that exists: the wrapped key is bound to its own version.
    assert_eq!(s.ring.rotate().unwrap(), 2);
    let v2 = c.seal(SECRET, &at("p_1")).unwrap();
    assert_eq!(header_of(&v2).unwrap().kek_version, 2);
    let mut as_v1 = v2.clone();
    as_v1[5..9].copy_from_slice(&1u32.to_be_bytes());
    assert!(matches!(
        refused(c, &as_v1, &at("p_1"), "v2 relabelled v1"),
        CryptoError::Authentication
    ));
    let mut as_v2 = sealed.clone();
    as_v2[5..9].copy_from_slice(&2u32.to_be_bytes());
    assert!(matches!(
        refused(c, &as_v2, &at("p_1"), "v1 relabelled v2"),
        CryptoError::Authentication
    ));
    // A shreddable value relabelled as not shreddable, and the other way round.
    let mut unshred = sealed.clone();
    unshred[9..17].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(
        refused(c, &unshred, &at("p_1"), "shred id zeroed"),
        CryptoError::Authentication
    ));
    let mut shredded = v2.clone();
    shredded[9..17].copy_from_slice(&shred.to_be_bytes());
    assert!(matches!(
        refused(c, &shredded, &at("p_1"), "shred id added"),
        CryptoError::Authentication
    ));
}

#[test]
fn truncation_and_extension() {
    let s = keyring(1);
    let c = &s.cipher;
    let sealed = c.seal(SECRET, &at("p_1")).unwrap();
    let (wrapped, body, _) = regions(&sealed);
    let header_end = wrapped.end + 16; // the parser needs the wrapped key and a tag at least
    let mut cuts = vec![0, 1, 9, 17, 29, 30, 31, 46, 47, 60, wrapped.end, header_end - 1];
    cuts.extend([header_end, body.start + 5, sealed.len() - 16, sealed.len() - 1]);
    for cut in cuts {
        let e = refused(c, &sealed[..cut], &at("p_1"), &format!("cut at {cut}"));
        if cut < header_end {
            assert!(matches!(e, CryptoError::Format(_)), "cut at {cut}: {e:?}");
        } else {
            assert!(matches!(e, CryptoError::Authentication), "cut at {cut}: {e:?}");
        }
    }
    for extra in [&[0u8][..], &[0; 16], b"more"] {
        let mut longer = sealed.clone();
        longer.extend_from_slice(extra);
        assert!(matches!(
            refused(c, &longer, &at("p_1"), "extended"),
            CryptoError::Authentication
        ));
    }
    assert!(matches!(
        refused(c, &[], &at("p_1"), "empty"),
        CryptoError::Format(_)
    ));
}

#[test]
fn values_do_not_move_between_places() {
    let s = keyring(1);
    let c = &s.cipher;
    let field = |table: &str, row: &str, column: &str, account: &str| Aad::field(table, row, column, account);
    let home = field("predictions", "p_1", "output", "acct_1");
    let one = c.seal(b"row one", &home).unwrap();
    let two = c
        .seal(b"row two", &field("predictions", "p_2", "output", "acct_1"))
        .unwrap();
    assert_eq!(&c.open(&one, &home).unwrap()[..], b"row one");

    // Two rows' values swapped.
    assert!(matches!(
        refused(c, &two, &home, "row two's value in row one"),
        CryptoError::Authentication
    ));
    assert!(matches!(
        refused(
            c,
            &one,
            &field("predictions", "p_2", "output", "acct_1"),
            "row one's value in row two"
        ),
        CryptoError::Authentication
    ));
    for (place, what) in [
        (field("webhooks", "p_1", "output", "acct_1"), "other table"),
        (field("predictions", "p_1", "input", "acct_1"), "other column"),
        (field("predictions", "p_1", "output", "acct_2"), "other account"),
        (field("predictions", "p_1", "output", ""), "no account"),
        (
            field("predictions", "p_1o", "utput", "acct_1"),
            "shifted boundary",
        ),
        (
            Aad::parts(&[b"predictions", b"p_1", b"output", b"acct_1"]),
            "not a field binding",
        ),
    ] {
        assert!(
            matches!(refused(c, &one, &place, what), CryptoError::Authentication),
            "{what}"
        );
    }
}

#[test]
fn values_from_another_keyring() {
    let mine = keyring(1);
    let theirs = keyring(1); // same master key, another keyring
    let sealed = theirs.cipher.seal(SECRET, &at("p_1")).unwrap();
    let e = refused(&mine.cipher, &sealed, &at("p_1"), "another keyring's value");
    assert!(
        matches!(e, CryptoError::WrongKeyring { expected, found }
            if expected == mine.ring.keyring_id() && found == theirs.ring.keyring_id()),
        "{e:?}"
    );
    // Relabelled with our keyring id it still fails: our KEK did not wrap its key.
    let mut relabelled = sealed.clone();
    relabelled[1..5].copy_from_slice(&mine.ring.keyring_id().to_be_bytes());
    assert!(matches!(
        refused(&mine.cipher, &relabelled, &at("p_1"), "relabelled keyring id"),
        CryptoError::Authentication
    ));
    // Their wrapped key spliced into our value.
    let ours = mine.cipher.seal(SECRET, &at("p_1")).unwrap();
    let (w, _, _) = regions(&ours);
    let mut spliced = ours.clone();
    spliced[w.clone()].copy_from_slice(&sealed[w]);
    assert!(matches!(
        refused(&mine.cipher, &spliced, &at("p_1"), "spliced wrapped key"),
        CryptoError::Authentication
    ));
}

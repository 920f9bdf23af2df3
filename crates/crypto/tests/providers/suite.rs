//! The key provider conformance suite: what every [`KeyProvider`] must do, written once.
//!
//! Each check takes `open`, which returns a new instance of the provider under test over *one* shared
//! storage (a keyring directory, an HSM token): the first call may create it, later calls open what is
//! there, as another process or node would. A provider module calls each check from a `#[test]` of its
//! own with a fresh storage, e.g. `suite::shred_keys(&|| open(&dir))`.
#![allow(dead_code)]

use std::sync::{Arc, Barrier};

use skygate_crypto::envelope::header_of;
use skygate_crypto::{Aad, Cipher, CryptoError, Dek, KekState, KeyProvider};

/// Opens another instance over the storage under test.
pub type Open<'a> = &'a dyn Fn() -> Arc<dyn KeyProvider>;

pub fn place(row: &str) -> Aad {
    Aad::field("predictions", row, "output", "acct_suite")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn state(p: &dyn KeyProvider, version: u32) -> Option<KekState> {
    p.versions()
        .unwrap()
        .into_iter()
        .find(|k| k.version == version)
        .map(|k| k.state)
}

/// Wrap and unwrap agree; wrapped bytes are fresh each time and fail closed when damaged.
pub fn wrap_unwrap_roundtrip(open: Open) {
    let p = open();
    assert!(!p.kind().is_empty());
    assert_ne!(p.keyring_id(), 0);
    let current = p.current_version();
    assert!(current >= 1);
    assert_eq!(state(&*p, current), Some(KekState::Active));

    let dek = Dek::generate().unwrap();
    let (v, wrapped) = p.wrap(&dek).unwrap();
    assert_eq!(v, current);
    assert_eq!(p.unwrap(v, &wrapped).unwrap(), dek);
    assert_ne!(p.wrap(&dek).unwrap().1, wrapped, "a fresh nonce per wrap");

    for i in 0..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(p.unwrap(v, &bad), Err(CryptoError::Authentication)),
            "flipped byte {i} of the wrapped key"
        );
    }
    for cut in [0, 1, wrapped.len() / 2, wrapped.len() - 1] {
        assert!(
            matches!(p.unwrap(v, &wrapped[..cut]), Err(CryptoError::Authentication)),
            "wrapped key cut to {cut} bytes"
        );
    }
    let mut longer = wrapped.clone();
    longer.push(0);
    assert!(matches!(p.unwrap(v, &longer), Err(CryptoError::Authentication)));
    assert!(matches!(
        p.unwrap(3_999_999, &wrapped),
        Err(CryptoError::UnknownVersion(3_999_999))
    ));

    let c = Cipher::new(p.clone());
    let sealed = c.seal(b"inference output", &place("p_1")).unwrap();
    assert_eq!(&c.open(&sealed, &place("p_1")).unwrap()[..], b"inference output");
    assert_eq!(header_of(&sealed).unwrap().kek_id, p.keyring_id());
}

/// Rotation makes a new current version; values and wrapped keys of the old one still open, and the
/// wrapped bytes are bound to their version.
pub fn rotate_keeps_old_versions(open: Open) {
    let p = open();
    let c = Cipher::new(p.clone());
    let v0 = p.current_version();
    let old = c.seal(b"before", &place("p_1")).unwrap();
    let dek = Dek::generate().unwrap();
    let (_, w0) = p.wrap(&dek).unwrap();

    let v1 = p.rotate().unwrap();
    assert!(v1 > v0, "rotate gave {v1} after {v0}");
    assert_eq!(p.current_version(), v1);
    let (v, w1) = p.wrap(&dek).unwrap();
    assert_eq!(v, v1, "new wraps use the new version");
    assert_eq!(p.unwrap(v0, &w0).unwrap(), dek);
    assert_eq!(p.unwrap(v1, &w1).unwrap(), dek);
    assert!(matches!(p.unwrap(v1, &w0), Err(CryptoError::Authentication)));
    assert!(matches!(p.unwrap(v0, &w1), Err(CryptoError::Authentication)));

    let new = c.seal(b"after", &place("p_2")).unwrap();
    assert_eq!(header_of(&new).unwrap().kek_version, v1);
    assert_eq!(header_of(&old).unwrap().kek_version, v0);
    assert_eq!(&c.open(&old, &place("p_1")).unwrap()[..], b"before");
    assert_eq!(&c.open(&new, &place("p_2")).unwrap()[..], b"after");

    let versions = p.versions().unwrap();
    let numbers: Vec<u32> = versions.iter().map(|k| k.version).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {numbers:?}"
    );
    assert!(numbers.contains(&v0) && numbers.contains(&v1), "{numbers:?}");
    for k in &versions {
        assert_eq!(k.state, KekState::Active, "{versions:?}");
        assert!((now() - k.created_at).abs() < 600, "{versions:?}");
    }

    // A second instance sees both at open.
    let q = open();
    assert_eq!(q.current_version(), v1);
    assert_eq!(&Cipher::new(q).open(&old, &place("p_1")).unwrap()[..], b"before");
}

/// Retiring refuses the current version; a retired version opens nothing any more, newer ones do, and
/// its number is never reused.
pub fn retire_refuses_current_then_destroys(open: Open) {
    let p = open();
    let c = Cipher::new(p.clone());
    let v1 = p.current_version();
    let old = c.seal(b"old", &place("p_1")).unwrap();
    let dek = Dek::generate().unwrap();
    let (_, w1) = p.wrap(&dek).unwrap();
    assert!(matches!(p.retire(v1), Err(CryptoError::Refused(_))));
    assert_eq!(&c.open(&old, &place("p_1")).unwrap()[..], b"old");

    let v2 = p.rotate().unwrap();
    let kept = c.rewrap(&old).unwrap().expect("moved to the new version");
    let newer = c.seal(b"newer", &place("p_2")).unwrap();
    p.retire(v1).unwrap();
    p.retire(v1).unwrap(); // idempotent
    assert!(matches!(p.unwrap(v1, &w1), Err(CryptoError::UnknownVersion(v)) if v == v1));
    assert!(matches!(c.open(&old, &place("p_1")), Err(CryptoError::UnknownVersion(v)) if v == v1));
    assert_eq!(&c.open(&kept, &place("p_1")).unwrap()[..], b"old");
    assert_eq!(&c.open(&newer, &place("p_2")).unwrap()[..], b"newer");
    assert!(matches!(p.retire(v2), Err(CryptoError::Refused(_))));
    assert!(matches!(
        p.retire(3_999_999),
        Err(CryptoError::UnknownVersion(3_999_999))
    ));
    assert_eq!(state(&*p, v1), Some(KekState::Retired));
    assert_eq!(state(&*p, v2), Some(KekState::Active));
    let retired = p
        .versions()
        .unwrap()
        .into_iter()
        .find(|k| k.version == v1)
        .unwrap();
    assert!((now() - retired.created_at).abs() < 600, "{retired:?}");

    // What another instance sees at open: the same, and the number is not reused.
    let q = open();
    assert_eq!(state(&*q, v1), Some(KekState::Retired));
    assert_eq!(q.current_version(), v2);
    assert!(matches!(q.unwrap(v1, &w1), Err(CryptoError::UnknownVersion(_))));
    assert!(q.rotate().unwrap() > v2);
}

/// A rotation and a retirement made by another instance show here after `refresh`, and `Cipher` finds
/// a version it does not know yet by itself.
pub fn refresh_sees_another_instance(open: Open) {
    let a = open();
    let b = open();
    assert_eq!(a.keyring_id(), b.keyring_id());
    let v1 = a.current_version();
    let dek = Dek::generate().unwrap();
    let (_, w1) = a.wrap(&dek).unwrap();

    let v2 = b.rotate().unwrap();
    let (_, w2) = b.wrap(&dek).unwrap();
    a.refresh().unwrap();
    assert_eq!(a.current_version(), v2);
    assert_eq!(a.unwrap(v2, &w2).unwrap(), dek);
    assert_eq!(
        a.wrap(&dek).unwrap().0,
        v2,
        "new wraps use the other instance's version"
    );

    let v3 = b.rotate().unwrap();
    let sealed = Cipher::new(b.clone()).seal(b"from b", &place("p_b")).unwrap();
    assert_eq!(header_of(&sealed).unwrap().kek_version, v3);
    assert_eq!(
        &Cipher::new(a.clone()).open(&sealed, &place("p_b")).unwrap()[..],
        b"from b"
    );
    assert_eq!(a.current_version(), v3);

    b.retire(v1).unwrap();
    a.refresh().unwrap();
    assert_eq!(state(&*a, v1), Some(KekState::Retired));
    assert!(matches!(a.unwrap(v1, &w1), Err(CryptoError::UnknownVersion(_))));
    // Nothing changed: refresh is harmless.
    a.refresh().unwrap();
    a.refresh().unwrap();
    assert_eq!(a.current_version(), v3);
    assert_eq!(a.unwrap(v2, &w2).unwrap(), dek);
}

/// One secret per purpose, identical across calls and instances.
pub fn derive_secret_stable_and_distinct(open: Open) {
    let p = open();
    let pepper = p.derive_secret("api-key-pepper").unwrap();
    let blind = p.derive_secret("blind-index").unwrap();
    assert_ne!(pepper, blind);
    assert_ne!(p.derive_secret("api-key-pepper2").unwrap(), pepper);
    assert_ne!(p.derive_secret("").unwrap(), pepper);
    assert_eq!(p.derive_secret("api-key-pepper").unwrap(), pepper);
    p.rotate().unwrap();
    assert_eq!(
        p.derive_secret("api-key-pepper").unwrap(),
        pepper,
        "not tied to the KEK"
    );
    let q = open();
    assert_eq!(q.derive_secret("api-key-pepper").unwrap(), pepper);
    assert_eq!(q.derive_secret("blind-index").unwrap(), blind);
}

/// Values sealed under a shred key open until it is destroyed, then never again, copies included;
/// destruction by another instance shows here after `refresh`.
pub fn shred_keys(open: Open) {
    let p = open();
    let c = Cipher::new(p.clone());
    let id = p.create_shred_key().unwrap();
    let other = p.create_shred_key().unwrap();
    assert!(id != 0 && other != 0 && id != other);

    let sealed = c.seal_shreddable(b"ephemeral", &place("p_1"), id).unwrap();
    let backup = sealed.clone();
    let kept = c.seal_shreddable(b"kept", &place("p_2"), other).unwrap();
    let plain = c.seal(b"plain", &place("p_3")).unwrap();
    assert_eq!(header_of(&sealed).unwrap().shred_id, id);
    assert_eq!(&c.open(&sealed, &place("p_1")).unwrap()[..], b"ephemeral");

    let dek = Dek::generate().unwrap();
    let mixed = p.shred_mix(id, &dek).unwrap();
    assert_ne!(mixed, dek);
    assert_eq!(p.shred_mix(id, &dek).unwrap(), mixed);
    assert_ne!(p.shred_mix(other, &dek).unwrap(), mixed);

    // Another instance has the same key (and caches it).
    let q = open();
    assert_eq!(q.shred_mix(id, &dek).unwrap(), mixed);
    let cq = Cipher::new(q.clone());
    assert_eq!(&cq.open(&backup, &place("p_1")).unwrap()[..], b"ephemeral");

    p.destroy_shred_key(id).unwrap();
    p.destroy_shred_key(id).unwrap(); // idempotent
    assert!(matches!(p.shred_mix(id, &dek), Err(CryptoError::Shredded(x)) if x == id));
    assert!(matches!(c.open(&sealed, &place("p_1")), Err(CryptoError::Shredded(x)) if x == id));
    assert!(matches!(c.open(&backup, &place("p_1")), Err(CryptoError::Shredded(x)) if x == id));
    assert_eq!(&c.open(&kept, &place("p_2")).unwrap()[..], b"kept");
    assert_eq!(&c.open(&plain, &place("p_3")).unwrap()[..], b"plain");
    assert!(matches!(
        p.shred_mix(0x1234_5678, &dek),
        Err(CryptoError::Shredded(0x1234_5678))
    ));

    // The other instance had it cached: gone after its next refresh.
    q.refresh().unwrap();
    assert!(matches!(q.shred_mix(id, &dek), Err(CryptoError::Shredded(x)) if x == id));
    assert!(matches!(
        cq.open(&backup, &place("p_1")),
        Err(CryptoError::Shredded(_))
    ));

    // And the other way round.
    assert_eq!(&c.open(&kept, &place("p_2")).unwrap()[..], b"kept");
    q.destroy_shred_key(other).unwrap();
    p.refresh().unwrap();
    assert!(matches!(c.open(&kept, &place("p_2")), Err(CryptoError::Shredded(x)) if x == other));
    // A reopened instance never sees them again.
    assert!(matches!(
        open().shred_mix(id, &dek),
        Err(CryptoError::Shredded(_))
    ));
}

/// Rewrap moves a value to the current version, keeps its plaintext and ciphertext, and leaves current
/// values alone.
pub fn rewrap_moves_to_current(open: Open) {
    let p = open();
    let c = Cipher::new(p.clone());
    let shred = p.create_shred_key().unwrap();
    let a = c.seal(b"alpha", &place("p_1")).unwrap();
    let b = c.seal_shreddable(b"beta", &place("p_2"), shred).unwrap();
    assert_eq!(c.rewrap(&a).unwrap(), None, "already current");
    let v2 = p.rotate().unwrap();
    for (sealed, want, at) in [(&a, &b"alpha"[..], "p_1"), (&b, &b"beta"[..], "p_2")] {
        let moved = c.rewrap(sealed).unwrap().expect("moved");
        let h = header_of(&moved).unwrap();
        assert_eq!(h.kek_version, v2);
        assert_eq!(h.shred_id, header_of(sealed).unwrap().shred_id);
        let body = want.len() + 16;
        assert_eq!(
            moved[moved.len() - body..],
            sealed[sealed.len() - body..],
            "ciphertext untouched"
        );
        assert_eq!(&c.open(&moved, &place(at)).unwrap()[..], want);
        assert_eq!(c.rewrap(&moved).unwrap(), None);
    }
}

/// Instances rotating at the same moment each get their own version; none is lost or duplicated.
pub fn concurrent_rotations_are_distinct(open: Open, instances: usize, each: usize) {
    let first = open();
    let before = first.versions().unwrap().len();
    let barrier = Arc::new(Barrier::new(instances));
    let handles: Vec<_> = (0..instances)
        .map(|_| {
            let p = open();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..each).map(|_| p.rotate().unwrap()).collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut got: Vec<u32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    got.sort_unstable();
    let n = got.len();
    got.dedup();
    assert_eq!(got.len(), n, "a version was handed out twice: {got:?}");
    first.refresh().unwrap();
    let versions: Vec<u32> = first.versions().unwrap().iter().map(|k| k.version).collect();
    assert_eq!(versions.len(), before + n, "{versions:?}");
    assert!(got.iter().all(|v| versions.contains(v)), "{got:?} {versions:?}");
    assert_eq!(first.current_version(), *got.last().unwrap());
    let dek = Dek::generate().unwrap();
    for v in &got {
        assert_eq!(state(&*first, *v), Some(KekState::Active));
    }
    let (v, w) = first.wrap(&dek).unwrap();
    assert_eq!(first.unwrap(v, &w).unwrap(), dek);
}

/// One instance shared by many threads sealing and opening while one of them rotates.
pub fn one_instance_many_threads(open: Open) {
    let p = open();
    let c = Cipher::new(p.clone());
    let shred = p.create_shred_key().unwrap();
    let v0 = p.current_version();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let msg = format!("thread {t} value {i}");
                    let at = Aad::field("t", &format!("{t}-{i}"), "c", "a");
                    let sealed = c.seal_shreddable(msg.as_bytes(), &at, shred).unwrap();
                    assert_eq!(&c.open(&sealed, &at).unwrap()[..], msg.as_bytes());
                    if t == 0 && i == 20 {
                        c.provider().rotate().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(p.current_version() > v0);
}

//! The PKCS#11 provider against SoftHSM2.
//!
//! Enabled when `SKYGATE_TEST_PKCS11_MODULE` names the module (`/usr/lib/softhsm/libsofthsm2.so` on
//! Debian, package `softhsm2`); otherwise every test prints why it skips and passes, unless
//! `SKYGATE_TEST_REQUIRE_ALL=1`, when it fails.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a module is initialised once per process.
//! So the test binary makes one token directory in a temp dir, points `SOFTHSM2_CONF` at a config naming
//! it before anything initialises the module, and each test initialises a fresh token of its own (a
//! distinct label) on a free slot, under a lock so two tests never take the same slot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use skygate_crypto::{
    Aad, Cipher, CryptoError, Dek, KekState, KeyProvider, Pkcs11Config, Pkcs11Pin, Pkcs11Provider,
};

const SO_PIN: &str = "skygate-so-4711";
const USER_PIN: &str = "skygate-user-0815";

/// The SoftHSM2 set-up shared by every test in this binary.
pub struct TestHsm {
    pub module: PathBuf,
    ctx: Pkcs11,
    /// Serialises token creation (slot choice) and counts tokens for unique labels.
    tokens: Mutex<u32>,
    _dir: tempfile::TempDir,
}

/// The module path, or `None` after printing why the PKCS#11 tests skip.
pub fn module_from_env() -> Option<PathBuf> {
    match std::env::var_os("SKYGATE_TEST_PKCS11_MODULE") {
        Some(m) if !m.is_empty() => Some(PathBuf::from(m)),
        _ => {
            let required = std::env::var("SKYGATE_TEST_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(
                !required,
                "SKYGATE_TEST_REQUIRE_ALL=1 but SKYGATE_TEST_PKCS11_MODULE is unset: \
                 install softhsm2 and set it to /usr/lib/softhsm/libsofthsm2.so"
            );
            eprintln!(
                "\n*** SKIPPING PKCS#11 provider test: SKYGATE_TEST_PKCS11_MODULE is unset \
                 (install softhsm2 and set it to /usr/lib/softhsm/libsofthsm2.so) ***\n"
            );
            None
        }
    }
}

/// The process-wide SoftHSM2 set-up, made on first use; `None` (after a loud line) when not configured.
pub fn hsm() -> Option<&'static TestHsm> {
    static HSM: OnceLock<TestHsm> = OnceLock::new();
    let module = module_from_env()?;
    Some(HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
                 slots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        // Process-wide, read by SoftHSM at C_Initialize: set once, before the module is initialised.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let ctx = Pkcs11::new(&module).unwrap_or_else(|e| panic!("loading {}: {e}", module.display()));
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        TestHsm {
            module,
            ctx,
            tokens: Mutex::new(0),
            _dir: dir,
        }
    }))
}

impl TestHsm {
    /// Initialises a fresh token labelled after `name` with the test SO and user PINs, and returns the
    /// provider configuration for it.
    pub fn new_token(&self, name: &str) -> Pkcs11Config {
        let mut n = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        let mut label = format!("{n}-{name}");
        label.truncate(32);
        let slot = self
            .ctx
            .get_slots_with_token()
            .expect("slot list")
            .into_iter()
            .find(|s| self.ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
            .expect("SoftHSM always offers one free slot");
        self.ctx
            .init_token(slot, &AuthPin::from(SO_PIN), &label)
            .expect("C_InitToken");
        // SoftHSM moves an initialised token to a slot id derived from its serial: look it up again.
        let slot = self.slot_of(&label);
        {
            let session = self.ctx.open_rw_session(slot).expect("SO session");
            session
                .login(UserType::So, Some(&AuthPin::from(SO_PIN)))
                .expect("SO login");
            session.init_pin(&AuthPin::from(USER_PIN)).expect("C_InitPIN");
        } // Closing the only session logs the SO out.
        Pkcs11Config {
            module: self.module.clone(),
            slot: None,
            token_label: Some(label),
            pin: Pkcs11Pin::new(USER_PIN),
        }
    }

    fn slot_of(&self, label: &str) -> cryptoki::slot::Slot {
        self.ctx
            .get_slots_with_initialized_token()
            .expect("slot list")
            .into_iter()
            .find(|s| {
                self.ctx
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == label)
            })
            .expect("token just initialised")
    }

    /// A user session on a test token, to inspect objects directly. Joins the login of any provider open
    /// on the same token in this process.
    pub fn user_session(&self, config: &Pkcs11Config) -> Session {
        let slot = self.slot_of(config.token_label.as_deref().expect("label"));
        let session = self.ctx.open_rw_session(slot).expect("session");
        match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("user login: {e}"),
        }
        session
    }
}

fn find(session: &Session, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("C_FindObjects")
}

fn open(config: &Pkcs11Config) -> Arc<Pkcs11Provider> {
    Arc::new(Pkcs11Provider::open(config.clone()).expect("open provider"))
}

fn place() -> Aad {
    Aad::field("predictions", "p_1", "output", "acct_1")
}

#[test]
fn pkcs11_roundtrip_and_tamper() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("roundtrip");
    let p = open(&config);
    assert_eq!(p.kind(), "pkcs11");
    assert_ne!(p.keyring_id(), 0);
    assert_eq!(p.current_version(), 1);

    let dek = Dek::generate().unwrap();
    let (v, wrapped) = p.wrap(&dek).unwrap();
    assert_eq!(v, 1);
    assert_eq!(wrapped.len(), 12 + 32 + 16);
    assert_eq!(p.unwrap(v, &wrapped).unwrap(), dek);
    // Fresh IV each time.
    assert_ne!(p.wrap(&dek).unwrap().1, wrapped);

    for i in 0..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(p.unwrap(v, &bad), Err(CryptoError::Authentication)),
            "flipped byte {i}"
        );
    }
    assert!(matches!(
        p.unwrap(v, &wrapped[..wrapped.len() - 1]),
        Err(CryptoError::Authentication)
    ));
    assert!(matches!(p.unwrap(v, &[]), Err(CryptoError::Authentication)));
    assert!(matches!(
        p.unwrap(99, &wrapped),
        Err(CryptoError::UnknownVersion(99))
    ));

    let c = Cipher::new(p.clone());
    let sealed = c.seal(b"inference output", &place()).unwrap();
    assert_eq!(&c.open(&sealed, &place()).unwrap()[..], b"inference output");
    let mut bad = sealed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    assert!(matches!(c.open(&bad, &place()), Err(CryptoError::Authentication)));
}

#[test]
fn pkcs11_rotate_keeps_old_versions_and_binds_the_version() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("rotate");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let old = c.seal(b"before", &place()).unwrap();
    let dek = Dek::generate().unwrap();
    let (v1, w1) = p.wrap(&dek).unwrap();

    assert_eq!(p.rotate().unwrap(), 2);
    assert_eq!(p.current_version(), 2);
    let (v2, w2) = p.wrap(&dek).unwrap();
    assert_eq!((v1, v2), (1, 2));
    assert_eq!(p.unwrap(1, &w1).unwrap(), dek);
    assert_eq!(p.unwrap(2, &w2).unwrap(), dek);
    // Wrapped bytes carry their version in the AAD: relabelled bytes fail.
    assert!(matches!(p.unwrap(2, &w1), Err(CryptoError::Authentication)));
    assert!(matches!(p.unwrap(1, &w2), Err(CryptoError::Authentication)));

    assert_eq!(&c.open(&old, &place()).unwrap()[..], b"before");
    let moved = c.rewrap(&old).unwrap().expect("moved to v2");
    assert_eq!(
        skygate_crypto::envelope::header_of(&moved).unwrap().kek_version,
        2
    );
    assert_eq!(&c.open(&moved, &place()).unwrap()[..], b"before");

    let versions = p.versions().unwrap();
    assert_eq!(versions.iter().map(|k| k.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(versions.iter().all(|k| k.state == KekState::Active));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        versions.iter().all(|k| (now - k.created_at).abs() < 600),
        "{versions:?}"
    );
}

#[test]
fn pkcs11_retire_refuses_current_and_destroys_old() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("retire");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let old = c.seal(b"old", &place()).unwrap();
    assert!(matches!(p.retire(1), Err(CryptoError::Refused(_))));
    assert_eq!(p.rotate().unwrap(), 2);
    let kept = c.rewrap(&old).unwrap().unwrap();
    p.retire(1).unwrap();
    p.retire(1).unwrap(); // idempotent
    assert!(matches!(
        c.open(&old, &place()),
        Err(CryptoError::UnknownVersion(1))
    ));
    assert_eq!(&c.open(&kept, &place()).unwrap()[..], b"old");
    assert!(matches!(p.retire(7), Err(CryptoError::UnknownVersion(7))));
    assert!(matches!(p.retire(2), Err(CryptoError::Refused(_))));

    let states = |p: &Pkcs11Provider| {
        p.versions()
            .unwrap()
            .into_iter()
            .map(|k| (k.version, k.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(states(&p), vec![(1, KekState::Retired), (2, KekState::Active)]);
    assert!(p.versions().unwrap()[0].created_at > 0);

    // The key object is gone from the token, the tombstone is there, and a reopen sees the same.
    let s = hsm.user_session(&config);
    assert!(find(&s, "skygate-kek-v1").is_empty());
    assert_eq!(find(&s, "skygate-kek-v1-retired").len(), 1);
    drop(s);
    drop(c);
    drop(p);
    let p = open(&config);
    assert_eq!(states(&p), vec![(1, KekState::Retired), (2, KekState::Active)]);
    // A retired number is never reused.
    assert_eq!(p.rotate().unwrap(), 3);
}

#[test]
fn pkcs11_refresh_sees_another_instance() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("refresh");
    let a = open(&config);
    let b = open(&config);
    assert_eq!(a.keyring_id(), b.keyring_id());
    assert_eq!(b.rotate().unwrap(), 2);
    assert_eq!(a.current_version(), 1);
    let dek = Dek::generate().unwrap();
    let (v, w) = b.wrap(&dek).unwrap();
    assert_eq!(v, 2);
    // Unknown until refreshed …
    assert!(matches!(a.unwrap(2, &w), Err(CryptoError::UnknownVersion(2))));
    a.refresh().unwrap();
    assert_eq!(a.current_version(), 2);
    assert_eq!(a.unwrap(2, &w).unwrap(), dek);

    // … and the Cipher refreshes by itself when it meets a newer version.
    assert_eq!(b.rotate().unwrap(), 3);
    let sealed = Cipher::new(b.clone()).seal(b"from b", &place()).unwrap();
    assert_eq!(
        &Cipher::new(a.clone()).open(&sealed, &place()).unwrap()[..],
        b"from b"
    );
    assert_eq!(a.current_version(), 3);

    // Retirement by one instance shows after refresh in the other.
    b.retire(1).unwrap();
    a.refresh().unwrap();
    assert_eq!(a.versions().unwrap()[0].state, KekState::Retired);
}

#[test]
fn pkcs11_derive_secret_stable_and_distinct() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("derive");
    let p = open(&config);
    let pepper = p.derive_secret("api-key-pepper").unwrap();
    let blind = p.derive_secret("blind-index").unwrap();
    assert_ne!(pepper, blind);
    assert_eq!(p.derive_secret("api-key-pepper").unwrap(), pepper);
    drop(p);
    let p = open(&config);
    assert_eq!(p.derive_secret("api-key-pepper").unwrap(), pepper);
    let other = open(&hsm.new_token("derive-other"));
    assert_ne!(other.derive_secret("api-key-pepper").unwrap(), pepper);
}

#[test]
fn pkcs11_shred_keys() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("shred");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let id = p.create_shred_key().unwrap();
    assert_ne!(id, 0);
    let sealed = c.seal_shreddable(b"ephemeral", &place(), id).unwrap();
    let copy = sealed.clone();
    assert_eq!(&c.open(&sealed, &place()).unwrap()[..], b"ephemeral");
    let dek = Dek::generate().unwrap();
    let mixed = p.shred_mix(id, &dek).unwrap();
    assert_ne!(mixed, dek);
    assert_eq!(p.shred_mix(id, &dek).unwrap(), mixed);

    // A second instance sees the key and the same mix; its destruction is seen by the first.
    let q = open(&config);
    assert_eq!(q.shred_mix(id, &dek).unwrap(), mixed);
    q.destroy_shred_key(id).unwrap();
    q.destroy_shred_key(id).unwrap(); // idempotent
    assert!(matches!(p.shred_mix(id, &dek), Err(CryptoError::Shredded(x)) if x == id));
    assert!(matches!(c.open(&copy, &place()), Err(CryptoError::Shredded(x)) if x == id));
    assert!(matches!(c.open(&sealed, &place()), Err(CryptoError::Shredded(_))));
    assert!(matches!(
        p.shred_mix(12345, &dek),
        Err(CryptoError::Shredded(12345))
    ));
    let s = hsm.user_session(&config);
    assert!(find(&s, &format!("skygate-shred-{id:016x}")).is_empty());
}

#[test]
fn pkcs11_keys_are_sensitive_and_never_extractable() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("attrs");
    let p = open(&config);
    let shred = p.create_shred_key().unwrap();
    let s = hsm.user_session(&config);
    for label in [
        "skygate-kek-v1",
        "skygate-root",
        &format!("skygate-shred-{shred:016x}"),
    ] {
        let handles = find(&s, label);
        assert_eq!(handles.len(), 1, "{label}");
        let h = handles[0];
        let attrs = s
            .get_attributes(
                h,
                &[
                    AttributeType::Class,
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                ],
            )
            .unwrap();
        for want in [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            // Generated inside the token, not imported.
            Attribute::Local(true),
        ] {
            assert!(attrs.contains(&want), "{label}: {want:?} not in {attrs:?}");
        }
        // The value cannot be read.
        let info = s.get_attribute_info(h, &[AttributeType::Value]).unwrap();
        assert!(
            matches!(info.as_slice(), [AttributeInfo::Sensitive]),
            "{label}: {info:?}"
        );
        assert!(
            s.get_attributes(h, &[AttributeType::Value]).unwrap().is_empty(),
            "{label}"
        );
        // Nor can it be made readable.
        assert!(
            s.update_attributes(h, &[Attribute::Sensitive(false)]).is_err(),
            "{label}"
        );
        assert!(
            s.update_attributes(h, &[Attribute::Extractable(true)]).is_err(),
            "{label}"
        );
    }
    let id_obj = find(&s, "skygate-keyring-id");
    assert_eq!(id_obj.len(), 1);
    let attrs = s.get_attributes(id_obj[0], &[AttributeType::Private]).unwrap();
    assert_eq!(attrs, vec![Attribute::Private(true)]);
}

#[test]
fn pkcs11_wrong_pin_is_clear_and_does_not_leak() {
    let Some(hsm) = hsm() else { return };
    let mut config = hsm.new_token("wrong-pin");
    config.pin = Pkcs11Pin::new("not-the-pin-93731");
    let err = Pkcs11Provider::open(config).unwrap_err().to_string();
    assert!(
        err.contains("PKCS#11 login failed: wrong PIN (CKR_PIN_INCORRECT)"),
        "{err}"
    );
    assert!(!err.contains("93731"), "{err}");
}

#[test]
fn pkcs11_missing_module_and_token_are_clear() {
    // No SoftHSM needed for the module path.
    let err = Pkcs11Provider::open(Pkcs11Config {
        module: "/nonexistent/lib/libnone-pkcs11.so".into(),
        slot: None,
        token_label: Some("x".into()),
        pin: Pkcs11Pin::new("pin-55555"),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/lib/libnone-pkcs11.so"), "{err}");
    assert!(!err.contains("55555"), "{err}");

    let Some(hsm) = hsm() else { return };
    let mut config = hsm.new_token("no-such");
    config.token_label = Some("no-such-token-label".into());
    let err = Pkcs11Provider::open(config.clone()).unwrap_err().to_string();
    assert!(
        err.contains("token not found") && err.contains("no-such-token-label"),
        "{err}"
    );
    config.token_label = None;
    config.slot = Some(987_654_321);
    let err = Pkcs11Provider::open(config).unwrap_err().to_string();
    assert!(
        err.contains("token not found") && err.contains("987654321"),
        "{err}"
    );
}

#[test]
fn pkcs11_open_existing_creates_nothing() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("existing");
    let err = Pkcs11Provider::open_existing(config.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no skygate keyring"), "{err}");
    assert!(find(&hsm.user_session(&config), "skygate-keyring-id").is_empty());
    let id = open(&config).keyring_id();
    let again = Pkcs11Provider::open_existing(config.clone()).unwrap();
    assert_eq!(again.keyring_id(), id);
    assert_eq!(again.current_version(), 1);
    // Debug shows where, never the PIN.
    let shown = format!("{again:?} {config:?}");
    assert!(!shown.contains(USER_PIN), "{shown}");
}

#[test]
fn pkcs11_concurrent_rotations_never_duplicate_a_version() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("concurrent-rotate");
    let first = open(&config);
    const N: usize = 4;
    let instances: Vec<_> = (0..N).map(|_| open(&config)).collect();
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = instances
        .into_iter()
        .map(|p| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                p.rotate().unwrap()
            })
        })
        .collect();
    let mut got: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), N, "each rotation made its own version: {got:?}");

    // Every version has exactly one key and no pending key is left. (Numbers may skip when contenders
    // back off; they never repeat.)
    first.refresh().unwrap();
    let versions: Vec<u32> = first.versions().unwrap().iter().map(|k| k.version).collect();
    assert_eq!(versions.len(), N + 1, "{versions:?}");
    assert!(got.iter().all(|v| versions.contains(v)), "{got:?} {versions:?}");
    assert_eq!(first.current_version(), *got.last().unwrap());
    let s = hsm.user_session(&config);
    for v in 1..=first.current_version() {
        let keys = find(&s, &format!("skygate-kek-v{v}")).len();
        assert_eq!(
            keys,
            usize::from(versions.contains(&v)),
            "version {v} of {versions:?}"
        );
        assert!(
            find(&s, &format!("skygate-kek-v{v}-pending")).is_empty(),
            "version {v}"
        );
    }
    // All of them wrap and unwrap.
    let dek = Dek::generate().unwrap();
    let (v, w) = first.wrap(&dek).unwrap();
    assert_eq!(first.unwrap(v, &w).unwrap(), dek);
}

#[test]
fn pkcs11_one_provider_many_threads() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("threads");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let shred = p.create_shred_key().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let msg = format!("thread {t} value {i}");
                    let at = Aad::field("t", &format!("{t}-{i}"), "c", "a");
                    let sealed = c.seal_shreddable(msg.as_bytes(), &at, shred).unwrap();
                    assert_eq!(&c.open(&sealed, &at).unwrap()[..], msg.as_bytes());
                    if t == 0 && i == 10 {
                        c.provider().rotate().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(p.current_version(), 2);
}

const CHILD_TOKEN: &str = "SKYGATE_PKCS11_TEST_CHILD_TOKEN";
const CHILD_ACTION: &str = "SKYGATE_PKCS11_TEST_CHILD_ACTION";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Not a test of its own: the other process of the `*_another_process` tests, which run this binary
/// again with only this test selected and [`CHILD_TOKEN`] and [`CHILD_ACTION`] set. Actions: `rotate`
/// (prints the new version and a value sealed under it), `destroy-shred <id>`.
#[test]
fn pkcs11_child_process() {
    let (Ok(label), Ok(action)) = (std::env::var(CHILD_TOKEN), std::env::var(CHILD_ACTION)) else {
        return;
    };
    let module = PathBuf::from(std::env::var_os("SKYGATE_TEST_PKCS11_MODULE").unwrap());
    let p = Arc::new(
        Pkcs11Provider::open_existing(Pkcs11Config {
            module,
            slot: None,
            token_label: Some(label),
            pin: Pkcs11Pin::new(USER_PIN),
        })
        .unwrap(),
    );
    match action.split_once(' ').unwrap_or((action.as_str(), "")) {
        ("rotate", _) => {
            let v = p.rotate().unwrap();
            let sealed = Cipher::new(p.clone())
                .seal(b"from the other process", &place())
                .unwrap();
            println!("\nCHILD-RESULT {v} {}", hex(&sealed));
        }
        ("destroy-shred", id) => {
            p.destroy_shred_key(id.parse().unwrap()).unwrap();
            println!("\nCHILD-RESULT done");
        }
        other => panic!("unknown child action {other:?}"),
    }
}

/// Runs [`pkcs11_child_process`] in another process on the token of `config`; returns its result line.
fn in_another_process(config: &Pkcs11Config, action: &str) -> String {
    // The child inherits SOFTHSM2_CONF, so it sees the same token directory, and its C_GetSlotList reads
    // every token there: one that a parallel test is initialising at that moment (half written) fails
    // the child's whole slot scan with CKR_GENERAL_ERROR. No token is initialised while the child runs.
    let _no_new_tokens = hsm().map(|h| h.tokens.lock().unwrap_or_else(|p| p.into_inner()));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pkcs11::pkcs11_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_TOKEN, config.token_label.as_deref().unwrap())
        .env(CHILD_ACTION, action)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD-RESULT "))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"))
        .to_string()
}

#[test]
fn pkcs11_refresh_sees_another_process() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("other-process");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let before = c.seal(b"before", &place()).unwrap();
    let line = in_another_process(&config, "rotate");
    let (v, sealed) = line.split_once(' ').unwrap();
    assert_eq!(v, "2");
    let sealed = unhex(sealed.trim());

    assert_eq!(p.current_version(), 1);
    // Opening refreshes on the unknown version by itself …
    assert_eq!(&c.open(&sealed, &place()).unwrap()[..], b"from the other process");
    // … and from then on new values use the other process's version.
    assert_eq!(p.current_version(), 2);
    let (v, _) = p.wrap(&Dek::generate().unwrap()).unwrap();
    assert_eq!(v, 2);
    assert_eq!(&c.open(&before, &place()).unwrap()[..], b"before");
}

#[test]
fn pkcs11_shred_by_another_process() {
    let Some(hsm) = hsm() else { return };
    let config = hsm.new_token("shred-other-process");
    let p = open(&config);
    let c = Cipher::new(p.clone());
    let id = p.create_shred_key().unwrap();
    let sealed = c.seal_shreddable(b"purge me", &place(), id).unwrap();
    // Opened once here, so this process holds the shred key's handle.
    assert_eq!(&c.open(&sealed, &place()).unwrap()[..], b"purge me");
    assert_eq!(
        in_another_process(&config, &format!("destroy-shred {id}")),
        "done"
    );
    assert!(matches!(c.open(&sealed, &place()), Err(CryptoError::Shredded(x)) if x == id));
}

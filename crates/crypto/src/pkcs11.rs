//! The `pkcs11` key provider: key-encryption keys, the root secret and shred keys live inside a PKCS#11
//! token (an HSM; SoftHSM2 in tests), generated there and never extractable.
//!
//! # Objects in the token
//!
//! Every object is a token object (`CKA_TOKEN`), private (`CKA_PRIVATE`, visible only after user login).
//! Keys are generated inside the token (`C_GenerateKey`) with `CKA_SENSITIVE = true`,
//! `CKA_EXTRACTABLE = false`, and only the usage they need.
//!
//! | label                          | class / type                      | what it is                                   |
//! |--------------------------------|-----------------------------------|----------------------------------------------|
//! | `skygate-keyring-id`           | `CKO_DATA`, app `skygate`         | the keyring id: 4 bytes big-endian, nonzero  |
//! | `skygate-root`                 | `CKK_GENERIC_SECRET`, 32 bytes    | root of [`KeyProvider::derive_secret`]; `CKA_SIGN` |
//! | `skygate-kek-v<N>`             | `CKK_AES`, 256 bits               | KEK version N; `CKA_ENCRYPT`/`CKA_DECRYPT`   |
//! | `skygate-kek-v<N>-pending`     | `CKK_AES`, 256 bits               | a KEK being created by [`KeyProvider::rotate`]; never used |
//! | `skygate-kek-v<N>-retired`     | `CKO_DATA`, app `skygate`         | tombstone of a retired version               |
//! | `skygate-shred-<16 hex>`       | `CKK_GENERIC_SECRET`, 32 bytes    | shred key; `CKA_SIGN`                        |
//!
//! The `CKA_ID` of every generated key is `created_at (i64 big-endian, Unix seconds) ‖ 8 random bytes`: it
//! records the creation time (what [`KeyProvider::versions`] reports; a tombstone's `CKA_VALUE` keeps it
//! after the key is gone) and gives duplicates a deterministic order.
//!
//! # Mechanisms
//!
//! * **Wrap/unwrap: `CKM_AES_GCM`** through `C_Encrypt`/`C_Decrypt`. Wrapped bytes are
//!   `iv (12, random) ‖ encrypted DEK (32) ‖ tag (16)`, with AAD `"skygate-pkcs11-wrap-v1" ‖ keyring_id ‖
//!   version` (big-endian), so wrapped bytes moved to another version or keyring fail authentication.
//!   SoftHSM2 (2.6.1 in Debian) offers both this and `CKM_AES_KEY_WRAP_PAD`; GCM is used because the DEK
//!   has to be in host memory anyway (it encrypts the value), and GCM needs one call per operation where
//!   `C_WrapKey`/`C_UnwrapKey` need three (create a session object holding the DEK, wrap it, destroy
//!   it; or unwrap into a session object that must be non-sensitive and extractable to be read back,
//!   then destroy it), leaves no session objects behind when a call fails halfway, and carries AAD.
//!   IVs are random: a KEK should wrap fewer than 2³² keys, far beyond any rotation period. A tag that
//!   fails makes `C_Decrypt` fail (SoftHSM2 says `CKR_GENERAL_ERROR`), which maps to
//!   [`CryptoError::Authentication`].
//! * **Derived secrets: `CKM_SHA256_HMAC`** (`C_Sign`) with `skygate-root` over
//!   `"skygate-derive-v1" ‖ purpose`. The API-key pepper is derived this way at start, so it is a function
//!   of a key that only the HSM holds: a stolen database and data directory cannot test key guesses.
//! * **Shred keys: `CKM_SHA256_HMAC`** with `skygate-shred-<id>` over `"skygate-shred-v1" ‖ dek`.
//!   Destroying the object (`C_DestroyObject`) destroys every value mixed with it.
//!
//! # Initialisation
//!
//! [`Pkcs11Provider::open`] creates what is missing the first time (keyring id, root secret, KEK v1), so
//! the first start on an empty token initialises it; [`Pkcs11Provider::open_existing`] creates nothing and
//! fails if the token holds no skygate keyring. If two processes initialise the same empty token at the
//! same instant, both may create a keyring id and a root secret: every process then uses the smallest
//! keyring id and the root with the smallest `CKA_ID`, the others stay unused. Initialise a cluster's token
//! from one node (or with `open` before starting the others) to avoid even that.
//!
//! # Rotation between processes
//!
//! PKCS#11 has no compare-and-swap, so [`KeyProvider::rotate`] claims a version number with a
//! create-then-check protocol:
//!
//! 1. read every `skygate-kek-*` object; the new version N is one more than the highest version named by
//!    any of them (committed, pending or retired);
//! 2. generate the key as `skygate-kek-v<N>-pending` (nobody wraps or unwraps with pending keys);
//! 3. look again: if `skygate-kek-v<N>` or its tombstone exists, this attempt lost. If other pending keys
//!    for N (less than five minutes old) exist, the one with the smallest `CKA_ID` waits (looking again
//!    every 2 ms, up to 100 ms) and every other one lost. A loser destroys its pending key, waits a
//!    random 1–40 ms (growing with the attempt) and starts again from 1, at most 16 times;
//! 4. when a look shows neither a committed key, a tombstone nor another live pending key for N, commit:
//!    relabel the key `skygate-kek-v<N>` (`C_SetAttributeValue` on `CKA_LABEL`).
//!
//! Two attempts cannot both commit N: commit needs a look that shows no contender, and whichever created
//! its pending key second looks after both keys exist, so it sees the first one's key (pending or
//! committed) until that one is destroyed, which happens only to keys that will not commit. The
//! smallest-`CKA_ID` rule decides who waits, never who commits, so it cannot let two through; it only
//! keeps contenders from all backing off at once. Two processes rotating at once therefore end with two
//! new versions, each with exactly one key. Version numbers only grow, but a number can be skipped when a
//! contender backs off after others counted its pending key (or after a crash left one behind). The rule
//! assumes the nodes' clocks agree within five minutes (the staleness limit) and that the token shows
//! one process's new objects to the others' next `C_FindObjects` (true of SoftHSM2's file store and of
//! network HSMs).
//!
//! As a second line of defence, a committed key is never destroyed except by retire (another process may
//! have wrapped with it): if duplicates of one version ever exist, every process wraps with the one with
//! the smallest `CKA_ID` (so they converge), unwrap tries each of them (GCM authentication tells which
//! one is right), and retire destroys all of them. Abandoned pending keys (a crash between 2 and 4) are
//! never used, make later rotations skip their number, stop counting as contenders after five minutes,
//! and may be deleted by an operator.
//!
//! # Retirement
//!
//! [`KeyProvider::retire`] refuses the current version, writes the tombstone `skygate-kek-v<N>-retired`
//! (a `CKO_DATA` object whose value is the key's creation time) and then destroys every key object of
//! that version. [`KeyProvider::versions`] lists tombstoned versions as [`KekState::Retired`]; a tombstone
//! also stops the version number from being reused.
//!
//! # Sessions and threads
//!
//! One process-wide `cryptoki` context per module path (`C_Initialize` once, never finalised). Sessions
//! are not `Sync`, so the provider keeps a pool of logged-in read/write sessions: each call checks one out
//! (opening and logging in a new one when the pool is empty) and returns it, so slow calls do not
//! serialise each other; at most 16 idle sessions are kept. A call that fails because its session died
//! (closed, logged out, token removed) is retried once on a fresh session. PKCS#11 login state is shared
//! by all sessions of one process on one token: a second provider in the same process on the same token
//! joins the existing login (the module answers `CKR_USER_ALREADY_LOGGED_IN` without checking its PIN).
//! Object handles are cached (versions, root, shred keys) and used from every session, as SoftHSM2 and
//! the usual HSMs give a token object one handle across a process's sessions; a call that finds a cached
//! handle invalid (the object was destroyed, or the token renumbered it) looks the object up again by
//! label once.
//!
//! State from other processes is picked up by [`KeyProvider::refresh`] (new or retired versions);
//! [`crate::Cipher`] refreshes by itself when it meets a version it does not know.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{CryptoError, Dek, KekInfo, KekState, KeyProvider, Result, Secret32, ShredId};

const APP: &[u8] = b"skygate";
const KEYRING_ID_LABEL: &str = "skygate-keyring-id";
const ROOT_LABEL: &str = "skygate-root";
const KEK_PREFIX: &str = "skygate-kek-v";
const PENDING_SUFFIX: &str = "-pending";
const RETIRED_SUFFIX: &str = "-retired";
const SHRED_PREFIX: &str = "skygate-shred-";
const WRAP_DOMAIN: &[u8] = b"skygate-pkcs11-wrap-v1";
const DERIVE_DOMAIN: &[u8] = b"skygate-derive-v1";
const SHRED_DOMAIN: &[u8] = b"skygate-shred-v1";
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = IV_LEN + Dek::LEN + TAG_LEN;
/// Idle sessions kept in the pool; more are opened on demand and closed when returned.
const MAX_IDLE_SESSIONS: usize = 16;
const ROTATE_ATTEMPTS: usize = 16;
/// How many times (2 ms apart) the smallest of several contenders for a version looks again for the
/// others to back off before it backs off itself.
const CLAIM_WAITS: usize = 50;
/// A pending KEK older than this is an abandoned rotation and no longer blocks its version number.
const PENDING_STALE_SECS: i64 = 300;
const REQUIRED_MECHANISMS: [(MechanismType, &str); 4] = [
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (MechanismType::AES_GCM, "CKM_AES_GCM"),
    (
        MechanismType::GENERIC_SECRET_KEY_GEN,
        "CKM_GENERIC_SECRET_KEY_GEN",
    ),
    (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC"),
];

/// A PKCS#11 user PIN: zeroized on drop, redacted in `Debug`, never part of an error message.
#[derive(Clone)]
pub struct Pkcs11Pin(Zeroizing<String>);

impl Pkcs11Pin {
    pub fn new(pin: impl Into<String>) -> Self {
        Pkcs11Pin(Zeroizing::new(pin.into()))
    }

    /// The PIN text, for the one call that hands it to the module.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Pkcs11Pin {
    fn from(pin: String) -> Self {
        Pkcs11Pin::new(pin)
    }
}

impl From<&str> for Pkcs11Pin {
    fn from(pin: &str) -> Self {
        Pkcs11Pin::new(pin)
    }
}

impl fmt::Debug for Pkcs11Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs11Pin(<redacted>)")
    }
}

/// Where the token is and how to log in.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// Path of the vendor's PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so` for SoftHSM2).
    pub module: PathBuf,
    /// The slot id. If `token_label` is also set, the token in this slot must carry that label.
    pub slot: Option<u64>,
    /// The token label to look for among initialised tokens. With neither `slot` nor `token_label`, the
    /// module must have exactly one initialised token.
    pub token_label: Option<String>,
    /// The user PIN.
    pub pin: Pkcs11Pin,
}

/// A [`KeyProvider`] whose keys live in a PKCS#11 token. See the module docs.
pub struct Pkcs11Provider {
    ctx: Pkcs11,
    module: PathBuf,
    slot: Slot,
    token_label: String,
    pin: AuthPin,
    pool: Mutex<Vec<Session>>,
    keyring_id: u32,
    keks: RwLock<BTreeMap<u32, Kek>>,
    root: RwLock<Option<ObjectHandle>>,
    shreds: RwLock<HashMap<ShredId, ObjectHandle>>,
    rng: SystemRandom,
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("module", &self.module)
            .field("slot", &self.slot.id())
            .field("token_label", &self.token_label)
            .field("keyring_id", &format_args!("{:08x}", self.keyring_id))
            .finish_non_exhaustive()
    }
}

/// One KEK version as last seen in the token. `keys` is empty for a retired version, and sorted by
/// `CKA_ID` otherwise (the first one wraps).
#[derive(Clone)]
struct Kek {
    created_at: i64,
    keys: Vec<KeyObj>,
}

#[derive(Clone)]
struct KeyObj {
    id: Vec<u8>,
    handle: ObjectHandle,
}

/// Everything `skygate-kek-*` in the token.
#[derive(Default)]
struct Scan {
    committed: BTreeMap<u32, Vec<KeyObj>>,
    pending: Vec<(u32, KeyObj)>,
    retired: BTreeMap<u32, i64>,
}

impl Scan {
    fn highest_version(&self) -> u32 {
        let c = self.committed.keys().next_back().copied().unwrap_or(0);
        let r = self.retired.keys().next_back().copied().unwrap_or(0);
        let p = self.pending.iter().map(|(v, _)| *v).max().unwrap_or(0);
        c.max(r).max(p)
    }

    fn into_keks(self) -> BTreeMap<u32, Kek> {
        let mut out = BTreeMap::new();
        for (version, mut keys) in self.committed {
            if self.retired.contains_key(&version) {
                continue;
            }
            keys.sort_by(|a, b| a.id.cmp(&b.id));
            let created_at = keys.first().map_or(0, |k| created_at_of(&k.id));
            out.insert(version, Kek { created_at, keys });
        }
        for (version, created_at) in self.retired {
            out.insert(
                version,
                Kek {
                    created_at,
                    keys: Vec::new(),
                },
            );
        }
        out
    }
}

enum Label {
    Kek(u32),
    Pending(u32),
    Retired(u32),
    Other,
}

fn parse_label(label: &str) -> Label {
    let Some(rest) = label.strip_prefix(KEK_PREFIX) else {
        return Label::Other;
    };
    let (digits, kind): (&str, fn(u32) -> Label) = if let Some(d) = rest.strip_suffix(PENDING_SUFFIX) {
        (d, Label::Pending)
    } else if let Some(d) = rest.strip_suffix(RETIRED_SUFFIX) {
        (d, Label::Retired)
    } else {
        (rest, Label::Kek)
    };
    match digits.parse::<u32>() {
        // Canonical decimal only: "v03" or "v+3" are somebody else's objects.
        Ok(v) if v > 0 && v.to_string() == digits => kind(v),
        _ => Label::Other,
    }
}

fn kek_label(version: u32) -> String {
    format!("{KEK_PREFIX}{version}")
}

fn shred_label(id: ShredId) -> String {
    format!("{SHRED_PREFIX}{id:016x}")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn created_at_of(id: &[u8]) -> i64 {
    id.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`.
fn ckr_name(rv: &RvError) -> String {
    let name = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{} in {function}", ckr_name(rv)),
        other => other.to_string(),
    }
}

fn rv_of(e: &CkError) -> Option<&RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(rv),
        _ => None,
    }
}

/// Errors after which the session is no good but a fresh one may work (`CKR_OPERATION_ACTIVE`: a failed
/// call left an operation open on it).
fn session_broken(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::OperationActive
        )
    )
}

/// A cached object handle that no longer names an object.
fn handle_gone(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
    )
}

/// What `C_Decrypt` says when the GCM tag or the input does not verify. SoftHSM2 2.6 reports a tag
/// mismatch as `CKR_GENERAL_ERROR` from `C_Decrypt` (not `CKR_ENCRYPTED_DATA_INVALID`), so that code
/// counts too, but only from `C_Decrypt` itself: the input length is checked before the call, so a
/// failing tag is all that is left to fail there.
fn decrypt_rejected(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
            _,
        ) | CkError::Pkcs11(
            RvError::GeneralError | RvError::FunctionFailed,
            cryptoki::context::Function::Decrypt,
        )
    )
}

fn login_error(e: &CkError) -> CryptoError {
    let what = match rv_of(e) {
        Some(RvError::PinIncorrect) => "wrong PIN (CKR_PIN_INCORRECT)".to_string(),
        Some(RvError::PinLocked) => "the user PIN is locked (CKR_PIN_LOCKED)".to_string(),
        Some(RvError::PinExpired) => "the user PIN has expired (CKR_PIN_EXPIRED)".to_string(),
        Some(RvError::UserPinNotInitialized) => {
            "the token's user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED)".to_string()
        }
        _ => describe(e),
    };
    CryptoError::Provider(format!("PKCS#11 login failed: {what}"))
}

/// Maps a failed token call: login failures get their own wording, the rest name the operation.
fn op_error(op: &'static str) -> impl Fn(CkError) -> CryptoError {
    move |e| match e {
        CkError::Pkcs11(_, cryptoki::context::Function::Login) => login_error(&e),
        e => CryptoError::Provider(format!("PKCS#11 {op} failed: {}", describe(&e))),
    }
}

/// SoftHSM2's file object store fails token-object writes (generate, create, relabel, destroy) with
/// `CKR_GENERAL_ERROR` when another thread of the same process writes or searches (`C_FindObjects`
/// re-indexes the token directory) at the same moment (SoftHSMv2 issue 573). So within this process,
/// writes are exclusive and searches shared; crypto operations on known handles take no lock. Writes are
/// rare (rotation, retirement, shred keys), and so are searches once handles are cached.
static TOKEN_OBJECTS: RwLock<()> = RwLock::new(());

fn token_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
    TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner())
}

fn token_reads() -> std::sync::RwLockReadGuard<'static, ()> {
    TOKEN_OBJECTS.read().unwrap_or_else(|p| p.into_inner())
}

fn locked_read<T>(f: impl FnOnce() -> T) -> T {
    let _turn = token_reads();
    f()
}

/// One initialised context per module path for the whole process: `C_Initialize` may run only once.
fn context_for(module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| CryptoError::Provider("PKCS#11 context registry lock poisoned".into()))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    if !module.is_file() {
        return Err(CryptoError::Provider(format!(
            "PKCS#11 module not found at {}",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        CryptoError::Provider(format!(
            "PKCS#11 module {} could not be loaded: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process initialised it (another module path naming the same file, or
        // code outside this crate): the library is usable.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(CryptoError::Provider(format!(
                "PKCS#11 module {}: C_Initialize failed: {}",
                module.display(),
                describe(&e)
            )))
        }
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Scans of the token list retried after a transient CKR_GENERAL_ERROR.
const SCAN_RETRIES: u32 = 5;

fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String)> {
    let module = config.module.display();
    let err = |op: &str, e: CkError| {
        CryptoError::Provider(format!("PKCS#11 module {module}: {op} failed: {}", describe(&e)))
    };
    // A file-backed token being written by another process (SoftHSM while a server rotates keys) can
    // answer a scan with CKR_GENERAL_ERROR for a moment: the scan is retried a few times before failing.
    let scan = || -> std::result::Result<Vec<(Slot, String)>, (&'static str, CkError)> {
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| ("C_GetSlotList", e))?;
        let mut tokens = Vec::with_capacity(slots.len());
        for slot in slots {
            let info = ctx.get_token_info(slot).map_err(|e| ("C_GetTokenInfo", e))?;
            tokens.push((slot, info.label().trim_end().to_string()));
        }
        Ok(tokens)
    };
    let mut tries = 0;
    let tokens = loop {
        match scan() {
            Ok(t) => break t,
            Err((_, CkError::Pkcs11(RvError::GeneralError, _))) if tries < SCAN_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(tries)));
            }
            Err((op, e)) => return Err(err(op, e)),
        }
    };
    let names = || {
        let list: Vec<String> = tokens
            .iter()
            .map(|(s, l)| format!("slot {} \"{l}\"", s.id()))
            .collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    if let Some(want) = config.slot {
        let Some((slot, label)) = tokens.iter().find(|(s, _)| s.id() == want) else {
            return Err(CryptoError::Provider(format!(
                "PKCS#11 token not found: slot {want} in module {module} holds no initialised token \
                 (initialised tokens: {})",
                names()
            )));
        };
        if let Some(expected) = &config.token_label {
            if label != expected {
                return Err(CryptoError::Provider(format!(
                    "PKCS#11 token in slot {want} is labelled \"{label}\", expected \"{expected}\""
                )));
            }
        }
        return Ok((*slot, label.clone()));
    }
    let matching: Vec<&(Slot, String)> = match &config.token_label {
        Some(expected) => tokens.iter().filter(|(_, l)| l == expected).collect(),
        None => tokens.iter().collect(),
    };
    match (matching.as_slice(), &config.token_label) {
        ([(slot, label)], _) => Ok((*slot, label.clone())),
        ([], Some(expected)) => Err(CryptoError::Provider(format!(
            "PKCS#11 token not found: no initialised token labelled \"{expected}\" in module {module} \
             (initialised tokens: {})",
            names()
        ))),
        ([], None) => Err(CryptoError::Provider(format!(
            "PKCS#11 token not found: module {module} has no initialised token"
        ))),
        (_, Some(expected)) => Err(CryptoError::Provider(format!(
            "PKCS#11 token label \"{expected}\" is ambiguous in module {module} ({}): set the slot",
            names()
        ))),
        (_, None) => Err(CryptoError::Provider(format!(
            "module {module} has several initialised tokens ({}): set the token label or the slot",
            names()
        ))),
    }
}

fn check_mechanisms(ctx: &Pkcs11, slot: Slot, label: &str) -> Result<()> {
    let have = ctx.get_mechanism_list(slot).map_err(|e| {
        CryptoError::Provider(format!(
            "PKCS#11 token \"{label}\": C_GetMechanismList failed: {}",
            describe(&e)
        ))
    })?;
    let missing: Vec<&str> = REQUIRED_MECHANISMS
        .iter()
        .filter(|(m, _)| !have.contains(m))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CryptoError::Provider(format!(
            "PKCS#11 token \"{label}\" lacks required mechanisms: {}",
            missing.join(", ")
        )))
    }
}

/// The attributes every key this provider generates carries.
fn key_template(key_type: KeyType, label: &str, id: &[u8], usage: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    t.extend_from_slice(usage);
    t
}

fn kek_usage() -> [Attribute; 4] {
    [
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
    ]
}

fn mac_usage() -> [Attribute; 2] {
    [Attribute::Sign(true), Attribute::Verify(false)]
}

fn bytes_attr(
    session: &Session,
    h: ObjectHandle,
    ty: AttributeType,
) -> std::result::Result<Option<Vec<u8>>, CkError> {
    for a in session.get_attributes(h, &[ty])? {
        match a {
            Attribute::Label(v) | Attribute::Id(v) | Attribute::Value(v) => return Ok(Some(v)),
            _ => {}
        }
    }
    Ok(None)
}

fn label_and_id(session: &Session, h: ObjectHandle) -> std::result::Result<(String, Vec<u8>), CkError> {
    let mut label = String::new();
    let mut id = Vec::new();
    for a in session.get_attributes(h, &[AttributeType::Label, AttributeType::Id])? {
        match a {
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::Id(v) => id = v,
            _ => {}
        }
    }
    Ok((label, id))
}

/// Every `skygate-kek-*` object in the token.
fn scan(session: &Session) -> std::result::Result<Scan, CkError> {
    let mut out = Scan::default();
    let keys = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
    ])?;
    for handle in keys {
        let (label, id) = match label_and_id(session, handle) {
            Ok(x) => x,
            // Destroyed between the find and now (a concurrent retire or a lost rotation).
            Err(e) if handle_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        match parse_label(&label) {
            Label::Kek(v) => out.committed.entry(v).or_default().push(KeyObj { id, handle }),
            Label::Pending(v) => out.pending.push((v, KeyObj { id, handle })),
            Label::Retired(_) | Label::Other => {}
        }
    }
    let data = session.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(APP.to_vec()),
    ])?;
    for handle in data {
        let attrs = match session.get_attributes(handle, &[AttributeType::Label, AttributeType::Value]) {
            Ok(a) => a,
            Err(e) if handle_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let mut label = String::new();
        let mut value = Vec::new();
        for a in attrs {
            match a {
                Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        if let Label::Retired(v) = parse_label(&label) {
            out.retired.insert(v, created_at_of(&value));
        }
    }
    Ok(out)
}

/// The keyring ids stored in the token (normally one).
fn read_keyring_ids(session: &Session) -> std::result::Result<Vec<u32>, CkError> {
    let mut ids = Vec::new();
    for h in session.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(KEYRING_ID_LABEL.as_bytes().to_vec()),
    ])? {
        if let Some(v) = bytes_attr(session, h, AttributeType::Value)? {
            if let Ok(b) = <[u8; 4]>::try_from(v.as_slice()) {
                let id = u32::from_be_bytes(b);
                if id != 0 {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

/// The root secret with the smallest `CKA_ID`, if any.
fn find_root(session: &Session) -> std::result::Result<Option<ObjectHandle>, CkError> {
    let mut best: Option<(Vec<u8>, ObjectHandle)> = None;
    for h in session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Label(ROOT_LABEL.as_bytes().to_vec()),
    ])? {
        let id = bytes_attr(session, h, AttributeType::Id)?.unwrap_or_default();
        if best.as_ref().is_none_or(|(b, _)| id < *b) {
            best = Some((id, h));
        }
    }
    Ok(best.map(|(_, h)| h))
}

fn find_shred(session: &Session, id: ShredId) -> std::result::Result<Vec<ObjectHandle>, CkError> {
    session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Label(shred_label(id).into_bytes()),
    ])
}

impl Pkcs11Provider {
    /// Opens the token and creates whatever part of the keyring is missing (keyring id, root secret,
    /// KEK v1): the first start on an empty token initialises it. See the module docs.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        Self::open_inner(config, true)
    }

    /// Opens a token that already holds a complete skygate keyring; creates nothing.
    pub fn open_existing(config: Pkcs11Config) -> Result<Self> {
        Self::open_inner(config, false)
    }

    /// The label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// The slot id of the token in use.
    pub fn slot_id(&self) -> u64 {
        self.slot.id()
    }

    fn open_inner(config: Pkcs11Config, create: bool) -> Result<Self> {
        let ctx = context_for(&config.module)?;
        let (slot, token_label) = find_slot(&ctx, &config)?;
        check_mechanisms(&ctx, slot, &token_label)?;
        let pin = AuthPin::from(config.pin.expose().to_string());
        let first = open_session(&ctx, slot, &pin).map_err(|e| match e {
            CkError::Pkcs11(_, cryptoki::context::Function::Login) => login_error(&e),
            e => CryptoError::Provider(format!(
                "PKCS#11 token \"{token_label}\": C_OpenSession failed: {}",
                describe(&e)
            )),
        })?;
        let rng = SystemRandom::new();

        let mut ids = locked_read(|| read_keyring_ids(&first)).map_err(op_error("reading the keyring id"))?;
        if ids.is_empty() && create {
            let id = loop {
                let mut b = [0u8; 4];
                rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
                let id = u32::from_be_bytes(b);
                if id != 0 {
                    break id;
                }
            };
            let writing = token_writes();
            first
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Modifiable(false),
                    Attribute::Application(APP.to_vec()),
                    Attribute::Label(KEYRING_ID_LABEL.as_bytes().to_vec()),
                    Attribute::Value(id.to_be_bytes().to_vec()),
                ])
                .map_err(op_error("creating the keyring id"))?;
            drop(writing);
            // Another process may have created one at the same time: everybody takes the smallest.
            ids = locked_read(|| read_keyring_ids(&first)).map_err(op_error("reading the keyring id"))?;
        }
        let Some(keyring_id) = ids.into_iter().min() else {
            return Err(CryptoError::Provider(format!(
                "PKCS#11 token \"{token_label}\" holds no skygate keyring (no {KEYRING_ID_LABEL} object); \
                 initialise it first (Pkcs11Provider::open creates the keyring on first start)"
            )));
        };

        let provider = Pkcs11Provider {
            ctx,
            module: config.module,
            slot,
            token_label,
            pin,
            pool: Mutex::new(vec![first]),
            keyring_id,
            keks: RwLock::new(BTreeMap::new()),
            root: RwLock::new(None),
            shreds: RwLock::new(HashMap::new()),
            rng,
        };

        let mut root = provider
            .with_read_session(find_root)
            .map_err(op_error("looking up the root secret"))?;
        if root.is_none() && create {
            let id = provider.object_id()?;
            provider
                .with_write_session(|s| {
                    s.generate_key(
                        &Mechanism::GenericSecretKeyGen,
                        &key_template(KeyType::GENERIC_SECRET, ROOT_LABEL, &id, &mac_usage()),
                    )
                })
                .map_err(op_error("generating the root secret"))?;
            root = provider
                .with_read_session(find_root)
                .map_err(op_error("looking up the root secret"))?;
        }
        let Some(root) = root else {
            return Err(CryptoError::Provider(format!(
                "PKCS#11 token \"{}\" holds no skygate root secret ({ROOT_LABEL})",
                provider.token_label
            )));
        };
        *provider.root.write().map_err(|_| poisoned())? = Some(root);

        provider.refresh()?;
        if provider.current_version() == 0 {
            if !create {
                return Err(CryptoError::Provider(format!(
                    "PKCS#11 token \"{}\" holds no active key-encryption key",
                    provider.token_label
                )));
            }
            provider.rotate()?;
        }
        Ok(provider)
    }

    /// `created_at ‖ 8 random bytes`, the `CKA_ID` of a new key.
    fn object_id(&self) -> Result<Vec<u8>> {
        let mut r = [0u8; 8];
        self.rng.fill(&mut r).map_err(|_| CryptoError::Random)?;
        let mut id = now_secs().to_be_bytes().to_vec();
        id.extend_from_slice(&r);
        Ok(id)
    }

    fn checkout(&self) -> std::result::Result<Session, CkError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        match pooled {
            Some(s) => Ok(s),
            None => open_session(&self.ctx, self.slot, &self.pin),
        }
    }

    fn give_back(&self, session: Session) {
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < MAX_IDLE_SESSIONS {
                pool.push(session);
            }
        }
    }

    /// Runs `f` on a pooled session. A session that died is dropped and `f` runs once more on a new one.
    fn with_session<T>(
        &self,
        mut f: impl FnMut(&Session) -> std::result::Result<T, CkError>,
    ) -> std::result::Result<T, CkError> {
        let mut retried = false;
        loop {
            let session = self.checkout()?;
            match f(&session) {
                Err(e) if session_broken(&e) => {
                    drop(session);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                other => {
                    self.give_back(session);
                    return other;
                }
            }
        }
    }

    /// [`Self::with_session`] for a search, sharing the turn with other searches (see [`TOKEN_OBJECTS`]).
    fn with_read_session<T>(
        &self,
        f: impl FnMut(&Session) -> std::result::Result<T, CkError>,
    ) -> std::result::Result<T, CkError> {
        let _turn = token_reads();
        self.with_session(f)
    }

    /// [`Self::with_session`] for a token-object write, taking its turn alone (see [`TOKEN_OBJECTS`]).
    fn with_write_session<T>(
        &self,
        f: impl FnMut(&Session) -> std::result::Result<T, CkError>,
    ) -> std::result::Result<T, CkError> {
        let _turn = token_writes();
        self.with_session(f)
    }

    fn wrap_aad(&self, version: u32) -> Vec<u8> {
        let mut v = WRAP_DOMAIN.to_vec();
        v.extend_from_slice(&self.keyring_id.to_be_bytes());
        v.extend_from_slice(&version.to_be_bytes());
        v
    }

    /// The current version and the key that wraps under it.
    fn current_key(&self) -> Result<(u32, ObjectHandle)> {
        let keks = self.keks.read().map_err(|_| poisoned())?;
        keks.iter()
            .rev()
            .find_map(|(v, k)| k.keys.first().map(|o| (*v, o.handle)))
            .ok_or(CryptoError::UnknownVersion(0))
    }

    fn keys_of(&self, version: u32) -> Result<Vec<ObjectHandle>> {
        let keks = self.keks.read().map_err(|_| poisoned())?;
        match keks.get(&version) {
            Some(k) if !k.keys.is_empty() => Ok(k.keys.iter().map(|o| o.handle).collect()),
            _ => Err(CryptoError::UnknownVersion(version)),
        }
    }

    fn wrap_once(
        &self,
        version: u32,
        key: ObjectHandle,
        dek: &Dek,
    ) -> std::result::Result<Vec<u8>, WrapFail> {
        let mut iv = [0u8; IV_LEN];
        self.rng
            .fill(&mut iv)
            .map_err(|_| WrapFail::Crypto(CryptoError::Random))?;
        let aad = self.wrap_aad(version);
        let body = self
            .with_session(|s| {
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, &aad, (TAG_LEN as u64 * 8).into())?;
                s.encrypt(&Mechanism::AesGcm(params), key, dek.expose())
            })
            .map_err(WrapFail::Ck)?;
        if body.len() != Dek::LEN + TAG_LEN {
            return Err(WrapFail::Crypto(CryptoError::Provider(format!(
                "PKCS#11 AES-GCM returned {} bytes, expected {}",
                body.len(),
                Dek::LEN + TAG_LEN
            ))));
        }
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Tries each key of `version`; `Ok(None)` when none of them authenticates the bytes.
    fn unwrap_with(
        &self,
        version: u32,
        keys: &[ObjectHandle],
        wrapped: &[u8],
    ) -> std::result::Result<Option<Dek>, CkError> {
        let (iv, body) = wrapped.split_at(IV_LEN);
        let aad = self.wrap_aad(version);
        for key in keys {
            let plain = self.with_session(|s| {
                let mut iv_param = [0u8; IV_LEN];
                iv_param.copy_from_slice(iv);
                let params = GcmParams::new(&mut iv_param, &aad, (TAG_LEN as u64 * 8).into())?;
                s.decrypt(&Mechanism::AesGcm(params), *key, body)
                    .map(Zeroizing::new)
            });
            match plain {
                Ok(p) => return Ok(Dek::from_slice(&p).ok()),
                Err(e) if decrypt_rejected(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn root_handle(&self) -> Result<ObjectHandle> {
        if let Some(h) = *self.root.read().map_err(|_| poisoned())? {
            return Ok(h);
        }
        let h = self
            .with_read_session(find_root)
            .map_err(op_error("looking up the root secret"))?
            .ok_or_else(|| {
                CryptoError::Provider(format!(
                    "PKCS#11 token \"{}\" no longer holds the root secret ({ROOT_LABEL})",
                    self.token_label
                ))
            })?;
        *self.root.write().map_err(|_| poisoned())? = Some(h);
        Ok(h)
    }

    fn hmac(&self, key: ObjectHandle, parts: &[&[u8]]) -> std::result::Result<[u8; 32], CkError> {
        let mut data = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
        for p in parts {
            data.extend_from_slice(p);
        }
        let mac = Zeroizing::new(self.with_session(|s| s.sign(&Mechanism::Sha256Hmac, key, &data))?);
        <[u8; 32]>::try_from(mac.as_slice()).map_err(|_| CkError::InvalidValue)
    }

    fn shred_handle(&self, id: ShredId) -> Result<Option<ObjectHandle>> {
        if let Some(h) = self.shreds.read().map_err(|_| poisoned())?.get(&id) {
            return Ok(Some(*h));
        }
        let found = self
            .with_read_session(|s| find_shred(s, id))
            .map_err(op_error("looking up a shred key"))?;
        let Some(h) = found.first().copied() else {
            return Ok(None);
        };
        self.shreds.write().map_err(|_| poisoned())?.insert(id, h);
        Ok(Some(h))
    }

    /// Step 3 of rotation (module docs): whether the pending key `id` may take `version`. Waits while it
    /// is the smallest of several live contenders, so that the others back off and it can go ahead.
    fn claim(&self, version: u32, id: &[u8]) -> Result<bool> {
        for _ in 0..CLAIM_WAITS {
            let seen = self
                .with_read_session(scan)
                .map_err(op_error("listing key-encryption keys"))?;
            if seen.committed.contains_key(&version) || seen.retired.contains_key(&version) {
                return Ok(false);
            }
            let now = now_secs();
            let mut others = seen.pending.iter().filter(|(v, o)| {
                *v == version && o.id != id && now.saturating_sub(created_at_of(&o.id)) < PENDING_STALE_SECS
            });
            match others.next() {
                None => return Ok(true),
                Some(first) => {
                    if first.1.id.as_slice() < id || others.any(|(_, o)| o.id.as_slice() < id) {
                        return Ok(false);
                    }
                }
            }
            // The smallest contender: give the others a moment to see it and back off.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(false)
    }

    /// One rotation attempt: `Ok(None)` when it lost to a concurrent rotation and should start again.
    fn try_rotate(&self) -> Result<Option<u32>> {
        let version = self
            .with_read_session(scan)
            .map_err(op_error("listing key-encryption keys"))?
            .highest_version()
            .checked_add(1)
            .ok_or_else(|| CryptoError::Refused("key-encryption key versions exhausted".into()))?;
        let id = self.object_id()?;
        let pending = format!("{}{PENDING_SUFFIX}", kek_label(version));
        let handle = self
            .with_write_session(|s| {
                s.generate_key(
                    &Mechanism::AesKeyGen,
                    &key_template(KeyType::AES, &pending, &id, &kek_usage()),
                )
            })
            .map_err(op_error("generating a key-encryption key"))?;
        match self.claim(version, &id) {
            Ok(true) => {}
            outcome => {
                self.with_write_session(|s| match s.destroy_object(handle) {
                    Err(e) if handle_gone(&e) => Ok(()),
                    other => other,
                })
                .map_err(op_error("destroying a pending key-encryption key"))?;
                return outcome.map(|_| None);
            }
        }
        self.with_write_session(|s| {
            s.update_attributes(handle, &[Attribute::Label(kek_label(version).into_bytes())])
        })
        .map_err(op_error("committing a key-encryption key"))?;
        Ok(Some(version))
    }
}

/// Why one wrap attempt failed.
enum WrapFail {
    Ck(CkError),
    Crypto(CryptoError),
}

fn poisoned() -> CryptoError {
    CryptoError::Provider("PKCS#11 provider lock poisoned".into())
}

/// A new read/write session, logged in as the user. Login is per token for the whole process, so a
/// session opened while another is logged in is already logged in.
fn open_session(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> std::result::Result<Session, CkError> {
    let session = ctx.open_rw_session(slot)?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(e),
    }
}

impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn keyring_id(&self) -> u32 {
        self.keyring_id
    }

    fn current_version(&self) -> u32 {
        self.current_key().map_or(0, |(v, _)| v)
    }

    fn versions(&self) -> Result<Vec<KekInfo>> {
        let keks = self.keks.read().map_err(|_| poisoned())?;
        Ok(keks
            .iter()
            .map(|(v, k)| KekInfo {
                version: *v,
                created_at: k.created_at,
                state: if k.keys.is_empty() {
                    KekState::Retired
                } else {
                    KekState::Active
                },
            })
            .collect())
    }

    fn wrap(&self, dek: &Dek) -> Result<(u32, Vec<u8>)> {
        let (version, key) = self.current_key()?;
        match self.wrap_once(version, key, dek) {
            Ok(w) => Ok((version, w)),
            Err(WrapFail::Ck(e)) if handle_gone(&e) => {
                // The cached handle went stale (the token was re-enumerated or the key retired
                // elsewhere): look again once.
                self.refresh()?;
                let (version, key) = self.current_key()?;
                match self.wrap_once(version, key, dek) {
                    Ok(w) => Ok((version, w)),
                    Err(WrapFail::Ck(e)) => Err(op_error("wrapping a data key")(e)),
                    Err(WrapFail::Crypto(e)) => Err(e),
                }
            }
            Err(WrapFail::Ck(e)) => Err(op_error("wrapping a data key")(e)),
            Err(WrapFail::Crypto(e)) => Err(e),
        }
    }

    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<Dek> {
        let keys = self.keys_of(version)?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(CryptoError::Authentication);
        }
        let result = match self.unwrap_with(version, &keys, wrapped) {
            Err(e) if handle_gone(&e) => {
                self.refresh()?;
                let keys = self.keys_of(version)?;
                self.unwrap_with(version, &keys, wrapped)
            }
            other => other,
        };
        match result {
            Ok(Some(dek)) => Ok(dek),
            Ok(None) => Err(CryptoError::Authentication),
            Err(e) if handle_gone(&e) => Err(CryptoError::UnknownVersion(version)),
            Err(e) => Err(op_error("unwrapping a data key")(e)),
        }
    }

    fn rotate(&self) -> Result<u32> {
        for attempt in 0..ROTATE_ATTEMPTS {
            if let Some(version) = self.try_rotate()? {
                self.refresh()?;
                return Ok(version);
            }
            // Collided with a concurrent rotation: back off a random 1–40 ms, growing with the attempt,
            // so that one of the contenders finds the field clear next time.
            let mut b = [0u8; 1];
            self.rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
            let ms = 1 + u64::from(b[0]) % 40;
            std::thread::sleep(Duration::from_millis(ms * (attempt.min(4) as u64 + 1)));
        }
        Err(CryptoError::Provider(format!(
            "PKCS#11 rotate: lost {ROTATE_ATTEMPTS} times in a row to concurrent rotations"
        )))
    }

    fn retire(&self, version: u32) -> Result<()> {
        self.refresh()?;
        if version == self.current_version() {
            return Err(CryptoError::Refused(format!(
                "version {version} is the current key-encryption key; rotate first"
            )));
        }
        let created_at = {
            let keks = self.keks.read().map_err(|_| poisoned())?;
            match keks.get(&version) {
                None => return Err(CryptoError::UnknownVersion(version)),
                Some(k) if k.keys.is_empty() => return Ok(()),
                Some(k) => k.created_at,
            }
        };
        // Tombstone first: a crash before the keys are destroyed still leaves the version retired (and
        // retiring again destroys what is left).
        self.with_write_session(|s| {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Application(APP.to_vec()),
                Attribute::Modifiable(false),
                Attribute::Label(format!("{}{RETIRED_SUFFIX}", kek_label(version)).into_bytes()),
                Attribute::Value(created_at.to_be_bytes().to_vec()),
            ])
        })
        .map_err(op_error("recording a retired key-encryption key"))?;
        self.with_write_session(|s| {
            for h in s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(kek_label(version).into_bytes()),
            ])? {
                match s.destroy_object(h) {
                    Ok(()) => {}
                    Err(e) if handle_gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .map_err(op_error("destroying a key-encryption key"))?;
        self.refresh()
    }

    fn refresh(&self) -> Result<()> {
        let found = self
            .with_read_session(scan)
            .map_err(op_error("listing key-encryption keys"))?;
        // Tombstoned versions whose keys are still there (a retire interrupted by a crash) count as
        // retired, as the tombstone says.
        let keks = found.into_keks();
        *self.keks.write().map_err(|_| poisoned())? = keks;
        Ok(())
    }

    fn derive_secret(&self, purpose: &str) -> Result<Secret32> {
        let root = self.root_handle()?;
        let mac = match self.hmac(root, &[DERIVE_DOMAIN, purpose.as_bytes()]) {
            Err(e) if handle_gone(&e) => {
                *self.root.write().map_err(|_| poisoned())? = None;
                let root = self.root_handle()?;
                self.hmac(root, &[DERIVE_DOMAIN, purpose.as_bytes()])
            }
            other => other,
        }
        .map_err(op_error("deriving a secret"))?;
        Ok(Secret32::from_bytes(mac))
    }

    fn create_shred_key(&self) -> Result<ShredId> {
        let id = loop {
            let mut b = [0u8; 8];
            self.rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
            let id = u64::from_be_bytes(b);
            if id != 0 {
                break id;
            }
        };
        let object_id = self.object_id()?;
        let label = shred_label(id);
        let handle = self
            .with_write_session(|s| {
                s.generate_key(
                    &Mechanism::GenericSecretKeyGen,
                    &key_template(KeyType::GENERIC_SECRET, &label, &object_id, &mac_usage()),
                )
            })
            .map_err(op_error("generating a shred key"))?;
        self.shreds.write().map_err(|_| poisoned())?.insert(id, handle);
        Ok(id)
    }

    fn shred_mix(&self, id: ShredId, dek: &Dek) -> Result<Dek> {
        let Some(key) = self.shred_handle(id)? else {
            return Err(CryptoError::Shredded(id));
        };
        let mac = match self.hmac(key, &[SHRED_DOMAIN, dek.expose()]) {
            Err(e) if handle_gone(&e) => {
                // Destroyed by another provider or process: forget it and look once more.
                self.shreds.write().map_err(|_| poisoned())?.remove(&id);
                let Some(key) = self.shred_handle(id)? else {
                    return Err(CryptoError::Shredded(id));
                };
                self.hmac(key, &[SHRED_DOMAIN, dek.expose()])
            }
            other => other,
        };
        match mac {
            Ok(m) => Ok(Dek::from_bytes(m)),
            Err(e) if handle_gone(&e) => Err(CryptoError::Shredded(id)),
            Err(e) => Err(op_error("mixing a shred key")(e)),
        }
    }

    fn destroy_shred_key(&self, id: ShredId) -> Result<()> {
        self.shreds.write().map_err(|_| poisoned())?.remove(&id);
        self.with_write_session(|s| {
            for h in find_shred(s, id)? {
                match s.destroy_object(h) {
                    Ok(()) => {}
                    Err(e) if handle_gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .map_err(op_error("destroying a shred key"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_strictly() {
        assert!(matches!(parse_label("skygate-kek-v3"), Label::Kek(3)));
        assert!(matches!(
            parse_label("skygate-kek-v12-pending"),
            Label::Pending(12)
        ));
        assert!(matches!(parse_label("skygate-kek-v7-retired"), Label::Retired(7)));
        for other in [
            "skygate-kek-v0",
            "skygate-kek-v03",
            "skygate-kek-v+3",
            "skygate-kek-v",
            "skygate-root",
            "x",
        ] {
            assert!(matches!(parse_label(other), Label::Other), "{other}");
        }
        assert_eq!(shred_label(0xab), "skygate-shred-00000000000000ab");
    }

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(&RvError::KeyHandleInvalid), "CKR_KEY_HANDLE_INVALID");
    }

    #[test]
    fn pin_and_config_debug_redact() {
        let config = Pkcs11Config {
            module: "/nope.so".into(),
            slot: None,
            token_label: Some("t".into()),
            pin: Pkcs11Pin::new("hunter2-secret"),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn missing_module_is_named() {
        let err = Pkcs11Provider::open(Pkcs11Config {
            module: "/nonexistent/libnope-pkcs11.so".into(),
            slot: None,
            token_label: None,
            pin: Pkcs11Pin::new("1234"),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/libnope-pkcs11.so"), "{err}");
        assert!(err.contains("not found"), "{err}");
    }

    #[test]
    fn created_at_round_trips() {
        let mut id = 1_700_000_000i64.to_be_bytes().to_vec();
        id.extend_from_slice(&[9; 8]);
        assert_eq!(created_at_of(&id), 1_700_000_000);
        assert_eq!(created_at_of(&[1, 2]), 0);
    }
}

//! The local keyring: the conformance suite over a temporary keyring directory, then what only a keyring
//! on disk has to promise (reopening, the master key, tampered or loose files, concurrent writers, and
//! surviving SIGKILL at any instant).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use skygate_crypto::local::{LocalKeyring, MasterKey};
use skygate_crypto::{Cipher, CryptoError, Dek, KekState, KeyProvider};

use crate::suite;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn master(b: u8) -> MasterKey {
    MasterKey::from_base64(&b64(&[b; 32])).unwrap()
}

/// A temporary keyring directory; `open` makes (first time) or opens a keyring in it.
struct Ring {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Ring {
    fn new() -> Ring {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keyring");
        Ring { _tmp: tmp, dir }
    }

    fn open(&self) -> Arc<dyn KeyProvider> {
        Arc::new(LocalKeyring::open_or_create(&self.dir, master(1)).unwrap().0)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Key files whose name starts with `prefix` (any directory level).
    fn named(&self, prefix: &str) -> Vec<PathBuf> {
        self.files()
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect()
    }
}

#[test]
fn local_wrap_unwrap_roundtrip() {
    let r = Ring::new();
    suite::wrap_unwrap_roundtrip(&|| r.open());
    assert_eq!(r.open().kind(), "local");
}

#[test]
fn local_rotate_keeps_old_versions() {
    let r = Ring::new();
    suite::rotate_keeps_old_versions(&|| r.open());
}

#[test]
fn local_retire_refuses_current_then_destroys() {
    let r = Ring::new();
    suite::retire_refuses_current_then_destroys(&|| r.open());
}

#[test]
fn local_refresh_sees_another_instance() {
    let r = Ring::new();
    suite::refresh_sees_another_instance(&|| r.open());
}

#[test]
fn local_derive_secret_stable_and_distinct() {
    let r = Ring::new();
    suite::derive_secret_stable_and_distinct(&|| r.open());
    let other = Ring::new();
    assert_ne!(
        other.open().derive_secret("api-key-pepper").unwrap(),
        r.open().derive_secret("api-key-pepper").unwrap(),
        "another keyring, another secret"
    );
}

#[test]
fn local_shred_keys() {
    let r = Ring::new();
    suite::shred_keys(&|| r.open());
}

#[test]
fn local_rewrap_moves_to_current() {
    let r = Ring::new();
    suite::rewrap_moves_to_current(&|| r.open());
}

#[test]
fn local_concurrent_rotations_are_distinct() {
    let r = Ring::new();
    suite::concurrent_rotations_are_distinct(&|| r.open(), 4, 5);
}

#[test]
fn local_one_instance_many_threads() {
    let r = Ring::new();
    suite::one_instance_many_threads(&|| r.open());
}

#[test]
fn local_create_then_reopen_after_rotation() {
    let r = Ring::new();
    let (ring, created) = LocalKeyring::open_or_create(&r.dir, master(1)).unwrap();
    assert!(created);
    let ring = Arc::new(ring);
    let c = Cipher::new(ring.clone());
    let v1 = c.seal(b"one", &suite::place("p_1")).unwrap();
    assert_eq!(ring.rotate().unwrap(), 2);
    assert_eq!(ring.rotate().unwrap(), 3);
    ring.retire(2).unwrap();
    let v3 = c.seal(b"three", &suite::place("p_3")).unwrap();
    let pepper = ring.derive_secret("pepper").unwrap();
    let id = ring.keyring_id();
    let versions = ring.versions().unwrap();
    drop((c, ring));

    let (_, created) = LocalKeyring::open_or_create(&r.dir, master(1)).unwrap();
    assert!(!created);
    let again = Arc::new(LocalKeyring::open(&r.dir, master(1)).unwrap());
    assert_eq!(again.keyring_id(), id);
    assert_eq!(again.current_version(), 3);
    assert_eq!(again.versions().unwrap(), versions);
    assert_eq!(
        again
            .versions()
            .unwrap()
            .iter()
            .map(|k| (k.version, k.state))
            .collect::<Vec<_>>(),
        vec![
            (1, KekState::Active),
            (2, KekState::Retired),
            (3, KekState::Active)
        ]
    );
    assert_eq!(again.derive_secret("pepper").unwrap(), pepper);
    let c = Cipher::new(again);
    assert_eq!(&c.open(&v1, &suite::place("p_1")).unwrap()[..], b"one");
    assert_eq!(&c.open(&v3, &suite::place("p_3")).unwrap()[..], b"three");
}

#[test]
fn local_open_never_creates() {
    let r = Ring::new();
    let e = LocalKeyring::open(&r.dir, master(1)).unwrap_err().to_string();
    assert!(e.contains(&r.dir.display().to_string()), "{e}");
    assert!(!r.dir.exists(), "open made {}", r.dir.display());
    // An empty directory is no keyring either.
    fs::create_dir(&r.dir).unwrap();
    fs::set_permissions(&r.dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(LocalKeyring::open(&r.dir, master(1)).is_err());
    assert!(r.files().is_empty(), "{:?}", r.files());
}

#[test]
fn local_created_with_private_modes() {
    let r = Ring::new();
    let ring = r.open();
    ring.rotate().unwrap();
    ring.create_shred_key().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&r.dir), 0o700);
    for f in r.files() {
        assert_eq!(mode(&f) & 0o077, 0, "{}", f.display());
    }
}

#[test]
fn local_wrong_master_key_is_refused_clearly() {
    let r = Ring::new();
    r.open().rotate().unwrap();
    let wrong = [0x42u8; 32];
    let e = LocalKeyring::open(&r.dir, MasterKey::from_base64(&b64(&wrong)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "the master key does not open keyring {}",
            r.dir.display()
        )),
        "{e}"
    );
    assert!(e.contains("SKYGATE_MASTER_KEY"), "{e}");
    assert!(!e.contains(&b64(&wrong)) && !e.contains(&b64(&[1; 32])), "{e}");
    let e = LocalKeyring::open_or_create(&r.dir, MasterKey::from_base64(&b64(&wrong)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("the master key does not open keyring"), "{e}");
    // The right key still opens it: nothing was changed by the failed attempts.
    assert_eq!(r.open().current_version(), 2);
}

/// Flips one byte of `path`, expects opening (or `check`) to fail naming the file, then restores it.
fn refused_naming(r: &Ring, path: &Path, check: &dyn Fn() -> Result<(), CryptoError>) {
    let good = fs::read(path).unwrap();
    for at in [0, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        fs::write(path, &bad).unwrap();
        let e = check().expect_err("a tampered key file was accepted").to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(e.contains(&*name), "byte {at} of {name}: {e}");
    }
    fs::write(path, &good).unwrap();
    check().unwrap();
    assert!(r.dir.exists());
}

#[test]
fn local_tampered_key_files_are_refused_naming_the_file() {
    let r = Ring::new();
    let ring = r.open();
    ring.rotate().unwrap();
    let shred = ring.create_shred_key().unwrap();
    drop(ring);
    let open = || LocalKeyring::open(&r.dir, master(1)).map(|_| ());
    let keks = r.named("kek-");
    assert_eq!(keks.len(), 2, "{:?}", r.files());
    for kek in &keks {
        refused_naming(&r, kek, &open);
    }
    // The shred key file fails when used, naming the file, never as "shredded".
    let shreds: Vec<PathBuf> = r
        .files()
        .into_iter()
        .filter(|p| p.parent().unwrap() != r.dir)
        .collect();
    assert_eq!(shreds.len(), 1, "{:?}", r.files());
    let use_shred = || {
        let ring = LocalKeyring::open(&r.dir, master(1))?;
        ring.shred_mix(shred, &Dek::from_bytes([3; 32])).map(|_| ())
    };
    refused_naming(&r, &shreds[0], &use_shred);
}

#[test]
fn local_swapped_or_foreign_key_files_are_refused() {
    let r = Ring::new();
    let ring = r.open();
    ring.rotate().unwrap();
    drop(ring);
    let open = || LocalKeyring::open(&r.dir, master(1)).map(|_| ());
    let keks = r.named("kek-");
    assert_eq!(keks.len(), 2);
    let (a, b) = (fs::read(&keks[0]).unwrap(), fs::read(&keks[1]).unwrap());
    // Swapped versions.
    fs::write(&keks[0], &b).unwrap();
    fs::write(&keks[1], &a).unwrap();
    assert!(open().is_err());
    fs::write(&keks[0], &a).unwrap();
    fs::write(&keks[1], &b).unwrap();
    open().unwrap();

    // A version file from another keyring sealed by the same master key.
    let other = Ring::new();
    other.open().rotate().unwrap();
    let theirs = other.named("kek-");
    fs::write(&keks[1], fs::read(&theirs[1]).unwrap()).unwrap();
    let e = open().unwrap_err().to_string();
    assert!(
        e.contains(&*keks[1].file_name().unwrap().to_string_lossy()),
        "{e}"
    );
}

#[test]
fn local_loose_permissions_are_refused() {
    let r = Ring::new();
    r.open().rotate().unwrap();
    let open = || LocalKeyring::open(&r.dir, master(1)).map(|_| ());
    let kek = r.named("kek-").pop().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&kek, fs::Permissions::from_mode(mode)).unwrap();
        let e = open().unwrap_err().to_string();
        assert!(e.contains(&kek.display().to_string()), "{mode:o}: {e}");
        assert!(e.contains("chmod 600"), "{mode:o}: {e}");
    }
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();
    open().unwrap();
    fs::set_permissions(&r.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let e = open().unwrap_err().to_string();
    assert!(e.contains("chmod 700"), "{e}");
    let e = LocalKeyring::open_or_create(&r.dir, master(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chmod 700"), "{e}");
    fs::set_permissions(&r.dir, fs::Permissions::from_mode(0o700)).unwrap();
    open().unwrap();
}

#[test]
fn local_master_key_from_base64() {
    let key = [7u8; 32];
    let ring = Ring::new();
    let (first, _) =
        LocalKeyring::open_or_create(&ring.dir, MasterKey::from_base64(&b64(&key)).unwrap()).unwrap();
    drop(first);
    for text in [
        b64(&key),
        format!("  {}\n", b64(&key)),
        b64(&key).trim_end_matches('=').to_string(),
    ] {
        LocalKeyring::open(&ring.dir, MasterKey::from_base64(&text).unwrap()).unwrap();
    }
    for (bad, what) in [
        (b64(&[7u8; 31]), "32 bytes"),
        (b64(&[7u8; 33]), "32 bytes"),
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQ*".to_string(), "base64"),
        (String::new(), ""),
    ] {
        let e = MasterKey::from_base64(&bad).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
        if !bad.is_empty() {
            assert!(!e.contains(&bad), "the error echoes the input: {e}");
        }
    }
    assert_eq!(format!("{:?}", master(9)), "MasterKey(<redacted>)");
}

#[test]
fn local_master_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("master.key");
    let (m, created) = MasterKey::load_or_create_file(&path).unwrap();
    assert!(created);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let dir = tmp.path().join("keyring");
    LocalKeyring::open_or_create(&dir, m).unwrap();
    let (m, created) = MasterKey::load_or_create_file(&path).unwrap();
    assert!(!created);
    LocalKeyring::open(&dir, m).expect("the same key is loaded back");

    // Readable by others: refused with a hint, not read.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = MasterKey::load_or_create_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("chmod 600") && e.contains(&path.display().to_string()),
        "{e}"
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    // The wrong length: refused, content not echoed, file left alone.
    let good = fs::read(&path).unwrap();
    fs::write(&path, b"secret-secret").unwrap();
    let e = MasterKey::load_or_create_file(&path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && !e.contains("secret-secret"),
        "{e}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"secret-secret");
    fs::write(&path, &good).unwrap();
    assert!(!MasterKey::load_or_create_file(&path).unwrap().1);
}

#[test]
fn local_master_key_file_racing_creators_agree() {
    for _ in 0..10 {
        let tmp = tempfile::tempdir().unwrap();
        let path = Arc::new(tmp.path().join("master.key"));
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    MasterKey::load_or_create_file(&path).unwrap()
                })
            })
            .collect();
        let keys: Vec<(MasterKey, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(keys.iter().filter(|(_, c)| *c).count(), 1, "exactly one creator");
        // Every key opens the keyring made with the first one.
        let dir = tmp.path().join("keyring");
        let mut keys = keys.into_iter();
        LocalKeyring::open_or_create(&dir, keys.next().unwrap().0).unwrap();
        for (k, _) in keys {
            LocalKeyring::open(&dir, k).unwrap();
        }
    }
}

#[test]
fn local_racing_creators_make_one_keyring() {
    let r = Ring::new();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (dir, barrier) = (r.dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let (ring, created) = LocalKeyring::open_or_create(&dir, master(1)).unwrap();
                (ring.keyring_id(), created, ring.current_version())
            })
        })
        .collect();
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got.iter().filter(|g| g.1).count(), 1, "{got:?}");
    assert!(got.iter().all(|g| g.0 == got[0].0 && g.2 == 1), "{got:?}");
}

// ---- SIGKILL at any instant -------------------------------------------------------------------------

const CRASH_CHILD: &str = "SKYGATE_LOCAL_KEYRING_CRASH_CHILD";
const DEK: [u8; 32] = [0x5e; 32];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Not a test of its own: the process [`local_sigkill_at_any_instant_loses_nothing`] kills. With
/// [`CRASH_CHILD`] naming a keyring directory, rotates, retires and creates shred keys in a loop until
/// killed, printing each operation after it returned (and each retirement before it starts).
#[test]
fn local_crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD) else {
        return;
    };
    let ring = LocalKeyring::open_or_create(Path::new(&dir), master(1))
        .unwrap()
        .0;
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    // libtest has printed "test local::local_crash_child ... " without a newline: start a fresh line.
    say("\nREADY".into());
    let dek = Dek::from_bytes(DEK);
    // Never outlive a parent that failed to kill us (a broken pipe also ends us, at the next line).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0u64.. {
        if std::time::Instant::now() > deadline {
            return;
        }
        match i % 3 {
            0 => {
                let v = ring.rotate().unwrap();
                let (wv, w) = ring.wrap(&dek).unwrap();
                assert_eq!(wv, v);
                say(format!("ROTATED {v} {}", hex(&w)));
            }
            1 => {
                let versions = ring.versions().unwrap();
                let current = ring.current_version();
                if let Some(k) = versions
                    .iter()
                    .find(|k| k.state == KekState::Active && k.version != current)
                {
                    say(format!("RETIRING {}", k.version));
                    ring.retire(k.version).unwrap();
                    say(format!("RETIRED {}", k.version));
                }
            }
            _ => {
                let id = ring.create_shred_key().unwrap();
                let mixed = ring.shred_mix(id, &dek).unwrap();
                say(format!("SHRED {id} {}", hex(mixed.expose())));
            }
        }
    }
}

fn random_below(rng: &SystemRandom, n: u64) -> u64 {
    let mut b = [0u8; 8];
    rng.fill(&mut b).unwrap();
    u64::from_be_bytes(b) % n
}

#[test]
fn local_sigkill_at_any_instant_loses_nothing() {
    let r = Ring::new();
    let first = r.open();
    let dek = Dek::from_bytes(DEK);
    let (v1, w1) = first.wrap(&dek).unwrap();
    drop(first);
    let rng = SystemRandom::new();
    let mut rotated: BTreeMap<u32, Vec<u8>> = BTreeMap::from([(v1, w1)]);
    let mut retiring = BTreeSet::new();
    let mut shreds = BTreeMap::new();
    let mut ops = 0;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local::local_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD, &r.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.by_ref().any(|l| l.unwrap() == "READY");
        assert!(ready, "round {round}: the child ended before it was ready");
        std::thread::sleep(Duration::from_micros(500 + random_below(&rng, 30_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        for l in lines {
            let l = l.unwrap();
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("ROTATED"), Some(v), Some(wrapped)) => {
                    rotated.insert(v.parse().unwrap(), unhex(wrapped));
                }
                (Some("RETIRING"), Some(v), None) => {
                    retiring.insert(v.parse::<u32>().unwrap());
                }
                (Some("RETIRED"), Some(_), None) => {}
                (Some("SHRED"), Some(id), Some(mixed)) => {
                    shreds.insert(id.parse::<u64>().unwrap(), unhex(mixed));
                }
                _ => continue,
            }
            ops += 1;
        }

        // Whatever the instant of the kill: the keyring opens, and everything reported is there.
        let ring = LocalKeyring::open(&r.dir, master(1))
            .unwrap_or_else(|e| panic!("round {round}: the keyring does not open: {e}"));
        let states: BTreeMap<u32, KekState> = ring
            .versions()
            .unwrap()
            .into_iter()
            .map(|k| (k.version, k.state))
            .collect();
        for (v, wrapped) in &rotated {
            match states.get(v) {
                Some(KekState::Active) => assert_eq!(ring.unwrap(*v, wrapped).unwrap(), dek),
                Some(KekState::Retired) if retiring.contains(v) => {}
                other => panic!("round {round}: version {v} is {other:?} ({states:?})"),
            }
        }
        assert!(
            states.keys().next_back() >= rotated.keys().next_back(),
            "round {round}: {states:?}"
        );
        assert_eq!(states.values().next_back(), Some(&KekState::Active));
        for (id, mixed) in &shreds {
            assert_eq!(ring.shred_mix(*id, &dek).unwrap().expose()[..], mixed[..]);
        }
    }
    assert!(ops > 0, "the child never got to do anything before it was killed");
    eprintln!(
        "{ops} operations reported across 8 killed runs; {} versions, {} shred keys",
        rotated.len(),
        shreds.len()
    );
    // And it still works.
    let ring = r.open();
    let v = ring.rotate().unwrap();
    assert!(v > *rotated.keys().next_back().unwrap());
    let c = Cipher::new(ring);
    let s = c.seal(b"after the crashes", &suite::place("p")).unwrap();
    assert_eq!(&c.open(&s, &suite::place("p")).unwrap()[..], b"after the crashes");
}

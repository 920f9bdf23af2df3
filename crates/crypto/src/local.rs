//! The `local` key provider: a keyring directory (`<data_dir>/keyring`, mode 0700) whose every key file
//! is sealed by a 256-bit master key kept elsewhere (`$SKYGATE_MASTER_KEY` or a 0600 `master.key`).
//!
//! ```text
//! keyring/
//!   keyring.id              the keyring id (8 hex digits; not secret)
//!   root.key                sealed root secret (derive_secret)
//!   kek-v000001.key         sealed KEK version 1: 32 key bytes ‖ created_at (i64 BE)
//!   kek-v000001.retired     tombstone of a retired version: created_at, no key
//!   shred/<16 hex>.key      sealed shred keys
//!   .lock                   serialises rotate/retire/create between processes (flock)
//! ```
//!
//! A key file is `"SGK1" ‖ nonce(12) ‖ AES-256-GCM(master, body) ‖ tag`, with the additional data
//! binding the keyring id, the file's role and its version or id, so files cannot be swapped or renamed.
//! Every write is atomic and durable (temporary file, fsync, rename, fsync of the directory), so a
//! SIGKILL at any instant leaves the keyring openable with every version it ever reported.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use ring::aead::{Aad, Nonce, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::gcm_key;
use crate::kekset::{derive, mix, new_shred_id, now_secs, Kek, KekSet};
use crate::{CryptoError, Dek, KeyProvider, Result, Secret32, ShredId};

const MAGIC: &[u8; 4] = b"SGK1";
const FILE_DOMAIN: &[u8] = b"skygate-local-file";

/// The master key that seals the keyring's files. Redacted `Debug`, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey(Dek);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CryptoError {
    CryptoError::Provider(format!("{what} {}: {e}", path.display()))
}

/// Refuses a path readable or writable by group or others.
fn check_private(path: &Path, dir: bool) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| io_err("cannot read", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::Provider(format!(
            "{} is accessible by other users (mode {mode:o}); run chmod {} on it",
            path.display(),
            if dir { "700" } else { "600" }
        )));
    }
    Ok(())
}

impl MasterKey {
    /// From base64 (standard or URL-safe alphabet, padding optional) of exactly 32 bytes. The error
    /// never repeats the input.
    pub fn from_base64(s: &str) -> Result<Self> {
        let s = s.trim();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for e in engines {
            if let Ok(bytes) = e.decode(s) {
                let bytes = Zeroizing::new(bytes);
                if bytes.len() == 32 {
                    return Ok(MasterKey(Dek::from_slice(&bytes)?));
                }
                return Err(CryptoError::Provider(format!(
                    "the master key must be base64 of 32 bytes, this decodes to {} bytes",
                    bytes.len()
                )));
            }
        }
        Err(CryptoError::Provider("the master key is not valid base64".into()))
    }

    /// Reads `path` (32 raw bytes, mode 0600), creating it with a new random key if it does not exist.
    /// Returns whether it was created (the caller tells the operator to back it up).
    pub fn load_or_create_file(path: &Path) -> Result<(Self, bool)> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                check_private(path, false)?;
                if bytes.len() != 32 {
                    return Err(CryptoError::Provider(format!(
                        "master key file {} is corrupt (expected 32 bytes, found {})",
                        path.display(),
                        bytes.len()
                    )));
                }
                Ok((MasterKey(Dek::from_slice(&bytes)?), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Dek::generate()?;
                // Written whole to a temporary file, then hard-linked into place: the link fails if
                // another process got there first (then its key is used), and no reader ever sees a
                // partly written key.
                let dir = path.parent().unwrap_or(Path::new("."));
                let mut rnd = [0u8; 8];
                SystemRandom::new()
                    .fill(&mut rnd)
                    .map_err(|_| CryptoError::Random)?;
                let tmp = dir.join(format!(".master-{:016x}", u64::from_be_bytes(rnd)));
                let written = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(key.expose()).and_then(|()| f.sync_all()));
                if let Err(e) = written {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("cannot write", &tmp, e));
                }
                let linked = fs::hard_link(&tmp, path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_dir(dir)?;
                        Ok((MasterKey(key), true))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create_file(path)
                    }
                    Err(e) => Err(io_err("cannot create", path, e)),
                }
            }
            Err(e) => Err(io_err("cannot read", path, e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

/// Writes `bytes` to `path` atomically and durably, mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut rnd = [0u8; 8];
    SystemRandom::new()
        .fill(&mut rnd)
        .map_err(|_| CryptoError::Random)?;
    let tmp = dir.join(format!(".tmp-{:016x}", u64::from_be_bytes(rnd)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("cannot write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("cannot rename into", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn kek_file(v: u32) -> String {
    format!("kek-v{v:06}.key")
}

fn tomb_file(v: u32) -> String {
    format!("kek-v{v:06}.retired")
}

/// Parses `kek-v000123.key` / `.retired` names.
fn parse_version(name: &str) -> Option<(u32, bool)> {
    let rest = name.strip_prefix("kek-v")?;
    let (num, ext) = rest.split_once('.')?;
    if num.len() != 6 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = num.parse().ok()?;
    match ext {
        "key" => Some((v, false)),
        "retired" => Some((v, true)),
        _ => None,
    }
}

/// The local keyring. See the module docs.
pub struct LocalKeyring {
    dir: PathBuf,
    id: u32,
    master: MasterKey,
    root: Dek,
    keks: KekSet,
    shreds: RwLock<HashMap<ShredId, Dek>>,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("dir", &self.dir)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

/// An exclusive lock on the keyring directory, held while its files change.
struct DirLock(File);

impl DirLock {
    fn take(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        f.lock().map_err(|e| io_err("cannot lock", &path, e))?;
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl LocalKeyring {
    /// Opens the keyring in `dir`, creating it (directory, id, root secret, KEK version 1) if it does not
    /// exist. Returns whether it was created.
    pub fn open_or_create(dir: &Path, master: MasterKey) -> Result<(Self, bool)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("shred"))
            .map_err(|e| io_err("cannot create", dir, e))?;
        check_private(dir, true)?;
        let _lock = DirLock::take(dir)?;
        let id_path = dir.join("keyring.id");
        let mut created = false;
        if !id_path.exists() {
            let mut b = [0u8; 4];
            SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| CryptoError::Random)?;
            let id = u32::from_be_bytes(b) | 1;
            write_atomic(&id_path, format!("{id:08x}\n").as_bytes())?;
            created = true;
        }
        let id = read_id(&id_path)?;
        // A creation that died before these files were written sealed nothing: finish it.
        let root_path = dir.join("root.key");
        if !root_path.exists() {
            let root = Dek::generate()?;
            write_atomic(
                &root_path,
                &seal_file(&master, &file_aad(id, b"root", 0), root.expose())?,
            )?;
        }
        if scan(dir)?.is_empty() {
            let kek = Dek::generate()?;
            write_kek(dir, id, &master, 1, &kek, now_secs())?;
        }
        drop(_lock);
        Ok((Self::load(dir, id, master)?, created))
    }

    /// Opens an existing keyring; a missing one is an error (commands that must not create one).
    pub fn open(dir: &Path, master: MasterKey) -> Result<Self> {
        let id_path = dir.join("keyring.id");
        if !id_path.exists() {
            return Err(CryptoError::Provider(format!("no keyring at {}", dir.display())));
        }
        check_private(dir, true)?;
        let id = read_id(&id_path)?;
        Self::load(dir, id, master)
    }

    fn load(dir: &Path, id: u32, master: MasterKey) -> Result<Self> {
        let root_path = dir.join("root.key");
        let root = read_sealed(&root_path, &master, &file_aad(id, b"root", 0)).map_err(|e| match e {
            CryptoError::Authentication => CryptoError::Provider(format!(
                "the master key does not open keyring {} (wrong SKYGATE_MASTER_KEY or master.key?)",
                dir.display()
            )),
            e => e,
        })?;
        let ring = LocalKeyring {
            dir: dir.to_owned(),
            id,
            master,
            root: Dek::from_slice(&root)?,
            keks: KekSet::new(id, b"skygate-local-wrap"),
            shreds: RwLock::new(HashMap::new()),
        };
        ring.refresh()?;
        if ring.current_version() == 0 {
            return Err(CryptoError::Provider(format!(
                "keyring {} has no active key-encryption key",
                dir.display()
            )));
        }
        Ok(ring)
    }

    fn poisoned() -> CryptoError {
        CryptoError::Provider("keyring lock poisoned".into())
    }

    fn shred_path(&self, id: ShredId) -> PathBuf {
        self.dir.join("shred").join(format!("{id:016x}.key"))
    }

    fn load_shred(&self, id: ShredId) -> Result<Dek> {
        let path = self.shred_path(id);
        if !path.exists() {
            return Err(CryptoError::Shredded(id));
        }
        let bytes = read_sealed(&path, &self.master, &file_aad(self.id, b"shred", id))
            .map_err(|e| tampered(&path, e))?;
        Dek::from_slice(&bytes)
    }
}

/// A key file that does not open: name it (the master key opened the root, so the file is at fault).
fn tampered(path: &Path, e: CryptoError) -> CryptoError {
    match e {
        CryptoError::Authentication => CryptoError::Provider(format!(
            "key file {} does not open with the master key (tampered, or from another keyring)",
            path.display()
        )),
        e => e,
    }
}

fn read_id(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).map_err(|e| io_err("cannot read", path, e))?;
    u32::from_str_radix(text.trim(), 16)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| CryptoError::Provider(format!("{} is corrupt", path.display())))
}

fn file_aad(id: u32, role: &[u8], n: u64) -> Vec<u8> {
    let mut v = FILE_DOMAIN.to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&(role.len() as u32).to_be_bytes());
    v.extend_from_slice(role);
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn seal_file(master: &MasterKey, aad: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptoError::Random)?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&nonce);
    let mut ct = body.to_vec();
    gcm_key(&master.0)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
        .map_err(|_| CryptoError::Provider("sealing a key file failed".into()))?;
    out.extend_from_slice(&ct);
    ct.zeroize();
    Ok(out)
}

/// Reads and opens a key file. A damaged file → an error naming it; a wrong master key →
/// `Authentication` (the caller turns it into a clear message).
fn read_sealed(path: &Path, master: &MasterKey, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    check_private(path, false)?;
    let bytes = fs::read(path).map_err(|e| io_err("cannot read", path, e))?;
    if bytes.len() < MAGIC.len() + NONCE_LEN + AES_256_GCM.tag_len() || &bytes[..4] != MAGIC {
        return Err(CryptoError::Provider(format!(
            "key file {} is corrupt",
            path.display()
        )));
    }
    let nonce = Nonce::try_assume_unique_for_key(&bytes[4..4 + NONCE_LEN])
        .map_err(|_| CryptoError::Authentication)?;
    let mut body = Zeroizing::new(bytes[4 + NONCE_LEN..].to_vec());
    let n = gcm_key(&master.0)?
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| CryptoError::Authentication)?
        .len();
    body.truncate(n);
    Ok(body)
}

fn write_kek(dir: &Path, id: u32, master: &MasterKey, v: u32, kek: &Dek, created_at: i64) -> Result<()> {
    let mut body = Zeroizing::new(kek.expose().to_vec());
    body.extend_from_slice(&created_at.to_be_bytes());
    let sealed = seal_file(master, &file_aad(id, b"kek", u64::from(v)), &body)?;
    write_atomic(&dir.join(kek_file(v)), &sealed)
}

/// Versions on disk: version → retired?
fn scan(dir: &Path) -> Result<BTreeMap<u32, bool>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))? {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        if let Some((v, retired)) = e.file_name().to_str().and_then(parse_version) {
            let r = out.entry(v).or_insert(false);
            *r |= retired;
        }
    }
    Ok(out)
}

impl KeyProvider for LocalKeyring {
    crate::kekset::delegate_keks!("local");

    fn rotate(&self) -> Result<u32> {
        let _lock = DirLock::take(&self.dir)?;
        let next = scan(&self.dir)?.keys().next_back().map_or(1, |v| v + 1);
        write_kek(
            &self.dir,
            self.id,
            &self.master,
            next,
            &Dek::generate()?,
            now_secs(),
        )?;
        drop(_lock);
        self.refresh()?;
        Ok(next)
    }

    fn retire(&self, version: u32) -> Result<()> {
        let _lock = DirLock::take(&self.dir)?;
        self.refresh()?;
        let on_disk = scan(&self.dir)?;
        match on_disk.get(&version) {
            None => return Err(CryptoError::UnknownVersion(version)),
            Some(true) => {
                // Retired already; a crash may have left the key file behind the tombstone.
                let _ = fs::remove_file(self.dir.join(kek_file(version)));
                return Ok(());
            }
            Some(false) => {}
        }
        if version == self.current_version() {
            return Err(CryptoError::Refused(format!(
                "version {version} is the current key-encryption key; rotate first"
            )));
        }
        let created_at = self.keks.read()?.get(&version).map_or(0, |k| k.created_at);
        // Tombstone first, then the key: a crash in between leaves the version retired.
        write_atomic(
            &self.dir.join(tomb_file(version)),
            format!("{created_at}\n").as_bytes(),
        )?;
        let key_path = self.dir.join(kek_file(version));
        fs::remove_file(&key_path).map_err(|e| io_err("cannot remove", &key_path, e))?;
        sync_dir(&self.dir)?;
        drop(_lock);
        self.refresh()
    }

    fn refresh(&self) -> Result<()> {
        let on_disk = scan(&self.dir)?;
        let mut keks = self.keks.write()?;
        for (v, retired) in &on_disk {
            if *retired {
                let created_at = match keks.get(v) {
                    Some(k) => k.created_at,
                    None => fs::read_to_string(self.dir.join(tomb_file(*v)))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .unwrap_or(0),
                };
                keks.insert(
                    *v,
                    Kek {
                        key: None,
                        created_at,
                    },
                );
            } else if !keks.contains_key(v) {
                let path = self.dir.join(kek_file(*v));
                let body = read_sealed(&path, &self.master, &file_aad(self.id, b"kek", u64::from(*v)))
                    .map_err(|e| tampered(&path, e))?;
                if body.len() != Dek::LEN + 8 {
                    return Err(CryptoError::Provider(format!(
                        "key file {} is corrupt",
                        path.display()
                    )));
                }
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&body[Dek::LEN..]);
                keks.insert(
                    *v,
                    Kek {
                        key: Some(Dek::from_slice(&body[..Dek::LEN])?),
                        created_at: i64::from_be_bytes(ts),
                    },
                );
            }
        }
        drop(keks);
        // Shred keys destroyed by another process stop working here too.
        let mut shreds = self.shreds.write().map_err(|_| Self::poisoned())?;
        shreds.retain(|id, _| self.shred_path(*id).exists());
        Ok(())
    }

    fn derive_secret(&self, purpose: &str) -> Result<Secret32> {
        Ok(derive(&self.root, purpose))
    }

    fn create_shred_key(&self) -> Result<ShredId> {
        let id = new_shred_id()?;
        let key = Dek::generate()?;
        let sealed = seal_file(&self.master, &file_aad(self.id, b"shred", id), key.expose())?;
        write_atomic(&self.shred_path(id), &sealed)?;
        self.shreds.write().map_err(|_| Self::poisoned())?.insert(id, key);
        Ok(id)
    }

    fn shred_mix(&self, id: ShredId, dek: &Dek) -> Result<Dek> {
        if let Some(key) = self.shreds.read().map_err(|_| Self::poisoned())?.get(&id) {
            return Ok(mix(key, dek));
        }
        let key = self.load_shred(id)?;
        let mixed = mix(&key, dek);
        self.shreds.write().map_err(|_| Self::poisoned())?.insert(id, key);
        Ok(mixed)
    }

    fn destroy_shred_key(&self, id: ShredId) -> Result<()> {
        // File first, then the cache: a concurrent `shred_mix` that misses the cache can then no longer
        // load the key back in.
        let path = self.shred_path(id);
        let removed = match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir.join("shred")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &path, e)),
        };
        self.shreds.write().map_err(|_| Self::poisoned())?.remove(&id);
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Aad as Place, Cipher, KekState};

    fn master(b: u8) -> MasterKey {
        MasterKey(Dek::from_bytes([b; 32]))
    }

    #[test]
    fn create_reopen_rotate_retire_and_shred() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keyring");
        let (ring, created) = LocalKeyring::open_or_create(&dir, master(1)).unwrap();
        assert!(created);
        let ring = Arc::new(ring);
        let c = Cipher::new(ring.clone());
        let at = Place::field("t", "r", "c", "a");
        let v1 = c.seal(b"one", &at).unwrap();
        assert_eq!(ring.rotate().unwrap(), 2);
        let v2 = c.seal(b"two", &at).unwrap();
        let s = ring.create_shred_key().unwrap();
        let shredded = c.seal_shreddable(b"gone", &at, s).unwrap();
        let pepper = ring.derive_secret("pepper").unwrap();

        // Another process's view: same versions, same secrets, same shred keys.
        let (again, created) = LocalKeyring::open_or_create(&dir, master(1)).unwrap();
        assert!(!created);
        let again = Arc::new(again);
        let c2 = Cipher::new(again.clone());
        assert_eq!(again.current_version(), 2);
        assert_eq!(&c2.open(&v1, &at).unwrap()[..], b"one");
        assert_eq!(&c2.open(&shredded, &at).unwrap()[..], b"gone");
        assert_eq!(again.derive_secret("pepper").unwrap(), pepper);
        assert_ne!(again.derive_secret("other").unwrap(), pepper);

        // Retire through one instance; the other sees it after refresh.
        assert!(matches!(ring.retire(2), Err(CryptoError::Refused(_))));
        let moved = c.rewrap(&v1).unwrap().unwrap();
        ring.retire(1).unwrap();
        ring.retire(1).unwrap();
        again.refresh().unwrap();
        assert!(matches!(c2.open(&v1, &at), Err(CryptoError::UnknownVersion(1))));
        assert_eq!(&c2.open(&moved, &at).unwrap()[..], b"one");
        assert_eq!(&c2.open(&v2, &at).unwrap()[..], b"two");
        assert_eq!(again.versions().unwrap()[0].state, KekState::Retired);

        // Destroyed in one process, gone in the other after refresh.
        ring.destroy_shred_key(s).unwrap();
        again.refresh().unwrap();
        assert!(matches!(c2.open(&shredded, &at), Err(CryptoError::Shredded(_))));
        ring.destroy_shred_key(s).unwrap();
    }

    #[test]
    fn wrong_master_key_tampered_file_and_loose_permissions_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keyring");
        let (ring, _) = LocalKeyring::open_or_create(&dir, master(1)).unwrap();
        ring.rotate().unwrap();
        drop(ring);
        let e = LocalKeyring::open(&dir, master(2)).unwrap_err().to_string();
        assert!(e.contains("master key does not open keyring"), "{e}");

        let kek = dir.join(kek_file(2));
        let mut bytes = fs::read(&kek).unwrap();
        bytes[20] ^= 1;
        fs::write(&kek, &bytes).unwrap();
        let e = LocalKeyring::open(&dir, master(1)).unwrap_err().to_string();
        assert!(e.contains("kek-v000002.key"), "{e}");
        bytes[20] ^= 1;
        fs::write(&kek, &bytes).unwrap();
        LocalKeyring::open(&dir, master(1)).unwrap();

        fs::set_permissions(&kek, fs::Permissions::from_mode(0o644)).unwrap();
        let e = LocalKeyring::open(&dir, master(1)).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();

        // Swapping version files is detected (the AAD names the version).
        fs::rename(dir.join(kek_file(1)), dir.join(kek_file(3))).unwrap();
        assert!(LocalKeyring::open(&dir, master(1)).is_err());
        assert!(LocalKeyring::open(&tmp.path().join("none"), master(1)).is_err());
    }

    #[test]
    fn master_key_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("master.key");
        let (_, created) = MasterKey::load_or_create_file(&p).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (_, created) = MasterKey::load_or_create_file(&p).unwrap();
        assert!(!created);
        fs::write(&p, b"short").unwrap();
        assert!(MasterKey::load_or_create_file(&p)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));

        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        MasterKey::from_base64(&b64).unwrap();
        let secretish = "bm90LWEta2V5";
        let e = MasterKey::from_base64(secretish).unwrap_err().to_string();
        assert!(!e.contains(secretish) && e.contains("32 bytes"), "{e}");
        assert!(MasterKey::from_base64("!!!").is_err());
        assert_eq!(format!("{:?}", master(7)), "MasterKey(<redacted>)");
    }

    #[test]
    fn concurrent_rotations_get_distinct_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keyring");
        LocalKeyring::open_or_create(&dir, master(1)).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let ring = LocalKeyring::open(&dir, master(1)).unwrap();
                    (0..5).map(|_| ring.rotate().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (2..=21).collect::<Vec<_>>());
    }
}

//! The API-key pepper: 32 random bytes in `<data_dir>/pepper.key` (mode 0600), created on first start.
//! It never enters the database, so a stolen database alone cannot be used to test key guesses. This is
//! the one small interface the key provider will take over (it returns a [`KeyHasher`]).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use skygate_core::{KeyHasher, Pepper};

const FILE: &str = "pepper.key";

#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("cannot read API-key pepper {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write API-key pepper {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("API-key pepper {path} is corrupt (expected 32 bytes, found {len})")]
    Corrupt { path: String, len: usize },
    #[error("API-key pepper {path} is readable by other users (mode {mode:o}); run chmod 600 on it")]
    Permissions { path: String, mode: u32 },
    #[error("the system random source failed")]
    Random,
}

/// Loads the pepper, creating it if the file does not exist.
pub fn load_or_create(data_dir: &Path) -> Result<Arc<dyn KeyHasher>, PepperError> {
    let path = data_dir.join(FILE);
    let shown = path.display().to_string();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta = std::fs::metadata(&path).map_err(|source| PepperError::Read {
                path: shown.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(PepperError::Permissions { path: shown, mode });
            }
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| PepperError::Corrupt {
                path: shown,
                len: bytes.len(),
            })?;
            Ok(Arc::new(Pepper::from_bytes(arr)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| PepperError::Random)?;
            // create_new: if another process (CLI and server starting together) won the race, use its file.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&bytes)
                        .and_then(|()| f.sync_all())
                        .map_err(|source| PepperError::Write { path: shown, source })?;
                    Ok(Arc::new(Pepper::from_bytes(bytes)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(data_dir),
                Err(source) => Err(PepperError::Write { path: shown, source }),
            }
        }
        Err(source) => Err(PepperError::Read { path: shown, source }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.hash(b"x"), b.hash(b"x"));
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn corrupt_or_open_pepper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(dir.path()).err().unwrap().to_string();
        assert!(e.contains("corrupt") && e.contains("pepper.key"), "{e}");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}

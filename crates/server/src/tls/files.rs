//! File plumbing for TLS material: reading PEM certificates and keys with errors that name the file, and
//! writing files atomically (temp file in the same directory, fsync, rename) with their final mode from
//! the first byte, so a private key is never readable by others, not even briefly.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::TlsError;

/// Mode of private key files.
pub(super) const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: public, but only reachable through the 0700 directory.
pub(super) const CERT_MODE: u32 = 0o644;

fn read_err(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_err(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Whether `path` exists; an error (other than "not found") while checking is reported, not guessed.
pub(super) fn exists(path: &Path) -> Result<bool, TlsError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(read_err(path, e)),
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<(), TlsError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(TlsError::Write {
            path: dir.to_path_buf(),
            reason: "exists and is not a directory".into(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| write_err(dir, e)),
        Err(e) => Err(read_err(dir, e)),
    }
}

/// The permission bits of `path`, for warnings about keys others can read.
pub(super) fn mode(path: &Path) -> Result<u32, TlsError> {
    Ok(std::fs::metadata(path)
        .map_err(|e| read_err(path, e))?
        .permissions()
        .mode()
        & 0o777)
}

fn describe_pem_error(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no PEM {what} found"),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        other => other.to_string(),
    }
}

/// Reads every certificate of a PEM file, in order. At least one, each a well-formed X.509 certificate.
pub(super) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, e))?;
    let bad = |reason: String| TlsError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(describe_pem_error(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| bad(format!("certificate #{} is not valid X.509 ({e})", i + 1)))?;
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file. Only the PEM framing is checked
/// here; whether the key itself is usable shows when it is loaded for signing.
pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| read_err(path, e))?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::PrivateKey {
        path: path.to_path_buf(),
        reason: describe_pem_error(&e, "private key"),
    })
}

/// A file written and synced under a temporary name next to its destination, not yet visible there.
/// Dropped without [`Staged::commit`], the temporary file is removed.
pub(super) struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

/// Writes `bytes` to a new temporary file beside `dest`, created with `mode`, and syncs it.
pub(super) fn stage(dest: &Path, bytes: &[u8], mode: u32) -> Result<Staged, TlsError> {
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| TlsError::Write {
            path: dest.to_path_buf(),
            reason: "the system random source failed".into(),
        })?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.tmp-{suffix}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| write_err(dest, e))?;
    let staged = Staged {
        tmp,
        dest: dest.to_path_buf(),
        committed: false,
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| write_err(dest, e))?;
    Ok(staged)
}

impl Staged {
    /// Renames the temporary file over the destination.
    pub(super) fn commit(mut self) -> Result<(), TlsError> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| write_err(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover dot-file is harmless and never read.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Makes renames in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| write_err(dir, e))
}

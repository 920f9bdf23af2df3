//! Per-job directories and host uid leases.
//!
//! Job directories live under one root on a tmpfs (`/dev/shm` by default), so nothing a model reads
//! or writes ever reaches a disk; each is removed when its job ends, and [`JobRoot::sweep`] removes
//! what a crash left behind. When skygate runs as root, every running sandbox gets its own host uid
//! from a range, leased with an exclusive `flock` on a lock file (so leases hold across processes):
//! the kernel enforces the process limit only for non-root uids, and with one uid per sandbox one job
//! cannot use up another's budget or touch its files.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{chown, geteuid, Gid, Uid};

/// The directory all of one server's job directories live in.
#[derive(Debug, Clone)]
pub struct JobRoot {
    dir: PathBuf,
}

impl JobRoot {
    /// Creates `dir` (0711: others may traverse to their own job directory, never list) if missing.
    pub fn open(dir: PathBuf) -> std::io::Result<JobRoot> {
        fs::DirBuilder::new().recursive(true).mode(0o711).create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
        Ok(JobRoot { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes every job directory (leftovers of a crash). Call before any job starts. Returns how many.
    pub fn sweep(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("job-") {
                fs::remove_dir_all(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Makes a fresh job directory with `root/` and `outbox/` inside, owned by `owner` (when set).
    pub fn create(&self, name: &str, owner: Option<u32>) -> std::io::Result<JobDir> {
        let dir = self.dir.join(format!("job-{name}"));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let job = JobDir { dir };
        for sub in ["root", "outbox"] {
            fs::DirBuilder::new().mode(0o700).create(job.dir.join(sub))?;
        }
        if let Some(uid) = owner {
            for p in [job.dir.clone(), job.root(), job.outbox()] {
                chown(&p, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
                    .map_err(std::io::Error::from)?;
            }
        }
        Ok(job)
    }
}

/// One job's directory; removed (with everything in it) on drop.
#[derive(Debug)]
pub struct JobDir {
    dir: PathBuf,
}

impl JobDir {
    /// The mount point of the sandbox root.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where `/out` is copied to when the model has exited.
    pub fn outbox(&self) -> PathBuf {
        self.dir.join("outbox")
    }

    /// Scratch directory for unsandboxed runs (`sandbox.mode = "none-unsafe"`).
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "could not remove a job directory; it is swept at the next start");
            }
        }
    }
}

/// Leases host uids `base .. base + count` (only meaningful when running as root).
#[derive(Debug, Clone)]
pub struct UidPool {
    base: u32,
    count: u32,
    locks: PathBuf,
}

/// A leased uid; released on drop.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    _lock: Flock<fs::File>,
}

impl UidPool {
    /// `locks` holds one lock file per uid (shared by every skygate on the host: keep it the same).
    pub fn new(base: u32, count: u32, locks: PathBuf) -> std::io::Result<UidPool> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&locks)?;
        Ok(UidPool { base, count, locks })
    }

    /// Whether leases are needed: only root can switch to another uid (and only root is exempt from
    /// the process limit).
    pub fn needed() -> bool {
        geteuid().is_root()
    }

    /// Leases a free uid, starting at a spread-out point so concurrent jobs rarely contend.
    pub fn lease(&self, hint: u64) -> Result<UidLease, String> {
        let count = u64::from(self.count.max(1));
        for i in 0..count {
            let off = u32::try_from((hint + i) % count).unwrap_or(0);
            let uid = self.base.saturating_add(off);
            let path = self.locks.join(format!("uid-{uid}.lock"));
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot open a uid lock: {e}"))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(UidLease { uid, _lock: lock });
            }
        }
        Err(format!(
            "all {} sandbox uids are in use (raise sandbox.host_uids)",
            self.count
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let pool = UidPool::new(500_000, 2, dir.path().join("locks")).unwrap();
        let a = pool.lease(0).unwrap();
        let b = pool.lease(0).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(pool.lease(7).unwrap_err().contains("in use"));
        drop(a);
        assert_eq!(pool.lease(0).unwrap().uid, 500_000);
    }

    #[test]
    fn job_dirs_are_removed_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = JobRoot::open(dir.path().join("jobs")).unwrap();
        let job = root.create("a", None).unwrap();
        fs::write(job.outbox().join("f"), b"x").unwrap();
        let path = job.path().to_owned();
        drop(job);
        assert!(!path.exists());
        let left = root.create("b", None).unwrap();
        std::mem::forget(left); // a crash
        fs::write(root.path().join("unrelated"), b"").unwrap();
        assert_eq!(root.sweep().unwrap(), 1);
        assert!(root.path().join("unrelated").exists());
    }
}

//! Device leases (GPUs and the like): the operator lists device nodes (`sandbox.devices`), a model
//! asks for a number of them, and each device is leased to one sandbox at a time. A lease is an
//! exclusive `flock` on a lock file per device (in the lease directory every skygate on the host
//! shares, like the uid leases), so it also holds across servers on one host; it is released when the
//! [`DeviceLease`] is dropped, which the launcher does only after the sandbox is gone. A prediction
//! waits (bounded, cancel aware) while too few devices are free, and takes its devices all at once,
//! so two waiting jobs can never each hold half of what the other needs.

use std::fs;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Notify;

/// How often a waiting job looks again (a device freed by another server on the host wakes no one
/// here; one freed by this server wakes the waiters at once).
const RETRY: Duration = Duration::from_millis(100);

/// The devices of this server and where their lease locks live.
#[derive(Debug, Clone)]
pub struct DevicePool {
    devices: Arc<[PathBuf]>,
    locks: PathBuf,
    freed: Arc<Notify>,
}

/// Devices leased to one sandbox; released on drop.
#[derive(Debug)]
pub struct DeviceLease {
    paths: Vec<PathBuf>,
    locks: Vec<Flock<fs::File>>,
    freed: Arc<Notify>,
}

impl DeviceLease {
    /// The host paths of the leased devices (bound into the sandbox's `/dev` under their file names).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for DeviceLease {
    fn drop(&mut self) {
        if !self.locks.is_empty() {
            self.locks.clear();
            self.freed.notify_waiters();
        }
    }
}

/// Why no lease was had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWait {
    /// The job was stopped (cancel, deadline) while it waited.
    Stopped,
    /// Too few devices became free within the wait.
    Busy { wanted: u32, waited: Duration },
    /// The request can never be met, or a lock file could not be used (user-facing, no paths).
    Failed(String),
}

/// Checks an operator's device list: absolute paths of character devices, each listed once, with
/// file names unique (they are bound into `/dev` under their names).
pub fn validate(devices: &[PathBuf]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for d in devices {
        let shown = d.display();
        if !d.is_absolute() {
            return Err(format!("sandbox.devices: {shown} is not an absolute path"));
        }
        let meta = fs::metadata(d).map_err(|e| format!("sandbox.devices: {shown}: {e}"))?;
        if !meta.file_type().is_char_device() {
            return Err(format!("sandbox.devices: {shown} is not a character device"));
        }
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("sandbox.devices: {shown} has no file name"))?;
        if [
            "null", "zero", "random", "urandom", "fd", "stdin", "stdout", "stderr",
        ]
        .contains(&name.as_str())
        {
            return Err(format!(
                "sandbox.devices: {shown}: /dev/{name} is always in the sandbox"
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!(
                "sandbox.devices: two devices are named {name} (each is bound at /dev/<name>)"
            ));
        }
    }
    Ok(())
}

impl DevicePool {
    /// `locks` is the host-wide lease directory (created 0700 if missing).
    pub fn new(devices: Vec<PathBuf>, locks: PathBuf) -> std::io::Result<DevicePool> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&locks)?;
        Ok(DevicePool {
            devices: devices.into(),
            locks,
            freed: Arc::new(Notify::new()),
        })
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Takes `wanted` free devices at once, or none. `hint` spreads where the search starts.
    pub fn try_lease(&self, wanted: u32, hint: u64) -> Result<Option<DeviceLease>, String> {
        let wanted_n = usize::try_from(wanted).unwrap_or(usize::MAX);
        if wanted_n > self.devices.len() {
            return Err(format!(
                "the model needs {wanted} devices but this server has {}",
                self.devices.len()
            ));
        }
        let n = self.devices.len();
        let mut lease = DeviceLease {
            paths: Vec::with_capacity(wanted_n),
            locks: Vec::with_capacity(wanted_n),
            freed: self.freed.clone(),
        };
        let start = usize::try_from(hint % n.max(1) as u64).unwrap_or(0);
        for i in 0..n {
            if lease.paths.len() == wanted_n {
                break;
            }
            let dev = &self.devices[(start + i) % n];
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.lock_path(dev))
                .map_err(|e| format!("cannot open a device lock: {e}"))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                lease.locks.push(lock);
                lease.paths.push(dev.clone());
            }
        }
        if lease.paths.len() == wanted_n {
            Ok(Some(lease))
        } else {
            // Give back what was taken without waking anyone: waking waiters here (this caller
            // included) would only have them find the same shortage again, in a loop. A waiter that
            // missed these devices meanwhile looks again after `RETRY`.
            lease.locks.clear();
            Ok(None)
        }
    }

    /// Waits up to `within` for `wanted` devices, giving up when `stopped` resolves.
    pub async fn lease(
        &self,
        wanted: u32,
        hint: u64,
        within: Duration,
        stopped: impl Future<Output = ()>,
    ) -> Result<DeviceLease, LeaseWait> {
        let started = tokio::time::Instant::now();
        let give_up = tokio::time::sleep(within);
        tokio::pin!(give_up, stopped);
        loop {
            // Registered before looking, so a release between the look and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(l) = self.try_lease(wanted, hint).map_err(LeaseWait::Failed)? {
                return Ok(l);
            }
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep(RETRY) => {}
                () = &mut stopped => return Err(LeaseWait::Stopped),
                () = &mut give_up => {
                    return Err(LeaseWait::Busy { wanted, waited: started.elapsed() });
                }
            }
        }
    }

    fn lock_path(&self, dev: &Path) -> PathBuf {
        let flat: String = dev
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.locks.join(format!("dev{flat}.lock"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pool(n: usize) -> (tempfile::TempDir, DevicePool) {
        let dir = tempfile::tempdir().unwrap();
        let devs = (0..n).map(|i| PathBuf::from(format!("/dev/fake{i}"))).collect();
        let p = DevicePool::new(devs, dir.path().join("locks")).unwrap();
        (dir, p)
    }

    #[test]
    fn leases_are_exclusive_all_or_nothing_and_released() {
        let (_d, p) = pool(3);
        let a = p.try_lease(2, 0).unwrap().unwrap();
        let b = p.try_lease(1, 0).unwrap().unwrap();
        assert!(b.paths().iter().all(|x| !a.paths().contains(x)));
        assert!(p.try_lease(1, 5).unwrap().is_none());
        drop(b);
        // Two wanted, one free: nothing is taken.
        assert!(p.try_lease(2, 0).unwrap().is_none());
        assert!(p.try_lease(1, 0).unwrap().is_some());
        assert!(p.try_lease(4, 0).unwrap_err().contains("has 3"));
        drop(a);
        assert_eq!(p.try_lease(3, 0).unwrap().unwrap().paths().len(), 3);
    }

    #[tokio::test]
    async fn waiters_wake_on_release_give_up_and_stop() {
        let (_d, p) = pool(1);
        let held = p.try_lease(1, 0).unwrap().unwrap();
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move {
                p.lease(1, 0, Duration::from_secs(10), std::future::pending())
                    .await
                    .map(|l| l.paths().to_vec())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap(), vec![PathBuf::from("/dev/fake0")]);
        let _held = p.try_lease(1, 0).unwrap().unwrap();
        let busy = p
            .lease(1, 0, Duration::from_millis(150), std::future::pending())
            .await;
        assert!(matches!(busy, Err(LeaseWait::Busy { wanted: 1, .. })), "{busy:?}");
        let stopped = p
            .lease(
                1,
                0,
                Duration::from_secs(10),
                tokio::time::sleep(Duration::from_millis(50)),
            )
            .await;
        assert_eq!(stopped.unwrap_err(), LeaseWait::Stopped);
    }

    #[test]
    fn device_lists_are_checked() {
        assert!(validate(&[PathBuf::from("/dev/null")])
            .unwrap_err()
            .contains("always"));
        assert!(validate(&[PathBuf::from("dev/x")])
            .unwrap_err()
            .contains("absolute"));
        assert!(validate(&[PathBuf::from("/etc/passwd")])
            .unwrap_err()
            .contains("not a character device"));
        assert!(validate(&[PathBuf::from("/nonexistent/gpu")]).is_err());
        assert!(validate(&[PathBuf::from("/dev/tty"), PathBuf::from("/dev/tty")])
            .unwrap_err()
            .contains("two devices"));
        assert!(validate(&[PathBuf::from("/dev/tty")]).is_ok());
    }
}

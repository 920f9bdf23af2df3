//! A sandbox runner on a throwaway job root, with the real `skygate` binary as its helper.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use skygate_core::models::{Backend, CommandModel};
use skygate_runtime::sandbox::Limits;
use skygate_runtime::{
    Job, Output, RunError, RunHandle, Runner, SandboxMode, SandboxReport, SandboxRunner, SandboxSettings,
};

pub struct Sandbox {
    pub runner: SandboxRunner,
    pub dir: tempfile::TempDir,
}

/// Whether this machine can make user namespaces; otherwise the test is skipped (or fails in CI).
pub fn namespaces_available(test: &str) -> bool {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim().parse::<u64>().unwrap_or(0) == 0 {
        skygate_testkit::skip(test, "user namespaces are not available on this machine");
        return false;
    }
    true
}

pub fn settings(dir: &Path, mode: SandboxMode) -> SandboxSettings {
    SandboxSettings {
        mode,
        helper: PathBuf::from(env!("CARGO_BIN_EXE_skygate")),
        job_root: dir.join("jobs"),
        ro_binds: Vec::new(),
        host_uid_base: 910_000,
        host_uids: 256,
        uid_locks: PathBuf::from("/dev/shm/skygate-uid-leases"),
        limits: Limits {
            cpu_seconds: 20,
            address_space: 1 << 30,
            file_size: 16 << 20,
            open_files: 128,
            processes: 32,
        },
        work_bytes: 32 << 20,
        out_bytes: 32 << 20,
        devices: Vec::new(),
        device_wait: Duration::from_secs(60),
        engine_runs: 2,
        engine_streams: 16,
        engine_queue: 64,
    }
}

impl Sandbox {
    pub fn new(test: &str) -> Option<Sandbox> {
        Self::with(test, |_| {})
    }

    pub fn with(test: &str, edit: impl FnOnce(&mut SandboxSettings)) -> Option<Sandbox> {
        if !namespaces_available(test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("skygate-sbx-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let mut s = settings(dir.path(), SandboxMode::Namespaces);
        edit(&mut s);
        let runner = SandboxRunner::new(s).unwrap();
        Some(Sandbox { runner, dir })
    }

    pub fn start(&self, backend: Backend, input: Value, deadline: Duration) -> RunHandle {
        self.start_for(None, backend, input, deadline)
    }

    /// As [`Sandbox::start`], for a prediction of account `tenant`.
    pub fn start_for(
        &self,
        tenant: Option<&str>,
        backend: Backend,
        input: Value,
        deadline: Duration,
    ) -> RunHandle {
        self.runner
            .start(Job {
                prediction_id: "test".into(),
                backend,
                input,
                deadline,
                tenant: tenant.map(String::from),
            })
            .unwrap()
    }

    pub async fn builtin(&self, id: &str, input: Value) -> Result<Output, RunError> {
        self.start(Backend::Builtin(id.into()), input, Duration::from_secs(30))
            .finish()
            .await
    }

    pub async fn command(
        &self,
        argv: &[&str],
        dir: Option<&Path>,
        input: Value,
        deadline: Duration,
    ) -> (Result<Output, RunError>, Option<SandboxReport>) {
        let m = CommandModel {
            dir: dir.map(Path::to_owned),
            ..CommandModel::new(argv.iter().copied())
        };
        self.start(Backend::Command(m), input, deadline)
            .finish_with_report()
            .await
    }

    /// No job directory is left behind.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "job directories left: {left:?}");
    }
}

/// A world-readable directory holding `files` (name, mode, text), for command models.
pub fn model_dir(files: &[(&str, u32, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("skygate-model-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode, text) in files {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    dir
}

/// A shell command model that asks for `devices` leased devices.
pub fn shell_model(script: &str, devices: u32) -> CommandModel {
    CommandModel {
        devices,
        ..CommandModel::new(["/bin/sh", "-c", script])
    }
}

/// A world-traversable directory with `names` as stand-in device nodes: character devices with
/// `/dev/null`'s numbers, mode 0666. `None` (skipped) when this process cannot make device nodes.
pub fn stand_in_devices(test: &str, names: &[&str]) -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("skygate-devs-")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rdev = std::fs::metadata("/dev/null").unwrap().rdev();
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let mut paths = Vec::new();
    for name in names {
        let p = dir.path().join(name);
        let made = std::process::Command::new("mknod")
            .args(["-m", "666"])
            .arg(&p)
            .args(["c", &major.to_string(), &minor.to_string()])
            .output();
        match made {
            Ok(o) if o.status.success() => paths.push(p),
            Ok(o) => {
                skygate_testkit::skip(
                    test,
                    &format!(
                        "cannot make stand-in device nodes (mknod: {})",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                return None;
            }
            Err(e) => {
                skygate_testkit::skip(test, &format!("cannot run mknod: {e}"));
                return None;
            }
        }
    }
    Some((dir, paths))
}

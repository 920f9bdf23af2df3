//! `[sandbox]`: how every prediction is isolated (see `skygate_runtime::sandbox`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skygate_runtime::sandbox::Limits;
use skygate_runtime::{SandboxMode, SandboxSettings};

use super::ByteSize;

/// `[sandbox]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `namespaces` (default) or `none-unsafe` (no isolation at all: development only).
    pub mode: String,
    /// Where per-job directories are made; must be a tmpfs so nothing reaches a disk.
    pub job_dir: PathBuf,
    /// Extra read-only paths bound at the same path inside (e.g. a Python virtualenv).
    pub ro_binds: Vec<PathBuf>,
    /// When skygate runs as root, each running sandbox gets its own host uid from
    /// `host_uid_base .. host_uid_base + host_uids` (the process limit holds only for non-root uids).
    pub host_uid_base: u32,
    pub host_uids: u32,
    /// The `skygate` binary the sandbox re-executes; default: the running one.
    pub helper: Option<PathBuf>,
    /// Device nodes (GPUs, …) leased to command models that ask for them (`devices = N`): each is
    /// bound into one sandbox at a time, at `/dev/<name>`. Must be character devices.
    pub devices: Vec<PathBuf>,
    /// How long a prediction waits for its devices before it fails (never past its deadline).
    #[serde(with = "humantime_serde")]
    pub device_wait: Duration,
    /// Real-model runs (generations, embeddings) computed at once on this node, each using `threads`
    /// of its model (default: as many as fit the cores at the models' default threads, `cores /
    /// min(cores, 8)`: more runs than that oversubscribe the CPU, which llama.cpp's spinning OpenMP
    /// threads punish hard; BENCHMARKS.md). Generations are granted compute a token at a time,
    /// round-robin across accounts, so one account's long streams cannot hold it.
    pub engine_runs: usize,
    /// Real-model runs in progress at once on this node, each holding a warm sandbox (default 16);
    /// further requests wait, admitted round-robin across accounts (and each account to its tier's
    /// `concurrent_predictions`).
    pub engine_streams: usize,
    /// Real-model requests that may wait for a run at once (default 256); past it they are refused
    /// with 503 and `Retry-After`.
    pub engine_queue: usize,
    /// Defaults for every model (command models may lower or raise `memory` and `cpu_seconds`).
    pub limits: SandboxLimits,
}

/// `[sandbox.limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Address space of each process (RLIMIT_AS).
    pub memory: ByteSize,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Largest file a model may write (RLIMIT_FSIZE).
    pub file_size: ByteSize,
    pub open_files: u64,
    /// Processes and threads of one sandbox (RLIMIT_NPROC of its own uid).
    pub processes: u64,
    /// Size of the private tmpfs `/work` (and `/tmp`).
    pub work_size: ByteSize,
    /// Size of the private tmpfs `/out` (all output files together).
    pub out_size: ByteSize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: "namespaces".into(),
            job_dir: PathBuf::from("/dev/shm"),
            ro_binds: Vec::new(),
            host_uid_base: 900_000,
            host_uids: 1024,
            helper: None,
            devices: Vec::new(),
            device_wait: Duration::from_secs(60),
            engine_runs: default_engine_runs(),
            engine_streams: 16,
            engine_queue: 256,
            limits: SandboxLimits::default(),
        }
    }
}

impl Default for SandboxLimits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        SandboxLimits {
            memory: ByteSize(4096 * MIB),
            cpu_seconds: 600,
            file_size: ByteSize(256 * MIB),
            open_files: 256,
            processes: 64,
            work_size: ByteSize(512 * MIB),
            out_size: ByteSize(256 * MIB),
        }
    }
}

impl SandboxConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        self.mode()?;
        if !self.job_dir.is_absolute() {
            return Err("sandbox.job_dir must be an absolute path".into());
        }
        for p in &self.ro_binds {
            if !p.is_absolute() || p.components().count() < 2 {
                return Err(format!(
                    "sandbox.ro_binds: {} must be an absolute path below /",
                    p.display()
                ));
            }
            let reserved = ["/proc", "/dev", "/work", "/out", "/model", "/tmp", "/etc"];
            if reserved.iter().any(|r| p.starts_with(r)) {
                return Err(format!(
                    "sandbox.ro_binds: {} is managed by the sandbox",
                    p.display()
                ));
            }
        }
        if self.host_uid_base < 1000
            || self.host_uids == 0
            || self.host_uid_base.checked_add(self.host_uids).is_none()
        {
            return Err(
                "sandbox.host_uid_base must be at least 1000 and sandbox.host_uids at least 1".into(),
            );
        }
        skygate_runtime::sandbox::devices::validate(&self.devices)?;
        if self.engine_runs == 0 || self.engine_runs > 1024 {
            return Err("sandbox.engine_runs must be between 1 and 1024".into());
        }
        if self.engine_streams == 0 || self.engine_streams > 100_000 {
            return Err("sandbox.engine_streams must be between 1 and 100000".into());
        }
        if self.engine_queue > 100_000 {
            return Err("sandbox.engine_queue must be at most 100000".into());
        }
        if self.device_wait.is_zero() {
            return Err("sandbox.device_wait must be greater than 0".into());
        }
        let l = &self.limits;
        for (key, v, min) in [
            ("sandbox.limits.memory", l.memory.0, 16 << 20),
            ("sandbox.limits.file_size", l.file_size.0, 4096),
            ("sandbox.limits.work_size", l.work_size.0, 4096),
            ("sandbox.limits.out_size", l.out_size.0, 4096),
            ("sandbox.limits.cpu_seconds", l.cpu_seconds, 1),
            ("sandbox.limits.open_files", l.open_files, 16),
            ("sandbox.limits.processes", l.processes, 2),
        ] {
            if v < min {
                return Err(format!("{key} must be at least {min}, got {v}"));
            }
        }
        Ok(())
    }

    pub fn mode(&self) -> Result<SandboxMode, String> {
        match self.mode.as_str() {
            "namespaces" => Ok(SandboxMode::Namespaces),
            "none-unsafe" => Ok(SandboxMode::NoneUnsafe),
            other => Err(format!(
                "sandbox.mode must be \"namespaces\" or \"none-unsafe\", got {other:?}"
            )),
        }
    }

    /// The launcher settings; `instance` names this server's job directory (one per data dir, so two
    /// servers on one host never sweep each other's jobs).
    pub fn settings(&self, instance: &str) -> Result<SandboxSettings, String> {
        let helper = match &self.helper {
            Some(h) => h.clone(),
            None => std::env::current_exe().map_err(|e| format!("cannot find the skygate binary: {e}"))?,
        };
        let l = &self.limits;
        Ok(SandboxSettings {
            mode: self.mode()?,
            helper,
            job_root: self.job_dir.join(format!("skygate-jobs-{instance}")),
            ro_binds: self.ro_binds.clone(),
            host_uid_base: self.host_uid_base,
            host_uids: self.host_uids,
            uid_locks: self.job_dir.join("skygate-uid-leases"),
            limits: Limits {
                cpu_seconds: l.cpu_seconds,
                address_space: l.memory.0,
                file_size: l.file_size.0,
                open_files: l.open_files,
                processes: l.processes,
            },
            work_bytes: l.work_size.0,
            out_bytes: l.out_size.0,
            devices: self.devices.clone(),
            device_wait: self.device_wait,
            engine_runs: self.engine_runs,
            engine_streams: self.engine_streams,
            engine_queue: self.engine_queue,
        })
    }
}

/// Runs at once that keep runs × the models' default threads (`min(cores, 8)`) within the cores.
fn default_engine_runs() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (cores / cores.min(8)).max(1)
}

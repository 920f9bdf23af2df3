//! The sandbox launcher: every prediction runs in a fresh sandbox built from Linux namespaces — new
//! user, mount, pid, network (nothing but an unconfigured `lo`), ipc, uts and cgroup namespaces — with
//! an empty tmpfs root holding only read-only binds of `/usr`, the lib dirs, the model directory
//! (`/model`) and operator paths, a few device nodes, a new `/proc`, and private size-limited tmpfs
//! `/work` and `/out`; uid 1000 inside, no capabilities, `no_new_privs`, a seccomp deny-list, rlimits,
//! a process limit that holds as root (one leased host uid per sandbox), a wall-clock deadline, and
//! the parent-death signal. Built-in models run the same way: the helper (this `skygate` binary,
//! re-executed with a hidden subcommand) runs them inside.
//!
//! If the sandbox cannot be built the prediction fails closed. [`SandboxMode::NoneUnsafe`] exists
//! for development only and logs a warning on every prediction.

pub mod check;
mod cog;
pub mod devices;
mod engine;
mod host;
pub mod inside;
mod jobs;
pub mod probe;
pub mod protocol;
mod schedule;
pub mod seccomp;
pub mod spec;
mod warm;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skygate_core::models::{Backend, CommandModel};

pub use devices::{DeviceLease, DevicePool, LeaseWait};
pub use engine::{ChatEvent, Embedded, EngineError};
pub use host::SandboxReport;
pub use jobs::{JobRoot, UidPool};
pub use spec::{Bind, Limits, Payload, Spec, HELPER_COMMAND, PROBE_COMMAND};

use crate::handle::{pair, JobSide, StopReason};
use crate::{builtin, Job, RunError, RunHandle, Runner};

/// Whether predictions are sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    Namespaces,
    /// No isolation at all: development only.
    NoneUnsafe,
}

/// How the launcher builds sandboxes (from `[sandbox]`).
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// The `skygate` binary re-executed as the helper (normally the running one).
    pub helper: PathBuf,
    /// Where job directories are made (a tmpfs).
    pub job_root: PathBuf,
    /// Extra read-only paths, bound at the same path inside.
    pub ro_binds: Vec<PathBuf>,
    /// Host uids leased to sandboxes when running as root: `host_uid_base ..+ host_uids`.
    pub host_uid_base: u32,
    pub host_uids: u32,
    /// Where the uid lease lock files live (shared by every skygate on the host).
    pub uid_locks: PathBuf,
    pub limits: Limits,
    pub work_bytes: u64,
    pub out_bytes: u64,
    /// Device nodes leased to models that ask for them (`sandbox.devices`), one sandbox at a time.
    pub devices: Vec<PathBuf>,
    /// How long a job waits for its devices before it fails (never past its deadline).
    pub device_wait: Duration,
    /// Real-model runs (generations, embeddings) this node computes at once: generations are granted
    /// one token at a time, round-robin across accounts, so a long run never holds compute for long.
    pub engine_runs: usize,
    /// Real-model runs in progress at once on this node (each holds a warm sandbox); more wait,
    /// admitted round-robin across accounts.
    pub engine_streams: usize,
    /// Real-model requests that may wait for a run at once; past it they are refused (busy).
    pub engine_queue: usize,
}

/// Runs every job in a sandbox (or, in [`SandboxMode::NoneUnsafe`], without one). Dropping it removes
/// its (then empty) job root.
#[derive(Debug)]
pub struct SandboxRunner {
    inner: Arc<Inner>,
}

/// What every launch shares.
#[derive(Debug)]
struct Inner {
    settings: SandboxSettings,
    jobs: JobRoot,
    uids: Option<UidPool>,
    devices: DevicePool,
    /// Idle warm Cog sandboxes (`reuse = "tenant"`).
    warm: warm::Pool,
    /// Idle engine sandboxes (real models), per (model, account).
    engines: engine::Pool,
    /// Admits real-model runs, round-robin across accounts.
    schedule: Arc<schedule::Scheduler>,
    /// Grants the admitted runs their compute, a token (or an embedding batch) at a time,
    /// round-robin across accounts.
    steps: Arc<schedule::Scheduler>,
}

/// One sandbox to start.
struct Launch {
    prediction_id: String,
    payload: Payload,
    model: Option<CommandModel>,
    extra_binds: Vec<Bind>,
    request: Vec<u8>,
    deadline: Duration,
}

impl SandboxRunner {
    /// Prepares the job root and sweeps what an earlier crash left there (outputs never outlive a
    /// job). Fails when the job root cannot be made or a listed device is not a character device.
    pub fn new(settings: SandboxSettings) -> Result<SandboxRunner, String> {
        devices::validate(&settings.devices)?;
        let jobs = JobRoot::open(settings.job_root.clone()).map_err(|e| {
            format!(
                "sandbox.job_dir: cannot create {}: {e}",
                settings.job_root.display()
            )
        })?;
        match jobs.sweep() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed job directories left by an earlier run"),
            Err(e) => return Err(format!("cannot sweep {}: {e}", settings.job_root.display())),
        }
        let uids = if UidPool::needed() && settings.mode == SandboxMode::Namespaces {
            Some(
                UidPool::new(
                    settings.host_uid_base,
                    settings.host_uids,
                    settings.uid_locks.clone(),
                )
                .map_err(|e| format!("cannot create the uid lock directory: {e}"))?,
            )
        } else {
            None
        };
        let devices = DevicePool::new(settings.devices.clone(), settings.uid_locks.clone())
            .map_err(|e| format!("cannot create the lease lock directory: {e}"))?;
        if settings.mode == SandboxMode::NoneUnsafe {
            tracing::warn!(
                "sandbox.mode = \"none-unsafe\": predictions run WITHOUT ANY ISOLATION, with this server's \
                 privileges and network access. Development only."
            );
        }
        Ok(SandboxRunner {
            inner: Arc::new(Inner {
                jobs,
                uids,
                devices,
                warm: warm::Pool::default(),
                engines: engine::Pool::default(),
                schedule: schedule::Scheduler::new(settings.engine_streams, settings.engine_queue),
                // Every waiting step belongs to an admitted run: the admission bounds them.
                steps: schedule::Scheduler::new(settings.engine_runs, usize::MAX),
                settings,
            }),
        })
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.inner.settings
    }

    /// How many warm Cog sandboxes are idle right now.
    pub fn warm_idle(&self) -> usize {
        self.inner.warm.idle()
    }

    /// Starts one sandbox for `payload`, with the model's directory at `/model`. Exposed for `sandbox
    /// check` and the benchmarks; predictions go through [`Runner::start`]. Returns at once: a model
    /// that needs devices first waits for them (bounded by `sandbox.device_wait` and the deadline,
    /// ended by a cancel), and a sandbox that cannot be built ends the handle with an error.
    pub fn start_payload(
        &self,
        prediction_id: String,
        payload: Payload,
        model: Option<&CommandModel>,
        extra_binds: Vec<Bind>,
        request: Vec<u8>,
        deadline: Duration,
    ) -> Result<RunHandle, RunError> {
        let wanted = model.map_or(0, |m| m.devices);
        if usize::try_from(wanted).unwrap_or(usize::MAX) > self.inner.devices.len() {
            return Err(RunError::Unsupported(format!(
                "the model needs {wanted} devices but this server has {}",
                self.inner.devices.len()
            )));
        }
        let launch = Launch {
            prediction_id,
            payload,
            model: model.cloned(),
            extra_binds,
            request,
            deadline,
        };
        let (handle, side) = pair();
        tokio::spawn(launch_and_supervise(self.inner.clone(), launch, side));
        Ok(handle)
    }
}

/// Leases the job's devices (if any), starts its sandbox and supervises it to the end.
async fn launch_and_supervise(inner: Arc<Inner>, mut launch: Launch, side: JobSide) {
    let hint = u64::from(std::process::id()) ^ u64::from(nanos());
    let wanted = launch.model.as_ref().map_or(0, |m| m.devices);
    let asked = Instant::now();
    let devices = if wanted == 0 {
        None
    } else {
        let within = inner.settings.device_wait.min(launch.deadline);
        match inner.devices.lease(wanted, hint, within, side.stopped()).await {
            Ok(l) => Some(l),
            Err(LeaseWait::Stopped) => {
                let err = match side.stop_reason() {
                    Some(StopReason::TimedOut) => RunError::TimedOut(launch.deadline),
                    _ => RunError::Cancelled,
                };
                return side.finish(Err(err));
            }
            Err(LeaseWait::Busy { .. }) if within >= launch.deadline => {
                side.time_out();
                return side.finish(Err(RunError::TimedOut(launch.deadline)));
            }
            Err(LeaseWait::Busy { wanted, waited }) => {
                tracing::warn!(prediction = %launch.prediction_id, wanted, waited_ms = waited.as_millis() as u64, "no device became free");
                return side.finish(Err(RunError::Failed(format!(
                    "the model needs {wanted} device(s) and none became free within {}s; try again",
                    waited.as_secs()
                ))));
            }
            Err(LeaseWait::Failed(e)) => {
                tracing::error!(prediction = %launch.prediction_id, error = %e, "device lease failed");
                return side.finish(Err(RunError::Failed(
                    "the model's devices could not be leased (see the server log)".into(),
                )));
            }
        }
    };
    launch.deadline = launch.deadline.saturating_sub(asked.elapsed());
    match start_run(&inner, launch, hint, devices) {
        Ok(run) => host::supervise(run, side).await,
        Err(e) => side.finish(Err(e)),
    }
}

/// Builds the command of one sandbox (the helper, or the bare model in `none-unsafe` mode) and
/// starts it.
fn start_run(
    inner: &Inner,
    launch: Launch,
    hint: u64,
    devices: Option<DeviceLease>,
) -> Result<host::Run, RunError> {
    let s = &inner.settings;
    let Launch {
        prediction_id,
        payload,
        model,
        extra_binds,
        request,
        mut deadline,
    } = launch;
    let mut limits = s.limits;
    let mut binds: Vec<Bind> = s
        .ro_binds
        .iter()
        .map(|p| Bind {
            src: p.clone(),
            dst: p.clone(),
        })
        .chain(extra_binds)
        .collect();
    let mut hide = vec![(s.job_root.clone(), "/work")];
    if let Some(m) = &model {
        if let Some(dir) = &m.dir {
            binds.push(Bind {
                src: dir.clone(),
                dst: PathBuf::from("/model"),
            });
            hide.push((dir.clone(), "/model"));
        }
        limits.address_space = m.memory.unwrap_or(limits.address_space);
        limits.cpu_seconds = m.cpu_seconds.unwrap_or(limits.cpu_seconds);
        deadline = m.timeout.map_or(deadline, |t| t.min(deadline));
    }
    let unavailable = |e: String| {
        tracing::error!(prediction = %prediction_id, error = %e, "the sandbox could not be prepared");
        RunError::Failed(host::UNAVAILABLE.into())
    };
    let lease = match &inner.uids {
        Some(pool) => Some(pool.lease(hint).map_err(unavailable)?),
        None => None,
    };
    let owner = lease.as_ref().map(|l| l.uid);
    let job = inner
        .jobs
        .create(&format!("{}-{:08x}", short(&prediction_id), nanos()), owner)
        .map_err(|e| unavailable(format!("cannot create a job directory: {e}")))?;
    let sandboxed = s.mode == SandboxMode::Namespaces;
    let nonce = format!(
        "skygate-status-{:016x}{:08x}",
        hint.rotate_left(17) ^ u64::from(nanos()),
        nanos()
    );
    let mut cmd = if sandboxed {
        let spec = Spec {
            nonce: nonce.clone(),
            parent_pid: std::process::id(),
            root: job.root(),
            outbox: job.outbox(),
            helper: s.helper.clone(),
            binds,
            devices: devices.as_ref().map(|d| d.paths().to_vec()).unwrap_or_default(),
            work_bytes: s.work_bytes,
            out_bytes: s.out_bytes,
            limits,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            payload: payload.clone(),
        };
        let json = serde_json::to_string(&spec).map_err(|e| unavailable(e.to_string()))?;
        let mut c = tokio::process::Command::new(&s.helper);
        c.arg(HELPER_COMMAND).arg("outer").arg(json).env_clear();
        if let Some(uid) = owner {
            c.uid(uid).gid(uid);
        }
        c
    } else {
        tracing::warn!(prediction = %prediction_id, "running a model WITHOUT a sandbox (sandbox.mode = \"none-unsafe\")");
        match &payload {
            Payload::Command { argv } => {
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| unavailable("empty command".into()))?;
                let mut c = tokio::process::Command::new(prog);
                c.args(args)
                    .current_dir(job.path())
                    .env("SKYGATE_OUT_DIR", job.outbox())
                    .env(
                        "SKYGATE_MODEL_DIR",
                        model.as_ref().and_then(|m| m.dir.clone()).unwrap_or_default(),
                    );
                c
            }
            Payload::Builtin { .. } => {
                return Err(unavailable("built-in models run in-process in this mode".into()))
            }
            Payload::Cog { .. } => {
                return Err(RunError::Unsupported(
                    "Cog models run only in a sandbox (sandbox.mode = \"namespaces\")".into(),
                ))
            }
            Payload::Engine { .. } => {
                return Err(RunError::Unsupported(
                    "engine models run only in a sandbox (sandbox.mode = \"namespaces\")".into(),
                ))
            }
        }
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| unavailable(format!("cannot start the sandbox helper: {e}")))?;
    Ok(host::Run {
        child,
        request,
        nonce: sandboxed.then_some(nonce),
        deadline,
        builtin: matches!(payload, Payload::Builtin { .. }),
        prediction_id,
        spawned,
        hide,
        job,
        _lease: lease,
        _devices: devices,
        max_file: s.out_bytes,
        cpu_limit_s: limits.cpu_seconds,
    })
}

impl Drop for SandboxRunner {
    fn drop(&mut self) {
        // Only succeeds when empty: a job still being torn down keeps it for the next start's sweep.
        let _ = std::fs::remove_dir(self.inner.jobs.path());
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The first characters of an id, safe in a file name.
fn short(id: &str) -> String {
    id.chars().filter(char::is_ascii_alphanumeric).take(12).collect()
}

impl Runner for SandboxRunner {
    fn start(&self, job: Job) -> Result<RunHandle, RunError> {
        let request = serde_json::to_vec(&serde_json::json!({"id": job.prediction_id, "input": job.input}))
            .map_err(|_| RunError::Failed("the input could not be encoded".into()))?;
        match &job.backend {
            Backend::Builtin(id) => {
                if !builtin::ids().any(|b| b == id) {
                    return Err(RunError::Unsupported(format!("no built-in model named {id:?}")));
                }
                if self.inner.settings.mode == SandboxMode::NoneUnsafe {
                    tracing::warn!(prediction = %job.prediction_id, "running a model WITHOUT a sandbox (sandbox.mode = \"none-unsafe\")");
                    return crate::BuiltinRunner.start(job);
                }
                let payload = Payload::Builtin { id: id.clone() };
                self.start_payload(
                    job.prediction_id,
                    payload,
                    None,
                    Vec::new(),
                    request,
                    job.deadline,
                )
            }
            Backend::Command(m) => {
                let payload = Payload::Command { argv: m.argv.clone() };
                self.start_payload(
                    job.prediction_id,
                    payload,
                    Some(m),
                    Vec::new(),
                    request,
                    job.deadline,
                )
            }
            Backend::Engine(m) if m.kind == skygate_core::models::EngineKind::Llm => {
                if self.inner.settings.mode == SandboxMode::NoneUnsafe {
                    return Err(RunError::Unsupported(
                        "engine models run only in a sandbox (sandbox.mode = \"namespaces\")".into(),
                    ));
                }
                let (messages, sampling) =
                    engine::prediction_request(&job.input, m).map_err(RunError::Failed)?;
                // A prediction without an account is never reused: it gets a key of its own.
                let tenant = job
                    .tenant
                    .unwrap_or_else(|| format!("prediction:{}", job.prediction_id));
                let max = sampling.max_tokens;
                // The queue's claim already held the account to its concurrent-run cap.
                let events = self.chat(m, &tenant, usize::MAX, messages, sampling, job.deadline);
                let (handle, side) = pair();
                tokio::spawn(engine::relay_prediction(events, max, job.deadline, side));
                Ok(handle)
            }
            Backend::Engine(_) => Err(RunError::Unsupported(
                "an embedding model is used through POST /v1/embeddings".into(),
            )),
            Backend::Cog(m) => {
                let payload = Payload::Cog {
                    argv: m.run.argv.clone(),
                    predictor: m.predictor.clone(),
                    warm: false,
                };
                let venv = m.venv.iter().map(|v| Bind {
                    src: v.clone(),
                    dst: PathBuf::from(skygate_core::models::COG_VENV),
                });
                let sandboxed = self.inner.settings.mode == SandboxMode::Namespaces;
                if let (Some(idle), Some(tenant), true) = (m.warm_idle, &job.tenant, sandboxed) {
                    if m.run.devices > 0 {
                        return Err(RunError::Unsupported(
                            "a warm Cog sandbox cannot lease devices".into(),
                        ));
                    }
                    let launch = Launch {
                        prediction_id: job.prediction_id,
                        payload,
                        model: Some(m.run.clone()),
                        extra_binds: venv.collect(),
                        request,
                        deadline: job.deadline,
                    };
                    let (handle, side) = pair();
                    tokio::spawn(warm::run(
                        self.inner.clone(),
                        m.clone(),
                        tenant.clone(),
                        idle,
                        launch,
                        side,
                    ));
                    return Ok(handle);
                }
                self.start_payload(
                    job.prediction_id,
                    payload,
                    Some(&m.run),
                    venv.collect(),
                    request,
                    job.deadline,
                )
            }
        }
    }
}

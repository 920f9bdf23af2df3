//! What the host tells the sandbox helper: the [`Spec`] of one sandbox (passed as JSON on the helper's
//! command line; never carries user input, which goes through stdin), and the [`Status`] line the
//! helper's outer stage writes last on stderr, tagged with the job's nonce so a model cannot forge it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The uid and gid a model runs as inside its sandbox (never 0).
pub const INSIDE_ID: u32 = 1000;

/// The hidden subcommand of the `skygate` binary that runs the helper stages.
pub const HELPER_COMMAND: &str = "__sandbox";

/// The hidden subcommand that runs the escape probes (as a command model inside a sandbox).
pub const PROBE_COMMAND: &str = "__probe";

/// One sandbox, as the helper builds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Tags the status line on stderr (random per job; the model never sees it).
    pub nonce: String,
    /// The host process that launched the helper; the helper exits at once if its parent is gone.
    pub parent_pid: u32,
    /// Host path of the empty directory the sandbox root (a tmpfs) is mounted on.
    pub root: PathBuf,
    /// Host path of the directory the helper copies `/out` into when the model has exited.
    pub outbox: PathBuf,
    /// The helper binary (this `skygate`), re-executed for the inner stage.
    pub helper: PathBuf,
    /// Read-only bind mounts (system directories, the model directory, operator paths).
    pub binds: Vec<Bind>,
    /// Device nodes bound into `/dev` (besides null, zero, random, urandom).
    pub devices: Vec<PathBuf>,
    /// Sizes of the private tmpfs `/work` and `/out`, in bytes.
    pub work_bytes: u64,
    pub out_bytes: u64,
    pub limits: Limits,
    /// Backstop: the helper kills the model after this even if the host does not (the host normally
    /// kills first, at the job's deadline).
    pub deadline_ms: u64,
    pub payload: Payload,
}

/// A read-only bind mount: `src` on the host at `dst` in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
}

/// Resource limits applied inside (rlimits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes.
    pub address_space: u64,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_NPROC, counted for the sandbox's own host uid (see the launcher's uid leases).
    pub processes: u64,
}

/// What runs inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A built-in model, run by the helper itself (it speaks the command protocol on stdout).
    Builtin { id: String },
    /// Any executable, `argv[0]` resolved inside the sandbox, started in `/work`.
    Command { argv: Vec<String> },
    /// A Cog HTTP server started by `argv` in `/model` for `predictor`; the helper relays the job to
    /// it over the sandbox's own loopback and speaks the command protocol for it.
    Cog {
        argv: Vec<String>,
        predictor: String,
        /// Serve one request line after another (a warm sandbox) instead of one request to EOF.
        #[serde(default)]
        warm: bool,
    },
    /// skygate's own inference engine, run by the helper itself: a language model at
    /// [`ENGINE_GGUF`] or an embedding folder at `/model`, serving request lines on stdin until it
    /// closes (see `skygate_inference::worker`).
    Engine {
        kind: skygate_core::models::EngineKind,
        threads: u16,
        context: u32,
    },
}

/// Where a language model's GGUF file appears inside its sandbox.
pub const ENGINE_GGUF: &str = "/model/model.gguf";

/// The last line the outer stage writes on stderr: `<nonce> <json>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The sandbox could not be built; `error` names the step (no host paths).
    SetupFailed { error: String },
    /// The model ran and ended; `signal` is set when it was killed by one.
    Ended {
        code: Option<i32>,
        signal: Option<i32>,
        /// Microseconds from the helper's start until the model was started.
        setup_us: u64,
        /// Microseconds the model ran.
        run_us: u64,
        /// CPU time the model used (user and system), in milliseconds.
        cpu_ms: u64,
        /// Output files copied out of `/out`.
        files: u32,
        /// Why some files were not copied (too many, not regular files, …), if any.
        skipped: Option<String>,
    },
}

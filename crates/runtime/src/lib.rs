//! Model backends: the [`Runner`] seam the server's workers call to execute one prediction, and the
//! built-in demo models ([`BuiltinRunner`]).
//!
//! The seam is process-agnostic. A runner takes a [`Job`] and hands back a [`RunHandle`] at once
//! (`start` never blocks); the handle streams progress (0..=100, never decreasing), can be cancelled,
//! and resolves to an [`Output`] or a [`RunError`]. Every runner enforces the job's deadline itself and
//! stops the work when the handle is cancelled, times out or is dropped.
//!
//! Built-in models are plain deterministic functions of (input JSON, seed) that talk to the outside only
//! through [`Control`] (progress out, stop flag in), so the same code can later run unchanged inside a
//! sandboxed child process. Messages in [`RunError`] are user-facing: they never carry paths, secrets or
//! internal error chains.

pub mod builtin;
mod control;
mod handle;
pub mod sandbox;

use std::time::Duration;

use skygate_core::models::Backend;

pub use builtin::BuiltinRunner;
pub use control::{Control, ModelError, NullControl};
pub use handle::RunHandle;
pub use sandbox::{SandboxMode, SandboxReport, SandboxRunner, SandboxSettings};

/// One prediction to execute.
#[derive(Debug, Clone)]
pub struct Job {
    /// For logs only; the runner does not interpret it.
    pub prediction_id: String,
    pub backend: Backend,
    /// Already validated against the model's input schema by the server (defaults are *not* filled in).
    pub input: serde_json::Value,
    /// Wall-clock budget counted from [`Runner::start`]; past it the job is stopped and ends
    /// [`RunError::TimedOut`].
    pub deadline: Duration,
    /// The account the prediction belongs to: warm sandboxes (`reuse = "tenant"`) are kept per
    /// account and never shared across accounts (`None`: never reused).
    pub tenant: Option<String>,
}

/// One file a model produced.
#[derive(Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// A plain file name such as `output-0.png` (no directories).
    pub name: String,
    /// A MIME type such as `image/png`.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for OutputFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFile")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// What a successful prediction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Text models: the prediction's `output` is this string.
    Text(String),
    /// File models: stored (sealed) and served as output URLs, in this order.
    Files(Vec<OutputFile>),
}

/// Why a prediction did not produce an output. The `Display` text is user-facing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// [`RunHandle::cancel`] was called (or the handle was dropped).
    #[error("the prediction was cancelled")]
    Cancelled,
    /// The job's deadline passed; the work was stopped.
    #[error("the prediction did not finish within its time limit of {}", fmt_secs(*.0))]
    TimedOut(Duration),
    /// The model reported a clear error; the message is meant for the user.
    #[error("{0}")]
    Failed(String),
    /// The model panicked or its process died; the message is meant for the user.
    #[error("{0}")]
    Crashed(String),
    /// This runner cannot run that backend or model.
    #[error("{0}")]
    Unsupported(String),
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Executes predictions. Implementations must be cheap to call from async code: `start` returns at once
/// and the work happens elsewhere (a blocking thread now, a sandboxed child process later).
pub trait Runner: Send + Sync + 'static {
    /// Starts `job`. Errors only when the job cannot start at all (e.g. [`RunError::Unsupported`]);
    /// everything that happens later is reported by [`RunHandle::finish`]. Must be called from within a
    /// Tokio runtime.
    fn start(&self, job: Job) -> Result<RunHandle, RunError>;
}

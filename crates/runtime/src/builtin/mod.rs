//! The built-in demo models, compiled into the binary, and [`BuiltinRunner`] which runs them on Tokio's
//! blocking pool.
//!
//! Each model is a plain function `(input, control) -> Result<Output, ModelError>`: deterministic in its
//! input (including `seed`), no I/O, no clock except `countdown`'s sleeping. The ids here are the
//! `Backend::Builtin` ids of `skygate_core::models::builtin_models()`; a test keeps the two lists equal.
//! Inputs arrive validated against the schema but without defaults filled in, so every model applies the
//! schema's defaults itself and clamps odd values instead of panicking.

mod audio;
mod image;
mod params;
mod simple;
mod text;

use serde_json::Value;
use skygate_core::models::Backend;

use crate::control::{Control, ModelError};
use crate::handle::spawn_in_process;
use crate::{Job, Output, RunError, RunHandle, Runner};

type ModelFn = fn(&Value, &dyn Control) -> Result<Output, ModelError>;

const MODELS: &[(&str, ModelFn)] = &[
    ("echo", simple::echo),
    ("sky-text", text::run),
    ("sky-image", image::run),
    ("sky-audio", audio::run),
    ("countdown", simple::countdown),
    ("fail", simple::fail),
];

/// The ids of the built-in models this binary can run.
pub fn ids() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|(id, _)| *id)
}

fn lookup(id: &str) -> Option<ModelFn> {
    MODELS.iter().find(|(m, _)| *m == id).map(|(_, f)| *f)
}

/// Runs built-in model `id` on the calling thread. This is the whole model side of the seam: a sandboxed
/// child process will call exactly this with its own [`Control`].
pub fn run(id: &str, input: &Value, ctl: &dyn Control) -> Result<Output, RunError> {
    let model = lookup(id).ok_or_else(|| unsupported(id))?;
    model(input, ctl).map_err(|e| match e {
        ModelError::Failed(m) => RunError::Failed(m),
        ModelError::Stopped => RunError::Cancelled,
    })
}

fn unsupported(id: &str) -> RunError {
    RunError::Unsupported(format!("no built-in model named {id:?}"))
}

/// Runs `Backend::Builtin` jobs in this process on Tokio's blocking pool, enforcing the deadline and
/// cancellation. Other backends are [`RunError::Unsupported`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinRunner;

impl Runner for BuiltinRunner {
    fn start(&self, job: Job) -> Result<RunHandle, RunError> {
        let id = match &job.backend {
            Backend::Builtin(id) => id,
            Backend::Command(_) | Backend::Cog(_) | Backend::Engine(_) => {
                return Err(RunError::Unsupported(
                    "command and Cog models run only in the sandbox runner".into(),
                ))
            }
        };
        let model = lookup(id).ok_or_else(|| unsupported(id))?;
        let input = job.input;
        spawn_in_process(job.prediction_id, job.deadline, move |ctl| model(&input, ctl))
    }
}

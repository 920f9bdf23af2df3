//! The only channel between a running model and the outside: progress out, a stop request in. A model
//! that uses nothing else can run in-process (now) or in a sandboxed child process (later) unchanged.

/// Handed to a model while it runs.
pub trait Control: Sync {
    /// Reports progress in percent. Values above 100 count as 100; a value below one already reported
    /// is ignored, so what observers see never decreases.
    fn progress(&self, percent: u8);

    /// Whether the model should stop now (cancelled, past its deadline, or nobody waits any more).
    /// Cheap: models call it every few rows or milliseconds.
    fn should_stop(&self) -> bool;

    /// `Err(ModelError::Stopped)` when the model should stop; meant for `?` in loops.
    fn checkpoint(&self) -> Result<(), ModelError> {
        if self.should_stop() {
            Err(ModelError::Stopped)
        } else {
            Ok(())
        }
    }
}

/// How a model run can end without output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The model saw [`Control::should_stop`] and gave up; the runner knows why (cancel or deadline).
    #[error("stopped on request")]
    Stopped,
    /// A clear, user-facing error (bad input the schema could not express, …).
    #[error("{0}")]
    Failed(String),
}

/// A [`Control`] that ignores progress and never asks to stop: for benchmarks and direct calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullControl;

impl Control for NullControl {
    fn progress(&self, _percent: u8) {}

    fn should_stop(&self) -> bool {
        false
    }
}

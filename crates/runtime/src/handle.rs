//! [`RunHandle`] and the in-process launcher behind it: the work runs on Tokio's blocking pool, and a
//! small supervisor task races it against the deadline and cancellation, then publishes one result.
//!
//! Stopping is cooperative: cancel, deadline and dropping the handle all raise one stop flag that the
//! model polls through [`Control`]. The supervisor then waits (up to [`STOP_GRACE`]) for the work to
//! actually end before reporting, so a finished `finish()` means the model is no longer running.
//!
//! A run that produces text as it goes (a language model) also publishes the text so far on a watch
//! channel ([`RunHandle::partial`]); every other run publishes nothing there.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinError;

use crate::control::{Control, ModelError};
use crate::sandbox::SandboxReport;
use crate::{Output, RunError};

/// How long a stopped job may take to notice its stop flag before the supervisor reports anyway (and
/// the blocking thread is left to finish on its own).
const STOP_GRACE: Duration = Duration::from_secs(2);

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// The user-facing message for a model that panicked.
pub(crate) const CRASHED: &str = "the model crashed";

/// State shared by the handle, the supervisor and the running model.
struct Shared {
    /// `RUNNING` until the first stop reason wins.
    stop: AtomicU8,
    wake: Notify,
}

impl Shared {
    fn request_stop(&self, reason: u8) {
        if self
            .stop
            .compare_exchange(RUNNING, reason, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // A stored permit wakes the supervisor even if it is not waiting yet.
            self.wake.notify_one();
        }
    }

    fn reason(&self) -> u8 {
        self.stop.load(Ordering::Acquire)
    }
}

/// What the model sees: progress goes to the watch channel, the stop flag comes from [`Shared`].
struct JobControl {
    shared: Arc<Shared>,
    progress: Arc<watch::Sender<u8>>,
}

impl Control for JobControl {
    fn progress(&self, percent: u8) {
        raise_progress(&self.progress, percent);
    }

    fn should_stop(&self) -> bool {
        self.shared.reason() != RUNNING
    }
}

fn raise_progress(tx: &watch::Sender<u8>, percent: u8) {
    let percent = percent.min(100);
    tx.send_if_modified(|cur| {
        if percent > *cur {
            *cur = percent;
            true
        } else {
            false
        }
    });
}

/// A started prediction. Dropping it without [`finish`](RunHandle::finish) stops the work.
#[derive(Debug)]
pub struct RunHandle {
    progress: watch::Receiver<u8>,
    partial: watch::Receiver<String>,
    shared: Arc<Shared>,
    result: Option<oneshot::Receiver<Result<Output, RunError>>>,
    report: Arc<std::sync::Mutex<Option<SandboxReport>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("stop", &self.reason()).finish()
    }
}

impl RunHandle {
    /// Progress in percent, 0..=100, never decreasing; 100 once the job succeeded. The channel closes
    /// when the work has ended and the result is final (a model that ignored its stop flag past the
    /// grace period keeps it open until it returns; `finish` does not wait for that).
    pub fn progress(&self) -> watch::Receiver<u8> {
        self.progress.clone()
    }

    /// The output text produced so far, for runs that produce it as they go (language models): it only
    /// grows, one change per piece of text. Other runs never change it. The channel closes when the
    /// work has ended (at once for runs that never publish partial output); the final output is what
    /// [`RunHandle::finish`] returns, not the last value seen here.
    pub fn partial(&self) -> watch::Receiver<String> {
        self.partial.clone()
    }

    /// Asks the job to stop; it ends [`RunError::Cancelled`] unless it already ended otherwise.
    /// Idempotent, never blocks.
    pub fn cancel(&self) {
        self.shared.request_stop(CANCELLED);
    }

    /// Waits for the job to end. Once this returns, the work has stopped (or, for a model that ignores
    /// its stop flag, has been abandoned after a grace period).
    pub async fn finish(self) -> Result<Output, RunError> {
        self.finish_with_report().await.0
    }

    /// As [`RunHandle::finish`], with what the sandbox reported (`None` when the job ran in-process).
    pub async fn finish_with_report(mut self) -> (Result<Output, RunError>, Option<SandboxReport>) {
        let result = self.wait_result().await;
        let report = self.report.lock().ok().and_then(|mut r| r.take());
        (result, report)
    }

    async fn wait_result(&mut self) -> Result<Output, RunError> {
        match self.result.take() {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(RunError::Crashed("the runner stopped unexpectedly".into()))),
            None => Err(RunError::Crashed("the runner stopped unexpectedly".into())),
        }
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // After `finish` the job is over and this is a no-op; otherwise nobody is waiting: stop the work.
        self.shared.request_stop(CANCELLED);
    }
}

/// The launcher's side of a [`RunHandle`]: raise progress, learn about stop requests, publish the result.
pub(crate) struct JobSide {
    report: Arc<std::sync::Mutex<Option<SandboxReport>>>,
    shared: Arc<Shared>,
    progress: Arc<watch::Sender<u8>>,
    partial: watch::Sender<String>,
    result: oneshot::Sender<Result<Output, RunError>>,
}

/// Why a job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancelled,
    TimedOut,
}

impl JobSide {
    pub(crate) fn progress(&self, percent: u8) {
        raise_progress(&self.progress, percent);
    }

    /// Appends `piece` to the partial output text (see [`RunHandle::partial`]).
    pub(crate) fn append_text(&self, piece: &str) {
        if !piece.is_empty() {
            self.partial.send_modify(|text| text.push_str(piece));
        }
    }

    /// Marks the deadline as passed (unless a stop reason already won).
    pub(crate) fn time_out(&self) {
        self.shared.request_stop(TIMED_OUT);
    }

    /// The reason a stop was asked for, if any.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        match self.shared.reason() {
            RUNNING => None,
            TIMED_OUT => Some(StopReason::TimedOut),
            _ => Some(StopReason::Cancelled),
        }
    }

    /// Resolves once a stop was asked for (cancel, drop of the handle, or [`JobSide::time_out`]).
    pub(crate) async fn stopped(&self) {
        loop {
            if self.shared.reason() != RUNNING {
                return;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Records what the sandbox did (read by [`RunHandle::finish_with_report`]).
    pub(crate) fn set_report(&self, report: SandboxReport) {
        if let Ok(mut slot) = self.report.lock() {
            *slot = Some(report);
        }
    }

    /// Publishes the result; progress reaches 100 on success and the progress and partial output
    /// channels close.
    pub(crate) fn finish(self, result: Result<Output, RunError>) {
        if result.is_ok() {
            raise_progress(&self.progress, 100);
        }
        drop(self.progress);
        drop(self.partial);
        let _ = self.result.send(result);
    }
}

/// A handle and its launcher side, for launchers other than [`spawn_in_process`].
pub(crate) fn pair() -> (RunHandle, JobSide) {
    let shared = Arc::new(Shared {
        stop: AtomicU8::new(RUNNING),
        wake: Notify::new(),
    });
    let (progress_tx, progress_rx) = watch::channel(0u8);
    let (partial_tx, partial_rx) = watch::channel(String::new());
    let (result_tx, result_rx) = oneshot::channel();
    let report = Arc::new(std::sync::Mutex::new(None));
    let handle = RunHandle {
        progress: progress_rx,
        partial: partial_rx,
        shared: shared.clone(),
        result: Some(result_rx),
        report: report.clone(),
    };
    let side = JobSide {
        report,
        shared,
        progress: Arc::new(progress_tx),
        partial: partial_tx,
        result: result_tx,
    };
    (handle, side)
}

/// Runs `work` on the blocking pool under `deadline` and returns its handle at once.
pub(crate) fn spawn_in_process<F>(
    prediction_id: String,
    deadline: Duration,
    work: F,
) -> Result<RunHandle, RunError>
where
    F: FnOnce(&dyn Control) -> Result<Output, ModelError> + Send + 'static,
{
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| RunError::Crashed("the runner is not available".into()))?;
    let shared = Arc::new(Shared {
        stop: AtomicU8::new(RUNNING),
        wake: Notify::new(),
    });
    let (progress_tx, progress_rx) = watch::channel(0u8);
    let progress_tx = Arc::new(progress_tx);
    let (result_tx, result_rx) = oneshot::channel();

    let ctl = JobControl {
        shared: shared.clone(),
        progress: progress_tx.clone(),
    };
    let mut join = rt.spawn_blocking(move || work(&ctl));

    let sup = shared.clone();
    rt.spawn(async move {
        let finished = tokio::select! {
            biased;
            r = &mut join => Some(r),
            _ = sup.wake.notified() => None,
            _ = tokio::time::sleep(deadline) => {
                sup.request_stop(TIMED_OUT);
                None
            }
        };
        let result = match finished {
            Some(r) => outcome(r, sup.reason(), deadline, &prediction_id),
            None => {
                if tokio::time::timeout(STOP_GRACE, &mut join).await.is_err() {
                    tracing::warn!(
                        prediction_id = %prediction_id,
                        "model did not stop within {STOP_GRACE:?} of being asked; abandoning it"
                    );
                }
                Err(stopped(sup.reason(), deadline))
            }
        };
        if result.is_ok() {
            raise_progress(&progress_tx, 100);
        }
        drop(progress_tx);
        // The receiver is gone when the handle was dropped: nobody wants the result.
        let _ = result_tx.send(result);
    });

    Ok(RunHandle {
        progress: progress_rx,
        // In-process models publish no partial output: the sender is gone, so the channel is closed.
        partial: watch::channel(String::new()).1,
        shared,
        result: Some(result_rx),
        report: Arc::default(),
    })
}

fn stopped(reason: u8, deadline: Duration) -> RunError {
    match reason {
        TIMED_OUT => RunError::TimedOut(deadline),
        _ => RunError::Cancelled,
    }
}

/// Maps the end of the blocking work (when it ended on its own) to the job's result.
fn outcome(
    joined: Result<Result<Output, ModelError>, JoinError>,
    reason: u8,
    deadline: Duration,
    prediction_id: &str,
) -> Result<Output, RunError> {
    match joined {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(ModelError::Failed(msg))) => Err(RunError::Failed(msg)),
        // The model saw the flag before the supervisor saw the wake-up.
        Ok(Err(ModelError::Stopped)) if reason != RUNNING => Err(stopped(reason, deadline)),
        Ok(Err(ModelError::Stopped)) => Err(RunError::Failed("the model stopped early".into())),
        Err(e) => {
            let detail = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into())
            } else {
                "the blocking task was cancelled (runtime shutting down)".into()
            };
            tracing::warn!(prediction_id = %prediction_id, "model crashed: {detail}");
            Err(RunError::Crashed(CRASHED.into()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn partial_text_grows_then_closes_with_the_result() {
        let (handle, side) = pair();
        let mut partial = handle.partial();
        side.append_text("Hel");
        partial.changed().await.unwrap();
        assert_eq!(*partial.borrow_and_update(), "Hel");
        side.append_text("");
        side.append_text("lo");
        partial.changed().await.unwrap();
        assert_eq!(*partial.borrow_and_update(), "Hello");
        side.finish(Ok(Output::Text("Hello".into())));
        assert!(partial.changed().await.is_err(), "closed once the job ended");
        assert!(matches!(handle.finish().await, Ok(Output::Text(t)) if t == "Hello"));
    }

    #[tokio::test]
    async fn in_process_runs_publish_no_partial_text() {
        let handle = spawn_in_process("p".into(), Duration::from_secs(5), |_| {
            Ok(Output::Text("done".into()))
        })
        .unwrap();
        let mut partial = handle.partial();
        assert!(partial.changed().await.is_err());
        assert_eq!(*partial.borrow(), "");
        assert!(matches!(handle.finish().await, Ok(Output::Text(t)) if t == "done"));
    }
}

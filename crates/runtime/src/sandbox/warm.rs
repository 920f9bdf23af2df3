//! Warm Cog sandboxes (`reuse = "tenant"`): one sandbox per (model, account) is kept after a
//! prediction and given the account's next prediction of that model, so Cog's start-up is paid once.
//! A warm sandbox is never shared across accounts (the pool is keyed by account), serves one
//! prediction at a time (a concurrent one starts its own sandbox), and is destroyed after its idle
//! timeout, on cancel, deadline or any protocol error, when its server died, after [`MAX_AGE`], and
//! when the runner is dropped. Requests go as lines on the helper's stdin; the helper answers each
//! with protocol lines, output files inline (`{"file": {"name", "data"}}`) and `{"done": "ok"}` (or
//! `"stop"` when the sandbox is not fit for another prediction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use skygate_core::models::CogModel;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use super::host::{self, Pipes, Run, Seen};
use super::protocol::{self, Message};
use super::spec::Status;
use super::{start_run, Inner, Launch, Payload, SandboxReport};
use crate::handle::{JobSide, StopReason};
use crate::{Output, OutputFile, RunError};

/// The helper's own backstop for a warm sandbox: it ends after this however it is used.
const LIFETIME: Duration = Duration::from_secs(3600);
/// A warm sandbox older than this is not reused (so a reused one has time left for its job).
const MAX_AGE: Duration = Duration::from_secs(1800);
/// The longest line from a warm helper (output files arrive inline, base64).
const MAX_WARM_LINE: usize = 512 << 20;

/// What a warm helper writes.
enum Line {
    Msg(Message),
    File(OutputFile),
    /// The end of one answer; `true` when the sandbox can take another prediction.
    Done(bool),
}

fn parse(line: &[u8]) -> Result<Option<Line>, String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => return protocol::parse_line(line).map(|m| m.map(Line::Msg)),
    };
    if let Some(d) = v.get("done") {
        return Ok(Some(Line::Done(d == "ok")));
    }
    if let Some(f) = v.get("file") {
        let name = f["name"].as_str().unwrap_or_default().to_owned();
        if !protocol::is_output_name(&name) {
            return Err("the Cog relay sent a file without a valid name".into());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f["data"].as_str().unwrap_or_default())
            .map_err(|_| "the Cog relay sent a file that is not base64".to_owned())?;
        let content_type = protocol::mime_type(&name, &bytes[..bytes.len().min(64)]).to_owned();
        return Ok(Some(Line::File(OutputFile {
            name,
            content_type,
            bytes,
        })));
    }
    protocol::parse_line(line).map(|m| m.map(Line::Msg))
}

/// One warm sandbox.
struct Warm {
    run: Run,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Result<Line, String>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    born: Instant,
    /// Identifies it in the pool (the idle reaper removes only the sandbox it was started for).
    id: u64,
    /// Microseconds from the spawn of the helper to its first answer, reported by its first use.
    start_us: Option<u64>,
}

type Key = (CogModel, String);

/// The idle warm sandboxes of one runner.
#[derive(Debug, Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<Key, WarmSlot>>,
    next: std::sync::atomic::AtomicU64,
}

/// A pooled sandbox (`Debug` without its internals).
struct WarmSlot(Warm);

impl std::fmt::Debug for WarmSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WarmSlot({})", self.0.id)
    }
}

impl Pool {
    fn take(&self, key: &Key) -> Option<Warm> {
        let mut w = self.idle.lock().ok()?.remove(key)?.0;
        // A sandbox whose helper ended while idle (killed, its backstop) is not handed out.
        matches!(w.run.child.try_wait(), Ok(None)).then_some(w)
    }

    /// How many warm sandboxes are idle (for tests and metrics).
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Runs one prediction of `model` for `tenant` in the tenant's warm sandbox, starting one if none is
/// idle, and keeps the sandbox for `idle` afterwards when it is fit for more.
pub(super) async fn run(
    inner: Arc<Inner>,
    model: CogModel,
    tenant: String,
    idle: Duration,
    launch: Launch,
    side: JobSide,
) {
    let key = (model, tenant);
    let deadline = key
        .0
        .run
        .timeout
        .map_or(launch.deadline, |t| t.min(launch.deadline));
    let mut request = launch.request.clone();
    request.push(b'\n');
    let prediction = launch.prediction_id.clone();
    let (mut warm, reused) = match inner.warm.take(&key) {
        Some(w) => (w, true),
        None => match start(&inner, &key.0, launch) {
            Ok(w) => (w, false),
            Err(e) => return side.finish(Err(e)),
        },
    };
    let began = Instant::now();
    let (result, keep) = drive(&mut warm, &request, deadline, &side).await;
    let start_us = if reused {
        0
    } else {
        warm.start_us.take().unwrap_or(0)
    };
    let run_us = u64::try_from(began.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .saturating_sub(start_us);
    let exit = match (&result, side.stop_reason()) {
        (_, Some(StopReason::Cancelled)) => "cancelled".to_owned(),
        (_, Some(StopReason::TimedOut)) => "deadline".to_owned(),
        (Ok(_), _) | (Err(RunError::Failed(_)), _) if keep => if reused {
            "answered (warm)"
        } else {
            "answered (started)"
        }
        .to_owned(),
        _ => "sandbox died".to_owned(),
    };
    tracing::info!(prediction = %prediction, reused, start_ms = start_us / 1000, run_ms = run_us / 1000, exit = %exit, "warm Cog run ended");
    side.set_report(SandboxReport {
        sandboxed: true,
        start_us,
        run_us,
        exit,
    });
    if keep && warm.born.elapsed() < MAX_AGE {
        put_back(&inner, key, warm, idle);
    } else {
        let _ = warm.run.child.kill().await;
    }
    side.finish(result);
}

/// Starts a warm sandbox: the helper with the warm Cog payload and the helper's lifetime as backstop.
fn start(inner: &Inner, model: &CogModel, launch: Launch) -> Result<Warm, RunError> {
    let mut sandbox = model.run.clone();
    // The per-prediction deadline is the host's; the helper's backstop is the sandbox's lifetime.
    sandbox.timeout = None;
    let launch = Launch {
        payload: Payload::Cog {
            argv: model.run.argv.clone(),
            predictor: model.predictor.clone(),
            warm: true,
        },
        model: Some(sandbox),
        deadline: LIFETIME,
        ..launch
    };
    let hint = u64::from(std::process::id()) ^ u64::from(super::nanos());
    let mut run = start_run(inner, launch, hint, None)?;
    let Pipes { stdin, lines, stderr } = Pipes::attach(&mut run, parse, MAX_WARM_LINE, 64)
        .ok_or_else(|| RunError::Failed("no stdin".into()))?;
    let id = inner.warm.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Warm {
        born: run.spawned,
        run,
        stdin,
        lines,
        stderr,
        id,
        start_us: None,
    })
}

/// Sends one request and reads its answer. `true` with the result when the sandbox may be reused.
async fn drive(
    w: &mut Warm,
    request: &[u8],
    deadline: Duration,
    side: &JobSide,
) -> (Result<Output, RunError>, bool) {
    if w.stdin.write_all(request).await.is_err() {
        return (Err(died(w).await), false);
    }
    let sent = Instant::now();
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    let (mut files, mut seen) = (Vec::new(), Seen::default());
    let keep = loop {
        tokio::select! {
            line = w.lines.recv() => match line {
                Some(Ok(Line::Done(keep))) => break keep,
                Some(Ok(Line::File(f))) => files.push(f),
                Some(Ok(Line::Msg(m))) => host::take(&mut seen, m, side, &w.run.prediction_id),
                Some(Err(e)) => return (Err(RunError::Failed(e)), false),
                None => return (Err(died(w).await), false),
            },
            () = side.stopped() => return (Err(RunError::Cancelled), false),
            () = &mut timer => {
                side.time_out();
                return (Err(RunError::TimedOut(deadline)), false);
            }
        }
    };
    if w.start_us.is_none() {
        w.start_us = Some(
            u64::try_from(w.run.spawned.elapsed().saturating_sub(sent.elapsed()).as_micros()).unwrap_or(0),
        );
    }
    let result = match seen.error {
        Some(e) => Err(RunError::Failed(e)),
        None => host::output_of(files, seen.output, "the Cog server answered without an output"),
    };
    (result, keep)
}

/// Why a warm sandbox ended under a prediction (its setup failed, or it died).
async fn died(w: &mut Warm) -> RunError {
    let tail = host::kill_and_tail(&mut w.run, &mut w.stderr).await;
    match host::split_status(&tail, w.run.nonce.as_deref()).0 {
        Some(Status::SetupFailed { error }) => host::setup_failed(&w.run.prediction_id, &error),
        _ => RunError::Crashed("the sandbox ended unexpectedly".into()),
    }
}

/// Keeps `w` for the tenant's next prediction (unless one is already kept) and reaps it after `idle`.
fn put_back(inner: &Arc<Inner>, key: Key, w: Warm, idle: Duration) {
    let id = w.id;
    let Ok(mut map) = inner.warm.idle.lock() else {
        return;
    };
    if map.contains_key(&key) {
        return; // dropped here: kill_on_drop ends the sandbox
    }
    map.insert(key.clone(), WarmSlot(w));
    drop(map);
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::time::sleep(idle).await;
        let Some(inner) = weak.upgrade() else { return };
        let gone = {
            let Ok(mut map) = inner.warm.idle.lock() else {
                return;
            };
            match map.get(&key) {
                Some(WarmSlot(w)) if w.id == id => map.remove(&key),
                _ => None,
            }
        };
        if let Some(WarmSlot(mut w)) = gone {
            let _ = w.run.child.kill().await;
            tracing::info!(sandbox = id, "warm Cog sandbox ended after its idle timeout");
        }
    });
}

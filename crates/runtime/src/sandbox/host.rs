//! The host side of one run: feeds the request to the model's stdin, reads its protocol lines from
//! stdout (bounded line length and total), keeps only the tail of stderr, enforces the deadline and
//! cancellation by killing the process (in a sandbox that ends the whole pid namespace), then turns
//! what happened into a [`RunError`] or an [`Output`] (files read from the job's outbox).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::jobs::{JobDir, UidLease};
use super::protocol::{self, Message};
use super::spec::Status;
use crate::handle::{JobSide, StopReason, CRASHED};
use crate::{Output, OutputFile, RunError};

/// The longest stdout line accepted.
const MAX_LINE: usize = 8 * 1024 * 1024;
/// The most stdout read from one model.
const MAX_STDOUT: usize = 64 * 1024 * 1024;
/// How much of stderr is kept (its tail).
const STDERR_TAIL: usize = 16 * 1024;
/// How much of stderr an error message shows.
const ERROR_TAIL: usize = 1024;
/// How long the pipes may stay open after the process ended.
const DRAIN: Duration = Duration::from_secs(1);

/// What the sandbox did, for the prediction's metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// Whether the run was sandboxed (false only with `sandbox.mode = "none-unsafe"`).
    pub sandboxed: bool,
    /// Time to build the sandbox and start the model (microseconds).
    pub start_us: u64,
    /// Time the model ran (microseconds).
    pub run_us: u64,
    /// How it ended: `exited 0`, `exited 3`, `killed by signal 9`, `cpu limit`, `file size limit`,
    /// `deadline`, `cancelled`, `protocol error`, `setup failed`, `sandbox died`.
    pub exit: String,
}

/// One started process and what is needed to judge its end.
pub(crate) struct Run {
    pub child: Child,
    pub request: Vec<u8>,
    /// Set when sandboxed: the tag of the helper's status line.
    pub nonce: Option<String>,
    pub deadline: Duration,
    pub builtin: bool,
    pub prediction_id: String,
    pub spawned: Instant,
    /// Host paths to hide in error messages, with what to show instead.
    pub hide: Vec<(PathBuf, &'static str)>,
    pub job: JobDir,
    /// Held until the run is over (released on drop).
    pub _lease: Option<UidLease>,
    /// The job's devices, released (like the uid) only once the sandbox is gone.
    pub _devices: Option<super::devices::DeviceLease>,
    pub max_file: u64,
    /// The CPU-time limit in force (seconds).
    pub cpu_limit_s: u64,
}

/// What the user sees when a sandbox could not be built (the reason goes to the server log).
pub(crate) const UNAVAILABLE: &str =
    "the sandbox could not be created, so the model was not run (see the server log)";

/// What stdout carried.
#[derive(Default)]
pub(crate) struct Seen {
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    protocol: Option<String>,
    logs: usize,
}

/// The helper reported that it could not build the sandbox: logged, and the user's error.
pub(crate) fn setup_failed(prediction: &str, error: &str) -> RunError {
    tracing::error!(prediction = %prediction, error = %error, "the sandbox could not be created");
    RunError::Failed(UNAVAILABLE.into())
}

/// A run's output: its files if it wrote any, else its last `{"output"}` (a string as the text, other
/// JSON as JSON text); `missing` says what happened when there is neither.
pub(crate) fn output_of(
    files: Vec<OutputFile>,
    output: Option<serde_json::Value>,
    missing: &str,
) -> Result<Output, RunError> {
    if !files.is_empty() {
        return Ok(Output::Files(files));
    }
    match output {
        Some(serde_json::Value::String(s)) => Ok(Output::Text(s)),
        Some(v) => Ok(Output::Text(v.to_string())),
        None => Err(RunError::Failed(missing.into())),
    }
}

/// Supervises `run` to its end and publishes the result on `side`; the report goes to `report`.
pub(crate) async fn supervise(mut run: Run, side: JobSide) {
    let (result, rep) = drive(&mut run, &side).await;
    let prediction = std::mem::take(&mut run.prediction_id);
    // The job directory (with the copied-out files), the uid and the device leases go before the result
    // is published.
    drop(run);
    tracing::info!(
        prediction = %prediction,
        sandboxed = rep.sandboxed,
        start_ms = rep.start_us / 1000,
        run_ms = rep.run_us / 1000,
        exit = %rep.exit,
        "model run ended"
    );
    side.set_report(rep);
    side.finish(result);
}

async fn drive(run: &mut Run, side: &JobSide) -> (Result<Output, RunError>, SandboxReport) {
    let mut stdin = run.child.stdin.take();
    let request = std::mem::take(&mut run.request);
    tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            // A model that does not read its input closes the pipe: not an error.
            let _ = s.write_all(&request).await;
            let _ = s.shutdown().await;
        }
    });
    let (tx, mut rx) = mpsc::channel::<Result<Message, String>>(64);
    if let Some(out) = run.child.stdout.take() {
        tokio::spawn(read_lines(out, tx, protocol::parse_line, MAX_LINE, MAX_STDOUT));
    }
    let stderr = run.child.stderr.take().map(|e| tokio::spawn(read_tail(e)));
    let deadline = tokio::time::sleep(run.deadline);
    tokio::pin!(deadline);
    let mut seen = Seen::default();
    let mut stdout_open = true;
    let mut killed = false;
    let waited = loop {
        tokio::select! {
            m = rx.recv(), if stdout_open => match m {
                Some(Ok(msg)) => take(&mut seen, msg, side, &run.prediction_id),
                Some(Err(e)) => {
                    seen.protocol.get_or_insert(e);
                    killed = true;
                    let _ = run.child.start_kill();
                }
                None => stdout_open = false,
            },
            w = run.child.wait() => break w,
            () = side.stopped(), if !killed => {
                killed = true;
                let _ = run.child.start_kill();
            }
            () = &mut deadline, if !killed => {
                side.time_out();
                killed = true;
                let _ = run.child.start_kill();
            }
        }
    };
    let elapsed = micros(run.spawned.elapsed());
    // What is still in the pipe (a process that exited may have written its last lines).
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(m) = rx.recv().await {
            match m {
                Ok(msg) => take(&mut seen, msg, side, &run.prediction_id),
                Err(e) => {
                    seen.protocol.get_or_insert(e);
                }
            }
        }
    })
    .await;
    let tail = match stderr {
        Some(h) => tokio::time::timeout(DRAIN, h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (status, model_stderr) = split_status(&tail, run.nonce.as_deref());
    let mut rep = SandboxReport {
        sandboxed: run.nonce.is_some(),
        start_us: 0,
        run_us: elapsed,
        exit: String::new(),
    };
    let mut cpu_exceeded = false;
    let (code, signal) = match (&status, &waited) {
        (
            Some(Status::Ended {
                code,
                signal,
                setup_us,
                run_us,
                cpu_ms,
                ..
            }),
            _,
        ) => {
            rep.start_us = *setup_us + elapsed.saturating_sub(*setup_us + *run_us);
            rep.run_us = *run_us;
            // As pid 1 of its namespace the model ignores SIGXCPU; the hard limit's SIGKILL ends it.
            cpu_exceeded = signal.is_some() && *cpu_ms >= run.cpu_limit_s.saturating_mul(1000);
            (*code, *signal)
        }
        (_, Ok(w)) if run.nonce.is_none() => {
            use std::os::unix::process::ExitStatusExt;
            (w.code(), w.signal())
        }
        _ => (None, None),
    };
    if let Some(reason) = side.stop_reason() {
        rep.exit = match reason {
            StopReason::Cancelled => "cancelled".into(),
            StopReason::TimedOut => "deadline".into(),
        };
        return (
            Err(match reason {
                StopReason::Cancelled => RunError::Cancelled,
                StopReason::TimedOut => RunError::TimedOut(run.deadline),
            }),
            rep,
        );
    }
    if let Some(e) = seen.protocol.take() {
        rep.exit = "protocol error".into();
        return (Err(RunError::Failed(e)), rep);
    }
    if let Some(Status::SetupFailed { error }) = &status {
        rep.exit = "setup failed".into();
        return (Err(setup_failed(&run.prediction_id, error)), rep);
    }
    if run.nonce.is_some() && status.is_none() {
        rep.exit = "sandbox died".into();
        return (
            Err(RunError::Crashed("the sandbox ended unexpectedly".into())),
            rep,
        );
    }
    rep.exit = match (code, signal) {
        (_, Some(_)) if cpu_exceeded => "cpu limit".into(),
        (_, Some(libc::SIGXCPU)) => "cpu limit".into(),
        (_, Some(libc::SIGXFSZ)) => "file size limit".into(),
        (_, Some(s)) => format!("killed by signal {s}"),
        (Some(c), _) => format!("exited {c}"),
        _ => "unknown".into(),
    };
    if code != Some(0) {
        let stderr_text = hide_paths(&last_lines(&model_stderr, ERROR_TAIL), &run.hide);
        let msg = match (seen.error.take(), signal) {
            (Some(e), _) => return (Err(RunError::Failed(e)), rep),
            (None, Some(_)) if cpu_exceeded => "the model exceeded its CPU time limit".to_owned(),
            (None, Some(libc::SIGXCPU)) => "the model exceeded its CPU time limit".to_owned(),
            (None, Some(libc::SIGXFSZ)) => "the model exceeded its file size limit".to_owned(),
            (None, Some(s)) => format!(
                "the model was killed by signal {s} (it may have exceeded its memory, process or time limits)"
            ),
            (None, None) if run.builtin => return (Err(RunError::Crashed(CRASHED.into())), rep),
            (None, None) => match code {
                Some(c) if stderr_text.is_empty() => format!("the model exited with code {c}"),
                Some(c) => format!("the model exited with code {c}: {stderr_text}"),
                None => "the model ended without an exit code".to_owned(),
            },
        };
        return (Err(RunError::Failed(msg)), rep);
    }
    let files = match read_outbox(&run.job.outbox(), run.max_file).await {
        Ok(f) => f,
        Err(e) => return (Err(RunError::Failed(e)), rep),
    };
    let missing = "the model exited without an output (no {\"output\": …} line and no files in /out)";
    (output_of(files, seen.output.take(), missing), rep)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How many log lines are passed to the server log per run.
const MAX_LOG_LINES: usize = 200;

pub(crate) fn take(seen: &mut Seen, msg: Message, side: &JobSide, prediction: &str) {
    match msg {
        // 100 comes with the final status.
        Message::Progress(p) => side.progress(p.min(99)),
        Message::Log(line) => {
            seen.logs += 1;
            if seen.logs <= MAX_LOG_LINES {
                let line: String = line.chars().take(1000).collect();
                tracing::info!(prediction = %prediction, model_log = %line, "model log");
            }
        }
        Message::Output(v) => seen.output = Some(v),
        Message::Error(e) => seen.error = Some(e.chars().take(1000).collect()),
    }
}

/// Reads protocol lines from stdout into `tx` with `parse`, at most `max_line` bytes a line and
/// `max_total` in all; the first error ends it.
pub(crate) async fn read_lines<T>(
    out: tokio::process::ChildStdout,
    tx: mpsc::Sender<Result<T, String>>,
    parse: fn(&[u8]) -> Result<Option<T>, String>,
    max_line: usize,
    max_total: usize,
) {
    let mut r = BufReader::with_capacity(64 * 1024, out);
    let mut line = Vec::new();
    let mut total = 0usize;
    loop {
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        total += n;
        if line.len() + n > max_line || total > max_total {
            let e = if total > max_total {
                format!("the model wrote more than {} MiB on stdout", max_total >> 20)
            } else {
                format!(
                    "the model wrote a line longer than {} MiB on stdout",
                    max_line >> 20
                )
            };
            let _ = tx.send(Err(e)).await;
            return;
        }
        line.extend_from_slice(chunk);
        r.consume(n);
        if done {
            match parse(&line) {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            line.clear();
        }
    }
    if !line.is_empty() {
        let _ = tx
            .send(parse(&line).and_then(|m| m.ok_or_else(String::new)))
            .await;
    }
}

/// The pipes of a long-lived sandbox that serves request lines (a warm Cog sandbox, an engine):
/// its stdin, its stdout parsed line by line on a task of its own, and its stderr's tail.
pub(crate) struct Pipes<T> {
    pub stdin: tokio::process::ChildStdin,
    pub lines: mpsc::Receiver<Result<T, String>>,
    pub stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl<T: Send + 'static> Pipes<T> {
    /// Takes the pipes of `run`'s child (`None` without a stdin).
    pub(crate) fn attach(
        run: &mut Run,
        parse: fn(&[u8]) -> Result<Option<T>, String>,
        max_line: usize,
        capacity: usize,
    ) -> Option<Pipes<T>> {
        let stdin = run.child.stdin.take()?;
        let (tx, lines) = mpsc::channel(capacity);
        if let Some(out) = run.child.stdout.take() {
            tokio::spawn(read_lines(out, tx, parse, max_line, usize::MAX));
        }
        let stderr = match run.child.stderr.take() {
            Some(e) => tokio::spawn(read_tail(e)),
            None => tokio::spawn(async { Vec::new() }),
        };
        Some(Pipes { stdin, lines, stderr })
    }
}

/// Kills a long-lived sandbox that ended or broke under a request and reads its stderr's tail (waiting
/// at most a second), for the status line and the log.
pub(crate) async fn kill_and_tail(run: &mut Run, stderr: &mut tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let _ = run.child.kill().await;
    tokio::time::timeout(Duration::from_secs(1), stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// Reads a pipe to its end, keeping the last [`STDERR_TAIL`] bytes.
pub(crate) async fn read_tail(mut e: tokio::process::ChildStderr) -> Vec<u8> {
    let mut tail = Vec::with_capacity(STDERR_TAIL * 2);
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = e.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL * 2 {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    tail
}

/// Splits the helper's status line (the last line starting with `nonce`) from the model's stderr.
pub(crate) fn split_status(tail: &[u8], nonce: Option<&str>) -> (Option<Status>, Vec<u8>) {
    let Some(nonce) = nonce else {
        return (None, tail.to_vec());
    };
    let text = String::from_utf8_lossy(tail);
    let tag = format!("{nonce} ");
    match text.rfind(&format!("\n{tag}")) {
        Some(i) => {
            let line = text[i + 1 + tag.len()..].lines().next().unwrap_or("");
            let status = serde_json::from_str(line).ok();
            (status, text[..i].as_bytes().to_vec())
        }
        None => (None, tail.to_vec()),
    }
}

/// The last lines of `bytes` within `max` bytes, trimmed.
pub(crate) fn last_lines(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    // Start at a line boundary when the cut fell inside a line.
    let cut = match (start > 0, cut.find('\n')) {
        (true, Some(i)) => &cut[i + 1..],
        _ => cut,
    };
    cut.trim().to_owned()
}

fn hide_paths(text: &str, hide: &[(PathBuf, &'static str)]) -> String {
    let mut out = text.to_owned();
    for (p, shown) in hide {
        let p = p.to_string_lossy();
        if !p.is_empty() && p != "/" {
            out = out.replace(p.as_ref(), shown);
        }
    }
    out
}

/// Reads the output files the helper copied out, in name order.
async fn read_outbox(dir: &Path, max_file: u64) -> Result<Vec<OutputFile>, String> {
    let mut names = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(_) => return Ok(Vec::new()),
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        let regular = e.file_type().await.map(|t| t.is_file()).unwrap_or(false);
        if regular && protocol::is_output_name(&name) {
            names.push(name);
        }
    }
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let len = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        if len > max_file {
            return Err(format!(
                "the output file {name} is larger than the limit of {max_file} bytes"
            ));
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|_| format!("the output file {name} could not be read"))?;
        let content_type = protocol::mime_type(&name, &bytes[..bytes.len().min(64)]).to_owned();
        files.push(OutputFile {
            name,
            content_type,
            bytes,
        });
    }
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_found_only_with_their_nonce() {
        let tail = b"model says hi\nabc {\"setup_failed\":{\"error\":\"x\"}}\nnonce1 {\"setup_failed\":{\"error\":\"mount: EPERM\"}}\n";
        let (s, rest) = split_status(tail, Some("nonce1"));
        assert_eq!(
            s,
            Some(Status::SetupFailed {
                error: "mount: EPERM".into()
            })
        );
        assert!(String::from_utf8_lossy(&rest).contains("model says hi"));
        let (s, _) = split_status(b"x\nforged {\"setup_failed\":{\"error\":\"\"}}\n", Some("nonce1"));
        assert_eq!(s, None);
    }

    #[test]
    fn error_tails_are_short_and_hide_paths() {
        let long = format!("{}\nlast line /srv/models/x/run.py failed\n", "y".repeat(5000));
        let t = last_lines(long.as_bytes(), 1024);
        assert!(t.len() <= 1024 && t.starts_with("last line"), "{t}");
        let hidden = hide_paths(&t, &[(PathBuf::from("/srv/models/x"), "/model")]);
        assert_eq!(hidden, "last line /model/run.py failed");
    }
}

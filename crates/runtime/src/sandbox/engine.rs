//! Engine sandboxes: real models (`skygate_inference`) served from warm sandboxes, one per
//! (model, account) and never shared across accounts, so a model is loaded once per tenant and not
//! per request. The weights are bound read-only and memory-mapped, so tenants share them through the
//! page cache while each tenant's process, KV cache and prompts stay its own.
//!
//! A sandbox serves one request at a time; a concurrent request of the same account starts another
//! (up to [`IDLE_PER_KEY`] are kept idle). A request whose caller goes away is cancelled in the
//! engine before its next token, and the sandbox goes back to the pool. A sandbox that breaks the
//! protocol, dies, outlives [`MAX_AGE`] or idles past the model's idle timeout is destroyed.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use skygate_core::models::{CommandModel, EngineKind, EngineModel};
use skygate_inference::embed::{EmbedInput, Embedder, EmbedderOptions};
use skygate_inference::worker::{self, Reply, Request};
use skygate_inference::{Completion, Llm, LlmOptions, Message, Sampling};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use super::host::{self, Pipes, Run};
use super::schedule::Scheduler;
use super::spec::{Bind, Status, ENGINE_GGUF};
use super::{start_run, Inner, Launch, Payload};

/// The helper's own backstop: an engine sandbox ends after this however it is used.
const LIFETIME: Duration = Duration::from_secs(3600);
/// An engine sandbox older than this is not reused.
const MAX_AGE: Duration = Duration::from_secs(1800);
/// How long a model may take to load before its sandbox is given up.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Idle sandboxes kept per (model, account).
const IDLE_PER_KEY: usize = 2;
/// The longest reply line (embeddings of 2,048 inputs arrive in one line).
const MAX_REPLY: usize = 128 << 20;

/// What a chat stream yields, in order: `Started`, `Text` pieces, then `Done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    Started { prompt_tokens: u32 },
    Text(String),
    Done(Completion),
}

/// Why an engine request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request itself is at fault (a parameter, or too long for the window): the caller's error.
    #[error("{0}")]
    Input(skygate_inference::Error),
    /// The model could not be started (sandbox, load); details are in the server log.
    #[error("{0}")]
    Unavailable(String),
    /// The model failed under the request (it crashed, broke the protocol, or ran past the deadline).
    #[error("{0}")]
    Failed(String),
    /// Too many requests are waiting for a run on this node; try again shortly.
    #[error("the server is busy: too many requests are waiting for a model; try again shortly")]
    Busy,
}

/// Vectors of one embedding request.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

/// One running engine sandbox.
struct Engine {
    run: Run,
    stdin: ChildStdin,
    replies: mpsc::Receiver<Result<Reply, String>>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    id: u64,
}

struct Slot(Engine);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineSandbox({})", self.0.id)
    }
}

type Key = (EngineModel, String);

/// The idle engine sandboxes of one runner.
#[derive(Debug, Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<Key, Vec<Slot>>>,
    next: AtomicU64,
    started: AtomicU64,
}

impl Pool {
    fn take(&self, key: &Key) -> Option<Engine> {
        let mut map = self.idle.lock().ok()?;
        let slots = map.get_mut(key)?;
        while let Some(Slot(mut e)) = slots.pop() {
            if matches!(e.run.child.try_wait(), Ok(None)) && e.run.spawned.elapsed() < MAX_AGE {
                return Some(e);
            }
        }
        None
    }

    /// How many engine sandboxes are idle (tests, metrics).
    pub(super) fn idle(&self) -> usize {
        self.idle
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// How many engine sandboxes were started since the runner was made.
    pub(super) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

fn parse(line: &[u8]) -> Result<Option<Reply>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|_| "the engine sent a line that is not part of its protocol".to_owned())
}

/// Starts the engine sandbox of `model` and waits until the model is loaded.
async fn start(inner: &Arc<Inner>, model: &EngineModel) -> Result<Engine, EngineError> {
    if let Some(why) = &model.unavailable {
        return Err(EngineError::Unavailable(why.clone()));
    }
    let (dir, extra_binds) = match model.kind {
        EngineKind::Llm => (
            None,
            vec![Bind {
                src: model.path.clone(),
                dst: PathBuf::from(ENGINE_GGUF),
            }],
        ),
        EngineKind::Embedding => (Some(model.path.clone()), Vec::new()),
    };
    let sandbox = CommandModel {
        argv: Vec::new(),
        dir,
        timeout: None,
        memory: model.memory,
        // The CPU budget of a warm sandbox's whole life, not of one request.
        cpu_seconds: Some(LIFETIME.as_secs() * u64::from(model.threads.max(1))),
        devices: 0,
    };
    let launch = Launch {
        prediction_id: "engine".into(),
        payload: Payload::Engine {
            kind: model.kind,
            threads: model.threads,
            context: model.context_length,
        },
        model: Some(sandbox),
        extra_binds,
        request: Vec::new(),
        deadline: LIFETIME,
    };
    let hint = u64::from(std::process::id()) ^ u64::from(super::nanos());
    let mut run =
        start_run(inner, launch, hint, None).map_err(|e| EngineError::Unavailable(e.to_string()))?;
    let Pipes {
        stdin,
        lines: replies,
        stderr,
    } = Pipes::attach(&mut run, parse, MAX_REPLY, 256)
        .ok_or_else(|| EngineError::Unavailable("no stdin".into()))?;
    inner.engines.started.fetch_add(1, Ordering::Relaxed);
    let mut engine = Engine {
        run,
        stdin,
        replies,
        stderr,
        id: inner.engines.next.fetch_add(1, Ordering::Relaxed),
    };
    let first = tokio::time::timeout(LOAD_TIMEOUT, engine.replies.recv()).await;
    match first {
        Ok(Some(Ok(Reply::Ready { .. }))) => {
            tracing::info!(sandbox = engine.id, model = %file_name(&model.path), load_ms = engine.run.spawned.elapsed().as_millis() as u64, "engine sandbox ready");
            Ok(engine)
        }
        Ok(Some(Ok(Reply::Error(e)))) => {
            let _ = engine.run.child.kill().await;
            tracing::error!(model = %file_name(&model.path), error = %e.message, "the model did not load in its sandbox");
            Err(EngineError::Unavailable(
                "the model could not be loaded (see the server log)".into(),
            ))
        }
        Err(_) => {
            let _ = engine.run.child.kill().await;
            tracing::error!(model = %file_name(&model.path), "the model did not load within {}s", LOAD_TIMEOUT.as_secs());
            Err(EngineError::Unavailable("the model did not load in time".into()))
        }
        Ok(_) => Err(EngineError::Unavailable(died(&mut engine).await)),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why an engine sandbox ended: its setup failure, or that it died (the details go to the log).
async fn died(e: &mut Engine) -> String {
    let tail = host::kill_and_tail(&mut e.run, &mut e.stderr).await;
    match host::split_status(&tail, e.run.nonce.as_deref()) {
        (Some(Status::SetupFailed { error }), _) => {
            tracing::error!(sandbox = e.id, error = %error, "the engine sandbox could not be set up");
            host::UNAVAILABLE.to_owned()
        }
        (_, rest) => {
            tracing::error!(sandbox = e.id, stderr = %host::last_lines(&rest, 2000), "the engine sandbox died");
            "the model's sandbox ended unexpectedly".to_owned()
        }
    }
}

/// An engine for `tenant`: an idle one of theirs, or a new one.
async fn acquire(inner: &Arc<Inner>, key: &Key) -> Result<Engine, EngineError> {
    match inner.engines.take(key) {
        Some(e) => Ok(e),
        None => start(inner, &key.0).await,
    }
}

/// Keeps `e` for the tenant's next request and reaps it after the model's idle timeout.
fn put_back(inner: &Arc<Inner>, key: Key, e: Engine) {
    let (id, idle) = (e.id, key.0.idle);
    {
        let Ok(mut map) = inner.engines.idle.lock() else {
            return;
        };
        let slots = map.entry(key.clone()).or_default();
        if slots.len() >= IDLE_PER_KEY {
            return; // dropped: kill_on_drop ends the sandbox
        }
        slots.push(Slot(e));
    }
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::time::sleep(idle).await;
        let Some(inner) = weak.upgrade() else { return };
        let gone = inner.engines.idle.lock().ok().and_then(|mut map| {
            let slots = map.get_mut(&key)?;
            let at = slots.iter().position(|s| s.0.id == id)?;
            let slot = slots.swap_remove(at);
            if slots.is_empty() {
                map.remove(&key);
            }
            Some(slot)
        });
        if let Some(Slot(mut e)) = gone {
            let _ = e.run.child.kill().await;
            tracing::info!(sandbox = id, "engine sandbox ended after its idle timeout");
        }
    });
}

async fn send(e: &mut Engine, req: &Request) -> Result<(), ()> {
    let mut line = serde_json::to_vec(req).map_err(drop)?;
    line.push(b'\n');
    e.stdin.write_all(&line).await.map_err(drop)?;
    e.stdin.flush().await.map_err(drop)
}

impl super::SandboxRunner {
    /// Generates an answer to `messages` with `model` in `tenant`'s sandbox, once the node's scheduler
    /// admits it (at most `cap` of `tenant`'s runs at once). Events arrive on the returned channel;
    /// dropping it cancels the generation before its next token. Past `deadline` the generation is
    /// cancelled and ends with [`EngineError::Failed`].
    #[allow(clippy::too_many_arguments)]
    pub fn chat(
        &self,
        model: &EngineModel,
        tenant: &str,
        cap: usize,
        messages: Vec<Message>,
        sampling: Sampling,
        deadline: Duration,
    ) -> mpsc::Receiver<Result<ChatEvent, EngineError>> {
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        let key = (model.clone(), tenant.to_owned());
        tokio::spawn(async move {
            // Waiting for a run ends when the caller goes away.
            let admitted = tokio::select! {
                p = inner.schedule.admit(&key.1, cap) => p,
                () = tx.closed() => return,
            };
            let Ok(_permit) = admitted else {
                let _ = tx.send(Err(EngineError::Busy)).await;
                return;
            };
            let mut e = match acquire(&inner, &key).await {
                Ok(e) => e,
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            };
            let req = Request::Chat {
                messages,
                sampling,
                paced: true,
            };
            let (result, keep) = drive_chat(&mut e, req, &tx, deadline, &inner.steps, &key.1).await;
            if let Err(err) = result {
                let _ = tx.send(Err(err)).await;
            }
            if keep {
                put_back(&inner, key, e);
            } else {
                let _ = e.run.child.kill().await;
            }
        });
        rx
    }

    /// Embeds `inputs` with `model` in `tenant`'s sandbox (at most `cap` of `tenant`'s runs at once).
    pub async fn embed(
        &self,
        model: &EngineModel,
        tenant: &str,
        cap: usize,
        inputs: Vec<EmbedInput>,
        deadline: Duration,
    ) -> Result<Embedded, EngineError> {
        let key = (model.clone(), tenant.to_owned());
        let _permit = self
            .inner
            .schedule
            .admit(tenant, cap)
            .await
            .map_err(|_| EngineError::Busy)?;
        let mut e = acquire(&self.inner, &key).await?;
        let _step = self
            .inner
            .steps
            .admit(tenant, usize::MAX)
            .await
            .map_err(|_| EngineError::Busy)?;
        let fail = |m: &str| EngineError::Failed(m.to_owned());
        let answer = async {
            send(&mut e, &Request::Embed { inputs })
                .await
                .map_err(|()| fail("the model's sandbox ended"))?;
            match e.replies.recv().await {
                Some(Ok(Reply::Embeddings {
                    vectors,
                    dimensions,
                    prompt_tokens,
                })) => worker::decode_vectors(&vectors, dimensions)
                    .map(|vectors| Embedded {
                        vectors,
                        prompt_tokens,
                    })
                    .ok_or_else(|| fail("the engine sent vectors that do not decode")),
                Some(Ok(Reply::Error(w))) => Err(from_wire(w)),
                _ => Err(fail("the model's sandbox ended unexpectedly")),
            }
        };
        let result = match tokio::time::timeout(deadline, answer).await {
            Ok(r) => r,
            Err(_) => Err(fail("the embedding did not finish in time")),
        };
        match &result {
            // The engine answered (vectors or a refusal): it can take the next request.
            Ok(_) | Err(EngineError::Input(_)) => put_back(&self.inner, key, e),
            Err(_) => {
                let _ = e.run.child.kill().await;
            }
        }
        result
    }

    /// How many engine sandboxes are idle right now.
    pub fn engines_idle(&self) -> usize {
        self.inner.engines.idle()
    }

    /// How many engine sandboxes were started (each loads its model once).
    pub fn engines_started(&self) -> u64 {
        self.inner.engines.started()
    }

    /// Real-model runs (running, waiting) on this node.
    pub fn engine_load(&self) -> (usize, usize) {
        self.inner.schedule.load()
    }
}

fn from_wire(w: worker::WireError) -> EngineError {
    match skygate_inference::Error::from(w) {
        e @ (skygate_inference::Error::Invalid { .. }
        | skygate_inference::Error::ContextLengthExceeded(_)) => EngineError::Input(e),
        e => EngineError::Failed(e.to_string()),
    }
}

/// Runs one chat request on `e`, forwarding events to `tx`. Returns the error to report (if any) and
/// whether the sandbox can serve another request.
/// A generation stopped at its deadline.
fn too_late() -> EngineError {
    EngineError::Failed("the generation did not finish in time".into())
}

async fn drive_chat(
    e: &mut Engine,
    req: Request,
    tx: &mpsc::Sender<Result<ChatEvent, EngineError>>,
    deadline: Duration,
    steps: &Arc<Scheduler>,
    tenant: &str,
) -> (Result<(), EngineError>, bool) {
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    // The prompt and the first token are the first step.
    let mut step = tokio::select! {
        p = steps.admit(tenant, usize::MAX) => p.ok(),
        () = tx.closed() => return (Ok(()), true),
        () = &mut timer => {
            return (Err(too_late()), true)
        }
    };
    if send(e, &req).await.is_err() {
        return (Err(EngineError::Failed(died(e).await)), false);
    }
    // Set once a cancel was sent: replies are drained to `done` but no longer forwarded.
    let mut cancelled: Option<Result<(), EngineError>> = None;
    loop {
        let reply = tokio::select! {
            r = e.replies.recv() => r,
            () = tx.closed(), if cancelled.is_none() => {
                if send(e, &Request::Cancel).await.is_err() {
                    return (Ok(()), false);
                }
                cancelled = Some(Ok(()));
                continue;
            }
            () = &mut timer, if cancelled.is_none() => {
                if send(e, &Request::Cancel).await.is_err() {
                    return (Err(too_late()), false);
                }
                cancelled = Some(Err(too_late()));
                continue;
            }
        };
        if let Some(Ok(Reply::Yield)) = reply {
            // The token is made: the compute goes to whoever is next, then (in turn) back here.
            drop(step.take());
            if cancelled.is_some() {
                // The cancel already sent answers this yield.
                continue;
            }
            let next = tokio::select! {
                p = steps.admit(tenant, usize::MAX) => Ok(p.ok()),
                () = tx.closed() => Err(Ok(())),
                () = &mut timer => Err(Err(too_late())),
            };
            let answer = match next {
                Ok(p) => {
                    step = p;
                    Request::Step
                }
                Err(why) => {
                    cancelled = Some(why);
                    Request::Cancel
                }
            };
            if send(e, &answer).await.is_err() {
                return (Err(EngineError::Failed(died(e).await)), false);
            }
            continue;
        }
        let event = match reply {
            Some(Ok(Reply::Started { prompt_tokens })) => ChatEvent::Started { prompt_tokens },
            Some(Ok(Reply::Text(t))) => ChatEvent::Text(t),
            Some(Ok(Reply::Done(c))) => {
                if let Some(r) = cancelled {
                    return (r, true);
                }
                let _ = tx.send(Ok(ChatEvent::Done(c))).await;
                return (Ok(()), true);
            }
            Some(Ok(Reply::Error(w))) => {
                let err = from_wire(w);
                let keep = matches!(err, EngineError::Input(_));
                return (cancelled.unwrap_or(Err(err)), keep);
            }
            Some(Ok(_)) => {
                return (
                    Err(EngineError::Failed("the engine broke its protocol".into())),
                    false,
                )
            }
            Some(Err(m)) => {
                tracing::error!(sandbox = e.id, error = %m, "engine protocol error");
                return (
                    Err(EngineError::Failed("the engine broke its protocol".into())),
                    false,
                );
            }
            None => return (Err(EngineError::Failed(died(e).await)), false),
        };
        if cancelled.is_none() && tx.send(Ok(event)).await.is_err() {
            // The caller went away between two events: cancel as above.
            if send(e, &Request::Cancel).await.is_err() {
                return (Ok(()), false);
            }
            cancelled = Some(Ok(()));
        }
    }
}

/// The inner stage of an engine sandbox: load the model and serve request lines until stdin closes.
pub(super) fn serve_inside(kind: EngineKind, threads: u16, context: u32) -> ExitCode {
    let input = BufReader::new(std::io::stdin());
    let out = std::io::stdout().lock();
    let code = match kind {
        EngineKind::Llm => worker::serve_llm(
            || {
                let opts = LlmOptions {
                    threads,
                    context: Some(context),
                    ..LlmOptions::default()
                };
                Llm::load(Path::new(ENGINE_GGUF), opts)
            },
            input,
            out,
        ),
        EngineKind::Embedding => worker::serve_embedder(
            || {
                let opts = EmbedderOptions {
                    threads,
                    ..EmbedderOptions::default()
                };
                Embedder::load(Path::new("/model"), opts)
            },
            input,
            out,
        ),
    };
    ExitCode::from(code)
}

/// A language model's prediction input (`prompt` or `messages`, `system_prompt`, `max_tokens`,
/// `temperature`, `top_p`, `seed`, `stop`; already checked against the model's input schema) as a
/// chat request.
pub(super) fn prediction_request(
    input: &serde_json::Value,
    model: &EngineModel,
) -> Result<(Vec<Message>, Sampling), String> {
    let mut messages = Vec::new();
    if let Some(system) = input.get("system_prompt").and_then(|v| v.as_str()) {
        messages.push(Message {
            role: "system".into(),
            content: system.to_owned(),
        });
    }
    match (
        input.get("messages"),
        input.get("prompt").and_then(|v| v.as_str()),
    ) {
        (Some(list), None) => {
            let list: Vec<Message> = serde_json::from_value(list.clone())
                .map_err(|_| "messages must be a list of {role, content}".to_owned())?;
            for m in list {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant") => r,
                    other => return Err(format!("unknown message role {other:?}")),
                };
                messages.push(Message {
                    role: role.to_owned(),
                    content: m.content,
                });
            }
        }
        (None, Some(prompt)) => messages.push(Message {
            role: "user".into(),
            content: prompt.to_owned(),
        }),
        _ => return Err("give either prompt or messages".into()),
    }
    if !messages.iter().any(|m| m.role == "user") {
        return Err("messages need at least one user message".into());
    }
    let num = |k: &str| input.get(k).and_then(serde_json::Value::as_f64);
    let stop = match input.get("stop") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "stop must be a string or a list of strings".to_owned())?,
    };
    let sampling = Sampling {
        fit_to_context: input.get("max_tokens").is_none(),
        max_tokens: input
            .get("max_tokens")
            .and_then(serde_json::Value::as_u64)
            .map_or(model.max_tokens, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        temperature: num("temperature").map_or(1.0, |v| v as f32),
        top_p: num("top_p").map_or(1.0, |v| v as f32),
        seed: input.get("seed").and_then(serde_json::Value::as_u64),
        stop,
        presence_penalty: num("presence_penalty").map_or(0.0, |v| v as f32),
        frequency_penalty: num("frequency_penalty").map_or(0.0, |v| v as f32),
    };
    sampling.check().map_err(|e| e.to_string())?;
    Ok((messages, sampling))
}

/// Turns a chat stream into a prediction's end: the text as its output, published as it grows (one
/// change per piece, see `RunHandle::partial`), progress as the share of `max_tokens` produced; a
/// cancel or the deadline of the prediction drops the stream (which cancels the generation).
pub(super) async fn relay_prediction(
    mut events: mpsc::Receiver<Result<ChatEvent, EngineError>>,
    max_tokens: u32,
    deadline: Duration,
    side: crate::handle::JobSide,
) {
    let (mut text, mut tokens) = (String::new(), 0u32);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Ok(ChatEvent::Started { .. })) => {}
                Some(Ok(ChatEvent::Text(t))) => {
                    text.push_str(&t);
                    side.append_text(&t);
                    tokens += 1;
                    let pct = (u64::from(tokens) * 99 / u64::from(max_tokens.max(1))).min(99);
                    side.progress(u8::try_from(pct).unwrap_or(99));
                }
                Some(Ok(ChatEvent::Done(_))) => return side.finish(Ok(crate::Output::Text(text))),
                Some(Err(e)) => return side.finish(Err(crate::RunError::Failed(e.to_string()))),
                None => return side.finish(Err(crate::RunError::Crashed("the model ended without an answer".into()))),
            },
            () = side.stopped() => {
                drop(events);
                let err = match side.stop_reason() {
                    Some(crate::handle::StopReason::TimedOut) => crate::RunError::TimedOut(deadline),
                    _ => crate::RunError::Cancelled,
                };
                return side.finish(Err(err));
            }
        }
    }
}

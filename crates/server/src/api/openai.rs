//! The OpenAI-compatible inference routes (DESIGN §7): `POST /v1/chat/completions` (JSON, or
//! Server-Sent Events with `stream: true`) and `POST /v1/embeddings`, served by real models running
//! in per-account engine sandboxes. Same keys, projects, scopes and request limits as the predictions
//! API; errors in OpenAI's shape (`{"error": {message, type, param, code}}`) so the OpenAI SDKs raise
//! the right exception. Nothing a caller sends or gets here is stored (zero data retention).
//!
//! Every parameter the model cannot honour (`n` > 1, tools, image parts, `logit_bias`, …) is a 400
//! naming it, never silently ignored; unknown parameters are refused as OpenAI refuses them.

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Map, Value};
use skygate_core::models::{Backend, EngineKind, EngineModel};
use skygate_core::predictions::{PredictionId, TokenUsage, UsageRecord};
use skygate_core::{AccountId, Mode, ProjectId, Timestamp};
use skygate_inference::embed::EmbedInput;
use skygate_inference::{Completion, Finish, Message, Sampling};
use skygate_proto::{ErrorId, PredictionStatus};
use skygate_runtime::sandbox::{ChatEvent, EngineError};
use tokio::sync::mpsc;

use crate::auth::CreateAuth;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::limits::{RateInfo, RateSlot, TokenGrant};
use crate::state::AppState;

/// The most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBED_INPUTS: usize = 2048;

/// An error in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl OpenAiError {
    /// A 400 `invalid_request_error` naming `param`.
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
            retry_after: None,
        }
    }

    /// A 400 for a parameter this server cannot honour.
    fn unsupported(param: &str, what: &str) -> Self {
        OpenAiError {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, format!("{what} is not supported by this server's models."))
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn model_not_found(slug: &str, route: &str) -> Self {
        let shown = if skygate_core::models::is_valid_slug(slug) {
            slug
        } else {
            "(invalid)"
        };
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{shown}` does not exist or cannot be used with {route}."),
            kind: "not_found_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    fn server(status: StatusCode, message: impl Into<String>) -> Self {
        OpenAiError {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// The documented error envelope of the rest of the API, in OpenAI's shape (authentication, limits,
/// body problems and internal errors reach these routes as [`ApiError`]s).
impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        let status = StatusCode::from_u16(e.id.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, code) = match e.id {
            ErrorId::Unauthorized => ("authentication_error", Some("invalid_api_key")),
            ErrorId::Forbidden | ErrorId::RequestBlocked => ("permission_error", None),
            ErrorId::RateLimitExceeded => ("rate_limit_error", Some("rate_limit_exceeded")),
            ErrorId::NotFound | ErrorId::ModelNotFound => ("not_found_error", None),
            _ if status.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let message = if e.details.is_empty() {
            e.message
        } else {
            format!("{}: {}", e.message, e.details)
        };
        OpenAiError {
            // OpenAI answers a body it cannot use with 400, never 422.
            status: if status == StatusCode::UNPROCESSABLE_ENTITY {
                StatusCode::BAD_REQUEST
            } else {
                status
            },
            message,
            kind,
            param: None,
            code,
            retry_after: e.retry_after,
        }
    }
}

impl From<EngineError> for OpenAiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Input(skygate_inference::Error::ContextLengthExceeded(m)) => {
                OpenAiError::invalid("messages", m).with_code("context_length_exceeded")
            }
            EngineError::Input(skygate_inference::Error::Invalid { param, message }) => {
                OpenAiError::invalid(param, message)
            }
            EngineError::Input(other) => {
                OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
            EngineError::Unavailable(m) => OpenAiError {
                retry_after: Some(5),
                ..OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, m)
            },
            EngineError::Failed(m) => OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, m),
            e @ EngineError::Busy => OpenAiError {
                retry_after: Some(1),
                ..OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            },
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        res
    }
}

type Reply<T> = Result<T, OpenAiError>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates, checks the request, create and token limits of `model` (headers set either way:
/// the token limit's numbers land in `tokens`), and finds the engine model of `kind`. `estimate`
/// gives the tokens the request may use at most, from the model it names (`None`: unknown model).
#[allow(clippy::too_many_arguments)]
async fn admit<'a>(
    state: &'a AppState,
    CreateAuth(auth): CreateAuth,
    slot: Option<&RateSlot>,
    tokens: &mut Option<RateInfo>,
    model: Option<&str>,
    kind: EngineKind,
    route: &str,
    estimate: impl FnOnce(Option<&EngineModel>) -> u32,
) -> Reply<(crate::auth::ApiKeyAuth, &'a EngineModel, Metered)> {
    let spec = model.and_then(|m| state.models().get(m));
    let counted = spec.map_or("-", |s| s.slug.as_str());
    let engine = spec.and_then(|s| match &s.backend {
        Backend::Engine(m) => Some(m),
        _ => None,
    });
    let (checked, grant) = state
        .limits()
        .check_tokens(&auth, counted, estimate(engine))
        .await;
    *tokens = grant.as_ref().map(|g| g.info);
    let mut metered = Metered {
        state: state.clone(),
        account: auth.account().clone(),
        project: auth.project().clone(),
        mode: auth.mode(),
        model: counted.to_owned(),
        billable: spec.is_some_and(|s| s.billable),
        grant,
        started: Instant::now(),
        tokens: None,
        status: PredictionStatus::Failed,
    };
    if checked.1.is_err() {
        // Refused: nothing was taken, nothing to give back.
        metered.grant = None;
    }
    RateSlot::fill(slot, checked)?;
    let slug = model.ok_or_else(|| OpenAiError::invalid("model", "you must provide a model parameter"))?;
    let m = match spec.map(|s| (s, &s.backend)) {
        Some((s, Backend::Engine(m))) if m.kind == kind => {
            if auth.mode() == Mode::Test && !s.test_ok {
                return Err(ApiError::forbidden(format!(
                    "Test keys (sk_test_) cannot run {slug:?}; use a live key or a model marked test_ok."
                ))
                .into());
            }
            m
        }
        _ => return Err(OpenAiError::model_not_found(slug, route)),
    };
    if m.unavailable.is_some() {
        return Err(
            EngineError::Unavailable(format!("The model `{slug}` is unavailable on this server.")).into(),
        );
    }
    Ok((auth, m, metered))
}

/// A text's share of a token estimate: a token is about four bytes of English, rounded up.
fn estimate_text(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// One admitted run's accounting, done once when the run ends however it ends (answered, failed,
/// or its client gone mid-stream): the token limit is corrected from the estimate to the tokens
/// really used, and a usage record (model, prompt and completion tokens, time; never the text) is
/// sealed. A run the engine never started took nothing: its estimate comes back and no record is
/// written.
struct Metered {
    state: AppState,
    account: AccountId,
    project: ProjectId,
    mode: Mode,
    model: String,
    billable: bool,
    grant: Option<TokenGrant>,
    started: Instant,
    /// `None` until the engine accepted the request.
    tokens: Option<TokenUsage>,
    /// How the run ended so far: once started, `Cancelled` until it is answered or fails.
    status: PredictionStatus,
}

impl Metered {
    fn started(&mut self, prompt: u32) {
        self.tokens = Some(TokenUsage {
            prompt,
            completion: 0,
        });
        self.status = PredictionStatus::Cancelled;
    }

    /// One more piece of text streamed (a token, as the engine reports them).
    fn produced(&mut self) {
        if let Some(t) = &mut self.tokens {
            t.completion = t.completion.saturating_add(1);
        }
    }

    fn finished(&mut self, completion: u32) {
        if let Some(t) = &mut self.tokens {
            t.completion = completion;
        }
        self.status = PredictionStatus::Succeeded;
    }

    fn failed(&mut self) {
        self.status = PredictionStatus::Failed;
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let (grant, tokens) = (self.grant.take(), self.tokens);
        if grant.is_none() && tokens.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        let account = self.account.clone();
        let record = tokens.and_then(|t| {
            let units = if self.billable && self.mode == Mode::Live {
                f64::from(t.total())
            } else {
                0.0
            };
            Some(UsageRecord {
                prediction: PredictionId::generate().ok()?,
                project: self.project.clone(),
                model: std::mem::take(&mut self.model),
                mode: self.mode,
                status: self.status,
                predict_time: self.started.elapsed().as_secs_f64(),
                units,
                unit: "tokens".to_owned(),
                at: Timestamp::now(),
                tokens: Some(t),
            })
        });
        runtime.spawn(async move {
            if let Some(grant) = grant {
                let used = tokens.map_or(0, |t| t.total());
                state.limits().settle_tokens(&grant, used).await;
            }
            if let Some(record) = record {
                if let Err(e) = state.store().record_usage(&account, &record, record.at).await {
                    tracing::warn!(error = %e, "could not record the usage of a model run");
                }
            }
        });
    }
}

fn object(body: Value) -> Reply<Map<String, Value>> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(OpenAiError::invalid(
            "body",
            "The request body must be a JSON object.",
        )),
    }
}

fn number(body: &Map<String, Value>, key: &str, lo: f64, hi: f64, lo_open: bool, default: f32) -> Reply<f32> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            let ok = v <= hi && if lo_open { v > lo } else { v >= lo };
            if ok {
                Ok(v as f32)
            } else {
                let open = if lo_open { "(" } else { "[" };
                Err(
                    OpenAiError::invalid(key, format!("{key} must be in {open}{lo}, {hi}], got {v}"))
                        .with_code("invalid_value"),
                )
            }
        }
        Some(_) => Err(OpenAiError::invalid(key, format!("{key} must be a number"))),
    }
}

/// What a chat request asks, checked.
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    sampling: Sampling,
    stream: bool,
    include_usage: bool,
}

/// The parameters `/v1/chat/completions` knows. Those after `user` are accepted only with their
/// neutral value (anything else is a 400 naming them).
const CHAT_KEYS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "parallel_tool_calls",
    "store",
    "metadata",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
];

/// Refuses a parameter this route does not know, as OpenAI does (never silently ignored).
fn only_known(body: &Map<String, Value>, known: &[&str]) -> Reply<()> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(OpenAiError::invalid(
            k.clone(),
            format!("Unrecognized request argument supplied: {k}"),
        )),
        None => Ok(()),
    }
}

fn is_neutral(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn parse_chat(body: Value) -> Reply<ChatRequest> {
    let body = object(body)?;
    only_known(&body, CHAT_KEYS)?;
    for key in [
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "store",
        "audio",
        "prediction",
        "web_search_options",
        "reasoning_effort",
    ] {
        if body.get(key).is_some_and(|v| !is_neutral(v)) {
            return Err(OpenAiError::unsupported(key, key));
        }
    }
    if let Some(m) = body.get("modalities").filter(|v| !is_neutral(v)) {
        if m != &json!(["text"]) {
            return Err(OpenAiError::unsupported(
                "modalities",
                "An output modality other than text",
            ));
        }
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) if f.get("type") == Some(&json!("text")) => {}
        Some(_) => {
            return Err(OpenAiError::unsupported(
                "response_format",
                "A response_format other than text",
            ))
        }
    }
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(n) if n.as_u64().is_some_and(|n| n > 1) => {
            return Err(OpenAiError::unsupported("n", "More than one choice (n > 1)"))
        }
        Some(_) => {
            return Err(OpenAiError::invalid("n", "n must be a positive integer").with_code("invalid_value"))
        }
    }
    let model = match body.get("model") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(OpenAiError::invalid("model", "model must be a string")),
    };
    let messages = parse_messages(body.get("messages"))?;
    let max_tokens = match (body.get("max_completion_tokens"), body.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => Some(("max_completion_tokens", v)),
        (_, Some(v)) if !v.is_null() => Some(("max_tokens", v)),
        _ => None,
    }
    .map(|(key, v)| match v.as_i64() {
        Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => Err(
            OpenAiError::invalid(key, format!("{key} must be an integer of at least 1"))
                .with_code("invalid_value"),
        ),
    })
    .transpose()?;
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => {
            return Err(OpenAiError::invalid(
                "stop",
                "stop must be a string or an array of up to 4 strings",
            ))
        }
    };
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .map(|n| n as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| OpenAiError::invalid("seed", "seed must be an integer"))?,
        ),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(OpenAiError::invalid("stream", "stream must be a boolean")),
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(OpenAiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ))
        }
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(OpenAiError::invalid(
                    "stream_options.include_usage",
                    "include_usage must be a boolean",
                ))
            }
        },
        Some(_) => {
            return Err(OpenAiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    let sampling = Sampling {
        max_tokens: max_tokens.unwrap_or(1),
        temperature: number(&body, "temperature", 0.0, 2.0, false, 1.0)?,
        top_p: number(&body, "top_p", 0.0, 1.0, true, 1.0)?,
        seed,
        stop,
        presence_penalty: number(&body, "presence_penalty", -2.0, 2.0, false, 0.0)?,
        frequency_penalty: number(&body, "frequency_penalty", -2.0, 2.0, false, 0.0)?,
        fit_to_context: false,
    };
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        sampling,
        stream,
        include_usage,
    })
}

fn parse_messages(v: Option<&Value>) -> Reply<Vec<Message>> {
    let list = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(OpenAiError::invalid("messages", "messages must not be empty")),
        None | Some(Value::Null) => {
            return Err(OpenAiError::invalid("messages", "you must provide messages"))
        }
        Some(_) => return Err(OpenAiError::invalid("messages", "messages must be an array")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let Some(m) = m.as_object() else {
            return Err(OpenAiError::invalid(
                format!("messages[{i}]"),
                "each message must be an object",
            ));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some(r @ ("tool" | "function")) => {
                return Err(OpenAiError::unsupported(&at("role"), &format!("The role '{r}'")))
            }
            Some(r) => {
                let shown: String = r.chars().take(40).collect();
                return Err(OpenAiError::invalid(
                    at("role"),
                    format!("unknown role '{shown}'; expected system, developer, user or assistant"),
                )
                .with_code("invalid_value"));
            }
            None => return Err(OpenAiError::invalid(at("role"), "each message needs a role")),
        };
        for key in ["tool_calls", "function_call", "audio"] {
            if m.get(key).is_some_and(|v| !is_neutral(v)) {
                return Err(OpenAiError::unsupported(&at(key), key));
            }
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (Some("text"), None) => {
                            return Err(OpenAiError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs text",
                            ))
                        }
                        (Some(kind), _) => {
                            let shown: String = kind.chars().take(40).collect();
                            return Err(OpenAiError::unsupported(
                                &format!("messages[{i}].content[{j}].type"),
                                &format!("Content of type '{shown}'"),
                            ));
                        }
                        (None, _) => {
                            return Err(OpenAiError::invalid(
                                format!("messages[{i}].content[{j}]"),
                                "each content part needs a type",
                            ))
                        }
                    }
                }
                text
            }
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => {
                return Err(OpenAiError::invalid(
                    at("content"),
                    "content must be a string or an array of text parts",
                ))
            }
        };
        out.push(Message {
            role: role.to_owned(),
            content,
        });
    }
    Ok(out)
}

/// OpenAI's limit headers beside skygate's own (which the rate-limit middleware adds): the per-key
/// request limit this answer counted against, and the account's token limit for the model.
fn with_rate_headers(slot: Option<&RateSlot>, tokens: Option<RateInfo>, answer: Reply<Response>) -> Response {
    let mut res = answer.into_response();
    let h = res.headers_mut();
    for (info, [limit, remaining, reset]) in [
        (
            slot.and_then(RateSlot::get),
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
    ] {
        let Some(info) = info else { continue };
        h.insert(limit, HeaderValue::from(info.limit));
        h.insert(remaining, HeaderValue::from(info.remaining));
        if let Ok(v) = HeaderValue::from_str(&format!("{}s", info.reset_secs)) {
            h.insert(reset, v);
        }
    }
    res
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    auth: Result<CreateAuth, ApiError>,
    slot: Option<Extension<RateSlot>>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Response {
    let slot = slot.as_ref().map(|Extension(s)| s);
    let mut tokens = None;
    let answer = chat(&state, auth, slot, &mut tokens, body).await;
    with_rate_headers(slot, tokens, answer)
}

/// The most tokens a chat request may use: its prompt (estimated from its text) and the completion it
/// allows, within the model's window.
fn chat_estimate(req: &ChatRequest, model: Option<&EngineModel>) -> u32 {
    // A few tokens per message for the chat template's markers around it.
    let prompt = req
        .messages
        .iter()
        .map(|m| estimate_text(&m.content).saturating_add(4))
        .fold(2u32, u32::saturating_add);
    let Some(model) = model else {
        return prompt.saturating_add(req.max_tokens.unwrap_or(0));
    };
    let completion = req.max_tokens.unwrap_or(model.max_tokens);
    prompt.saturating_add(completion).min(model.context_length)
}

async fn chat(
    state: &AppState,
    auth: Result<CreateAuth, ApiError>,
    slot: Option<&RateSlot>,
    tokens: &mut Option<RateInfo>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Reply<Response> {
    // Authentication first: an unauthenticated caller learns nothing about its body.
    let auth = auth?;
    let req = parse_chat(body?.0)?;
    let (auth, model, mut metered) = admit(
        state,
        auth,
        slot,
        tokens,
        req.model.as_deref(),
        EngineKind::Llm,
        "v1/chat/completions",
        |m| chat_estimate(&req, m),
    )
    .await?;
    let slug = metered.model.clone();
    let mut sampling = req.sampling;
    // Without max_tokens: the model's default, shortened to what the window leaves after the prompt.
    sampling.fit_to_context = req.max_tokens.is_none();
    sampling.max_tokens = req.max_tokens.unwrap_or(model.max_tokens);
    if req.max_tokens.is_some() && sampling.max_tokens >= model.context_length {
        let key = "max_tokens";
        return Err(OpenAiError::invalid(
            key,
            format!(
                "max_tokens is too large: {}. This model's maximum context length is {} tokens, prompt included.",
                sampling.max_tokens, model.context_length
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let engines = state
        .engines()
        .ok_or_else(|| OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, "This node runs no models."))?;
    let deadline = state.config().queue.job_timeout;
    let cap = state.limits().concurrent_runs(auth.tier());
    let mut events = engines.chat(
        model,
        auth.account().as_str(),
        cap,
        req.messages,
        sampling,
        deadline,
    );
    // The first event says whether the request was accepted: errors before it are plain answers.
    let prompt_tokens = match events.recv().await {
        Some(Ok(ChatEvent::Started { prompt_tokens })) => prompt_tokens,
        Some(Err(e)) => return Err(e.into()),
        _ => {
            return Err(OpenAiError::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The model ended without an answer.",
            ))
        }
    };
    metered.started(prompt_tokens);
    let id = format!(
        "chatcmpl-{}",
        skygate_core::base62::random(24)
            .map_err(|_| OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"))?
    );
    let head = Head {
        id,
        created: now_secs(),
        model: slug,
    };
    if req.stream {
        let stream = sse_stream(head, events, metered, prompt_tokens, req.include_usage);
        return Ok(Sse::new(stream).into_response());
    }
    let mut text = String::new();
    let done = loop {
        match events.recv().await {
            Some(Ok(ChatEvent::Text(t))) => {
                metered.produced();
                text.push_str(&t);
            }
            Some(Ok(ChatEvent::Done(c))) => break c,
            Some(Ok(ChatEvent::Started { .. })) => {}
            Some(Err(e)) => {
                metered.failed();
                return Err(e.into());
            }
            None => {
                metered.failed();
                return Err(OpenAiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The model ended without an answer.",
                ));
            }
        }
    };
    metered.finished(done.completion_tokens);
    Ok(Json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "finish_reason": finish_reason(done.finish),
            "logprobs": null
        }],
        "usage": usage(prompt_tokens, &done),
        "system_fingerprint": null
    }))
    .into_response())
}

/// What every chunk of one answer repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn chunk(&self, choices: Value) -> Event {
        let c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices
        });
        Event::default().data(c.to_string())
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Event {
        self.chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]))
    }
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Stop | Finish::Cancelled => "stop",
    }
}

fn usage(prompt_tokens: u32, c: &Completion) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": prompt_tokens + c.completion_tokens
    })
}

/// The SSE body: the role delta, content deltas as the engine produces them, the finish chunk,
/// the usage chunk (with `include_usage`) and `[DONE]`. The engine's channel lives in the stream,
/// so a client that disconnects drops it and the generation stops before its next token; the run's
/// accounting lives there too and settles whenever the stream ends.
fn sse_stream(
    head: Head,
    events: mpsc::Receiver<Result<ChatEvent, EngineError>>,
    metered: Metered,
    prompt_tokens: u32,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = head.delta(json!({"role": "assistant", "content": ""}), None);
    let rest = stream::unfold(Some((head, events, metered)), move |st| async move {
        let (head, mut events, mut metered) = st?;
        let out: Vec<Event> = match events.recv().await {
            Some(Ok(ChatEvent::Text(t))) => {
                metered.produced();
                vec![head.delta(json!({"content": t}), None)]
            }
            Some(Ok(ChatEvent::Started { .. })) => Vec::new(),
            Some(Ok(ChatEvent::Done(c))) => {
                metered.finished(c.completion_tokens);
                let mut out = vec![head.delta(json!({}), Some(finish_reason(c.finish)))];
                if include_usage {
                    let mut chunk = json!({
                        "id": head.id, "object": "chat.completion.chunk", "created": head.created,
                        "model": head.model, "system_fingerprint": null, "choices": []
                    });
                    chunk["usage"] = usage(prompt_tokens, &c);
                    out.push(Event::default().data(chunk.to_string()));
                }
                out.push(Event::default().data("[DONE]"));
                return Some((out, None));
            }
            Some(Err(e)) => {
                metered.failed();
                let e = OpenAiError::from(e);
                return Some((vec![Event::default().data(e.body().to_string())], None));
            }
            None => {
                metered.failed();
                let e = OpenAiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The model ended without an answer.",
                );
                return Some((vec![Event::default().data(e.body().to_string())], None));
            }
        };
        Some((out, Some((head, events, metered))))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    stream::once(async move { Ok(first) }).chain(rest)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    auth: Result<CreateAuth, ApiError>,
    slot: Option<Extension<RateSlot>>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Response {
    let slot = slot.as_ref().map(|Extension(s)| s);
    let mut tokens = None;
    let answer = embed(&state, auth, slot, &mut tokens, body).await;
    with_rate_headers(slot, tokens, answer)
}

async fn embed(
    state: &AppState,
    auth: Result<CreateAuth, ApiError>,
    slot: Option<&RateSlot>,
    tokens: &mut Option<RateInfo>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Reply<Response> {
    let auth = auth?;
    let body = object(body?.0)?;
    const KEYS: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];
    only_known(&body, KEYS)?;
    let inputs = parse_inputs(body.get("input"))?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(v) if v == "float" => false,
        Some(v) if v == "base64" => true,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                "encoding_format must be 'float' or 'base64'",
            )
            .with_code("invalid_value"))
        }
    };
    let model_name = match body.get("model") {
        Some(Value::String(s)) => Some(s.as_str()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(OpenAiError::invalid("model", "model must be a string")),
    };
    // Each input's tokens plus the two markers around it ([CLS] and [SEP]).
    let estimate = inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => estimate_text(t).saturating_add(2),
            EmbedInput::Tokens(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
        })
        .fold(0u32, u32::saturating_add);
    let (auth, model, mut metered) = admit(
        state,
        auth,
        slot,
        tokens,
        model_name,
        EngineKind::Embedding,
        "v1/embeddings",
        |_| estimate,
    )
    .await?;
    let slug = metered.model.clone();
    match body.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64().is_some() && d.as_u64() == model.dimensions.map(u64::from) => {}
        Some(_) => {
            return Err(OpenAiError::unsupported(
                "dimensions",
                "Changing the number of dimensions",
            ))
        }
    }
    let engines = state
        .engines()
        .ok_or_else(|| OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, "This node runs no models."))?;
    let deadline = state.config().queue.job_timeout;
    let done = engines
        .embed(
            model,
            auth.account().as_str(),
            state.limits().concurrent_runs(auth.tier()),
            inputs,
            deadline,
        )
        .await
        .map_err(|e| match e {
            EngineError::Input(skygate_inference::Error::ContextLengthExceeded(m)) => {
                OpenAiError::invalid("input", m).with_code("context_length_exceeded")
            }
            EngineError::Input(skygate_inference::Error::Invalid { message, .. }) => {
                OpenAiError::invalid("input", message)
            }
            other => other.into(),
        })?;
    metered.started(done.prompt_tokens);
    metered.finished(0);
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": slug,
        "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}
    }))
    .into_response())
}

/// `input`: a string, an array of strings, an array of token ids, or an array of such arrays.
fn parse_inputs(v: Option<&Value>) -> Reply<Vec<EmbedInput>> {
    let bad = |m: &str| OpenAiError::invalid("input", m.to_owned());
    let tokens = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|t| t.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    let inputs = match v {
        None | Some(Value::Null) => return Err(bad("you must provide an input")),
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => return Err(bad("input must not be empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| EmbedInput::Text(s.to_owned()))
            .collect(),
        Some(a @ Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![EmbedInput::Tokens(
                tokens(a).ok_or_else(|| bad("token ids must be non-negative integers"))?,
            )]
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|t| tokens(t).map(EmbedInput::Tokens))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("token ids must be non-negative integers"))?,
        Some(_) => {
            return Err(bad(
                "input must be a string, an array of strings, or an array of token arrays",
            ))
        }
    };
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(bad(&format!(
            "input may hold at most {MAX_EMBED_INPUTS} items, got {}",
            inputs.len()
        )));
    }
    if inputs.iter().any(|i| match i {
        EmbedInput::Text(t) => t.is_empty(),
        EmbedInput::Tokens(t) => t.is_empty(),
    }) {
        return Err(bad("input must not contain empty strings or empty token arrays"));
    }
    Ok(inputs)
}

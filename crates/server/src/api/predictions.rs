//! Predictions API (DESIGN §3): create (`POST /v1/predictions`, `POST /v1/predict`), get, list, cancel,
//! delete (`DELETE /v1/predictions/{id}` and `…/{id}/delete`), and `GET …/{id}/stream` (the Prediction
//! JSON, or Server-Sent Events with `Accept: text/event-stream`). Every lookup is scoped to the key's
//! project and mode: anything else is `404 PREDICTION_NOT_FOUND`, exactly like an unknown id. A text
//! model's output streams: while it runs, its partial output shows in the Prediction's `output` and
//! arrives as `output` events carrying the new text (`delta`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::Stream;
use serde::Deserialize;
use serde_json::Value;
use skygate_core::models::{is_valid_slug, ModelSpec};
use skygate_core::predictions::{
    date_range, FilterError, ListFilter, NewPrediction, PredictionId, PredictionRecord, StoredOutput,
};
use skygate_core::{Mode, Timestamp};
use skygate_proto::{CreatePrediction, ErrorId, Pagination, Prediction, PredictionList, Success};
use skygate_store::CancelOutcome;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{ApiKeyAuth, CreateAuth};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::limits::RateSlot;
use crate::predictions::worker::destroy_data;
use crate::state::AppState;

/// How often a waiter re-reads the store when no local change was announced (changes made by another
/// node are seen this late at most).
const POLL: Duration = Duration::from_millis(250);

/// How long a cancel of a running prediction waits for the worker to stop, so the answer usually already
/// says `cancelled` (usually milliseconds; a job still setting up its sandbox, e.g. the first exec of a
/// cold helper binary, is stopped once the setup is done). Well under the SDK's 60 s socket timeout.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

pub fn not_found() -> ApiError {
    ApiError::new(
        ErrorId::PredictionNotFound,
        "Prediction not found",
        "No prediction with this id exists for this API key's project.",
    )
}

fn invalid(id: ErrorId, message: &str, details: impl Into<String>) -> ApiError {
    ApiError::new(id, message, details)
}

/// The wire object of a record.
pub fn wire(state: &AppState, rec: &PredictionRecord) -> Prediction {
    crate::predictions::to_wire(
        rec,
        state.models().get(&rec.model),
        state.public_url(),
        state.signer(),
    )
}

/// Parses a path id; anything that is not a UUID cannot name a prediction.
fn parse_id(raw: &str) -> Result<PredictionId, ApiError> {
    raw.parse().map_err(|_| not_found())
}

/// A prediction the key may see, or 404.
async fn visible(
    state: &AppState,
    auth: &ApiKeyAuth,
    id: &PredictionId,
) -> Result<PredictionRecord, ApiError> {
    match state.store().prediction(auth.project(), id).await? {
        Some(rec) if rec.mode == auth.mode() => Ok(rec),
        _ => Err(not_found()),
    }
}

/// Checks the create body and resolves the model.
fn validate_create<'a>(
    state: &'a AppState,
    auth: &ApiKeyAuth,
    body: &CreatePrediction,
) -> Result<(&'a ModelSpec, Value), ApiError> {
    let slug = match &body.model {
        None | Some(Value::Null) => {
            return Err(invalid(
                ErrorId::ValidationError,
                "Request body is invalid",
                "model is required",
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(invalid(
                ErrorId::ValidationError,
                "Request body is invalid",
                "model must be a string",
            ))
        }
    };
    let spec = state
        .models()
        .get(slug)
        .filter(|_| is_valid_slug(slug))
        .ok_or_else(|| ApiError::model_not_found(slug))?;
    if auth.mode() == Mode::Test && !spec.test_ok {
        return Err(ApiError::forbidden(format!(
            "Test keys (sk_test_) cannot run {slug:?}; use a live key or a model marked test_ok."
        )));
    }
    if let skygate_core::models::Backend::Engine(m) = &spec.backend {
        if m.kind == skygate_core::models::EngineKind::Embedding {
            return Err(invalid(
                ErrorId::InvalidInput,
                "Input is invalid",
                format!("{slug:?} is an embedding model: use POST /v1/embeddings"),
            ));
        }
        if m.unavailable.is_some() {
            return Err(ApiError::new(
                ErrorId::ServiceUnavailable,
                "Model unavailable",
                format!(
                    "{slug:?} cannot be served: its files failed the check at start (see the server log)"
                ),
            ));
        }
    }
    let input = match &body.input {
        None | Some(Value::Null) => {
            return Err(invalid(
                ErrorId::ValidationError,
                "Request body is invalid",
                "input is required",
            ))
        }
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(invalid(
                ErrorId::InvalidInput,
                "Input is invalid",
                "input must be a JSON object",
            ))
        }
    };
    state
        .validators()
        .check(slug, &input)
        .map_err(|e| invalid(ErrorId::InvalidInput, "Input is invalid", e.to_string()))?;
    Ok((spec, input))
}

/// `POST /v1/predictions`, `POST /v1/predict`.
pub async fn create(
    State(state): State<AppState>,
    CreateAuth(auth): CreateAuth,
    slot: Option<Extension<RateSlot>>,
    ApiJson(body): ApiJson<CreatePrediction>,
) -> Result<Response, ApiError> {
    // The request limit and the create limits of this model, in one all-or-nothing check.
    let model = body
        .model
        .as_ref()
        .and_then(Value::as_str)
        .filter(|m| state.models().get(m).is_some())
        .unwrap_or("-");
    let checked = state.limits().check_create(&auth, model).await;
    RateSlot::fill(slot.as_ref().map(|Extension(s)| s), checked)?;
    let (spec, input) = validate_create(&state, &auth, &body)?;
    if let Some(w) = &body.webhook {
        state
            .webhooks()
            .check(w)
            .await
            .map_err(|e| invalid(ErrorId::ValidationError, "Request body is invalid", e.to_string()))?;
    }
    let id = PredictionId::generate().map_err(|_| ApiError::internal(&RandomFailed))?;
    let new = NewPrediction {
        id,
        project: auth.project().clone(),
        key: auth.key_id().cloned(),
        mode: auth.mode(),
        model: spec.slug.clone(),
        stream: body.stream.unwrap_or(false),
        input,
        webhook: body.webhook.clone(),
        created_at: Timestamp::now(),
    };
    let rec = state
        .store()
        .create_prediction(&new, state.config().outputs.retention)
        .await?;
    state.hub().work_queued();
    if body.wait.unwrap_or(false) {
        // Detached: a client that goes away does not cancel anything (the prediction is committed and
        // runs regardless); the wait just stops.
        let deadline = tokio::time::Instant::now() + state.config().server.await_timeout;
        let rec = wait_for(&state, &auth, rec, deadline).await?;
        return Ok((StatusCode::OK, Json(wire(&state, &rec))).into_response());
    }
    Ok((StatusCode::CREATED, Json(wire(&state, &rec))).into_response())
}

#[derive(Debug)]
struct RandomFailed;
impl std::fmt::Display for RandomFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random source failed")
    }
}
impl std::error::Error for RandomFailed {}

/// Re-reads `rec` until it is terminal or `deadline` passes; returns the latest state either way.
async fn wait_for(
    state: &AppState,
    auth: &ApiKeyAuth,
    mut rec: PredictionRecord,
    deadline: tokio::time::Instant,
) -> Result<PredictionRecord, ApiError> {
    let mut changes = state.hub().subscribe();
    while !rec.status.is_terminal() {
        let woke = tokio::time::timeout_at(deadline, next_change(&mut changes, &rec.id)).await;
        if woke.is_err() {
            break;
        }
        match state.store().prediction(auth.project(), &rec.id).await? {
            Some(r) => rec = r,
            None => return Err(not_found()),
        }
    }
    Ok(rec)
}

/// Resolves on the next announced change of `id`, or after [`POLL`].
async fn next_change(changes: &mut tokio::sync::broadcast::Receiver<PredictionId>, id: &PredictionId) {
    let wait = async {
        loop {
            match changes.recv().await {
                Ok(c) if &c == id => return,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(POLL, wait).await;
}

#[derive(Debug, Deserialize)]
pub struct IdPath {
    id: String,
}

/// `GET /v1/predictions/{id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiPath(p): ApiPath<IdPath>,
) -> Result<Json<Prediction>, ApiError> {
    let id = parse_id(&p.id)?;
    let rec = visible(&state, &auth, &id).await?;
    Ok(Json(wire(&state, &rec)))
}

/// Raw list parameters: parsed by hand so that each bad one gets its own documented error.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    from: Option<String>,
    to: Option<String>,
    model: Option<String>,
}

fn parse_count(raw: Option<&str>, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_parameter(format!(
            "{name} must be an integer between 1 and {max}"
        ))),
    }
}

/// `GET /v1/predictions`.
pub async fn list(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<PredictionList>, ApiError> {
    let page = parse_count(q.page.as_deref(), "page", 1, 1_000_000)?;
    let per_page = parse_count(q.per_page.as_deref(), "per_page", 20, 50)?;
    let (from, until) = date_range(
        q.from.as_deref().filter(|s| !s.is_empty()),
        q.to.as_deref().filter(|s| !s.is_empty()),
    )
    .map_err(|e| match e {
        FilterError::DateFormat(_) => {
            invalid(ErrorId::InvalidDateFormat, "Invalid date format", e.to_string())
        }
        FilterError::DateRange => invalid(ErrorId::InvalidDateRange, "Invalid date range", e.to_string()),
    })?;
    let model = match q.model.as_deref().filter(|s| !s.is_empty()) {
        Some(m) if !is_valid_slug(m) => {
            return Err(ApiError::invalid_parameter(
                "model must be a model slug ([a-z0-9][a-z0-9._-]*)",
            ))
        }
        m => m.map(str::to_owned),
    };
    let filter = ListFilter {
        from,
        until,
        model,
        mode: Some(auth.mode()),
    };
    let (rows, total) = state
        .store()
        .list_predictions(auth.project(), &filter, (page - 1) * per_page, per_page)
        .await?;
    Ok(Json(PredictionList {
        data: rows.iter().map(|r| wire(&state, r)).collect(),
        pagination: Pagination {
            current_page: page,
            per_page,
            total,
            last_page: total.div_ceil(per_page).max(1),
        },
    }))
}

/// `POST /v1/predictions/{id}/cancel`: returns the prediction (usually already `cancelled`).
pub async fn cancel(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiPath(p): ApiPath<IdPath>,
) -> Result<Json<Prediction>, ApiError> {
    let id = parse_id(&p.id)?;
    visible(&state, &auth, &id).await?;
    let outcome = state
        .store()
        .cancel_prediction(
            auth.project(),
            &id,
            Timestamp::now(),
            state.config().outputs.retention,
        )
        .await?;
    let rec = match outcome {
        CancelOutcome::NotFound => return Err(not_found()),
        CancelOutcome::AlreadyTerminal(rec) => {
            return Err(invalid(
                ErrorId::PredictionNotCancellable,
                "Prediction cannot be cancelled",
                format!("The prediction has already {}.", rec.status.as_str()),
            ))
        }
        CancelOutcome::Cancelled(rec) => {
            state.hub().changed(&id);
            state.hub().deliveries_queued();
            rec
        }
        CancelOutcome::Requested(rec) => {
            state.hub().cancel(&id);
            let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
            wait_for(&state, &auth, rec, deadline).await?
        }
    };
    Ok(Json(wire(&state, &rec)))
}

/// `DELETE /v1/predictions/{id}` and `DELETE /v1/predictions/{id}/delete`: destroys the inputs and
/// outputs now (a running prediction is cancelled) and removes the prediction.
pub async fn delete(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiPath(p): ApiPath<IdPath>,
) -> Result<Json<Success>, ApiError> {
    let id = parse_id(&p.id)?;
    let rec = visible(&state, &auth, &id).await?;
    destroy_data(&state, &rec.account, &id, Timestamp::now())
        .await
        .map_err(|e| ApiError::internal(e.as_ref()))?;
    if !state.store().delete_prediction(auth.project(), &id).await? {
        return Err(not_found());
    }
    Ok(Json(Success { success: true }))
}

/// `GET /v1/predictions/{id}/stream`: the Prediction JSON (what the SDK's `stream_prediction` reads), or
/// with `Accept: text/event-stream` a stream of `status`, `progress`, `output` and `done` events that
/// ends once the prediction is terminal (see [`sse_events`]).
pub async fn stream(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    headers: HeaderMap,
    ApiPath(p): ApiPath<IdPath>,
) -> Result<Response, ApiError> {
    let id = parse_id(&p.id)?;
    let rec = visible(&state, &auth, &id).await?;
    let wants_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if !wants_sse {
        return Ok(Json(wire(&state, &rec)).into_response());
    }
    let events = sse_events(state, auth, rec);
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response())
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

/// The text an `output` event adds to what the stream already sent.
#[derive(Debug, PartialEq, Eq)]
enum TextStep<'a> {
    /// Nothing new.
    Same,
    /// The text grew by this.
    Grew(&'a str),
    /// The text does not continue what was sent: the run started over (its worker stopped and the
    /// prediction was retried), so the whole text replaces what was sent.
    Restarted,
}

fn text_step<'a>(sent: &str, now: &'a str) -> TextStep<'a> {
    match now.strip_prefix(sent) {
        Some("") => TextStep::Same,
        Some(delta) => TextStep::Grew(delta),
        None => TextStep::Restarted,
    }
}

/// The data of the `output` event for a text output (`text`, shown on the wire as `output`), given the
/// text already sent (updated); `None` when there is nothing new to say.
fn text_event(
    id: &PredictionId,
    terminal: bool,
    text: &str,
    output: &Value,
    sent: &mut Option<String>,
) -> Option<Value> {
    let before = sent.as_deref().unwrap_or("");
    let mut data = match text_step(before, text) {
        // A final text that is empty still gets its one `output` event.
        TextStep::Same if sent.is_some() || !terminal => return None,
        TextStep::Same => serde_json::json!({"delta": ""}),
        TextStep::Grew(delta) => serde_json::json!({"delta": delta}),
        TextStep::Restarted => serde_json::json!({"delta": text, "reset": true}),
    };
    data["id"] = Value::from(id.as_str());
    data["output"] = output.clone();
    *sent = Some(text.to_owned());
    Some(data)
}

/// The SSE feed of one prediction: `status` (on every status change, starting with the current one),
/// `progress` (on every progress change), `output`, then `done` with the final Prediction object.
///
/// `output` events carry `{"id", "output"}`, `output` as the Prediction shows it. For a text output
/// they also carry `delta`, the text added since the previous `output` event: while the prediction
/// runs, one event each time its partial output grew (as read: several writes may arrive as one),
/// and at the end one more only if text is left (so the deltas add up to the final text). An event
/// with `"reset": true` replaces the text sent so far (the run started over after its worker
/// stopped): its `delta` is the whole text. A file output gets one `output` event when it succeeded.
fn sse_events(
    state: AppState,
    auth: ApiKeyAuth,
    first: PredictionRecord,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let mut changes = state.hub().subscribe();
        let mut rec = first;
        let id = rec.id.clone();
        let mut last_status = None;
        let mut last_progress = None;
        // The text sent in `output` events so far (`None` before the first).
        let mut sent: Option<String> = None;
        loop {
            if last_status != Some(rec.status) {
                last_status = Some(rec.status);
                let _ = tx
                    .send(event(
                        "status",
                        &serde_json::json!({"id": id.as_str(), "status": rec.status.as_str()}),
                    ))
                    .await;
            }
            if last_progress != Some(rec.progress) {
                last_progress = Some(rec.progress);
                let _ = tx
                    .send(event(
                        "progress",
                        &serde_json::json!({"id": id.as_str(), "progress": rec.progress}),
                    ))
                    .await;
            }
            let w = wire(&state, &rec);
            let terminal = rec.status.is_terminal();
            let output = match (&rec.output, &w.output) {
                (Some(StoredOutput::Text { text }), Some(out)) => {
                    text_event(&id, terminal, text, out, &mut sent)
                }
                (Some(StoredOutput::Files { .. }), Some(out)) if terminal => {
                    Some(serde_json::json!({"id": id.as_str(), "output": out}))
                }
                _ => None,
            };
            if let Some(data) = output {
                let _ = tx.send(event("output", &data)).await;
            }
            if terminal {
                let _ = tx.send(event("done", &w)).await;
                return;
            }
            if tx.is_closed() {
                return;
            }
            next_change(&mut changes, &id).await;
            match state.store().prediction(auth.project(), &id).await {
                Ok(Some(r)) => rec = r,
                Ok(None) => {
                    let _ = tx
                        .send(event(
                            "error",
                            &serde_json::json!({"id": id.as_str(), "error": "deleted"}),
                        ))
                        .await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(prediction = %id, error = %e, "SSE: could not read the prediction");
                }
            }
        }
    })
}

/// A stream fed by a task through a small channel; the task stops when the client goes away (the
/// channel closes).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn output_events_carry_only_new_text() {
        let id = PredictionId::generate().unwrap();
        let mut sent = None;
        let mut step =
            |terminal: bool, text: &str| text_event(&id, terminal, text, &Value::from(text), &mut sent);
        assert_eq!(step(false, ""), None, "nothing produced yet");
        let first = step(false, "Hel").unwrap();
        assert_eq!(
            (first["delta"].as_str(), first["output"].as_str()),
            (Some("Hel"), Some("Hel"))
        );
        assert_eq!(first["id"], id.as_str());
        assert_eq!(step(false, "Hel"), None);
        assert_eq!(step(false, "Hello, w").unwrap()["delta"], "lo, w");
        assert_eq!(step(true, "Hello, w"), None, "the final text was all sent");
        let reset = step(false, "Hi").unwrap();
        assert_eq!(
            (reset["delta"].as_str(), reset["reset"].as_bool()),
            (Some("Hi"), Some(true))
        );
        assert_eq!(step(true, "Hi there").unwrap()["delta"], " there");

        let mut sent = None;
        let empty = text_event(&id, true, "", &Value::from(""), &mut sent).unwrap();
        assert_eq!(
            (empty["delta"].as_str(), empty["output"].as_str()),
            (Some(""), Some(""))
        );
    }
}

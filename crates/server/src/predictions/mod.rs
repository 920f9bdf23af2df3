//! Predictions in the server: input validation against each model's JSON Schema, the mapping from stored
//! records to the wire object, signed output URLs, and the in-process change feed that wakes `await`,
//! SSE streams and workers. Handlers live in `api::predictions`; the queue workers and the retention
//! sweeper in [`worker`].

pub mod signing;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use skygate_core::models::{ModelRegistry, ModelSpec};
use skygate_core::predictions::{PredictionId, PredictionRecord, StoredOutput};
use skygate_proto::{
    OutputFileInfo, Prediction, PredictionMetadata, PredictionMetrics, PredictionModel, PredictionStatus,
    PredictionUrls, Storage,
};
use tokio::sync::{broadcast, Notify};

pub use signing::OutputSigner;

/// Compiled input validators, one per model, built once at start.
pub struct Validators {
    by_slug: HashMap<String, jsonschema::Validator>,
}

/// Why an input was refused: which field, and why (user-facing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Validators {
    /// Compiles every model's input schema; a schema that does not compile names its model.
    pub fn new(models: &ModelRegistry) -> anyhow::Result<Self> {
        let mut by_slug = HashMap::new();
        for m in models.iter() {
            let v = jsonschema::validator_for(&m.input_schema)
                .map_err(|e| anyhow::anyhow!("models.{}: the input schema is not valid: {e}", m.slug))?;
            by_slug.insert(m.slug.clone(), v);
        }
        Ok(Validators { by_slug })
    }

    /// Checks `input` against the model's schema; the error names the first failing field as
    /// `input.a.b` (or `input` for the object itself).
    pub fn check(&self, slug: &str, input: &Value) -> Result<(), InputError> {
        let Some(v) = self.by_slug.get(slug) else {
            return Ok(());
        };
        match v.iter_errors(input).next() {
            None => Ok(()),
            Some(e) => {
                let path = e.instance_path().to_string();
                let field = if path.is_empty() {
                    "input".to_owned()
                } else {
                    format!("input{}", path.replace('/', "."))
                };
                Err(InputError {
                    field,
                    reason: shorten(&e.to_string(), 300),
                })
            }
        }
    }
}

/// Cuts a message that may quote a large input value.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The change feed: every status, progress or data change this node makes is announced by id, so
/// waiters re-read the store at once instead of at their next poll. Waiters also poll, because a change
/// made by another node is not announced here.
#[derive(Clone)]
pub struct Hub {
    changes: broadcast::Sender<PredictionId>,
    cancels: broadcast::Sender<PredictionId>,
    work: Arc<Notify>,
    deliveries: Arc<Notify>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            changes: broadcast::channel(1024).0,
            cancels: broadcast::channel(256).0,
            work: Arc::new(Notify::new()),
            deliveries: Arc::new(Notify::new()),
        }
    }
}

impl Hub {
    pub fn changed(&self, id: &PredictionId) {
        let _ = self.changes.send(id.clone());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PredictionId> {
        self.changes.subscribe()
    }

    /// A cancel was asked for: a local worker running `id` stops at once.
    pub fn cancel(&self, id: &PredictionId) {
        let _ = self.cancels.send(id.clone());
    }

    pub fn subscribe_cancels(&self) -> broadcast::Receiver<PredictionId> {
        self.cancels.subscribe()
    }

    /// New work was queued: wake an idle worker.
    pub fn work_queued(&self) {
        self.work.notify_one();
    }

    pub fn work(&self) -> &Notify {
        &self.work
    }

    /// A status changed on this node, so the outbox may hold new deliveries: wake the dispatcher.
    pub fn deliveries_queued(&self) {
        self.deliveries.notify_one();
    }

    pub fn deliveries(&self) -> &Notify {
        &self.deliveries
    }
}

/// Builds the wire object for a stored record. `base` is the public URL without a trailing slash.
///
/// `output` is the final output once succeeded, and the partial output (the text so far) while
/// processing; in every other status, and once the data is removed, it is `null`.
pub fn to_wire(
    rec: &PredictionRecord,
    spec: Option<&ModelSpec>,
    base: &str,
    signer: &OutputSigner,
) -> Prediction {
    let id = rec.id.as_str();
    let files: Vec<OutputFileInfo> = match (&rec.output, rec.purge_at) {
        (Some(StoredOutput::Files { files }), Some(purge)) if !rec.data_removed => files
            .iter()
            .map(|f| OutputFileInfo {
                name: f.name.clone(),
                content_type: f.content_type.clone(),
                size: f.size,
                url: signer.url(base, &rec.id, &f.name, purge.as_unix_seconds()),
            })
            .collect(),
        _ => Vec::new(),
    };
    let shows_output = matches!(
        rec.status,
        PredictionStatus::Processing | PredictionStatus::Succeeded
    );
    let output = match &rec.output {
        _ if rec.data_removed || !shows_output => None,
        Some(StoredOutput::Text { text }) => Some(Value::String(text.clone())),
        Some(StoredOutput::Files { .. }) => Some(Value::Array(
            files.iter().map(|f| Value::String(f.url.clone())).collect(),
        )),
        None => None,
    };
    let urls = if rec.data_removed {
        PredictionUrls::default()
    } else {
        let get = format!("{base}/v1/predictions/{id}");
        PredictionUrls {
            cancel: Some(format!("{get}/cancel")),
            stream: Some(format!("{get}/stream")),
            delete: Some(format!("{get}/delete")),
            get: Some(get),
        }
    };
    let secs = |us: i64| us as f64 / 1e6;
    let total_time = rec
        .completed_at
        .map(|c| secs(c.as_micros().saturating_sub(rec.created_at.as_micros())));
    let image_count = files
        .iter()
        .filter(|f| f.content_type.starts_with("image/"))
        .count();
    let error = if rec.status == PredictionStatus::Failed {
        Some(
            rec.error
                .clone()
                .unwrap_or_else(|| "the prediction failed (details removed)".to_owned()),
        )
    } else {
        None
    };
    Prediction {
        id: id.to_owned(),
        status: rec.status,
        stream: rec.stream,
        kind: "inference".into(),
        input: if rec.data_removed { None } else { rec.input.clone() },
        output,
        response: error.clone(),
        error,
        created_at: rec.created_at.to_rfc3339(),
        started_at: rec.started_at.map(|t| t.to_rfc3339()),
        completed_at: rec.completed_at.map(|t| t.to_rfc3339()),
        updated_at: rec.updated_at.to_rfc3339(),
        privacy: "private".into(),
        source: "api".into(),
        model: PredictionModel {
            name: rec.model.clone(),
            kind: spec.map_or_else(|| "text".to_owned(), |s| s.kind.clone()),
        },
        webhook: if rec.data_removed {
            None
        } else {
            rec.webhook.clone()
        },
        metrics: PredictionMetrics {
            predict_time: rec.predict_time_us.map(secs),
            total_time,
            progress: rec.progress,
            image_count: u32::try_from(image_count).unwrap_or(u32::MAX),
            asset_count: u32::try_from(files.len()).unwrap_or(u32::MAX),
            sandbox_start_time: rec.sandbox.as_ref().map(|m| secs(m.start_us)),
            sandbox_run_time: rec.sandbox.as_ref().map(|m| secs(m.run_us)),
            sandbox_exit: rec.sandbox.as_ref().map(|m| m.exit.clone()),
        },
        metadata: PredictionMetadata {
            storage: Storage { files },
            data_available: !rec.data_removed,
        },
        data_removed: rec.data_removed,
        urls,
    }
}

//! The Prediction object and the request and list shapes of the predictions API, as the Skytells SDKs
//! read and send them (DESIGN §3). Statuses are spelt exactly as the SDKs compare them (`cancelled`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Lifecycle status. `pending → starting → processing → succeeded | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PredictionStatus {
    Pending,
    Starting,
    Processing,
    Succeeded,
    Failed,
    Cancelled,
}

impl PredictionStatus {
    pub const ALL: [PredictionStatus; 6] = [
        PredictionStatus::Pending,
        PredictionStatus::Starting,
        PredictionStatus::Processing,
        PredictionStatus::Succeeded,
        PredictionStatus::Failed,
        PredictionStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PredictionStatus::Pending => "pending",
            PredictionStatus::Starting => "starting",
            PredictionStatus::Processing => "processing",
            PredictionStatus::Succeeded => "succeeded",
            PredictionStatus::Failed => "failed",
            PredictionStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Succeeded, failed or cancelled: nothing changes any more except retention.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PredictionStatus::Succeeded | PredictionStatus::Failed | PredictionStatus::Cancelled
        )
    }
}

/// `webhook` of a create request and of the Prediction object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `POST /v1/predictions` and `POST /v1/predict`. Unknown fields are ignored. `model` and `input` are
/// optional here so that their absence is a `VALIDATION_ERROR` naming the field rather than a generic
/// shape error (the OpenAPI schema still lists them as required: a valid request has both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(
    description = "Body of `POST /v1/predictions` and `POST /v1/predict`. Unknown fields are \
    ignored; a missing `model` or `input` is a 422 `VALIDATION_ERROR`."
)]
pub struct CreatePrediction {
    /// The model slug.
    // A `Value`, so that a missing or non-string model gets its own error; the schema says string.
    #[serde(default)]
    #[schema(value_type = String, required = true, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub model: Option<Value>,
    /// The model's input: a JSON object checked against the model's input schema.
    #[serde(default)]
    #[schema(value_type = Object, required = true)]
    pub input: Option<Value>,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Wait (up to the server's await timeout) for the final state before answering.
    #[serde(default, rename = "await")]
    pub wait: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PredictionModel {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictionMetrics {
    /// Seconds the model ran.
    #[schema(required = true)]
    pub predict_time: Option<f64>,
    /// Seconds from creation to the terminal status.
    #[schema(required = true)]
    pub total_time: Option<f64>,
    /// 0–100.
    #[schema(maximum = 100)]
    pub progress: u8,
    pub image_count: u32,
    pub asset_count: u32,
    /// Seconds to build the prediction's sandbox (namespaces, mounts, limits) until the model started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_start_time: Option<f64>,
    /// Seconds the model ran inside its sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_run_time: Option<f64>,
    /// How the sandboxed model ended: `exited 0`, `exited 3`, `killed by signal 9`, `deadline`,
    /// `cancelled`, `cpu limit`, `file size limit`, `protocol error`, `setup failed`, `sandbox died`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_exit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputFileInfo {
    pub name: String,
    /// MIME type.
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: u64,
    /// Signed, expiring download URL.
    #[schema(format = "uri")]
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Storage {
    pub files: Vec<OutputFileInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PredictionMetadata {
    pub storage: Storage,
    /// False once inputs and outputs have been destroyed (retention or delete).
    pub data_available: bool,
}

/// Absolute URLs of the prediction's endpoints; all absent once its data is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PredictionUrls {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = "uri")]
    pub get: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = "uri")]
    pub cancel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = "uri")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = "uri")]
    pub delete: Option<String>,
}

/// The schema of [`Prediction::output`]: an array of URLs, a string, or null.
fn output_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let string = || ObjectBuilder::new().schema_type(Type::String);
    OneOfBuilder::new()
        .item(ArrayBuilder::new().items(string().format(Some(SchemaFormat::Custom("uri".into())))))
        .item(string())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Output URLs (file models, once succeeded), a string (text models: while processing, the \
             text so far), or null.",
        ))
        .into()
}

/// The Prediction object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    #[schema(format = "uuid")]
    pub id: String,
    pub status: PredictionStatus,
    pub stream: bool,
    /// Always `"inference"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The input as sent; null once removed.
    #[schema(value_type = Option<Object>, required = true)]
    pub input: Option<Value>,
    /// Output URLs (file models, once succeeded), a string (text models: while processing, the text so
    /// far), or null.
    #[schema(schema_with = output_schema, required = true)]
    pub output: Option<Value>,
    /// The error message of a failed prediction (the SDK raises with it), else null.
    #[schema(required = true)]
    pub response: Option<String>,
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub completed_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `"private"`: predictions are visible only to their project.
    pub privacy: String,
    /// `"api"`.
    pub source: String,
    pub model: PredictionModel,
    #[schema(required = true)]
    pub webhook: Option<WebhookSpec>,
    pub metrics: PredictionMetrics,
    pub metadata: PredictionMetadata,
    pub data_removed: bool,
    pub urls: PredictionUrls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pagination {
    pub current_page: u64,
    pub per_page: u64,
    pub total: u64,
    pub last_page: u64,
}

/// `GET /v1/predictions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictionList {
    pub data: Vec<Prediction>,
    pub pagination: Pagination,
}

/// `DELETE /v1/predictions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_use_the_sdk_spelling() {
        for s in PredictionStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), Value::String(s.as_str().into()));
            assert_eq!(PredictionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PredictionStatus::Cancelled.as_str(), "cancelled");
        assert!(PredictionStatus::parse("canceled").is_none());
        assert!(!PredictionStatus::Processing.is_terminal());
        assert!(PredictionStatus::Failed.is_terminal());
    }

    #[test]
    fn create_request_reads_await_and_ignores_unknown_fields() {
        let r: CreatePrediction =
            serde_json::from_str(r#"{"model":"echo","input":{"prompt":"x"},"await":true,"extra":[1]}"#)
                .unwrap();
        assert_eq!(r.wait, Some(true));
        assert_eq!(r.model, Some(Value::String("echo".into())));
        let empty: CreatePrediction = serde_json::from_str("{}").unwrap();
        assert!(empty.model.is_none() && empty.input.is_none());
    }

    #[test]
    fn urls_are_empty_object_once_removed() {
        assert_eq!(serde_json::to_string(&PredictionUrls::default()).unwrap(), "{}");
    }
}

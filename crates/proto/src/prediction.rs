//! The Prediction object and the request and list shapes of the predictions API, as the Skytells SDKs
//! read and send them (DESIGN §3). Statuses are spelt exactly as the SDKs compare them (`cancelled`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle status. `pending → starting → processing → succeeded | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `POST /v1/predictions` and `POST /v1/predict`. Unknown fields are ignored. `model` and `input` are
/// optional here so that their absence is a `VALIDATION_ERROR` naming the field rather than a generic
/// shape error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreatePrediction {
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default, rename = "await")]
    pub wait: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionModel {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionMetrics {
    /// Seconds the model ran.
    pub predict_time: Option<f64>,
    /// Seconds from creation to the terminal status.
    pub total_time: Option<f64>,
    /// 0–100.
    pub progress: u8,
    pub image_count: u32,
    pub asset_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFileInfo {
    pub name: String,
    /// MIME type.
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: u64,
    /// Signed, expiring download URL.
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    pub files: Vec<OutputFileInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionMetadata {
    pub storage: Storage,
    /// False once inputs and outputs have been destroyed (retention or delete).
    pub data_available: bool,
}

/// Absolute URLs of the prediction's endpoints; all absent once its data is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionUrls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

/// The Prediction object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub status: PredictionStatus,
    pub stream: bool,
    /// Always `"inference"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The input as sent; null once removed.
    pub input: Option<Value>,
    /// Output URLs (file models), a string (text models), or null.
    pub output: Option<Value>,
    /// The error message of a failed prediction (the SDK raises with it), else null.
    pub response: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub updated_at: String,
    /// `"private"`: predictions are visible only to their project.
    pub privacy: String,
    /// `"api"`.
    pub source: String,
    pub model: PredictionModel,
    pub webhook: Option<WebhookSpec>,
    pub metrics: PredictionMetrics,
    pub metadata: PredictionMetadata,
    pub data_removed: bool,
    pub urls: PredictionUrls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub current_page: u64,
    pub per_page: u64,
    pub total: u64,
    pub last_page: u64,
}

/// `GET /v1/predictions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionList {
    pub data: Vec<Prediction>,
    pub pagination: Pagination,
}

/// `DELETE /v1/predictions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

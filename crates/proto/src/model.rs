//! The Model object of `GET /v1/models` and `GET /v1/model(s)/{slug}`, in the shape the Skytells SDKs
//! read (`name`, `namespace`, `type`, `privacy`, `vendor`, `billable`, `pricing`, `status`), plus the
//! optional `input_schema` / `output_schema` requested with `?fields=`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelPricing {
    pub amount: f64,
    pub currency: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    /// Human-readable name.
    pub name: String,
    /// The slug used in `model` of a prediction and in `/v1/model/{slug}`.
    pub namespace: String,
    pub slug: String,
    pub description: String,
    /// `image`, `video`, `audio`, `music`, `text`, `code` or `multimodal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `public` or `private`.
    pub privacy: String,
    pub vendor: String,
    pub billable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pricing: Option<ModelPricing>,
    /// `operational` while the model can be run; `unavailable` when its files failed the check at
    /// start (the server log says why).
    pub status: String,
    /// Real models: the window in tokens (prompt and completion together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub context_length: Option<u32>,
    /// Real models: `{"openai_compatible": true, …}` (served by `/v1/chat/completions` or
    /// `/v1/embeddings` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub metadata: Option<serde_json::Value>,
    /// Whether `sk_test_` keys may run it.
    pub test_mode: bool,
    /// JSON Schema of the input; only with `?fields=input_schema`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema of the output; only with `?fields=output_schema`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output_schema: Option<serde_json::Value>,
}

//! Wire types of the skygate API, kept byte-compatible with the Skytells predictions API so that the
//! official SDKs work unchanged. serde only: no HTTP, storage or domain logic lives here.

pub mod error;
pub mod manage;
pub mod model;
pub mod prediction;

pub use error::{ErrorBody, ErrorEnvelope, ErrorId};
pub use model::{Model, ModelPricing};
pub use prediction::{
    CreatePrediction, OutputFileInfo, Pagination, Prediction, PredictionList, PredictionMetadata,
    PredictionMetrics, PredictionModel, PredictionStatus, PredictionUrls, Storage, Success, WebhookSpec,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

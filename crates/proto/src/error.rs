//! The error envelope returned on every non-2xx response, and the stable, greppable error ids.
//!
//! Shape (DESIGN §3): `{"status": false, "response": "<message>", "error": {"http_status": N, "message":
//! "…", "details": "…", "error_id": "…"}}`. The official SDK maps `error` field for field onto
//! `SkytellsError(message, error_id, details, http_status)` and raises with `response`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable public error ids. Clients match on these strings; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorId {
    Unauthorized,
    Forbidden,
    ValidationError,
    InvalidInput,
    InvalidParameter,
    InvalidDateFormat,
    InvalidDateRange,
    InvalidJson,
    NotFound,
    MethodNotAllowed,
    ModelNotFound,
    PredictionNotFound,
    PredictionNotCancellable,
    PayloadTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    RateLimitExceeded,
    RequestBlocked,
    ServiceUnavailable,
    InternalError,
}

impl ErrorId {
    /// The HTTP status this id is always sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorId::Unauthorized => 401,
            ErrorId::Forbidden | ErrorId::RequestBlocked => 403,
            ErrorId::ValidationError | ErrorId::InvalidInput => 422,
            ErrorId::InvalidParameter
            | ErrorId::InvalidDateFormat
            | ErrorId::InvalidDateRange
            | ErrorId::InvalidJson => 400,
            ErrorId::NotFound | ErrorId::ModelNotFound | ErrorId::PredictionNotFound => 404,
            ErrorId::MethodNotAllowed => 405,
            ErrorId::PredictionNotCancellable => 409,
            ErrorId::RequestTimeout => 408,
            ErrorId::PayloadTooLarge => 413,
            ErrorId::HeadersTooLarge => 431,
            ErrorId::UnsupportedMediaType => 415,
            ErrorId::RateLimitExceeded => 429,
            ErrorId::ServiceUnavailable => 503,
            ErrorId::InternalError => 500,
        }
    }

    /// The wire spelling, e.g. `"UNAUTHORIZED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorId::Unauthorized => "UNAUTHORIZED",
            ErrorId::Forbidden => "FORBIDDEN",
            ErrorId::ValidationError => "VALIDATION_ERROR",
            ErrorId::InvalidInput => "INVALID_INPUT",
            ErrorId::InvalidParameter => "INVALID_PARAMETER",
            ErrorId::InvalidDateFormat => "INVALID_DATE_FORMAT",
            ErrorId::InvalidDateRange => "INVALID_DATE_RANGE",
            ErrorId::InvalidJson => "INVALID_JSON",
            ErrorId::NotFound => "NOT_FOUND",
            ErrorId::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorId::ModelNotFound => "MODEL_NOT_FOUND",
            ErrorId::PredictionNotFound => "PREDICTION_NOT_FOUND",
            ErrorId::PredictionNotCancellable => "PREDICTION_NOT_CANCELLABLE",
            ErrorId::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorId::HeadersTooLarge => "HEADERS_TOO_LARGE",
            ErrorId::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorId::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorId::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ErrorId::RequestBlocked => "REQUEST_BLOCKED",
            ErrorId::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorId::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// The inner `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub http_status: u16,
    pub message: String,
    pub details: String,
    pub error_id: ErrorId,
}

/// The whole envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`: the SDK treats a top-level `"status": false` as an error.
    pub status: bool,
    /// The message again; the SDK raises with this field.
    pub response: String,
    pub error: ErrorBody,
}

impl ErrorEnvelope {
    pub fn new(id: ErrorId, message: impl Into<String>, details: impl Into<String>) -> Self {
        let message = message.into();
        ErrorEnvelope {
            status: false,
            response: message.clone(),
            error: ErrorBody {
                http_status: id.http_status(),
                message,
                details: details.into(),
                error_id: id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_documented_shape() {
        let env = ErrorEnvelope::new(ErrorId::Unauthorized, "Invalid API key", "d");
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": false, "response": "Invalid API key", "error": {
                "http_status": 401, "message": "Invalid API key", "details": "d", "error_id": "UNAUTHORIZED"}})
        );
    }

    #[test]
    fn as_str_matches_serde() {
        for id in [
            ErrorId::RateLimitExceeded,
            ErrorId::InvalidJson,
            ErrorId::ModelNotFound,
            ErrorId::InternalError,
        ] {
            assert_eq!(
                serde_json::to_value(id).unwrap(),
                serde_json::Value::String(id.as_str().into())
            );
        }
    }
}

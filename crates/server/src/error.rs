//! The one place errors become HTTP responses: [`ApiError`] renders the documented envelope
//! (`{"status": false, "response", "error": {http_status, message, details, error_id}}`), always as
//! `application/json`. Internal errors are logged with their whole chain under an opaque error id, and
//! the client gets only that id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use skygate_proto::{ErrorEnvelope, ErrorId};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub id: ErrorId,
    pub message: String,
    pub details: String,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

/// Logs `err` with its whole source chain under a fresh opaque id, and returns the id (the only thing
/// an answer may carry about it). Shared by the API's envelope and the console's pages.
pub fn log_internal(err: &(dyn std::error::Error + 'static)) -> uuid::Uuid {
    let error_id = uuid::Uuid::new_v4();
    let mut chain = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    tracing::error!(%error_id, error = %chain, "internal error");
    error_id
}

impl ApiError {
    pub fn new(id: ErrorId, message: impl Into<String>, details: impl Into<String>) -> Self {
        ApiError {
            id,
            message: message.into(),
            details: details.into(),
            retry_after: None,
        }
    }

    /// The single answer for every authentication failure: missing, malformed, unknown, revoked or
    /// expired. Identical bytes in every case, so the response says nothing about which it was.
    pub fn unauthorized() -> Self {
        ApiError::new(
            ErrorId::Unauthorized,
            "Invalid or missing API key",
            "Send a valid API key in the x-api-key header (or Authorization: Bearer).",
        )
    }

    pub fn forbidden(details: impl Into<String>) -> Self {
        ApiError::new(
            ErrorId::Forbidden,
            "This credential may not access this resource",
            details,
        )
    }

    pub fn model_not_found(slug: &str) -> Self {
        // The slug is echoed only if it is a plausible slug, so the envelope never reflects junk.
        let shown = if skygate_core::models::is_valid_slug(slug) {
            slug
        } else {
            "(invalid slug)"
        };
        ApiError::new(
            ErrorId::ModelNotFound,
            "Model not found",
            format!("No model named {shown:?}"),
        )
    }

    pub fn invalid_parameter(details: impl Into<String>) -> Self {
        ApiError::new(ErrorId::InvalidParameter, "Invalid query parameter", details)
    }

    pub fn invalid_json(details: impl Into<String>) -> Self {
        ApiError::new(ErrorId::InvalidJson, "Request body is not valid JSON", details)
    }

    pub fn payload_too_large(limit: u64) -> Self {
        ApiError::new(
            ErrorId::PayloadTooLarge,
            "Request body too large",
            format!("The request body is limited to {limit} bytes."),
        )
    }

    /// Logs `err` with its chain under a fresh opaque id and returns a 500 that carries only the id.
    pub fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        let error_id = log_internal(err);
        ApiError::new(
            ErrorId::InternalError,
            "Internal server error",
            format!("error id {error_id}"),
        )
    }

    /// The generic envelope for a status produced outside a handler (router, limits, timeouts, panics).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => ApiError::new(ErrorId::NotFound, "Not found", "No such endpoint."),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
                ErrorId::MethodNotAllowed,
                "Method not allowed",
                "See the Allow header for the methods this endpoint accepts.",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                ErrorId::PayloadTooLarge,
                "Request body too large",
                "The request body is too large.",
            ),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
                ErrorId::HeadersTooLarge,
                "Request headers too large",
                "The request has too many header fields or too large a head.",
            ),
            StatusCode::REQUEST_TIMEOUT => ApiError::new(
                ErrorId::RequestTimeout,
                "Request timed out",
                "The request took too long.",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                ErrorId::UnsupportedMediaType,
                "Unsupported media type",
                "Send JSON with Content-Type: application/json.",
            ),
            StatusCode::UNAUTHORIZED => ApiError::unauthorized(),
            StatusCode::FORBIDDEN => ApiError::forbidden("Access denied."),
            StatusCode::TOO_MANY_REQUESTS => ApiError::new(
                ErrorId::RateLimitExceeded,
                "Rate limit exceeded",
                "Too many requests.",
            ),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::new(
                ErrorId::ServiceUnavailable,
                "Service unavailable",
                "Try again shortly.",
            ),
            s if s.is_client_error() => ApiError::new(
                ErrorId::InvalidParameter,
                "Bad request",
                "The request is malformed.",
            ),
            _ => {
                let error_id = uuid::Uuid::new_v4();
                tracing::error!(%error_id, status = %status, "internal error outside a handler");
                ApiError::new(
                    ErrorId::InternalError,
                    "Internal server error",
                    format!("error id {error_id}"),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.id.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let env = ErrorEnvelope::new(self.id, self.message, self.details);
        let body = serde_json::to_vec(&env).unwrap_or_else(|_| b"{\"status\":false}".to_vec());
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        res
    }
}

impl From<skygate_store::StoreError> for ApiError {
    fn from(e: skygate_store::StoreError) -> Self {
        ApiError::internal(&e)
    }
}

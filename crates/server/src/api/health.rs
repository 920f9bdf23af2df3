//! `GET /healthz` (liveness, no auth, no I/O) and `GET /readyz` (the store answers).

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use skygate_proto::{ErrorId, Health};

use crate::error::ApiError;
use crate::middleware::FastAnswer;
use crate::state::AppState;

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// `healthz`'s answer, serialised once, for the hot path in front of the router.
pub struct Prebuilt {
    body: Bytes,
}

impl Prebuilt {
    pub fn new() -> Self {
        let body = serde_json::to_vec(&Health { status: "ok".into() })
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(br#"{"status":"ok"}"#));
        Prebuilt { body }
    }

    /// The same response as [`healthz`].
    pub fn healthz(&self) -> FastAnswer {
        FastAnswer::Json(self.body.clone())
    }
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.store().ping().await {
        Ok(()) => Ok(Json(Health { status: "ok".into() })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            Err(ApiError::new(
                ErrorId::ServiceUnavailable,
                "Service unavailable",
                "The database is not reachable.",
            ))
        }
    }
}

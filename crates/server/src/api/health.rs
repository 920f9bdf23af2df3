//! `GET /healthz` (liveness, no auth, no I/O) and `GET /readyz` (the store answers).

use axum::extract::State;
use axum::Json;
use skygate_proto::{ErrorId, Health};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
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

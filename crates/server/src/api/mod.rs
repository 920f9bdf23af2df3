//! The HTTP surface: routes grouped by API area, each handler thin (extract, call one function, map to
//! the wire type), wrapped in the edge middleware stack.

mod health;
mod models;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{middleware as mw, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::middleware;
use crate::state::AppState;

/// The versioned API routes (mounted at `/v1`).
fn v1() -> Router<AppState> {
    Router::new()
        .route("/models", get(models::list))
        .route("/models/{slug}", get(models::get))
        .route("/model/{slug}", get(models::get))
}

/// The whole application: routes plus the edge middleware stack.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().server.body_limit.0;
    let request_timeout = state.config().server.request_timeout;
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .nest("/v1", v1())
        .fallback(middleware::not_found)
        .with_state(state);
    with_edge_layers(routes, body_limit, request_timeout)
}

/// Wraps any router in the edge stack (outermost first): request id, security headers, error envelope,
/// tracing, panic catching, request timeout, declared-size check, body limit.
pub fn with_edge_layers(routes: Router, body_limit: u64, request_timeout: Duration) -> Router {
    let limit = usize::try_from(body_limit).unwrap_or(usize::MAX);
    routes
        .layer(DefaultBodyLimit::max(limit))
        .layer(mw::from_fn_with_state(
            body_limit,
            middleware::declared_body_limit,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(TraceLayer::new_for_http())
        .layer(mw::from_fn(middleware::envelope_errors))
        .layer(mw::from_fn(middleware::security_headers))
        .layer(mw::from_fn(middleware::request_id))
}

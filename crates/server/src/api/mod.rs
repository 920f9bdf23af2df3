//! The HTTP surface: routes grouped by API area, each handler thin (extract, call one function, map to
//! the wire type), wrapped in the edge middleware stack.

mod health;
mod models;

pub use models::ModelCatalog;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::middleware;
use crate::state::AppState;

/// The versioned API routes. Flat paths rather than a nested router: nesting costs a boxed service
/// clone per request, which showed up in the load benchmark's profile.
fn v1(r: Router<AppState>) -> Router<AppState> {
    r.route("/v1/models", get(models::list))
        .route("/v1/models/{slug}", get(models::get))
        .route("/v1/model/{slug}", get(models::get))
}

/// The whole application: routes plus the edge middleware stack.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().server.body_limit.0;
    let request_timeout = state.config().server.request_timeout;
    let routes = v1(Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz)))
    .fallback(middleware::not_found)
    .with_state(state);
    with_edge_layers(routes, body_limit, request_timeout)
}

/// Wraps any router in the edge stack: the body limit for extractors, panic catching, and the edge layer
/// (request id, declared-size check, deadline, error envelope, security headers; see [`middleware`]).
pub fn with_edge_layers(routes: Router, body_limit: u64, request_timeout: Duration) -> Router {
    let limit = usize::try_from(body_limit).unwrap_or(usize::MAX);
    routes
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(middleware::EdgeLayer::new(body_limit, request_timeout))
}

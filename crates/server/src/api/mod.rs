//! The HTTP surface: routes grouped by API area, each handler thin (extract, call one function, map to
//! the wire type), wrapped in the edge middleware stack.
//!
//! The hottest routes (`GET /v1/models` without a query, with a key the auth cache holds, and
//! `GET /healthz`) are also answered by [`Hot`] in front of the router ([`middleware::Front`]), which
//! gives byte-for-byte the answers the routed handlers give, minus the router's per-request plumbing.
//! Whatever [`Hot`] declines goes through the router unchanged.

mod health;
pub(crate) mod manage;
mod models;
pub mod openai;
pub mod openapi;
mod openapi_manage;
pub mod outputs;
pub mod predictions;

pub(crate) use manage::announce_revocation;
pub use models::ModelCatalog;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::BodyLimits;
use crate::middleware::{self, EdgeLayer, EdgeSettings, FastAnswer, FastRoute, Front, Head};
use crate::state::AppState;

/// The versioned API routes and the console's. Flat paths rather than a nested router: nesting costs a boxed service
/// clone per request, which showed up in the load benchmark's profile. A route with its own body limit
/// (`server.body_limits`) carries it as a route layer, which the extractors then obey.
fn v1(r: Router<AppState>, limits: &BodyLimits) -> Router<AppState> {
    let api: [(&str, MethodRouter<AppState>); _] = [
        ("/v1/models", get(models::list)),
        ("/v1/models/{slug}", get(models::get)),
        ("/v1/model/{slug}", get(models::get)),
        ("/v1/predict", post(predictions::create)),
        (
            "/v1/predictions",
            post(predictions::create).get(predictions::list),
        ),
        (
            "/v1/predictions/{id}",
            get(predictions::get).delete(predictions::delete),
        ),
        ("/v1/predictions/{id}/cancel", post(predictions::cancel)),
        (
            "/v1/predictions/{id}/delete",
            axum::routing::delete(predictions::delete),
        ),
        ("/v1/predictions/{id}/stream", get(predictions::stream)),
        ("/v1/outputs/{id}/{file}", get(outputs::download)),
        ("/v1/chat/completions", post(openai::chat_completions)),
        ("/v1/embeddings", post(openai::embeddings)),
        ("/v1/openapi.json", get(openapi::serve_spec)),
        ("/v1/account", get(manage::account)),
        ("/v1/account/export", get(manage::export)),
        (
            "/v1/projects",
            get(manage::list_projects).post(manage::create_project),
        ),
        (
            "/v1/projects/{id}/keys",
            get(manage::list_keys).post(manage::create_key),
        ),
        ("/v1/keys/{id}", axum::routing::delete(manage::revoke_key)),
        ("/v1/audit", get(manage::audit)),
    ];
    let routes = api.into_iter().chain(crate::console::routes());
    routes.fold(r, |r, (path, route)| {
        let own = limits.for_route(path);
        if own == limits.default {
            r.route(path, route)
        } else {
            r.route(
                path,
                route.layer(DefaultBodyLimit::max(usize::try_from(own).unwrap_or(usize::MAX))),
            )
        }
    })
}

/// The whole application: routes plus the edge middleware stack, behind the hot-route front (served as
/// it is, without an outer router: the front does its own dispatch).
pub fn router(state: AppState) -> Front<Hot> {
    let limits = state.body_limits().clone();
    let request_timeout = state.config().server.request_timeout;
    let routes = v1(
        Router::new()
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz)),
        &limits,
    )
    .fallback(middleware::not_found)
    .layer(axum::middleware::from_fn(crate::limits::rate_headers))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::screen::screen,
    ))
    .with_state(state.clone());
    let body_limit = limits.default;
    let edge = EdgeLayer::configured(EdgeSettings {
        body_limits: limits,
        timeout: request_timeout,
        max_headers: state.config().server.max_headers,
        metrics: state.metrics().map(|m| m.http().clone()),
    });
    let routed = with_edge(routes, body_limit, &edge);
    Front::new(&edge, Hot::new(state), routed)
}

/// Wraps any router in the edge stack: the body limit for extractors, panic catching, and the edge layer
/// (request id, declared-size check, deadline, error envelope, security headers; see [`middleware`]).
pub fn with_edge_layers(routes: Router, body_limit: u64, request_timeout: Duration) -> Router {
    with_edge(routes, body_limit, &EdgeLayer::new(body_limit, request_timeout))
}

/// [`with_edge_layers`] with a given edge layer (shared with a [`Front`]).
fn with_edge(routes: Router, body_limit: u64, edge: &EdgeLayer) -> Router {
    let limit = usize::try_from(body_limit).unwrap_or(usize::MAX);
    routes
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(edge.clone())
}

/// The routes [`Front`] answers without the router (bodiless `GET` only; see [`FastRoute`]).
pub struct Hot {
    state: AppState,
    health: health::Prebuilt,
}

impl Hot {
    fn new(state: AppState) -> Self {
        Hot {
            state,
            health: health::Prebuilt::new(),
        }
    }
}

impl FastRoute for Hot {
    fn answer(&self, head: &Head<'_>) -> Option<FastAnswer> {
        let req = head.parts;
        let path = req.uri.path();
        if path != "/v1/models" && path != "/healthz" {
            return None;
        }
        // Found once: the WAF and the failed-authentication budget both key on it.
        let client = head
            .peer
            .map(|p| crate::screen::client_ip(p.ip(), &req.headers, self.state.trusted_proxies()));
        if let Some(refused) = client.and_then(|ip| crate::screen::screen_head(&self.state, ip, req)) {
            return Some(FastAnswer::Response(refused));
        }
        match path {
            // `list` reads the query; only the plain form is answered here.
            "/v1/models" if req.uri.query().is_none() => {
                models::list_cached(&self.state, client, &req.headers)
            }
            // `healthz` reads nothing from the request.
            "/healthz" => Some(self.health.healthz()),
            _ => None,
        }
    }
}

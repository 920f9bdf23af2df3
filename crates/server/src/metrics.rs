//! Prometheus metrics: request counts by route, method and status, latency by route, rate-limiter
//! decisions, limiter backend failures and WAF blocks and log matches per rule, served in the
//! OpenMetrics text format on a separate plaintext listener that only binds loopback addresses
//! (`[metrics] listen`; off by default, so nothing is counted unless it is on).
//!
//! Labels are bounded: routes are the API's route templates (every other path is `other`, so a flood
//! of unknown paths adds no series), methods the standard ones (else `other`), statuses the numeric
//! code. No label carries a key, an id or an address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::limits::RateLimits;
use crate::waf::Waf;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `requests`, `predictions`, `daily_predictions` or `failed_authentications`.
    limit: &'static str,
    /// `allowed`, `limited`, or `unavailable` (the backend did not answer; the failure policy decided).
    decision: &'static str,
}

/// Latency buckets: 100 µs doubling to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The HTTP counters the edge records into (cheap to clone: shared families).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// A request's labels, taken from its head before it is handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKey {
    route: &'static str,
    method: &'static str,
}

impl RouteKey {
    pub fn of(method: &Method, path: &str) -> RouteKey {
        RouteKey {
            route: route_of(path),
            method: method_label(method),
        }
    }
}

impl HttpMetrics {
    /// Counts one answered request.
    pub fn observe(&self, key: RouteKey, status: StatusCode, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: key.route,
                method: key.method,
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route: key.route })
            .observe(elapsed.as_secs_f64());
    }
}

/// Rate-limiter decisions (cheap to clone).
#[derive(Clone, Default)]
pub struct LimiterMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl LimiterMetrics {
    pub fn record(&self, limit: &'static str, decision: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { limit, decision })
            .inc();
    }
}

/// Values read at scrape time from where they are already counted.
struct Sources {
    waf: Arc<Waf>,
    limits: Arc<RateLimits>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.waf.totals();
        for (name, help, pick) in [
            ("skygate_waf_blocks", "Requests blocked by a WAF rule", 0usize),
            (
                "skygate_waf_log_matches",
                "Requests matched by a log-only WAF rule",
                1,
            ),
        ] {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (rule, blocks, logged) in &totals {
                let v = if pick == 0 { *blocks } else { *logged };
                let labels = RuleLabels {
                    rule: rule.to_string(),
                };
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        let failures = ConstCounter::new(self.limits.failures());
        failures.encode(encoder.encode_descriptor(
            "skygate_ratelimit_backend_failures",
            "Limiter calls that failed or timed out (Redis unreachable or slow)",
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Every metric of one node and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
    limiter: LimiterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let http = HttpMetrics::default();
        let limiter = LimiterMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "skygate_http_requests",
            "Requests answered, by route template, method and status",
            http.requests.clone(),
        );
        registry.register(
            "skygate_http_request_duration_seconds",
            "Time from the request head to the response head, by route template",
            http.latency.clone(),
        );
        registry.register(
            "skygate_ratelimit_decisions",
            "Rate-limit checks by limit and outcome",
            limiter.decisions.clone(),
        );
        Metrics {
            registry,
            http,
            limiter,
        }
    }

    /// Adds the values counted elsewhere (WAF rules, limiter failures); call once, before sharing.
    pub fn add_sources(&mut self, waf: Arc<Waf>, limits: Arc<RateLimits>) {
        self.registry
            .register_collector(Box::new(Sources { waf, limits }));
    }

    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    pub fn limiter(&self) -> &LimiterMetrics {
        &self.limiter
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// The API's route templates (what [`route_of`] can answer besides `other`).
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/models",
    "/v1/models/{slug}",
    "/v1/model/{slug}",
    "/v1/predict",
    "/v1/predictions",
    "/v1/predictions/{id}",
    "/v1/predictions/{id}/cancel",
    "/v1/predictions/{id}/delete",
    "/v1/predictions/{id}/stream",
    "/v1/outputs/{id}/{file}",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/openapi.json",
    "/v1/account",
    "/v1/account/export",
    "/v1/projects",
    "/v1/projects/{id}/keys",
    "/v1/keys/{id}",
    "/v1/audit",
    "/console",
    "/console/style.css",
    "/console/login",
    "/console/login/2fa",
    "/console/logout",
    "/console/setup",
    "/console/security",
    "/console/security/2fa/begin",
    "/console/security/2fa/confirm",
    "/console/security/2fa/disable",
    "/console/security/2fa/regenerate",
    "/console/keys",
    "/console/keys/revoke",
    "/console/tokens",
    "/console/tokens/revoke",
    "/console/sessions",
    "/console/sessions/revoke",
    "/console/audit",
];

/// The API's route templates, as the router declares them: a request's path is counted under the one
/// it matches, anything else under `other`.
pub fn route_of(path: &str) -> &'static str {
    let mut seg = path.strip_prefix('/').unwrap_or(path).split('/');
    let (a, b, c, d, e) = (seg.next(), seg.next(), seg.next(), seg.next(), seg.next());
    let some = |s: Option<&str>| s.is_some_and(|s| !s.is_empty());
    if seg.next().is_some() {
        return "other";
    }
    if a == Some("console") {
        // Console routes have no parameters: the path is the template.
        return ROUTES
            .iter()
            .find(|r| r.starts_with("/console") && **r == path)
            .copied()
            .unwrap_or("other");
    }
    match (a, b, c, d, e) {
        (Some("healthz"), None, ..) => "/healthz",
        (Some("readyz"), None, ..) => "/readyz",
        (Some("v1"), Some("models"), None, ..) => "/v1/models",
        (Some("v1"), Some("models"), s, None, _) if some(s) => "/v1/models/{slug}",
        (Some("v1"), Some("model"), s, None, _) if some(s) => "/v1/model/{slug}",
        (Some("v1"), Some("predict"), None, ..) => "/v1/predict",
        (Some("v1"), Some("predictions"), None, ..) => "/v1/predictions",
        (Some("v1"), Some("predictions"), s, None, _) if some(s) => "/v1/predictions/{id}",
        (Some("v1"), Some("predictions"), s, Some("cancel"), None) if some(s) => {
            "/v1/predictions/{id}/cancel"
        }
        (Some("v1"), Some("predictions"), s, Some("delete"), None) if some(s) => {
            "/v1/predictions/{id}/delete"
        }
        (Some("v1"), Some("predictions"), s, Some("stream"), None) if some(s) => {
            "/v1/predictions/{id}/stream"
        }
        (Some("v1"), Some("outputs"), s, f, None) if some(s) && some(f) => "/v1/outputs/{id}/{file}",
        (Some("v1"), Some("chat"), Some("completions"), None, _) => "/v1/chat/completions",
        (Some("v1"), Some("embeddings"), None, ..) => "/v1/embeddings",
        (Some("v1"), Some("openapi.json"), None, ..) => "/v1/openapi.json",
        (Some("v1"), Some("account"), None, ..) => "/v1/account",
        (Some("v1"), Some("account"), Some("export"), None, _) => "/v1/account/export",
        (Some("v1"), Some("projects"), None, ..) => "/v1/projects",
        (Some("v1"), Some("projects"), s, Some("keys"), None) if some(s) => "/v1/projects/{id}/keys",
        (Some("v1"), Some("keys"), s, None, _) if some(s) => "/v1/keys/{id}",
        (Some("v1"), Some("audit"), None, ..) => "/v1/audit",
        _ => "other",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Binds the metrics listener (loopback only; checked by the config too).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("metrics.listen must be a loopback address, got {addr}");
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: cannot bind: {e}"))
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { exposition(&metrics) }
            }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}

fn exposition(metrics: &Metrics) -> Response {
    let mut res = metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_route_templates_and_the_rest_to_other() {
        for (path, route) in [
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/v1/models", "/v1/models"),
            ("/v1/models/sky-image", "/v1/models/{slug}"),
            ("/v1/model/sky-image", "/v1/model/{slug}"),
            ("/v1/predict", "/v1/predict"),
            ("/v1/predictions", "/v1/predictions"),
            ("/v1/predictions/abc", "/v1/predictions/{id}"),
            ("/v1/predictions/abc/cancel", "/v1/predictions/{id}/cancel"),
            ("/v1/predictions/abc/delete", "/v1/predictions/{id}/delete"),
            ("/v1/predictions/abc/stream", "/v1/predictions/{id}/stream"),
            ("/v1/outputs/abc/output-0.png", "/v1/outputs/{id}/{file}"),
            ("/v1/openapi.json", "/v1/openapi.json"),
            ("/v1/account", "/v1/account"),
            ("/v1/account/export", "/v1/account/export"),
            ("/v1/projects", "/v1/projects"),
            ("/v1/projects/proj_1/keys", "/v1/projects/{id}/keys"),
            ("/v1/keys/key_1", "/v1/keys/{id}"),
            ("/v1/audit", "/v1/audit"),
            ("/console", "/console"),
            ("/console/login/2fa", "/console/login/2fa"),
            (
                "/console/security/2fa/regenerate",
                "/console/security/2fa/regenerate",
            ),
            ("/console/keys/revoke", "/console/keys/revoke"),
            ("/console/nope", "other"),
            ("/console/keys/", "other"),
            ("/v1/projects/proj_1", "other"),
            ("/", "other"),
            ("/v1", "other"),
            ("/v1/models/", "other"),
            ("/v1/predictions/abc/other", "other"),
            ("/v1/outputs/abc", "other"),
            ("/v1/predictions/a/b/c/d", "other"),
            ("/.env", "other"),
            ("/wp-admin/x/y/z/w/v", "other"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
            assert!(route == "other" || ROUTES.contains(&route), "{route}");
        }
    }

    #[test]
    fn the_exposition_counts_requests_and_decisions() {
        let m = Metrics::new();
        let models = RouteKey::of(&Method::GET, "/v1/models");
        m.http()
            .observe(models, StatusCode::OK, Duration::from_micros(250));
        m.http().observe(models, StatusCode::OK, Duration::from_millis(3));
        let junk = RouteKey::of(&Method::from_bytes(b"BREW").unwrap(), "/nope/123");
        m.http()
            .observe(junk, StatusCode::NOT_FOUND, Duration::from_millis(1));
        m.limiter().record("requests", "limited");
        let text = m.render();
        assert!(
            text.contains(
                "skygate_http_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("skygate_http_requests_total{route=\"other\",method=\"other\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("skygate_http_request_duration_seconds_count{route=\"/v1/models\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("skygate_ratelimit_decisions_total{limit=\"requests\",decision=\"limited\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

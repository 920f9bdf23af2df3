//! The edge layer, one tower service around every route (routed or not) that does in a single pass:
//! - request ids: a valid incoming `x-request-id` is kept, otherwise one is made (a random per-process
//!   prefix and a counter: unique, and no system call per request); it is echoed in the response and
//!   attached to the request's tracing span;
//! - an early 413 when `Content-Length` is over the body limit (before routing or reading);
//! - the request deadline (408 when it passes);
//! - the error envelope for anything the framework produced (404, 405, 413, 408, panics): any non-2xx
//!   without a JSON body is rewritten to the documented envelope, keeping headers such as `Allow`;
//! - security headers (HSTS, nosniff, referrer policy, frame denial, CSP, no-store) unless a handler
//!   set its own.
//!
//! One hand-written service instead of a stack of `from_fn` layers: it costs one boxed future per
//! request, which the load benchmark showed matters.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::ApiError;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=63072000; includeSubDomains",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::CACHE_CONTROL, "no-store"),
];

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Makes request ids: `<12 random base62 chars>-<counter in hex>`.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let prefix =
            skygate_core::base62::random(12).unwrap_or_else(|_| format!("{:012x}", std::process::id()));
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix))
            .unwrap_or(HeaderValue::from_static("invalid"))
    }
}

struct EdgeConfig {
    body_limit: u64,
    timeout: Duration,
    ids: RequestIds,
}

/// The [`Layer`] for [`Edge`].
#[derive(Clone)]
pub struct EdgeLayer {
    cfg: Arc<EdgeConfig>,
}

impl EdgeLayer {
    pub fn new(body_limit: u64, timeout: Duration) -> Self {
        EdgeLayer {
            cfg: Arc::new(EdgeConfig {
                body_limit,
                timeout,
                ids: RequestIds::new(),
            }),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    cfg: Arc<EdgeConfig>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => {
                let fresh = self.cfg.ids.make();
                req.headers_mut().insert(X_REQUEST_ID.clone(), fresh.clone());
                fresh
            }
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cfg.body_limit) {
            let res = finish(
                ApiError::payload_too_large(self.cfg.body_limit).into_response(),
                id,
            );
            return Box::pin(std::future::ready(Ok(res)));
        }
        let span = tracing::info_span!(
            "request",
            request_id = %String::from_utf8_lossy(id.as_bytes()),
            method = %req.method(),
            path = %req.uri().path(),
        );
        // Take the service that was polled ready, leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.cfg.timeout;
        Box::pin(
            async move {
                let started = Instant::now();
                let res = match tokio::time::timeout(timeout, inner.call(req)).await {
                    Ok(Ok(res)) => res,
                    Ok(Err(never)) => match never {},
                    Err(_) => ApiError::for_status(StatusCode::REQUEST_TIMEOUT).into_response(),
                };
                tracing::debug!(
                    status = res.status().as_u16(),
                    latency_us = started.elapsed().as_micros() as u64,
                    "response"
                );
                Ok(finish(res, id))
            }
            .instrument(span),
        )
    }
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Envelope for framework-made errors, then the request id and the security headers.
fn finish(res: Response, id: HeaderValue) -> Response {
    let status = res.status();
    let mut res = if status.as_u16() >= 400 && !is_json(&res) {
        let (mut parts, _) = res.into_parts();
        let (fresh_parts, body) = ApiError::for_status(status).into_response().into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        for (k, v) in fresh_parts.headers.iter() {
            parts.headers.insert(k.clone(), v.clone());
        }
        parts.status = fresh_parts.status;
        Response::from_parts(parts, body)
    } else {
        res
    };
    let h = res.headers_mut();
    h.insert(X_REQUEST_ID.clone(), id);
    for (k, v) in SECURITY_HEADERS {
        if !h.contains_key(&k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    }
    res
}

/// The 404 for unknown routes.
pub async fn not_found() -> Response {
    ApiError::for_status(StatusCode::NOT_FOUND).into_response()
}

/// Turns a panic inside a handler into an opaque 500 envelope (the panic message is logged, not sent).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic)");
    let e = std::io::Error::other(format!("handler panicked: {msg}"));
    ApiError::internal(&e).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn request_ids_are_unique_and_valid() {
        let ids = RequestIds::new();
        let a = ids.make();
        let b = ids.make();
        assert_ne!(a, b);
        assert!(valid_request_id(&a) && valid_request_id(&b));
    }
}

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
//!
//! [`Front`] sits in front of the router and gives the same edge treatment to the few hot routes it
//! answers synchronously (see [`FastRoute`]), skipping the router's per-request boxing, service clones
//! and extension inserts; everything else goes through the router and [`Edge`] as before.

use std::convert::Infallible;
use std::future::Future;
use std::future::Ready;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use futures_util::future::Either;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::config::BodyLimits;
use crate::error::ApiError;
use crate::metrics::{HttpMetrics, RouteKey};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sent on every response unless the handler set its own value. `from_static`: no parsing or copying
/// per request.
#[allow(clippy::declare_interior_mutable_const)]
pub const SECURITY_HEADERS: [(HeaderName, HeaderValue); 6] = [
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    ),
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
];

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Longest request-id prefix kept (the random prefix is 12 characters).
const ID_PREFIX_MAX: usize = 32;

/// The request-id counter of the whole process, taken by each thread in blocks of [`ID_BLOCK`], so that
/// the workers do not bounce one cache line between cores on every request. Ids stay unique in the
/// process (and across processes, by the random prefix); only their order across threads is lost.
static NEXT_ID_BLOCK: AtomicU64 = AtomicU64::new(1);
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's next id and the end of its block.
    static ID_RANGE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn next_id() -> u64 {
    ID_RANGE.with(|r| {
        let (mut next, mut end) = r.get();
        if next == end {
            next = NEXT_ID_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        r.set((next + 1, end));
        next
    })
}

/// Makes request ids: `<12 random base62 chars>-<counter in hex>`, formatted on the stack (no `String`,
/// no formatting machinery; the only allocation is the header value's own bytes).
struct RequestIds {
    prefix: [u8; ID_PREFIX_MAX],
    prefix_len: usize,
}

impl RequestIds {
    fn new() -> Self {
        let prefix =
            skygate_core::base62::random(12).unwrap_or_else(|_| format!("{:012x}", std::process::id()));
        let mut buf = [0u8; ID_PREFIX_MAX];
        let prefix_len = prefix.len().min(ID_PREFIX_MAX);
        for (d, s) in buf.iter_mut().zip(prefix.bytes()) {
            *d = s;
        }
        RequestIds {
            prefix: buf,
            prefix_len,
        }
    }

    fn make(&self) -> HeaderValue {
        self.format(next_id())
    }

    /// The id numbered `n`.
    fn format(&self, n: u64) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; ID_PREFIX_MAX + 1 + 16];
        let (head, tail) = buf.split_at_mut(self.prefix_len);
        head.copy_from_slice(self.prefix.get(..self.prefix_len).unwrap_or_default());
        // `-`, then the counter in lowercase hex without leading zeros.
        let digits = (64 - (n | 1).leading_zeros()).div_ceil(4) as usize;
        let mut len = self.prefix_len + 1;
        if let Some((dash, hex)) = tail.split_first_mut() {
            *dash = b'-';
            for (i, d) in hex.iter_mut().take(digits).enumerate() {
                let shift = 4 * (digits - 1 - i);
                *d = HEX[((n >> shift) & 0xf) as usize];
            }
            len += digits.min(hex.len());
        }
        small_value(buf.get(..len).unwrap_or_default())
    }
}

/// A header value made per response (request ids, rate-limit numbers): one allocation for its bytes
/// (`HeaderValue::from(u32)` makes two). Bytes that are not a valid header value give `invalid`.
pub fn small_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(bytes))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

/// `n` in decimal as a header value (see [`small_value`]).
pub fn number_value(n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    let mut rest = n;
    for d in buf.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
        start -= 1;
        if rest == 0 {
            break;
        }
    }
    small_value(buf.get(start..).unwrap_or_default())
}

/// What the edge layer enforces and records.
#[derive(Clone)]
pub struct EdgeSettings {
    /// Per route (see [`BodyLimits`]).
    pub body_limits: BodyLimits,
    pub timeout: Duration,
    /// More header fields than this: `431` (see `server.max_headers`).
    pub max_headers: usize,
    /// Request counters, when `[metrics]` is on.
    pub metrics: Option<HttpMetrics>,
}

struct EdgeConfig {
    body_limits: BodyLimits,
    timeout: Duration,
    max_headers: usize,
    ids: RequestIds,
    metrics: Option<HttpMetrics>,
}

/// The [`Layer`] for [`Edge`].
#[derive(Clone)]
pub struct EdgeLayer {
    cfg: Arc<EdgeConfig>,
}

impl EdgeLayer {
    /// The body limit and request deadline, at most 100 header fields, no metrics.
    pub fn new(body_limit: u64, timeout: Duration) -> Self {
        Self::configured(EdgeSettings {
            body_limits: BodyLimits::uniform(body_limit),
            timeout,
            max_headers: 100,
            metrics: None,
        })
    }

    pub fn configured(s: EdgeSettings) -> Self {
        EdgeLayer {
            cfg: Arc::new(EdgeConfig {
                body_limits: s.body_limits,
                timeout: s.timeout,
                max_headers: s.max_headers,
                ids: RequestIds::new(),
                metrics: s.metrics,
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
        let started = Instant::now();
        let observed = self
            .cfg
            .metrics
            .clone()
            .map(|m| (m, RouteKey::of(req.method(), req.uri().path())));
        let id = match incoming_request_id(&req) {
            Some(v) => v,
            None => {
                let fresh = self.cfg.ids.make();
                req.headers_mut().insert(X_REQUEST_ID.clone(), fresh.clone());
                fresh
            }
        };
        if let Some(refused) = self.cfg.refuse_head(req.headers(), req.uri().path()) {
            let res = finish(refused, id);
            if let Some((m, key)) = &observed {
                m.observe(*key, res.status(), started.elapsed());
            }
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
                let res = finish(res, id);
                if let Some((m, key)) = observed {
                    m.observe(key, res.status(), started.elapsed());
                }
                Ok(res)
            }
            .instrument(span),
        )
    }
}

impl EdgeConfig {
    /// The checks made on the head alone, before routing: too many header fields (431; the request id,
    /// which the edge may have added itself, is not counted) or a declared body over the limit (413).
    fn refuse_head(&self, h: &HeaderMap, path: &str) -> Option<Response> {
        if h.len() > self.max_headers
            && h.len() - usize::from(h.contains_key(&X_REQUEST_ID)) > self.max_headers
        {
            return Some(ApiError::for_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).into_response());
        }
        let declared = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let n = declared?;
        let limit = self.body_limits.for_path(path);
        (n > limit).then(|| ApiError::payload_too_large(limit).into_response())
    }
}

/// A valid `x-request-id` sent by the client, kept as is.
fn incoming_request_id(req: &Request) -> Option<HeaderValue> {
    incoming_request_id_in(req.headers())
}

fn incoming_request_id_in(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| valid_request_id(v))
        .cloned()
}

/// Answers a hot route synchronously (`Some`), or declines (`None`) so the request takes the router.
/// It must decide from the request head alone, never block, and give the same answer the routed handler
/// would give.
pub trait FastRoute: Send + Sync + 'static {
    fn answer(&self, head: &Head<'_>) -> Option<FastAnswer>;
}

/// What a [`FastRoute`] decides from: the request head and the connection's peer address (`None` when
/// the request did not come through the listener, e.g. in in-memory tests).
pub struct Head<'a> {
    pub parts: &'a axum::http::request::Parts,
    pub peer: Option<SocketAddr>,
}

/// A response body: a fast-path answer's bytes as they are (no boxing), or any other answer's body.
pub enum OutBody {
    Full(Option<Bytes>),
    Routed(Body),
}

impl OutBody {
    fn full(b: Bytes) -> Self {
        OutBody::Full((!b.is_empty()).then_some(b))
    }
}

impl axum::body::HttpBody for OutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            OutBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            OutBody::Routed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Full(b) => b.is_none(),
            OutBody::Routed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            OutBody::Full(b) => hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OutBody::Routed(b) => b.size_hint(),
        }
    }
}

/// What a [`FastRoute`] answers.
pub enum FastAnswer {
    /// `200 OK`, `Content-Type: application/json`, this body: the edge headers come from a prebuilt
    /// map (one clone, no per-header hashing).
    Json(Bytes),
    /// The same with the rate-limit headers of an authenticated answer.
    JsonRated(Bytes, crate::limits::RateInfo),
    /// Any other response; finished like a routed one.
    Response(Response),
}

/// The headers of a `200` JSON answer on the fast path, in the order the routed path gives them: content
/// type, request id (a placeholder, replaced in place), security headers. Cloning it allocates once for
/// the entries and once for the index, sized so that nothing grows afterwards.
fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(SECURITY_HEADERS.len() + 2);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("-"));
    for (k, v) in SECURITY_HEADERS {
        h.insert(k, v);
    }
    h
}

/// Where the headers set per response sit in a prebuilt map, so that its clone is filled in by position
/// (no hashing of the names; positions count as `iter`/`iter_mut` do). A position found not to hold its name (it always does: the map is built
/// once and only cloned) falls back to [`set_header`].
struct Slots<const N: usize>([(HeaderName, usize); N]);

impl<const N: usize> Slots<N> {
    fn of(h: &HeaderMap, names: [&HeaderName; N]) -> Self {
        Slots(names.map(|n| {
            (
                n.clone(),
                h.iter().position(|(k, _)| k == n).unwrap_or(usize::MAX),
            )
        }))
    }

    fn set(&self, h: &mut HeaderMap, slot: usize, value: HeaderValue) {
        let Some((name, at)) = self.0.get(slot) else {
            return;
        };
        match h.iter_mut().nth(*at) {
            Some((k, v)) if k == name => *v = value,
            _ => set_header(h, name, value),
        }
    }
}

struct FrontInner<F> {
    fast: F,
    cfg: Arc<EdgeConfig>,
    json_headers: HeaderMap,
    /// Its request id.
    json_slots: Slots<1>,
    /// The same with placeholders for the rate-limit headers, replaced in place.
    json_rated_headers: HeaderMap,
    /// Its request id, then the rate headers in [`crate::limits::RateInfo::values`]' order.
    json_rated_slots: Slots<4>,
    routed: axum::Router,
}

/// The service in front of the router: a bodiless `GET` that `F` answers synchronously is served here
/// with the same edge treatment as [`Edge`] (request id, span, panic → 500 envelope, error envelope,
/// security headers), without the router's per-request boxing, cloning and extension inserts; anything
/// else (other methods, a body, a query the fast route does not take, an auth-cache miss that needs the
/// store) goes to the routed application unchanged, which has the whole edge stack. Ids come from the
/// same counter as the [`EdgeLayer`] it is built with. No deadline is needed on the fast path: it never
/// waits.
pub struct Front<F>(Arc<FrontInner<F>>);

impl<F> Clone for Front<F> {
    fn clone(&self) -> Self {
        Front(self.0.clone())
    }
}

impl<F: FastRoute> Front<F> {
    /// `routed` must already carry `edge` (see [`crate::api::with_edge`]).
    pub fn new(edge: &EdgeLayer, fast: F, routed: axum::Router) -> Self {
        // Placeholders: every response replaces them.
        let rate = crate::limits::RateInfo {
            limit: 0,
            remaining: 0,
            reset_secs: 0,
        };
        let mut json_rated_headers = HeaderMap::with_capacity(SECURITY_HEADERS.len() + 6);
        json_rated_headers.extend(json_headers());
        rate.apply(&mut json_rated_headers);
        let json_headers = json_headers();
        let [(limit, _), (remaining, _), (reset, _)] = rate.values();
        Front(Arc::new(FrontInner {
            fast,
            cfg: edge.cfg.clone(),
            json_slots: Slots::of(&json_headers, [&X_REQUEST_ID]),
            json_headers,
            json_rated_slots: Slots::of(&json_rated_headers, [&X_REQUEST_ID, limit, remaining, reset]),
            json_rated_headers,
            routed,
        }))
    }
}

/// A routed answer, as an [`OutBody`] response.
pub type RoutedOut = futures_util::future::Map<
    RouteFuture<Infallible>,
    fn(Result<Response, Infallible>) -> Result<Response<OutBody>, Infallible>,
>;

fn routed_out(r: Result<Response, Infallible>) -> Result<Response<OutBody>, Infallible> {
    r.map(|res| res.map(OutBody::Routed))
}

impl<F: FastRoute> Front<F> {
    /// The fast path: `Some` answer, or `None` for the router (a fresh request id already in the head).
    fn try_fast(
        &self,
        parts: &mut axum::http::request::Parts,
        bodiless: bool,
        peer: Option<SocketAddr>,
    ) -> Option<Response<OutBody>> {
        let me = &*self.0;
        if parts.method != Method::GET || !bodiless {
            return None;
        }
        let (id, fresh) = match incoming_request_id_in(&parts.headers) {
            Some(v) => (v, false),
            None => (me.cfg.ids.make(), true),
        };
        let span = tracing::info_span!(
            "request",
            request_id = %String::from_utf8_lossy(id.as_bytes()),
            method = %parts.method,
            path = %parts.uri.path(),
        );
        let observed = me.cfg.metrics.as_ref();
        let started = (observed.is_some() || tracing::enabled!(tracing::Level::DEBUG)).then(Instant::now);
        let answer = match me.cfg.refuse_head(&parts.headers, parts.uri.path()) {
            Some(refused) => Some(FastAnswer::Response(refused)),
            None => {
                let _entered = span.enter();
                let head = Head { parts, peer };
                match std::panic::catch_unwind(AssertUnwindSafe(|| me.fast.answer(&head))) {
                    Ok(a) => a,
                    Err(panic) => Some(FastAnswer::Response(panic_response(panic))),
                }
            }
        };
        let res = match answer {
            Some(FastAnswer::Json(body)) => {
                let mut headers = me.json_headers.clone();
                me.json_slots.set(&mut headers, 0, id);
                let mut res = Response::new(OutBody::full(body));
                *res.headers_mut() = headers;
                res
            }
            Some(FastAnswer::JsonRated(body, rate)) => {
                let mut headers = me.json_rated_headers.clone();
                me.json_rated_slots.set(&mut headers, 0, id);
                for (slot, (_, value)) in (1..).zip(rate.values()) {
                    me.json_rated_slots.set(&mut headers, slot, value);
                }
                let mut res = Response::new(OutBody::full(body));
                *res.headers_mut() = headers;
                res
            }
            Some(FastAnswer::Response(res)) => finish(res, id).map(OutBody::Routed),
            None => {
                if fresh {
                    // Keep the id already made; the edge layer keeps a valid incoming id.
                    parts.headers.insert(X_REQUEST_ID.clone(), id);
                }
                return None;
            }
        };
        if let Some(started) = started {
            let _entered = span.enter();
            tracing::debug!(
                status = res.status().as_u16(),
                latency_us = started.elapsed().as_micros() as u64,
                "response"
            );
            if let Some(m) = observed {
                m.observe(
                    RouteKey::of(&parts.method, parts.uri.path()),
                    res.status(),
                    started.elapsed(),
                );
            }
        }
        Some(res)
    }

    /// Serves a request from the listener, which gives the peer address beside it: the fast path reads
    /// it from there; only a routed request gets the body boxed and the `ConnectInfo` extension.
    pub fn serve(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Either<Ready<Result<Response<OutBody>, Infallible>>, RoutedOut> {
        let (mut parts, body) = req.into_parts();
        if let Some(res) = self.try_fast(&mut parts, body.is_end_stream(), Some(peer)) {
            return Either::Left(std::future::ready(Ok(res)));
        }
        parts.extensions.insert(axum::extract::ConnectInfo(peer));
        let req = Request::from_parts(parts, Body::new(body));
        Either::Right(futures_util::FutureExt::map(
            self.0.routed.clone().call(req),
            routed_out as fn(_) -> _,
        ))
    }
}

impl<F: FastRoute> Service<Request> for Front<F> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        match self.try_fast(&mut parts, body.is_end_stream(), peer) {
            Some(res) => Either::Left(std::future::ready(Ok(res.map(Body::new)))),
            None => Either::Right(self.0.routed.clone().call(Request::from_parts(parts, body))),
        }
    }
}

/// Sets `name` to `value`: in place when the map already has it (a cloned prebuilt map is full to its
/// capacity, and `insert` reserves room first, so it would grow the map on every response), else inserted.
pub fn set_header(h: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match h.get_mut(name) {
        Some(slot) => *slot = value,
        None => {
            h.insert(name.clone(), value);
        }
    }
}

/// A handler's own error body: JSON (the envelope), or the console's HTML pages.
fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"))
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
    // One growth at most, instead of one per insert past the map's capacity.
    h.reserve(SECURITY_HEADERS.len() + 1);
    h.insert(X_REQUEST_ID.clone(), id);
    for (k, v) in SECURITY_HEADERS {
        // A handler's own value wins (one hash lookup either way).
        h.entry(k).or_insert(v);
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

    #[test]
    fn request_ids_are_prefix_dash_hex_counter() {
        let ids = RequestIds::new();
        let prefix = String::from_utf8(ids.prefix[..ids.prefix_len].to_vec()).unwrap();
        assert_eq!(prefix.len(), 12);
        for n in [1u64, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            assert_eq!(ids.format(n).to_str().unwrap(), format!("{prefix}-{n:x}"));
        }
    }

    #[test]
    fn small_values_and_numbers_are_exact() {
        let values: Vec<(u64, HeaderValue)> = (0..2_000u64)
            .map(|i| i * 7_919 % 100_003)
            .chain([0, 9, 10, u64::from(u32::MAX), u64::MAX])
            .map(|n| (n, number_value(n)))
            .collect();
        for (n, v) in &values {
            assert_eq!(v.to_str().unwrap(), n.to_string());
        }
        let long = "x".repeat(5000);
        assert_eq!(small_value(long.as_bytes()).to_str().unwrap(), long);
        assert_eq!(small_value(b"ok-1").to_str().unwrap(), "ok-1");
        assert_eq!(small_value(b"bad\nvalue"), HeaderValue::from_static("invalid"));
        assert_eq!(small_value(b""), HeaderValue::from_static(""));
    }

    #[test]
    fn slots_fill_a_prebuilt_maps_clone_in_place() {
        let rate = crate::limits::RateInfo {
            limit: 600,
            remaining: 12,
            reset_secs: 7,
        };
        let mut prebuilt = json_headers();
        rate.apply(&mut prebuilt);
        let names = rate.values().map(|(n, _)| n);
        let slots = Slots::of(&prebuilt, [&X_REQUEST_ID, names[0], names[1], names[2]]);
        let mut h = prebuilt.clone();
        let cap = h.capacity();
        slots.set(&mut h, 0, HeaderValue::from_static("id-1"));
        let next = crate::limits::RateInfo {
            limit: 1200,
            remaining: 1199,
            reset_secs: 61,
        };
        for (slot, (_, v)) in (1..).zip(next.values()) {
            slots.set(&mut h, slot, v);
        }
        let mut want = prebuilt.clone();
        want.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("id-1"));
        next.apply(&mut want);
        assert_eq!(h, want);
        assert_eq!(h.capacity(), cap, "filled in place");
        // A map without the name (not the one the slots were found in) gets it inserted.
        let mut other = HeaderMap::new();
        slots.set(&mut other, 2, HeaderValue::from_static("5"));
        assert_eq!(other.get(names[1]).unwrap(), "5");
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn request_ids_stay_unique_across_threads_taking_blocks() {
        let ids = Arc::new(RequestIds::new());
        let per_thread = 3 * ID_BLOCK as usize + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..per_thread).map(|_| ids.make()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id), "an id was made twice");
            }
        }
        assert_eq!(all.len(), 4 * per_thread);
    }

    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// Answers `/fast` (JSON), `/fast-error` (a 401 envelope), `/fast-panic`; declines the rest.
    struct TestFast;

    impl FastRoute for TestFast {
        fn answer(&self, head: &Head<'_>) -> Option<FastAnswer> {
            match head.parts.uri.path() {
                "/fast" => Some(FastAnswer::Json(Bytes::from_static(b"{\"fast\":true}"))),
                "/fast-error" => Some(FastAnswer::Response(ApiError::unauthorized().into_response())),
                "/fast-panic" => {
                    let v: Vec<u8> = Vec::new();
                    #[allow(clippy::indexing_slicing)]
                    let x = v[usize::from(v.is_empty())];
                    Some(FastAnswer::Json(Bytes::from(vec![x])))
                }
                _ => None,
            }
        }
    }

    fn front() -> axum::Router {
        let edge = EdgeLayer::new(1024, Duration::from_secs(5));
        let routes = axum::Router::new()
            .route(
                "/fast",
                get(|| async { "routed" }).post(|| async { "routed post" }),
            )
            .route(
                "/echo-id",
                get(|req: Request| async move { req.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned() }),
            )
            .fallback(not_found)
            .layer(edge.clone());
        axum::Router::new().fallback_service(Front::new(&edge, TestFast, routes))
    }

    async fn send(req: axum::http::Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = front().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn assert_edge_headers(h: &axum::http::HeaderMap) {
        assert!(valid_request_id(&h[&X_REQUEST_ID]));
        for (k, v) in SECURITY_HEADERS {
            assert_eq!(h[&k], v, "{k}");
        }
    }

    #[tokio::test]
    async fn fast_answers_carry_the_edge_headers() {
        let (s, h, body) = send(Request::get("/fast").body(Body::empty()).unwrap()).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"fast":true}"#));
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_edge_headers(&h);
        assert_eq!(h.len(), 2 + SECURITY_HEADERS.len());

        let (s, h, body) = send(Request::get("/fast-error").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body.contains("UNAUTHORIZED"), "{body}");
        assert_edge_headers(&h);
    }

    #[tokio::test]
    async fn a_valid_incoming_request_id_is_kept_on_both_paths() {
        for path in ["/fast", "/echo-id"] {
            let req = Request::get(path)
                .header("x-request-id", "client-id-1")
                .body(Body::empty())
                .unwrap();
            let (_, h, _) = send(req).await;
            assert_eq!(h[&X_REQUEST_ID], "client-id-1", "{path}");
            let req = Request::get(path)
                .header("x-request-id", "not valid!")
                .body(Body::empty())
                .unwrap();
            let (_, h, _) = send(req).await;
            assert_ne!(h[&X_REQUEST_ID], "not valid!", "{path}");
            assert!(valid_request_id(&h[&X_REQUEST_ID]));
        }
    }

    #[tokio::test]
    async fn a_declined_request_is_routed_with_the_id_already_made() {
        let (s, h, body) = send(Request::get("/echo-id").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        // The handler saw the id the response carries: one id per request, whichever path.
        assert_eq!(h[&X_REQUEST_ID], body.as_str());
        assert_edge_headers(&h);
    }

    #[tokio::test]
    async fn other_methods_bodies_and_unknown_paths_take_the_router() {
        let (s, h, body) = send(Request::post("/fast").body(Body::empty()).unwrap()).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "routed post"));
        assert_edge_headers(&h);
        // A GET with a body is not answered by the fast route.
        let (s, _, body) = send(Request::get("/fast").body(Body::from("x")).unwrap()).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "routed"));
        // Over the declared-size limit: the edge layer's 413 envelope.
        let (s, h, body) = send(
            Request::get("/fast")
                .header(header::CONTENT_LENGTH, "2048")
                .body(Body::from(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("PAYLOAD_TOO_LARGE"), "{body}");
        assert_edge_headers(&h);
        let (s, h, body) = send(Request::get("/nowhere").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("NOT_FOUND"), "{body}");
        assert_edge_headers(&h);
        let (s, h, body) = send(Request::delete("/fast").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("METHOD_NOT_ALLOWED"), "{body}");
        assert!(h.contains_key(header::ALLOW));
        assert_edge_headers(&h);
    }

    #[tokio::test]
    async fn a_panic_on_the_fast_path_is_an_opaque_500_envelope() {
        let (s, h, body) = send(Request::get("/fast-panic").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("INTERNAL_ERROR"), "{body}");
        assert!(!body.contains("index out of bounds"), "{body}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_edge_headers(&h);
    }
}

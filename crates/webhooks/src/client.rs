//! Outbound delivery client: one bounded HTTP/1.1 POST per attempt over pooled connections.
//!
//! Every *new* connection goes through the SSRF guard: [`check_url`], then [`vet`] with the
//! injected [`Resolver`] (once), then the injected [`Connector`] to a vetted address (in
//! order, never resolving again), then TLS 1.3 for https. Pooled keep-alive connections are
//! reused per scheme and authority, so a busy receiver gets many deliveries per connection.
//!
//! An attempt never takes longer than [`ClientConfig::timeout`] nor holds more than
//! [`ClientConfig::max_response_bytes`] of the answer; redirects are not followed. Guard
//! refusals come back as [`Outcome::Refused`] (final), everything else that is not an answer
//! as [`Outcome::Error`] (retried).

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT},
    HeaderMap, HeaderValue, Method, Request, Uri,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        self,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::guard::{check_url, vet, Connector, Io, Policy, Resolver};

/// Delivery client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// SSRF and URL policy.
    pub policy: Policy,
    /// Whole attempt: resolve, connect, TLS, request and reading the answer.
    pub timeout: Duration,
    /// Name resolution, within `timeout`.
    pub resolve_timeout: Duration,
    /// Operator CAs trusted besides the webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `User-Agent` sent with every delivery.
    pub user_agent: String,
    /// Idle keep-alive connections kept per receiver.
    pub max_idle_per_host: usize,
    /// Bytes of the answer kept in [`Attempt::response`].
    pub keep_response_bytes: usize,
    /// Bytes of the answer read at most; past that the connection is dropped.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            timeout: Duration::from_secs(15),
            resolve_timeout: Duration::from_secs(2),
            extra_roots: Vec::new(),
            user_agent: concat!("skygate-webhooks/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_idle_per_host: 16,
            keep_response_bytes: 1024,
            max_response_bytes: 64 * 1024,
        }
    }
}

/// Why a client could not be built, or roots not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration was rejected.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// An extra root certificate is not a usable trust anchor.
    #[error("invalid root certificate: {0}")]
    Root(rustls::Error),
    /// The PEM input is malformed.
    #[error("invalid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The PEM input holds no certificate.
    #[error("no certificate found in the PEM input")]
    NoCertificate,
    /// The user agent is not a valid header value.
    #[error("the user agent is not a valid header value")]
    UserAgent,
}

/// Parses every `CERTIFICATE` block of a PEM bundle (for [`ClientConfig::extra_roots`]).
pub fn load_pem_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(ClientError::NoCertificate);
    }
    Ok(certs)
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The receiver answered with this status (3xx included; redirects are not followed).
    Status {
        /// HTTP status code.
        code: u16,
        /// The answer's `Retry-After`, as delta-seconds or HTTP-date.
        retry_after: Option<Duration>,
    },
    /// The SSRF guard or URL policy refused the target: never retried.
    Refused(String),
    /// Connect, TLS, reset or timeout: retried.
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { code, .. } => write!(f, "HTTP {code}"),
            Self::Refused(reason) => write!(f, "refused: {reason}"),
            Self::Error(reason) => f.write_str(reason),
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// What happened.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
    /// The start of the answer (at most `keep_response_bytes`), when there was one.
    pub response: Option<Vec<u8>>,
}

/// Delivery client; cheap to clone (shares its connection pool).
#[derive(Clone)]
pub struct Client {
    http: legacy::Client<GuardedConnector, Full<Bytes>>,
    settings: Arc<Settings>,
}

struct Settings {
    policy: Policy,
    timeout: Duration,
    user_agent: HeaderValue,
    keep_response_bytes: usize,
    max_response_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.settings.policy)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client that resolves with `resolver` and connects with `connector`.
    pub fn new(
        config: ClientConfig,
        resolver: Arc<dyn Resolver>,
        connector: Arc<dyn Connector>,
    ) -> Result<Self, ClientError> {
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| ClientError::UserAgent)?;
        let connector = GuardedConnector(Arc::new(Guarded {
            policy: config.policy,
            timeout: config.timeout,
            resolve_timeout: config.resolve_timeout,
            resolver,
            connector,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(&config.extra_roots)?)),
        }));
        let http = legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            http,
            settings: Arc::new(Settings {
                policy: config.policy,
                timeout: config.timeout,
                user_agent,
                keep_response_bytes: config.keep_response_bytes,
                max_response_bytes: config.max_response_bytes,
            }),
        })
    }

    /// POSTs `body` as JSON to `url` with the caller's (signature) headers; never panics,
    /// never exceeds the configured time and memory.
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Bytes) -> Attempt {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let (outcome, response) = self.attempt(url, headers, body, deadline).await;
        Attempt {
            outcome,
            duration: started.elapsed(),
            response,
        }
    }

    async fn attempt(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> (Outcome, Option<Vec<u8>>) {
        let s = &self.settings;
        // Checked here too so a bad URL is refused even when a pooled connection exists.
        let target = match check_url(url, &s.policy) {
            Ok(target) => target,
            Err(e) => return (Outcome::Refused(e.to_string()), None),
        };
        let uri = match target.url.as_str().parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => return (Outcome::Refused(format!("the URL is not valid: {e}")), None),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let h = request.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, s.user_agent.clone());

        let response = match tokio::time::timeout_at(deadline, self.http.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return (describe(&e), None),
            Err(_) => return (Outcome::Error(timed_out(s.timeout)), None),
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let kept = read_bounded(
            response.into_body(),
            deadline,
            s.keep_response_bytes,
            s.max_response_bytes,
        )
        .await;
        (Outcome::Status { code, retry_after }, Some(kept))
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

/// Reads the answer until its end, an error, the deadline or `max` bytes, keeping the first
/// `keep`. The status is already known, so a short or slow body is not a failure; dropping
/// an unfinished body closes its connection instead of returning it to the pool.
async fn read_bounded(
    mut body: Incoming,
    deadline: tokio::time::Instant,
    keep: usize,
    max: usize,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut read = 0usize;
    while read < max {
        let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            let room = keep.saturating_sub(kept.len()).min(data.len());
            kept.extend_from_slice(&data[..room]);
        }
    }
    kept
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past means now).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turns a client error into an outcome: a guard refusal anywhere in the chain is
/// `Refused`, anything else an `Error` naming each distinct cause.
fn describe(error: &legacy::Error) -> Outcome {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(ConnectError::Refused(reason)) = e.downcast_ref::<ConnectError>() {
            return Outcome::Refused(reason.clone());
        }
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    Outcome::Error(parts.join(": "))
}

fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(ClientError::Root)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why opening a connection failed. `Refused` is recognised by [`describe`].
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Resolve(crate::guard::Refused),
    // Neither the address nor the host is named: the message is stored unsealed in the delivery log.
    #[error("connect: {error}")]
    Connect {
        addr: std::net::SocketAddr,
        error: io::Error,
    },
    #[error("TLS handshake: {error}")]
    Tls { host: String, error: io::Error },
    #[error("connection setup timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// The pool's connector: guard, connect to a vetted address, TLS.
#[derive(Clone)]
struct GuardedConnector(Arc<Guarded>);

struct Guarded {
    policy: Policy,
    timeout: Duration,
    resolve_timeout: Duration,
    resolver: Arc<dyn Resolver>,
    connector: Arc<dyn Connector>,
    tls: tokio_rustls::TlsConnector,
}

impl Guarded {
    async fn open(&self, uri: Uri) -> Result<TokioIo<Stream>, ConnectError> {
        let target =
            check_url(&uri.to_string(), &self.policy).map_err(|e| ConnectError::Refused(e.to_string()))?;
        let addrs = vet(
            &target,
            self.resolver.as_ref(),
            &self.policy,
            self.resolve_timeout,
        )
        .await
        .map_err(|e| {
            if e.is_policy() {
                ConnectError::Refused(e.to_string())
            } else {
                ConnectError::Resolve(e)
            }
        })?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match self.connector.connect(addr).await {
                Ok(io) => {
                    stream = Some(io);
                    break;
                }
                Err(error) => last = Some(ConnectError::Connect { addr, error }),
            }
        }
        let io = match (stream, last) {
            (Some(io), _) => io,
            (None, Some(error)) => return Err(error),
            (None, None) => return Err(ConnectError::Resolve(crate::guard::Refused::NoAddress)),
        };
        if !target.https {
            return Ok(TokioIo::new(Stream(io)));
        }
        let tls_error = |error| ConnectError::Tls {
            host: target.host.clone(),
            error,
        };
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = self.tls.connect(name, io).await.map_err(tls_error)?;
        Ok(TokioIo::new(Stream(Box::new(tls))))
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let guarded = Arc::clone(&self.0);
        Box::pin(async move {
            // Bounded on its own: the pool may finish a connection after its request gave up.
            let timeout = guarded.timeout;
            tokio::time::timeout(timeout, guarded.open(uri))
                .await
                .map_err(|_| ConnectError::Timeout(timeout))?
        })
    }
}

/// A guarded connection, plain or TLS.
struct Stream(Box<dyn Io>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn pem_roots() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let bundle = format!("{}\n{}", cert.pem(), cert.pem());
        let roots = load_pem_roots(bundle.as_bytes()).unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[0].as_ref(), cert.der().as_ref());
        assert!(matches!(load_pem_roots(b""), Err(ClientError::NoCertificate)));
        assert!(load_pem_roots(b"-----BEGIN CERTIFICATE-----\n!!\n").is_err());
    }

    #[test]
    fn outcome_display() {
        let status = Outcome::Status {
            code: 503,
            retry_after: None,
        };
        assert_eq!(status.to_string(), "HTTP 503");
        assert_eq!(Outcome::Refused("x".into()).to_string(), "refused: x");
        assert_eq!(Outcome::Error("reset".into()).to_string(), "reset");
    }
}

//! Baselines for the load benchmark: a bare hyper + rustls server with the same TLS 1.3 configuration
//! and certificate as skygate, and nothing else (no routing, auth or middleware).
//! Usage: `bare_tls DATA_DIR [BODY_FILE]` — prints `listening on https://ADDR`, serves until killed.
//! Without BODY_FILE every answer is `hello`; with it, every answer is that JSON body plus the same
//! response headers skygate sends, so the client does the same work for both servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use skygate_server::middleware::SECURITY_HEADERS;
use skygate_server::tls;

/// skygate's response headers for `GET /v1/models` besides its security headers (hyper adds
/// `content-length` and `date` to both), with values as wide as the ones `scripts/load.sh` sees: its
/// tier allows 10,000,000 requests a minute. Names and values are built once (`from_static`), so the
/// baseline pays only for inserting them.
#[allow(clippy::declare_interior_mutable_const)]
const SAME_HEADERS: [(HeaderName, HeaderValue); 6] = [
    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
    (
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("AAAAAAAAAAAA-1f"),
    ),
    (
        HeaderName::from_static("x-skytells-ratelimit-limit-requests"),
        HeaderValue::from_static("10000000"),
    ),
    (
        HeaderName::from_static("x-skytells-ratelimit-remaining-requests"),
        HeaderValue::from_static("9999999"),
    ),
    (
        HeaderName::from_static("x-skytells-ratelimit-reset-requests"),
        HeaderValue::from_static("1"),
    ),
    (
        HeaderName::from_static("x-skytells-ratelimit-window"),
        HeaderValue::from_static("60"),
    ),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "skygate-data".into()));
    let body: Option<Bytes> = std::env::args()
        .nth(2)
        .map(|f| Bytes::from(std::fs::read(f).unwrap()));
    let settings = tls::TlsSettings {
        cert: None,
        key: None,
        extra_names: Vec::new(),
    };
    let material = tls::prepare(&dir.join("tls"), &settings, time::OffsetDateTime::now_utc())?;
    let config = tls::server_config(Arc::new(tls::CertResolver::new(material.certified_key)))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on https://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let res = match body {
                        None => hyper::Response::new(Full::new(Bytes::from_static(b"hello"))),
                        Some(b) => {
                            let mut r = hyper::Response::new(Full::new(b));
                            let h = r.headers_mut();
                            h.reserve(SAME_HEADERS.len() + SECURITY_HEADERS.len());
                            for (k, v) in SAME_HEADERS.into_iter().chain(SECURITY_HEADERS) {
                                h.insert(k, v);
                            }
                            r
                        }
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

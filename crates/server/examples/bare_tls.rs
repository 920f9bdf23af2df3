//! Baseline for the load benchmark: a bare hyper + rustls "hello world" with the same TLS 1.3
//! configuration and certificate as skygate, and nothing else (no routing, auth or middleware).
//! Usage: `bare_tls DATA_DIR` — prints `listening on https://ADDR`, serves until killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use skygate_server::tls;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "skygate-data".into()));
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
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"hello"))))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

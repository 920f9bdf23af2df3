//! A webhook receiver for tests: a plain HTTP/1.1 server on a free 127.0.0.1 port that records every
//! request and answers as the test's plan says for each path, plus listeners that reset or stall every
//! connection. Loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Plan = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// The recording HTTP receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers every request with `plan(path)`.
    pub async fn start(plan: impl Fn(&str) -> Reply + Send + Sync + 'static) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let plan: Plan = Arc::new(plan);
        let task = {
            let (log, connections) = (log.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (log, plan) = (log.clone(), plan.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (log, plan) = (log.clone(), plan.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                let path = parts.uri.path().to_owned();
                                if let Ok(mut l) = log.lock() {
                                    l.push(Received {
                                        path: path.clone(),
                                        headers: parts.headers,
                                        body,
                                        at: Instant::now(),
                                    });
                                }
                                let reply = plan(&path);
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                let mut res =
                                    http::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                                *res.status_mut() =
                                    http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::OK);
                                for (k, v) in &reply.headers {
                                    if let (Ok(k), Ok(v)) = (
                                        http::HeaderName::from_bytes(k.as_bytes()),
                                        http::HeaderValue::from_str(v),
                                    ) {
                                        res.headers_mut().append(k, v);
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        };
        Ok(Receiver {
            addr,
            log,
            connections,
            task,
        })
    }

    /// Answers 200 to everything.
    pub async fn ok() -> anyhow::Result<Receiver> {
        Self::start(|_| Reply::status(200)).await
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests to `path` so far.
    pub fn count(&self, path: &str) -> usize {
        self.log
            .lock()
            .map(|l| l.iter().filter(|r| r.path == path).count())
            .unwrap_or(0)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived (or `within` passes) and returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`BadListener`] does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Misbehave {
    /// Reads the request's first bytes, then resets the connection (RST).
    Reset,
    /// Reads the request and never answers (the connection stays open).
    Stall,
}

/// A listener on 127.0.0.1 that misbehaves on every connection; counts the connections.
pub struct BadListener {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BadListener {
    pub async fn start(how: Misbehave) -> anyhow::Result<BadListener> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        let _ = stream.read(&mut buf).await;
                        match how {
                            Misbehave::Reset => {
                                let _ = stream.set_zero_linger();
                                drop(stream);
                            }
                            Misbehave::Stall => {
                                let mut sink = [0u8; 4096];
                                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                            }
                        }
                    });
                }
            })
        };
        Ok(BadListener {
            addr,
            connections,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for BadListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

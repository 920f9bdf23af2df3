//! The TLS listener: accepts TCP connections (bounded in number), completes the TLS 1.3 handshake
//! within a deadline, then serves HTTP/1.1 or HTTP/2 (by ALPN) with a header-read deadline and an idle
//! timeout: a connection with no request in flight and no bytes moving for `idle_timeout` is closed, so
//! idle keep-alive or HTTP/2 connections cannot hold the connection slots. There is no plaintext
//! listener. On shutdown it stops accepting, lets in-flight requests finish for up to the grace period,
//! then returns.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// See the module docs.
    pub idle_timeout: Duration,
    /// `server.max_headers`: above hyper's own HTTP/1 parse limit (100, kept on the stack) it is raised
    /// to this; below it the edge layer answers the 431 envelope.
    pub max_headers: usize,
}

/// hyper's default HTTP/1 header limit (parsed on the stack; raising it costs an allocation a request).
const HYPER_MAX_HEADERS: usize = 100;

/// Largest request head (request line + headers) accepted, HTTP/1.1 and HTTP/2 alike.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `app` over TLS on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve_tls<S>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: S,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    if settings.max_headers > HYPER_MAX_HEADERS {
        builder.http1().max_headers(settings.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // No keep-alive pings: they would count as activity and keep idle connections open forever;
        // the idle timeout closes dead and idle peers alike.
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    // Connection tasks, so that those still open when the grace period is over can be aborted. (A
    // cancellation token raced against each connection would instead be polled on every wake-up of every
    // connection, taking the token's lock each time: a measurable per-request cost under load.)
    let mut conns = JoinSet::new();

    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = settings.handshake_timeout;
        let idle_timeout = settings.idle_timeout;
        // Forget the tasks that have finished (cheap; keeps the set the size of the open connections).
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let activity = Arc::new(Activity::default());
            let in_flight = activity.clone();
            let svc = app
                .map_request(move |req: hyper::Request<Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                })
                .map_future(move |fut| {
                    let busy = Busy::enter(&in_flight);
                    async move {
                        let res = fut.await;
                        drop(busy);
                        res
                    }
                });
            let io = Counted {
                inner: tls,
                activity: activity.clone(),
            };
            let conn =
                builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
            tokio::select! {
                biased;
                r = watcher.watch(conn.into_owned()) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = idle(&activity, idle_timeout) => tracing::debug!(%peer, "idle connection closed"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
        }
    }
    // Aborts whatever is still open (nothing after a clean drain) and waits for the tasks to end.
    let open = conns.len();
    conns.shutdown().await;
    tracing::debug!(open, "connection tasks ended");
}

/// What the idle timeout watches on one connection: bytes moved (a counter, bumped by [`Counted`]) and
/// requests whose response head is not out yet.
#[derive(Default)]
struct Activity {
    moved: AtomicU64,
    in_flight: AtomicUsize,
}

/// One request in flight while alive.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(a: &Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has had no request in flight and no bytes moving for `limit`
/// (checked every quarter of it, so it closes between `limit` and 1.25 × `limit`).
async fn idle(a: &Activity, limit: Duration) {
    let tick = (limit / 4).max(Duration::from_millis(10));
    let mut seen = a.moved.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = a.moved.load(Ordering::Relaxed);
        if now != seen || a.in_flight.load(Ordering::Relaxed) > 0 {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// An IO that counts its reads and writes into an [`Activity`] (one relaxed add per call that moved
/// bytes).
struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    fn bump(&self) {
        self.activity.moved.fetch_add(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.bump();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.bump();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.bump();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

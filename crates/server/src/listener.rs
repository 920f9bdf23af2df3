//! The TLS listener: accepts TCP connections (bounded in number), completes the TLS 1.3 handshake
//! within a deadline, then serves HTTP/1.1 or HTTP/2 (by ALPN). One watchdog task per listener looks
//! at every open connection a few times per timeout, so that no timer is armed per request:
//! - **header-read deadline** (HTTP/1): a connection whose next request head has been arriving for
//!   longer than `header_read_timeout` (slowloris) is closed;
//! - **idle timeout**: a connection with no request in flight and no bytes moving for `idle_timeout` is
//!   closed, so idle keep-alive or HTTP/2 connections cannot hold the connection slots.
//!
//! Either closes between the limit and the limit plus one watchdog period (a quarter of the smaller
//! limit). There is no plaintext listener. On shutdown it stops accepting, asks every connection to
//! finish gracefully (in-flight requests complete, idle connections close), waits up to the grace
//! period, then closes what is left and returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::middleware::{FastRoute, Front, OutBody};

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub handshake_timeout: Duration,
    /// HTTP/1: longest time a request head may take to arrive (see the module docs).
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

/// The HTTP/2 connection preface, which a client without ALPN may open with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the listener serves: a request together with its connection's peer address.
pub trait ConnService: Clone + Send + Sync + 'static {
    type Body: hyper::body::Body<Data = bytes::Bytes, Error = axum::Error> + Send + 'static;
    type Future: Future<Output = Result<hyper::Response<Self::Body>, Infallible>> + Send + 'static;
    fn serve(&self, req: hyper::Request<Incoming>, peer: SocketAddr) -> Self::Future;
}

/// The application: its hot routes read the peer address as given, without the extension.
impl<F: FastRoute> ConnService for Front<F> {
    type Body = OutBody;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<hyper::Response<OutBody>, Infallible>>,
        crate::middleware::RoutedOut,
    >;
    fn serve(&self, req: hyper::Request<Incoming>, peer: SocketAddr) -> Self::Future {
        Front::serve(self, req, peer)
    }
}

/// Any tower service of axum requests (a `Router`, say), given the body boxed and the peer address as
/// the `ConnectInfo` extension.
#[derive(Clone)]
pub struct Routed<S>(pub S);

impl<S> ConnService for Routed<S>
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Body = axum::body::Body;
    type Future = tower::util::Oneshot<S, axum::extract::Request>;
    fn serve(&self, req: hyper::Request<Incoming>, peer: SocketAddr) -> Self::Future {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        self.0.clone().oneshot(req)
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve_tls<S: ConnService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: S,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watchdog keeps the header-read deadline; hyper's own would arm a timer per request.
        .header_read_timeout(None)
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
    let watchdog = Arc::new(Watchdog::default());
    let watching = tokio::spawn(watchdog.clone().run(
        settings.header_read_timeout,
        settings.idle_timeout,
        shutdown.clone(),
    ));
    // Connection tasks, so that those still open when the grace period is over can be aborted.
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
        let handshake_timeout = settings.handshake_timeout;
        let state = Arc::new(ConnState::default());
        let watched = state.clone();
        let clock = watchdog.clone();
        // Forget the tasks that have finished (cheap; keeps the set the size of the open connections).
        while conns.try_join_next().is_some() {}
        let task = conns.spawn(async move {
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
            // HTTP/2 has no header-read deadline of its own here (hyper's applies to HTTP/1 only).
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            state.h1.store(!h2, Ordering::Relaxed);
            state.serving.store(true, Ordering::Relaxed);
            let in_flight = state.clone();
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let busy = Busy::enter(&in_flight);
                let res = app.serve(req, peer);
                async move {
                    let res = res.await;
                    drop(busy);
                    res
                }
            });
            let io = Counted {
                inner: tls,
                state: state.clone(),
                watchdog: clock,
                first_read: true,
            };
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            let conn = Graceful {
                conn: Box::pin(conn),
                begin_shutdown: |c| c.graceful_shutdown(),
                state,
                registered: None,
                closing: false,
            };
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        watchdog.watch(watched, task);
    }
    drop(listener);
    // Every open connection finishes its requests in flight and closes.
    watchdog.close_all();
    let drained = async { while conns.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
        }
    }
    // Aborts whatever is still open (nothing after a clean drain) and waits for the tasks to end.
    let open = conns.len();
    conns.shutdown().await;
    watching.abort();
    tracing::debug!(open, "connection tasks ended");
}

/// What the watchdog knows of one connection, kept up to date by the connection itself with relaxed
/// atomics (no lock, no timer, no system call per request).
#[derive(Default)]
struct ConnState {
    /// Bumped by every read or write that moved bytes.
    moved: AtomicU64,
    /// Requests whose response head is not out yet.
    in_flight: AtomicUsize,
    /// The watchdog tick at which the first bytes of a request head not yet dispatched were read
    /// (0: none); HTTP/1 only.
    head_since: AtomicU64,
    /// HTTP/1 (the header-read deadline applies).
    h1: AtomicBool,
    /// The TLS handshake is done (before it, the handshake timeout applies).
    serving: AtomicBool,
    /// Shutdown: finish what is in flight, then close.
    closing: AtomicBool,
    /// Wakes the connection's task when `closing` is set.
    waker: AtomicWaker,
}

/// One request in flight while alive; its start ends the head-read deadline of that request.
struct Busy(Arc<ConnState>);

impl Busy {
    fn enter(a: &Arc<ConnState>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        if a.head_since.load(Ordering::Relaxed) != 0 {
            a.head_since.store(0, Ordering::Relaxed);
        }
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection under watch.
struct Watched {
    state: Arc<ConnState>,
    task: AbortHandle,
    /// `moved` when last looked at, and the tick since which it has not changed while idle.
    seen: u64,
    quiet_since: u64,
}

/// Closes connections that overrun the header-read deadline or sit idle past the idle timeout, and asks
/// them all to close at shutdown.
struct Watchdog {
    conns: Mutex<Vec<Watched>>,
    /// This watchdog's clock: the current tick (from 1, so that 0 can mean "none").
    tick: AtomicU64,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            conns: Mutex::new(Vec::new()),
            tick: AtomicU64::new(1),
        }
    }
}

impl Watchdog {
    fn watch(&self, state: Arc<ConnState>, task: AbortHandle) {
        let tick = self.tick.load(Ordering::Relaxed);
        if let Ok(mut conns) = self.conns.lock() {
            conns.push(Watched {
                state,
                task,
                seen: 0,
                quiet_since: tick,
            });
        }
    }

    /// Ticks every quarter of the smaller limit (at least every 10 ms) until `stop`.
    async fn run(self: Arc<Self>, header_read: Duration, idle: Duration, stop: CancellationToken) {
        let period = (header_read.min(idle) / 4).max(Duration::from_millis(10));
        // Whole ticks that must pass: a limit is never cut short, at most one period late.
        let ticks = |limit: Duration| limit.as_nanos().div_ceil(period.as_nanos()) as u64 + 1;
        let (header_ticks, idle_ticks) = (ticks(header_read), ticks(idle));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
            let Ok(mut conns) = self.conns.lock() else {
                return;
            };
            conns.retain_mut(|w| {
                if w.task.is_finished() {
                    return false;
                }
                let s = &w.state;
                if !s.serving.load(Ordering::Relaxed) {
                    // Still in the TLS handshake, which has its own deadline.
                    w.quiet_since = now;
                    return true;
                }
                let moved = s.moved.load(Ordering::Relaxed);
                if moved != w.seen || s.in_flight.load(Ordering::Relaxed) > 0 {
                    w.seen = moved;
                    w.quiet_since = now;
                }
                let since = s.head_since.load(Ordering::Relaxed);
                let slow_head = since != 0 && s.h1.load(Ordering::Relaxed) && now - since >= header_ticks;
                let idle = now - w.quiet_since >= idle_ticks;
                if slow_head || idle {
                    tracing::debug!(slow_head, idle, "connection closed by the watchdog");
                    w.task.abort();
                    return false;
                }
                true
            });
        }
    }

    /// Shutdown: every connection finishes what is in flight and closes.
    fn close_all(&self) {
        if let Ok(conns) = self.conns.lock() {
            for w in conns.iter() {
                w.state.closing.store(true, Ordering::SeqCst);
                w.state.waker.wake();
            }
        }
    }
}

/// A connection that starts hyper's graceful shutdown once its [`ConnState`] is `closing`: checked with
/// one load per poll, the task's waker registered only when it changes.
struct Graceful<C> {
    conn: Pin<Box<C>>,
    /// `graceful_shutdown` of the connection type.
    begin_shutdown: fn(Pin<&mut C>),
    state: Arc<ConnState>,
    registered: Option<Waker>,
    closing: bool,
}

impl<C: Future> Future for Graceful<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        if !me.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            me.state.waker.register(cx.waker());
            me.registered = Some(cx.waker().clone());
        }
        if !me.closing && me.state.closing.load(Ordering::SeqCst) {
            me.closing = true;
            (me.begin_shutdown)(me.conn.as_mut());
        }
        me.conn.as_mut().poll(cx)
    }
}

/// An IO that keeps its connection's [`ConnState`] up to date: one relaxed add per call that moved
/// bytes; a read while no request is in flight starts the head-read clock (HTTP/1).
struct Counted<T> {
    inner: T,
    state: Arc<ConnState>,
    /// Whose ticks `head_since` counts in.
    watchdog: Arc<Watchdog>,
    /// The first read is still to come (it tells an HTTP/2 client without ALPN by its preface).
    first_read: bool,
}

impl<T> Counted<T> {
    fn bump(&self) {
        self.state.moved.fetch_add(1, Ordering::Relaxed);
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
        let read = buf.filled().get(before..).unwrap_or_default();
        if !read.is_empty() {
            if std::mem::take(&mut self.first_read) && read.starts_with(H2_PREFACE) {
                self.state.h1.store(false, Ordering::Relaxed);
            }
            self.bump();
            let s = &self.state;
            if s.in_flight.load(Ordering::Relaxed) == 0 && s.head_since.load(Ordering::Relaxed) == 0 {
                s.head_since
                    .store(self.watchdog.tick.load(Ordering::Relaxed), Ordering::Relaxed);
            }
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

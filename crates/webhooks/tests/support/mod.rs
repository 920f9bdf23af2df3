//! Test doubles: injected resolvers and connectors, and throwaway receivers on 127.0.0.1.
//!
//! No test opens a connection to anything but loopback: the connectors here either refuse
//! every non-loopback address before any socket exists, or never open a socket at all.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use skygate_webhooks::{Client, ClientConfig, Connector, Io, Policy, Resolver, TcpConnector};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// The name every loopback test delivers to.
pub const RECEIVER: &str = "receiver.test";

/// Resolves names from a fixed map and counts lookups.
#[derive(Default)]
pub struct MapResolver {
    names: HashMap<String, Vec<IpAddr>>,
    pub lookups: AtomicUsize,
}

impl MapResolver {
    pub fn new<S: Into<String>>(entries: impl IntoIterator<Item = (S, Vec<IpAddr>)>) -> Self {
        Self {
            names: entries
                .into_iter()
                .map(|(name, ips)| (name.into(), ips))
                .collect(),
            lookups: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Resolver for MapResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let ips = self.names.get(host).ok_or(io::ErrorKind::NotFound)?;
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}

/// Records every address it is asked for and fails without opening a socket.
#[derive(Default)]
pub struct RecordingConnector {
    pub asked: Mutex<Vec<SocketAddr>>,
}

#[async_trait::async_trait]
impl Connector for RecordingConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Io>> {
        self.asked.lock().unwrap().push(addr);
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "recording connector: no socket opened",
        ))
    }
}

/// Real TCP, but only to loopback addresses: a broken guard still cannot reach the network.
pub struct LoopbackOnly;

#[async_trait::async_trait]
impl Connector for LoopbackOnly {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Io>> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::other(format!(
                "test connector: {addr} is not loopback"
            )));
        }
        TcpConnector.connect(addr).await
    }
}

/// Settings for loopback tests: private networks and plain http allowed.
pub fn loopback_config() -> ClientConfig {
    ClientConfig {
        policy: Policy {
            allow_private_networks: true,
            allow_insecure_http: true,
            ..Policy::default()
        },
        ..ClientConfig::default()
    }
}

/// A client that resolves [`RECEIVER`] to 127.0.0.1 and connects only to loopback.
pub fn loopback_client(config: ClientConfig) -> Client {
    let resolver = MapResolver::new([(RECEIVER, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])]);
    Client::new(config, Arc::new(resolver), Arc::new(LoopbackOnly)).unwrap()
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Respond = dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync;

/// A hyper HTTP/1.1 receiver on 127.0.0.1, plain or TLS; stops when dropped.
pub struct Receiver {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        respond: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Respond> = Arc::new(respond);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let (count, log) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (respond, log, acceptor) = (respond.clone(), log.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (respond, log) = (respond.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let seen = Seen {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: body.collect().await?.to_bytes(),
                            };
                            let response = respond(&seen);
                            log.lock().unwrap().push(seen);
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let server = http1::Builder::new();
                    // Handshake and connection errors are what some tests provoke.
                    let _ = match acceptor {
                        None => server.serve_connection(TokioIo::new(tcp), service).await,
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => server.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self {
            port,
            connections,
            seen,
            task,
        }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{RECEIVER}:{}/hook", self.port)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A raw TCP receiver on 127.0.0.1 that hands each connection to `handle`; stops when dropped.
pub struct RawReceiver {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawReceiver {
    pub async fn start<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(handle(tcp));
            }
        });
        Self { port, task }
    }

    pub fn url(&self) -> String {
        format!("http://{RECEIVER}:{}/hook", self.port)
    }
}

/// Reads until the end of the request head (the body is ignored).
pub async fn read_head(tcp: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes a status line and headers announcing `len` body bytes.
pub async fn write_head(tcp: &mut TcpStream, len: usize) -> io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await
}

/// A test CA and a TLS 1.3 server configuration with a leaf for `name` signed by it.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A distinct CA name each time, so an untrusted leaf fails as an unknown issuer.
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("skygate webhooks test CA {serial}"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            ca: ca.der().clone(),
            server: Arc::new(server),
        }
    }
}

/// A response with `status`, extra headers and a small body.
pub fn reply(status: u16, headers: &[(&'static str, &'static str)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, http::HeaderValue::from_static(value));
    }
    response
}

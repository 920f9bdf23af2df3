//! The checks that talk to the running deployment over the network, as a client would: TLS versions
//! offered, the certificate's lifetime, no plaintext HTTP on the port, the `401` envelope for a bad key.
//! Every connection goes only to the address the operator named (`--url` or `server.listen`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Check, Status};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest server certificate lifetime we accept (DESIGN §2: ≤ 90 days).
const MAX_LIFETIME_DAYS: i64 = 90;
/// Fewer days left than this is a warning (renewal is automatic well before).
const WARN_DAYS_LEFT: i64 = 14;

/// Where and how to reach the deployment.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub ca_pem: Vec<u8>,
}

impl Target {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn server_name(&self) -> anyhow::Result<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", self.host))
    }
}

/// Parses `https://host:port[/…]`.
pub fn parse_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("--url must start with https:// (skygate serves nothing else)"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("--url {url}: unclosed ["))?;
        (h.to_owned(), p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), "443"),
        }
    };
    if host.is_empty() {
        anyhow::bail!("--url {url}: no host");
    }
    let port = port
        .parse()
        .map_err(|_| anyhow::anyhow!("--url {url}: bad port {port:?}"))?;
    Ok((host, port))
}

pub async fn checks(t: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    let tls13 = handshake(t).await;
    out.push(match &tls13 {
        Ok((version, _)) if *version == rustls::ProtocolVersion::TLSv1_3 => {
            let old = old_versions_refused(t).await;
            match old {
                Ok(()) => Check::pass(
                    "tls.versions",
                    "TLS 1.3 negotiated; TLS 1.2, 1.1 and 1.0 ClientHellos refused",
                ),
                Err(why) => Check::fail("tls.versions", why),
            }
        }
        Ok((v, _)) => Check::fail("tls.versions", format!("negotiated {v:?}, not TLS 1.3")),
        Err(e) => Check::fail("tls.versions", format!("no TLS 1.3 handshake: {e:#}")),
    });
    out.push(match &tls13 {
        Ok((_, Some(leaf))) => certificate(leaf),
        Ok((_, None)) => Check::fail("tls.certificate", "the server sent no certificate"),
        Err(_) => Check::fail("tls.certificate", "no handshake (see tls.versions)"),
    });
    out.push(no_plaintext(t).await);
    out.push(match bad_key(t).await {
        Ok(c) => c,
        Err(e) => Check::fail("auth.bad_key", format!("{e:#}")),
    });
    out
}

fn client_config(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls_pemfile_certs(ca_pem)? {
        roots.add(cert)?;
        n += 1;
    }
    if n == 0 {
        anyhow::bail!("the CA file holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

fn rustls_pemfile_certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("cannot read the CA file: {e}"))
}

async fn connect(t: &Target) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(t.addr())).await??;
    let connector = tokio_rustls::TlsConnector::from(client_config(&t.ca_pem)?);
    let tls = tokio::time::timeout(TIMEOUT, connector.connect(t.server_name()?, tcp)).await??;
    Ok(tls)
}

async fn handshake(t: &Target) -> anyhow::Result<(rustls::ProtocolVersion, Option<Vec<u8>>)> {
    let tls = connect(t).await?;
    let (_, conn) = tls.get_ref();
    let version = conn
        .protocol_version()
        .ok_or_else(|| anyhow::anyhow!("no protocol version"))?;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    Ok((version, leaf))
}

fn certificate(der: &[u8]) -> Check {
    let name = "tls.certificate";
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Check::fail(name, "the server certificate does not parse");
    };
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    let now = skygate_core::Timestamp::now().as_unix_seconds();
    let lifetime = (to - from) / 86_400;
    let left = (to - now) / 86_400;
    let until = skygate_core::Timestamp::from_unix_seconds(to).to_rfc3339();
    if now < from || now >= to {
        Check::fail(name, format!("not valid now (valid until {until})"))
    } else if lifetime > MAX_LIFETIME_DAYS {
        Check::fail(
            name,
            format!("valid for {lifetime} days (at most {MAX_LIFETIME_DAYS}); expires {until}"),
        )
    } else if left < WARN_DAYS_LEFT {
        Check::new(
            name,
            Status::Warn,
            format!("expires in {left} days ({until}); renewal is overdue"),
        )
    } else {
        Check::pass(
            name,
            format!("valid for {lifetime} days, expires in {left} days ({until})"),
        )
    }
}

/// A ClientHello offering only `version` (no `supported_versions` extension, as clients of TLS ≤ 1.2
/// send): a TLS 1.3-only server must answer with an alert, never a ServerHello.
fn legacy_client_hello(version: [u8; 2], host: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut push_ext = |ty: u16, body: &[u8]| {
        ext.extend_from_slice(&ty.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    if host.parse::<std::net::IpAddr>().is_err() && host.len() < 200 {
        let mut sni = Vec::new();
        sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
        sni.extend_from_slice(host.as_bytes());
        push_ext(0x0000, &sni);
    }
    push_ext(0x000a, &[0, 4, 0, 0x1d, 0, 0x17]); // groups: x25519, secp256r1
    push_ext(0x000b, &[1, 0]); // ec point formats: uncompressed
    push_ext(0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]); // ecdsa_p256_sha256, rsa_pss_sha256, rsa_pkcs1_sha256
    let suites: &[u16] = &[0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x00ff];
    let mut hello = Vec::new();
    hello.extend_from_slice(&version);
    hello.extend_from_slice(&[0x5a; 32]); // random (a probe: it need not be unpredictable)
    hello.push(0); // no session id
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

async fn old_versions_refused(t: &Target) -> Result<(), String> {
    for (name, v) in [("TLS 1.2", [3, 3]), ("TLS 1.1", [3, 2]), ("TLS 1.0", [3, 1])] {
        let answer = async {
            let mut s = TcpStream::connect(t.addr()).await?;
            s.write_all(&legacy_client_hello(v, &t.host)).await?;
            let mut head = [0u8; 1];
            match s.read(&mut head).await? {
                0 => Ok::<_, std::io::Error>(None),
                _ => Ok(Some(head[0])),
            }
        };
        match tokio::time::timeout(TIMEOUT, answer).await {
            // 0x15: an alert record; nothing: the server closed. Both refuse.
            Ok(Ok(None | Some(0x15))) | Ok(Err(_)) => {}
            Ok(Ok(Some(0x16))) => {
                return Err(format!(
                    "the server answered a {name} ClientHello with a handshake"
                ))
            }
            Ok(Ok(Some(b))) => {
                return Err(format!(
                    "unexpected record type {b:#04x} after a {name} ClientHello"
                ))
            }
            Err(_) => return Err(format!("no answer to a {name} ClientHello within {TIMEOUT:?}")),
        }
    }
    Ok(())
}

async fn no_plaintext(t: &Target) -> Check {
    let name = "transport.no_plaintext";
    let probe = async {
        let mut s = TcpStream::connect(t.addr()).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: selftest\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let _ = s.take(16).read_to_end(&mut buf).await;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(TIMEOUT, probe).await {
        Ok(Ok(buf)) if buf.starts_with(b"HTTP/") => Check::fail(name, "the port answers plaintext HTTP"),
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => Check::pass(name, "plaintext HTTP gets no answer on the port"),
    }
}

async fn bad_key(t: &Target) -> anyhow::Result<Check> {
    let name = "auth.bad_key";
    let tls = connect(t).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/v1/models")
        .header(http::header::HOST, t.host.as_str())
        .header("x-api-key", "sk_live_selftestselftestselftestselftest000000")
        .body(Empty::<bytes::Bytes>::new())?;
    let res = tokio::time::timeout(TIMEOUT, send.send_request(req)).await??;
    let status = res.status();
    let body = tokio::time::timeout(TIMEOUT, res.into_body().collect())
        .await??
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let shaped = v["status"] == false
        && v["error"]["error_id"] == "UNAUTHORIZED"
        && v["error"]["http_status"] == 401
        && v["error"]["message"].is_string()
        && v["error"]["details"].is_string();
    Ok(if status == 401 && shaped {
        Check::pass(name, "a bad key gets 401 UNAUTHORIZED in the error envelope")
    } else {
        Check::fail(
            name,
            format!(
                "a bad key got {status} {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(120)
                    .collect::<String>()
            ),
        )
    })
}

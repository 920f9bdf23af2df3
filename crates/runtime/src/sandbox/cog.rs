//! The Cog backend inside the sandbox. The helper (pid 1 of the sandbox, after the seccomp filter and
//! the rlimits are in place) starts Cog's own HTTP server (`python -m cog.server.http`) in `/model`,
//! waits for its `GET /health-check` to say `READY`, sends the job as `POST /predictions` over the
//! sandbox's private loopback, and speaks the command protocol for it: Cog's logs become `{"log"}`
//! lines, a file output (a data URL, as Cog returns files when it has no upload URL) becomes a file
//! in `/out`, other outputs an `{"output"}` line, and a failed or canceled prediction an `{"error"}`.
//!
//! The control channel never crosses a network: the host talks to the helper over its stdin and
//! stdout pipes, and the helper relays to the server on the sandbox's own `lo`, the only interface of
//! its network namespace (brought up by the outer stage with [`loopback_up`]); nothing outside is
//! reachable from it, and the server is not reachable from outside.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

/// The port Cog listens on inside the sandbox (each sandbox has a loopback of its own).
const PORT: u16 = 5000;
/// The largest response read from the server (outputs arrive inline as data URLs).
const MAX_RESPONSE: usize = 256 << 20;
/// How often the health check is polled during setup.
const POLL: Duration = Duration::from_millis(50);
/// How many of Cog's log lines are passed on.
const MAX_LOG_LINES: usize = 1000;
/// How much of the setup logs a setup failure shows.
const SETUP_TAIL: usize = 800;

/// Brings up the loopback interface of the sandbox's new network namespace (an `RTM_NEWLINK` request
/// over route netlink), so that the helper can reach the Cog server on 127.0.0.1. Run by the outer
/// stage, which holds every capability in the new user namespace that owns the network namespace.
pub(super) fn loopback_up() -> Result<(), String> {
    use rustix::net::{netlink, recv, sendto, socket_with, AddressFamily, RecvFlags, SendFlags};
    use rustix::net::{SocketFlags, SocketType};
    // The kernel gives the loopback device of every network namespace this index.
    const LOOPBACK_IFINDEX: i32 = 1;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 0x1 | 0x4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 0x1;
    // No protocol is NETLINK_ROUTE.
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("loopback: netlink socket: {e}"))?;
    // struct nlmsghdr (len, type, flags, seq, pid) + struct ifinfomsg (family, pad, type, index,
    // flags, change), native byte order.
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    sendto(&fd, &msg, SendFlags::empty(), &kernel).map_err(|e| format!("loopback: send: {e}"))?;
    let mut buf = [0u8; 256];
    let (got, _) =
        recv(&fd, &mut buf[..], RecvFlags::empty()).map_err(|e| format!("loopback: receive: {e}"))?;
    let ack = buf
        .get(..got.min(buf.len()))
        .and_then(|b| b.get(..20))
        .ok_or("loopback: short netlink reply")?;
    let kind = u16::from_ne_bytes([ack[4], ack[5]]);
    let errno = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    match (kind, errno) {
        (NLMSG_ERROR, 0) => Ok(()),
        (NLMSG_ERROR, e) => Err(format!("loopback: {}", rustix::io::Errno::from_raw_os_error(-e))),
        _ => Err("loopback: unexpected netlink reply".into()),
    }
}

/// Runs Cog predictions: one request from stdin to EOF (messages to stdout, files to `/out`), or with
/// `warm` one request line after another, each answered by its messages (files inline) and a
/// `{"done": …}` line.
pub(super) fn serve(argv: &[String], predictor: &str, warm: bool) -> ExitCode {
    let request = if warm {
        // The predictor runs as this uid: without this it could open /proc/1/fd/1 and write protocol
        // lines of its own between requests.
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            return fail(&format!("cannot protect the Cog relay: {e}"));
        }
        Value::Null
    } else {
        match super::inside::read_request(super::protocol::MAX_REQUEST).and_then(|b| {
            serde_json::from_slice::<Value>(&b).map_err(|_| "the request is not JSON".to_owned())
        }) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        }
    };
    let mut server = match start_server(argv, predictor) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the Cog relay: {e}")),
    };
    if warm {
        rt.block_on(serve_warm(&mut server));
        return ExitCode::SUCCESS;
    }
    match rt.block_on(relay(&mut server, &request, Sink::OutDir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Ended::Failed(e)) => fail(&e),
        // The server's own output (on stderr) says why; the host shows its last lines.
        Err(Ended::ServerExited(status)) => {
            eprintln!("the Cog server exited during setup ({status})");
            ExitCode::from(1)
        }
    }
}

fn fail(error: &str) -> ExitCode {
    emit(&json!({ "error": error }));
    ExitCode::FAILURE
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// How a relay that did not succeed ended.
#[derive(Clone)]
enum Ended {
    /// A clear, user-facing error.
    Failed(String),
    /// The server died before it was ready.
    ServerExited(std::process::ExitStatus),
}

/// Starts Cog's server in `/model`; its stdout goes to stderr (stdout carries the protocol).
fn start_server(argv: &[String], predictor: &str) -> Result<Child, String> {
    let (prog, args) = argv.split_first().ok_or("the Cog model has no command")?;
    // Cog starts its worker as `python` from PATH: the interpreter's own directory (a virtualenv's
    // bin) comes first.
    let mut path = String::from("/usr/local/bin:/usr/bin:/bin");
    if let Some(dir) = std::path::Path::new(prog).parent().filter(|d| d.is_absolute()) {
        path = format!("{}:{path}", dir.display());
    }
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot start the Cog server: {e}"))?;
    Command::new(prog)
        .args(args)
        .env_clear()
        .envs(
            super::inside::model_env()
                .into_iter()
                .filter(|(k, _)| *k != "PATH"),
        )
        .env("PATH", path)
        .env("PORT", PORT.to_string())
        .env("COG_PREDICT_TYPE_STUB", predictor)
        .current_dir("/model")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the Cog server {prog:?}: {e}"))
}

/// The warm loop: waits for the server once, then answers request lines until stdin ends. After a
/// setup failure or a dead server it answers `{"done": "stop"}` and ends (the host discards it).
async fn serve_warm(server: &mut Child) {
    use std::io::BufRead;
    let ready = wait_ready(server).await;
    let mut lines = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let outcome = match (&ready, serde_json::from_str::<Value>(&line)) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Err(_)) => Err(Ended::Failed("the request is not JSON".into())),
            (Ok(()), Ok(request)) => predict(&request, Sink::Inline).await,
        };
        let alive = matches!(server.try_wait(), Ok(None));
        match outcome {
            Ok(()) => {}
            Err(Ended::Failed(e)) => emit(&json!({ "error": e })),
            Err(Ended::ServerExited(s)) => emit(&json!({ "error": format!("the Cog server exited ({s})") })),
        }
        let keep = ready.is_ok() && alive;
        emit(&json!({ "done": if keep { "ok" } else { "stop" } }));
        if !keep {
            return;
        }
    }
}

/// Where file outputs go.
#[derive(Clone, Copy)]
enum Sink {
    /// Into `/out`, copied out when the sandbox ends.
    OutDir,
    /// On stdout as `{"file": {"name", "data"}}` lines (a warm sandbox does not end per prediction).
    Inline,
}

async fn relay(server: &mut Child, request: &Value, sink: Sink) -> Result<(), Ended> {
    wait_ready(server).await?;
    predict(request, sink).await
}

/// One `POST /predictions`, mapped onto the protocol.
async fn predict(request: &Value, sink: Sink) -> Result<(), Ended> {
    let body = json!({
        "id": request.get("id").cloned().unwrap_or(Value::Null),
        "input": request.get("input").cloned().unwrap_or_else(|| json!({})),
    });
    let (status, reply) = loop {
        let (status, reply) = call(Method::POST, "/predictions", Some(body.to_string()))
            .await
            .map_err(|e| Ended::Failed(format!("the Cog server did not answer the prediction: {e}")))?;
        let reply: Value = serde_json::from_slice(&reply)
            .map_err(|_| Ended::Failed(format!("the Cog server answered {status} without JSON")))?;
        // Cog frees its prediction slot a moment after it answers: in a warm sandbox the next
        // request can arrive first and is refused as "at capacity" (the host's deadline bounds this).
        let busy = matches!(status, StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE)
            || reply["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("At capacity"));
        if !busy {
            break (status, reply);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        return Err(Ended::Failed(format!(
            "the input is not valid for this model: {}",
            validation_detail(&reply)
        )));
    }
    if let Some(Value::String(logs)) = reply.get("logs") {
        for line in logs.lines().take(MAX_LOG_LINES) {
            emit(&json!({ "log": line }));
        }
    }
    let error = || {
        reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .to_owned()
    };
    match reply.get("status").and_then(Value::as_str) {
        Some("succeeded") => {
            let output = reply.get("output").cloned().unwrap_or(Value::Null);
            write_output(output, sink).map_err(Ended::Failed)
        }
        Some("failed") => Err(Ended::Failed(error())),
        Some("canceled") => Err(Ended::Failed("the prediction was canceled".into())),
        _ if !status.is_success() => Err(Ended::Failed(format!(
            "the Cog server refused the prediction ({status}): {}",
            error()
        ))),
        other => Err(Ended::Failed(format!(
            "the Cog server answered with an unknown status {other:?}"
        ))),
    }
}

/// Polls the health check until the predictor is ready (the host's deadline bounds the wait).
async fn wait_ready(server: &mut Child) -> Result<(), Ended> {
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(Ended::ServerExited(status));
        }
        let answer =
            tokio::time::timeout(Duration::from_secs(5), call(Method::GET, "/health-check", None)).await;
        if let Ok(Ok((_, body))) = answer {
            let health: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match health.get("status").and_then(Value::as_str) {
                Some("READY") => return Ok(()),
                Some(s @ ("SETUP_FAILED" | "DEFUNCT")) => {
                    let logs = health["setup"]["logs"].as_str().unwrap_or("");
                    let what = if s == "DEFUNCT" {
                        "stopped working"
                    } else {
                        "failed"
                    };
                    return Err(Ended::Failed(format!(
                        "the Cog predictor's setup {what}: {}",
                        super::host::last_lines(logs.as_bytes(), SETUP_TAIL)
                    )));
                }
                _ => {}
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One HTTP/1.1 exchange with the server on the sandbox's loopback.
async fn call(method: Method, path: &str, body: Option<String>) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", PORT))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("127.0.0.1:{PORT}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    conn.abort();
    Ok((status, bytes))
}

/// What a 422 says is wrong (FastAPI-style `detail` list, or coglet's `error`).
fn validation_detail(reply: &Value) -> String {
    if let Some(items) = reply.get("detail").and_then(Value::as_array) {
        let parts: Vec<String> = items
            .iter()
            .take(5)
            .map(|d| {
                let at: Vec<String> = d["loc"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .map(|p| p.to_string().trim_matches('"').to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                format!("{}: {}", at.join("."), d["msg"].as_str().unwrap_or("invalid"))
            })
            .collect();
        return parts.join("; ");
    }
    let text = reply
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| reply.to_string(), str::to_owned);
    super::host::last_lines(text.as_bytes(), SETUP_TAIL)
}

/// A file output (a data URL, or a list of them) goes to `/out`; anything else is the output line.
fn write_output(output: Value, sink: Sink) -> Result<(), String> {
    let files: Option<Vec<(String, Vec<u8>)>> = match &output {
        Value::String(s) => data_url(s).map(|f| vec![f]),
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|v| v.as_str().and_then(data_url)).collect()
        }
        _ => None,
    };
    let Some(files) = files else {
        emit(&json!({ "output": output }));
        return Ok(());
    };
    let out = std::path::Path::new("/out");
    for (i, (ext, bytes)) in files.iter().enumerate() {
        let name = format!("output-{i}.{ext}");
        match sink {
            Sink::OutDir => std::fs::write(out.join(&name), bytes)
                .map_err(|e| format!("could not write an output file: {e}"))?,
            Sink::Inline => {
                let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                emit(&json!({ "file": { "name": name, "data": data } }));
            }
        }
    }
    Ok(())
}

/// Decodes a base64 `data:` URL into (file extension, bytes).
fn data_url(s: &str) -> Option<(String, Vec<u8>)> {
    let rest = s.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let mime = mime.split(';').next().unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).ok()?;
    Some((extension(mime).to_owned(), bytes))
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/mpeg" => "mp3",
        "audio/ogg" => "ogg",
        "audio/flac" => "flac",
        "video/mp4" => "mp4",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "application/json" => "json",
        _ => "bin",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_become_files() {
        assert_eq!(
            data_url("data:text/plain;base64,aGVsbG8geA=="),
            Some(("txt".into(), b"hello x".to_vec()))
        );
        assert_eq!(
            data_url("data:image/png;name=x;base64,iVBORw=="),
            Some(("png".into(), b"\x89PNG".to_vec())),
            "parameters between the type and base64 are ignored"
        );
        assert_eq!(data_url("data:application/x-thing;base64,AA==").unwrap().0, "bin");
        assert_eq!(data_url("data:text/plain,hello"), None);
        assert_eq!(data_url("hello"), None);
        assert_eq!(data_url("data:text/plain;base64,!!!"), None);
    }

    #[test]
    fn validation_details_name_the_field() {
        let r = json!({"detail": [{"loc": ["body", "input", "n"], "msg": "Input should be less than 5"}]});
        assert_eq!(validation_detail(&r), "body.input.n: Input should be less than 5");
        assert_eq!(validation_detail(&json!({"error": "bad n"})), "bad n");
    }
}

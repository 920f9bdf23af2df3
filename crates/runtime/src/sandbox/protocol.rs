//! The model protocol, spoken by command models and by the built-in models inside the sandbox alike:
//! the model reads `{"id": …, "input": {…}}` as JSON on stdin and writes JSON lines on stdout —
//! `{"progress": 0..100}`, `{"log": "…"}`, `{"output": <any JSON>}` and `{"error": "…"}` (a clear,
//! user-facing failure) — and files it writes to `/out` become output files. Exit 0 is success.
//!
//! This module parses lines on the host side, names the MIME type of output files, and is the
//! in-sandbox server of a built-in model ([`serve_builtin`]).

use std::io::Write;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::control::Control;
use crate::{builtin, Output};

/// One message from a model.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Progress(u8),
    Log(String),
    Output(Value),
    Error(String),
}

/// Parses one stdout line; blank lines are `Ok(None)`. The error is user-facing.
pub fn parse_line(line: &[u8]) -> Result<Option<Message>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(line)
        .map_err(|_| "the model wrote a line on stdout that is not JSON".to_owned())?;
    let Value::Object(mut m) = v else {
        return Err("the model wrote a JSON line on stdout that is not an object".into());
    };
    if let Some(p) = m.get("progress") {
        let p = p
            .as_f64()
            .filter(|p| p.is_finite())
            .ok_or("the model reported a progress that is not a number")?;
        return Ok(Some(Message::Progress(p.clamp(0.0, 100.0) as u8)));
    }
    if let Some(o) = m.remove("output") {
        return Ok(Some(Message::Output(o)));
    }
    if let Some(Value::String(s)) = m.remove("log") {
        return Ok(Some(Message::Log(s)));
    }
    if let Some(e) = m.remove("error") {
        let text = match e {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return Ok(Some(Message::Error(text)));
    }
    Err("the model wrote a JSON line on stdout without progress, log, output or error".into())
}

/// Whether `name` may be an output file: 1-64 of letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn is_output_name(name: &str) -> bool {
    skygate_core::predictions::is_valid_file_name(name)
}

/// The MIME type of an output file, from its first bytes, else its extension. Types a browser would
/// run as active content on the API's origin (HTML, SVG, JavaScript) are never named.
pub fn mime_type(name: &str, head: &[u8]) -> &'static str {
    let starts = |m: &[u8]| head.starts_with(m);
    let riff = |kind: &[u8]| head.len() >= 12 && starts(b"RIFF") && &head[8..12] == kind;
    if starts(b"\x89PNG\r\n\x1a\n") {
        return "image/png";
    }
    if starts(&[0xff, 0xd8, 0xff]) {
        return "image/jpeg";
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return "image/gif";
    }
    if riff(b"WEBP") {
        return "image/webp";
    }
    if riff(b"WAVE") {
        return "audio/wav";
    }
    if starts(b"OggS") {
        return "audio/ogg";
    }
    if starts(b"fLaC") {
        return "audio/flac";
    }
    if starts(b"ID3") || starts(&[0xff, 0xfb]) {
        return "audio/mpeg";
    }
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        return "video/mp4";
    }
    if starts(b"%PDF-") {
        return "application/pdf";
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md" | "log") => "text/plain",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// The largest request a built-in model accepts on stdin.
pub(super) const MAX_REQUEST: u64 = 16 * 1024 * 1024;

/// Progress lines on stdout.
struct StdoutControl;

impl Control for StdoutControl {
    fn progress(&self, percent: u8) {
        emit(&json!({ "progress": percent.min(100) }));
    }

    fn should_stop(&self) -> bool {
        // The host stops a sandboxed model by killing it.
        false
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs built-in model `id` inside the sandbox: the request from stdin, messages to stdout, files to
/// `/out`. A panic prints only "the model crashed" on stderr and exits 101.
pub fn serve_builtin(id: &str) -> ExitCode {
    std::panic::set_hook(Box::new(|_| eprintln!("{}", crate::handle::CRASHED)));
    let request = match super::inside::read_request(MAX_REQUEST)
        .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| "the request is not JSON".to_owned()))
    {
        Ok(r) => r,
        Err(e) => {
            emit(&json!({ "error": e }));
            return ExitCode::FAILURE;
        }
    };
    let input = request.get("input").cloned().unwrap_or(Value::Null);
    match builtin::run(id, &input, &StdoutControl) {
        Ok(Output::Text(t)) => {
            emit(&json!({ "output": t }));
            ExitCode::SUCCESS
        }
        Ok(Output::Files(files)) => {
            for f in files {
                if let Err(e) = std::fs::write(std::path::Path::new("/out").join(&f.name), &f.bytes) {
                    emit(&json!({ "error": format!("could not write an output file: {e}") }));
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            emit(&json!({ "error": e.to_string() }));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(parse_line(b"  \n").unwrap(), None);
        assert_eq!(
            parse_line(br#"{"progress": 42.7}"#).unwrap(),
            Some(Message::Progress(42))
        );
        assert_eq!(
            parse_line(br#"{"progress": 420}"#).unwrap(),
            Some(Message::Progress(100))
        );
        assert_eq!(
            parse_line(br#"{"log": "hi"}"#).unwrap(),
            Some(Message::Log("hi".into()))
        );
        assert_eq!(
            parse_line(br#"{"output": [1, 2]}"#).unwrap(),
            Some(Message::Output(json!([1, 2])))
        );
        assert_eq!(
            parse_line(br#"{"error": "bad"}"#).unwrap(),
            Some(Message::Error("bad".into()))
        );
        assert!(parse_line(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse_line(b"[1]").is_err());
        assert!(parse_line(br#"{"what": 1}"#).is_err());
        assert!(parse_line(br#"{"progress": "x"}"#).is_err());
    }

    #[test]
    fn mime_types() {
        assert_eq!(mime_type("a.bin", b"\x89PNG\r\n\x1a\nrest"), "image/png");
        assert_eq!(mime_type("a", b"RIFF\0\0\0\0WAVEfmt "), "audio/wav");
        assert_eq!(mime_type("a.txt", b"hello"), "text/plain");
        assert_eq!(mime_type("a.html", b"<script>"), "application/octet-stream");
        assert_eq!(mime_type("a.svg", b"<svg>"), "application/octet-stream");
        assert_eq!(mime_type("x.JSON", b"{}"), "application/json");
    }
}

//! The line protocol of a sandboxed engine and its serve loops. The host writes one JSON
//! [`Request`] per line on the engine's stdin; the engine answers with [`Reply`] lines on stdout:
//! first `ready` (or `error` and exit when the model does not load), then for each request either
//! `text` pieces and one `done`, or `embeddings`, or one `error`. A `cancel` line stops the running
//! generation before its next token. The engine serves one request at a time, for as long as stdin
//! stays open.
//!
//! A `chat` request with `paced: true` runs one step at a time: the request itself allows the prompt
//! and the first token; after each token that is not the last the engine answers `yield` and waits
//! for a `step` line (or `cancel`) before it decodes the next one. The host grants steps to the
//! sandboxes of different accounts in turn, so compute is shared token by token, not run by run.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::mpsc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::embed::{EmbedInput, Embedder};
use crate::llm::{Completion, Llm, Sampling};
use crate::{Error, Message};

/// The longest request line the engine reads (2,048 inputs of a long window fit well inside).
pub const MAX_LINE: usize = 64 << 20;

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Generate an answer to `messages`, rendered with the model's chat template.
    Chat {
        messages: Vec<Message>,
        sampling: Sampling,
        /// Wait for a `step` after each token (see the module docs).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        paced: bool,
    },
    /// Stop the running generation.
    Cancel,
    /// Go on with the next token of a paced generation.
    Step,
    /// Embed `inputs`.
    Embed { inputs: Vec<EmbedInput> },
}

/// What the engine answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The model is loaded.
    Ready {
        context_length: u32,
        dimensions: Option<usize>,
    },
    /// The prompt is processed and generation begins.
    Started { prompt_tokens: u32 },
    /// Generated text (never a split character, never part of a stop sequence).
    Text(String),
    /// A paced generation made a token and waits for `step` before the next.
    Yield,
    /// The generation ended.
    Done(Completion),
    /// The vectors of an `embed` request: little-endian f32, `dimensions` per input, in base64.
    Embeddings {
        vectors: String,
        dimensions: usize,
        prompt_tokens: u32,
    },
    /// The request failed (or, before `ready`, the model did not load).
    Error(WireError),
}

/// An engine error on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// `context_length_exceeded`, `invalid`, `load` or `engine`.
    pub kind: String,
    pub param: Option<String>,
    pub message: String,
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        let (kind, param) = match &e {
            Error::ContextLengthExceeded(_) => ("context_length_exceeded", Some("messages")),
            Error::Invalid { param, .. } => ("invalid", Some(*param)),
            Error::Load(_) => ("load", None),
            Error::Engine(_) => ("engine", None),
        };
        WireError {
            kind: kind.into(),
            param: param.map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w.kind.as_str() {
            "context_length_exceeded" => Error::ContextLengthExceeded(w.message),
            "invalid" => {
                let param = match w.param.as_deref() {
                    Some("input") => "input",
                    Some("prompt") => "prompt",
                    Some("max_tokens") => "max_tokens",
                    Some("stop") => "stop",
                    Some("temperature") => "temperature",
                    Some("top_p") => "top_p",
                    Some("presence_penalty") => "presence_penalty",
                    Some("frequency_penalty") => "frequency_penalty",
                    _ => "messages",
                };
                Error::Invalid {
                    param,
                    message: w.message,
                }
            }
            "load" => Error::Load(w.message),
            _ => Error::Engine(w.message),
        }
    }
}

/// Encodes vectors as [`Reply::Embeddings`] carries them.
pub fn encode_vectors(vectors: &[Vec<f32>]) -> String {
    let bytes: Vec<u8> = vectors.iter().flatten().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`Reply::Embeddings`] vectors.
pub fn decode_vectors(b64: &str, dimensions: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if dimensions == 0 || bytes.len() % (4 * dimensions) != 0 {
        return None;
    }
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(floats.chunks(dimensions).map(<[f32]>::to_vec).collect())
}

/// Writes one reply line; `false` when the host is gone.
fn send(out: &mut impl Write, reply: &Reply) -> bool {
    let Ok(mut line) = serde_json::to_vec(reply) else {
        return false;
    };
    line.push(b'\n');
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}

/// Reads request lines on a thread of their own, so a `cancel` is seen while a generation runs.
fn requests(input: impl BufRead + Send + 'static) -> mpsc::Receiver<Result<Request, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut input = input;
        let mut line = Vec::new();
        loop {
            line.clear();
            let mut limited = std::io::Read::take(input.by_ref(), MAX_LINE as u64 + 1);
            match limited.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.len() > MAX_LINE => {
                    let _ = tx.send(Err("a request line is too long".into()));
                    return;
                }
                Ok(_) => {}
            }
            let parsed =
                serde_json::from_slice::<Request>(&line).map_err(|e| format!("a bad request line: {e}"));
            if tx.send(parsed).is_err() {
                return;
            }
        }
    });
    rx
}

/// How long an engine waits for its next request before it gives back its context (the KV cache):
/// a burst of requests reuses one context, an idle warm engine holds little beyond the shared weights.
pub const RELEASE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves a language model until stdin closes. `load` runs here, so its failure is reported as an
/// `error` line. Returns the process exit status.
pub fn serve_llm(
    load: impl FnOnce() -> Result<Llm, Error>,
    input: impl BufRead + Send + 'static,
    mut out: impl Write,
) -> u8 {
    let mut llm = match load() {
        Ok(l) => l,
        Err(e) => {
            send(&mut out, &Reply::Error(e.into()));
            return 2;
        }
    };
    if !send(
        &mut out,
        &Reply::Ready {
            context_length: llm.context_length(),
            dimensions: None,
        },
    ) {
        return 1;
    }
    let rx = requests(input);
    loop {
        let req = match rx.recv_timeout(RELEASE_IDLE) {
            Ok(req) => req,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                llm.release_context();
                match rx.recv() {
                    Ok(req) => req,
                    Err(_) => break,
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (messages, sampling, paced) = match req {
            Ok(Request::Chat {
                messages,
                sampling,
                paced,
            }) => (messages, sampling, paced),
            // Nothing runs: a late cancel, or a step granted as the generation ended.
            Ok(Request::Cancel | Request::Step) => continue,
            Ok(Request::Embed { .. }) => {
                let e = Error::invalid("model", "this model does not make embeddings");
                if !send(&mut out, &Reply::Error(e.into())) {
                    return 1;
                }
                continue;
            }
            Err(e) => {
                send(&mut out, &Reply::Error(Error::Engine(e).into()));
                return 1;
            }
        };
        let result = sampling
            .check()
            .and_then(|()| llm.chat_prompt(&messages))
            .map(|p| llm.tokenize(&p));
        let tokens = match result {
            Ok(t) => t,
            Err(e) => {
                if !send(&mut out, &Reply::Error(e.into())) {
                    return 1;
                }
                continue;
            }
        };
        let mut gone = false;
        let mut started = false;
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let done = llm.generate(&tokens, &sampling, &mut |piece| {
            if !started {
                started = true;
                if !send(&mut out, &Reply::Started { prompt_tokens }) {
                    gone = true;
                    return ControlFlow::Break(());
                }
            }
            if !piece.text.is_empty() && !send(&mut out, &Reply::Text(piece.text.to_owned())) {
                gone = true;
                return ControlFlow::Break(());
            }
            if paced && !piece.last {
                if !send(&mut out, &Reply::Yield) {
                    gone = true;
                    return ControlFlow::Break(());
                }
                return match rx.recv() {
                    Ok(Ok(Request::Step)) => ControlFlow::Continue(()),
                    Ok(Ok(Request::Cancel)) => ControlFlow::Break(()),
                    _ => {
                        gone = true;
                        ControlFlow::Break(())
                    }
                };
            }
            match rx.try_recv() {
                Ok(Ok(Request::Cancel)) => ControlFlow::Break(()),
                Err(mpsc::TryRecvError::Empty) => ControlFlow::Continue(()),
                // Anything else mid-generation breaks the protocol (or stdin closed): stop.
                _ => {
                    gone = true;
                    ControlFlow::Break(())
                }
            }
        });
        if gone {
            return 1;
        }
        let reply = match done {
            Ok(c) => Reply::Done(c),
            Err(e) => Reply::Error(e.into()),
        };
        if !send(&mut out, &reply) {
            return 1;
        }
    }
    0
}

/// Serves an embedding model until stdin closes (see [`serve_llm`]).
pub fn serve_embedder(
    load: impl FnOnce() -> Result<Embedder, Error>,
    input: impl BufRead + Send + 'static,
    mut out: impl Write,
) -> u8 {
    let model = match load() {
        Ok(m) => m,
        Err(e) => {
            send(&mut out, &Reply::Error(e.into()));
            return 2;
        }
    };
    let ready = Reply::Ready {
        context_length: u32::try_from(model.max_tokens()).unwrap_or(u32::MAX),
        dimensions: Some(model.dimensions()),
    };
    if !send(&mut out, &ready) {
        return 1;
    }
    let rx = requests(input);
    while let Ok(req) = rx.recv() {
        let reply = match req {
            Ok(Request::Embed { inputs }) => match model.tokenize(&inputs).and_then(|t| {
                let n: usize = t.iter().map(Vec::len).sum();
                model.embed(&t).map(|v| (v, n))
            }) {
                Ok((v, n)) => Reply::Embeddings {
                    vectors: encode_vectors(&v),
                    dimensions: model.dimensions(),
                    prompt_tokens: u32::try_from(n).unwrap_or(u32::MAX),
                },
                Err(e) => Reply::Error(e.into()),
            },
            Ok(Request::Cancel | Request::Step) => continue,
            Ok(Request::Chat { .. }) => {
                Reply::Error(Error::invalid("model", "this model only makes embeddings").into())
            }
            Err(e) => {
                send(&mut out, &Reply::Error(Error::Engine(e).into()));
                return 1;
            }
        };
        if !send(&mut out, &reply) {
            return 1;
        }
    }
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_exactly() {
        let v = vec![vec![1.0f32, -0.5, f32::MIN_POSITIVE], vec![0.1, 0.2, 0.3]];
        assert_eq!(decode_vectors(&encode_vectors(&v), 3).unwrap(), v);
        assert!(decode_vectors(&encode_vectors(&v), 4).is_none());
        assert!(decode_vectors("not base64!", 3).is_none());
    }

    #[test]
    fn a_load_failure_is_one_error_line() {
        let mut out = Vec::new();
        let code = serve_embedder(
            || Err(Error::Load("config.json: missing".into())),
            std::io::empty(),
            &mut out,
        );
        assert_eq!(code, 2);
        let reply: Reply = serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
        assert!(
            matches!(reply, Reply::Error(WireError { ref kind, .. }) if kind == "load"),
            "{reply:?}"
        );
    }

    #[test]
    fn requests_parse_from_lines() {
        let line = r#"{"op":"chat","messages":[{"role":"user","content":"hi"}],"sampling":{"max_tokens":5,"temperature":0.0,"top_p":1.0,"seed":null,"stop":[],"presence_penalty":0.0,"frequency_penalty":0.0}}"#;
        let r: Request = serde_json::from_str(line).unwrap();
        assert!(matches!(r, Request::Chat { ref messages, .. } if messages.len() == 1));
        let c: Request = serde_json::from_str(r#"{"op":"cancel"}"#).unwrap();
        assert_eq!(c, Request::Cancel);
    }
}

//! skygate's inference engines, with no HTTP and no async: what runs inside a model's sandbox.
//!
//! - [`llm`]: a GGUF causal language model (llama and qwen2 architectures) run by llama.cpp through
//!   the `llama-cpp-2` crate, prompts rendered from the model's own chat template ([`chat`]), generated
//!   token by token with temperature, top-p, seed, stop sequences and presence/frequency penalties,
//!   cancellable between tokens; text comes out in pieces that never split a UTF-8 character.
//! - [`embed`]: a sentence-transformers BERT folder run by candle, pooled as its `1_Pooling` config
//!   says and L2-normalised.
//! - [`gguf`]: a pure-Rust look at a GGUF file's header (architecture, tensor types, context length,
//!   chat template, whether the file is whole) that the gateway may run on operator files at start.
//!   llama.cpp (C++) parses model files only inside the sandbox, never in the gateway.
//! - [`worker`]: the line protocol a sandboxed engine speaks on stdin/stdout, and its serve loops.
//!
//! Errors carry user-facing messages: never a host path of the sandbox, a prompt or a secret.

pub mod chat;
pub mod embed;
pub mod gguf;
pub mod llm;
mod stop;
mod utf8;
pub mod worker;

pub use chat::{ChatTemplate, Message};
pub use embed::{Embedder, EmbedderOptions};
pub use gguf::GgufInfo;
pub use llm::{Completion, Finish, Llm, LlmOptions, Sampling};

/// Why an engine could not do what was asked. `Display` is meant for the API's caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The prompt (or an input) with the requested completion does not fit the model's window.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// A parameter the engine cannot honour, named in `param`.
    #[error("{message}")]
    Invalid { param: &'static str, message: String },
    /// The model file or folder could not be loaded (the reason names the file, not a host path).
    #[error("{0}")]
    Load(String),
    /// The engine failed while running.
    #[error("{0}")]
    Engine(String),
}

impl Error {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            param,
            message: message.into(),
        }
    }
}

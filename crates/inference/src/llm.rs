//! GGUF causal language models through llama.cpp (`llama-cpp-2`): load once, then generate for one
//! request after another, token by token.
//!
//! A loaded [`Llm`] keeps its model for the life of the process (the model is leaked on purpose: an
//! engine process serves one model until it exits, and the context borrows the model), so load it
//! in a process made for it: the sandbox's engine worker, a test or a benchmark.

use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use crate::chat::{ChatTemplate, Message, CHATML};
use crate::stop::{Seen, StopText};
use crate::utf8::Utf8Stream;
use crate::Error;

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmOptions {
    /// Threads for generation and prompt processing.
    pub threads: u16,
    /// The context window in tokens (prompt and completion together); `None`: the model's own.
    pub context: Option<u32>,
    /// Prompt tokens processed per step.
    pub batch: u32,
    /// llama.cpp's flash attention. Off by default, as llama-cpp-python has it (the greedy reference
    /// fixtures were made so; the two differ in the last bits and so at near-ties).
    #[serde(default)]
    pub flash_attention: bool,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            threads: 2,
            context: None,
            batch: 512,
            flash_attention: false,
        }
    }
}

/// How to pick tokens, checked by the API before it gets here (and again in [`Sampling::check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub max_tokens: u32,
    /// 0 picks the most likely token every time (greedy).
    pub temperature: f32,
    pub top_p: f32,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `max_tokens` is a default the caller did not ask for: shorten it to what the window leaves
    /// after the prompt instead of refusing the request.
    #[serde(default)]
    pub fit_to_context: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            fit_to_context: false,
        }
    }
}

impl Sampling {
    /// Checks every value against the ranges of the OpenAI API.
    pub fn check(&self) -> Result<(), Error> {
        let range = |param: &'static str, v: f32, lo: f32, hi: f32, lo_open: bool| {
            let ok = v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo };
            if ok {
                Ok(())
            } else {
                let lo_sym = if lo_open { "(" } else { "[" };
                Err(Error::invalid(
                    param,
                    format!("{param} must be in {lo_sym}{lo}, {hi}], got {v}"),
                ))
            }
        };
        range("temperature", self.temperature, 0.0, 2.0, false)?;
        range("top_p", self.top_p, 0.0, 1.0, true)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, false)?;
        if self.max_tokens == 0 {
            return Err(Error::invalid("max_tokens", "max_tokens must be at least 1"));
        }
        if self.stop.len() > 4 {
            return Err(Error::invalid("stop", "stop takes at most 4 sequences"));
        }
        Ok(())
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model ended its answer, or a stop sequence was produced.
    Stop,
    /// `max_tokens` were produced.
    Length,
    /// The caller stopped it.
    Cancelled,
}

/// What one generation used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
}

/// One generated token and the text it released: `text` is empty while a character or a possible
/// stop sequence is incomplete, and may carry text held back from earlier tokens.
#[derive(Debug)]
pub struct Piece<'a> {
    pub token: i32,
    pub text: &'a str,
    /// The generation ends with this piece (no further decoding follows it).
    pub last: bool,
}

/// The smallest KV cache a context is made with, in tokens. A context is sized to what a request
/// needs (prompt and `max_tokens`, rounded up to a power of two from this), not to the whole window:
/// the KV cache is most of what a warm engine holds beyond the shared, memory-mapped weights (23 KB a
/// token for SmolLM2-135M, so 188 MB for its 8,192-token window against 12 MB for 512 tokens). It is
/// kept for the next request (making one costs milliseconds: the cache is zeroed and the compute
/// graph planned) until the engine is idle, when [`Llm::release_context`] gives it back.
pub const MIN_CONTEXT: u32 = 512;

/// A loaded model, ready to generate.
pub struct Llm {
    model: &'static LlamaModel,
    /// The current context and its size in tokens; `None` until a request needs one, and again
    /// after [`Llm::release_context`].
    ctx: Option<(LlamaContext<'static>, u32)>,
    params: LlamaContextParams,
    template: ChatTemplate,
    n_ctx: u32,
    batch: u32,
    add_bos: bool,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("n_ctx", &self.n_ctx)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

fn backend() -> Result<&'static LlamaBackend, Error> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own log lines go to `tracing` (debug), not straight to stderr.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Load(format!("llama.cpp did not start: {e}")))
}

impl Llm {
    /// Loads the GGUF file at `path` (memory-mapped, read-only) and makes a context for it.
    pub fn load(path: &Path, opts: LlmOptions) -> Result<Llm, Error> {
        let backend = backend()?;
        if !path.is_file() {
            return Err(Error::Load("the model file is missing".into()));
        }
        let params = LlamaModelParams::default().with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| Error::Load(format!("llama.cpp could not load the model: {e}")))?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let trained = model.n_ctx_train().max(1);
        let n_ctx = opts.context.map_or(trained, |c| c.clamp(16, trained));
        let batch = opts.batch.clamp(1, n_ctx);
        let threads = i32::from(opts.threads.max(1));
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(if opts.flash_attention {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
            });
        let vocab = model.vocab();
        let text_of =
            |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let (bos, eos) = (text_of(vocab.bos()), text_of(vocab.eos()));
        let source = model.meta_val_str("tokenizer.chat_template").ok();
        let template = ChatTemplate::new(source.as_deref().unwrap_or(CHATML), &bos, &eos)?;
        let add_bos = vocab.should_add_bos();
        let mut llm = Llm {
            model,
            ctx: None,
            params,
            template,
            n_ctx,
            batch,
            add_bos,
        };
        // A first context now, so that a model llama.cpp cannot run fails at load, not mid-request.
        llm.context_for(1)?;
        Ok(llm)
    }

    /// A context holding at least `tokens` (at most the window), made when the current one is smaller.
    /// Returns it with the prompt tokens it takes per step.
    fn context_for(&mut self, tokens: u32) -> Result<(&mut LlamaContext<'static>, u32), Error> {
        let size = tokens
            .max(MIN_CONTEXT)
            .checked_next_power_of_two()
            .unwrap_or(u32::MAX)
            .min(self.n_ctx);
        if self
            .ctx
            .as_ref()
            .is_none_or(|(_, have)| *have < tokens.min(self.n_ctx))
        {
            self.ctx = None; // the old KV cache goes before the new one is allocated
            let params = self
                .params
                .clone()
                .with_n_ctx(NonZeroU32::new(size))
                .with_n_batch(self.batch.min(size))
                .with_n_ubatch(self.batch.min(size));
            let ctx = self
                .model
                .new_context(backend()?, params)
                .map_err(|e| Error::Engine(format!("llama.cpp could not make a context: {e}")))?;
            self.ctx = Some((ctx, size));
        }
        match &mut self.ctx {
            Some((ctx, size)) => Ok((ctx, self.batch.min(*size))),
            None => Err(Error::Engine("llama.cpp has no context".into())),
        }
    }

    /// The context window (prompt and completion together), in tokens.
    pub fn context_length(&self) -> u32 {
        self.n_ctx
    }

    /// The chat prompt for `messages`, rendered by the model's template.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String, Error> {
        self.template.render(messages)
    }

    /// The tokens of `prompt`, special tokens parsed, with the model's BOS when it wants one and the
    /// template did not already write it.
    pub fn tokenize(&self, prompt: &str) -> Vec<i32> {
        let vocab = self.model.vocab();
        let bos_text = vocab.token_to_piece(vocab.bos(), true, None);
        let add = self.add_bos && !prompt.as_bytes().starts_with(&bos_text);
        let mut tokens = vocab.tokenize(prompt.as_bytes(), false, true);
        if add {
            tokens.insert(0, vocab.bos());
        }
        tokens.into_iter().map(|t| t.0).collect()
    }

    /// Generates a completion of `prompt` (token ids from [`Llm::tokenize`]), calling `on` for every
    /// token; `on` returning `Break` ends it ([`Finish::Cancelled`]) before the next token.
    pub fn generate(
        &mut self,
        prompt: &[i32],
        s: &Sampling,
        on: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<Completion, Error> {
        s.check()?;
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if n_prompt == 0 {
            return Err(Error::invalid("messages", "the prompt is empty"));
        }
        let room = self.n_ctx.saturating_sub(n_prompt);
        let fitted;
        let s = if s.fit_to_context && s.max_tokens > room && room > 0 {
            fitted = Sampling {
                max_tokens: room,
                ..s.clone()
            };
            &fitted
        } else {
            s
        };
        let wanted = u64::from(n_prompt) + u64::from(s.max_tokens);
        if wanted > u64::from(self.n_ctx) {
            return Err(Error::ContextLengthExceeded(format!(
                "This model's maximum context length is {} tokens. However, you requested {wanted} tokens \
                 ({n_prompt} in the messages, {} in the completion). Please reduce the length of the \
                 messages or completion.",
                self.n_ctx, s.max_tokens
            )));
        }
        let n_vocab = self.model.n_vocab();
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token {bad} is not in the model's vocabulary"),
            ));
        }
        self.run(prompt, s, wanted, on)
    }

    /// Gives back the context (its KV cache and compute buffers) until the next request makes one:
    /// what an idle engine does, so that a warm engine holds little beyond the shared weights.
    pub fn release_context(&mut self) {
        self.ctx = None;
    }

    fn run(
        &mut self,
        prompt: &[i32],
        s: &Sampling,
        wanted: u64,
        on: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<Completion, Error> {
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let model = self.model;
        let (n_vocab, vocab) = (model.n_vocab(), model.vocab());
        let n_ctx = self.n_ctx;
        let (ctx, batch_size) = self.context_for(u32::try_from(wanted).unwrap_or(u32::MAX))?;
        ctx.clear_kv_cache();
        let batch_len = usize::try_from(batch_size).unwrap_or(512);
        let mut batch = LlamaBatch::new(batch_len, 1);
        let engine = |e: &dyn std::fmt::Display| Error::Engine(format!("llama.cpp failed: {e}"));
        for (i, chunk) in prompt.chunks(batch_len).enumerate() {
            batch.clear();
            let base = i * batch_len;
            for (j, &t) in chunk.iter().enumerate() {
                let pos = i32::try_from(base + j).map_err(|e| engine(&e))?;
                let last = base + j + 1 == prompt.len();
                batch
                    .add(LlamaToken(t), pos, &[0], last)
                    .map_err(|e| engine(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| engine(&e))?;
        }
        let mut sampler = sampler_for(s, n_vocab, n_ctx);
        let (mut utf8, mut stops) = (Utf8Stream::default(), StopText::new(s.stop.clone()));
        let (mut text, mut bytes) = (String::new(), Vec::with_capacity(16));
        let mut pos = i32::try_from(prompt.len()).map_err(|e| engine(&e))?;
        let mut produced = 0u32;
        let finish = loop {
            let token = sampler.sample(ctx, batch.n_tokens() - 1);
            produced += 1;
            text.clear();
            let eog = vocab.is_eog(token);
            let mut stopped = eog;
            if !eog {
                bytes.clear();
                vocab.token_to_piece_into(token, &mut bytes, false, None);
                let mut fresh = String::new();
                utf8.push(&bytes, &mut fresh);
                match stops.push(&fresh) {
                    Seen::Text(t) => text = t,
                    Seen::Stop(t) => {
                        text = t;
                        stopped = true;
                    }
                }
            }
            let last = stopped || produced >= s.max_tokens;
            if last && !stopped {
                // Length: release what was held back (a partial stop sequence, a cut character).
                let mut tail = String::new();
                utf8.finish(&mut tail);
                if let Seen::Text(t) = stops.push(&tail) {
                    text.push_str(&t);
                }
                text.push_str(&stops.finish());
            }
            if on(Piece {
                token: token.0,
                text: &text,
                last,
            })
            .is_break()
            {
                break Finish::Cancelled;
            }
            if stopped {
                break Finish::Stop;
            }
            if last {
                break Finish::Length;
            }
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(|e| engine(&e))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(|e| engine(&e))?;
        };
        Ok(Completion {
            prompt_tokens: n_prompt,
            completion_tokens: produced,
            finish,
        })
    }
}

/// llama.cpp's sampler chain for `s`, in llama.cpp's own order: penalties, top-p, temperature, then
/// a seeded draw (or the most likely token at temperature 0).
fn sampler_for(s: &Sampling, n_vocab: i32, n_ctx: u32) -> LlamaSampler {
    let mut chain = Vec::with_capacity(4);
    if s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
        let last_n = i32::try_from(n_ctx).unwrap_or(i32::MAX);
        chain.push(LlamaSampler::penalties(
            n_vocab,
            last_n,
            1.0,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        let seed = s.seed.unwrap_or_else(fresh_seed);
        chain.push(LlamaSampler::dist((seed ^ (seed >> 32)) as u32));
    }
    LlamaSampler::chain_simple(chain)
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

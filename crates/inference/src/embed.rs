//! Sentence embeddings: a sentence-transformers BERT folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `1_Pooling/config.json`, optionally `sentence_bert_config.json`) run by candle's
//! BERT, pooled as the folder says (mean or CLS) and L2-normalised, as sentence-transformers does.
//! Inputs are sorted by length and run in batches padded to their longest input, not to the window.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::Error;

/// How to load an embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderOptions {
    /// Threads for the matrix products (candle reads `RAYON_NUM_THREADS` once, at its first use).
    pub threads: u16,
    /// Inputs run together in one forward pass.
    pub batch: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            threads: 2,
            batch: 32,
        }
    }
}

/// One input: text, or token ids of the model's vocabulary (without the `[CLS]`/`[SEP]` marks).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl std::fmt::Debug for EmbedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbedInput::Text(t) => write!(f, "Text(len {})", t.len()),
            EmbedInput::Tokens(t) => write!(f, "Tokens(len {})", t.len()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
}

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_tokens: usize,
    dimensions: usize,
    vocab: u32,
    cls: u32,
    sep: u32,
    batch: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("pooling", &self.pooling)
            .field("max_tokens", &self.max_tokens)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: Option<usize>,
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, Error> {
    let bytes = std::fs::read(dir.join(name)).map_err(|e| Error::Load(format!("{name}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Load(format!("{name}: {e}")))
}

/// What makes a folder an embedding model, as [`inspect`] and [`Embedder::load`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub dimensions: usize,
    pub max_tokens: usize,
    pub pooling: String,
}

/// Checks a sentence-transformers folder without loading its weights: the files, the configs, and
/// a safetensors header that the weights file really has. Safe to run in the gateway (pure Rust).
pub fn inspect(dir: &Path) -> Result<FolderInfo, String> {
    let config: Config = read_json(dir, "config.json").map_err(|e| e.to_string())?;
    let pooling = pooling_of(dir).map_err(|e| e.to_string())?;
    let max_tokens = max_tokens_of(dir, &config);
    for f in ["tokenizer.json", "model.safetensors"] {
        if !dir.join(f).is_file() {
            return Err(format!("{f} is missing"));
        }
    }
    // The safetensors header: an 8-byte length, then JSON naming every tensor's byte range.
    let mut file =
        std::fs::File::open(dir.join("model.safetensors")).map_err(|e| format!("model.safetensors: {e}"))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut len)
        .map_err(|_| "model.safetensors is truncated".to_owned())?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 || 8 + len > size {
        return Err("model.safetensors has a bad header".into());
    }
    let mut header = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    std::io::Read::read_exact(&mut file, &mut header)
        .map_err(|_| "model.safetensors is truncated".to_owned())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| "model.safetensors has a bad header".to_owned())?;
    let end = header
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .ok_or("model.safetensors holds no tensors")?;
    if 8 + len + end > size {
        return Err(format!(
            "model.safetensors is truncated: its tensors need {} bytes, the file has {size}",
            8 + len + end
        ));
    }
    Ok(FolderInfo {
        dimensions: config.hidden_size,
        max_tokens,
        pooling: format!("{pooling:?}").to_lowercase(),
    })
}

fn pooling_of(dir: &Path) -> Result<Pooling, Error> {
    let p: PoolingConfig = read_json(dir, "1_Pooling/config.json")?;
    match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        _ => Err(Error::Load(
            "1_Pooling/config.json: only mean or CLS pooling is supported".into(),
        )),
    }
}

fn max_tokens_of(dir: &Path, config: &Config) -> usize {
    let sbert = read_json::<SbertConfig>(dir, "sentence_bert_config.json")
        .ok()
        .and_then(|c| c.max_seq_length);
    sbert
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings)
}

impl Embedder {
    /// Loads the folder at `dir`.
    pub fn load(dir: &Path, opts: EmbedderOptions) -> Result<Embedder, Error> {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", opts.threads.max(1).to_string());
        }
        let config: Config = read_json(dir, "config.json")?;
        let pooling = pooling_of(dir)?;
        let max_tokens = max_tokens_of(dir, &config);
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| Error::Load(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Load(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| Error::Load(format!("tokenizer.json has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| Error::Load(format!("model.safetensors: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| Error::Load(format!("model.safetensors: {e}")))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| Error::Load(format!("model.safetensors: {e}")))?;
        Ok(Embedder {
            model,
            tokenizer,
            pooling,
            max_tokens,
            dimensions: config.hidden_size,
            vocab: u32::try_from(config.vocab_size).unwrap_or(u32::MAX),
            cls,
            sep,
            batch: opts.batch.max(1),
        })
    }

    /// The length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The longest input in tokens, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids of each input, `[CLS]` and `[SEP]` included, checked against the window.
    pub fn tokenize(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<u32>>, Error> {
        let mut out = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let ids = match input {
                EmbedInput::Text(t) => self
                    .tokenizer
                    .encode(t.as_str(), true)
                    .map_err(|e| Error::invalid("input", format!("input[{i}] could not be tokenized: {e}")))?
                    .get_ids()
                    .to_vec(),
                EmbedInput::Tokens(t) => {
                    if let Some(bad) = t.iter().find(|&&id| id >= self.vocab) {
                        return Err(Error::invalid(
                            "input",
                            format!("input[{i}]: token {bad} is not in the model's vocabulary"),
                        ));
                    }
                    let mut ids = Vec::with_capacity(t.len() + 2);
                    ids.push(self.cls);
                    ids.extend_from_slice(t);
                    ids.push(self.sep);
                    ids
                }
            };
            if ids.len() > self.max_tokens {
                return Err(Error::ContextLengthExceeded(format!(
                    "input[{i}] is {} tokens long; this model's maximum is {} tokens",
                    ids.len(),
                    self.max_tokens
                )));
            }
            out.push(ids);
        }
        Ok(out)
    }

    /// One L2-normalised vector per input, in input order.
    pub fn embed(&self, tokens: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Error> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].len()));
        let mut out = vec![Vec::new(); tokens.len()];
        for chunk in order.chunks(self.batch) {
            let vecs = self.forward(chunk.iter().map(|&i| tokens[i].as_slice()))?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn forward<'a>(
        &self,
        batch: impl ExactSizeIterator<Item = &'a [u32]> + Clone,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let engine = |e: candle_core::Error| Error::Engine(format!("the embedding model failed: {e}"));
        let n = batch.len();
        let width = batch.clone().map(<[u32]>::len).max().unwrap_or(0).max(1);
        let (mut ids, mut mask) = (Vec::with_capacity(n * width), Vec::with_capacity(n * width));
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(0, width - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, width - seq.len()));
        }
        let dev = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (n, width), dev).map_err(engine)?;
        let mask = Tensor::from_vec(mask, (n, width), dev).map_err(engine)?;
        let types = ids.zeros_like().map_err(engine)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(engine)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden
                .narrow(1, 0, 1)
                .and_then(|t| t.squeeze(1))
                .map_err(engine)?,
            Pooling::Mean => {
                let m = mask
                    .to_dtype(DType::F32)
                    .and_then(|m| m.unsqueeze(2))
                    .map_err(engine)?;
                let sum = hidden.broadcast_mul(&m).and_then(|t| t.sum(1)).map_err(engine)?;
                let count = m.sum(1).map_err(engine)?;
                sum.broadcast_div(&count).map_err(engine)?
            }
        };
        let norm = pooled
            .sqr()
            .and_then(|t| t.sum_keepdim(1))
            .and_then(|t| t.sqrt())
            .and_then(|t| t.maximum(1e-12))
            .map_err(engine)?;
        pooled
            .broadcast_div(&norm)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(engine)
    }
}

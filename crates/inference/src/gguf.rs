//! A pure-Rust look at a GGUF file (candle's GGUF reader: header, metadata and tensor table only, no
//! weights), so the gateway can tell at start whether a file can be served, and why not, without
//! handing an operator's file to C++ outside a sandbox.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

/// The architectures this engine serves.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// What the gateway needs to know about a GGUF model.
#[derive(Clone, PartialEq, Eq)]
pub struct GgufInfo {
    pub architecture: String,
    /// `general.name`, if any.
    pub name: Option<String>,
    /// The context the model was trained with (`<arch>.context_length`).
    pub context_length: u32,
    /// The quantisation of the weight matrices, e.g. `Q4_1` (the type most tensors have).
    pub quantization: String,
    /// The chat template from the metadata, if any.
    pub chat_template: Option<String>,
    pub file_size: u64,
}

impl std::fmt::Debug for GgufInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufInfo")
            .field("architecture", &self.architecture)
            .field("name", &self.name)
            .field("context_length", &self.context_length)
            .field("quantization", &self.quantization)
            .field("has_chat_template", &self.chat_template.is_some())
            .field("file_size", &self.file_size)
            .finish()
    }
}

/// Reads the header of the GGUF file at `path` and checks that it can be served: a known
/// architecture, tensor types the engine runs, a context length, and every tensor's data inside the
/// file (a truncated download is caught here). The error is one line saying why (no path in it).
pub fn inspect(path: &Path) -> Result<GgufInfo, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_size = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let content = Content::read(&mut std::io::BufReader::new(&mut file))
        .map_err(|e| format!("not a readable GGUF file ({})", one_line(&e.to_string())))?;
    let text = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
    };
    let architecture = text("general.architecture").ok_or("no general.architecture in its metadata")?;
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(format!(
            "unsupported architecture {architecture:?} (supported: {})",
            ARCHITECTURES.join(", ")
        ));
    }
    let context_length = content
        .metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(as_u32)
        .ok_or_else(|| format!("no {architecture}.context_length in its metadata"))?;
    let mut end = 0u64;
    let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
    for (name, t) in &content.tensor_infos {
        let elems = t.shape.elem_count() as u64;
        let block = t.ggml_dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(format!("tensor {name} does not fill whole blocks of its type"));
        }
        let size = elems / block * t.ggml_dtype.type_size() as u64;
        let stop = content
            .tensor_data_offset
            .checked_add(t.offset)
            .and_then(|o| o.checked_add(size))
            .ok_or("a tensor offset overflows")?;
        end = end.max(stop);
        if t.shape.dims().len() >= 2 {
            match counts.iter_mut().find(|(d, _)| *d == t.ggml_dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ggml_dtype, 1)),
            }
        }
    }
    if content.tensor_infos.is_empty() {
        return Err("it holds no tensors".into());
    }
    if end > file_size {
        return Err(format!(
            "truncated: its tensors need {end} bytes, the file has {file_size}"
        ));
    }
    let quantization = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| format!("{d:?}").to_uppercase())
        .unwrap_or_default();
    Ok(GgufInfo {
        name: text("general.name"),
        chat_template: text("tokenizer.chat_template"),
        architecture,
        context_length,
        quantization,
        file_size,
    })
}

fn as_u32(v: &Value) -> Option<u32> {
    v.to_u32()
        .ok()
        .or_else(|| v.to_u64().ok().and_then(|n| u32::try_from(n).ok()))
        .or_else(|| v.to_i32().ok().and_then(|n| u32::try_from(n).ok()))
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(200).collect()
}

//! Real models (DESIGN §7): found in `<data_dir>/models/` with no configuration (a `*.gguf` file is a
//! language model, a folder holding `model.safetensors` an embedding model, each named after the
//! file or folder as a lowercase slug), or declared as `[models.<slug>]` with `backend = "llm"` or
//! `"embedding"`, which overrides anything found. Every file is checked at start in pure Rust
//! (header, tensor table, configs; no model code runs in the gateway): one that fails is listed as
//! `unavailable` with one log line naming the file and the reason, and the other models serve.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use skygate_core::models::{Backend, EngineKind, EngineModel, ModelSpec};

use super::ModelConfig;

/// The completion length when neither the request nor `[models.<slug>] max_tokens` gives one.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// How long an unused warm engine sandbox lives by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// A model file found in the models folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub slug: String,
    pub kind: EngineKind,
    pub path: PathBuf,
}

/// The slug of a file or folder name: lowercase, `[a-z0-9._-]`, other characters as `-`, at most
/// 64 characters (`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct.q4_1`).
pub fn slug_of(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    let mut slug: String = stem
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    slug = slug
        .trim_start_matches(['.', '_', '-'])
        .chars()
        .take(64)
        .collect();
    skygate_core::models::is_valid_slug(&slug).then_some(slug)
}

/// The models in `dir` (none if it does not exist), sorted by slug. Symbolic links are followed
/// (`scripts/models.sh` links the files it fetched).
pub fn discover(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = if name.ends_with(".gguf") && path.is_file() {
                EngineKind::Llm
            } else if path.join("model.safetensors").exists() || path.join("config.json").is_file() && path.is_dir() {
                EngineKind::Embedding
            } else {
                return None;
            };
            match slug_of(&name) {
                Some(slug) => Some(Found { slug, kind, path }),
                None => {
                    tracing::warn!(file = %path.display(), "a model file whose name gives no usable slug is skipped; declare it as [models.<slug>]");
                    None
                }
            }
        })
        .collect();
    found.sort_by(|a, b| a.slug.cmp(&b.slug));
    found
}

/// Checks the model at `path` and fills in what the check found; a file that cannot be served
/// gives an [`EngineModel`] with `unavailable` set (never an error: the other models serve).
pub fn engine_model(kind: EngineKind, path: &Path, cfg: Option<&ModelConfig>) -> EngineModel {
    let threads = cfg.and_then(|c| c.threads).unwrap_or_else(default_threads);
    let wanted_context = cfg.and_then(|c| c.context);
    let (context_length, dimensions, unavailable) = match kind {
        EngineKind::Llm => match skygate_inference::gguf::inspect(path) {
            Ok(info) => (
                wanted_context.map_or(info.context_length, |c| c.min(info.context_length)),
                None,
                None,
            ),
            Err(why) => (wanted_context.unwrap_or(0), None, Some(why)),
        },
        EngineKind::Embedding => match skygate_inference::embed::inspect(path) {
            Ok(info) => (
                u32::try_from(info.max_tokens).unwrap_or(u32::MAX),
                u32::try_from(info.dimensions).ok(),
                None,
            ),
            Err(why) => (0, None, Some(why)),
        },
    };
    let unavailable = unavailable.or_else(|| reachable_by_sandbox(path).err());
    EngineModel {
        kind,
        path: path.to_path_buf(),
        threads,
        context_length,
        max_tokens: cfg.and_then(|c| c.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
        dimensions,
        memory: cfg.and_then(|c| c.memory).map(|m| m.0),
        idle: cfg.and_then(|c| c.idle_timeout).unwrap_or(DEFAULT_IDLE),
        unavailable,
    }
}

/// When skygate runs as root, a model's sandbox runs as a leased unprivileged uid that owns nothing:
/// it must be able to reach the model through the directories on the way (`o+x`) and read it (`o+r`,
/// every file of a folder). Checked at start, so a private path is one clear line, not a failed
/// request.
fn reachable_by_sandbox(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if !skygate_runtime::sandbox::UidPool::needed() {
        return Ok(());
    }
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot open: {e}"))?;
    let dirs = path.ancestors().skip(1).chain(real.ancestors().skip(1));
    for dir in dirs.filter(|d| !d.as_os_str().is_empty()) {
        if mode(dir) & 0o001 == 0 {
            return Err(format!(
                "the sandbox's unprivileged user cannot reach it: {} is not searchable by others (chmod o+x, or keep models in a readable place such as <data_dir>/models, where scripts/models.sh puts them)",
                dir.display()
            ));
        }
    }
    let files: Vec<PathBuf> = if real.is_dir() {
        std::fs::read_dir(&real)
            .map_err(|e| format!("cannot list it: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect()
    } else {
        vec![real.clone()]
    };
    match files
        .iter()
        .find(|f| mode(f) & 0o004 == 0 || (f.is_dir() && mode(f) & 0o001 == 0))
    {
        Some(f) => Err(format!(
            "the sandbox's unprivileged user cannot read {} (chmod a+rX)",
            f.display()
        )),
        None => Ok(()),
    }
}

fn default_threads() -> u16 {
    std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX).min(8))
        .unwrap_or(2)
}

/// The prediction input of a language model (the same model serves `/v1/chat/completions`).
fn llm_input_schema(m: &EngineModel) -> serde_json::Value {
    let message = json!({
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"type": "string", "maxLength": 1_000_000}
        }
    });
    json!({
        "type": "object",
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        "properties": {
            "prompt": {"type": "string", "maxLength": 1_000_000, "description": "The user's message."},
            "messages": {"type": "array", "minItems": 1, "maxItems": 1000, "items": message,
                         "description": "A conversation, as for /v1/chat/completions."},
            "system_prompt": {"type": "string", "maxLength": 100_000},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": m.context_length.max(1),
                           "default": m.max_tokens},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
            "seed": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2, "default": 0},
            "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2, "default": 0}
        }
    })
}

/// The registry entry of an engine model.
pub fn engine_spec(slug: &str, m: EngineModel, cfg: Option<&ModelConfig>) -> ModelSpec {
    let name = cfg
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| slug.to_owned());
    let description = cfg
        .map(|c| c.description.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| match m.kind {
            EngineKind::Llm => {
                "A language model (GGUF) for chat completions, run locally in a sandbox.".into()
            }
            EngineKind::Embedding => "A sentence-embedding model, run locally in a sandbox.".into(),
        });
    let (input_schema, output_schema) = match m.kind {
        EngineKind::Llm => (llm_input_schema(&m), json!({"type": "string"})),
        EngineKind::Embedding => (
            json!({"type": "object", "description": "Use POST /v1/embeddings."}),
            json!({"type": "array", "items": {"type": "number"}}),
        ),
    };
    ModelSpec {
        slug: slug.to_owned(),
        name,
        description,
        kind: m.kind.wire_type().to_owned(),
        vendor: "skygate".into(),
        billable: cfg.is_none_or(|c| c.billable),
        test_ok: cfg.is_some_and(|c| c.test_ok),
        input_schema,
        output_schema,
        backend: Backend::Engine(m),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_names_without_the_gguf_suffix() {
        assert_eq!(
            slug_of("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
            "smollm2-135m-instruct.q4_1"
        );
        assert_eq!(slug_of("all-MiniLM-L6-v2").unwrap(), "all-minilm-l6-v2");
        assert_eq!(slug_of("My Model (v2).gguf").unwrap(), "my-model--v2-");
        assert_eq!(slug_of(".hidden.gguf").unwrap(), "hidden");
        assert!(slug_of("...").is_none());
    }

    #[test]
    fn discovery_finds_gguf_files_and_embedding_folders_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("A.gguf"), b"x").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(d.path().join("emb")).unwrap();
        std::fs::write(d.path().join("emb/model.safetensors"), b"x").unwrap();
        std::fs::create_dir(d.path().join("empty")).unwrap();
        let found = discover(d.path());
        let got: Vec<(&str, EngineKind)> = found.iter().map(|f| (f.slug.as_str(), f.kind)).collect();
        assert_eq!(got, [("a", EngineKind::Llm), ("emb", EngineKind::Embedding)]);
        assert!(discover(&d.path().join("missing")).is_empty());
        // Both are junk: listed, but unavailable with a reason.
        let m = engine_model(EngineKind::Llm, &found[0].path, None);
        assert!(m.unavailable.as_deref().unwrap().contains("GGUF"), "{m:?}");
        let e = engine_model(EngineKind::Embedding, &found[1].path, None);
        assert!(e.unavailable.is_some());
    }
}

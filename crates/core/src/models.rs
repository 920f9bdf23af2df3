//! The model registry: the built-in demo models compiled into the binary, plus operator-declared
//! `[models.<slug>]` entries. Holds what the Models API shows (name, type, schemas, whether test keys
//! may run it) and which backend runs it; the runtime that executes them lives elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use skygate_proto::Model;

/// Which backend runs a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Rust model compiled into the binary, named by its built-in id.
    Builtin(String),
    /// Any executable, run in a sandbox with its directory at `/model`.
    Command(CommandModel),
    /// A Cog predictor, served by a real Cog HTTP server inside the sandbox.
    Cog(CogModel),
    /// A real model run by skygate's own inference engine inside the sandbox: a GGUF language model
    /// or a sentence-transformers embedding model.
    Engine(EngineModel),
}

/// What an engine model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// A GGUF causal language model: chat completions (and predictions with `prompt`/`messages`).
    Llm,
    /// A sentence-transformers folder: embeddings.
    Embedding,
}

/// A model served by skygate's inference engine. The file is checked at start (pure Rust, no model
/// code runs in the gateway); what the check found is kept here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineModel {
    pub kind: EngineKind,
    /// The GGUF file, or the embedding folder; bound read-only into the sandbox.
    pub path: std::path::PathBuf,
    /// Threads of one run.
    pub threads: u16,
    /// The window in tokens: the model's own, or lower when configured.
    pub context_length: u32,
    /// The default completion length when a request gives none.
    pub max_tokens: u32,
    /// Length of an embedding vector (embedding models).
    pub dimensions: Option<u32>,
    /// Address-space limit of the model's sandbox in bytes (`None`: `sandbox.limits.memory`).
    pub memory: Option<u64>,
    /// How long an unused warm sandbox lives.
    pub idle: std::time::Duration,
    /// Why the model cannot be served, when its file failed the check at start.
    pub unavailable: Option<String>,
}

/// The wire `type` of engine models: `text` for language models, `embedding` for embedding models.
impl EngineKind {
    pub fn wire_type(self) -> &'static str {
        match self {
            EngineKind::Llm => "text",
            EngineKind::Embedding => "embedding",
        }
    }
}

/// A `cog` model: Cog's HTTP server (`python -m cog.server.http`) runs inside the sandbox with the
/// predictor's directory at `/model`; the helper in the sandbox relays one prediction to it over the
/// sandbox's own loopback.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CogModel {
    /// The sandbox: `argv` starts the server (the Python with Cog installed, `-m cog.server.http`),
    /// `dir` is the predictor's directory, the limits and devices as for a command model.
    pub run: CommandModel,
    /// Cog's predictor reference, `file.py:ClassName` (the `predict` key of `cog.yaml`).
    pub predictor: String,
    /// A virtualenv with Cog installed, bound read-only at [`COG_VENV`] (its interpreter then starts
    /// the server).
    pub venv: Option<std::path::PathBuf>,
    /// `reuse = "tenant"`: one warm sandbox per (model, account), destroyed after this idle time.
    /// `None`: a fresh sandbox for every prediction.
    pub warm_idle: Option<std::time::Duration>,
}

/// Where a Cog model's virtualenv appears inside its sandbox.
pub const COG_VENV: &str = "/venv";

/// A `command` model: what runs and its own limits (unset: the `[sandbox]` defaults).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandModel {
    /// `argv[0]` is resolved inside the sandbox (e.g. `python3`, `/model/run.sh`).
    pub argv: Vec<String>,
    /// Mounted read-only at `/model`.
    pub dir: Option<std::path::PathBuf>,
    /// Wall-clock limit of one run (at most `queue.job_timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Address-space limit in bytes.
    pub memory: Option<u64>,
    /// CPU-time limit in seconds.
    pub cpu_seconds: Option<u64>,
    /// How many of the server's leased devices (`sandbox.devices`) each run gets.
    pub devices: u32,
}

impl CommandModel {
    /// `argv` with the `[sandbox]` defaults: no directory, limits or devices of its own.
    pub fn new(argv: impl IntoIterator<Item = impl Into<String>>) -> CommandModel {
        CommandModel {
            argv: argv.into_iter().map(Into::into).collect(),
            dir: None,
            timeout: None,
            memory: None,
            cpu_seconds: None,
            devices: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub slug: String,
    pub name: String,
    pub description: String,
    /// `image`, `text`, … (the SDK's ModelType values).
    pub kind: String,
    pub vendor: String,
    pub billable: bool,
    /// Whether `sk_test_` keys may run it.
    pub test_ok: bool,
    pub input_schema: Value,
    pub output_schema: Value,
    pub backend: Backend,
}

impl ModelSpec {
    /// The wire object; schemas only when asked for with `?fields=`.
    pub fn to_wire(&self, with_input_schema: bool, with_output_schema: bool) -> Model {
        let engine = match &self.backend {
            Backend::Engine(m) => Some(m),
            _ => None,
        };
        let status = match engine {
            Some(m) if m.unavailable.is_some() => "unavailable",
            _ => "operational",
        };
        Model {
            context_length: engine.map(|m| m.context_length),
            metadata: engine.map(|m| {
                let mut meta = json!({"openai_compatible": true});
                if let Some(d) = m.dimensions {
                    meta["dimensions"] = json!(d);
                }
                meta
            }),
            name: self.name.clone(),
            namespace: self.slug.clone(),
            slug: self.slug.clone(),
            description: self.description.clone(),
            kind: self.kind.clone(),
            privacy: "private".into(),
            vendor: self.vendor.clone(),
            billable: self.billable,
            pricing: None,
            status: status.into(),
            test_mode: self.test_ok,
            input_schema: with_input_schema.then(|| self.input_schema.clone()),
            output_schema: with_output_schema.then(|| self.output_schema.clone()),
        }
    }
}

/// Model slugs: `[a-z0-9][a-z0-9._-]*`, at most 64 chars (no `/`: the SDK puts the slug in a path segment).
pub fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// The largest seed the built-in models accept (fits every JSON number and every SDK's integers).
const MAX_SEED: u64 = u32::MAX as u64;

/// A file-producing model's output on the wire: the URLs of its files, in order.
fn file_urls(max_items: u32) -> Value {
    json!({"type": "array", "items": {"type": "string", "format": "uri"}, "minItems": 1, "maxItems": max_items})
}

/// Who may run a built-in model.
#[derive(Clone, Copy)]
enum Access {
    /// Billable; live keys only.
    Paid,
    /// Not billable; test keys may run it too.
    Free,
}

fn builtin(
    slug: &str,
    name: &str,
    description: &str,
    kind: &str,
    access: Access,
    input_schema: Value,
    output_schema: Value,
) -> ModelSpec {
    ModelSpec {
        slug: slug.into(),
        name: name.into(),
        description: description.into(),
        kind: kind.into(),
        vendor: "skygate".into(),
        billable: matches!(access, Access::Paid),
        test_ok: matches!(access, Access::Free),
        input_schema,
        output_schema,
        backend: Backend::Builtin(slug.into()),
    }
}

/// The demo models compiled into the binary (run by `skygate_runtime::BuiltinRunner`). Inputs reach
/// the models without defaults filled in: each model applies the `default`s given here itself.
pub fn builtin_models() -> Vec<ModelSpec> {
    vec![
        builtin(
            "echo",
            "Echo",
            "Returns the prompt, optionally repeated. Free; runs with test keys.",
            "text",
            Access::Free,
            json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "maxLength": 10000, "description": "Text to echo back."},
                    "repeat": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1,
                               "description": "How many times to repeat the prompt, one per line."}
                }
            }),
            json!({"type": "string"}),
        ),
        builtin(
            "sky-text",
            "Sky Text",
            "Deterministic text transformations of a prompt: reverse, upper, lower, title case, a seeded \
             word shuffle, or rot13.",
            "text",
            Access::Paid,
            json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "maxLength": 10000, "description": "Text to transform."},
                    "mode": {"type": "string", "enum": ["reverse", "upper", "lower", "title", "words", "rot13"],
                             "default": "title",
                             "description": "The transformation; \"words\" shuffles the words in a seeded order."},
                    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                             "description": "Seeds the \"words\" shuffle; defaults to a hash of the prompt."}
                }
            }),
            json!({"type": "string"}),
        ),
        builtin(
            "sky-image",
            "Sky Image",
            "Procedural PNG images seeded by the prompt: layered, domain-warped noise through a colour \
             gradient. Each step is one refinement pass, so time grows with steps.",
            "image",
            Access::Paid,
            json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "maxLength": 2000,
                               "description": "Seeds the image (with seed)."},
                    "width": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 256,
                              "description": "Width in pixels."},
                    "height": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 256,
                               "description": "Height in pixels."},
                    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                             "description": "Same prompt and seed give the same image; defaults to a hash of the prompt."},
                    "steps": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20,
                              "description": "Refinement passes."},
                    "num_outputs": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1,
                                    "description": "How many images (output-0.png, output-1.png, …)."}
                }
            }),
            file_urls(4),
        ),
        builtin(
            "sky-audio",
            "Sky Audio",
            "Synthesises a mono 16-bit WAV from notes (\"C4 E4 G4 C5\") or from text (a tone per \
             character).",
            "audio",
            Access::Paid,
            json!({
                "type": "object",
                "anyOf": [{"required": ["notes"]}, {"required": ["text"]}],
                "properties": {
                    "notes": {"type": "string", "minLength": 1, "maxLength": 1000,
                              "description": "Notes played in order, each an equal share of the duration: a letter A-G, optional # or b, optional octave 0-8 (default 4); R is a rest. Wins over text."},
                    "text": {"type": "string", "minLength": 1, "maxLength": 2000,
                             "description": "Text turned into a tone sequence (whitespace rests)."},
                    "duration": {"type": "number", "minimum": 0.1, "maximum": 30, "default": 2,
                                 "description": "Length in seconds."},
                    "sample_rate": {"type": "integer", "enum": [8000, 16000, 22050, 44100], "default": 22050,
                                    "description": "Samples per second."},
                    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                             "description": "Varies the timbre (and the scale for text); defaults to a hash of notes or text."}
                }
            }),
            file_urls(1),
        ),
        builtin(
            "countdown",
            "Countdown",
            "Counts down for the given seconds, reporting progress; for testing cancel and await.",
            "text",
            Access::Free,
            json!({
                "type": "object",
                "required": ["seconds"],
                "properties": {
                    "seconds": {"type": "number", "minimum": 0, "maximum": 600,
                                "description": "How long to run."}
                }
            }),
            json!({"type": "string"}),
        ),
        builtin(
            "fail",
            "Fail",
            "Always fails: mode \"error\" reports an error, \"panic\" crashes the model. For testing failure paths.",
            "text",
            Access::Free,
            json!({
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["error", "panic"], "default": "error",
                             "description": "How to fail."},
                    "message": {"type": "string", "maxLength": 200,
                                "description": "The error message for mode \"error\"."}
                }
            }),
            json!({"type": "string"}),
        ),
    ]
}

/// The models this deployment serves, by slug. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    models: Arc<BTreeMap<String, ModelSpec>>,
}

impl ModelRegistry {
    /// Built-ins overlaid by `extra` (an operator entry with a built-in's slug replaces it).
    pub fn new(extra: impl IntoIterator<Item = ModelSpec>) -> Self {
        let mut map: BTreeMap<String, ModelSpec> = builtin_models()
            .into_iter()
            .map(|m| (m.slug.clone(), m))
            .collect();
        for m in extra {
            map.insert(m.slug.clone(), m);
        }
        ModelRegistry {
            models: Arc::new(map),
        }
    }

    pub fn get(&self, slug: &str) -> Option<&ModelSpec> {
        self.models.get(slug)
    }

    /// All models, ordered by slug.
    pub fn iter(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["echo", "flux-pro", "a.b_c-1", "9lives"] {
            assert!(is_valid_slug(ok), "{ok}");
        }
        for bad in ["", "Echo", "-x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn builtins_have_valid_slugs_and_object_schemas() {
        let models = builtin_models();
        let slugs: Vec<&str> = models.iter().map(|m| m.slug.as_str()).collect();
        assert_eq!(
            slugs,
            ["echo", "sky-text", "sky-image", "sky-audio", "countdown", "fail"]
        );
        for m in &models {
            assert!(is_valid_slug(&m.slug));
            assert_eq!(m.backend, Backend::Builtin(m.slug.clone()));
            assert!(
                ["text", "image", "audio"].contains(&m.kind.as_str()),
                "{}",
                m.slug
            );
            assert_eq!(m.input_schema["type"], "object", "{}", m.slug);
            assert!(m.output_schema.is_object(), "{}", m.slug);
            let props = m.input_schema["properties"].as_object().unwrap();
            for (name, p) in props {
                assert!(p["type"].is_string(), "{}.{name} has no type", m.slug);
                assert!(
                    p["description"].is_string(),
                    "{}.{name} has no description",
                    m.slug
                );
            }
            let mut required: Vec<&Value> = m.input_schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            for alt in m.input_schema["anyOf"].as_array().into_iter().flatten() {
                required.extend(alt["required"].as_array().unwrap());
            }
            for r in required {
                assert!(
                    props.contains_key(r.as_str().unwrap()),
                    "{}: required {r} is not a property",
                    m.slug
                );
            }
        }
    }

    #[test]
    fn builtin_access() {
        for m in builtin_models() {
            assert_eq!(m.billable, !m.test_ok, "{}", m.slug);
            let free = ["echo", "countdown", "fail"].contains(&m.slug.as_str());
            assert_eq!(m.test_ok, free, "{}", m.slug);
        }
    }

    /// The subset of JSON Schema the built-ins use, enough to check that each default obeys its own
    /// property's constraints.
    fn satisfies(schema: &Value, v: &Value) -> bool {
        let typed = match schema["type"].as_str() {
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("string") => v.is_string(),
            _ => false,
        };
        let num = v.as_f64();
        let within = |key: &str, ok: fn(f64, f64) -> bool| match (schema[key].as_f64(), num) {
            (Some(bound), Some(n)) => ok(n, bound),
            _ => true,
        };
        let len_ok = match (schema["maxLength"].as_u64(), v.as_str()) {
            (Some(max), Some(s)) => s.chars().count() as u64 <= max,
            _ => true,
        };
        let enum_ok = schema["enum"].as_array().is_none_or(|e| e.contains(v));
        typed && within("minimum", |n, b| n >= b) && within("maximum", |n, b| n <= b) && len_ok && enum_ok
    }

    #[test]
    fn builtin_defaults_satisfy_their_schemas() {
        let mut defaults = 0;
        for m in builtin_models() {
            for (name, p) in m.input_schema["properties"].as_object().unwrap() {
                if let Some(d) = p.get("default") {
                    defaults += 1;
                    assert!(satisfies(p, d), "{}.{name}: default {d} breaks {p}", m.slug);
                }
                if let (Some(lo), Some(hi)) = (p["minimum"].as_f64(), p["maximum"].as_f64()) {
                    assert!(lo <= hi, "{}.{name}", m.slug);
                }
            }
        }
        assert_eq!(defaults, 9, "every default was checked");
        // The checker itself must be able to say no.
        let p = json!({"type": "integer", "minimum": 1, "maximum": 10});
        assert!(satisfies(&p, &json!(5)));
        assert!(!satisfies(&p, &json!(11)) && !satisfies(&p, &json!(0)) && !satisfies(&p, &json!(1.5)));
        assert!(!satisfies(&json!({"type": "string", "enum": ["a"]}), &json!("b")));
    }

    #[test]
    fn operator_entries_override_builtins() {
        let mut custom = builtin_models().remove(0);
        custom.description = "mine".into();
        let reg = ModelRegistry::new([custom]);
        assert_eq!(reg.get("echo").unwrap().description, "mine");
        assert!(reg.get("sky-image").is_some());
        assert!(reg.get("nope").is_none());
    }

    #[test]
    fn wire_object_includes_schemas_only_when_asked() {
        let m = &builtin_models()[0];
        let w = serde_json::to_value(m.to_wire(false, false)).unwrap();
        assert!(w.get("input_schema").is_none());
        assert_eq!(w["type"], "text");
        assert_eq!(w["namespace"], "echo");
        let w = serde_json::to_value(m.to_wire(true, true)).unwrap();
        assert_eq!(w["input_schema"]["required"][0], "prompt");
    }
}

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
    /// Any executable: argv.
    Command(Vec<String>),
    /// A Cog HTTP model server started from this directory.
    Cog(String),
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
        Model {
            name: self.name.clone(),
            namespace: self.slug.clone(),
            slug: self.slug.clone(),
            description: self.description.clone(),
            kind: self.kind.clone(),
            privacy: "private".into(),
            vendor: self.vendor.clone(),
            billable: self.billable,
            pricing: None,
            status: "operational".into(),
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

/// The demo models compiled into the binary.
pub fn builtin_models() -> Vec<ModelSpec> {
    vec![
        ModelSpec {
            slug: "echo".into(),
            name: "Echo".into(),
            description: "Returns the prompt, optionally repeated. Free; runs with test keys.".into(),
            kind: "text".into(),
            vendor: "skygate".into(),
            billable: false,
            test_ok: true,
            input_schema: json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "maxLength": 10000, "description": "Text to echo back."},
                    "repeat": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1}
                }
            }),
            output_schema: json!({"type": "string"}),
            backend: Backend::Builtin("echo".into()),
        },
        ModelSpec {
            slug: "gradient".into(),
            name: "Gradient".into(),
            description: "Draws a PNG colour gradient; a stand-in for an image model.".into(),
            kind: "image".into(),
            vendor: "skygate".into(),
            billable: true,
            test_ok: false,
            input_schema: json!({
                "type": "object",
                "properties": {
                    "width": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 256},
                    "height": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 256},
                    "from": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$", "default": "#000000"},
                    "to": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$", "default": "#ffffff"},
                    "num_outputs": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1}
                }
            }),
            output_schema: json!({"type": "array", "items": {"type": "string", "format": "uri"}}),
            backend: Backend::Builtin("gradient".into()),
        },
        ModelSpec {
            slug: "countdown".into(),
            name: "Countdown".into(),
            description:
                "Counts down for the given seconds, reporting progress; for testing cancel and await.".into(),
            kind: "text".into(),
            vendor: "skygate".into(),
            billable: false,
            test_ok: true,
            input_schema: json!({
                "type": "object",
                "required": ["seconds"],
                "properties": {
                    "seconds": {"type": "number", "minimum": 0, "maximum": 600}
                }
            }),
            output_schema: json!({"type": "string"}),
            backend: Backend::Builtin("countdown".into()),
        },
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
        for m in builtin_models() {
            assert!(is_valid_slug(&m.slug));
            assert_eq!(m.input_schema["type"], "object");
        }
    }

    #[test]
    fn operator_entries_override_builtins() {
        let mut custom = builtin_models().remove(0);
        custom.description = "mine".into();
        let reg = ModelRegistry::new([custom]);
        assert_eq!(reg.get("echo").unwrap().description, "mine");
        assert!(reg.get("gradient").is_some());
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

//! The inference crate's integration tests, one binary: reference comparisons against fixtures
//! made by llama-cpp-python and sentence-transformers (`scripts/references.py`), generation
//! behaviour, and model files that are broken on purpose.
//!
//! The models come from `scripts/models.sh`: `SKYGATE_TEST_MODELS` names the `models/` folder it
//! filled. Without it the model tests print `SKIPPED` and pass, unless `SKYGATE_TEST_REQUIRE_ALL` is
//! set (CI), where a missing model fails them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod files;
mod generation;
mod reference;

use std::path::PathBuf;

pub const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// The path of test model `name`, or `None` after saying why the test cannot run.
pub fn model(name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SKYGATE_TEST_MODELS").map(PathBuf::from);
    let reason = match dir.map(|d| d.join(name)) {
        Some(p) if p.exists() => return Some(p),
        Some(p) => format!("{} does not exist (run scripts/models.sh)", p.display()),
        None => "SKYGATE_TEST_MODELS is not set (scripts/models.sh fills a models folder)".to_owned(),
    };
    let required = std::env::var("SKYGATE_TEST_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{test}: {reason}, and SKYGATE_TEST_REQUIRE_ALL forbids skipping"
    );
    eprintln!("SKIPPED {test}: {reason}");
    None
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

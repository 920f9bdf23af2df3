//! `docs/controls.md` claims no control without a test: every `file::test` it names must exist — the file
//! in this repository, and in it a Rust `fn test` (marked as a test, or a store conformance case run from
//! its main.rs) or a Python `def test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn every_control_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/controls.md")).unwrap();
    let mut rows = 0;
    let mut refs = 0;
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Control"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || cells[1].starts_with("---") {
            continue;
        }
        rows += 1;
        let tests = cells[3];
        let named: Vec<&str> = tests
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.contains("::"))
            .collect();
        assert!(!named.is_empty(), "a control without a test: {line}");
        for t in named {
            let (file, name) = t.rsplit_once("::").unwrap();
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{file} (named in docs/controls.md): {e}"));
            let found = if file.ends_with(".py") {
                text.contains(&format!("def {name}("))
            } else if file.starts_with("crates/store/tests/conformance/") {
                // Conformance cases are `pub async fn case(db: Db)`, run on every backend from main.rs.
                let main =
                    std::fs::read_to_string(root.join("crates/store/tests/conformance/main.rs")).unwrap();
                text.contains(&format!("pub async fn {name}(db: Db)"))
                    && main.lines().any(|l| l.trim() == format!("{name},"))
            } else {
                has_rust_test(&text, name)
            };
            assert!(found, "docs/controls.md names {t}, which is not a test in {file}");
            refs += 1;
        }
    }
    assert!(
        rows >= 30 && refs >= 50,
        "{rows} rows, {refs} tests: the map lost its content"
    );
}

/// `fn name` exists and one of the attribute lines just above it marks it as a test.
fn has_rust_test(text: &str, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        let l = l.trim_start();
        let declares = [format!("fn {name}("), format!("async fn {name}(")]
            .iter()
            .any(|d| l.starts_with(d.as_str()) || l.starts_with(&format!("pub {d}")));
        declares
            && lines[i.saturating_sub(4)..i]
                .iter()
                .any(|a| a.contains("#[test]") || a.contains("#[tokio::test") || a.contains("test!"))
    })
}

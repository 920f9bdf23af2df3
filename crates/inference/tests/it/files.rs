//! Model files that cannot be served are refused with one line saying why, by the pure-Rust
//! inspection the gateway runs at start (no C++ parses them outside a sandbox).

use std::io::Write;

use skygate_inference::{embed, gguf};

use crate::{model, GGUF, MINILM};

#[test]
fn broken_gguf_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    };
    let empty = gguf::inspect(&write("empty.gguf", b"")).unwrap_err();
    assert!(empty.contains("not a readable GGUF"), "{empty}");
    let junk = gguf::inspect(&write("junk.gguf", b"GGUF\x03\x00\x00\x00garbage")).unwrap_err();
    assert!(junk.contains("not a readable GGUF"), "{junk}");
    let Some(path) = model(GGUF, "broken_gguf_files_are_refused_with_a_reason") else {
        return;
    };
    let info = gguf::inspect(&path).unwrap();
    assert_eq!(
        (info.architecture.as_str(), info.quantization.as_str()),
        ("llama", "Q4_1")
    );
    assert!(
        info.context_length >= 2048 && info.chat_template.is_some(),
        "{info:?}"
    );
    let whole = std::fs::read(&path).unwrap();
    let cut = gguf::inspect(&write("cut.gguf", &whole[..whole.len() / 2])).unwrap_err();
    assert!(cut.starts_with("truncated"), "{cut}");
    let header_only = gguf::inspect(&write("head.gguf", &whole[..4096])).unwrap_err();
    assert!(
        header_only.contains("not a readable GGUF") || header_only.starts_with("truncated"),
        "{header_only}"
    );
}

#[test]
fn broken_embedding_folders_are_refused_with_a_reason() {
    let Some(src) = model(MINILM, "broken_embedding_folders_are_refused_with_a_reason") else {
        return;
    };
    let info = embed::inspect(&src).unwrap();
    assert_eq!(
        (info.dimensions, info.max_tokens, info.pooling.as_str()),
        (384, 256, "mean")
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = |names: &[&str]| {
        for n in names {
            let to = dir.path().join(n);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src.join(n), to).unwrap();
        }
    };
    copy(&["config.json", "tokenizer.json", "1_Pooling/config.json"]);
    let missing = embed::inspect(dir.path()).unwrap_err();
    assert!(missing.contains("model.safetensors"), "{missing}");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &weights[..weights.len() - 1000],
    )
    .unwrap();
    let cut = embed::inspect(dir.path()).unwrap_err();
    assert!(cut.contains("truncated"), "{cut}");
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        b"{\"pooling_mode_max_tokens\": true}",
    )
    .unwrap();
    let pooling = embed::inspect(dir.path()).unwrap_err();
    assert!(pooling.contains("pooling"), "{pooling}");
}

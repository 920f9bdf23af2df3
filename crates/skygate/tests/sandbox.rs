//! The sandbox launcher through the real helper binary: built-in and command models, limits, deadline,
//! cancel, protocol errors, outputs, cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sandbox_support;

use serde_json::json;
use skygate_runtime::{Output, RunError};

use sandbox_support::*;

#[tokio::test]
async fn builtin_text_and_files_run_in_the_sandbox() {
    let Some(s) = Sandbox::new("builtin_text_and_files_run_in_the_sandbox") else { return };
    let out = s.builtin("echo", json!({"prompt": "hi", "repeat": 2})).await;
    assert_eq!(out, Ok(Output::Text("hi\nhi".into())));
    match s.builtin("sky-image", json!({"prompt": "x", "width": 16, "height": 16, "steps": 1})).await {
        Ok(Output::Files(f)) => {
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].name, "output-0.png");
            assert_eq!(f[0].content_type, "image/png");
        }
        other => panic!("{other:?}"),
    }
    let err = s.builtin("fail", json!({"message": "bad prompt"})).await;
    assert_eq!(err, Err(RunError::Failed("bad prompt".into())));
    let err = s.builtin("fail", json!({"mode": "panic"})).await;
    assert_eq!(err, Err(RunError::Crashed("the model crashed".into())));
    s.assert_clean();
}

//! The `cog` backend against a real Cog server (`cog` from PyPI, `python -m cog.server.http`) run
//! inside the sandbox: text and file outputs, failures, setup failures, the deadline, no network,
//! and the whole path through the binary's predictions API. The predictor is `tests/cog/probe`.
//!
//! Needs `SKYGATE_TEST_COG_VENV`: a virtualenv with `cog` made from a Python under `/usr` (scripts/test.sh
//! makes it from tests/cog/requirements.txt).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod sandbox_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use skygate_core::models::{Backend, CogModel, CommandModel};
use skygate_runtime::{Output, RunError, SandboxReport};
use skygate_testkit::binary::BinaryServer;

use common::{bin, setup, status_of, Api};
use sandbox_support::*;

/// A virtualenv with Cog (made from a Python under `/usr`, so that it works inside the sandbox).
fn cog_venv(test: &str) -> Option<PathBuf> {
    let venv = PathBuf::from(skygate_testkit::env_or_skip("SKYGATE_TEST_COG_VENV", test)?);
    let python = venv.join("bin/python");
    let out = std::process::Command::new(&python)
        .args(["-c", "import cog, coglet"])
        .output();
    match out {
        Ok(o) if o.status.success() => Some(venv),
        Ok(o) => {
            skygate_testkit::skip(
                test,
                &format!(
                    "{} cannot import cog: {}",
                    python.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            None
        }
        Err(e) => {
            skygate_testkit::skip(test, &format!("cannot run {}: {e}", python.display()));
            None
        }
    }
}

/// A world-readable copy of the test predictor; `setup_fails` swaps in a setup that raises.
fn predictor(setup_fails: bool) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cog/probe");
    let read = |p: &str| std::fs::read_to_string(src.join(p)).unwrap();
    let mut code = read("predict.py");
    if setup_fails {
        code = code.replace(
            "self.greeting = \"hello\"",
            "raise RuntimeError(\"weights are missing\")",
        );
    }
    model_dir(&[
        ("cog.yaml", 0o644, &read("cog.yaml")),
        ("predict.py", 0o644, &code),
    ])
}

fn cog_model(venv: &Path, dir: &Path) -> CogModel {
    CogModel {
        run: CommandModel {
            dir: Some(dir.to_owned()),
            ..CommandModel::new(["/venv/bin/python", "-m", "cog.server.http", "--host", "127.0.0.1"])
        },
        predictor: "predict.py:Runner".into(),
        venv: Some(venv.to_owned()),
        warm_idle: None,
    }
}

async fn run(
    s: &Sandbox,
    model: &CogModel,
    input: Value,
    deadline: Duration,
) -> (Result<Output, RunError>, Option<SandboxReport>) {
    s.start(Backend::Cog(model.clone()), input, deadline)
        .finish_with_report()
        .await
}

#[tokio::test]
async fn cog_predictors_run_in_the_sandbox_without_network() {
    let test = "cog_predictors_run_in_the_sandbox_without_network";
    let Some(venv) = cog_venv(test) else {
        return;
    };
    let Some(s) = Sandbox::new(test) else {
        return;
    };
    let dir = predictor(false);
    let model = cog_model(&venv, dir.path());
    let long = Duration::from_secs(60);

    let (out, rep) = run(&s, &model, json!({"prompt": "sky"}), long).await;
    assert_eq!(out, Ok(Output::Text("hello sky".into())));
    let rep = rep.unwrap();
    assert!(rep.sandboxed && rep.exit == "exited 0", "{rep:?}");

    // A returned file comes back from Cog as a data URL and leaves as an output file.
    let (out, _) = run(&s, &model, json!({"prompt": "sky", "mode": "file"}), long).await;
    match out {
        Ok(Output::Files(f)) => {
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].name, "output-0.txt");
            assert_eq!(f[0].content_type, "text/plain");
            assert_eq!(f[0].bytes, b"hello sky");
        }
        other => panic!("{other:?}"),
    }

    // The predictor's exception is the prediction's error.
    let (out, rep) = run(&s, &model, json!({"mode": "fail"}), long).await;
    assert!(
        matches!(&out, Err(RunError::Failed(m)) if m.contains("ValueError: asked to fail")),
        "{out:?}"
    );
    assert_eq!(rep.unwrap().exit, "exited 1");

    // Inside: only lo, no default route, the host's PostgreSQL and Redis unreachable, not root, the
    // predictor's directory as the working directory.
    let (out, _) = run(&s, &model, json!({"mode": "network"}), long).await;
    let Ok(Output::Text(t)) = out else {
        panic!("{out:?}")
    };
    let seen: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(seen["interfaces"], json!(["lo"]), "{seen}");
    assert_eq!(seen["default_route"], false, "{seen}");
    assert_eq!(seen["postgres"], "ConnectionRefusedError", "{seen}");
    assert_eq!(seen["redis"], "ConnectionRefusedError", "{seen}");
    assert_eq!(seen["uid"], 1000, "{seen}");
    assert_eq!(seen["cwd"], "/model", "{seen}");

    // A predictor that never answers is killed at the deadline, server and all.
    let (out, rep) = run(&s, &model, json!({"mode": "sleep"}), Duration::from_secs(8)).await;
    assert!(matches!(out, Err(RunError::TimedOut(_))), "{out:?}");
    assert_eq!(rep.unwrap().exit, "deadline");

    // A setup that raises fails the prediction with the setup's own words.
    let broken = predictor(true);
    let (out, _) = run(&s, &cog_model(&venv, broken.path()), json!({}), long).await;
    assert!(
        matches!(&out, Err(RunError::Failed(m)) if m.contains("setup failed") && m.contains("weights are missing")),
        "{out:?}"
    );
    s.assert_clean();
    assert_no_cog_left();
}

/// No Cog server outlives its sandbox (a killed sandbox may take a moment to go).
fn assert_no_cog_left() {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("cog.server.http") || cmdline.contains("coglet.server") {
                left.push(cmdline);
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "Cog processes left running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `reuse = "tenant"`: an account's next prediction gets its warm sandbox (the same server), another
/// account never does; a failed prediction keeps it, a deadline destroys it, and so do the idle
/// timeout and dropping the runner.
#[tokio::test]
async fn warm_sandboxes_are_kept_per_account_and_reaped() {
    let test = "warm_sandboxes_are_kept_per_account_and_reaped";
    let Some(venv) = cog_venv(test) else {
        return;
    };
    let Some(s) = Sandbox::new(test) else {
        return;
    };
    let dir = predictor(false);
    let model = CogModel {
        warm_idle: Some(Duration::from_secs(4)),
        ..cog_model(&venv, dir.path())
    };
    let run_for = |tenant: &str, input: Value, deadline: Duration| {
        s.start_for(Some(tenant), Backend::Cog(model.clone()), input, deadline)
            .finish_with_report()
    };
    let long = Duration::from_secs(60);
    let id_of = |out: Result<Output, RunError>| match out {
        Ok(Output::Text(t)) => t,
        other => panic!("{other:?}"),
    };
    let (out, rep) = run_for("acct_a", json!({"mode": "id"}), long).await;
    let first = id_of(out);
    let rep = rep.unwrap();
    assert!(rep.exit == "answered (started)" && rep.start_us > 0, "{rep:?}");
    let (out, rep) = run_for("acct_a", json!({"mode": "id"}), long).await;
    assert_eq!(
        id_of(out),
        first,
        "the account's second prediction reuses its sandbox"
    );
    let rep = rep.unwrap();
    assert!(rep.exit == "answered (warm)" && rep.start_us == 0, "{rep:?}");
    let (out, _) = run_for("acct_b", json!({"mode": "id"}), long).await;
    assert_ne!(id_of(out), first, "another account never gets it");
    assert_eq!(s.runner.warm_idle(), 2);

    // Files come back inline from a warm sandbox; a failed prediction leaves it in use.
    let (out, _) = run_for("acct_a", json!({"prompt": "warm", "mode": "file"}), long).await;
    match out {
        Ok(Output::Files(f)) => assert_eq!(
            (f[0].name.as_str(), f[0].bytes.as_slice()),
            ("output-0.txt", &b"hello warm"[..])
        ),
        other => panic!("{other:?}"),
    }
    let (out, _) = run_for("acct_a", json!({"mode": "fail"}), long).await;
    assert!(
        matches!(&out, Err(RunError::Failed(m)) if m.contains("asked to fail")),
        "{out:?}"
    );
    let (out, _) = run_for("acct_a", json!({"mode": "id"}), long).await;
    assert_eq!(id_of(out), first);

    // A deadline destroys it: the next prediction starts a new server.
    let (out, rep) = run_for("acct_a", json!({"mode": "sleep"}), Duration::from_secs(3)).await;
    assert!(matches!(out, Err(RunError::TimedOut(_))), "{out:?}");
    assert_eq!(rep.unwrap().exit, "deadline");
    let (out, _) = run_for("acct_a", json!({"mode": "id"}), long).await;
    let second = id_of(out);
    assert_ne!(second, first);

    // The idle timeout ends both accounts' sandboxes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.runner.warm_idle(), 0);
    assert_no_cog_left();

    // Dropping the runner ends the warm sandboxes it kept.
    let (out, _) = run_for("acct_c", json!({"mode": "id"}), long).await;
    id_of(out);
    assert_eq!(s.runner.warm_idle(), 1);
    drop(s);
    assert_no_cog_left();
}

/// `backend = "cog"` in the config, through the predictions API of the real binary.
#[tokio::test]
async fn cog_models_serve_the_predictions_api() {
    let test = "cog_models_serve_the_predictions_api";
    let Some(venv) = cog_venv(test) else {
        return;
    };
    if !namespaces_available(test) {
        return;
    }
    let dir = predictor(false);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let toml = format!(
        "[models.cog-probe]\nbackend = \"cog\"\ntype = \"text\"\ndir = {dir:?}\nvenv = {venv:?}\n\
         timeout = \"60s\"\ninput_schema = {{ type = \"object\" }}\n\
         [models.cog-warm]\nbackend = \"cog\"\ntype = \"text\"\ndir = {dir:?}\nvenv = {venv:?}\n\
         reuse = \"tenant\"\nidle_timeout = \"30s\"\ninput_schema = {{ type = \"object\" }}\n",
        dir = dir.path().display().to_string(),
        venv = venv.display().to_string(),
    );
    let key = setup(&data, &toml);
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let p = api
        .post(json!({"model": "cog-probe", "input": {"prompt": "api"}, "await": true}))
        .await;
    assert_eq!(status_of(&p), "succeeded", "{p}");
    assert_eq!(p["output"], "hello api", "{p}");
    assert_eq!(p["metrics"]["sandbox_exit"], "exited 0", "{p}");
    // Cog's logs of the prediction reach the server log.
    let log = srv.stderr();
    assert!(log.contains("model log") && log.contains("mode text"), "{log}");

    let f = api
        .post(json!({"model": "cog-probe", "input": {"prompt": "file", "mode": "file"}, "await": true}))
        .await;
    assert_eq!(status_of(&f), "succeeded", "{f}");
    let url = f["output"][0].as_str().unwrap();
    let res = api.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"hello file");

    let failed = api
        .post(json!({"model": "cog-probe", "input": {"mode": "fail"}, "await": true}))
        .await;
    assert_eq!(status_of(&failed), "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap_or("").contains("asked to fail"),
        "{failed}"
    );

    // reuse = "tenant": the account's second prediction is answered by the same warm server.
    let a = api
        .post(json!({"model": "cog-warm", "input": {"mode": "id"}, "await": true}))
        .await;
    let b = api
        .post(json!({"model": "cog-warm", "input": {"mode": "id"}, "await": true}))
        .await;
    assert_eq!(status_of(&b), "succeeded", "{b}");
    assert_eq!(a["output"], b["output"], "{a} {b}");
    assert_eq!(b["metrics"]["sandbox_exit"], "answered (warm)", "{b}");
    drop(srv);
}

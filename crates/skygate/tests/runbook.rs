//! The incident-response runbook (`docs/incident-response.md`) is executable: every `skygate …` line of its
//! `sh` blocks is run, in document order, against a test deployment with a running server, its
//! `<PLACEHOLDERS>` filled with real values, and must succeed. Afterwards the effects are checked: the
//! revoked key and token are refused, the old key version is retired, the erased account is gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::json;
use skygate_testkit::binary::BinaryServer;

mod common;
use common::{bin, ok, status_of, Api};

/// The runbook's commands: lines starting with `skygate ` inside ```sh fences.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if in_sh && t.starts_with("skygate ") {
            out.push(t.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn every_runbook_command_runs_against_a_test_deployment() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/incident-response.md"),
    )
    .unwrap();
    let cmds = commands(&doc);
    assert!(cmds.len() >= 15, "the runbook lost its commands: {cmds:?}");

    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/advisory-db");
    if !db.join("crates").is_dir() {
        skygate_testkit::skip(
            "every_runbook_command_runs_against_a_test_deployment",
            "no RustSec advisory database at ../shared/advisory-db",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let email = "victim@example.com";
    let acct = ok(&data, &["accounts", "create", "--email", email]);
    let proj = ok(&data, &["projects", "create", "--account", &acct, "--name", "p"]);
    let key = ok(&data, &["keys", "create", "--project", &proj]);
    let token = ok(
        &data,
        &["tokens", "create", "--account", email, "--scopes", "account.read"],
    );
    ok(&data, &["accounts", "create", "--email", "leaving@example.com"]);
    let srv = tokio::task::spawn_blocking({
        let data = data.clone();
        move || BinaryServer::start(&bin(), &data, &[]).unwrap()
    })
    .await
    .unwrap();
    let api = Api::new(&srv, &key);
    let p = api
        .post(json!({"model": "sky-text", "input": {"prompt": "before the incident"}, "await": true}))
        .await;
    assert_eq!(status_of(&p), "succeeded", "{p}");

    let keys: serde_json::Value =
        serde_json::from_str(&ok_stdout(&data, srv.addr, &["keys", "list", "--json"])).unwrap();
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    let tokens = ok_stdout(&data, srv.addr, &["tokens", "list", "--account", email, "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    let token_id = tokens[0]["id"].as_str().unwrap().to_owned();
    let export = tmp.path().join("export.json");
    let values = BTreeMap::from([
        ("<PROJECT_ID>", proj.clone()),
        ("<EMAIL>", email.to_owned()),
        ("<KEY_ID>", key_id),
        ("<TOKEN_ID>", token_id),
        ("<OLD_VERSION>", "1".to_owned()),
        ("<DATE>", "2020-01-01".to_owned()),
        ("<PREDICTION_ID>", p["id"].as_str().unwrap().to_owned()),
        ("<EXPORT_FILE>", export.to_str().unwrap().to_owned()),
        ("<ERASE_EMAIL>", "leaving@example.com".to_owned()),
        ("<ADVISORY_DB>", db.to_str().unwrap().to_owned()),
    ]);
    for cmd in &cmds {
        let mut line = cmd.clone();
        for (k, v) in &values {
            line = line.replace(k, v);
        }
        assert!(!line.contains('<'), "unknown placeholder in {cmd:?}");
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        if line.starts_with("skygate keyring retire") {
            // As the runbook says: retire waits until every node writes with the new version.
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
        let stdout = ok_stdout(&data, srv.addr, &args);
        eprintln!("ran {line}: {} bytes out", stdout.len());
    }

    // The runbook did what it says.
    let models = format!("{}/v1/models", api.base);
    let res = api
        .client
        .get(&models)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the revoked key is refused");
    let res = api
        .client
        .get(format!("{}/v1/account", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the revoked token is refused");
    let status = ok_stdout(&data, srv.addr, &["keyring", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["current_version"], 2);
    assert_eq!(status["pending_rewrap"], 0);
    let v1 = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap();
    assert_eq!(v1["state"], "retired", "{status}");
    let exported: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(exported["account"]["email"], email);
    let gone = Command::new(bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["accounts", "export", "leaving@example.com"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the erased account is gone");
    // Data sealed before the rotation still opens under the new version.
    let res = api
        .client
        .get(format!(
            "{}/v1/predictions/{}",
            api.base, values["<PREDICTION_ID>"]
        ))
        .header("x-api-key", ok(&data, &["keys", "create", "--project", &proj]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["input"]["prompt"], "before the incident", "{body}");
}

/// Runs `skygate ARGS` against the data dir with the running server's address as `server.listen`
/// (so `selftest` finds it); it must succeed.
fn ok_stdout(data: &Path, addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("SKYGATE_LISTEN", addr.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skygate {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

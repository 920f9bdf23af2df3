//! Data subject rights against the real binary: `skygate accounts export` and `GET /v1/account/export`
//! return everything held about an account, decrypted and without a secret; the API export is scoped,
//! rate limited and audited; after `accounts erase`, an export answers "not found".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use skygate_testkit::binary::{cli, BinaryServer};

mod common;
use common::{bin, ok, status_of, Api};

const EMAIL: &str = "Subject@Example.com";

#[tokio::test]
async fn export_erase_export_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("skygate.toml"), "[limits]\nexports_per_hour = 2\n").unwrap();
    let acct = ok(&data, &["accounts", "create", "--email", EMAIL]);
    let proj = ok(
        &data,
        &["projects", "create", "--account", &acct, "--name", "Export Me"],
    );
    let key = ok(&data, &["keys", "create", "--project", &proj, "--name", "laptop"]);
    let token = ok(
        &data,
        &[
            "tokens",
            "create",
            "--account",
            EMAIL,
            "--scopes",
            "account.read",
            "--name",
            "exporter",
        ],
    );
    let narrow = ok(
        &data,
        &[
            "tokens",
            "create",
            "--account",
            EMAIL,
            "--scopes",
            "projects.read",
        ],
    );

    let srv = tokio::task::spawn_blocking({
        let data = data.clone();
        move || BinaryServer::start(&bin(), &data, &[]).unwrap()
    })
    .await
    .unwrap();
    let api = Api::new(&srv, &key);
    let p = api
        .post(json!({"model": "sky-text", "input": {"prompt": "private words", "mode": "upper"}, "await": true}))
        .await;
    assert_eq!(status_of(&p), "succeeded", "{p}");
    let pred_id = p["id"].as_str().unwrap().to_owned();

    // The operator's export: decrypted, complete, no secret.
    let out = cli(&bin(), &data, &["accounts", "export", EMAIL]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in [&key, &token, &narrow] {
        assert!(!text.contains(secret.as_str()), "a secret in the export");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["format"], "skygate.account-export/1");
    assert_eq!(doc["account"]["id"], acct.as_str());
    assert_eq!(doc["account"]["email"], "subject@example.com");
    assert_eq!(doc["account"]["two_factor"], false);
    let projects = doc["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0]["id"], proj.as_str());
    assert_eq!(projects[0]["name"], "Export Me");
    let keys = projects[0]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "laptop");
    assert_eq!(keys[0]["last4"], &key[key.len() - 4..]);
    let preds = projects[0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 1, "{preds:?}");
    assert_eq!(preds[0]["id"], pred_id.as_str());
    assert_eq!(preds[0]["status"], "succeeded");
    assert_eq!(preds[0]["input"]["prompt"], "private words");
    assert_eq!(preds[0]["output"]["text"], "PRIVATE WORDS");
    assert_eq!(preds[0]["data_removed"], false);
    let tokens = doc["access_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens
        .iter()
        .any(|t| t["name"] == "exporter" && t["scopes"] == json!(["account.read"])));
    let usage = doc["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["prediction"], pred_id.as_str());
    let actions: Vec<&str> = doc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["keys.create", "tokens.create"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }

    // To a file: created 0600, refuses to overwrite.
    let file = tmp.path().join("export.json");
    ok(
        &data,
        &["accounts", "export", &acct, "--output", file.to_str().unwrap()],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = cli(
        &bin(),
        &data,
        &["accounts", "export", &acct, "-o", file.to_str().unwrap()],
    )
    .unwrap();
    assert!(!again.status.success());

    // The account's own export through the management API: scope account.read, limited, audited.
    let url = format!("{}/v1/account/export", api.base);
    let get = |t: &str| api.client.get(&url).bearer_auth(t.to_owned()).send();
    let res = get(&narrow).await.unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("account.read"),
        "{body}"
    );
    let res = get(&token).await.unwrap();
    assert_eq!(res.status(), 200);
    let mine: Value = res.json().await.unwrap();
    assert_eq!(mine["account"]["id"], acct.as_str());
    assert_eq!(
        mine["projects"][0]["predictions"][0]["input"]["prompt"],
        "private words"
    );
    assert_eq!(get(&token).await.unwrap().status(), 200);
    let res = get(&token).await.unwrap();
    assert_eq!(res.status(), 429, "exports_per_hour = 2");
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["error_id"], "RATE_LIMIT_EXCEEDED");
    assert!(
        body["error"]["details"].as_str().unwrap().starts_with("exports:"),
        "{body}"
    );
    assert_eq!(get("sk_pat_nonsense").await.unwrap().status(), 401);

    let later = ok_json(&data, &["accounts", "export", EMAIL]);
    let exports = later["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "account.export")
        .count();
    // Two operator exports (stdout, file) and two through the API; the refused one is not an export.
    assert_eq!(exports, 4, "{}", later["audit"]);

    // Erase, then the export knows nothing.
    ok(&data, &["accounts", "erase", EMAIL, "--yes"]);
    let gone = cli(&bin(), &data, &["accounts", "export", EMAIL]).unwrap();
    assert!(!gone.status.success());
    assert!(gone.stdout.is_empty());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("no account"), "{err}");
    let gone = cli(&bin(), &data, &["accounts", "export", &acct]).unwrap();
    assert!(!gone.status.success());
    assert_eq!(get(&token).await.unwrap().status(), 401);
    // The erasure's audit entry names only the id: no email or project name left in the log.
    let log = cli(&bin(), &data, &["audit", "export"]).unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("account.erase"));
    assert!(!log.to_lowercase().contains("subject@example.com"));
    assert!(!log.contains("Export Me"));
}

fn ok_json(data: &std::path::Path, args: &[&str]) -> Value {
    let out = cli(&bin(), data, args).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

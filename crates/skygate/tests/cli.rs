//! End-to-end tests of the real `skygate` binary: the operator CLI and `serve` sharing one data dir,
//! talking HTTPS to it as a client would, and the start-up failures an operator can hit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use skygate_testkit::binary::{cli, BinaryServer};

mod common;
use common::{bin, files, ok};

fn fails(data: &Path, args: &[&str]) -> String {
    let out = cli(&bin(), data, args).unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one error line: {err}"
    );
    err
}

fn client(ca: &Path) -> reqwest::Client {
    skygate_testkit::client_trusting(&std::fs::read(ca).unwrap())
}

#[tokio::test]
async fn operator_flow_against_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let acct = ok(
        &data,
        &[
            "accounts",
            "create",
            "--email",
            "Ops@Example.com",
            "--tier",
            "pro",
        ],
    );
    assert!(acct.starts_with("acct_"), "{acct}");
    let proj = ok(
        &data,
        &[
            "projects",
            "create",
            "--account",
            "ops@example.com",
            "--name",
            "Project Nightingale",
        ],
    );
    assert!(proj.starts_with("proj_"), "{proj}");
    let key = ok(
        &data,
        &["keys", "create", "--project", &proj, "--name", "ci deploy key"],
    );
    assert!(key.starts_with("sk_live_") && key.len() == 46, "{key}");
    let test_key = ok(
        &data,
        &[
            "keys",
            "create",
            "--project",
            &proj,
            "--test",
            "--expires-in",
            "30d",
        ],
    );
    assert!(test_key.starts_with("sk_test_"), "{test_key}");

    let srv = tokio::task::spawn_blocking({
        let data = data.clone();
        move || BinaryServer::start(&bin(), &data, &[]).unwrap()
    })
    .await
    .unwrap();
    assert!(srv.addr.ip().is_loopback());
    let c = client(&srv.ca_path);
    let url = format!("https://{}/v1/models", srv.addr);
    let res = c.get(&url).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let models: serde_json::Value = res.json().await.unwrap();
    assert!(models
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["namespace"] == "echo"));
    assert_eq!(
        c.get(&url)
            .header("x-api-key", &test_key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // keys list --json: every documented field, never the secret.
    let out = cli(&bin(), &data, &["keys", "list", "--project", &proj, "--json"]).unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(!listed.contains(&key[8..]) && !listed.contains(&test_key[8..]));
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    for field in [
        "id",
        "project",
        "mode",
        "name",
        "prefix",
        "last4",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ] {
        assert!(rows[0].get(field).is_some(), "missing {field}: {listed}");
    }
    let live = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mode"] == "live")
        .unwrap();
    assert_eq!(live["last4"], &key[key.len() - 4..]);
    let key_id = live["id"].as_str().unwrap().to_owned();

    // The key appears in no file of the data dir (database, WAL, keyring, TLS).
    for f in files(&data) {
        let bytes = std::fs::read(&f).unwrap();
        for secret in [&key, &test_key] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} contains a key",
                f.display()
            );
            let body = &secret.as_bytes()[8..40];
            assert!(
                !bytes.windows(body.len()).any(|w| w == body),
                "{} contains a key body",
                f.display()
            );
        }
    }
    assert!(!srv.stderr().contains(&key[8..]), "the server log shows the key");
    // Nor does any personal or naming data: the email, project and key names are sealed (what `strings`
    // over the data dir would find).
    for f in files(&data) {
        let bytes = std::fs::read(&f).unwrap();
        for plain in ["ops@example.com", "Project Nightingale", "ci deploy key"] {
            assert!(
                !bytes
                    .windows(plain.len())
                    .any(|w| w.eq_ignore_ascii_case(plain.as_bytes())),
                "{} contains {plain:?} in plaintext",
                f.display()
            );
        }
    }
    assert_eq!(
        live["name"], "ci deploy key",
        "names still read back through the store"
    );

    // Revoke with the CLI while the server runs: the very next request is refused.
    let revoked = ok(&data, &["keys", "revoke", &key_id]);
    assert_eq!(revoked, key_id);
    let res = c.get(&url).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let out = cli(&bin(), &data, &["keys", "list", "--json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == key_id.as_str())
        .unwrap();
    assert!(row["revoked_at"].is_string());

    // Graceful stop on SIGTERM.
    let mut srv = srv;
    let status = tokio::task::spawn_blocking(move || srv.terminate(Duration::from_secs(15)).unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn cli_errors_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let e = fails(
        &data,
        &[
            "projects",
            "create",
            "--account",
            "nobody@example.com",
            "--name",
            "x",
        ],
    );
    assert!(e.contains("no account"), "{e}");
    let e = fails(&data, &["keys", "create", "--project", "proj_nope"]);
    assert!(e.contains("proj_"), "{e}");
    let e = fails(&data, &["accounts", "create", "--email", "not-an-email"]);
    assert!(e.contains("not a valid email"), "{e}");
    ok(&data, &["accounts", "create", "--email", "a@example.com"]);
    let e = fails(&data, &["accounts", "create", "--email", "A@example.com"]);
    assert!(e.contains("already exists"), "{e}");
    let e = fails(&data, &["keys", "revoke", "key_0000000000000000000000"]);
    assert!(e.contains("no key"), "{e}");
    let out = ok(&data, &["accounts", "set-tier", "a@example.com", "business"]);
    assert!(out.starts_with("acct_"));
    // A password reset link: single use, its token 64 hex characters; unknown accounts fail.
    let link = ok(&data, &["accounts", "reset-password", "a@example.com"]);
    let token = link
        .strip_prefix("https://127.0.0.1:8443/console/setup?token=")
        .unwrap_or_else(|| panic!("{link}"));
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{link}"
    );
    let e = fails(&data, &["accounts", "reset-password", "nobody@example.com"]);
    assert!(e.contains("no account"), "{e}");
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\nbody_limt = 5\n").unwrap();
    let e = fails(&data, &["--config", cfg.to_str().unwrap(), "serve"]);
    assert!(e.contains("body_limt") && e.contains("bad.toml"), "{e}");
    std::fs::write(&cfg, "[server]\nbody_limit = \"lots\"\n").unwrap();
    let e = fails(&data, &["--config", cfg.to_str().unwrap(), "serve"]);
    assert!(e.contains("lots"), "{e}");
    std::fs::write(&cfg, "[auth]\nkey_cache_ttl = \"10s\"\n").unwrap();
    let e = fails(&data, &["--config", cfg.to_str().unwrap(), "serve"]);
    assert!(e.contains("key_cache_ttl"), "{e}");
    std::fs::write(&cfg, "[models.\"Bad/Slug\"]\nbackend = \"builtin\"\n").unwrap();
    let e = fails(&data, &["--config", cfg.to_str().unwrap(), "models", "list"]);
    assert!(e.contains("Bad/Slug"), "{e}");
    let e = fails(&data, &["--config", "/nonexistent/skygate.toml", "serve"]);
    assert!(e.contains("does not exist"), "{e}");
    // Environment overlay is validated too.
    let out = std::process::Command::new(bin())
        .args(["--data-dir", data.to_str().unwrap(), "serve"])
        .env("SKYGATE_SERVER__NO_SUCH_KEY", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}

#[test]
fn config_file_in_the_data_dir_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("skygate.toml"),
        "[models.my-echo]\nbackend = \"builtin\"\nbuiltin = \"echo\"\ntest_ok = true\ndescription = \"mine\"\n",
    )
    .unwrap();
    let out = cli(&bin(), &data, &["models", "list", "--json"]).unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["namespace"] == "my-echo" && m["description"] == "mine"));
}

#[test]
fn start_failures_exit_non_zero_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tmp.path().join("data");
    let e = fails(&data, &["serve", "--listen", &addr]);
    assert!(e.contains("cannot listen") && e.contains(&addr), "{e}");
    // Data dir that cannot be created (its parent is a file).
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = fails(&file.join("data"), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(e.contains("data dir"), "{e}");
    // Corrupt TLS files from an earlier start.
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    drop(srv);
    let ca = data.join("tls").join("ca.pem");
    std::fs::write(
        &ca,
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = fails(&data, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(e.contains("ca.pem"), "{e}");
}

#[test]
fn help_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["accounts", "create", "--help"],
        vec!["projects", "create", "--help"],
        vec!["keys", "create", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "revoke", "--help"],
        vec!["models", "list", "--help"],
    ] {
        let out = std::process::Command::new(bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn migrate_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &["migrate"]);
    ok(&data, &["migrate"]);
    assert!(data.join("skygate.db").is_file());
}

/// `accounts erase` against a running server: the account's keys are refused at once, its email is
/// free again, and its sealed data in a copy of the database taken before (a backup) cannot be read.
#[tokio::test]
async fn erase_an_account_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &["accounts", "create", "--email", "gone@example.com"]);
    let proj = ok(
        &data,
        &[
            "projects",
            "create",
            "--account",
            "gone@example.com",
            "--name",
            "Doomed Project",
        ],
    );
    let key = ok(&data, &["keys", "create", "--project", &proj]);
    // The backup is the database file with its WAL (SQLite keeps recent commits there).
    let backup = tmp.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    for f in ["skygate.db", "skygate.db-wal"] {
        if data.join(f).exists() {
            std::fs::copy(data.join(f), backup.join(f)).unwrap();
        }
    }

    let srv = tokio::task::spawn_blocking({
        let data = data.clone();
        move || BinaryServer::start(&bin(), &data, &[]).unwrap()
    })
    .await
    .unwrap();
    let c = client(&srv.ca_path);
    let url = format!("https://{}/v1/models", srv.addr);
    assert_eq!(
        c.get(&url)
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let err = fails(&data, &["accounts", "erase", "gone@example.com"]);
    assert!(err.contains("--yes"), "{err}");
    ok(&data, &["accounts", "erase", "gone@example.com", "--yes"]);
    assert_eq!(
        c.get(&url)
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let err = fails(
        &data,
        &[
            "projects",
            "create",
            "--account",
            "gone@example.com",
            "--name",
            "x",
        ],
    );
    assert!(err.contains("no account"), "{err}");
    ok(&data, &["accounts", "create", "--email", "gone@example.com"]);

    // The backup still holds the old rows, but their shred key is gone: pointing a server's data dir at
    // the backup, the erased account's values do not open.
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(data.join("master.key"), restored.join("master.key")).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(data.join("keyring"))
        .arg(&restored)
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["skygate.db", "skygate.db-wal"] {
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), restored.join(f)).unwrap();
        }
    }
    let out = cli(&bin(), &restored, &["keys", "list", "--json"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the erased account's data opened from a backup"
    );
    assert!(err.contains("does not exist") || err.contains("shred"), "{err}");
    let mut srv = srv;
    tokio::task::spawn_blocking(move || srv.terminate(Duration::from_secs(15)).unwrap())
        .await
        .unwrap();
}

//! `skygate selftest` against the real binary: every check passes on a fresh deployment; a deliberately
//! weakened one (rotation overdue, an audit row edited, `sandbox.mode = "none-unsafe"`, webhooks to
//! private networks allowed) fails exactly those checks; a TLS server that still speaks TLS 1.2 is caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skygate_testkit::binary::{cli, BinaryServer};

mod common;
use common::{bin, ok, status_of, Api};

/// The offline RustSec database beside the checkout (`../shared/advisory-db`), as CI uses it.
fn advisory_db() -> Option<PathBuf> {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/advisory-db");
    if db.join("crates").is_dir() {
        return Some(db);
    }
    skygate_testkit::skip(
        "selftest",
        &format!("no RustSec advisory database at {}", db.display()),
    );
    None
}

fn selftest(data: &Path, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["selftest", "--json"];
    args.extend_from_slice(extra);
    let out = cli(&bin(), data, &args).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["passed"], out.status.success(), "exit code follows the verdict");
    (out.status.success(), v)
}

fn results(v: &Value) -> Vec<(String, String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn status<'a>(r: &'a [(String, String, String)], check: &str) -> (&'a str, &'a str) {
    let (_, s, d) = r
        .iter()
        .find(|(c, ..)| c == check)
        .unwrap_or_else(|| panic!("no check {check}: {r:?}"));
    (s, d)
}

#[tokio::test]
async fn fresh_deployment_passes_and_weakened_one_fails_the_right_checks() {
    let Some(db) = advisory_db() else { return };
    let db = db.to_str().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let started = Instant::now();
    let acct = ok(&data, &["accounts", "create", "--email", "st@example.com"]);
    let proj = ok(&data, &["projects", "create", "--account", &acct, "--name", "p"]);
    let key = ok(&data, &["keys", "create", "--project", &proj]);
    let srv = tokio::task::spawn_blocking({
        let data = data.clone();
        move || BinaryServer::start(&bin(), &data, &[]).unwrap()
    })
    .await
    .unwrap();
    let p = Api::new(&srv, &key)
        .post(json!({"model": "sky-text", "input": {"prompt": "sealed"}, "await": true}))
        .await;
    assert_eq!(status_of(&p), "succeeded", "{p}");
    let url = format!("https://{}", srv.addr);
    let target = ["--url", url.as_str(), "--advisory-db", db.as_str()];

    // Fresh: everything passes but the adoption of 2FA, which is a warning only.
    let (passed, v) = selftest(&data, &target);
    let r = results(&v);
    assert!(passed, "{r:#?}");
    for (check, s, d) in &r {
        let want = if check == "accounts.two_factor" {
            "WARN"
        } else {
            "PASS"
        };
        assert_eq!(s, want, "{check}: {d}");
    }
    for check in [
        "tls.versions",
        "tls.certificate",
        "transport.no_plaintext",
        "auth.bad_key",
        "keyring.provider",
        "keyring.rotation",
        "keyring.rewrap",
        "storage.sealed_sample",
        "retention.sweeper",
        "sandbox",
        "webhooks.ssrf_guard",
        "accounts.two_factor",
        "audit.chain",
        "dependencies.advisories",
    ] {
        status(&r, check);
    }
    assert!(status(&r, "storage.sealed_sample").1.contains("opened"));
    assert!(status(&r, "tls.versions").1.contains("TLS 1.2, 1.1 and 1.0"));
    // The table form says the same, one line per check.
    let out = cli(&bin(), &data, &["selftest", "--url", &url, "--advisory-db", &db]).unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tls.versions") && l.contains("PASS")),
        "{table}"
    );
    // Without an advisory database the dependency check cannot pass, but only warns.
    let (passed, v) = selftest(&data, &["--url", &url]);
    assert!(passed);
    assert_eq!(status(&results(&v), "dependencies.advisories").0, "WARN");

    // Weakened: an audit row edited, rotation overdue, no sandbox, webhooks to private networks.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("skygate.db").display()))
        .await
        .unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT MIN(seq) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    let edited = sqlx::query("UPDATE audit_log SET detail = 'nothing to see' WHERE seq = $1")
        .bind(seq)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    pool.close().await;
    let weak = tmp.path().join("weak.toml");
    std::fs::write(
        &weak,
        "[keyring]\nrotation_period = \"1m\"\n[sandbox]\nmode = \"none-unsafe\"\n\
         [webhooks]\nallow_private_networks = true\n",
    )
    .unwrap();
    // The key version was made when the data dir was; wait until it is older than a minute.
    let old_enough = Duration::from_secs(62);
    if let Some(left) = old_enough.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let weak_args = [
        "--config",
        weak.to_str().unwrap(),
        "--url",
        &url,
        "--advisory-db",
        &db,
    ];
    let (passed, v) = selftest(&data, &weak_args);
    assert!(!passed);
    let r = results(&v);
    for check in [
        "keyring.rotation",
        "sandbox",
        "webhooks.ssrf_guard",
        "audit.chain",
    ] {
        assert_eq!(status(&r, check).0, "FAIL", "{check}: {r:#?}");
    }
    assert!(status(&r, "keyring.rotation").1.contains("overdue"));
    assert!(status(&r, "sandbox").1.contains("none-unsafe"));
    let (_, chain) = status(&r, "audit.chain");
    assert!(chain.contains(&format!("entry {seq}")), "{chain}");
    for check in [
        "tls.versions",
        "auth.bad_key",
        "storage.sealed_sample",
        "dependencies.advisories",
    ] {
        assert_eq!(status(&r, check).0, "PASS", "{check}");
    }
    let out = cli(
        &bin(),
        &data,
        &["--config", weak.to_str().unwrap(), "selftest", "--url", &url],
    )
    .unwrap();
    assert!(!out.status.success(), "the table form exits 1 too");
    drop(srv);
}

/// A server that still accepts TLS 1.2 (openssl's `s_server`, on a loopback port) fails `tls.versions`,
/// and one that is not skygate fails `auth.bad_key`: the probes can fail.
#[tokio::test]
async fn a_tls12_server_is_caught() {
    if Command::new("openssl").arg("version").output().is_err() {
        skygate_testkit::skip("a_tls12_server_is_caught", "no openssl command");
        return;
    }
    // skygate's own certificate and CA (made at the first start), served by a TLS 1.2-capable server.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    drop(srv);
    let tls = data.join("tls");
    let (cert, key, ca) = (tls.join("server.pem"), tls.join("server.key"), tls.join("ca.pem"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}");
    let (passed, v) = selftest(&data, &["--url", &url, "--ca", ca.to_str().unwrap()]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(!passed);
    let r = results(&v);
    let (s, d) = status(&r, "tls.versions");
    assert_eq!(s, "FAIL");
    assert!(d.contains("TLS 1.2"), "{d}");
    assert_eq!(status(&r, "auth.bad_key").0, "FAIL");
}

//! What the real-binary tests share: the binary, CLI calls that must succeed, a data dir with a key,
//! and an API client for a running `BinaryServer`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use skygate_testkit::binary::{cli, last_line, BinaryServer};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skygate"))
}

pub fn ok(data: &Path, args: &[&str]) -> String {
    let out = cli(&bin(), data, args).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_line(&out)
}

/// Writes `skygate.toml` into the data dir and creates a live key.
pub fn setup(data: &Path, toml: &str) -> String {
    setup_project(data, toml).1
}

/// As [`setup`]; returns the project id and the key.
pub fn setup_project(data: &Path, toml: &str) -> (String, String) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("skygate.toml"), toml).unwrap();
    let acct = ok(data, &["accounts", "create", "--email", "p@example.com"]);
    let proj = ok(data, &["projects", "create", "--account", &acct, "--name", "p"]);
    let key = ok(data, &["keys", "create", "--project", &proj]);
    (proj, key)
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Api {
    pub fn new(srv: &BinaryServer, key: &str) -> Api {
        Api {
            client: skygate_testkit::client_trusting(&std::fs::read(&srv.ca_path).unwrap()),
            base: format!("https://{}", srv.addr),
            key: key.to_owned(),
        }
    }

    pub async fn post(&self, body: Value) -> Value {
        let res = self
            .client
            .post(format!("{}/v1/predictions", self.base))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        res.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Every prediction of the key's project.
    pub async fn all(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for page in 1.. {
            let l = self
                .get(&format!("/v1/predictions?per_page=50&page={page}"))
                .await;
            let data = l["data"].as_array().unwrap().clone();
            let last = l["pagination"]["last_page"].as_u64().unwrap();
            out.extend(data);
            if page >= last {
                break;
            }
        }
        out
    }
}

pub fn status_of(v: &Value) -> &str {
    v["status"].as_str().unwrap()
}

pub fn is_terminal(v: &Value) -> bool {
    matches!(status_of(v), "succeeded" | "failed" | "cancelled")
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Two nodes' data dirs for one deployment: `a` set up with `toml` and a live key, `b` a copy of it
/// whose keyring directory is `a`'s own (nodes share the database and the key provider; a local keyring
/// also holds the retention shred keys, so it must be one directory, not a copy).
pub struct TwoNodes {
    pub a: PathBuf,
    pub b: PathBuf,
    pub project: String,
    pub key: String,
    _tmp: tempfile::TempDir,
}

impl TwoNodes {
    pub fn new(toml: &str) -> TwoNodes {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (project, key) = setup_project(&a, toml);
        copy_dir(&a, &b);
        std::fs::remove_dir_all(b.join("keyring")).unwrap();
        std::os::unix::fs::symlink(a.join("keyring"), b.join("keyring")).unwrap();
        TwoNodes {
            a,
            b,
            project,
            key,
            _tmp: tmp,
        }
    }
}

/// A recursive copy that keeps permissions (the keyring refuses a directory others can read).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
        std::fs::set_permissions(&target, e.metadata().unwrap().permissions()).unwrap();
    }
}

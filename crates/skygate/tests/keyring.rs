//! Key rotation end to end, through the real binary: `keyring status|rotate|rewrap|retire` on a data dir
//! with real data, and the crash-safety promise: a `skygate keyring …` process killed with SIGKILL at a
//! random instant of rotate, rewrap or retire leaves every stored value readable, on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use skygate_core::{AccountId, Tier, Timestamp};
use skygate_server::config::{Config, Overrides};
use skygate_server::{admin, open_backend};
use skygate_testkit::binary::last_line;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skygate"))
}

/// Runs the binary with `env` added, to completion.
fn run(data: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(data: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = run(data, env, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    last_line(&out)
}

fn status(data: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let out = run(data, env, &["keyring", "status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refs(st: &serde_json::Value, version: u64) -> u64 {
    st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .map_or(0, |v| v["references"].as_u64().unwrap())
}

/// The config the binary would load for `data` with `env` applied (env vars are read by `Config::load`).
fn config(data: &Path, database_url: Option<&str>) -> Arc<Config> {
    let mut c = Config::load(&Overrides { data_dir: Some(data.to_owned()), ..Default::default() }).unwrap();
    c.storage.database_url = database_url.map(str::to_owned);
    Arc::new(c)
}

/// Creates `n` accounts, each with a project and a key, in-process (fast), returning the account ids.
async fn populate(cfg: &Config, n: usize) -> Vec<AccountId> {
    let b = open_backend(cfg).await.unwrap();
    let now = Timestamp::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let a = admin::create_account(&b.store, &format!("user{i}@example.com"), Tier::Free, now)
            .await
            .unwrap();
        let p = admin::create_project(&b.store, a.id.as_str(), &format!("project {i}"), now)
            .await
            .unwrap();
        admin::create_key(&b.store, b.hasher.as_ref(), p.id.as_str(), skygate_core::Mode::Live, Some("k"), None, now)
            .await
            .unwrap();
        ids.push(a.id);
    }
    b.store.close().await;
    ids
}

/// Every value reads back with its original plaintext.
async fn all_readable(cfg: &Config, ids: &[AccountId]) {
    let b = open_backend(cfg).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let a = b.store.account(id).await.unwrap().unwrap_or_else(|| panic!("account {i} missing"));
        assert_eq!(a.email, format!("user{i}@example.com"));
        let p = b.store.list_projects(id).await.unwrap();
        assert_eq!(p[0].name, format!("project {i}"));
        let k = b.store.list_api_keys(&p[0].id).await.unwrap();
        assert_eq!(k[0].name, "k");
    }
    b.store.close().await;
}

/// A small xorshift, seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let seed = std::env::var("SKYGATE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("kill-point seed: SKYGATE_TEST_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts `skygate keyring ARGS` and SIGKILLs it after a random delay (it may also finish first).
fn kill_midway(data: &Path, env: &[(&str, &str)], args: &[&str], rng: &mut Rng) -> bool {
    let mut child = Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5 + rng.below(400)));
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    killed
}

async fn crash_matrix(data: &Path, env: &[(&str, &str)], database_url: Option<&str>) {
    let cfg = config(data, database_url);
    let ids = populate(&cfg, 150).await;
    all_readable(&cfg, &ids).await;
    let mut rng = Rng::new();
    let mut kills = 0;
    for round in 0..6 {
        let args: &[&str] = match round % 3 {
            0 => &["keyring", "rotate"],
            1 => &["keyring", "rewrap", "--force"],
            _ => &["keyring", "retire", "1"],
        };
        if kill_midway(data, env, args, &mut rng) {
            kills += 1;
        }
        // After every kill, every value is readable by a fresh process.
        all_readable(&cfg, &ids).await;
    }
    eprintln!("{kills} of 6 keyring commands were killed mid-run");
    // Finish the job cleanly: everything moves to the newest version and the old ones can go.
    ok(data, env, &["keyring", "rotate"]);
    ok(data, env, &["keyring", "rewrap", "--force"]);
    let st = status(data, env);
    assert_eq!(st["pending_rewrap"], 0, "{st}");
    assert_eq!(st["unknown_references"], 0, "{st}");
    std::thread::sleep(skygate_server::keyring::PROPAGATION);
    let current = st["current_version"].as_u64().unwrap();
    for v in st["versions"].as_array().unwrap() {
        if v["state"] == "active" && v["version"].as_u64().unwrap() != current {
            ok(data, env, &["keyring", "retire", &v["version"].to_string()]);
        }
    }
    all_readable(&cfg, &ids).await;
}

#[tokio::test]
async fn rotate_rewrap_retire_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Small batches, so rewrap takes several round trips.
    let env = [("SKYGATE_KEYRING__REWRAP_BATCH", "7")];
    let cfg = config(&data, None);
    let ids = populate(&cfg, 20).await;

    let st = status(&data, &env);
    assert_eq!(st["provider"], "local");
    assert_eq!(st["current_version"], 1);
    assert_eq!(refs(&st, 1), 60, "{st}");
    assert_eq!(ok(&data, &env, &["keyring", "rotate"]), "2");

    // Retiring is refused while values reference the version, and for the current version.
    let out = run(&data, &env, &["keyring", "retire", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ago") || err.contains("still wraps 60"), "{err}");
    let out = run(&data, &env, &["keyring", "retire", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("current version"));

    // Without --force rewrap only reports; with it, everything moves, with a progress display.
    let out = run(&data, &env, &["keyring", "rewrap"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("60 value(s) wait"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&data, &env, &["keyring", "rewrap", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rewrap [") && err.contains("rewrapped 60 value(s)"), "{err}");
    let st = status(&data, &env);
    assert_eq!((refs(&st, 1), refs(&st, 2), st["pending_rewrap"].as_u64()), (0, 60, Some(0)), "{st}");

    std::thread::sleep(skygate_server::keyring::PROPAGATION);
    assert_eq!(ok(&data, &env, &["keyring", "retire", "1"]), "1");
    let st = status(&data, &env);
    assert_eq!(st["versions"][0]["state"], "retired", "{st}");
    all_readable(&cfg, &ids).await;

    // The human-readable status names every version.
    let out = run(&data, &env, &["keyring", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retired") && text.contains("current"), "{text}");
}

#[tokio::test]
async fn sigkill_during_keyring_commands_loses_nothing_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crash_matrix(&data, &[("SKYGATE_KEYRING__REWRAP_BATCH", "5")], None).await;
}

#[tokio::test]
async fn sigkill_during_keyring_commands_loses_nothing_postgres() {
    let Some(base) = skygate_testkit::env_or_skip("SKYGATE_TEST_DATABASE_URL", "sigkill_during_keyring_commands_loses_nothing_postgres")
    else {
        return;
    };
    let schema = format!("k_{}", std::process::id());
    let owner = skygate_store::postgres::PgStore::connect_in_schema(
        &base,
        &schema,
        skygate_store::Sealer::ephemeral().unwrap(),
    )
    .await
    .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let outcome = tokio::spawn({
        let (data, url) = (data.clone(), url.clone());
        async move {
            let env = [("SKYGATE_KEYRING__REWRAP_BATCH", "5"), ("SKYGATE_DATABASE_URL", url.as_str())];
            crash_matrix(&data, &env, Some(&url)).await
        }
    })
    .await;
    owner.drop_schema().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

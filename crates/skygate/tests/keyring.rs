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

mod common;
use common::bin;

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
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// The config the binary loads for `data` with `env` applied: the same keys, set on the struct.
fn config(data: &Path, env: &[(&str, &str)]) -> Arc<Config> {
    let mut c = Config::load(&Overrides {
        data_dir: Some(data.to_owned()),
        ..Default::default()
    })
    .unwrap();
    for (k, v) in env {
        match *k {
            "SKYGATE_DATABASE_URL" => c.storage.database_url = Some((*v).to_owned()),
            "SKYGATE_KEYRING__REWRAP_BATCH" => c.keyring.rewrap_batch = v.parse().unwrap(),
            "SKYGATE_KEYRING__PROVIDER" => c.keyring.provider = (*v).to_owned(),
            "SKYGATE_KEYRING__PKCS11_MODULE" => c.keyring.pkcs11_module = Some(PathBuf::from(v)),
            "SKYGATE_KEYRING__PKCS11_TOKEN_LABEL" => c.keyring.pkcs11_token_label = Some((*v).to_owned()),
            "SKYGATE_KEYRING__PKCS11_PIN_ENV" => c.keyring.pkcs11_pin_env = (*v).to_owned(),
            // Read by the provider itself from this process's environment (set by `softhsm_env`).
            "SOFTHSM2_CONF" | "SKYGATE_TEST_E2E_PIN" => {}
            other => panic!("config() does not know {other}"),
        }
    }
    Arc::new(c)
}

/// A fresh SoftHSM2 token for this test binary, and the environment that points skygate at it (the
/// binary gets it through `env`, this process through its own environment). `None` after skipping.
fn softhsm_env(test: &str, dir: &Path, in_process: bool) -> Option<Vec<(&'static str, String)>> {
    let module = skygate_testkit::env_or_skip("SKYGATE_TEST_PKCS11_MODULE", test)?;
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "skygate-e2e",
            "--pin",
            "9876",
            "--so-pin",
            "1234",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (apt package softhsm2) is needed with SKYGATE_TEST_PKCS11_MODULE");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conf = conf.display().to_string();
    if in_process {
        // This process opens the same token for its in-process checks (only one test per binary may).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var("SKYGATE_TEST_E2E_PIN", "9876");
    }
    Some(vec![
        ("SOFTHSM2_CONF", conf),
        ("SKYGATE_TEST_E2E_PIN", "9876".into()),
        ("SKYGATE_KEYRING__PROVIDER", "pkcs11".into()),
        ("SKYGATE_KEYRING__PKCS11_MODULE", module),
        ("SKYGATE_KEYRING__PKCS11_TOKEN_LABEL", "skygate-e2e".into()),
        ("SKYGATE_KEYRING__PKCS11_PIN_ENV", "SKYGATE_TEST_E2E_PIN".into()),
    ])
}

/// Creates `n` accounts, each with a project and a key, in-process (fast), returning the account ids.
async fn populate(cfg: &Config, n: usize, tag: &str) -> Vec<(AccountId, String)> {
    let b = open_backend(cfg).await.unwrap();
    let now = Timestamp::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let a = admin::create_account(&b.store, &format!("{tag}{i}@example.com"), Tier::Free, now)
            .await
            .unwrap();
        let p = admin::create_project(&b.store, a.id.as_str(), &format!("project {tag}{i}"), now)
            .await
            .unwrap();
        admin::create_key(
            &b.store,
            b.hasher.as_ref(),
            &skygate_server::config::AccountsConfig::default(),
            p.id.as_str(),
            skygate_core::Mode::Live,
            Some("k"),
            None,
            now,
        )
        .await
        .unwrap();
        ids.push((a.id, format!("{tag}{i}")));
    }
    b.store.close().await;
    ids
}

/// Every value reads back with its original plaintext.
async fn all_readable(cfg: &Config, ids: &[(AccountId, String)]) {
    let b = open_backend(cfg).await.unwrap();
    for (id, tag) in ids {
        let a = b
            .store
            .account(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("account {tag} missing"));
        assert_eq!(a.email, format!("{tag}@example.com"));
        let p = b.store.list_projects(id).await.unwrap();
        assert_eq!(p[0].name, format!("project {tag}"));
        let k = b.store.list_api_keys(&p[0].id).await.unwrap();
        assert_eq!(k[0].name, "k");
    }
    b.store.close().await;
}

/// A small xorshift, seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let seed = std::env::var("SKYGATE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
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

/// Starts `skygate keyring ARGS` and SIGKILLs it after a random delay below `within` (it may also finish
/// first). Returns whether it was killed while running.
fn kill_midway(data: &Path, env: &[(&str, &str)], args: &[&str], within: Duration, rng: &mut Rng) -> bool {
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
    let micros = within.as_micros().max(1) as u64;
    std::thread::sleep(Duration::from_micros(rng.below(micros)));
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    killed
}

/// How long a full run of `skygate ARGS` takes here.
fn timed(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Duration {
    let start = std::time::Instant::now();
    ok(data, env, args);
    start.elapsed()
}

/// SoftHSM2's file store rewrites its token metadata (`token.object`: label, PIN blobs, flags) in place,
/// truncate then write, on every successful `C_Login`. A SIGKILL landing inside that write leaves the
/// token unreadable (`C_GetTokenInfo` answers `CKR_GENERAL_ERROR` for good): a limitation of SoftHSM's
/// file backend (Debian builds it without the transactional SQLite one), not of skygate, whose keys are
/// separate objects. So the crash matrix on a token keeps a copy of that metadata file and puts it back
/// only when a kill has cut it short; key objects are never touched.
struct TokenMetadata {
    path: PathBuf,
    copy: Vec<u8>,
    repairs: usize,
}

impl TokenMetadata {
    fn snapshot(tokens: &Path) -> Self {
        let dir = std::fs::read_dir(tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("token.object").exists())
            .expect("an initialised SoftHSM2 token directory");
        let path = dir.join("token.object");
        let copy = std::fs::read(&path).unwrap();
        Self {
            path,
            copy,
            repairs: 0,
        }
    }

    fn repair_if_cut_short(&mut self) {
        let now = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if now < self.copy.len() as u64 {
            std::fs::write(&self.path, &self.copy).unwrap();
            self.repairs += 1;
        }
    }
}

/// `tokens`: the SoftHSM2 token directory when the keys are on a token.
async fn crash_matrix(data: &Path, env: &[(&str, &str)], tokens: Option<&Path>) {
    let cfg = config(data, env);
    let ids = populate(&cfg, 150, "crash").await;
    all_readable(&cfg, &ids).await;
    let mut metadata = tokens.map(TokenMetadata::snapshot);
    // Kill points are drawn over each command's measured run time, so most kills land mid-run. A
    // command that finished before its kill point shrinks that command's window, and rounds go on
    // (up to a cap) until enough kills landed mid-run: a busy machine makes runs slower or faster
    // than the one measured, and the matrix must still kill mid-run rather than after the fact.
    let t_rotate = timed(data, env, &["keyring", "rotate"]);
    let t_rewrap = timed(data, env, &["keyring", "rewrap", "--force"]);
    let mut windows = [t_rotate, t_rewrap, t_rotate];
    let mut rng = Rng::new();
    let (mut kills, mut rounds) = (0, 0);
    while rounds < 12 || (kills < 6 && rounds < 48) {
        let kind = rounds % 3;
        let args: &[&str] = match kind {
            0 => &["keyring", "rotate"],
            1 => &["keyring", "rewrap", "--force"],
            // Refused (values still reference it, or it is already retired) or done: either way safe.
            _ => &["keyring", "retire", "1"],
        };
        if kill_midway(data, env, args, windows[kind], &mut rng) {
            kills += 1;
        } else {
            windows[kind] = windows[kind] * 3 / 4;
        }
        rounds += 1;
        if let Some(m) = metadata.as_mut() {
            m.repair_if_cut_short();
        }
        // After every kill, every value is readable by a fresh process.
        all_readable(&cfg, &ids).await;
    }
    eprintln!(
        "{kills} of {rounds} keyring commands were killed mid-run (rotate {t_rotate:?}, rewrap {t_rewrap:?}); \
         SoftHSM2 token metadata cut short by a kill and put back: {}",
        metadata.as_ref().map_or(0, |m| m.repairs)
    );
    assert!(
        kills >= 6,
        "only {kills} of {rounds} commands were killed before finishing: the test proved little"
    );
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
    // Small batches, so rewrap takes several round trips.
    rotation_flow(
        &tmp.path().join("data"),
        &[("SKYGATE_KEYRING__REWRAP_BATCH", "7")],
        "local",
    )
    .await;
}

/// The same flow with the keys in a SoftHSM2 token over PKCS#11.
#[tokio::test]
async fn rotate_rewrap_retire_through_the_cli_on_pkcs11() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(hsm) = softhsm_env("rotate_rewrap_retire_through_the_cli_on_pkcs11", tmp.path(), true) else {
        return;
    };
    let mut env: Vec<(&str, &str)> = hsm.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SKYGATE_KEYRING__REWRAP_BATCH", "7"));
    let data = tmp.path().join("data");
    rotation_flow(&data, &env, "pkcs11").await;
    // Nothing key-like is kept in the data dir with an HSM: no keyring, no master key.
    assert!(!data.join("keyring").exists() && !data.join("master.key").exists());
    // And a crash at any point of rotate, rewrap or retire loses nothing here either.
    crash_matrix(&data, &env, Some(&tmp.path().join("tokens"))).await;
}

async fn rotation_flow(data: &Path, env: &[(&str, &str)], provider: &str) {
    let data = data.to_owned();
    let cfg = config(&data, env);
    let ids = populate(&cfg, 20, "flow").await;

    let st = status(&data, env);
    assert_eq!(st["provider"], provider);
    assert_eq!(st["current_version"], 1);
    assert_eq!(refs(&st, 1), 60, "{st}");
    assert_eq!(ok(&data, env, &["keyring", "rotate"]), "2");

    // Retiring is refused while values reference the version, and for the current version.
    let out = run(&data, env, &["keyring", "retire", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ago") || err.contains("still wraps 60"), "{err}");
    let out = run(&data, env, &["keyring", "retire", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("current version"));

    // Without --force rewrap only reports; with it, everything moves, with a progress display.
    let out = run(&data, env, &["keyring", "rewrap"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("60 value(s) wait"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&data, env, &["keyring", "rewrap", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("rewrap [") && err.contains("rewrapped 60 value(s)"),
        "{err}"
    );
    let st = status(&data, env);
    assert_eq!(
        (refs(&st, 1), refs(&st, 2), st["pending_rewrap"].as_u64()),
        (0, 60, Some(0)),
        "{st}"
    );

    std::thread::sleep(skygate_server::keyring::PROPAGATION);
    assert_eq!(ok(&data, env, &["keyring", "retire", "1"]), "1");
    let st = status(&data, env);
    assert_eq!(st["versions"][0]["state"], "retired", "{st}");
    all_readable(&cfg, &ids).await;

    // The human-readable status names every version.
    let out = run(&data, env, &["keyring", "status"]);
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
    let Some(base) = skygate_testkit::env_or_skip(
        "SKYGATE_TEST_DATABASE_URL",
        "sigkill_during_keyring_commands_loses_nothing_postgres",
    ) else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "k", |url| async move {
        let tmp = tempfile::tempdir().unwrap();
        let env = [
            ("SKYGATE_KEYRING__REWRAP_BATCH", "5"),
            ("SKYGATE_DATABASE_URL", url.as_str()),
        ];
        crash_matrix(&tmp.path().join("data"), &env, None).await
    })
    .await;
}

/// The one `error:` line of a failed command, checked to leak nothing in `forbidden`.
fn start_fails(data: &Path, env: &[(&str, &str)], forbidden: &[&str]) -> String {
    let out = run(data, env, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "serve started with {env:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for f in forbidden {
        assert!(!err.contains(f), "the error shows a secret: {err}");
    }
    lines[0].to_owned()
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Without the right keys the server refuses to start, with one clear line that names what failed and
/// never the key material, and touches no stored data.
#[test]
fn a_wrong_or_missing_master_key_or_hsm_refuses_to_start() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &[], &["accounts", "create", "--email", "keep@example.com"]);
    let db = digest(&data.join("skygate.db"));
    let master = digest(&data.join("master.key"));

    let wrong = base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]);
    let e = start_fails(&data, &[("SKYGATE_MASTER_KEY", &wrong)], &[&wrong]);
    assert!(e.contains("master key does not open keyring"), "{e}");
    let e = start_fails(
        &data,
        &[("SKYGATE_MASTER_KEY", "not base64 at all!")],
        &["not base64 at all"],
    );
    assert!(e.contains("SKYGATE_MASTER_KEY"), "{e}");

    // The master key file gone: refused, and no new master key is made beside the old keyring.
    std::fs::rename(data.join("master.key"), tmp.path().join("master.key.bak")).unwrap();
    let e = start_fails(&data, &[], &[]);
    assert!(e.contains("master key is missing"), "{e}");
    assert!(!data.join("master.key").exists());
    std::fs::rename(tmp.path().join("master.key.bak"), data.join("master.key")).unwrap();

    // A PKCS#11 module that is not there, or a PIN variable that is not set.
    let hsm = [
        ("SKYGATE_KEYRING__PROVIDER", "pkcs11"),
        ("SKYGATE_KEYRING__PKCS11_MODULE", "/nonexistent/libpkcs11.so"),
        ("SKYGATE_KEYRING__PKCS11_TOKEN_LABEL", "skygate"),
        ("SKYGATE_KEYRING__PKCS11_PIN_ENV", "SKYGATE_TEST_NO_SUCH_PIN"),
    ];
    let e = start_fails(&data, &hsm, &[]);
    assert!(
        e.contains("SKYGATE_TEST_NO_SUCH_PIN") && e.contains("not set"),
        "{e}"
    );
    let mut with_pin = hsm.to_vec();
    with_pin.push(("SKYGATE_TEST_NO_SUCH_PIN", "24681357"));
    let e = start_fails(&data, &with_pin, &["24681357"]);
    assert!(e.contains("/nonexistent/libpkcs11.so"), "{e}");

    // Nothing stored was touched, and the right key still opens everything.
    assert_eq!(digest(&data.join("skygate.db")), db);
    assert_eq!(digest(&data.join("master.key")), master);
    let out = run(&data, &[], &["accounts", "set-tier", "keep@example.com", "pro"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A wrong PIN on a real token: refused with the PKCS#11 reason, never the PIN.
#[test]
fn a_wrong_hsm_pin_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(hsm) = softhsm_env("a_wrong_hsm_pin_refuses_to_start", tmp.path(), false) else {
        return;
    };
    let mut env: Vec<(&str, &str)> = hsm.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.retain(|(k, _)| *k != "SKYGATE_TEST_E2E_PIN");
    env.push(("SKYGATE_TEST_E2E_PIN", "11112222"));
    let e = start_fails(&tmp.path().join("data"), &env, &["11112222"]);
    assert!(e.contains("PIN"), "{e}");
}

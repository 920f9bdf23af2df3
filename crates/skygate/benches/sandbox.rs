//! Sandbox cost, measured in one run (a load script in Rust; `harness = false`):
//!
//! 1. sandbox start + `/bin/true`, 200 runs, p50/p95 (and the helper's own setup time), beside the
//!    same `/bin/true` started without a sandbox (`sandbox.mode = "none-unsafe"`);
//! 2. end-to-end `POST /v1/predictions` with `await: true` of the built-in `sky-text` over TLS, 200
//!    sequential predictions against an in-process server with the sandbox, and against one with
//!    `sandbox.mode = "none-unsafe"`, interleaved in blocks so both see the same machine.
//!
//! 3. with `SKYGATE_BENCH_COG_VENV` (a virtualenv with `cog`, as scripts/test.sh makes in `.venv-cog`):
//!    one Cog prediction of `tests/cog/probe` in a fresh sandbox (server start, setup, `POST
//!    /predictions`), beside the same Cog server started, asked and stopped without a sandbox, and
//!    then the same prediction in a warm sandbox (`reuse = "tenant"`, after the first).
//!
//! Run: `cargo bench -p skygate --bench sandbox` (or `cargo test -p skygate --bench sandbox`, with
//! `SKYGATE_BENCH_HELPER=target/release/skygate`). Loopback only; bounded (well under a minute).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use skygate_core::models::{Backend, CommandModel};
use skygate_runtime::sandbox::Limits;
use skygate_runtime::{Job, RunError, Runner, SandboxMode, SandboxRunner, SandboxSettings};

const RUNS: usize = 200;

/// The helper binary: this build's `skygate`, or `SKYGATE_BENCH_HELPER` (e.g. a release build while
/// the harness itself runs in the dev profile).
fn helper() -> PathBuf {
    std::env::var_os("SKYGATE_BENCH_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skygate")))
}

fn settings(dir: &std::path::Path, mode: SandboxMode) -> SandboxSettings {
    SandboxSettings {
        mode,
        helper: helper(),
        job_root: dir.join(format!("jobs-{mode:?}")),
        ro_binds: Vec::new(),
        host_uid_base: 920_000,
        host_uids: 64,
        uid_locks: PathBuf::from("/dev/shm/skygate-uid-leases"),
        limits: Limits {
            cpu_seconds: 10,
            address_space: 1 << 30,
            file_size: 16 << 20,
            open_files: 128,
            processes: 32,
        },
        work_bytes: 16 << 20,
        out_bytes: 16 << 20,
        devices: Vec::new(),
        device_wait: Duration::from_secs(60),
        engine_runs: 2,
        engine_streams: 16,
        engine_queue: 64,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    println!(
        "{name:<44} n={:<4} p50 {:>8.2?}  p95 {:>8.2?}  mean {:>8.2?}",
        d.len(),
        pct(&d, 0.5),
        pct(&d, 0.95),
        mean
    );
}

async fn bin_true(runner: &SandboxRunner) -> (Duration, Option<u64>) {
    let m = CommandModel::new(["/bin/true"]);
    let t = Instant::now();
    let h = runner
        .start(Job {
            prediction_id: "bench".into(),
            backend: Backend::Command(m),
            input: json!({}),
            deadline: Duration::from_secs(10),
            tenant: None,
        })
        .unwrap();
    let (r, rep) = h.finish_with_report().await;
    let took = t.elapsed();
    // /bin/true prints nothing: the run is complete, it just has no output.
    match r {
        Err(RunError::Failed(m)) if m.contains("without an output") => {}
        other => panic!("unexpected result {other:?}"),
    }
    let rep = rep.unwrap();
    assert_eq!(rep.exit, "exited 0");
    (took, rep.sandboxed.then_some(rep.start_us))
}

async fn start_bench() {
    let dir = tempfile::Builder::new()
        .prefix("skygate-bench-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let sandboxed = SandboxRunner::new(settings(dir.path(), SandboxMode::Namespaces)).unwrap();
    let unsafe_ = SandboxRunner::new(settings(dir.path(), SandboxMode::NoneUnsafe)).unwrap();
    for _ in 0..10 {
        bin_true(&sandboxed).await;
        bin_true(&unsafe_).await;
    }
    let (mut with, mut setup, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (t, s) = bin_true(&sandboxed).await;
        with.push(t);
        setup.push(Duration::from_micros(s.unwrap_or(0)));
        without.push(bin_true(&unsafe_).await.0);
    }
    summary("sandbox start + /bin/true (spawn to result)", with);
    summary("  of which: helper setup + teardown", setup);
    summary("/bin/true without a sandbox (none-unsafe)", without);
}

async fn e2e_bench() {
    let start = |mode: &'static str| {
        skygate_testkit::TestServer::start_with(move |c| {
            c.sandbox.mode = mode.into();
            c.sandbox.helper = Some(helper());
            c.limits.enabled = false;
        })
    };
    let boxed = start("namespaces").await.unwrap();
    let open = start("none-unsafe").await.unwrap();
    let kb = boxed.new_key(skygate_core::Mode::Live).await.unwrap();
    let ko = open.new_key(skygate_core::Mode::Live).await.unwrap();
    let input = json!({"prompt": "hello sandbox", "mode": "upper"});
    async fn one(
        srv: &skygate_testkit::TestServer,
        k: &skygate_testkit::TestKey,
        input: &serde_json::Value,
    ) -> Duration {
        let t = Instant::now();
        let v = skygate_testkit::api::run(srv, k, "sky-text", input.clone()).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        t.elapsed()
    }
    for _ in 0..10 {
        one(&boxed, &kb, &input).await;
        one(&open, &ko, &input).await;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..RUNS / 20 {
        for _ in 0..20 {
            with.push(one(&boxed, &kb, &input).await);
        }
        for _ in 0..20 {
            without.push(one(&open, &ko, &input).await);
        }
    }
    summary("e2e await sky-text, sandbox (namespaces)", with);
    summary("e2e await sky-text, none-unsafe", without);
    boxed.stop().await.unwrap();
    open.stop().await.unwrap();
}

const COG_RUNS: usize = 20;

/// The test predictor and the venv with Cog, if `SKYGATE_BENCH_COG_VENV` is set.
fn cog_setup() -> Option<(PathBuf, PathBuf)> {
    let venv = PathBuf::from(std::env::var_os("SKYGATE_BENCH_COG_VENV")?);
    let probe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/cog/probe");
    Some((venv, probe.canonicalize().unwrap()))
}

/// One Cog prediction with the server started bare: spawn, poll the health check, predict, kill.
async fn bare_cog(venv: &std::path::Path, probe: &std::path::Path, port: u16) -> Duration {
    let t = Instant::now();
    let path = format!("{}:/usr/bin:/bin", venv.join("bin").display());
    let mut child = tokio::process::Command::new(venv.join("bin/python"))
        .args(["-m", "cog.server.http", "--host", "127.0.0.1"])
        .current_dir(probe)
        .env("PATH", path)
        .env("PORT", port.to_string())
        .env("COG_PREDICT_TYPE_STUB", "predict.py:Runner")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    loop {
        let ready = match client.get(format!("{base}/health-check")).send().await {
            Ok(r) => r.text().await.unwrap_or_default().contains("\"READY\""),
            Err(_) => false,
        };
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: serde_json::Value = client
        .post(format!("{base}/predictions"))
        .json(&json!({"id": "bench", "input": {"prompt": "bench"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["output"], "hello bench", "{v}");
    let took = t.elapsed();
    child.kill().await.unwrap();
    took
}

async fn cog_bench() {
    let Some((venv, probe)) = cog_setup() else {
        println!("Cog: skipped (set SKYGATE_BENCH_COG_VENV to a virtualenv with cog)");
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("skygate-bench-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let runner = SandboxRunner::new(settings(dir.path(), SandboxMode::Namespaces)).unwrap();
    let model = skygate_core::models::CogModel {
        run: CommandModel {
            dir: Some(probe.clone()),
            ..CommandModel::new(["/venv/bin/python", "-m", "cog.server.http", "--host", "127.0.0.1"])
        },
        predictor: "predict.py:Runner".into(),
        venv: Some(venv.clone()),
        warm_idle: None,
    };
    let boxed = || async {
        let t = Instant::now();
        let h = runner
            .start(Job {
                prediction_id: "bench".into(),
                backend: Backend::Cog(model.clone()),
                input: json!({"prompt": "bench"}),
                deadline: Duration::from_secs(60),
                tenant: None,
            })
            .unwrap();
        let out = h.finish().await;
        assert_eq!(out, Ok(skygate_runtime::Output::Text("hello bench".into())));
        t.elapsed()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    boxed().await;
    bare_cog(&venv, &probe, port).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..COG_RUNS {
        with.push(boxed().await);
        without.push(bare_cog(&venv, &probe, port).await);
    }
    summary("Cog prediction, fresh sandbox (start to result)", with);
    summary("Cog prediction, bare server (start to result)", without);
    // reuse = "tenant": the same account's predictions after the first go to its warm sandbox.
    let warm = skygate_core::models::CogModel {
        warm_idle: Some(Duration::from_secs(60)),
        ..model.clone()
    };
    let mut reused = Vec::new();
    for i in 0..=COG_RUNS {
        let t = Instant::now();
        let h = runner
            .start(Job {
                prediction_id: "bench".into(),
                backend: Backend::Cog(warm.clone()),
                input: json!({"prompt": "bench"}),
                deadline: Duration::from_secs(60),
                tenant: Some("acct_bench".into()),
            })
            .unwrap();
        assert_eq!(
            h.finish().await,
            Ok(skygate_runtime::Output::Text("hello bench".into()))
        );
        if i > 0 {
            reused.push(t.elapsed());
        }
    }
    summary("Cog prediction, warm sandbox (reuse = tenant)", reused);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: both run it once.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        start_bench().await;
        e2e_bench().await;
        cog_bench().await;
    });
}

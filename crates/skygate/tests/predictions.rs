//! Predictions through the real `skygate` binary: SIGKILL while predictions run and restart (nothing
//! lost, nothing stuck), on SQLite and PostgreSQL; and retention in real time (outputs downloadable
//! before the retention ends, destroyed after: 404, `data_removed`, object files gone).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use skygate_testkit::binary::BinaryServer;

mod common;
use common::{bin, files, is_terminal, setup, status_of, Api};

async fn kill_nine_then_restart(data: &Path, toml: &str) {
    const N: usize = 12;
    let key = setup(data, toml);
    let srv = BinaryServer::start(&bin(), data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let mut ids = Vec::new();
    for i in 0..N {
        let p = api
            .post(json!({"model": "countdown", "input": {"seconds": 1.5 + (i % 3) as f64 * 0.1}}))
            .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    // SIGKILL while some run and some wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = api.all().await;
        let running = all.iter().filter(|p| status_of(p) == "processing").count();
        let waiting = all.iter().filter(|p| status_of(p) == "pending").count();
        if running >= 2 && waiting >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw running and waiting predictions together"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = srv.pid();
    drop(srv); // SIGKILL, then reaped.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("State:\tZ")
        }
    );

    let srv = BinaryServer::start(&bin(), data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let before = api.all().await;
    let unfinished = before.iter().filter(|p| !is_terminal(p)).count();
    assert!(
        unfinished >= 4,
        "the kill should have interrupted work: {unfinished} unfinished"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let all = loop {
        let all = api.all().await;
        if all.iter().all(is_terminal) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "predictions stuck after restart: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(all.len(), N, "none lost");
    let mut got: Vec<_> = all.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    for p in &all {
        assert_eq!(status_of(p), "succeeded", "{p}");
        assert!(p["output"].as_str().unwrap().starts_with("done after"), "{p}");
    }
    drop(srv);
}

const QUEUE: &str = "[queue]\nworkers = 4\nlease = \"2s\"\n";

#[tokio::test]
async fn sigkill_while_predictions_run_then_restart_finishes_every_one_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    kill_nine_then_restart(&tmp.path().join("data"), QUEUE).await;
}

#[tokio::test]
async fn sigkill_while_predictions_run_then_restart_finishes_every_one_postgres() {
    let Some(base) = skygate_testkit::env_or_skip(
        "SKYGATE_TEST_DATABASE_URL",
        "sigkill_while_predictions_run_then_restart_finishes_every_one_postgres",
    ) else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "q", |url| async move {
        let tmp = tempfile::tempdir().unwrap();
        let toml = format!("{QUEUE}[storage]\ndatabase_url = \"{url}\"\n");
        kill_nine_then_restart(&tmp.path().join("data"), &toml).await;
    })
    .await;
}

#[tokio::test]
async fn retention_destroys_outputs_in_real_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = setup(
        &data,
        "[outputs]\nretention = \"3s\"\nsweep_interval = \"250ms\"\n",
    );
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let p = api
        .post(json!({"model": "sky-image", "input": {"prompt": "tide", "width": 32, "height": 32, "steps": 1}, "await": true}))
        .await;
    assert_eq!(status_of(&p), "succeeded", "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    let url = p["output"][0].as_str().unwrap().to_owned();
    let stored = || {
        files(&data.join("objects"))
            .into_iter()
            .filter(|f| f.to_string_lossy().contains(&id))
            .count()
    };
    // Before the retention ends: downloadable, and sealed on disk.
    let res = api.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let png = res.bytes().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert_eq!(stored(), 1);
    let on_disk = std::fs::read(
        files(&data.join("objects"))
            .into_iter()
            .find(|f| f.to_string_lossy().contains(&id))
            .unwrap(),
    )
    .unwrap();
    assert!(
        !on_disk.windows(8).any(|w| w == &png[..8]),
        "the object is stored sealed"
    );

    let done = Instant::now();
    let gone = loop {
        let g = api.get(&format!("/v1/predictions/{id}")).await;
        if g["data_removed"] == true {
            break g;
        }
        assert!(done.elapsed() < Duration::from_secs(30), "never purged: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let completed = skygate_core::Timestamp::parse_rfc3339(p["completed_at"].as_str().unwrap()).unwrap();
    let now = skygate_core::Timestamp::now();
    assert!(
        now.as_micros() - completed.as_micros() >= 3_000_000,
        "purged before the retention ended"
    );
    assert!(gone["output"].is_null() && gone["input"].is_null(), "{gone}");
    assert_eq!(gone["urls"], json!({}));
    assert_eq!(gone["metadata"]["data_available"], false);
    assert_eq!(api.client.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(stored(), 0, "the object file is gone");
    drop(srv);
}

// Multi-threaded: `terminate` blocks its thread while the client's connection task must still run to
// close its connection when the server drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_running_predictions_back_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The default 30 s lease: a prediction that waited for it would blow the deadline below.
    let key = setup(&data, "[queue]\nworkers = 1\n");
    let mut srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let p = api
        .post(json!({"model": "countdown", "input": {"seconds": 1}}))
        .await;
    let id = p["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&api.get(&format!("/v1/predictions/{id}")).await) != "processing" {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = srv.terminate(Duration::from_secs(30));
    assert!(
        stopped.as_ref().is_ok_and(|s| s.success()),
        "{stopped:?}: {}",
        srv.stderr()
    );
    assert!(
        srv.stderr()
            .contains("returned a running prediction to the queue"),
        "{}",
        srv.stderr()
    );

    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let restarted = Instant::now();
    let done = loop {
        let g = api.get(&format!("/v1/predictions/{id}")).await;
        if is_terminal(&g) {
            break g;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "not rerun before its lease would expire: {g}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status_of(&done), "succeeded", "{done}");
    drop(srv);
}

/// Every prediction reports its sandbox: start time, run time and exit reason in `metrics` (on the
/// wire, kept by the store across a restart) and in the server log.
#[tokio::test]
async fn sandbox_metrics_reach_the_wire_and_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let toml = "[models.sleepy]\nbackend = \"command\"\ntype = \"text\"\n\
                command = [\"/bin/sh\", \"-c\", \"sleep 30\"]\ntimeout = \"1s\"\n\
                input_schema = { type = \"object\" }\n\
                [models.exit3]\nbackend = \"command\"\ntype = \"text\"\n\
                command = [\"/bin/sh\", \"-c\", \"echo nope >&2; exit 3\"]\n\
                input_schema = { type = \"object\" }\n";
    let key = setup(&data, toml);
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let ok = api
        .post(json!({"model": "echo", "input": {"prompt": "hi"}, "await": true}))
        .await;
    assert_eq!(status_of(&ok), "succeeded", "{ok}");
    let m = &ok["metrics"];
    let start = m["sandbox_start_time"].as_f64().unwrap();
    let run = m["sandbox_run_time"].as_f64().unwrap();
    let predict = m["predict_time"].as_f64().unwrap();
    assert!(start > 0.0 && run > 0.0 && start + run <= predict + 0.001, "{m}");
    assert_eq!(m["sandbox_exit"], "exited 0", "{m}");

    let failed = api
        .post(json!({"model": "exit3", "input": {}, "await": true}))
        .await;
    assert_eq!(status_of(&failed), "failed", "{failed}");
    assert_eq!(failed["metrics"]["sandbox_exit"], "exited 3", "{failed}");

    let slow = api
        .post(json!({"model": "sleepy", "input": {}, "await": true}))
        .await;
    assert_eq!(status_of(&slow), "failed", "{slow}");
    assert_eq!(slow["metrics"]["sandbox_exit"], "deadline", "{slow}");

    let id = ok["id"].as_str().unwrap();
    let log = srv.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(id) && l.contains("prediction finished"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("sandbox_start_ms") && line.contains("sandbox_exit") && line.contains("exited 0"),
        "{line}"
    );
    drop(srv);
    // The store kept them.
    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let again = api.get(&format!("/v1/predictions/{id}")).await;
    assert_eq!(again["metrics"]["sandbox_exit"], "exited 0", "{again}");
    assert_eq!(again["metrics"]["sandbox_start_time"].as_f64(), Some(start));
    drop(srv);
}

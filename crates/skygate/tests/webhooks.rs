//! Webhooks through the real `skygate` binary: 1,000 deliveries with the dispatcher SIGKILLed midway
//! (all delivered after a restart, on SQLite and PostgreSQL), two dispatcher nodes sharing PostgreSQL
//! (no double send), and the `webhooks` CLI (secret, deliveries, retry, verify). Receivers are on
//! 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skygate_testkit::binary::{cli, BinaryServer};
use skygate_testkit::receiver::{Received, Receiver, Reply};

mod common;
use common::{bin, ok, setup_project, Api, TwoNodes};

/// Local receivers, short leases, and limits high enough for a thousand creates a minute.
fn hooks(extra: &str) -> String {
    format!(
        "[queue]\nworkers = 4\n[limits.tiers.free]\nrequests_per_minute = 100000\n\
         predictions_per_minute = 100000\n[webhooks]\nallow_insecure_http = true\n\
         allow_private_networks = true\ntimeout = \"2s\"\nlease = \"3s\"\npoll_interval = \"200ms\"\n{extra}"
    )
}

/// Unique webhook-ids seen, and the prediction each one carried.
fn by_id(got: &[Received]) -> HashMap<String, String> {
    got.iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                r.header("webhook-id").unwrap().to_owned(),
                body["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait_unique(rx: &Receiver, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let u = by_id(&rx.received()).len();
        if u >= n || Instant::now() >= deadline {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_many(api: &Api, rx: &Receiver, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let p = api
            .post(json!({"model": "echo", "input": {"prompt": format!("n{i}")}, "webhook": {"url": rx.url(&format!("/hook/{i}"))}}))
            .await;
        ids.insert(p["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn kill_nine_mid_delivery(data: &Path, toml: &str) {
    const N: usize = 1000;
    // A slow receiver (200 ms per answer, 16 at a time: 80/s) so the kill lands mid-way.
    let rx = Receiver::start(|_| Reply::status(200).delay(Duration::from_millis(200)))
        .await
        .unwrap();
    let (_, key) = setup_project(data, toml);
    let srv = BinaryServer::start(&bin(), data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let predictions = create_many(&api, &rx, N).await;
    let at_kill = wait_unique(&rx, 300, Duration::from_secs(120)).await;
    drop(srv); // SIGKILL
    assert!(at_kill >= 300, "only {at_kill} delivered before the kill");
    let seen_at_kill = by_id(&rx.received()).len();
    assert!(
        seen_at_kill < N,
        "everything was delivered before the kill ({seen_at_kill})"
    );

    let srv = BinaryServer::start(&bin(), data, &[]).unwrap();
    let unique = wait_unique(&rx, N, Duration::from_secs(180)).await;
    let got = rx.received();
    let ids = by_id(&got);
    assert_eq!(unique, N, "every delivery arrives after the restart");
    let carried: HashSet<String> = ids.values().cloned().collect();
    assert_eq!(carried, predictions, "one delivery per prediction, none lost");
    let duplicates = got.len() - unique;
    println!(
        "kill -9 after {seen_at_kill} of {N} deliveries: all {N} delivered after restart, \
         {duplicates} sent twice (same webhook-id)"
    );
    assert!(duplicates <= 32, "{duplicates} duplicates");
    let log = ok(data, &["webhooks", "deliveries", "--failed", "--json"]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&log).unwrap_or_default().len(),
        0
    );
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    kill_nine_mid_delivery(&tmp.path().join("data"), &hooks("concurrency = 16\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_postgres() {
    let Some(base) = skygate_testkit::env_or_skip(
        "SKYGATE_TEST_DATABASE_URL",
        "sigkill_mid_delivery_loses_nothing_postgres",
    ) else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "w", |url| async move {
        let tmp = tempfile::tempdir().unwrap();
        let toml = hooks(&format!(
            "concurrency = 16\n[storage]\ndatabase_url = \"{url}\"\n"
        ));
        kill_nine_mid_delivery(&tmp.path().join("data"), &toml).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatcher_nodes_on_postgres_send_each_delivery_once() {
    let Some(base) = skygate_testkit::env_or_skip(
        "SKYGATE_TEST_DATABASE_URL",
        "two_dispatcher_nodes_on_postgres_send_each_delivery_once",
    ) else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "w2", |url| async move {
        const N: usize = 300;
        let rx = Receiver::start(|_| Reply::status(200).delay(Duration::from_millis(5)))
            .await
            .unwrap();
        let toml = hooks(&format!("[storage]\ndatabase_url = \"{url}\"\n"));
        let nodes = TwoNodes::new(&toml);
        let (a, b, key) = (&nodes.a, &nodes.b, nodes.key.clone());
        let na = BinaryServer::start(&bin(), a, &[]).unwrap();
        let nb = BinaryServer::start(&bin(), b, &[]).unwrap();
        let (api_a, api_b) = (Api::new(&na, &key), Api::new(&nb, &key));
        let mut predictions = create_many(&api_a, &rx, N / 2).await;
        predictions.extend(create_many(&api_b, &rx, N / 2).await);
        assert_eq!(wait_unique(&rx, N, Duration::from_secs(120)).await, N);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = rx.received();
        assert_eq!(got.len(), N, "no delivery was sent twice");
        let carried: HashSet<String> = by_id(&got).values().cloned().collect();
        assert_eq!(carried, predictions);
        drop((na, nb));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_cli_shows_secrets_and_the_log_replays_and_verifies() {
    let rx = Receiver::start(|path| {
        if path == "/fail" {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (project, key) = setup_project(&data, &hooks("schedule = [\"0s\", \"1s\"]\n"));
    let secret = ok(&data, &["webhooks", "secret", "--project", &project]);
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        ok(&data, &["webhooks", "secret", "--project", &project]),
        secret,
        "stable"
    );

    let srv = BinaryServer::start(&bin(), &data, &[]).unwrap();
    let api = Api::new(&srv, &key);
    let good = api
        .post(json!({"model": "echo", "input": {"prompt": "a"}, "webhook": {"url": rx.url("/ok")}}))
        .await;
    let bad = api
        .post(json!({"model": "echo", "input": {"prompt": "b"}, "webhook": {"url": rx.url("/fail")}}))
        .await;
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(rx.count("/fail"), 2, "two attempts on a two-step schedule");
    let delivered = got.iter().find(|r| r.path == "/ok").unwrap().clone();

    // The log: the failed one, with both attempts, and the --failed filter.
    let bad_id = bad["id"].as_str().unwrap();
    let mut log = String::new();
    for _ in 0..50 {
        log = ok(&data, &["webhooks", "deliveries", "--prediction", bad_id]);
        if log.contains("failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(&bin(), &data, &["webhooks", "deliveries", "--prediction", bad_id]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("failed") && table.contains("gave up"),
        "{table}\n{log}"
    );
    assert!(
        table.contains("#1 at") && table.contains("#2 at") && table.contains("answered 500"),
        "{table}"
    );
    let failed: Vec<Value> =
        serde_json::from_str(&ok_all(&data, &["webhooks", "deliveries", "--failed", "--json"])).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["prediction"], bad_id);
    assert_eq!(failed[0]["log"].as_array().unwrap().len(), 2);

    // Replay the good one: the receiver sees the same webhook-id again.
    let good_log: Vec<Value> = serde_json::from_str(&ok_all(
        &data,
        &[
            "webhooks",
            "deliveries",
            "--prediction",
            good["id"].as_str().unwrap(),
            "--json",
        ],
    ))
    .unwrap();
    let delivery = good_log[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(delivered.header("webhook-id"), Some(delivery.as_str()));
    assert_eq!(ok(&data, &["webhooks", "retry", &delivery]), delivery);
    let again = rx.wait_for(4, Duration::from_secs(10)).await;
    let replays: Vec<_> = again
        .iter()
        .filter(|r| r.header("webhook-id") == Some(delivery.as_str()))
        .collect();
    assert_eq!(replays.len(), 2);
    assert_eq!(replays[0].body, replays[1].body, "the same payload");

    // verify: the delivery as received passes; a wrong secret, an altered body, a missing header fail.
    let body = tmp.path().join("body.json");
    std::fs::write(&body, &delivered.body).unwrap();
    let headers: Vec<String> = [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-skytells-signature",
    ]
    .iter()
    .map(|h| format!("{h}: {}", delivered.header(h).unwrap()))
    .collect();
    let verify = |secrets: &[&str], body: &Path, headers: &[String]| {
        let mut args = vec!["webhooks", "verify", "--body", body.to_str().unwrap()];
        for s in secrets {
            args.extend(["--secret", s]);
        }
        for h in headers {
            args.extend(["--header", h.as_str()]);
        }
        cli(&bin(), &data, &args).unwrap()
    };
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let out = verify(&[&secret], &body, &headers);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid"));
    assert!(
        verify(&[other, &secret], &body, &headers).status.success(),
        "one of several"
    );
    let out = verify(&[other], &body, &headers);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signature matched"));
    let altered = tmp.path().join("altered.json");
    std::fs::write(&altered, [&delivered.body[..], b" "].concat()).unwrap();
    assert_eq!(verify(&[&secret], &altered, &headers).status.code(), Some(1));
    let out = verify(&[&secret], &body, &headers[1..]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhook-id"));

    // Rotation through the CLI lists both secrets; the newest is printed last.
    let out = cli(
        &bin(),
        &data,
        &["webhooks", "secret", "--project", &project, "--rotate"],
    )
    .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("v1") && err.contains("v2") && err.contains("signs until"),
        "{err}"
    );
    let newest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(newest.starts_with("whsec_") && newest != secret);
    drop(srv);
}

/// All of stdout of a command that must succeed.
fn ok_all(data: &Path, args: &[&str]) -> String {
    let out = cli(&bin(), data, args).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

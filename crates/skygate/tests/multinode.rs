//! Two real `skygate serve` nodes sharing PostgreSQL and Redis: one rate limit enforced together
//! (allowed count within B + r·t ± 1 under two concurrent clients, one per node), and a key revoked
//! through the CLI refused by the other node at once (Redis announcement), timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use skygate_core::Timestamp;
use skygate_testkit::binary::BinaryServer;

mod common;
use common::{bin, ok, TwoNodes};

/// PostgreSQL and Redis from the environment (skips loudly without them).
fn services(test: &str) -> Option<(String, String)> {
    let db = skygate_testkit::env_or_skip("SKYGATE_TEST_DATABASE_URL", test)?;
    let redis = skygate_testkit::redis::redis_url(test)?;
    Some((db, redis))
}

fn config(db: &str, redis: &str, extra: &str) -> String {
    format!(
        "[storage]\ndatabase_url = \"{db}\"\n[limits]\nredis_url = \"{redis}\"\n[queue]\nworkers = 0\n{extra}"
    )
}

fn client(srv: &BinaryServer) -> reqwest::Client {
    skygate_testkit::client_trusting(&std::fs::read(&srv.ca_path).unwrap())
}

fn wall_micros() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_enforce_one_limit() {
    let Some((base, redis)) = services("two_nodes_on_one_redis_enforce_one_limit") else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "rl2", |url| async move {
        // B = 120, r = 2/s.
        const B: f64 = 120.0;
        const R: f64 = 2.0;
        let tiers = "[limits.tiers.free]\nrequests_per_minute = 120\npredictions_per_minute = 25\n\
                     concurrent_predictions = 5\n";
        let nodes = TwoNodes::new(&config(&url, &redis, tiers));
        let na = BinaryServer::start(&bin(), &nodes.a, &[]).unwrap();
        let nb = BinaryServer::start(&bin(), &nodes.b, &[]).unwrap();
        let run_for = Duration::from_secs(3);
        let mut clients = Vec::new();
        for srv in [&na, &nb] {
            let (c, base, key) = (
                client(srv),
                format!("https://{}/v1/models", srv.addr),
                nodes.key.clone(),
            );
            clients.push(tokio::spawn(async move {
                // (first send, first answer, last send, last answer, allowed, limited)
                let (mut allowed, mut limited) = (0u32, 0u32);
                let first_send = Instant::now();
                let mut first_answer = None;
                let mut last_send = first_send;
                while first_send.elapsed() < run_for {
                    last_send = Instant::now();
                    let res = c.get(&base).header("x-api-key", &key).send().await.unwrap();
                    first_answer.get_or_insert_with(Instant::now);
                    match res.status().as_u16() {
                        200 => allowed += 1,
                        429 => limited += 1,
                        s => panic!("unexpected status {s}"),
                    }
                }
                (
                    first_send,
                    first_answer.unwrap(),
                    last_send,
                    Instant::now(),
                    allowed,
                    limited,
                )
            }));
        }
        let mut runs = Vec::new();
        for c in clients {
            runs.push(c.await.unwrap());
        }
        let allowed: u32 = runs.iter().map(|r| r.4).sum();
        let limited: u32 = runs.iter().map(|r| r.5).sum();
        // The checks all fall between the earliest first send and the latest last answer (outer), and
        // span at least from the latest first answer to the earliest last send (inner).
        let outer = runs.iter().map(|r| r.3).max().unwrap() - runs.iter().map(|r| r.0).min().unwrap();
        let inner = runs
            .iter()
            .map(|r| r.2)
            .min()
            .unwrap()
            .saturating_duration_since(runs.iter().map(|r| r.1).max().unwrap());
        let (low, high) = (
            B + R * inner.as_secs_f64() - 1.0,
            B + R * outer.as_secs_f64() + 1.0,
        );
        println!(
            "two nodes, one Redis: {allowed} allowed, {limited} limited over {:.3}-{:.3} s; \
             B + r*t = {:.1}..{:.1}; per node {:?}",
            inner.as_secs_f64(),
            outer.as_secs_f64(),
            B + R * inner.as_secs_f64(),
            B + R * outer.as_secs_f64(),
            runs.iter().map(|r| (r.4, r.5)).collect::<Vec<_>>()
        );
        assert!(limited > 0, "the clients must have pushed past the limit");
        assert!(
            f64::from(allowed) >= low.floor() && f64::from(allowed) <= high.ceil(),
            "allowed {allowed} outside {low:.1}..{high:.1}"
        );
        // Both nodes took part in the one budget.
        assert!(runs.iter().all(|r| r.4 > 0));
        drop((na, nb));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_is_refused_by_the_other_at_once() {
    let Some((base, redis)) = services("a_key_revoked_on_one_node_is_refused_by_the_other_at_once") else {
        return;
    };
    skygate_testkit::pg::in_schema(&base, "rv2", |url| async move {
        let nodes = TwoNodes::new(&config(&url, &redis, "[auth]\nkey_cache_ttl = \"1s\"\n"));
        let na = BinaryServer::start(&bin(), &nodes.a, &[]).unwrap();
        let nb = BinaryServer::start(&bin(), &nodes.b, &[]).unwrap();
        let c = client(&nb);
        let models = format!("https://{}/v1/models", nb.addr);
        let mut figures = Vec::new();
        for round in 0..3 {
            let key = if round == 0 {
                nodes.key.clone()
            } else {
                ok(&nodes.a, &["keys", "create", "--project", &nodes.project])
            };
            // Node B has the key cached (TTL 1 s): without an announcement it would accept it up to 1 s
            // after the revocation.
            assert_eq!(
                c.get(&models)
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
            let poller = {
                let (c, models, key) = (c.clone(), models.clone(), key.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        let s = c
                            .get(&models)
                            .header("x-api-key", &key)
                            .send()
                            .await
                            .unwrap()
                            .status();
                        if s == 401 {
                            return Some(wall_micros());
                        }
                        assert_eq!(s, 200);
                        if Instant::now() > deadline {
                            return None;
                        }
                    }
                })
            };
            let key_id = key_id_of(&nodes.a, &key);
            // "Node A": the operator CLI with node A's configuration.
            let data = nodes.a.clone();
            let id = key_id.clone();
            tokio::task::spawn_blocking(move || ok(&data, &["keys", "revoke", &id]))
                .await
                .unwrap();
            let refused_at = poller.await.unwrap().expect("node B refused the key within 5 s");
            let revoked_at = revoked_at(&nodes.a, &key_id);
            let ms = (refused_at - revoked_at.as_micros()) as f64 / 1000.0;
            figures.push(ms);
        }
        println!("revocation on node A refused by node B after {figures:?} ms (cache TTL 1 s)");
        for ms in &figures {
            assert!(
                *ms < 250.0,
                "node B refused a revoked key only after {ms} ms: {figures:?}"
            );
        }
        drop((na, nb));
    })
    .await;
}

fn keys(data: &std::path::Path) -> Vec<Value> {
    let out = skygate_testkit::binary::cli(&bin(), data, &["keys", "list", "--json"]).unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The id of the key whose display form (prefix … last 4) matches `key`.
fn key_id_of(data: &std::path::Path, key: &str) -> String {
    let last4 = &key[key.len() - 4..];
    let found: Vec<Value> = keys(data)
        .into_iter()
        .filter(|k| k["last4"] == last4 && k["revoked_at"].is_null())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]["id"].as_str().unwrap().to_owned()
}

fn revoked_at(data: &std::path::Path, id: &str) -> Timestamp {
    let k = keys(data).into_iter().find(|k| k["id"] == id).unwrap();
    Timestamp::parse_rfc3339(k["revoked_at"].as_str().unwrap()).unwrap()
}

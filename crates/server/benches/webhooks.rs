//! Webhook dispatcher throughput against a local receiver (plain HTTP on 127.0.0.1), in deliveries per
//! second, with the same-run baseline: the bare delivery client (no store, no rendering, no signing)
//! posting the same number of same-size bodies with the same concurrency to the same receiver.
//!
//! `cargo bench -p skygate-server --bench webhooks` (N = `SKYGATE_BENCH_DELIVERIES`, default 5000;
//! with `SKYGATE_TEST_DATABASE_URL` set, PostgreSQL is measured too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use skygate_core::predictions::{Completion, NewPrediction, PredictionId, RunningCaps, StoredOutput};
use skygate_core::{Mode, Timestamp};
use skygate_proto::WebhookSpec;
use skygate_server::webhooks::dispatcher;
use skygate_testkit::receiver::Receiver;
use skygate_testkit::TestServer;
use skygate_webhooks::{Client, ClientConfig, Policy, SystemResolver, TcpConnector};
use tokio_util::sync::CancellationToken;

const CONCURRENCY: usize = 128;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n: usize = std::env::var("SKYGATE_BENCH_DELIVERIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000);
        let base = baseline(n).await;
        println!("baseline (bare client, {n} posts, concurrency {CONCURRENCY}): {base:.0} deliveries/s");
        let sqlite = measure(n, None).await;
        println!(
            "dispatcher, SQLite ({n} deliveries): {sqlite:.0} deliveries/s ({:.2} of baseline)",
            sqlite / base
        );
        if let Ok(url) = std::env::var("SKYGATE_TEST_DATABASE_URL") {
            skygate_testkit::pg::in_schema(&url, "bench", move |url| async move {
                let pg = measure(n, Some(url)).await;
                println!(
                    "dispatcher, PostgreSQL ({n} deliveries): {pg:.0} deliveries/s ({:.2} of baseline)",
                    pg / base
                );
            })
            .await;
        }
    });
}

/// A body the size of a finished echo prediction's payload.
fn body() -> Bytes {
    Bytes::from(vec![b'x'; 1400])
}

async fn baseline(n: usize) -> f64 {
    let rx = Receiver::ok().await.unwrap();
    let client = Client::new(
        ClientConfig {
            policy: Policy {
                allow_private_networks: true,
                allow_insecure_http: true,
                ..Policy::default()
            },
            max_idle_per_host: CONCURRENCY,
            ..ClientConfig::default()
        },
        Arc::new(SystemResolver),
        Arc::new(TcpConnector),
    )
    .unwrap();
    let url = rx.url("/base");
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.clone());
        jobs.spawn(async move {
            let a = client.post(&url, http::HeaderMap::new(), body()).await;
            assert!(
                matches!(a.outcome, skygate_webhooks::Outcome::Status { code: 200, .. }),
                "{:?}",
                a.outcome
            );
            drop(permit);
        });
    }
    while jobs.join_next().await.is_some() {}
    n as f64 / started.elapsed().as_secs_f64()
}

async fn measure(n: usize, database_url: Option<String>) -> f64 {
    let rx = Receiver::ok().await.unwrap();
    let srv = TestServer::start_with(|c| {
        c.queue.workers = 0;
        c.webhooks.concurrency = 0;
        c.webhooks.allow_insecure_http = true;
        c.webhooks.allow_private_networks = true;
        c.storage.database_url = database_url;
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let store = srv.state.store();
    let now = Timestamp::now();
    // N finished predictions, each with one outbox row (prediction.succeeded).
    for _ in 0..n {
        let new = NewPrediction {
            id: PredictionId::generate().unwrap(),
            project: k.project.clone(),
            key: Some(k.key_id.clone()),
            mode: Mode::Live,
            model: "echo".into(),
            stream: false,
            input: json!({"prompt": "benchmark"}),
            webhook: Some(WebhookSpec {
                url: rx.url("/hook"),
                events: vec!["completed".into()],
            }),
            created_at: now,
        };
        store
            .create_prediction(&new, Duration::from_secs(300))
            .await
            .unwrap();
    }
    let mut done = 0;
    while done < n {
        let batch = store
            .claim_predictions(now, Duration::from_secs(60), 256, &RunningCaps::NONE)
            .await
            .unwrap();
        assert!(!batch.is_empty());
        for c in batch {
            let out = Completion::Succeeded(StoredOutput::Text {
                text: "benchmark".repeat(20),
            });
            store
                .complete_prediction(
                    &c.record.id,
                    &c.lease.token,
                    &out,
                    &skygate_core::predictions::RunMetrics::model_time(1000),
                    now,
                    Duration::from_secs(300),
                    None,
                )
                .await
                .unwrap();
            done += 1;
        }
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(dispatcher::drain(srv.state.clone(), CONCURRENCY, stop.clone()));
    let got = rx.wait_for(n, Duration::from_secs(600)).await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(got.len() >= n);
    srv.stop().await.unwrap();
    rate
}

//! The Runner contract through `BuiltinRunner`: progress, cancel, deadline, drop, crash isolation and
//! unsupported backends. Time bounds are generous (1 s for a stop that should take milliseconds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skygate_core::models::Backend;
use skygate_runtime::{BuiltinRunner, Job, Output, RunError, Runner};
use tokio::sync::watch;

fn job(id: &str, input: Value, deadline: Duration) -> Job {
    Job {
        prediction_id: format!("test-{id}"),
        backend: Backend::Builtin(id.into()),
        input,
        deadline,
        tenant: None,
    }
}

const LONG: Duration = Duration::from_secs(120);
/// Long enough that only a working stop ends it in time, short enough that a broken stop cannot hang
/// the test binary for long (dropping a Tokio runtime waits for its blocking tasks).
const LONG_COUNTDOWN: u64 = 20;

/// Collects every progress value until the job ends (the channel closes).
async fn watch_all(mut rx: watch::Receiver<u8>) -> Vec<u8> {
    let mut seen = vec![*rx.borrow_and_update()];
    while rx.changed().await.is_ok() {
        seen.push(*rx.borrow_and_update());
    }
    seen
}

/// Whether the job's work has ended: every progress sender (including the one the model holds) is gone.
async fn closes_within(mut rx: watch::Receiver<u8>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while rx.changed().await.is_ok() {} })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_monotonic_and_reaches_100() {
    for (id, input) in [
        (
            "sky-image",
            json!({"prompt": "p", "width": 32, "height": 32, "steps": 40}),
        ),
        (
            "sky-audio",
            json!({"notes": "C4 E4 G4", "duration": 3, "sample_rate": 44100}),
        ),
        ("countdown", json!({"seconds": 0.5})),
        ("echo", json!({"prompt": "hi"})),
    ] {
        let h = BuiltinRunner.start(job(id, input, LONG)).unwrap();
        let seen = tokio::spawn(watch_all(h.progress()));
        h.finish().await.unwrap();
        let seen = seen.await.unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{id}: {seen:?}");
        assert_eq!(seen.last(), Some(&100), "{id}: {seen:?}");
        // The watch channel keeps only the latest value, so a fast job may show just 0 and 100; the
        // half-second countdown reports every 25 ms and is observed in between. (Per-step reports of
        // every model are checked directly in tests/models.rs.)
        if id == "countdown" {
            assert!(
                seen.iter().any(|p| (1..100).contains(p)),
                "{id}: no intermediate progress {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_long_countdown_quickly() {
    let h = BuiltinRunner
        .start(job("countdown", json!({"seconds": LONG_COUNTDOWN}), LONG))
        .unwrap();
    let rx = h.progress();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    h.cancel();
    h.cancel(); // idempotent
    let r = tokio::time::timeout(Duration::from_secs(1), h.finish())
        .await
        .expect("finish within 1 s");
    assert_eq!(r, Err(RunError::Cancelled));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        closes_within(rx, Duration::from_millis(100)).await,
        "the model is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_big_image_quickly() {
    let input = json!({"prompt": "big", "width": 1024, "height": 1024, "steps": 200, "num_outputs": 2});
    let h = BuiltinRunner.start(job("sky-image", input, LONG)).unwrap();
    let rx = h.progress();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    h.cancel();
    let r = tokio::time::timeout(Duration::from_secs(1), h.finish())
        .await
        .expect("finish within 1 s");
    assert_eq!(r, Err(RunError::Cancelled));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        closes_within(rx, Duration::from_millis(100)).await,
        "the model is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_times_out_and_stops_the_work() {
    let deadline = Duration::from_millis(200);
    let t = Instant::now();
    let h = BuiltinRunner
        .start(job("countdown", json!({"seconds": LONG_COUNTDOWN}), deadline))
        .unwrap();
    let rx = h.progress();
    let r = tokio::time::timeout(Duration::from_secs(2), h.finish())
        .await
        .expect("finish within 2 s");
    assert_eq!(r, Err(RunError::TimedOut(deadline)));
    assert!(t.elapsed() >= deadline);
    assert!(
        closes_within(rx, Duration::from_millis(100)).await,
        "the model is still running"
    );
    assert_eq!(
        RunError::TimedOut(deadline).to_string(),
        "the prediction did not finish within its time limit of 0.2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_applies_even_when_nobody_awaits_yet() {
    let h = BuiltinRunner
        .start(job(
            "countdown",
            json!({"seconds": LONG_COUNTDOWN}),
            Duration::from_millis(100),
        ))
        .unwrap();
    assert!(
        closes_within(h.progress(), Duration::from_secs(1)).await,
        "deadline did not stop the work"
    );
    assert!(matches!(h.finish().await, Err(RunError::TimedOut(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_work() {
    let h = BuiltinRunner
        .start(job("countdown", json!({"seconds": LONG_COUNTDOWN}), LONG))
        .unwrap();
    let rx = h.progress();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(h);
    assert!(
        closes_within(rx, Duration::from_secs(1)).await,
        "the model is still running"
    );

    // Also when the drop happens inside an abandoned `finish` future.
    let h = BuiltinRunner
        .start(job("countdown", json!({"seconds": LONG_COUNTDOWN}), LONG))
        .unwrap();
    let rx = h.progress();
    assert!(tokio::time::timeout(Duration::from_millis(50), h.finish())
        .await
        .is_err());
    assert!(
        closes_within(rx, Duration::from_secs(1)).await,
        "the model is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_crashed_and_the_runner_keeps_working() {
    for _ in 0..3 {
        let h = BuiltinRunner
            .start(job("fail", json!({"mode": "panic"}), LONG))
            .unwrap();
        assert_eq!(
            h.finish().await,
            Err(RunError::Crashed("the model crashed".into()))
        );
    }
    let h = BuiltinRunner
        .start(job("echo", json!({"prompt": "still here"}), LONG))
        .unwrap();
    assert_eq!(h.finish().await, Ok(Output::Text("still here".into())));
}

#[tokio::test]
async fn a_reported_error_is_failed_with_its_message() {
    let h = BuiltinRunner
        .start(job("fail", json!({"mode": "error", "message": "no good"}), LONG))
        .unwrap();
    assert_eq!(h.finish().await, Err(RunError::Failed("no good".into())));
    let h = BuiltinRunner.start(job("fail", json!({}), LONG)).unwrap();
    assert_eq!(
        h.finish().await,
        Err(RunError::Failed("the model reported an error".into()))
    );
}

#[tokio::test]
async fn unknown_builtins_and_other_backends_are_unsupported() {
    let r = BuiltinRunner.start(job("gradient", json!({}), LONG));
    assert!(
        matches!(r, Err(RunError::Unsupported(ref m)) if m.contains("gradient")),
        "{r:?}"
    );
    let command = skygate_core::models::CommandModel::new(["/bin/true"]);
    for backend in [
        Backend::Command(command.clone()),
        Backend::Cog(skygate_core::models::CogModel {
            run: command,
            predictor: "predict.py:Predictor".into(),
            venv: None,
            warm_idle: None,
        }),
    ] {
        let r = BuiltinRunner.start(Job {
            prediction_id: "x".into(),
            backend,
            input: json!({}),
            deadline: LONG,
            tenant: None,
        });
        assert!(matches!(r, Err(RunError::Unsupported(_))), "{r:?}");
    }
}

#[tokio::test]
async fn cancel_after_the_end_changes_nothing() {
    let h = BuiltinRunner
        .start(job("echo", json!({"prompt": "x"}), LONG))
        .unwrap();
    // The channel closes once the job has ended and its result is final.
    assert!(closes_within(h.progress(), Duration::from_secs(5)).await);
    h.cancel();
    assert_eq!(h.finish().await, Ok(Output::Text("x".into())));
}

#[tokio::test]
async fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let r = std::thread::spawn(|| {
        BuiltinRunner
            .start(job("echo", json!({"prompt": "x"}), LONG))
            .err()
    })
    .join()
    .unwrap();
    assert!(matches!(r, Some(RunError::Crashed(_))), "{r:?}");
}

#[tokio::test]
async fn runner_is_object_safe() {
    let runner: std::sync::Arc<dyn Runner> = std::sync::Arc::new(BuiltinRunner);
    let h = runner
        .start(job("sky-text", json!({"prompt": "a b", "mode": "upper"}), LONG))
        .unwrap();
    assert_eq!(h.finish().await, Ok(Output::Text("A B".into())));
}

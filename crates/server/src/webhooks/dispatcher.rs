//! The webhook dispatcher: drains the outbox the store fills in the same transaction as each status
//! change.
//!
//! Deliveries are claimed under a lease (`SKIP LOCKED` on PostgreSQL), so several dispatcher nodes
//! share the work without sending one twice in the normal case; a dispatcher killed mid-attempt leaves
//! an expiring lease and the delivery is sent again (at least once, with the same `webhook-id`). Each
//! attempt renders the prediction as it is stored (within retention that is the final object; after
//! the retention purge it says `data_removed`), signs it with every valid secret of the project, sends
//! it through the guarded client, and records the attempt and the next step in one transaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skygate_core::predictions::PredictionRecord;
use skygate_core::webhooks::{
    AttemptRecord, ClaimedDelivery, DeliveryAttempt, NextStep, WebhookEvent, MAX_RESPONSE_EXCERPT,
};
use skygate_core::Timestamp;
use skygate_proto::PredictionStatus;
use skygate_webhooks::{Attempt, Decision, Outcome};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Most deliveries claimed by one query, and most attempts written by one transaction.
const CLAIM_BATCH: usize = 256;
/// Batches of attempts written at once.
const PARALLEL_WRITES: usize = 4;

/// Runs until `stop`: claims due deliveries into free slots (`webhooks.concurrency`) and sends them.
/// Woken at once by outbox rows made on this node, else every `webhooks.poll_interval`. On stop it lets
/// the attempts in flight finish (each is bounded by `webhooks.timeout`).
pub async fn run(state: AppState, stop: CancellationToken) -> anyhow::Result<()> {
    let concurrency = state.config().webhooks.concurrency as usize;
    drain(state, concurrency, stop).await
}

/// [`run`] with `concurrency` slots instead of the configured number (benchmarks use it).
///
/// Attempts run concurrently; their results go to one recorder that writes whatever has finished in
/// one transaction (group commit), and only then frees their slots.
pub async fn drain(state: AppState, concurrency: usize, stop: CancellationToken) -> anyhow::Result<()> {
    let cfg = state.config().webhooks.clone();
    let slots = Arc::new(Semaphore::new(concurrency));
    let freed = Arc::new(Notify::new());
    let (done_tx, mut done_rx) = mpsc::channel::<(Finished, OwnedSemaphorePermit)>(concurrency.max(1));
    let recorder = {
        let (state, freed) = (state.clone(), freed.clone());
        tokio::spawn(async move {
            // A few batches may be written at once (PostgreSQL commits them in parallel; SQLite has one
            // writer anyway); a batch's slots are freed once it is written.
            let mut writes = JoinSet::new();
            let mut buf = Vec::with_capacity(CLAIM_BATCH);
            while done_rx.recv_many(&mut buf, CLAIM_BATCH).await > 0 {
                while writes.len() >= PARALLEL_WRITES {
                    writes.join_next().await;
                }
                let (batch, permits): (Vec<Finished>, Vec<OwnedSemaphorePermit>) = buf.drain(..).unzip();
                let (state, freed) = (state.clone(), freed.clone());
                writes.spawn(async move {
                    record(&state, batch, Timestamp::now()).await;
                    drop(permits);
                    freed.notify_one();
                });
            }
            while writes.join_next().await.is_some() {}
        })
    };
    let mut jobs: JoinSet<()> = JoinSet::new();
    loop {
        while jobs.try_join_next().is_some() {}
        let free = slots.available_permits().min(CLAIM_BATCH);
        let mut full_batch = false;
        if free > 0 {
            let limit = u32::try_from(free).unwrap_or(u32::MAX);
            match state
                .store()
                .claim_deliveries(Timestamp::now(), cfg.lease, limit)
                .await
            {
                Ok(batch) => {
                    full_batch = batch.len() == free;
                    for c in batch {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let (state, done) = (state.clone(), done_tx.clone());
                        jobs.spawn(async move {
                            let finished = attempt(&state, c, Timestamp::now).await;
                            let _ = done.send((finished, permit)).await;
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries; will retry"),
            }
        }
        if full_batch && slots.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = state.hub().deliveries().notified() => {}
            () = tokio::time::sleep(cfg.poll_interval) => {}
            () = freed.notified(), if slots.available_permits() == 0 => {}
        }
    }
    while jobs.join_next().await.is_some() {}
    drop(done_tx);
    recorder.await?;
    Ok(())
}

/// Claims the deliveries due at `now` (up to 256), sends them concurrently, records them together and
/// returns how many were attempted. Retries are scheduled from `now`, so tests drive the schedule with
/// a fake clock.
pub async fn dispatch_due(state: &AppState, now: Timestamp) -> anyhow::Result<usize> {
    let lease = state.config().webhooks.lease;
    let batch = state
        .store()
        .claim_deliveries(now, lease, CLAIM_BATCH as u32)
        .await?;
    let n = batch.len();
    let mut jobs = JoinSet::new();
    for c in batch {
        let state = state.clone();
        jobs.spawn(async move { attempt(&state, c, move || now).await });
    }
    let mut finished = Vec::with_capacity(n);
    while let Some(f) = jobs.join_next().await {
        finished.push(f?);
    }
    record(state, finished, now).await;
    Ok(n)
}

/// An attempt made, not yet written.
struct Finished {
    record: AttemptRecord,
    claimed: ClaimedDelivery,
}

/// Writes finished attempts in one transaction, logs each, and stops the other deliveries of a
/// prediction whose receiver answered 410 Gone. A failed write is logged: those leases then run out
/// and the deliveries are attempted again.
async fn record(state: &AppState, batch: Vec<Finished>, now: Timestamp) {
    if batch.is_empty() {
        return;
    }
    let records: Vec<AttemptRecord> = batch.iter().map(|f| f.record.clone()).collect();
    let written = match state.store().record_attempts(&records, now).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(attempts = batch.len(), error = %e, "cannot record webhook attempts; they will be retried");
            return;
        }
    };
    for (f, ok) in batch.iter().zip(written) {
        let d = &f.claimed.delivery;
        if !ok {
            tracing::info!(delivery = %d.id, "a webhook delivery's lease ran out during the attempt; another dispatcher has it");
            continue;
        }
        log(&f.claimed, &f.record.attempt, &f.record.next);
        if f.record.attempt.status == Some(410) {
            let reason = "an earlier delivery to this webhook was answered 410 Gone";
            if let Err(e) = state
                .store()
                .stop_prediction_deliveries(&d.prediction, reason, now)
                .await
            {
                tracing::warn!(prediction = %d.prediction, error = %e, "cannot stop the deliveries after a 410");
            }
        }
    }
}

/// One attempt of one claimed delivery, with its next step (written by [`record`]).
async fn attempt(state: &AppState, c: ClaimedDelivery, now: impl Fn() -> Timestamp) -> Finished {
    let d = &c.delivery;
    let number = d.attempts.saturating_add(1);
    let started = now();
    let failed_here = |why: String| Attempt {
        outcome: Outcome::Error(why),
        duration: Duration::ZERO,
        response: None,
    };
    let (sent, dropped) = match prepare(state, &c, started).await {
        Ok(Prepared::Send { url, headers, body }) => {
            (state.webhooks().client().post(&url, headers, body).await, None)
        }
        Ok(Prepared::Drop(reason)) => (failed_here(reason.clone()), Some(reason)),
        Err(e) => {
            let why = format!("the delivery could not be prepared: {e:#}");
            tracing::warn!(delivery = %d.id, error = %why, "webhook attempt failed before sending");
            (failed_here(why), None)
        }
    };
    let next = match dropped {
        Some(reason) => NextStep::GiveUp { reason },
        None => match state
            .webhooks()
            .schedule()
            .decide(number, &sent.outcome, unit_random())
        {
            Decision::Delivered => NextStep::Delivered,
            Decision::Retry(wait) => NextStep::Retry {
                at: now().saturating_add(wait),
            },
            Decision::Stop(reason) => NextStep::GiveUp { reason },
        },
    };
    let (status, error) = match &sent.outcome {
        Outcome::Status { code, .. } => (
            Some(*code),
            (!(200..300).contains(code)).then(|| format!("the receiver answered {code}")),
        ),
        Outcome::Refused(why) => (None, Some(format!("refused: {why}"))),
        Outcome::Error(why) => (None, Some(why.clone())),
    };
    let mut response = sent.response;
    if let Some(r) = &mut response {
        r.truncate(MAX_RESPONSE_EXCERPT);
    }
    let result = DeliveryAttempt {
        delivery: d.id.clone(),
        number,
        at: started,
        duration_us: i64::try_from(sent.duration.as_micros()).unwrap_or(i64::MAX),
        status,
        error,
        next_attempt_at: match &next {
            NextStep::Retry { at } => Some(*at),
            _ => None,
        },
        response,
    };
    Finished {
        record: AttemptRecord {
            attempt: result,
            lease_token: c.lease_token.clone(),
            next,
        },
        claimed: c,
    }
}

enum Prepared {
    Send {
        url: String,
        headers: http::HeaderMap,
        body: Bytes,
    },
    /// Nothing can be sent, ever: the reason.
    Drop(String),
}

/// The target, the signed headers and the body of an attempt at `now`.
async fn prepare(state: &AppState, c: &ClaimedDelivery, now: Timestamp) -> anyhow::Result<Prepared> {
    let d = &c.delivery;
    let deleted = || Prepared::Drop("the prediction was deleted before the delivery".into());
    let Some(url) = c.url.clone() else {
        return Ok(deleted());
    };
    let Some(rec) = state.store().find_prediction(&d.prediction).await? else {
        return Ok(deleted());
    };
    let body = Bytes::from(payload(state, &rec, d.event)?);
    let secrets = state.webhooks().secrets(state.store(), &d.project, now).await?;
    let mut headers = http::HeaderMap::new();
    skygate_webhooks::sign(&secrets, d.id.as_str(), now.as_unix_seconds(), &body).apply(&mut headers);
    Ok(Prepared::Send { url, headers, body })
}

/// The body of a delivery: the Prediction object (what the SDKs parse). A `prediction.started` event
/// sent after the prediction already finished shows it as it was at the event: processing, no result.
pub fn payload(state: &AppState, rec: &PredictionRecord, event: WebhookEvent) -> serde_json::Result<Vec<u8>> {
    let mut p = crate::api::predictions::wire(state, rec);
    if event == WebhookEvent::Started && p.status.is_terminal() {
        p.status = PredictionStatus::Processing;
        p.output = None;
        p.error = None;
        p.response = None;
        p.completed_at = None;
        p.metrics.predict_time = None;
        p.metrics.sandbox_start_time = None;
        p.metrics.sandbox_run_time = None;
        p.metrics.sandbox_exit = None;
        p.metrics.total_time = None;
        p.metrics.image_count = 0;
        p.metrics.asset_count = 0;
        p.metadata.storage.files.clear();
    }
    serde_json::to_vec(&p)
}

fn log(c: &ClaimedDelivery, a: &DeliveryAttempt, next: &NextStep) {
    let d = &c.delivery;
    let took = Duration::from_micros(u64::try_from(a.duration_us).unwrap_or(0));
    match next {
        NextStep::Delivered => tracing::info!(
            delivery = %d.id, prediction = %d.prediction, event = %d.event, attempt = a.number,
            status = a.status, took_ms = took.as_millis() as u64, "webhook delivered"
        ),
        NextStep::Retry { at } => tracing::warn!(
            delivery = %d.id, prediction = %d.prediction, event = %d.event, attempt = a.number,
            status = a.status, error = a.error.as_deref().unwrap_or(""), next_attempt_at = %at,
            "webhook attempt failed; will retry"
        ),
        NextStep::GiveUp { reason } => tracing::warn!(
            delivery = %d.id, prediction = %d.prediction, event = %d.event, attempt = a.number,
            status = a.status, reason = %reason, "webhook delivery stopped"
        ),
    }
}

/// A uniform number in [0, 1) for jitter (not security-relevant).
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

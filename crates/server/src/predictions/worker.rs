//! The queue workers, the lease reclaimer and the retention sweeper.
//!
//! A worker claims pending predictions from the store (never more than it has free slots), runs each
//! through the [`Runner`], and keeps its lease alive with a heartbeat that also picks up cancels made on
//! other nodes; a cancel made on this node reaches it at once through the [`super::Hub`]. Output files
//! are sealed into the object store under the prediction's retention-window shred key before the
//! terminal status is committed; a worker that lost its lease meanwhile writes nothing (and removes the
//! files it wrote). A worker that dies (kill -9) leaves an expiring lease: the reclaimer requeues the
//! prediction, or fails it after `queue.max_attempts` runs.
//!
//! A run that produces text as it goes (a language model) has its text so far recorded as the
//! prediction's partial output (sealed like the final one) while the lease is held, so `GET` and the
//! SSE stream show it growing. Writes are coalesced: one at a time, at most one per [`PARTIAL_EVERY`],
//! each carrying the latest text, however fast the model produces tokens.
//!
//! The sweeper destroys the data of predictions whose retention ran out ([`sweep`]), and then the shred
//! keys of spent retention windows. It takes the time as an argument so tests drive it with a fake clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skygate_core::models::ModelSpec;
use skygate_core::predictions::{
    object_key, object_prefix, Claimed, Completion, PredictionId, PredictionRecord, RunMetrics,
    SandboxMetrics, StoredFile, StoredOutput, UsageRecord,
};
use skygate_core::{AccountId, Mode, Timestamp};
use skygate_crypto::Aad;
use skygate_runtime::{Job, Output, OutputFile, RunError, Runner, SandboxReport};
use skygate_store::LeaseCheck;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// The AAD binding an output object to its account, prediction and file name.
pub fn output_aad(account: &AccountId, id: &PredictionId, file: &str) -> Aad {
    Aad::parts(&[
        b"prediction-output",
        account.as_str().as_bytes(),
        id.as_str().as_bytes(),
        file.as_bytes(),
    ])
}

/// Longest gap between a worker's check-ins (lease renewal and cancel check) while a job runs. A cancel
/// asked on another node is therefore seen within this.
const CHECK_IN: Duration = Duration::from_millis(400);

/// The shortest gap between two writes of a run's partial output (so at most 10 a second).
const PARTIAL_EVERY: Duration = Duration::from_millis(100);

/// Runs the queue until `stop`: claims work into free slots and supervises the running jobs. On stop,
/// running jobs are stopped and given back to the queue (the attempt not counted), so another node, or
/// this one after a restart, runs them at once.
pub async fn run_queue(
    state: AppState,
    runner: Arc<dyn Runner>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let q = state.config().queue.clone();
    let caps = state.config().limits.running_caps();
    let slots = Arc::new(Semaphore::new(q.workers as usize));
    let mut jobs: JoinSet<()> = JoinSet::new();
    loop {
        while jobs.try_join_next().is_some() {}
        let free = slots.available_permits();
        let mut full_batch = false;
        if free > 0 && !stop.is_cancelled() {
            let limit = u32::try_from(free).unwrap_or(u32::MAX);
            match state
                .store()
                .claim_predictions(Timestamp::now(), q.lease, limit, &caps)
                .await
            {
                Ok(claimed) => {
                    full_batch = claimed.len() == free;
                    if !claimed.is_empty() {
                        state.hub().deliveries_queued();
                    }
                    for c in claimed {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        state.hub().changed(&c.record.id);
                        jobs.spawn(run_one(state.clone(), runner.clone(), c, permit, stop.clone()));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim predictions; will retry"),
            }
        }
        if full_batch && slots.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = state.hub().work().notified() => {}
            () = tokio::time::sleep(q.poll_interval) => {}
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
        }
    }
    while jobs.join_next().await.is_some() {}
    Ok(())
}

/// What the supervision loop of one job ended with.
enum Ended {
    Finished(Result<Output, RunError>, Option<SandboxReport>),
    /// The lease is gone (reclaimed, purged, deleted): write nothing.
    Abandoned,
    /// The node is stopping: the job was stopped and goes back to the queue.
    Released,
}

async fn run_one(
    state: AppState,
    runner: Arc<dyn Runner>,
    claimed: Claimed,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let Claimed { record, lease, shred } = claimed;
    let id = record.id.clone();
    let token = lease.token;
    let q = state.config().queue.clone();
    let started = Instant::now();
    let spec = state.models().get(&record.model).cloned();
    let ended = match (&spec, record.input.clone()) {
        (None, _) => Ended::Finished(
            Err(RunError::Failed(format!(
                "the model {:?} is not served by this deployment",
                record.model
            ))),
            None,
        ),
        // Purged while queued: the purge cancelled it, so the lease is already gone.
        (_, None) => Ended::Abandoned,
        (Some(spec), Some(input)) => {
            let job = Job {
                prediction_id: id.to_string(),
                backend: spec.backend.clone(),
                input,
                deadline: q.job_timeout,
                tenant: Some(record.account.to_string()),
            };
            match runner.start(job) {
                Err(e) => Ended::Finished(Err(e), None),
                Ok(handle) => supervise(&state, &id, &token, handle, &stop).await,
            }
        }
    };
    let (result, report) = match ended {
        Ended::Abandoned => return,
        Ended::Released => {
            match state.store().release_lease(&id, &token, Timestamp::now()).await {
                Ok(released) => {
                    tracing::info!(prediction = %id, released, "stopping: returned a running prediction to the queue")
                }
                Err(e) => {
                    tracing::warn!(prediction = %id, error = %e, "stopping: could not return a prediction to the queue; it runs again when its lease expires")
                }
            }
            return;
        }
        Ended::Finished(r, report) => (r, report),
    };
    let predict_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
    let metrics = RunMetrics {
        predict_time_us: predict_us,
        sandbox: report.as_ref().map(sandbox_metrics),
    };
    let (completion, written) = match result {
        Ok(Output::Text(text)) => (Completion::Succeeded(StoredOutput::Text { text }), Vec::new()),
        Ok(Output::Files(files)) => match store_files(&state, &record, shred, files).await {
            Ok(stored) => {
                let names = stored.iter().map(|f| f.name.clone()).collect();
                (
                    Completion::Succeeded(StoredOutput::Files { files: stored }),
                    names,
                )
            }
            Err(e) => {
                tracing::error!(prediction = %id, error = %format!("{e:#}"), "could not store outputs");
                let _ = state
                    .objects()
                    .delete_prefix(&object_prefix(&record.account, &id))
                    .await;
                (
                    Completion::Failed("the outputs could not be stored; try again".into()),
                    Vec::new(),
                )
            }
        },
        Err(RunError::Cancelled) => (Completion::Cancelled, Vec::new()),
        Err(e) => (Completion::Failed(e.to_string()), Vec::new()),
    };
    let usage = usage_record(&record, spec.as_ref(), &completion, predict_us);
    let retention = state.config().outputs.retention;
    let mut done = None;
    for attempt in 0..3u32 {
        match state
            .store()
            .complete_prediction(
                &id,
                &token,
                &completion,
                &metrics,
                Timestamp::now(),
                retention,
                usage.as_ref(),
            )
            .await
        {
            Ok(applied) => {
                done = Some(applied);
                break;
            }
            Err(e) => {
                tracing::warn!(prediction = %id, attempt, error = %e, "could not record a finished prediction");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    if done == Some(false) && !written.is_empty() {
        // Someone else owns it now (or it was deleted): the files written here are not referenced.
        let _ = state
            .objects()
            .delete_prefix(&object_prefix(&record.account, &id))
            .await;
    }
    state.hub().changed(&id);
    state.hub().deliveries_queued();
    let sandbox = metrics.sandbox.as_ref();
    tracing::info!(
        prediction = %id,
        model = %record.model,
        status = completion.status().as_str(),
        predict_ms = predict_us / 1000,
        sandbox_start_ms = sandbox.map(|m| m.start_us / 1000),
        sandbox_run_ms = sandbox.map(|m| m.run_us / 1000),
        sandbox_exit = sandbox.map(|m| m.exit.as_str()),
        recorded = done.unwrap_or(false),
        "prediction finished"
    );
}

/// What the record keeps of a sandbox report; a run without isolation says so in its exit reason.
fn sandbox_metrics(r: &SandboxReport) -> SandboxMetrics {
    let us = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    SandboxMetrics {
        start_us: us(r.start_us),
        run_us: us(r.run_us),
        exit: if r.sandboxed {
            r.exit.clone()
        } else {
            format!("{} (no sandbox)", r.exit)
        },
    }
}

/// Watches one running job: forwards progress and partial output, renews the lease, passes cancels on.
async fn supervise(
    state: &AppState,
    id: &PredictionId,
    token: &str,
    handle: skygate_runtime::RunHandle,
    stop: &CancellationToken,
) -> Ended {
    let store = state.store();
    let lease = state.config().queue.lease;
    // The progress channel closes when the job has ended; `finish` then returns at once. Until then the
    // handle stays here, so it can be cancelled. Once a stop was asked for (or the deadline plus a grace
    // period passed), `finish` is awaited directly: it stops or abandons a model that does not react.
    let hard_deadline =
        tokio::time::Instant::now() + state.config().queue.job_timeout + Duration::from_secs(5);
    let mut progress = handle.progress();
    let mut partial = handle.partial();
    // Whether the partial output channel is still open, and whether it holds text not written yet.
    let (mut partial_open, mut partial_dirty) = (true, false);
    let mut partial_next = tokio::time::Instant::now();
    let mut cancels = state.hub().subscribe_cancels();
    let mut cancelled = false;
    // Visible as `processing` from here on.
    let first = store.report_progress(id, token, 0, Timestamp::now()).await;
    match heed(first, &handle, id, "could not record progress") {
        Err(ended) => return ended,
        Ok(c) => cancelled |= c,
    }
    state.hub().changed(id);
    let mut tick = tokio::time::interval(CHECK_IN.min(lease / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = 0u8;
    loop {
        if cancelled {
            break;
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = *progress.borrow_and_update();
                // 100 is written with the terminal status.
                if p > last_sent && p < 100 {
                    last_sent = p;
                    let check = store.report_progress(id, token, p, Timestamp::now()).await;
                    match heed(check, &handle, id, "could not record progress") {
                        Err(ended) => return ended,
                        Ok(c) => cancelled |= c,
                    }
                    state.hub().changed(id);
                }
            }
            changed = partial.changed(), if partial_open => {
                if changed.is_err() {
                    // The job ended: its final output is written with the terminal status.
                    (partial_open, partial_dirty) = (false, false);
                } else {
                    partial_dirty = true;
                }
            }
            () = tokio::time::sleep_until(partial_next), if partial_dirty => {
                partial_dirty = false;
                let text = partial.borrow_and_update().clone();
                let output = StoredOutput::Text { text };
                let check = store.report_partial_output(id, token, &output, Timestamp::now()).await;
                partial_next = tokio::time::Instant::now() + PARTIAL_EVERY;
                match heed(check, &handle, id, "could not record a partial output") {
                    Err(ended) => return ended,
                    Ok(c) => cancelled |= c,
                }
                state.hub().changed(id);
            }
            _ = tick.tick() => {
                let check = store.renew_lease(id, token, Timestamp::now().saturating_add(lease)).await;
                match heed(check, &handle, id, "could not renew a lease") {
                    Err(ended) => return ended,
                    Ok(c) => cancelled |= c,
                }
            }
            msg = cancels.recv() => match msg {
                Ok(c) if &c == id => {
                    handle.cancel();
                    cancelled = true;
                }
                Ok(_) | Err(RecvError::Lagged(_) | RecvError::Closed) => {}
            },
            () = tokio::time::sleep_until(hard_deadline) => break,
            () = stop.cancelled() => {
                handle.cancel();
                return Ended::Released;
            }
        }
    }
    let (result, report) = handle.finish_with_report().await;
    Ended::Finished(result, report)
}

/// Acts on one check-in with the store: a cancel asked for stops the job (`Ok(true)`); a lost lease
/// stops it and ends the supervision (`Err(Ended::Abandoned)`); a store error is logged and the job goes
/// on (the next check-in retries).
fn heed(
    check: skygate_store::Result<LeaseCheck>,
    handle: &skygate_runtime::RunHandle,
    id: &PredictionId,
    failure: &str,
) -> Result<bool, Ended> {
    match check {
        Ok(LeaseCheck::Lost) => {
            handle.cancel();
            Err(Ended::Abandoned)
        }
        Ok(LeaseCheck::Held { cancel }) => {
            if cancel {
                handle.cancel();
            }
            Ok(cancel)
        }
        Err(e) => {
            tracing::warn!(prediction = %id, error = %e, "{failure}");
            Ok(false)
        }
    }
}

/// Seals each output file into the object store; returns what the record keeps about them.
async fn store_files(
    state: &AppState,
    record: &PredictionRecord,
    shred: u64,
    files: Vec<OutputFile>,
) -> anyhow::Result<Vec<StoredFile>> {
    let mut stored = Vec::with_capacity(files.len());
    for f in files {
        anyhow::ensure!(
            skygate_core::predictions::is_valid_file_name(&f.name),
            "the model produced an output file with an invalid name"
        );
        anyhow::ensure!(
            !stored.iter().any(|s: &StoredFile| s.name == f.name),
            "the model produced two output files with the same name"
        );
        let key = object_key(&record.account, &record.id, &f.name);
        let aad = output_aad(&record.account, &record.id, &f.name);
        let size = state
            .objects()
            .put(&key, &aad, shred, Bytes::from(f.bytes))
            .await?;
        stored.push(StoredFile {
            name: f.name,
            content_type: f.content_type,
            size,
        });
    }
    Ok(stored)
}

/// The usage record of a succeeded prediction: billable units by model type (images for image models,
/// files for other file models, characters for text).
fn usage_record(
    record: &PredictionRecord,
    spec: Option<&ModelSpec>,
    completion: &Completion,
    predict_us: i64,
) -> Option<UsageRecord> {
    let Completion::Succeeded(out) = completion else {
        return None;
    };
    let (units, unit) = match out {
        StoredOutput::Text { text } => (text.chars().count() as f64, "characters"),
        StoredOutput::Files { files } => {
            let images = files
                .iter()
                .filter(|f| f.content_type.starts_with("image/"))
                .count();
            if images > 0 {
                (images as f64, "images")
            } else {
                (files.len() as f64, "files")
            }
        }
    };
    let billable = record.mode == Mode::Live && spec.is_some_and(|s| s.billable);
    Some(UsageRecord {
        prediction: record.id.clone(),
        project: record.project.clone(),
        model: record.model.clone(),
        mode: record.mode,
        status: completion.status(),
        predict_time: predict_us as f64 / 1e6,
        units: if billable { units } else { 0.0 },
        unit: unit.to_owned(),
        at: Timestamp::now(),
        tokens: None,
    })
}

/// Requeues (or fails) predictions whose worker stopped renewing its lease. Runs at start and then
/// every half lease.
pub async fn reclaim(state: &AppState, now: Timestamp) -> anyhow::Result<()> {
    let q = &state.config().queue;
    let r = state
        .store()
        .reclaim_expired(now, q.max_attempts, state.config().outputs.retention)
        .await?;
    if r.requeued + r.failed + r.cancelled > 0 {
        tracing::info!(
            requeued = r.requeued,
            failed = r.failed,
            cancelled = r.cancelled,
            "reclaimed predictions from stopped workers"
        );
        state.hub().work_queued();
        state.hub().deliveries_queued();
    }
    Ok(())
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub purged: u64,
    pub windows_retired: u64,
}

/// Destroys the data of every prediction whose retention ran out by `now`, then the shred keys of
/// spent retention windows. Catches up on any backlog (after downtime) in batches.
pub async fn sweep(state: &AppState, now: Timestamp) -> anyhow::Result<SweepStats> {
    let mut stats = SweepStats::default();
    loop {
        let due = state.store().due_purges(now, 200).await?;
        let n = due.len();
        for d in due {
            destroy_data(state, &d.account, &d.id, now).await?;
            stats.purged += 1;
        }
        if n < 200 {
            break;
        }
    }
    stats.windows_retired = state.store().retire_windows(now).await?;
    if stats.purged > 0 || stats.windows_retired > 0 {
        tracing::info!(
            purged = stats.purged,
            windows_retired = stats.windows_retired,
            "retention: destroyed prediction data"
        );
    }
    Ok(stats)
}

/// Deletes a prediction's output objects, then its sealed data in the store (cancelling it if it is
/// still queued or running). Objects first: if the process dies in between, the row still says the data
/// is there and the next sweep (or delete) finishes the job.
pub async fn destroy_data(
    state: &AppState,
    account: &AccountId,
    id: &PredictionId,
    now: Timestamp,
) -> anyhow::Result<Option<PredictionRecord>> {
    state.objects().delete_prefix(&object_prefix(account, id)).await?;
    let rec = state.store().purge_prediction(id, now).await?;
    state.hub().cancel(id);
    state.hub().changed(id);
    state.hub().deliveries_queued();
    Ok(rec)
}

//! Predictions, the durable queue, retention and usage: SQL both backends share, and the
//! [`prediction_methods!`] macro that [`crate::queries::impl_store!`] expands inside each backend's
//! `impl Store`. The one dialect difference, the claim's row locking, is each backend's `CLAIM_SQL`.
//!
//! Queue protocol: `pending` rows are claimed (→ `starting`, `attempts + 1`, a random lease token and a
//! lease deadline). Every later write by the worker names the token and requires the row still to be
//! running, so a worker whose lease expired and was reclaimed cannot overwrite anything. A lease that
//! expires (its worker died) is requeued, or failed after too many attempts, by `reclaim_expired`.
//!
//! Every status change also writes its webhook delivery in the same transaction (`enqueue_webhook`, see
//! [`crate::webhooks`]): claim, complete, cancel, reclaim and purge.
//!
//! A running prediction may hold a partial output (the text a language model produced so far), sealed
//! in the `output` column exactly like the final one. Only the lease holder writes it, only while the
//! prediction runs; completion replaces it (or clears it for `failed` and `cancelled`), and every path
//! that gives up a run (requeue, release, reclaim, purge) clears it, so no output outlives its run.

use std::time::Duration;

use skygate_core::predictions::PredictionId;
use skygate_core::Timestamp;

/// Every column of `predictions`, as [`crate::rows::prediction`] reads them.
pub(crate) const PRED_COLS: &str = "id, account_id, project_id, mode, model, status, stream, input, output, \
     error, webhook, progress, attempts, cancel_requested, created_at, started_at, completed_at, \
     updated_at, predict_time_us, purge_at, data_removed, sandbox_start_us, sandbox_run_us, sandbox_exit";

macro_rules! pred_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, account_id, project_id, mode, model, status, stream, input, output, error, webhook, ",
            "progress, attempts, cancel_requested, created_at, started_at, completed_at, updated_at, ",
            "predict_time_us, purge_at, data_removed, sandbox_start_us, sandbox_run_us, sandbox_exit ",
            "FROM predictions ",
            $tail
        )
    };
}

pub(crate) const SELECT_WINDOW: &str = "SELECT shred_id FROM retention_windows WHERE starts_at = $1";
pub(crate) const INSERT_WINDOW: &str = "INSERT INTO retention_windows (starts_at, ends_at, shred_id) \
     VALUES ($1, $2, $3) ON CONFLICT (starts_at) DO NOTHING";

pub(crate) const INSERT_PREDICTION: &str = "INSERT INTO predictions \
     (id, account_id, project_id, key_id, mode, model, status, stream, shred_id, input, webhook, \
      created_at, updated_at, webhook_events, webhook_target) \
     VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $11, $12, $13)";

pub(crate) const SELECT_PREDICTION_SCOPED: &str = pred_select!("WHERE project_id = $1 AND id = $2");
pub(crate) const SELECT_PREDICTION_BY_ID: &str = pred_select!("WHERE id = $1");

/// Optional filters: a NULL parameter matches everything.
const LIST_WHERE: &str = "WHERE project_id = $1 AND ($2 IS NULL OR created_at >= $2) \
     AND ($3 IS NULL OR created_at < $3) AND ($4 IS NULL OR model = $4) AND ($5 IS NULL OR mode = $5)";

pub(crate) fn list_sql() -> String {
    format!(
        "SELECT {PRED_COLS} FROM predictions {LIST_WHERE} ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
    )
}

pub(crate) fn count_sql() -> String {
    format!("SELECT COUNT(*) FROM predictions {LIST_WHERE}")
}

pub(crate) const CANCEL_PENDING: &str = "UPDATE predictions SET status = 'cancelled', cancel_requested = 1, \
     output = NULL, completed_at = $1, updated_at = $1, purge_at = $2 WHERE id = $3 AND status = 'pending'";
pub(crate) const REQUEST_CANCEL: &str = "UPDATE predictions SET cancel_requested = 1, updated_at = $1 \
     WHERE id = $2 AND status IN ('starting', 'processing')";

/// The claim without row locking: SQLite serialises writers, so the statement is atomic there.
pub(crate) const CLAIM_SQLITE: &str = "UPDATE predictions SET status = 'starting', attempts = attempts + 1, \
     lease_token = $1, lease_until = $2, updated_at = $3 \
     WHERE id IN (SELECT id FROM predictions WHERE status = 'pending' ORDER BY created_at, id LIMIT $4) \
     RETURNING id";
/// PostgreSQL: concurrent claimers skip each other's locked rows instead of waiting or double-claiming.
pub(crate) const CLAIM_POSTGRES: &str =
    "UPDATE predictions SET status = 'starting', attempts = attempts + 1, \
     lease_token = $1, lease_until = $2, updated_at = $3 \
     WHERE id IN (SELECT id FROM predictions WHERE status = 'pending' ORDER BY created_at, id LIMIT $4 \
     FOR UPDATE SKIP LOCKED) RETURNING id";
/// The claim under per-account running caps (`$5`..`$8`: the free, pro, business and enterprise
/// ceilings). An account's pending predictions are numbered oldest first; one is claimable while its
/// running count plus its number stays within its tier's ceiling, so a batch never takes an account past
/// it. Window functions rule out row locks on PostgreSQL, so capped claims take turns under an advisory
/// lock there (`begin_capped_claim`); the outer `status = 'pending'` re-check drops a row cancelled
/// meanwhile. Same text on both backends.
pub(crate) const CLAIM_CAPPED: &str = "UPDATE predictions SET status = 'starting', attempts = attempts + 1, \
     lease_token = $1, lease_until = $2, updated_at = $3 \
     WHERE status = 'pending' AND id IN (\
       SELECT q.id FROM (\
         SELECT p.id, p.created_at, p.account_id, \
           ROW_NUMBER() OVER (PARTITION BY p.account_id ORDER BY p.created_at, p.id) AS n \
         FROM predictions p WHERE p.status = 'pending') q \
       JOIN accounts a ON a.id = q.account_id \
       LEFT JOIN (SELECT account_id, COUNT(*) AS running FROM predictions \
         WHERE status IN ('starting', 'processing') GROUP BY account_id) r ON r.account_id = q.account_id \
       WHERE COALESCE(r.running, 0) + q.n <= CASE a.tier WHEN 'free' THEN $5 WHEN 'pro' THEN $6 \
         WHEN 'business' THEN $7 ELSE $8 END \
       ORDER BY q.created_at, q.id LIMIT $4) \
     RETURNING id";
pub(crate) const SELECT_CLAIMED: &str = "SELECT shred_id FROM predictions WHERE id = $1 AND lease_token = $2";

pub(crate) const RENEW_LEASE: &str = "UPDATE predictions SET lease_until = $1 \
     WHERE id = $2 AND lease_token = $3 AND status IN ('starting', 'processing') RETURNING cancel_requested";
pub(crate) const REPORT_PROGRESS: &str = "UPDATE predictions SET status = 'processing', progress = $1, \
     started_at = COALESCE(started_at, $2), updated_at = $2 \
     WHERE id = $3 AND lease_token = $4 AND status IN ('starting', 'processing') RETURNING cancel_requested";
/// A partial output: like [`REPORT_PROGRESS`], the lease must be held and the prediction running.
pub(crate) const REPORT_OUTPUT: &str = "UPDATE predictions SET status = 'processing', output = $1, \
     started_at = COALESCE(started_at, $2), updated_at = $2 \
     WHERE id = $3 AND lease_token = $4 AND status IN ('starting', 'processing') RETURNING cancel_requested";
/// What a lease-guarded update returned: the row's `cancel_requested` when the lease is held.
pub(crate) fn lease_check(cancel: Option<i64>) -> crate::LeaseCheck {
    match cancel {
        Some(c) => crate::LeaseCheck::Held { cancel: c != 0 },
        None => crate::LeaseCheck::Lost,
    }
}

pub(crate) const SELECT_SEAL_PLACE: &str = "SELECT account_id, shred_id FROM predictions WHERE id = $1";
pub(crate) const COMPLETE: &str = "UPDATE predictions SET status = $1, output = $2, error = $3, \
     progress = CASE WHEN $1 = 'succeeded' THEN 100 ELSE progress END, \
     started_at = COALESCE(started_at, $4), completed_at = $4, updated_at = $4, purge_at = $5, \
     predict_time_us = $6, sandbox_start_us = $9, sandbox_run_us = $10, sandbox_exit = $11, \
     lease_token = NULL, lease_until = NULL \
     WHERE id = $7 AND lease_token = $8 AND status IN ('starting', 'processing')";
pub(crate) const SELECT_ACCOUNT_SHRED: &str = "SELECT shred_id FROM accounts WHERE id = $1";
pub(crate) const INSERT_USAGE: &str = "INSERT INTO usage_records (prediction_id, account_id, at, record) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (prediction_id) DO NOTHING";
pub(crate) const SELECT_USAGE: &str = "SELECT prediction_id, record FROM usage_records \
     WHERE account_id = $1 AND at >= $2 ORDER BY at DESC, prediction_id DESC LIMIT $3";

pub(crate) const SELECT_EXPIRED: &str = "SELECT id, account_id, shred_id, attempts, cancel_requested, lease_token \
     FROM predictions WHERE status IN ('starting', 'processing') AND lease_until < $1 ORDER BY lease_until LIMIT 500";
pub(crate) const REQUEUE: &str = "UPDATE predictions SET status = 'pending', lease_token = NULL, \
     lease_until = NULL, output = NULL, updated_at = $1 \
     WHERE id = $2 AND lease_token = $3 AND lease_until < $1 AND status IN ('starting', 'processing')";
pub(crate) const RELEASE: &str = "UPDATE predictions SET status = 'pending', lease_token = NULL, \
     lease_until = NULL, attempts = attempts - 1, progress = 0, output = NULL, updated_at = $1 \
     WHERE id = $2 AND lease_token = $3 AND status IN ('starting', 'processing') AND cancel_requested = 0";
pub(crate) const FINISH_EXPIRED: &str = "UPDATE predictions SET status = $1, error = $2, completed_at = $3, \
     output = NULL, updated_at = $3, purge_at = $4, lease_token = NULL, lease_until = NULL \
     WHERE id = $5 AND lease_token = $6 AND lease_until < $3 AND status IN ('starting', 'processing')";

pub(crate) const SELECT_DUE: &str = "SELECT id, account_id FROM predictions \
     WHERE data_removed = 0 AND purge_at IS NOT NULL AND purge_at <= $1 ORDER BY purge_at LIMIT $2";
/// Run before [`PURGE`], in one transaction: a prediction still queued or running is cancelled on the
/// way (its worker loses the lease on its next check-in and writes nothing), as its own statement so the
/// transaction knows to announce the cancellation (`crate::webhooks::ENQUEUE`).
pub(crate) const PURGE_CANCEL: &str = "UPDATE predictions SET status = 'cancelled', cancel_requested = 1, \
     completed_at = COALESCE(completed_at, $1), updated_at = $1 \
     WHERE id = $2 AND data_removed = 0 AND status IN ('pending', 'starting', 'processing')";
/// Removes the data, but not the webhook subscription: `webhook_events` and `webhook_target` (sealed under
/// the account's key, not the window's) stay for deliveries still being retried. Also cancels on its own,
/// for a caller that ran no [`PURGE_CANCEL`].
pub(crate) const PURGE: &str = "UPDATE predictions SET input = NULL, output = NULL, error = NULL, \
     webhook = NULL, data_removed = 1, updated_at = $1, purge_at = COALESCE(purge_at, $1), \
     completed_at = COALESCE(completed_at, $1), lease_token = NULL, lease_until = NULL, \
     status = CASE WHEN status IN ('pending', 'starting', 'processing') THEN 'cancelled' ELSE status END, \
     cancel_requested = CASE WHEN status IN ('pending', 'starting', 'processing') THEN 1 ELSE cancel_requested END \
     WHERE id = $2 AND data_removed = 0";

pub(crate) const DELETE_PREDICTION: &str = "DELETE FROM predictions WHERE project_id = $1 AND id = $2";

pub(crate) const SELECT_SPENT_WINDOWS: &str = "SELECT w.starts_at, w.shred_id FROM retention_windows w \
     WHERE w.ends_at < $1 AND NOT EXISTS \
     (SELECT 1 FROM predictions p WHERE p.shred_id = w.shred_id AND p.data_removed = 0)";
pub(crate) const WINDOW_STILL_SPENT: &str =
    "SELECT COUNT(*) FROM predictions WHERE shred_id = $1 AND data_removed = 0";
pub(crate) const DELETE_WINDOW: &str = "DELETE FROM retention_windows WHERE starts_at = $1";

/// A window's shred key is destroyed only this long after the window ended, so a creation racing the
/// end of its window (or a node with a slightly late clock) never seals under a key being destroyed.
pub(crate) const WINDOW_GRACE: Duration = Duration::from_secs(600);

/// The message a prediction fails with when its runs kept being interrupted.
pub(crate) fn interrupted_message(attempts: u32) -> String {
    format!("the prediction was interrupted {attempts} times (its worker stopped); giving up")
}

/// A fresh lease token: 128 random bits, hex.
pub(crate) fn lease_token() -> crate::Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| crate::StoreError::Config("the system random source failed".into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn plus(t: Timestamp, d: Duration) -> i64 {
    t.saturating_add(d).as_micros()
}

pub(crate) fn parse_id(s: &str) -> crate::Result<PredictionId> {
    s.parse()
        .map_err(|e| crate::rows::corrupt("predictions", "id", e))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T, what: &str) -> crate::Result<String> {
    serde_json::to_string(v).map_err(|e| crate::StoreError::Corrupt(format!("{what}: {e}")))
}

/// The bodies of the `Store` methods for predictions, expanded as inherent methods of each backend by
/// [`crate::queries::impl_store!`] (whose `impl Store` forwards to them). `$db` is the sqlx database type.
macro_rules! prediction_methods {
    ($db:ty) => {
        async fn create_prediction(
            &self,
            new: &skygate_core::predictions::NewPrediction,
            window: std::time::Duration,
        ) -> $crate::Result<skygate_core::predictions::PredictionRecord> {
            use $crate::predictions as q;
            let events = match &new.webhook {
                Some(w) => skygate_core::webhooks::EventMask::from_names(&w.events)
                    .map_err(|(i, e)| $crate::StoreError::Invalid(format!("webhook.events[{i}]: {e}")))?,
                None => skygate_core::webhooks::EventMask::default(),
            };
            let (account, account_shred) = self.project_owner(&new.project).await?;
            let starts = skygate_core::predictions::window_start(new.created_at, window);
            let shred = self.window_shred(starts, window).await?;
            let id = new.id.as_str();
            let input = self.sealer.seal(
                ("predictions", id, "input"),
                &account,
                shred,
                &q::to_json(&new.input, "input")?,
            )?;
            let webhook = new
                .webhook
                .as_ref()
                .map(|w| -> $crate::Result<Vec<u8>> {
                    self.sealer.seal(
                        ("predictions", id, "webhook"),
                        &account,
                        shred,
                        &q::to_json(w, "webhook")?,
                    )
                })
                .transpose()?;
            // The target outlives the window's purge (retries), so it is sealed under the account's key.
            let target = new
                .webhook
                .as_ref()
                .map(|w| {
                    self.sealer
                        .seal(("predictions", id, "webhook_target"), &account, account_shred, &w.url)
                })
                .transpose()?;
            sqlx::query(q::INSERT_PREDICTION)
                .bind(id)
                .bind(&account)
                .bind(new.project.as_str())
                .bind(new.key.as_ref().map(|k| k.as_str().to_owned()))
                .bind(new.mode.as_str())
                .bind(&new.model)
                .bind(i64::from(new.stream))
                .bind(shred as i64)
                .bind(input)
                .bind(webhook)
                .bind(new.created_at.as_micros())
                .bind(events.bits())
                .bind(target)
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    $crate::rows::constraint(e, "prediction id", || format!("project {}", new.project))
                })?;
            let account = account
                .parse()
                .map_err(|e| $crate::rows::corrupt("projects", "account_id", e))?;
            Ok(skygate_core::predictions::PredictionRecord::new_pending(new, account))
        }

        async fn prediction(
            &self,
            project: &skygate_core::ProjectId,
            id: &skygate_core::predictions::PredictionId,
        ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
            let row = sqlx::query($crate::predictions::SELECT_PREDICTION_SCOPED)
                .bind(project.as_str())
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref()
                .map(|r| $crate::rows::prediction(r, &self.sealer))
                .transpose()
        }

        async fn find_prediction(
            &self,
            id: &skygate_core::predictions::PredictionId,
        ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
            let row = sqlx::query($crate::predictions::SELECT_PREDICTION_BY_ID)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref()
                .map(|r| $crate::rows::prediction(r, &self.sealer))
                .transpose()
        }

        async fn list_predictions(
            &self,
            project: &skygate_core::ProjectId,
            filter: &skygate_core::predictions::ListFilter,
            offset: u64,
            limit: u64,
        ) -> $crate::Result<(Vec<skygate_core::predictions::PredictionRecord>, u64)> {
            let from = filter.from.map(skygate_core::Timestamp::as_micros);
            let until = filter.until.map(skygate_core::Timestamp::as_micros);
            let mode = filter.mode.map(|m| m.as_str().to_owned());
            let total: i64 = sqlx::query_scalar(&$crate::predictions::count_sql())
                .bind(project.as_str())
                .bind(from)
                .bind(until)
                .bind(filter.model.clone())
                .bind(mode.clone())
                .fetch_one(&self.pool)
                .await?;
            let rows = sqlx::query(&$crate::predictions::list_sql())
                .bind(project.as_str())
                .bind(from)
                .bind(until)
                .bind(filter.model.clone())
                .bind(mode)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
            let page = rows
                .iter()
                .map(|r| $crate::rows::prediction(r, &self.sealer))
                .collect::<$crate::Result<Vec<_>>>()?;
            Ok((page, u64::try_from(total).unwrap_or(0)))
        }

        async fn cancel_prediction(
            &self,
            project: &skygate_core::ProjectId,
            id: &skygate_core::predictions::PredictionId,
            now: skygate_core::Timestamp,
            retention: std::time::Duration,
        ) -> $crate::Result<$crate::CancelOutcome> {
            use $crate::predictions as q;
            let Some(before) = self.prediction(project, id).await? else {
                return Ok($crate::CancelOutcome::NotFound);
            };
            if before.status.is_terminal() {
                return Ok($crate::CancelOutcome::AlreadyTerminal(before));
            }
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(q::CANCEL_PENDING)
                .bind(now.as_micros())
                .bind(q::plus(now, retention))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let cancelled_now = done.rows_affected() == 1;
            if cancelled_now {
                Self::enqueue_webhook(&mut tx, id.as_str(), skygate_core::webhooks::WebhookEvent::Cancelled, now)
                    .await?;
            }
            tx.commit().await?;
            if !cancelled_now {
                sqlx::query(q::REQUEST_CANCEL)
                    .bind(now.as_micros())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
            }
            let Some(after) = self.prediction(project, id).await? else {
                return Ok($crate::CancelOutcome::NotFound);
            };
            Ok(if cancelled_now {
                $crate::CancelOutcome::Cancelled(after)
            } else if after.status.is_terminal() {
                $crate::CancelOutcome::AlreadyTerminal(after)
            } else {
                $crate::CancelOutcome::Requested(after)
            })
        }

        async fn claim_predictions(
            &self,
            now: skygate_core::Timestamp,
            lease: std::time::Duration,
            limit: u32,
            caps: &skygate_core::predictions::RunningCaps,
        ) -> $crate::Result<Vec<skygate_core::predictions::Claimed>> {
            use $crate::predictions as q;
            let token = q::lease_token()?;
            let until = now.saturating_add(lease);
            // The claim and its `started` announcements commit together.
            let (mut tx, ids): (_, Vec<String>) = if caps.is_none() {
                let mut tx = self.pool.begin().await?;
                let ids = sqlx::query_scalar(Self::CLAIM_SQL)
                    .bind(&token)
                    .bind(until.as_micros())
                    .bind(now.as_micros())
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                (tx, ids)
            } else {
                let mut tx = self.begin_capped_claim().await?;
                let mut query = sqlx::query_scalar(q::CLAIM_CAPPED)
                    .bind(&token)
                    .bind(until.as_micros())
                    .bind(now.as_micros())
                    .bind(i64::from(limit));
                for cap in caps.0 {
                    query = query.bind(i64::from(cap));
                }
                let ids = query.fetch_all(&mut *tx).await?;
                (tx, ids)
            };
            for id in &ids {
                Self::enqueue_webhook(&mut tx, id, skygate_core::webhooks::WebhookEvent::Started, now).await?;
            }
            tx.commit().await?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let id = q::parse_id(&id)?;
                let record = match self.find_prediction(&id).await {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    // A row that cannot be read (tampered, or its key gone) must not hold up the rest
                    // of the batch or come back forever: it fails now, naming no value.
                    Err(e) => {
                        tracing::error!(prediction = %id, error = %e, "a claimed prediction cannot be read; failing it");
                        let failed = skygate_core::predictions::Completion::Failed(
                            "the prediction's stored data could not be read".into(),
                        );
                        if let Err(e) = <Self as $crate::Store>::complete_prediction(
                            self, &id, &token, &failed, &skygate_core::predictions::RunMetrics::default(), now, std::time::Duration::ZERO, None,
                        )
                        .await {
                            tracing::error!(prediction = %id, error = %e, "could not fail an unreadable prediction");
                        }
                        continue;
                    }
                };
                let shred: Option<i64> = sqlx::query_scalar(q::SELECT_CLAIMED)
                    .bind(id.as_str())
                    .bind(&token)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(shred) = shred else { continue };
                out.push(skygate_core::predictions::Claimed {
                    record,
                    lease: skygate_core::predictions::Lease {
                        token: token.clone(),
                        until,
                    },
                    shred: shred as u64,
                });
            }
            // `RETURNING` has no defined order: hand the batch out oldest first, as it was chosen.
            out.sort_by(|a, b| (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id)));
            Ok(out)
        }

        async fn renew_lease(
            &self,
            id: &skygate_core::predictions::PredictionId,
            token: &str,
            until: skygate_core::Timestamp,
        ) -> $crate::Result<$crate::LeaseCheck> {
            let cancel: Option<i64> = sqlx::query_scalar($crate::predictions::RENEW_LEASE)
                .bind(until.as_micros())
                .bind(id.as_str())
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
            Ok($crate::predictions::lease_check(cancel))
        }

        async fn report_progress(
            &self,
            id: &skygate_core::predictions::PredictionId,
            token: &str,
            progress: u8,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<$crate::LeaseCheck> {
            let cancel: Option<i64> = sqlx::query_scalar($crate::predictions::REPORT_PROGRESS)
                .bind(i64::from(progress.min(100)))
                .bind(now.as_micros())
                .bind(id.as_str())
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
            Ok($crate::predictions::lease_check(cancel))
        }

        async fn report_partial_output(
            &self,
            id: &skygate_core::predictions::PredictionId,
            token: &str,
            output: &skygate_core::predictions::StoredOutput,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<$crate::LeaseCheck> {
            use $crate::predictions as q;
            if !matches!(output, skygate_core::predictions::StoredOutput::Text { .. }) {
                return Err($crate::StoreError::Invalid(
                    "a partial output is text (files are stored when the prediction succeeds)".into(),
                ));
            }
            let place: Option<(String, i64)> = sqlx::query_as(q::SELECT_SEAL_PLACE)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some((account, shred)) = place else {
                return Ok($crate::LeaseCheck::Lost);
            };
            // The same place, key and AAD as the final output: it is the same column, replaced later.
            let sealed = self.sealer.seal(
                ("predictions", id.as_str(), "output"),
                &account,
                shred as u64,
                &q::to_json(output, "output")?,
            )?;
            let cancel: Option<i64> = sqlx::query_scalar(q::REPORT_OUTPUT)
                .bind(sealed)
                .bind(now.as_micros())
                .bind(id.as_str())
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
            Ok($crate::predictions::lease_check(cancel))
        }

        #[allow(clippy::too_many_arguments)]
        async fn complete_prediction(
            &self,
            id: &skygate_core::predictions::PredictionId,
            token: &str,
            completion: &skygate_core::predictions::Completion,
            metrics: &skygate_core::predictions::RunMetrics,
            now: skygate_core::Timestamp,
            retention: std::time::Duration,
            usage: Option<&skygate_core::predictions::UsageRecord>,
        ) -> $crate::Result<bool> {
            use skygate_core::predictions::Completion;
            use $crate::predictions as q;
            let place: Option<(String, i64)> = sqlx::query_as(q::SELECT_SEAL_PLACE)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some((account, shred)) = place else {
                return Ok(false);
            };
            let shred = shred as u64;
            let (output, error) = match completion {
                Completion::Succeeded(out) => (
                    Some(self.sealer.seal(
                        ("predictions", id.as_str(), "output"),
                        &account,
                        shred,
                        &q::to_json(out, "output")?,
                    )?),
                    None,
                ),
                Completion::Failed(msg) => (
                    None,
                    Some(
                        self.sealer
                            .seal(("predictions", id.as_str(), "error"), &account, shred, msg)?,
                    ),
                ),
                Completion::Cancelled => (None, None),
            };
            let usage = match usage {
                Some(u) => {
                    let account_shred: Option<i64> = sqlx::query_scalar(q::SELECT_ACCOUNT_SHRED)
                        .bind(&account)
                        .fetch_optional(&self.pool)
                        .await?;
                    let Some(account_shred) = account_shred else {
                        return Ok(false);
                    };
                    Some(self.sealer.seal(
                        ("usage_records", id.as_str(), "record"),
                        &account,
                        account_shred as u64,
                        &q::to_json(u, "usage record")?,
                    )?)
                }
                None => None,
            };
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(q::COMPLETE)
                .bind(completion.status().as_str())
                .bind(output)
                .bind(error)
                .bind(now.as_micros())
                .bind(q::plus(now, retention))
                .bind(metrics.predict_time_us)
                .bind(id.as_str())
                .bind(token)
                .bind(metrics.sandbox.as_ref().map(|m| m.start_us))
                .bind(metrics.sandbox.as_ref().map(|m| m.run_us))
                .bind(metrics.sandbox.as_ref().map(|m| m.exit.as_str()))
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            if let Some(event) = skygate_core::webhooks::WebhookEvent::terminal(completion.status().as_str()) {
                Self::enqueue_webhook(&mut tx, id.as_str(), event, now).await?;
            }
            if let Some(record) = usage {
                sqlx::query(q::INSERT_USAGE)
                    .bind(id.as_str())
                    .bind(&account)
                    .bind(now.as_micros())
                    .bind(record)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn reclaim_expired(
            &self,
            now: skygate_core::Timestamp,
            max_attempts: u32,
            retention: std::time::Duration,
        ) -> $crate::Result<$crate::Reclaimed> {
            use $crate::predictions as q;
            let rows: Vec<(String, String, i64, i64, i64, Option<String>)> =
                sqlx::query_as(q::SELECT_EXPIRED)
                    .bind(now.as_micros())
                    .fetch_all(&self.pool)
                    .await?;
            let mut out = $crate::Reclaimed::default();
            for (id, account, shred, attempts, cancel, token) in rows {
                let Some(token) = token else { continue };
                let attempts = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
                if cancel == 0 && attempts < max_attempts {
                    let done = sqlx::query(q::REQUEUE)
                        .bind(now.as_micros())
                        .bind(&id)
                        .bind(&token)
                        .execute(&self.pool)
                        .await?;
                    out.requeued += done.rows_affected();
                    continue;
                }
                let (status, error) = if cancel != 0 {
                    ("cancelled", None)
                } else {
                    let msg = q::interrupted_message(attempts);
                    (
                        "failed",
                        Some(self.sealer.seal(
                            ("predictions", &id, "error"),
                            &account,
                            shred as u64,
                            &msg,
                        )?),
                    )
                };
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(q::FINISH_EXPIRED)
                    .bind(status)
                    .bind(error)
                    .bind(now.as_micros())
                    .bind(q::plus(now, retention))
                    .bind(&id)
                    .bind(&token)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 1 {
                    if let Some(event) = skygate_core::webhooks::WebhookEvent::terminal(status) {
                        Self::enqueue_webhook(&mut tx, &id, event, now).await?;
                    }
                }
                tx.commit().await?;
                if cancel != 0 {
                    out.cancelled += done.rows_affected();
                } else {
                    out.failed += done.rows_affected();
                }
            }
            Ok(out)
        }

        async fn due_purges(
            &self,
            now: skygate_core::Timestamp,
            limit: u32,
        ) -> $crate::Result<Vec<$crate::DuePurge>> {
            let rows: Vec<(String, String)> = sqlx::query_as($crate::predictions::SELECT_DUE)
                .bind(now.as_micros())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.into_iter()
                .map(|(id, account)| {
                    Ok($crate::DuePurge {
                        id: $crate::predictions::parse_id(&id)?,
                        account: account
                            .parse()
                            .map_err(|e| $crate::rows::corrupt("predictions", "account_id", e))?,
                    })
                })
                .collect()
        }

        async fn purge_prediction(
            &self,
            id: &skygate_core::predictions::PredictionId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
            use $crate::predictions as q;
            let mut tx = self.pool.begin().await?;
            let cancelled = sqlx::query(q::PURGE_CANCEL)
                .bind(now.as_micros())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            if cancelled.rows_affected() == 1 {
                Self::enqueue_webhook(&mut tx, id.as_str(), skygate_core::webhooks::WebhookEvent::Cancelled, now)
                    .await?;
            }
            sqlx::query(q::PURGE)
                .bind(now.as_micros())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.find_prediction(id).await
        }

        async fn retire_windows(&self, now: skygate_core::Timestamp) -> $crate::Result<u64> {
            use $crate::predictions as q;
            let before = now.saturating_sub(q::WINDOW_GRACE);
            let spent: Vec<(i64, i64)> = sqlx::query_as(q::SELECT_SPENT_WINDOWS)
                .bind(before.as_micros())
                .fetch_all(&self.pool)
                .await?;
            let mut retired = 0;
            for (starts, shred) in spent {
                // Under the write lock: re-check, then queue the key's destruction and drop the window
                // in one transaction, so a crash before the destruction is finished at the next start.
                let mut tx = self.begin_write().await?;
                let live: i64 = sqlx::query_scalar(q::WINDOW_STILL_SPENT)
                    .bind(shred)
                    .fetch_one(&mut *tx)
                    .await?;
                if live != 0 {
                    continue;
                }
                sqlx::query($crate::queries::INSERT_PENDING_SHRED)
                    .bind(shred)
                    .bind(format!("retention window {starts} purged"))
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q::DELETE_WINDOW)
                    .bind(starts)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                retired += 1;
            }
            if retired > 0 {
                <Self as $crate::Store>::finish_pending_shreds(self).await?;
            }
            Ok(retired)
        }

        async fn usage(
            &self,
            account: &skygate_core::AccountId,
            since: skygate_core::Timestamp,
            limit: u32,
        ) -> $crate::Result<Vec<skygate_core::predictions::UsageRecord>> {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as($crate::predictions::SELECT_USAGE)
                .bind(account.as_str())
                .bind(since.as_micros())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.into_iter()
                .map(|(id, sealed)| {
                    let json =
                        self.sealer
                            .open(("usage_records", &id, "record"), account.as_str(), &sealed)?;
                    serde_json::from_str(&json)
                        .map_err(|e| $crate::rows::corrupt("usage_records", "record", e))
                })
                .collect()
        }

        async fn record_usage(
            &self,
            account: &skygate_core::AccountId,
            record: &skygate_core::predictions::UsageRecord,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<bool> {
            use $crate::predictions as q;
            let shred: Option<i64> = sqlx::query_scalar(q::SELECT_ACCOUNT_SHRED)
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some(shred) = shred else {
                return Ok(false);
            };
            let id = record.prediction.as_str();
            let sealed = self.sealer.seal(
                ("usage_records", id, "record"),
                account.as_str(),
                shred as u64,
                &q::to_json(record, "usage record")?,
            )?;
            // The account may be erased between the two statements: its row is then gone and the
            // foreign key refuses the insert, which is the same answer.
            let done = sqlx::query(q::INSERT_USAGE)
                .bind(id)
                .bind(account.as_str())
                .bind(now.as_micros())
                .bind(sealed)
                .execute(&self.pool)
                .await;
            match done {
                Ok(r) => Ok(r.rows_affected() == 1),
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    };
}
pub(crate) use prediction_methods;

/// Inherent helpers of each backend for the macro above.
macro_rules! prediction_helpers {
    () => {
        /// The shred key of the retention window starting at `starts`, created on first use. Two writers
        /// racing to create it agree on one (the loser destroys its own key).
        async fn window_shred(
            &self,
            starts: skygate_core::Timestamp,
            len: std::time::Duration,
        ) -> $crate::Result<u64> {
            use $crate::predictions as q;
            let found: Option<i64> = sqlx::query_scalar(q::SELECT_WINDOW)
                .bind(starts.as_micros())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(shred) = found {
                return Ok(shred as u64);
            }
            let provider = self.sealer.cipher().provider().clone();
            let mine = provider.create_shred_key()?;
            let inserted = sqlx::query(q::INSERT_WINDOW)
                .bind(starts.as_micros())
                .bind(starts.as_micros().saturating_add(q::micros(len)))
                .bind(mine as i64)
                .execute(&self.pool)
                .await;
            match inserted {
                Ok(done) if done.rows_affected() == 1 => return Ok(mine),
                Ok(_) => {}
                Err(e) => {
                    let _ = provider.destroy_shred_key(mine);
                    return Err(e.into());
                }
            }
            let _ = provider.destroy_shred_key(mine);
            let theirs: i64 = sqlx::query_scalar(q::SELECT_WINDOW)
                .bind(starts.as_micros())
                .fetch_one(&self.pool)
                .await?;
            Ok(theirs as u64)
        }
    };
}
pub(crate) use prediction_helpers;

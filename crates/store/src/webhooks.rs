//! Webhooks in the store: the outbox of deliveries and their attempt log, delivery leases, and project
//! signing secrets. SQL both backends share, row decoding, and the [`webhook_methods!`] and
//! [`webhook_helpers!`] macros that [`crate::queries::impl_store!`] expands inside each backend's
//! `impl` (its `impl Store` forwards to them). The one dialect difference, the claim's row locking, is
//! each backend's `CLAIM_DELIVERIES_SQL`.
//!
//! Outbox: every statement that changes a prediction's status runs [`ENQUEUE`] for the event it
//! announces in the same transaction, so a status change and its delivery commit together or not at all.
//! [`ENQUEUE`] writes nothing unless the prediction subscribed to the event, and at most one row per
//! (prediction, event): a prediction claimed again after a lost lease does not announce `started` twice.
//!
//! Leases: a dispatcher claims due deliveries under a random token and a deadline; `record_attempt` and
//! `release_delivery` name the token and write nothing once it no longer matches (the lease expired and
//! another dispatcher claimed the delivery, or an operator replayed it).

use skygate_core::webhooks::{
    Delivery, DeliveryAttempt, DeliveryId, DeliveryState, NextStep, WebhookEvent, MAX_RESPONSE_EXCERPT,
};
use skygate_core::ProjectId;

use crate::rows::{corrupt, opt_ts, parsed, ts, StoreRow};
use crate::Result;

/// One outbox row for event `$2` of prediction `$4` if it subscribed (`$5` is the event's bit), due at
/// once (`$3`). Binds: `$1` a fresh delivery id, `$2` the event name, `$3` now, `$4` the prediction id,
/// `$5` the bit. The unique `(prediction_id, event)` index makes a second announcement a no-op.
pub(crate) const ENQUEUE: &str = "INSERT INTO webhook_deliveries \
     (id, prediction_id, account_id, project_id, event, state, attempts, next_attempt_at, created_at, \
      updated_at) \
     SELECT $1, id, account_id, project_id, $2, 'pending', 0, $3, $3, $3 FROM predictions \
     WHERE id = $4 AND (webhook_events & $5) <> 0 \
     ON CONFLICT DO NOTHING";

pub(crate) const SELECT_SECRETS: &str = "SELECT id, account_id, version, secret, created_at, retires_at \
     FROM webhook_secrets WHERE project_id = $1 AND (retires_at IS NULL OR retires_at > $2) \
     ORDER BY version DESC";
pub(crate) const NEXT_SECRET_VERSION: &str =
    "SELECT COALESCE(MAX(version), 0) + 1 FROM webhook_secrets WHERE project_id = $1";
/// The first secret: written only while the project has no valid one at `$6` (its creation time). Any
/// conflict (the version, or its derived row id) means another writer took this version first.
pub(crate) const INSERT_FIRST_SECRET: &str = "INSERT INTO webhook_secrets \
     (project_id, version, id, account_id, secret, created_at) SELECT $1, $2, $3, $4, $5, $6 \
     WHERE NOT EXISTS (SELECT 1 FROM webhook_secrets WHERE project_id = $1 \
     AND (retires_at IS NULL OR retires_at > $6)) \
     ON CONFLICT DO NOTHING";
/// A rotation's new secret; a conflict means a concurrent rotation took this version first.
pub(crate) const INSERT_SECRET: &str = "INSERT INTO webhook_secrets \
     (project_id, version, id, account_id, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT DO NOTHING";
/// After the new version `$3` is in: every other secret not yet retiring retires at `$1` (ones already
/// retiring keep their earlier time). Run after the insert, so on PostgreSQL it also sees a version a
/// concurrent rotation committed meanwhile (its insert is what made ours take the next number).
pub(crate) const RETIRE_SECRETS: &str = "UPDATE webhook_secrets SET retires_at = $1 \
     WHERE project_id = $2 AND retires_at IS NULL AND version <> $3";

/// Every column of `webhook_deliveries` that [`delivery`] reads.
macro_rules! delivery_select {
    ($tail:literal) => {
        concat!(
            "SELECT d.id, d.prediction_id, d.account_id, d.project_id, d.event, d.state, d.attempts, ",
            "d.next_attempt_at, d.created_at, d.updated_at, d.last_status, d.last_error ",
            $tail
        )
    };
}

/// What is due: pending, its time come, and not under a live lease. Binds: `$1` the token, `$2` the lease
/// deadline, `$3` now, `$4` the limit.
pub(crate) const CLAIM_DELIVERIES_SQLITE: &str =
    "UPDATE webhook_deliveries SET lease_token = $1, lease_expires = $2 WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $3 \
      AND (lease_expires IS NULL OR lease_expires <= $3) ORDER BY next_attempt_at, id LIMIT $4)";
/// PostgreSQL: concurrent dispatchers skip each other's locked rows instead of waiting or sharing one.
pub(crate) const CLAIM_DELIVERIES_POSTGRES: &str =
    "UPDATE webhook_deliveries SET lease_token = $1, lease_expires = $2 WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $3 \
      AND (lease_expires IS NULL OR lease_expires <= $3) ORDER BY next_attempt_at, id LIMIT $4 \
      FOR UPDATE SKIP LOCKED)";
/// A claimed batch with each target (NULL once the prediction is deleted).
pub(crate) const SELECT_CLAIMED_DELIVERIES: &str = delivery_select!(
    ", p.webhook_target FROM webhook_deliveries d LEFT JOIN predictions p ON p.id = d.prediction_id \
     WHERE d.lease_token = $1 ORDER BY d.next_attempt_at, d.id"
);

/// The owner of a leased delivery and the account's shred key (to seal the response under).
pub(crate) const SELECT_LEASED_OWNER: &str = "SELECT d.account_id, a.shred_id FROM webhook_deliveries d \
     JOIN accounts a ON a.id = d.account_id WHERE d.id = $1 AND d.lease_token = $2";
pub(crate) const FINISH_ATTEMPT: &str = "UPDATE webhook_deliveries SET attempts = $1, state = $2, \
     next_attempt_at = $3, last_status = $4, last_error = $5, lease_token = NULL, lease_expires = NULL, \
     updated_at = $6 WHERE id = $7 AND lease_token = $8";
pub(crate) const INSERT_ATTEMPT: &str = "INSERT INTO webhook_attempts \
     (delivery_id, number, id, at, duration_us, status, error, next_attempt_at, response) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Leases are left alone: a dispatcher attempting one of these right now still records its attempt.
pub(crate) const STOP_PENDING: &str = "UPDATE webhook_deliveries SET state = 'failed', \
     next_attempt_at = NULL, last_error = $1, updated_at = $2 WHERE prediction_id = $3 AND state = 'pending'";
pub(crate) const RELEASE_DELIVERY: &str = "UPDATE webhook_deliveries SET lease_token = NULL, \
     lease_expires = NULL WHERE id = $1 AND lease_token = $2";
pub(crate) const RETRY_DELIVERY: &str = "UPDATE webhook_deliveries SET state = 'pending', \
     next_attempt_at = $1, lease_token = NULL, lease_expires = NULL, updated_at = $1 WHERE id = $2";

pub(crate) const SELECT_DELIVERY: &str = delivery_select!("FROM webhook_deliveries d WHERE d.id = $1");
/// Optional filters: a NULL prediction matches every one; `$2 = 0` every state.
pub(crate) const LIST_DELIVERIES: &str = delivery_select!(
    "FROM webhook_deliveries d WHERE ($1 IS NULL OR d.prediction_id = $1) \
     AND ($2 = 0 OR d.state = 'failed') ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
);
pub(crate) const SELECT_ATTEMPTS: &str = "SELECT a.delivery_id, a.number, a.id, a.at, a.duration_us, \
     a.status, a.error, a.next_attempt_at, a.response, d.account_id \
     FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
     WHERE a.delivery_id = $1 ORDER BY a.number";

/// The derived row key (and AAD row id) of one secret version.
pub(crate) fn secret_row(project: &ProjectId, version: i64) -> String {
    format!("{project}/{version}")
}

/// The derived row key (and AAD row id) of one attempt.
pub(crate) fn attempt_row(delivery: &DeliveryId, number: u32) -> String {
    format!("{delivery}/{number}")
}

/// A fresh delivery id.
pub(crate) fn new_delivery_id() -> Result<DeliveryId> {
    DeliveryId::generate().map_err(|_| crate::StoreError::Config("the system random source failed".into()))
}

/// `limit` 0 means 100; otherwise 1..=1000.
pub(crate) fn list_limit(limit: u32) -> i64 {
    match limit {
        0 => 100,
        n => i64::from(n.min(1000)),
    }
}

/// What an attempt leaves the delivery as: `(state, next_attempt_at, last_error)`.
pub(crate) fn after_attempt<'a>(
    attempt: &'a DeliveryAttempt,
    next: &'a NextStep,
) -> (DeliveryState, Option<i64>, Option<&'a str>) {
    match next {
        NextStep::Delivered => (DeliveryState::Delivered, None, attempt.error.as_deref()),
        NextStep::Retry { at } => (
            DeliveryState::Pending,
            Some(at.as_micros()),
            attempt.error.as_deref(),
        ),
        NextStep::GiveUp { reason } => (DeliveryState::Failed, None, Some(reason.as_str())),
    }
}

/// The stored excerpt of a response body: at most [`MAX_RESPONSE_EXCERPT`] bytes, whatever the caller
/// passed.
pub(crate) fn excerpt(response: &[u8]) -> &[u8] {
    &response[..response.len().min(MAX_RESPONSE_EXCERPT)]
}

fn small<T: TryFrom<i64>>(r: &impl StoreRow, table: &str, col: &'static str) -> Result<T> {
    let v = r.int(table, col)?;
    T::try_from(v).map_err(|_| corrupt(table, col, format_args!("{v} is out of range")))
}

fn opt_small<T: TryFrom<i64>>(r: &impl StoreRow, table: &str, col: &'static str) -> Result<Option<T>> {
    r.opt_int(table, col)?
        .map(|v| T::try_from(v).map_err(|_| corrupt(table, col, format_args!("{v} is out of range"))))
        .transpose()
}

/// Columns: those of [`delivery_select!`].
pub(crate) fn delivery(r: &impl StoreRow) -> Result<Delivery> {
    let t = "webhook_deliveries";
    let event = r.text(t, "event")?;
    let event: WebhookEvent = event.parse().map_err(|e| corrupt(t, "event", e))?;
    Ok(Delivery {
        id: parsed(r, t, "id")?,
        prediction: parsed(r, t, "prediction_id")?,
        account: parsed(r, t, "account_id")?,
        project: parsed(r, t, "project_id")?,
        event,
        state: parsed(r, t, "state")?,
        attempts: small(r, t, "attempts")?,
        next_attempt_at: opt_ts(r, t, "next_attempt_at")?,
        created_at: ts(r, t, "created_at")?,
        updated_at: ts(r, t, "updated_at")?,
        last_status: opt_small(r, t, "last_status")?,
        last_error: r.opt_text(t, "last_error")?,
    })
}

/// Columns: those of [`SELECT_ATTEMPTS`]; the response is opened under the delivery's account.
pub(crate) fn attempt(r: &impl StoreRow, sealer: &crate::Sealer) -> Result<DeliveryAttempt> {
    let t = "webhook_attempts";
    let row = r.text(t, "id")?;
    let account = r.text("webhook_deliveries", "account_id")?;
    let response = r
        .opt_bytes(t, "response")?
        .map(|b| sealer.open_bytes((t, &row, "response"), &account, &b))
        .transpose()?;
    Ok(DeliveryAttempt {
        delivery: parsed(r, t, "delivery_id")?,
        number: small(r, t, "number")?,
        at: ts(r, t, "at")?,
        duration_us: r.int(t, "duration_us")?,
        status: opt_small(r, t, "status")?,
        error: r.opt_text(t, "error")?,
        next_attempt_at: opt_ts(r, t, "next_attempt_at")?,
        response,
    })
}

/// Columns: those of [`SELECT_SECRETS`].
pub(crate) fn secret(
    r: &impl StoreRow,
    project: &ProjectId,
    sealer: &crate::Sealer,
) -> Result<skygate_core::webhooks::WebhookSecretRecord> {
    let t = "webhook_secrets";
    let row = r.text(t, "id")?;
    let account = r.text(t, "account_id")?;
    let secret = sealer.open((t, &row, "secret"), &account, &r.bytes(t, "secret")?)?;
    Ok(skygate_core::webhooks::WebhookSecretRecord {
        project: project.clone(),
        version: small(r, t, "version")?,
        secret: skygate_core::SecretString::new(secret),
        created_at: ts(r, t, "created_at")?,
        retires_at: opt_ts(r, t, "retires_at")?,
    })
}

/// Inherent helpers of each backend: the outbox write the prediction methods share. `$db` is the sqlx
/// database type.
macro_rules! webhook_helpers {
    ($db:ty) => {
        /// Writes the outbox row announcing `event` of `prediction` inside `tx`, the transaction that
        /// changes its status (nothing if it did not subscribe, or already announced it).
        async fn enqueue_webhook(
            tx: &mut sqlx::Transaction<'static, $db>,
            prediction: &str,
            event: skygate_core::webhooks::WebhookEvent,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            let id = $crate::webhooks::new_delivery_id()?;
            sqlx::query($crate::webhooks::ENQUEUE)
                .bind(id.as_str())
                .bind(event.as_str())
                .bind(now.as_micros())
                .bind(prediction)
                .bind(i64::from(event.bit()))
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        /// The project's account and that account's shred key; `NotFound` for an unknown project.
        async fn project_owner(&self, project: &skygate_core::ProjectId) -> $crate::Result<(String, u64)> {
            let owner: Option<(String, i64)> = sqlx::query_as($crate::queries::SELECT_PROJECT_OWNER)
                .bind(project.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some((account, shred)) = owner else {
                return Err($crate::StoreError::NotFound(format!("project {project}")));
            };
            Ok((account, shred as u64))
        }
    };
}
pub(crate) use webhook_helpers;

/// How often a secret write retries after losing a race for a version number. Each loss means another
/// writer succeeded, so this is the number of concurrent writers one write outlasts.
pub(crate) const SECRET_TRIES: usize = 32;

/// The bodies of the webhook `Store` methods, expanded as inherent methods of each backend by
/// [`crate::queries::impl_store!`] (whose `impl Store` forwards to them).
macro_rules! webhook_methods {
    () => {
        async fn webhook_secrets(
            &self,
            project: &skygate_core::ProjectId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
            let rows = sqlx::query($crate::webhooks::SELECT_SECRETS)
                .bind(project.as_str())
                .bind(now.as_micros())
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| $crate::webhooks::secret(r, project, &self.sealer))
                .collect()
        }

        async fn ensure_webhook_secret(
            &self,
            project: &skygate_core::ProjectId,
            candidate: &skygate_core::SecretString,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
            use $crate::webhooks as w;
            for _ in 0..w::SECRET_TRIES {
                let valid = self.webhook_secrets(project, now).await?;
                if !valid.is_empty() {
                    return Ok(valid);
                }
                let (account, shred) = self.project_owner(project).await?;
                let version: i64 = sqlx::query_scalar(w::NEXT_SECRET_VERSION)
                    .bind(project.as_str())
                    .fetch_one(&self.pool)
                    .await?;
                let row = w::secret_row(project, version);
                let sealed = self.sealer.seal(
                    ("webhook_secrets", &row, "secret"),
                    &account,
                    shred,
                    candidate.expose(),
                )?;
                // Inserted, or another writer's secret came first: either way, read again.
                sqlx::query(w::INSERT_FIRST_SECRET)
                    .bind(project.as_str())
                    .bind(version)
                    .bind(&row)
                    .bind(&account)
                    .bind(sealed)
                    .bind(now.as_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::rows::constraint(e, "webhook secret", || format!("project {project}")))?;
            }
            Err($crate::StoreError::Conflict(format!(
                "webhook secret of project {project} (concurrent writers)"
            )))
        }

        async fn rotate_webhook_secret(
            &self,
            project: &skygate_core::ProjectId,
            new: &skygate_core::SecretString,
            now: skygate_core::Timestamp,
            overlap: std::time::Duration,
        ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
            use $crate::webhooks as w;
            let (account, shred) = self.project_owner(project).await?;
            for _ in 0..w::SECRET_TRIES {
                let mut tx = self.begin_read_write().await?;
                let version: i64 = sqlx::query_scalar(w::NEXT_SECRET_VERSION)
                    .bind(project.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let row = w::secret_row(project, version);
                let sealed =
                    self.sealer
                        .seal(("webhook_secrets", &row, "secret"), &account, shred, new.expose())?;
                let done = sqlx::query(w::INSERT_SECRET)
                    .bind(project.as_str())
                    .bind(version)
                    .bind(&row)
                    .bind(&account)
                    .bind(sealed)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| $crate::rows::constraint(e, "webhook secret", || format!("project {project}")))?;
                if done.rows_affected() != 1 {
                    // A concurrent rotation took this version: roll back (dropping `tx`) and go again on
                    // top of it.
                    continue;
                }
                sqlx::query(w::RETIRE_SECRETS)
                    .bind($crate::predictions::plus(now, overlap))
                    .bind(project.as_str())
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return self.webhook_secrets(project, now).await;
            }
            Err($crate::StoreError::Conflict(format!(
                "webhook secret of project {project} (concurrent rotations)"
            )))
        }

        async fn claim_deliveries(
            &self,
            now: skygate_core::Timestamp,
            lease: std::time::Duration,
            limit: u32,
        ) -> $crate::Result<Vec<skygate_core::webhooks::ClaimedDelivery>> {
            let token = $crate::predictions::lease_token()?;
            let claimed = sqlx::query(Self::CLAIM_DELIVERIES_SQL)
                .bind(&token)
                .bind($crate::predictions::plus(now, lease))
                .bind(now.as_micros())
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await?;
            if claimed.rows_affected() == 0 {
                return Ok(Vec::new());
            }
            let rows = sqlx::query($crate::webhooks::SELECT_CLAIMED_DELIVERIES)
                .bind(&token)
                .fetch_all(&self.pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                use $crate::rows::StoreRow;
                let delivery = $crate::webhooks::delivery(r)?;
                let url = match r.opt_bytes("predictions", "webhook_target")? {
                    None => None,
                    Some(sealed) => match self.sealer.open(
                        ("predictions", delivery.prediction.as_str(), "webhook_target"),
                        delivery.account.as_str(),
                        &sealed,
                    ) {
                        Ok(url) => Some(url),
                        Err(e) => {
                            tracing::error!(
                                delivery = %delivery.id,
                                prediction = %delivery.prediction,
                                error = %e,
                                "a webhook target cannot be read; the delivery has no URL"
                            );
                            None
                        }
                    },
                };
                out.push(skygate_core::webhooks::ClaimedDelivery {
                    delivery,
                    lease_token: token.clone(),
                    url,
                });
            }
            Ok(out)
        }

        async fn record_attempts(
            &self,
            batch: &[skygate_core::webhooks::AttemptRecord],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Vec<bool>> {
            use $crate::webhooks as w;
            // Owners are looked up (concurrently) and responses sealed before the transaction: sealing
            // may ask the key provider.
            let owners = futures_util::future::try_join_all(batch.iter().map(|r| {
                sqlx::query_as::<_, (String, i64)>(w::SELECT_LEASED_OWNER)
                    .bind(r.attempt.delivery.as_str())
                    .bind(&r.lease_token)
                    .fetch_optional(&self.pool)
            }))
            .await?;
            let mut rows = Vec::with_capacity(batch.len());
            for (r, owner) in batch.iter().zip(owners) {
                let attempt = &r.attempt;
                let Some((account, shred)) = owner else {
                    rows.push(None);
                    continue;
                };
                let row = w::attempt_row(&attempt.delivery, attempt.number);
                let response = attempt
                    .response
                    .as_deref()
                    .map(|b| {
                        self.sealer.seal_bytes(
                            ("webhook_attempts", &row, "response"),
                            &account,
                            shred as u64,
                            w::excerpt(b),
                        )
                    })
                    .transpose()?;
                rows.push(Some((row, response)));
            }
            let mut done = vec![false; batch.len()];
            if rows.iter().all(Option::is_none) {
                return Ok(done);
            }
            let mut tx = self.pool.begin().await?;
            for (i, (r, sealed)) in batch.iter().zip(rows).enumerate() {
                let Some((row, response)) = sealed else { continue };
                let attempt = &r.attempt;
                let (state, next_at, last_error) = w::after_attempt(attempt, &r.next);
                let moved = sqlx::query(w::FINISH_ATTEMPT)
                    .bind(i64::from(attempt.number))
                    .bind(state.as_str())
                    .bind(next_at)
                    .bind(attempt.status.map(i64::from))
                    .bind(last_error)
                    .bind(now.as_micros())
                    .bind(attempt.delivery.as_str())
                    .bind(&r.lease_token)
                    .execute(&mut *tx)
                    .await?;
                if moved.rows_affected() != 1 {
                    continue;
                }
                sqlx::query(w::INSERT_ATTEMPT)
                    .bind(attempt.delivery.as_str())
                    .bind(i64::from(attempt.number))
                    .bind(&row)
                    .bind(attempt.at.as_micros())
                    .bind(attempt.duration_us)
                    .bind(attempt.status.map(i64::from))
                    .bind(attempt.error.as_deref())
                    .bind(attempt.next_attempt_at.map(skygate_core::Timestamp::as_micros))
                    .bind(response)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        $crate::rows::constraint(e, "webhook attempt number", || {
                            format!("delivery {}", attempt.delivery)
                        })
                    })?;
                done[i] = true;
            }
            tx.commit().await?;
            Ok(done)
        }

        async fn stop_prediction_deliveries(
            &self,
            prediction: &skygate_core::predictions::PredictionId,
            reason: &str,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<u64> {
            let done = sqlx::query($crate::webhooks::STOP_PENDING)
                .bind(reason)
                .bind(now.as_micros())
                .bind(prediction.as_str())
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        }

        async fn release_delivery(
            &self,
            id: &skygate_core::webhooks::DeliveryId,
            lease_token: &str,
        ) -> $crate::Result<bool> {
            let done = sqlx::query($crate::webhooks::RELEASE_DELIVERY)
                .bind(id.as_str())
                .bind(lease_token)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn delivery(
            &self,
            id: &skygate_core::webhooks::DeliveryId,
        ) -> $crate::Result<Option<skygate_core::webhooks::Delivery>> {
            let row = sqlx::query($crate::webhooks::SELECT_DELIVERY)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map($crate::webhooks::delivery).transpose()
        }

        async fn list_deliveries(
            &self,
            filter: &skygate_core::webhooks::DeliveryFilter,
        ) -> $crate::Result<Vec<skygate_core::webhooks::Delivery>> {
            let rows = sqlx::query($crate::webhooks::LIST_DELIVERIES)
                .bind(filter.prediction.as_ref().map(|p| p.as_str().to_owned()))
                .bind(i64::from(filter.failed_only))
                .bind($crate::webhooks::list_limit(filter.limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map($crate::webhooks::delivery).collect()
        }

        async fn delivery_attempts(
            &self,
            id: &skygate_core::webhooks::DeliveryId,
        ) -> $crate::Result<Vec<skygate_core::webhooks::DeliveryAttempt>> {
            let rows = sqlx::query($crate::webhooks::SELECT_ATTEMPTS)
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| $crate::webhooks::attempt(r, &self.sealer))
                .collect()
        }

        async fn retry_delivery(
            &self,
            id: &skygate_core::webhooks::DeliveryId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Option<skygate_core::webhooks::Delivery>> {
            sqlx::query($crate::webhooks::RETRY_DELIVERY)
                .bind(now.as_micros())
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
            self.delivery(id).await
        }
    };
}
pub(crate) use webhook_methods;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use skygate_core::Timestamp;

    use super::*;

    fn attempt(error: Option<&str>) -> DeliveryAttempt {
        DeliveryAttempt {
            delivery: new_delivery_id().unwrap(),
            number: 2,
            at: Timestamp::from_micros(5),
            duration_us: 10,
            status: Some(500),
            error: error.map(str::to_owned),
            next_attempt_at: None,
            response: None,
        }
    }

    #[test]
    fn limits_default_and_clamp() {
        assert_eq!(list_limit(0), 100);
        assert_eq!(list_limit(1), 1);
        assert_eq!(list_limit(1000), 1000);
        assert_eq!(list_limit(u32::MAX), 1000);
    }

    #[test]
    fn excerpts_are_cut_at_the_limit() {
        assert_eq!(excerpt(b"short"), b"short");
        let big = vec![7u8; MAX_RESPONSE_EXCERPT + 5];
        assert_eq!(excerpt(&big).len(), MAX_RESPONSE_EXCERPT);
    }

    #[test]
    fn the_next_step_sets_state_time_and_reason() {
        let a = attempt(Some("HTTP 500"));
        let at = Timestamp::from_micros(99);
        assert_eq!(
            after_attempt(&a, &NextStep::Retry { at }),
            (DeliveryState::Pending, Some(99), Some("HTTP 500"))
        );
        assert_eq!(
            after_attempt(&attempt(None), &NextStep::Delivered),
            (DeliveryState::Delivered, None, None)
        );
        let give_up = NextStep::GiveUp {
            reason: "gave up after 8 attempts".into(),
        };
        assert_eq!(
            after_attempt(&a, &give_up),
            (DeliveryState::Failed, None, Some("gave up after 8 attempts"))
        );
    }
}

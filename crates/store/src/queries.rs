//! The [`Store`](crate::Store) implementation both backends share. Its SQL is written once, in the subset
//! SQLite and PostgreSQL agree on (`$N` placeholders, `BIGINT` micros, byte strings for hashes). sqlx
//! has no practical generic executor over two databases, so [`impl_store!`] stamps the same method bodies
//! onto each backend's concrete pool type; rows are decoded by the shared [`crate::rows`].
//!
//! Where the dialects differ, the macro calls into the backend module, which owns that SQL:
//! `Self::run_migrations` (locking differs) and `Self::TOUCH_SQL` (`MAX` vs `GREATEST`). A future
//! method whose SQL differs follows the same pattern instead of branching here.

pub(crate) const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (id, email_index, email, shred_id, tier, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const SELECT_ACCOUNT_BY_ID: &str =
    "SELECT id, email, tier, created_at FROM accounts WHERE id = $1";
pub(crate) const SELECT_ACCOUNT_BY_EMAIL: &str =
    "SELECT id, email, tier, created_at FROM accounts WHERE email_index = $1";
pub(crate) const TWO_FACTOR_ADOPTION: &str = "SELECT (SELECT COUNT(*) FROM accounts), \
     (SELECT COUNT(*) FROM account_totp t JOIN accounts a ON a.id = t.account_id WHERE t.enabled_at IS NOT NULL)";
pub(crate) const UPDATE_ACCOUNT_TIER: &str = "UPDATE accounts SET tier = $1 WHERE id = $2";
pub(crate) const SELECT_ACCOUNT_SHRED: &str = "SELECT shred_id FROM accounts WHERE id = $1";
pub(crate) const DELETE_ACCOUNT: &str = "DELETE FROM accounts WHERE id = $1";

pub(crate) const INSERT_PENDING_SHRED: &str =
    "INSERT INTO pending_shreds (shred_id, reason, created_at) VALUES ($1, $2, $3)";
pub(crate) const SELECT_PENDING_SHREDS: &str = "SELECT shred_id FROM pending_shreds ORDER BY created_at";
pub(crate) const DELETE_PENDING_SHRED: &str = "DELETE FROM pending_shreds WHERE shred_id = $1";

pub(crate) const INSERT_PROJECT: &str =
    "INSERT INTO projects (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)";
pub(crate) const SELECT_PROJECT_SCOPED: &str =
    "SELECT id, account_id, name, created_at FROM projects WHERE account_id = $1 AND id = $2";
pub(crate) const SELECT_PROJECTS_OF_ACCOUNT: &str = "SELECT id, account_id, name, created_at FROM projects \
     WHERE account_id = $1 ORDER BY created_at DESC, id DESC";
pub(crate) const SELECT_PROJECT_BY_ID: &str =
    "SELECT id, account_id, name, created_at FROM projects WHERE id = $1";
/// The owning account and its shred key, for sealing a new key's name.
pub(crate) const SELECT_PROJECT_OWNER: &str = "SELECT p.account_id, a.shred_id FROM projects p \
     JOIN accounts a ON a.id = p.account_id WHERE p.id = $1";

pub(crate) const INSERT_API_KEY: &str = "INSERT INTO api_keys \
     (id, project_id, mode, name, key_hash, prefix, last4, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A key's columns with its project's `account_id`, as [`crate::rows::api_key`] reads them.
macro_rules! key_select {
    ($tail:literal) => {
        concat!(
            "SELECT k.id, k.project_id, p.account_id, k.mode, k.name, k.prefix, k.last4, k.created_at, ",
            "k.last_used_at, k.expires_at, k.revoked_at ",
            "FROM api_keys k JOIN projects p ON p.id = k.project_id ",
            $tail
        )
    };
}

pub(crate) const SELECT_KEY_BY_ID: &str = key_select!("WHERE k.id = $1");
pub(crate) const SELECT_KEY_OF_ACCOUNT: &str = key_select!("WHERE k.id = $1 AND p.account_id = $2");
pub(crate) const SELECT_KEYS_OF_PROJECT: &str =
    key_select!("WHERE k.project_id = $1 ORDER BY k.created_at DESC, k.id DESC");
pub(crate) const SELECT_ALL_KEYS: &str = key_select!("ORDER BY k.created_at DESC, k.id DESC");

/// Only the first revocation sets the time.
pub(crate) const REVOKE_KEY: &str =
    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
pub(crate) const KEY_EXISTS: &str = "SELECT 1 FROM api_keys WHERE id = $1";

/// The authentication lookup: one probe of the unique `key_hash` index, then two primary-key joins.
pub(crate) const SELECT_KEY_AUTH: &str =
    "SELECT k.id, k.project_id, p.account_id, k.mode, a.tier, k.key_hash, \
     k.expires_at, k.revoked_at \
     FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN accounts a ON a.id = p.account_id \
     WHERE k.key_hash = $1";

pub(crate) const SELECT_AUDIT_TAIL: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log \
     (seq, at, actor, action, target, detail, account_id, ip, user_agent, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// Every column of `audit_log`, as [`crate::rows::audit_entry`] reads them.
macro_rules! audit_select {
    ($tail:literal) => {
        concat!(
            "SELECT seq, at, actor, action, target, detail, account_id, ip, user_agent, prev_hash, hash ",
            "FROM audit_log ",
            $tail
        )
    };
}
pub(crate) const SELECT_AUDIT_PAGE: &str = audit_select!("WHERE seq > $1 ORDER BY seq LIMIT $2");
/// An account's entries, newest first, before `$2` (keyset pagination).
pub(crate) const SELECT_ACCOUNT_AUDIT: &str =
    audit_select!("WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3");

/// How many values of a sealed column each KEK version wraps (bytes 6..9 of the header, 1-based).
pub(crate) fn count_versions_sql(c: &crate::SealedColumn) -> String {
    format!(
        "SELECT substr({col}, 6, 4) AS v, COUNT(*) AS n FROM {table} WHERE {col} IS NOT NULL \
         GROUP BY substr({col}, 6, 4)",
        col = c.column,
        table = c.table
    )
}

/// The next rewrap batch of a sealed column: values under a version older than `$2` (big-endian bytes
/// compare like the numbers), keyset-paginated by key. Newer versions are left alone, so a node that has
/// not yet seen a rotation never moves values backwards.
pub(crate) fn rewrap_select_sql(c: &crate::SealedColumn) -> String {
    format!(
        "SELECT {key} AS k, {col} AS v FROM {table} WHERE {key} > $1 AND substr({col}, 6, 4) < $2 \
         ORDER BY {key} LIMIT $3",
        key = c.key,
        col = c.column,
        table = c.table
    )
}

/// Swaps one rewrapped value in, only if nobody changed it meanwhile.
pub(crate) fn rewrap_update_sql(c: &crate::SealedColumn) -> String {
    format!(
        "UPDATE {table} SET {col} = $1 WHERE {key} = $2 AND {col} = $3",
        key = c.key,
        col = c.column,
        table = c.table
    )
}

/// Collapses a batch of key uses to the latest use per key, sorted by id. Sorting makes two nodes that
/// flush overlapping batches lock the rows in the same order, so they cannot deadlock each other.
pub(crate) fn latest_uses(
    uses: &[(skygate_core::KeyId, skygate_core::Timestamp)],
) -> std::collections::BTreeMap<&str, i64> {
    let mut latest = std::collections::BTreeMap::new();
    for (id, at) in uses {
        let e = latest.entry(id.as_str()).or_insert(i64::MIN);
        *e = (*e).max(at.as_micros());
    }
    latest
}

/// Implements [`crate::Store`] for `$store`, which has fields `pool` (a concrete sqlx pool) and `sealer`
/// (a [`crate::Sealer`]), inherent `async fn run_migrations(&self) -> Result<()>` and `async fn
/// begin_write(&self) -> Result<Transaction>` (a transaction that holds the write lock the audit chain
/// needs: `BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL), `async fn begin_read_write(&self)
/// -> Result<Transaction>` (one that may write after reading: `BEGIN IMMEDIATE` on SQLite, an ordinary
/// transaction on PostgreSQL), and associated consts `TOUCH_SQL` (binds: `$1` the use time in micros,
/// `$2` the key id), `CLAIM_SQL` and `CLAIM_DELIVERIES_SQL` (the two claims' row locking), and `async fn
/// begin_capped_claim(&self) -> Result<Transaction>` (one in which capped queue claims take turns).
macro_rules! impl_store {
    ($store:ty, backend = $backend:literal, db = $db:ty) => {
        impl $store {
            $crate::predictions::prediction_helpers!();
            $crate::predictions::prediction_methods!($db);
            $crate::webhooks::webhook_helpers!($db);
            $crate::webhooks::webhook_methods!();
            $crate::access::access_methods!();
            $crate::second_factor::second_factor_methods!($db);
            $crate::console::console_methods!($db);

            /// Appends one audit entry inside `tx`, which holds the write lock (see `begin_write`).
            async fn append_audit_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                entry: &skygate_core::NewAuditEntry,
            ) -> $crate::Result<skygate_core::AuditEntry> {
                let tail: Option<(i64, Vec<u8>)> = sqlx::query_as($crate::queries::SELECT_AUDIT_TAIL)
                    .fetch_optional(&mut **tx)
                    .await?;
                let (seq, prev_hash) = match tail {
                    None => (1, skygate_core::audit::GENESIS),
                    Some((seq, hash)) => (
                        seq + 1,
                        hash.as_slice().try_into().map_err(|_| {
                            $crate::StoreError::Corrupt(format!("audit_log.hash of entry {seq}"))
                        })?,
                    ),
                };
                let hash = skygate_core::audit::chain_hash(&prev_hash, seq, entry);
                sqlx::query($crate::queries::INSERT_AUDIT)
                    .bind(seq)
                    .bind(entry.at.as_micros())
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.target)
                    .bind(&entry.detail)
                    .bind(&entry.account)
                    .bind(&entry.ip)
                    .bind(&entry.user_agent)
                    .bind(&prev_hash[..])
                    .bind(&hash[..])
                    .execute(&mut **tx)
                    .await?;
                Ok(skygate_core::AuditEntry { seq, entry: entry.clone(), prev_hash, hash })
            }
        }

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn sealer(&self) -> &$crate::Sealer {
                &self.sealer
            }

            // ── predictions: the bodies are inherent methods (`predictions::prediction_methods!`); a
            // macro call inside this impl would be invisible to `async_trait`, so these forward.

            async fn create_prediction(
                &self,
                new: &skygate_core::predictions::NewPrediction,
                window: std::time::Duration,
            ) -> $crate::Result<skygate_core::predictions::PredictionRecord> {
                <$store>::create_prediction(self, new, window).await
            }

            async fn prediction(
                &self,
                project: &skygate_core::ProjectId,
                id: &skygate_core::predictions::PredictionId,
            ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
                <$store>::prediction(self, project, id).await
            }

            async fn find_prediction(
                &self,
                id: &skygate_core::predictions::PredictionId,
            ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
                <$store>::find_prediction(self, id).await
            }

            async fn list_predictions(
                &self,
                project: &skygate_core::ProjectId,
                filter: &skygate_core::predictions::ListFilter,
                offset: u64,
                limit: u64,
            ) -> $crate::Result<(Vec<skygate_core::predictions::PredictionRecord>, u64)> {
                <$store>::list_predictions(self, project, filter, offset, limit).await
            }

            async fn cancel_prediction(
                &self,
                project: &skygate_core::ProjectId,
                id: &skygate_core::predictions::PredictionId,
                now: skygate_core::Timestamp,
                retention: std::time::Duration,
            ) -> $crate::Result<$crate::CancelOutcome> {
                <$store>::cancel_prediction(self, project, id, now, retention).await
            }

            async fn claim_predictions(
                &self,
                now: skygate_core::Timestamp,
                lease: std::time::Duration,
                limit: u32,
                caps: &skygate_core::predictions::RunningCaps,
            ) -> $crate::Result<Vec<skygate_core::predictions::Claimed>> {
                <$store>::claim_predictions(self, now, lease, limit, caps).await
            }

            async fn renew_lease(
                &self,
                id: &skygate_core::predictions::PredictionId,
                token: &str,
                until: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::LeaseCheck> {
                <$store>::renew_lease(self, id, token, until).await
            }

            async fn report_progress(
                &self,
                id: &skygate_core::predictions::PredictionId,
                token: &str,
                progress: u8,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::LeaseCheck> {
                <$store>::report_progress(self, id, token, progress, now).await
            }

            async fn report_partial_output(
                &self,
                id: &skygate_core::predictions::PredictionId,
                token: &str,
                output: &skygate_core::predictions::StoredOutput,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::LeaseCheck> {
                <$store>::report_partial_output(self, id, token, output, now).await
            }

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
                <$store>::complete_prediction(self, id, token, completion, metrics, now, retention, usage)
                    .await
            }

            async fn release_lease(
                &self,
                id: &skygate_core::predictions::PredictionId,
                token: &str,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::predictions::RELEASE)
                    .bind(now.as_micros())
                    .bind(id.as_str())
                    .bind(token)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn reclaim_expired(
                &self,
                now: skygate_core::Timestamp,
                max_attempts: u32,
                retention: std::time::Duration,
            ) -> $crate::Result<$crate::Reclaimed> {
                <$store>::reclaim_expired(self, now, max_attempts, retention).await
            }

            async fn due_purges(&self, now: skygate_core::Timestamp, limit: u32) -> $crate::Result<Vec<$crate::DuePurge>> {
                <$store>::due_purges(self, now, limit).await
            }

            async fn purge_prediction(
                &self,
                id: &skygate_core::predictions::PredictionId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Option<skygate_core::predictions::PredictionRecord>> {
                <$store>::purge_prediction(self, id, now).await
            }

            async fn delete_prediction(
                &self,
                project: &skygate_core::ProjectId,
                id: &skygate_core::predictions::PredictionId,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::predictions::DELETE_PREDICTION)
                    .bind(project.as_str())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn retire_windows(&self, now: skygate_core::Timestamp) -> $crate::Result<u64> {
                <$store>::retire_windows(self, now).await
            }

            async fn usage(
                &self,
                account: &skygate_core::AccountId,
                since: skygate_core::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<skygate_core::predictions::UsageRecord>> {
                <$store>::usage(self, account, since, limit).await
            }

            async fn record_usage(
                &self,
                account: &skygate_core::AccountId,
                record: &skygate_core::predictions::UsageRecord,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                <$store>::record_usage(self, account, record, now).await
            }

            // ── webhooks: the bodies are `webhooks::webhook_methods!`, forwarded for the same reason.

            async fn webhook_secrets(
                &self,
                project: &skygate_core::ProjectId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
                <$store>::webhook_secrets(self, project, now).await
            }

            async fn ensure_webhook_secret(
                &self,
                project: &skygate_core::ProjectId,
                candidate: &skygate_core::SecretString,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
                <$store>::ensure_webhook_secret(self, project, candidate, now).await
            }

            async fn rotate_webhook_secret(
                &self,
                project: &skygate_core::ProjectId,
                new: &skygate_core::SecretString,
                now: skygate_core::Timestamp,
                overlap: std::time::Duration,
            ) -> $crate::Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
                <$store>::rotate_webhook_secret(self, project, new, now, overlap).await
            }

            async fn claim_deliveries(
                &self,
                now: skygate_core::Timestamp,
                lease: std::time::Duration,
                limit: u32,
            ) -> $crate::Result<Vec<skygate_core::webhooks::ClaimedDelivery>> {
                <$store>::claim_deliveries(self, now, lease, limit).await
            }

            async fn record_attempts(
                &self,
                batch: &[skygate_core::webhooks::AttemptRecord],
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Vec<bool>> {
                <$store>::record_attempts(self, batch, now).await
            }

            async fn stop_prediction_deliveries(
                &self,
                prediction: &skygate_core::predictions::PredictionId,
                reason: &str,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<u64> {
                <$store>::stop_prediction_deliveries(self, prediction, reason, now).await
            }

            async fn release_delivery(
                &self,
                id: &skygate_core::webhooks::DeliveryId,
                lease_token: &str,
            ) -> $crate::Result<bool> {
                <$store>::release_delivery(self, id, lease_token).await
            }

            async fn delivery(
                &self,
                id: &skygate_core::webhooks::DeliveryId,
            ) -> $crate::Result<Option<skygate_core::webhooks::Delivery>> {
                <$store>::delivery(self, id).await
            }

            async fn list_deliveries(
                &self,
                filter: &skygate_core::webhooks::DeliveryFilter,
            ) -> $crate::Result<Vec<skygate_core::webhooks::Delivery>> {
                <$store>::list_deliveries(self, filter).await
            }

            async fn delivery_attempts(
                &self,
                id: &skygate_core::webhooks::DeliveryId,
            ) -> $crate::Result<Vec<skygate_core::webhooks::DeliveryAttempt>> {
                <$store>::delivery_attempts(self, id).await
            }

            async fn retry_delivery(
                &self,
                id: &skygate_core::webhooks::DeliveryId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Option<skygate_core::webhooks::Delivery>> {
                <$store>::retry_delivery(self, id, now).await
            }

            async fn migrate(&self) -> $crate::Result<()> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn create_account(
                &self,
                new: &skygate_core::NewAccount,
            ) -> $crate::Result<skygate_core::Account> {
                let id = new.id.as_str();
                let provider = self.sealer.cipher().provider().clone();
                let shred = provider.create_shred_key()?;
                let email = self.sealer.seal(("accounts", id, "email"), id, shred, &new.email)?;
                let inserted = sqlx::query($crate::queries::INSERT_ACCOUNT)
                    .bind(id)
                    .bind(&self.sealer.email_index(&new.email)[..])
                    .bind(email)
                    .bind(shred as i64)
                    .bind(new.tier.as_str())
                    .bind(new.created_at.as_micros())
                    .execute(&self.pool)
                    .await;
                if let Err(e) = inserted {
                    // Nothing references the new shred key: do not leave it behind in the provider.
                    let _ = provider.destroy_shred_key(shred);
                    return Err($crate::rows::constraint(e, "account email", || "account".into()));
                }
                Ok(skygate_core::Account {
                    id: new.id.clone(),
                    email: new.email.clone(),
                    tier: new.tier,
                    created_at: new.created_at,
                })
            }

            async fn account(
                &self,
                id: &skygate_core::AccountId,
            ) -> $crate::Result<Option<skygate_core::Account>> {
                let row = sqlx::query($crate::queries::SELECT_ACCOUNT_BY_ID)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| $crate::rows::account(r, &self.sealer)).transpose()
            }

            async fn account_by_email(&self, email: &str) -> $crate::Result<Option<skygate_core::Account>> {
                let row = sqlx::query($crate::queries::SELECT_ACCOUNT_BY_EMAIL)
                    .bind(&self.sealer.email_index(email)[..])
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| $crate::rows::account(r, &self.sealer)).transpose()
            }

            async fn two_factor_adoption(&self) -> $crate::Result<(u64, u64)> {
                let (total, on): (i64, i64) = sqlx::query_as($crate::queries::TWO_FACTOR_ADOPTION)
                    .fetch_one(&self.pool)
                    .await?;
                Ok((total.max(0) as u64, on.max(0) as u64))
            }

            async fn set_account_tier(
                &self,
                id: &skygate_core::AccountId,
                tier: skygate_core::Tier,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::queries::UPDATE_ACCOUNT_TIER)
                    .bind(tier.as_str())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn erase_account(
                &self,
                id: &skygate_core::AccountId,
                audit: &skygate_core::NewAuditEntry,
            ) -> $crate::Result<bool> {
                let mut tx = self.begin_write().await?;
                let shred: Option<i64> = sqlx::query_scalar($crate::queries::SELECT_ACCOUNT_SHRED)
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(shred) = shred else {
                    return Ok(false);
                };
                // The row says "destroy this key" before the data rows go, in the same transaction: a
                // crash after commit is finished by `finish_pending_shreds` on the next start. Deleting
                // the account cascades to everything it owns: projects, keys, predictions, usage, and
                // webhook secrets, deliveries and their attempts.
                sqlx::query($crate::queries::INSERT_PENDING_SHRED)
                    .bind(shred)
                    .bind(format!("account {id} erased"))
                    .bind(audit.at.as_micros())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::queries::DELETE_ACCOUNT)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                Self::append_audit_in(&mut tx, audit).await?;
                tx.commit().await?;
                self.finish_pending_shreds().await?;
                Ok(true)
            }

            async fn finish_pending_shreds(&self) -> $crate::Result<u64> {
                let pending: Vec<i64> = sqlx::query_scalar($crate::queries::SELECT_PENDING_SHREDS)
                    .fetch_all(&self.pool)
                    .await?;
                let provider = self.sealer.cipher().provider();
                for shred in &pending {
                    provider.destroy_shred_key(*shred as u64)?;
                    sqlx::query($crate::queries::DELETE_PENDING_SHRED)
                        .bind(shred)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(pending.len() as u64)
            }

            async fn create_project(
                &self,
                account: &skygate_core::AccountId,
                new: &skygate_core::NewProject,
            ) -> $crate::Result<skygate_core::Project> {
                let shred = self.account_shred(account).await?;
                let name = self.sealer.seal(
                    ("projects", new.id.as_str(), "name"),
                    account.as_str(),
                    shred,
                    &new.name,
                )?;
                // The foreign key is the existence check against a concurrent erase: one statement.
                sqlx::query($crate::queries::INSERT_PROJECT)
                    .bind(new.id.as_str())
                    .bind(account.as_str())
                    .bind(name)
                    .bind(new.created_at.as_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| {
                        $crate::rows::constraint(e, "project id", || format!("account {account}"))
                    })?;
                Ok(skygate_core::Project {
                    id: new.id.clone(),
                    account_id: account.clone(),
                    name: new.name.clone(),
                    created_at: new.created_at,
                })
            }

            async fn project(
                &self,
                account: &skygate_core::AccountId,
                id: &skygate_core::ProjectId,
            ) -> $crate::Result<Option<skygate_core::Project>> {
                let row = sqlx::query($crate::queries::SELECT_PROJECT_SCOPED)
                    .bind(account.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| $crate::rows::project(r, &self.sealer)).transpose()
            }

            async fn list_projects(
                &self,
                account: &skygate_core::AccountId,
            ) -> $crate::Result<Vec<skygate_core::Project>> {
                let rows = sqlx::query($crate::queries::SELECT_PROJECTS_OF_ACCOUNT)
                    .bind(account.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| $crate::rows::project(r, &self.sealer)).collect()
            }

            async fn find_project(
                &self,
                id: &skygate_core::ProjectId,
            ) -> $crate::Result<Option<skygate_core::Project>> {
                let row = sqlx::query($crate::queries::SELECT_PROJECT_BY_ID)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|r| $crate::rows::project(r, &self.sealer)).transpose()
            }

            async fn create_api_key(
                &self,
                project: &skygate_core::ProjectId,
                new: &skygate_core::NewApiKey,
            ) -> $crate::Result<skygate_core::ApiKeyRecord> {
                let owner: Option<(String, i64)> = sqlx::query_as($crate::queries::SELECT_PROJECT_OWNER)
                    .bind(project.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                let Some((account, shred)) = owner else {
                    return Err($crate::StoreError::NotFound(format!("project {project}")));
                };
                let name =
                    self.sealer
                        .seal(("api_keys", new.id.as_str(), "name"), &account, shred as u64, &new.name)?;
                // Write first, then read back inside the same transaction: the write takes the lock, so
                // the read sees a consistent project (and SQLite never has to upgrade a read lock).
                let mut tx = self.pool.begin().await?;
                sqlx::query($crate::queries::INSERT_API_KEY)
                    .bind(new.id.as_str())
                    .bind(project.as_str())
                    .bind(new.mode.as_str())
                    .bind(name)
                    .bind(&new.hash[..])
                    .bind(&new.prefix)
                    .bind(&new.last4)
                    .bind(new.created_at.as_micros())
                    .bind(new.expires_at.map(skygate_core::Timestamp::as_micros))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        $crate::rows::constraint(e, "API key hash", || format!("project {project}"))
                    })?;
                let row = sqlx::query($crate::queries::SELECT_KEY_BY_ID)
                    .bind(new.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let record = $crate::rows::api_key(&row, &self.sealer)?;
                tx.commit().await?;
                Ok(record)
            }

            async fn list_api_keys(
                &self,
                project: &skygate_core::ProjectId,
            ) -> $crate::Result<Vec<skygate_core::ApiKeyRecord>> {
                let rows = sqlx::query($crate::queries::SELECT_KEYS_OF_PROJECT)
                    .bind(project.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| $crate::rows::api_key(r, &self.sealer)).collect()
            }

            async fn list_all_api_keys(&self) -> $crate::Result<Vec<skygate_core::ApiKeyRecord>> {
                let rows = sqlx::query($crate::queries::SELECT_ALL_KEYS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| $crate::rows::api_key(r, &self.sealer)).collect()
            }

            async fn revoke_api_key(
                &self,
                id: &skygate_core::KeyId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::RevokeOutcome> {
                let done = sqlx::query($crate::queries::REVOKE_KEY)
                    .bind(now.as_micros())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok($crate::RevokeOutcome::Revoked);
                }
                // Nothing changed: either it was revoked before (keep that time) or it never existed.
                let exists = sqlx::query($crate::queries::KEY_EXISTS)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok($crate::RevokeOutcome::unchanged(exists.is_some()))
            }

            async fn api_key_by_hash(
                &self,
                hash: &[u8; 32],
            ) -> $crate::Result<Option<skygate_core::KeyAuthRecord>> {
                let row = sqlx::query($crate::queries::SELECT_KEY_AUTH)
                    .bind(&hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::key_auth).transpose()
            }

            async fn touch_api_keys(
                &self,
                uses: &[(skygate_core::KeyId, skygate_core::Timestamp)],
            ) -> $crate::Result<()> {
                if uses.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                for (id, at) in $crate::queries::latest_uses(uses) {
                    sqlx::query(Self::TOUCH_SQL)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn append_audit(
                &self,
                entry: &skygate_core::NewAuditEntry,
            ) -> $crate::Result<skygate_core::AuditEntry> {
                let mut tx = self.begin_write().await?;
                let stored = Self::append_audit_in(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(stored)
            }

            // ── access tokens and account-scoped lookups: `access::access_methods!`, forwarded.

            async fn create_access_token(
                &self,
                account: &skygate_core::AccountId,
                new: &skygate_core::token::NewAccessToken,
            ) -> $crate::Result<skygate_core::TokenRecord> {
                <$store>::create_access_token(self, account, new).await
            }

            async fn list_access_tokens(
                &self,
                account: &skygate_core::AccountId,
            ) -> $crate::Result<Vec<skygate_core::TokenRecord>> {
                <$store>::list_access_tokens(self, account).await
            }

            async fn revoke_access_token(
                &self,
                account: &skygate_core::AccountId,
                id: &skygate_core::TokenId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::RevokeOutcome> {
                <$store>::revoke_access_token(self, account, id, now).await
            }

            async fn access_token_by_hash(
                &self,
                hash: &[u8; 32],
            ) -> $crate::Result<Option<skygate_core::TokenAuthRecord>> {
                <$store>::access_token_by_hash(self, hash).await
            }

            async fn touch_access_token(
                &self,
                id: &skygate_core::TokenId,
                at: skygate_core::Timestamp,
            ) -> $crate::Result<()> {
                <$store>::touch_access_token(self, id, at).await
            }

            async fn account_api_key(
                &self,
                account: &skygate_core::AccountId,
                id: &skygate_core::KeyId,
            ) -> $crate::Result<Option<skygate_core::ApiKeyRecord>> {
                <$store>::account_api_key(self, account, id).await
            }

            async fn find_api_key(
                &self,
                id: &skygate_core::KeyId,
            ) -> $crate::Result<Option<skygate_core::ApiKeyRecord>> {
                <$store>::find_api_key(self, id).await
            }

            async fn account_audit(
                &self,
                account: &skygate_core::AccountId,
                before_seq: i64,
                limit: i64,
            ) -> $crate::Result<Vec<skygate_core::AuditEntry>> {
                <$store>::account_audit(self, account, before_seq, limit).await
            }

            // ── two-factor authentication: `second_factor::second_factor_methods!`, forwarded.

            async fn begin_totp(
                &self,
                account: &skygate_core::AccountId,
                secret: &skygate_core::totp::TotpSecret,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                <$store>::begin_totp(self, account, secret, now).await
            }

            async fn totp_state(
                &self,
                account: &skygate_core::AccountId,
            ) -> $crate::Result<Option<skygate_core::totp::TotpState>> {
                <$store>::totp_state(self, account).await
            }

            async fn confirm_totp(
                &self,
                account: &skygate_core::AccountId,
                step: u64,
                codes: &[[u8; 32]],
                now: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                <$store>::confirm_totp(self, account, step, codes, now).await
            }

            async fn accept_totp_step(&self, account: &skygate_core::AccountId, step: u64) -> $crate::Result<bool> {
                <$store>::accept_totp_step(self, account, step).await
            }

            async fn record_second_factor_failure(
                &self,
                account: &skygate_core::AccountId,
                max_failures: u32,
                locked_until: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                <$store>::record_second_factor_failure(self, account, max_failures, locked_until).await
            }

            async fn replace_recovery_codes(
                &self,
                account: &skygate_core::AccountId,
                codes: &[[u8; 32]],
                now: skygate_core::Timestamp,
            ) -> $crate::Result<()> {
                <$store>::replace_recovery_codes(self, account, codes, now).await
            }

            async fn use_recovery_code(
                &self,
                account: &skygate_core::AccountId,
                hash: &[u8; 32],
                now: skygate_core::Timestamp,
            ) -> $crate::Result<bool> {
                <$store>::use_recovery_code(self, account, hash, now).await
            }

            async fn recovery_codes_left(&self, account: &skygate_core::AccountId) -> $crate::Result<u32> {
                <$store>::recovery_codes_left(self, account).await
            }

            async fn disable_totp(&self, account: &skygate_core::AccountId) -> $crate::Result<bool> {
                <$store>::disable_totp(self, account).await
            }

            async fn two_factor_enabled(&self, account: &skygate_core::AccountId) -> $crate::Result<bool> {
                <$store>::two_factor_enabled(self, account).await
            }

            // ── console: `console::console_methods!`, forwarded.

            async fn issue_setup_link(
                &self,
                account: &skygate_core::AccountId,
                hash: &[u8; 32],
                purpose: skygate_core::session::SetupPurpose,
                now: skygate_core::Timestamp,
                expires_at: skygate_core::Timestamp,
            ) -> $crate::Result<()> {
                <$store>::issue_setup_link(self, account, hash, purpose, now, expires_at).await
            }

            async fn setup_link_account(
                &self,
                hash: &[u8; 32],
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Option<skygate_core::AccountId>> {
                <$store>::setup_link_account(self, hash, now).await
            }

            async fn redeem_setup_link(
                &self,
                hash: &[u8; 32],
                phc: &str,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Option<skygate_core::AccountId>> {
                <$store>::redeem_setup_link(self, hash, phc, now).await
            }

            async fn password(
                &self,
                account: &skygate_core::AccountId,
            ) -> $crate::Result<Option<skygate_core::session::PasswordRecord>> {
                <$store>::password(self, account).await
            }

            async fn create_session(&self, new: &skygate_core::session::NewSession) -> $crate::Result<()> {
                <$store>::create_session(self, new).await
            }

            async fn replace_session(
                &self,
                old: &skygate_core::SessionId,
                new: &skygate_core::session::NewSession,
            ) -> $crate::Result<bool> {
                <$store>::replace_session(self, old, new).await
            }

            async fn session_by_hash(
                &self,
                hash: &[u8; 32],
            ) -> $crate::Result<Option<skygate_core::session::SessionRecord>> {
                <$store>::session_by_hash(self, hash).await
            }

            async fn touch_session(
                &self,
                id: &skygate_core::SessionId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<()> {
                <$store>::touch_session(self, id, now).await
            }

            async fn list_sessions(
                &self,
                account: &skygate_core::AccountId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<Vec<skygate_core::session::SessionRecord>> {
                <$store>::list_sessions(self, account, now).await
            }

            async fn delete_session(
                &self,
                account: &skygate_core::AccountId,
                id: &skygate_core::SessionId,
            ) -> $crate::Result<bool> {
                <$store>::delete_session(self, account, id).await
            }

            async fn audit_page(
                &self,
                after_seq: i64,
                limit: i64,
            ) -> $crate::Result<Vec<skygate_core::AuditEntry>> {
                let rows = sqlx::query($crate::queries::SELECT_AUDIT_PAGE)
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::rows::audit_entry).collect()
            }

            async fn sealed_versions(
                &self,
                column: &$crate::SealedColumn,
            ) -> $crate::Result<std::collections::BTreeMap<u32, u64>> {
                let rows: Vec<(Vec<u8>, i64)> =
                    sqlx::query_as(&$crate::queries::count_versions_sql(column))
                        .fetch_all(&self.pool)
                        .await?;
                let mut out = std::collections::BTreeMap::new();
                for (v, n) in rows {
                    let v = $crate::seal::version_of(&v).ok_or_else(|| {
                        $crate::StoreError::Corrupt(format!(
                            "{}.{}: a value too short to be sealed",
                            column.table, column.column
                        ))
                    })?;
                    *out.entry(v).or_insert(0) += n as u64;
                }
                Ok(out)
            }

            async fn rewrap_batch(
                &self,
                column: &$crate::SealedColumn,
                after_key: &str,
                limit: i64,
            ) -> $crate::Result<$crate::RewrapBatch> {
                let cipher = self.sealer.cipher();
                let current = cipher.provider().current_version();
                let rows: Vec<(String, Vec<u8>)> =
                    sqlx::query_as(&$crate::queries::rewrap_select_sql(column))
                        .bind(after_key)
                        .bind($crate::seal::version_bytes(current))
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                let mut batch = $crate::RewrapBatch {
                    last_key: rows.last().map(|(k, _)| k.clone()),
                    ..Default::default()
                };
                let update = $crate::queries::rewrap_update_sql(column);
                for (key, old) in rows {
                    match cipher.rewrap(&old) {
                        Ok(Some(new)) => {
                            let done = sqlx::query(&update)
                                .bind(new)
                                .bind(&key)
                                .bind(old)
                                .execute(&self.pool)
                                .await?;
                            // 0 rows: the value changed or went away meanwhile; the new value (if any) was
                            // sealed under the current version, so there is nothing left to do.
                            batch.moved += done.rows_affected();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(
                                table = column.table,
                                column = column.column,
                                row = %key,
                                error = %e,
                                "cannot rewrap a sealed value"
                            );
                            batch.failed += 1;
                        }
                    }
                }
                Ok(batch)
            }
        }
    };
}

pub(crate) use impl_store;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use skygate_core::{KeyId, Timestamp};

    use super::*;

    #[test]
    fn latest_uses_keeps_the_max_per_key_in_id_order() {
        let a = KeyId::generate().unwrap();
        let b = KeyId::generate().unwrap();
        let t = Timestamp::from_micros;
        let uses = [
            (a.clone(), t(5)),
            (b.clone(), t(1)),
            (a.clone(), t(9)),
            (a.clone(), t(7)),
        ];
        let got = latest_uses(&uses);
        let mut want = vec![(a.as_str(), 9), (b.as_str(), 1)];
        want.sort();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
    }
}

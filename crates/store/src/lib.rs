//! skygate persistence. [`Store`] is the one interface the server and CLI use; it has two
//! implementations with the same behaviour, proven by one conformance suite (`tests/conformance/`):
//! [`sqlite::SqliteStore`] (embedded default, WAL mode) and [`postgres::PgStore`] (scale-out). Each has
//! its own embedded migrations tree under `migrations/`. SQL dialect differences stay inside the two
//! modules; nothing outside this crate sees SQL.
//!
//! Tenant scoping: methods that act inside a tenant take it first (`account`, then `project`), so no query
//! can forget it. Operator-level methods (used by the CLI on the host) say so in their docs.

mod access;
mod console;
pub mod error;
pub mod objects;
pub mod postgres;
mod predictions;
mod queries;
mod rows;
pub mod seal;
mod second_factor;
pub mod sqlite;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use skygate_core::predictions::{
    Claimed, Completion, ListFilter, NewPrediction, PredictionId, PredictionRecord, RunMetrics, StoredOutput,
    UsageRecord,
};
use skygate_core::session::{NewSession, PasswordRecord, SessionRecord, SetupPurpose};
use skygate_core::token::NewAccessToken;
use skygate_core::totp::{TotpSecret, TotpState};
use skygate_core::webhooks::{
    AttemptRecord, ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryFilter, DeliveryId, NextStep,
    WebhookSecretRecord,
};
use skygate_core::{
    Account, AccountId, ApiKeyRecord, AuditEntry, KeyAuthRecord, KeyId, NewAccount, NewApiKey, NewAuditEntry,
    NewProject, Project, ProjectId, SecretString, SessionId, Tier, Timestamp, TokenAuthRecord, TokenId,
    TokenRecord,
};

pub use error::StoreError;
pub use seal::{SealedColumn, Sealer, SEALED_COLUMNS};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What `revoke_api_key` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

impl RevokeOutcome {
    /// A revoke that changed nothing: the credential was revoked before, or never existed.
    pub(crate) fn unchanged(exists: bool) -> Self {
        if exists {
            RevokeOutcome::AlreadyRevoked
        } else {
            RevokeOutcome::NotFound
        }
    }
}

/// What one [`Store::rewrap_batch`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapBatch {
    /// Values moved to the current KEK version.
    pub moved: u64,
    /// Values that could not be rewrapped (logged; they keep their old version).
    pub failed: u64,
    /// The last row key looked at; `None` when the column has nothing more to rewrap.
    pub last_key: Option<String>,
}

/// What `cancel_prediction` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It was pending and is now cancelled.
    Cancelled(PredictionRecord),
    /// It is running: the worker was asked to stop (see `PredictionRecord::cancel_requested`).
    Requested(PredictionRecord),
    /// It had already finished; nothing changed.
    AlreadyTerminal(PredictionRecord),
    NotFound,
}

/// What a worker learns when it checks in on a running prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Still ours; `cancel` says whether someone asked to cancel it.
    Held { cancel: bool },
    /// Expired and reclaimed, finished, or purged: stop working on it and write nothing.
    Lost,
}

/// What one `reclaim_expired` pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Put back in the queue to run again.
    pub requeued: u64,
    /// Failed after too many attempts.
    pub failed: u64,
    /// Cancelled: a cancel had been asked for.
    pub cancelled: u64,
}

/// A prediction whose data is due to be destroyed: what the sweeper needs to delete its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePurge {
    pub id: PredictionId,
    pub account: AccountId,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The sealer every sensitive column goes through.
    fn sealer(&self) -> &Sealer;

    /// Applies pending embedded migrations. Idempotent; safe to run from several processes at once.
    async fn migrate(&self) -> Result<()>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<()>;

    /// Closes the pool, waiting for connections to be returned.
    async fn close(&self);

    // ── accounts (operator level) ──────────────────────────────────────────────────────────────────

    /// Inserts an account. `email` is already normalised. Duplicate email → `StoreError::Conflict`.
    async fn create_account(&self, new: &NewAccount) -> Result<Account>;
    async fn account(&self, id: &AccountId) -> Result<Option<Account>>;
    async fn account_by_email(&self, email: &str) -> Result<Option<Account>>;
    /// How many accounts exist, and how many of them have two-factor authentication on.
    async fn two_factor_adoption(&self) -> Result<(u64, u64)>;
    /// Returns false if there is no such account.
    async fn set_account_tier(&self, id: &AccountId, tier: Tier) -> Result<bool>;
    /// Operator level: deletes the account with everything it owns (projects, keys, predictions, usage,
    /// webhook secrets, deliveries and attempts), appends `audit` to the audit log
    /// in the same transaction, and destroys the account's shred key, so its sealed values cannot be
    /// read from any backup either. Returns false if there is no such account.
    async fn erase_account(&self, id: &AccountId, audit: &NewAuditEntry) -> Result<bool>;
    /// Destroys shred keys whose rows were deleted by an erase that crashed before destroying them.
    /// Called at start; returns how many it finished.
    async fn finish_pending_shreds(&self) -> Result<u64>;

    // ── projects (tenant: account) ─────────────────────────────────────────────────────────────────

    /// Unknown account → `StoreError::NotFound`.
    async fn create_project(&self, account: &AccountId, new: &NewProject) -> Result<Project>;
    async fn project(&self, account: &AccountId, id: &ProjectId) -> Result<Option<Project>>;
    async fn list_projects(&self, account: &AccountId) -> Result<Vec<Project>>;
    /// Operator level: finds a project by id alone (the CLI is given only the project id).
    async fn find_project(&self, id: &ProjectId) -> Result<Option<Project>>;

    // ── API keys (tenant: project) ─────────────────────────────────────────────────────────────────

    /// Unknown project → `StoreError::NotFound`; duplicate hash → `StoreError::Conflict`.
    async fn create_api_key(&self, project: &ProjectId, new: &NewApiKey) -> Result<ApiKeyRecord>;
    /// Keys of one project, newest first.
    async fn list_api_keys(&self, project: &ProjectId) -> Result<Vec<ApiKeyRecord>>;
    /// Operator level: every key of every project, newest first.
    async fn list_all_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Operator level: sets `revoked_at` once (a second revoke keeps the first time).
    async fn revoke_api_key(&self, id: &KeyId, now: Timestamp) -> Result<RevokeOutcome>;
    /// Authentication lookup by keyed hash (unique index), joined with the account's tier.
    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyAuthRecord>>;
    /// Records key use in one batch: `last_used_at = max(last_used_at, ts)` for each pair. Unknown ids are
    /// ignored.
    async fn touch_api_keys(&self, uses: &[(KeyId, Timestamp)]) -> Result<()>;

    /// The key `id` if it belongs to one of `account`'s projects (another account's key is `None`, like
    /// an unknown id).
    async fn account_api_key(&self, account: &AccountId, id: &KeyId) -> Result<Option<ApiKeyRecord>>;
    /// Operator level: a key by id alone.
    async fn find_api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>>;

    // ── access tokens (tenant: account) ────────────────────────────────────────────────────────────

    /// Unknown account → `StoreError::NotFound`; duplicate hash → `StoreError::Conflict`. The name is
    /// sealed under the account's shred key.
    async fn create_access_token(&self, account: &AccountId, new: &NewAccessToken) -> Result<TokenRecord>;
    /// The account's tokens, newest first (never a secret: only the hash was stored).
    async fn list_access_tokens(&self, account: &AccountId) -> Result<Vec<TokenRecord>>;
    /// Sets `revoked_at` once; another account's token is `NotFound`.
    async fn revoke_access_token(
        &self,
        account: &AccountId,
        id: &TokenId,
        now: Timestamp,
    ) -> Result<RevokeOutcome>;
    /// Authentication lookup by keyed hash (unique index), joined with the account's tier.
    async fn access_token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenAuthRecord>>;
    /// `last_used_at = max(last_used_at, at)`. An unknown id is ignored.
    async fn touch_access_token(&self, id: &TokenId, at: Timestamp) -> Result<()>;

    // ── two-factor authentication (tenant: account) ────────────────────────────────────────────────

    /// Starts (or restarts) an enrolment with `secret`, sealed under the account's shred key; the
    /// second factor stays off until [`Store::confirm_totp`]. False if 2FA is already on (nothing
    /// changes). Unknown account → `NotFound`.
    async fn begin_totp(&self, account: &AccountId, secret: &TotpSecret, now: Timestamp) -> Result<bool>;
    /// The stored second factor, if any (pending or enabled).
    async fn totp_state(&self, account: &AccountId) -> Result<Option<TotpState>>;
    /// Turns a pending enrolment on with the step of its first code, and stores `codes` (keyed hashes)
    /// as the only recovery codes, in one transaction. False if there is no pending enrolment.
    async fn confirm_totp(
        &self,
        account: &AccountId,
        step: u64,
        codes: &[[u8; 32]],
        now: Timestamp,
    ) -> Result<bool>;
    /// Records a code of `step` as used, clearing failures, only if `step` is later than the last one
    /// accepted: false means a replay (or no second factor). Atomic across nodes.
    async fn accept_totp_step(&self, account: &AccountId, step: u64) -> Result<bool>;
    /// Counts a wrong second factor; on the `max_failures`-th it locks the second factor until
    /// `locked_until` and starts counting again. Returns whether this failure locked it.
    async fn record_second_factor_failure(
        &self,
        account: &AccountId,
        max_failures: u32,
        locked_until: Timestamp,
    ) -> Result<bool>;
    /// Replaces every recovery code of the account with `codes` (keyed hashes).
    async fn replace_recovery_codes(
        &self,
        account: &AccountId,
        codes: &[[u8; 32]],
        now: Timestamp,
    ) -> Result<()>;
    /// Marks the unused code with this hash used; false if there is none (wrong, or used before).
    async fn use_recovery_code(&self, account: &AccountId, hash: &[u8; 32], now: Timestamp) -> Result<bool>;
    async fn recovery_codes_left(&self, account: &AccountId) -> Result<u32>;
    /// Removes the second factor and its recovery codes. False if there was none.
    async fn disable_totp(&self, account: &AccountId) -> Result<bool>;
    /// Whether the account has a confirmed second factor.
    async fn two_factor_enabled(&self, account: &AccountId) -> Result<bool>;

    // ── console: passwords, setup links, sessions (tenant: account) ───────────────────────────────

    /// Stores a setup link (its keyed hash) for `account`, good until `expires_at`; earlier unused links
    /// of the account stop working. Unknown account → `NotFound`.
    async fn issue_setup_link(
        &self,
        account: &AccountId,
        hash: &[u8; 32],
        purpose: SetupPurpose,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()>;
    /// The account of an unused, unexpired link (it stays unused).
    async fn setup_link_account(&self, hash: &[u8; 32], now: Timestamp) -> Result<Option<AccountId>>;
    /// Uses the link once: sets the account's password to `phc` (at `now`) and ends its sessions, in
    /// one transaction. `None` (nothing changes) if the link is unknown, used or expired.
    async fn redeem_setup_link(
        &self,
        hash: &[u8; 32],
        phc: &str,
        now: Timestamp,
    ) -> Result<Option<AccountId>>;
    /// The account's password hash and its age; `None` before the first setup (or no such account).
    async fn password(&self, account: &AccountId) -> Result<Option<PasswordRecord>>;
    /// Unknown account → `NotFound`.
    async fn create_session(&self, new: &NewSession) -> Result<()>;
    /// Ends session `old` and starts `new` in one transaction (id rotation); false (nothing changes) if
    /// `old` is gone already.
    async fn replace_session(&self, old: &SessionId, new: &NewSession) -> Result<bool>;
    /// The session whose cookie secret has this keyed hash (expired ones too: the caller checks).
    async fn session_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>>;
    /// `last_seen_at = max(last_seen_at, now)`.
    async fn touch_session(&self, id: &SessionId, now: Timestamp) -> Result<()>;
    /// The account's sessions not past their absolute end, most recently seen first.
    async fn list_sessions(&self, account: &AccountId, now: Timestamp) -> Result<Vec<SessionRecord>>;
    /// Ends one of the account's sessions; false if there is none (another account's included).
    async fn delete_session(&self, account: &AccountId, id: &SessionId) -> Result<bool>;

    // ── predictions (tenant: project) and the queue ──────────────────────────────────────────────────

    /// Commits a new `pending` prediction. `input` and `webhook` are sealed under the shred key of the
    /// retention window (`window` long) its creation time falls in; the webhook's URL is also kept as the
    /// delivery target, sealed under the account's shred key (it outlives the purge, for retries), with
    /// the subscribed events (an empty list: every terminal event). Unknown project → `NotFound`; an
    /// unknown event name → `Invalid` (the caller validates first).
    ///
    /// Every method below that changes a prediction's status writes the webhook delivery announcing it
    /// (if subscribed) in the same transaction: `started` when claimed (once per prediction), and
    /// `succeeded`, `failed` or `cancelled` when it ends, however it ends.
    async fn create_prediction(
        &self,
        new: &NewPrediction,
        window: std::time::Duration,
    ) -> Result<PredictionRecord>;
    /// One prediction of `project`; another project's is `None`, like an unknown id.
    async fn prediction(&self, project: &ProjectId, id: &PredictionId) -> Result<Option<PredictionRecord>>;
    /// Operator/worker level: a prediction by id alone (signed output URLs carry no credential).
    async fn find_prediction(&self, id: &PredictionId) -> Result<Option<PredictionRecord>>;
    /// One page of a project's predictions, newest first, and how many match in all.
    async fn list_predictions(
        &self,
        project: &ProjectId,
        filter: &ListFilter,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<PredictionRecord>, u64)>;
    /// Cancels a pending prediction at once, or asks the worker running it to stop.
    async fn cancel_prediction(
        &self,
        project: &ProjectId,
        id: &PredictionId,
        now: Timestamp,
        retention: std::time::Duration,
    ) -> Result<CancelOutcome>;

    /// Claims up to `limit` pending predictions, oldest first, for `lease` (atomic across processes and
    /// nodes: `FOR UPDATE SKIP LOCKED` on PostgreSQL, one writer at a time on SQLite). Each moves to
    /// `starting` with one more attempt and a fresh lease token. Under `caps`, an account's predictions
    /// are claimed only while fewer than its tier's ceiling are running (capped claims take turns across
    /// nodes); the rest stay pending, and other accounts' work is claimed past them.
    async fn claim_predictions(
        &self,
        now: Timestamp,
        lease: std::time::Duration,
        limit: u32,
        caps: &skygate_core::predictions::RunningCaps,
    ) -> Result<Vec<Claimed>>;
    /// Extends the lease to `until` if still held, and reports whether a cancel was asked for.
    async fn renew_lease(&self, id: &PredictionId, token: &str, until: Timestamp) -> Result<LeaseCheck>;
    /// Records progress (and `processing`, with `started_at` on the first call) if the lease is still held.
    async fn report_progress(
        &self,
        id: &PredictionId,
        token: &str,
        progress: u8,
        now: Timestamp,
    ) -> Result<LeaseCheck>;
    /// Records the output a running prediction produced so far (text only; anything else is `Invalid`),
    /// sealed like the final output (same column, AAD and the prediction's shred key), and marks it
    /// `processing`, if the lease is still held and it is still running; otherwise writes nothing
    /// (`Lost`). Reads show it until the prediction ends: completion replaces it with the final output
    /// (or clears it when failed or cancelled), and a requeue, release, reclaim or purge clears it.
    async fn report_partial_output(
        &self,
        id: &PredictionId,
        token: &str,
        output: &StoredOutput,
        now: Timestamp,
    ) -> Result<LeaseCheck>;
    /// Moves a claimed prediction to its terminal status (sealing output or error) with its usage record,
    /// in one transaction, if the lease is still held. Returns false (and writes nothing) otherwise. The
    /// output column ends holding the final output, or nothing when the prediction did not succeed.
    #[allow(clippy::too_many_arguments)]
    async fn complete_prediction(
        &self,
        id: &PredictionId,
        token: &str,
        completion: &Completion,
        metrics: &RunMetrics,
        now: Timestamp,
        retention: std::time::Duration,
        usage: Option<&UsageRecord>,
    ) -> Result<bool>;
    /// Gives a claimed prediction back to the queue (a node shutting down gracefully): `pending` again,
    /// the attempt not counted, if the lease is still held and no cancel was asked for (a cancelled one is
    /// left to expire and end `cancelled`). Returns whether it was released.
    async fn release_lease(&self, id: &PredictionId, token: &str, now: Timestamp) -> Result<bool>;
    /// Leases that expired at `now` (their worker died): requeued, or failed once `max_attempts` runs
    /// were started, or cancelled if a cancel was asked for.
    async fn reclaim_expired(
        &self,
        now: Timestamp,
        max_attempts: u32,
        retention: std::time::Duration,
    ) -> Result<Reclaimed>;

    // ── retention ──────────────────────────────────────────────────────────────────────────────────

    /// Predictions whose data is due for destruction at `now` (purge time passed, data still there).
    async fn due_purges(&self, now: Timestamp, limit: u32) -> Result<Vec<DuePurge>>;
    /// Destroys a prediction's sealed input, output, error and webhook now (the row keeps metadata, with
    /// `data_removed`). A running prediction is also cancelled. Idempotent. Returns the record after, or
    /// `None` if there is no such prediction. The caller deletes the output objects first.
    async fn purge_prediction(&self, id: &PredictionId, now: Timestamp) -> Result<Option<PredictionRecord>>;
    /// Deletes a prediction of `project` for good (after the caller purged its data and objects).
    /// Returns false if there is no such prediction.
    async fn delete_prediction(&self, project: &ProjectId, id: &PredictionId) -> Result<bool>;
    /// Destroys the shred keys of retention windows that are over and whose predictions are all purged
    /// (or deleted). Returns how many keys it destroyed.
    async fn retire_windows(&self, now: Timestamp) -> Result<u64>;

    // ── webhooks (worker and operator level) ────────────────────────────────────────────────────────────

    /// The project's signing secrets that still sign at `now` (not retired, or retiring later), newest
    /// version first.
    async fn webhook_secrets(&self, project: &ProjectId, now: Timestamp) -> Result<Vec<WebhookSecretRecord>>;
    /// The valid secrets, storing `candidate` as the next version first if there is none. Safe to race:
    /// nodes ensuring at once end with one secret (all of them return it). Unknown project → `NotFound`.
    async fn ensure_webhook_secret(
        &self,
        project: &ProjectId,
        candidate: &SecretString,
        now: Timestamp,
    ) -> Result<Vec<WebhookSecretRecord>>;
    /// In one transaction: every valid secret not yet retiring retires at `now + overlap` (ones already
    /// retiring keep their time), and `new` becomes the next version. Returns the valid secrets, newest
    /// first. Unknown project → `NotFound`.
    async fn rotate_webhook_secret(
        &self,
        project: &ProjectId,
        new: &SecretString,
        now: Timestamp,
        overlap: std::time::Duration,
    ) -> Result<Vec<WebhookSecretRecord>>;
    /// Claims up to `limit` due deliveries (pending, `next_attempt_at <= now`, no live lease), the longest
    /// due first, under one fresh lease token until `now + lease` (atomic across processes and nodes, like
    /// the queue). `url` is the decrypted target, `None` if the prediction is gone or its target cannot
    /// be read (logged).
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Logs attempts (each response excerpt sealed, cut to `MAX_RESPONSE_EXCERPT` bytes) and moves each
    /// delivery on as its `next` says, releasing its lease, all in one transaction (dispatchers group
    /// their writes). An attempt whose lease token no longer holds its delivery writes nothing and gets
    /// `false` at its index.
    async fn record_attempts(&self, batch: &[AttemptRecord], now: Timestamp) -> Result<Vec<bool>>;
    /// [`Store::record_attempts`] for one attempt.
    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        lease_token: &str,
        next: &NextStep,
        now: Timestamp,
    ) -> Result<bool> {
        let one = AttemptRecord {
            attempt: attempt.clone(),
            lease_token: lease_token.to_owned(),
            next: next.clone(),
        };
        Ok(self
            .record_attempts(&[one], now)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// Fails every pending delivery of a prediction with `reason` (its endpoint answered 410 Gone). A
    /// delivery being attempted right now keeps its lease: its attempt is still recorded. Returns how
    /// many stopped.
    async fn stop_prediction_deliveries(
        &self,
        prediction: &PredictionId,
        reason: &str,
        now: Timestamp,
    ) -> Result<u64>;
    /// Gives a claimed delivery back, due as it was (a dispatcher shutting down). False if the lease was
    /// not held.
    async fn release_delivery(&self, id: &DeliveryId, lease_token: &str) -> Result<bool>;
    /// Operator level: one delivery.
    async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>>;
    /// Operator level: deliveries, newest first; `limit` 1..=1000, 0 meaning 100.
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>>;
    /// Operator level: a delivery's attempts in order, responses opened.
    async fn delivery_attempts(&self, id: &DeliveryId) -> Result<Vec<DeliveryAttempt>>;
    /// Operator level: replays a delivery in any state: pending and due at `now`, its lease cleared, its
    /// attempts kept. `None` if there is no such delivery.
    async fn retry_delivery(&self, id: &DeliveryId, now: Timestamp) -> Result<Option<Delivery>>;

    // ── usage (tenant: account) ────────────────────────────────────────────────────────────────────

    /// An account's usage records, newest first, created at or after `since`.
    async fn usage(&self, account: &AccountId, since: Timestamp, limit: u32) -> Result<Vec<UsageRecord>>;
    /// Records the usage of a run that left no prediction behind (the OpenAI-compatible routes, which
    /// store nothing of what was asked or answered), sealed under the account's key like every usage
    /// record, under `record.prediction` as its unique id. False (nothing written) when the account is
    /// gone.
    async fn record_usage(&self, account: &AccountId, record: &UsageRecord, now: Timestamp) -> Result<bool>;

    // ── audit chain ────────────────────────────────────────────────────────────────────────────────

    /// Appends an entry to the hash chain (serialised across processes and nodes).
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry>;
    /// Entries with `seq > after_seq`, oldest first, at most `limit`.
    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>>;
    /// The entries concerning `account` with `seq < before_seq`, newest first, at most `limit`.
    async fn account_audit(
        &self,
        account: &AccountId,
        before_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>>;

    // ── keyring support ────────────────────────────────────────────────────────────────────────────

    /// How many values of `column` each KEK version wraps.
    async fn sealed_versions(&self, column: &SealedColumn) -> Result<std::collections::BTreeMap<u32, u64>>;
    /// Moves up to `limit` values of `column` with keys after `after_key` from older KEK versions to the
    /// current one, rewriting only the wrapped data key. Idempotent; a value changed concurrently is left
    /// alone (its new value is already current).
    async fn rewrap_batch(&self, column: &SealedColumn, after_key: &str, limit: i64) -> Result<RewrapBatch>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a `database_url` names: `sqlite://PATH` (or `sqlite:PATH`, or a bare path ending `.db`)
/// or `postgres://…` / `postgresql://…`. Does not migrate.
pub async fn connect(database_url: &str, sealer: Sealer) -> Result<DynStore> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::connect(database_url, sealer).await?));
    }
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .or_else(|| database_url.ends_with(".db").then_some(database_url));
    match path {
        Some(path) if !path.is_empty() => Ok(Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path), sealer).await?,
        )),
        _ => Err(StoreError::Config(
            "storage.database_url must start with sqlite:// or postgres:// (or postgresql://)".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_picks_the_backend_from_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        for url in [
            format!("sqlite://{}", p.display()),
            format!("sqlite:{}", p.display()),
            p.display().to_string(),
        ] {
            let s = connect(&url, Sealer::ephemeral().unwrap()).await.unwrap();
            assert_eq!(s.backend(), "sqlite");
            s.close().await;
        }
        for bad in ["mysql://x/y", "", "sqlite://", "/tmp/file.txt"] {
            let e = connect(bad, Sealer::ephemeral().unwrap()).await.err().unwrap();
            assert!(matches!(e, StoreError::Config(_)), "{bad}: {e:?}");
        }
    }
}

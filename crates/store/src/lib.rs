//! skygate persistence. [`Store`] is the one interface the server and CLI use; it has two
//! implementations with the same behaviour, proven by one conformance suite (`tests/conformance/`):
//! [`sqlite::SqliteStore`] (embedded default, WAL mode) and [`postgres::PgStore`] (scale-out). Each has
//! its own embedded migrations tree under `migrations/`. SQL dialect differences stay inside the two
//! modules; nothing outside this crate sees SQL.
//!
//! Tenant scoping: methods that act inside a tenant take it first (`account`, then `project`), so no query
//! can forget it. Operator-level methods (used by the CLI on the host) say so in their docs.

pub mod error;
pub mod objects;
pub mod postgres;
mod queries;
mod rows;
pub mod seal;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use skygate_core::{
    Account, AccountId, ApiKeyRecord, AuditEntry, KeyAuthRecord, KeyId, NewAccount, NewApiKey, NewAuditEntry,
    NewProject, Project, ProjectId, Tier, Timestamp,
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
    /// Returns false if there is no such account.
    async fn set_account_tier(&self, id: &AccountId, tier: Tier) -> Result<bool>;
    /// Operator level: deletes the account with its projects and keys, appends `audit` to the audit log
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

    // ── audit chain ────────────────────────────────────────────────────────────────────────────────

    /// Appends an entry to the hash chain (serialised across processes and nodes).
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry>;
    /// Entries with `seq > after_seq`, oldest first, at most `limit`.
    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>>;

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

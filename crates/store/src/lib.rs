//! skygate persistence. [`Store`] is the one interface the server and CLI use; it has two
//! implementations with the same behaviour, proven by one conformance suite (`tests/conformance/`):
//! [`sqlite::SqliteStore`] (embedded default, WAL mode) and [`postgres::PgStore`] (scale-out). Each has
//! its own embedded migrations tree under `migrations/`. SQL dialect differences stay inside the two
//! modules; nothing outside this crate sees SQL.
//!
//! Tenant scoping: methods that act inside a tenant take it first (`account`, then `project`), so no query
//! can forget it. Operator-level methods (used by the CLI on the host) say so in their docs.

pub mod error;
pub mod postgres;
mod queries;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use skygate_core::{
    Account, AccountId, ApiKeyRecord, KeyAuthRecord, KeyId, NewAccount, NewApiKey, NewProject, Project,
    ProjectId, Tier, Timestamp,
};

pub use error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What `revoke_api_key` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

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
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a `database_url` names: `sqlite://PATH` (or `sqlite:PATH`, or a bare path ending `.db`)
/// or `postgres://…` / `postgresql://…`. Does not migrate.
pub async fn connect(database_url: &str) -> Result<DynStore> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::connect(database_url).await?));
    }
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .or_else(|| database_url.ends_with(".db").then_some(database_url));
    match path {
        Some(path) if !path.is_empty() => Ok(Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
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
            let s = connect(&url).await.unwrap();
            assert_eq!(s.backend(), "sqlite");
            s.close().await;
        }
        for bad in ["mysql://x/y", "", "sqlite://", "/tmp/file.txt"] {
            let e = connect(bad).await.err().unwrap();
            assert!(matches!(e, StoreError::Config(_)), "{bad}: {e:?}");
        }
    }
}

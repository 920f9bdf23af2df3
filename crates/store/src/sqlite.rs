//! The embedded default store: one SQLite file in WAL mode, shared safely by a running server and the
//! operator CLI in another process (WAL readers never block the writer; writers wait up to 5 s for each
//! other instead of failing).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::common::impl_store;
use crate::{Result, StoreError};

pub struct SqliteStore {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(StoreError::Config(format!(
                "cannot open database {}: directory {} does not exist",
                path.display(),
                parent.display()
            )));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Config(format!("cannot open database {}: {e}", path.display())))?;
        Ok(SqliteStore { pool })
    }

    /// A private in-memory database (one connection, so every query sees the same data). For tests.
    pub async fn open_in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore { pool })
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    /// The pool, for backend-specific tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, backend = "sqlite", greatest = "MAX");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn wal_mode_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("x.db")).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("x.db");
        let e = SqliteStore::open(&p).await.err().unwrap();
        assert!(matches!(e, StoreError::Config(_)));
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn two_handles_on_one_file_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        let a = SqliteStore::open(&p).await.unwrap();
        let b = SqliteStore::open(&p).await.unwrap();
        a.migrate().await.unwrap();
        b.migrate().await.unwrap();
        let new = skygate_core::NewAccount {
            id: skygate_core::AccountId::generate().unwrap(),
            email: "x@example.com".into(),
            tier: skygate_core::Tier::Free,
            created_at: skygate_core::Timestamp::from_micros(1),
        };
        a.create_account(&new).await.unwrap();
        assert!(b.account_by_email("x@example.com").await.unwrap().is_some());
    }
}

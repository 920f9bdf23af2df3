//! The embedded default store: one SQLite file in WAL mode, shared safely by a running server and the
//! operator CLI in another process. WAL readers never block the writer; writers wait up to 5 s for each
//! other (busy timeout) instead of failing; migrations run under `BEGIN IMMEDIATE`, so two processes
//! starting together apply them once (SQLite has no advisory lock, and sqlx takes none for it).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::queries::impl_store;
use crate::{Result, StoreError};

pub struct SqliteStore {
    pool: SqlitePool,
    sealer: crate::Sealer,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`. A missing or unwritable directory, or a
    /// file that is not a database, is a [`StoreError::Config`] naming the path.
    pub async fn open(path: &Path, sealer: crate::Sealer) -> Result<Self> {
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
        // Connecting opens the file and switches it to WAL, which needs write access to the directory
        // (for the -wal and -shm files): an unwritable place fails here, not on the first request.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::Config(format!("cannot open database {}: {}", path.display(), reason(&e)))
            })?;
        Ok(SqliteStore { pool, sealer })
    }

    /// A private in-memory database, for tests. One connection that never expires, so every query sees
    /// the same data and the data lives as long as the store.
    pub async fn open_in_memory(sealer: crate::Sealer) -> Result<Self> {
        let opts = SqliteConnectOptions::new().in_memory(true).foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore { pool, sealer })
    }

    /// The pool, for backend-specific tests and tools.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the migrations inside one `BEGIN IMMEDIATE` transaction: it takes the database's write lock
    /// before reading which migrations are applied, so a second process waits (busy timeout) and then
    /// finds nothing to do, instead of racing to create the same tables. sqlx applies each migration in a
    /// savepoint inside it and keeps its usual `_sqlx_migrations` bookkeeping.
    async fn run_migrations(&self) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // `run_direct` is `run` for a bare connection; `run(&mut *tx)` trips the compiler's "Acquire is
        // not general enough" inside an async-trait future (sqlx keeps `run_direct` public for this).
        MIGRATOR.run_direct(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction that takes the database's write lock at once (`BEGIN IMMEDIATE`), so reading
    /// the audit chain's tail and appending to it cannot interleave with another writer.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A transaction that reads, then writes depending on what it read: it takes the write lock up front,
    /// because a deferred one whose snapshot went stale cannot upgrade (SQLite fails it at once).
    async fn begin_read_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Capped claims count running predictions before they write: the write lock up front.
    async fn begin_capped_claim(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_read_write().await
    }

    /// The queue claim (see `predictions`): SQLite runs one writer at a time, so it is atomic as is.
    const CLAIM_SQL: &'static str = crate::predictions::CLAIM_SQLITE;

    /// The webhook delivery claim (see `webhooks`): atomic as is, like the queue claim.
    const CLAIM_DELIVERIES_SQL: &'static str = crate::webhooks::CLAIM_DELIVERIES_SQLITE;

    /// SQLite's two-argument `MAX` is the scalar maximum.
    const TOUCH_SQL: &'static str =
        "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), $1) WHERE id = $2";
}

/// The SQLite message without sqlx's wrapping (one line).
fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        other => other.to_string(),
    }
}

impl_store!(SqliteStore, backend = "sqlite", db = sqlx::Sqlite);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use skygate_core::{AccountId, NewAccount, NewApiKey, NewProject, ProjectId, Tier, Timestamp};

    use super::*;
    use crate::Store;

    /// One keyring per test process: handles on one file must share it, as a server and its CLI do.
    fn sealer() -> crate::Sealer {
        static SEALER: std::sync::OnceLock<crate::Sealer> = std::sync::OnceLock::new();
        SEALER.get_or_init(|| crate::Sealer::ephemeral().unwrap()).clone()
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let s = SqliteStore::open(&dir.path().join("x.db"), sealer())
            .await
            .unwrap();
        s.migrate().await.unwrap();
        s
    }

    fn account(email: &str) -> NewAccount {
        NewAccount {
            id: AccountId::generate().unwrap(),
            email: email.into(),
            tier: Tier::Free,
            created_at: Timestamp::from_micros(1),
        }
    }

    fn corrupt(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(StoreError::Corrupt(m)) => m,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn wal_mode_and_pragmas_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir).await;
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
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(busy, 5000);
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
    }

    #[tokio::test]
    async fn missing_directory_is_a_config_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("x.db");
        let e = SqliteStore::open(&p, sealer()).await.err().unwrap();
        assert!(matches!(e, StoreError::Config(_)), "{e:?}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[tokio::test]
    async fn unwritable_place_is_a_config_error_naming_the_path() {
        // A regular file where the directory should be: unwritable even for root, unlike a 0500 dir.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let p = file.join("x.db");
        let e = SqliteStore::open(&p, sealer()).await.err().unwrap();
        assert!(matches!(e, StoreError::Config(_)), "{e:?}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");

        // A read-only directory: only meaningful when not running as root (root may write anyway).
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        let privileged = std::fs::write(ro.join("probe"), b"").is_ok();
        if !privileged {
            let p = ro.join("x.db");
            let e = SqliteStore::open(&p, sealer()).await.err().unwrap();
            assert!(matches!(e, StoreError::Config(_)), "{e:?}");
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
        let e = SqliteStore::open(&p, sealer()).await.err().unwrap();
        assert!(matches!(e, StoreError::Config(_)), "{e:?}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn two_handles_on_one_file_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir).await;
        let b = open(&dir).await;
        a.create_account(&account("x@example.com")).await.unwrap();
        assert!(b.account_by_email("x@example.com").await.unwrap().is_some());
        let id = b.account_by_email("x@example.com").await.unwrap().unwrap().id;
        assert!(b.set_account_tier(&id, Tier::Pro).await.unwrap());
        assert_eq!(a.account(&id).await.unwrap().unwrap().tier, Tier::Pro);
    }

    #[tokio::test]
    async fn in_memory_store_keeps_its_data_across_queries() {
        let s = SqliteStore::open_in_memory(sealer()).await.unwrap();
        s.migrate().await.unwrap();
        s.create_account(&account("m@example.com")).await.unwrap();
        assert!(s.account_by_email("m@example.com").await.unwrap().is_some());
        // Foreign keys are enforced here too.
        let p = NewProject {
            id: ProjectId::generate().unwrap(),
            name: "p".into(),
            created_at: Timestamp::from_micros(1),
        };
        let r = s.create_project(&AccountId::generate().unwrap(), &p).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }

    /// Rows the schema would reject (written here with its checks off, as a damaged file might hold them)
    /// decode to `Corrupt` naming the table and column, never a panic.
    #[tokio::test]
    async fn corrupt_rows_are_reported_with_their_column() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir).await;
        let acct = s.create_account(&account("c@example.com")).await.unwrap();
        let proj = NewProject {
            id: ProjectId::generate().unwrap(),
            name: "p".into(),
            created_at: Timestamp::from_micros(1),
        };
        s.create_project(&acct.id, &proj).await.unwrap();
        let key = NewApiKey {
            id: skygate_core::KeyId::generate().unwrap(),
            mode: skygate_core::Mode::Live,
            name: "k".into(),
            hash: [3; 32],
            prefix: "sk_live_".into(),
            last4: "abcd".into(),
            created_at: Timestamp::from_micros(1),
            expires_at: None,
        };
        s.create_api_key(&proj.id, &key).await.unwrap();
        let damage = |sql: &'static str| {
            let pool = s.pool.clone();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("PRAGMA ignore_check_constraints = ON")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query("PRAGMA foreign_keys = OFF")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&mut *conn).await.unwrap();
                sqlx::query("PRAGMA ignore_check_constraints = OFF")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        };

        damage("UPDATE accounts SET tier = 'gold'").await;
        assert!(corrupt(s.account(&acct.id).await).starts_with("accounts.tier: unknown tier"));
        assert!(corrupt(s.api_key_by_hash(&[3; 32]).await).starts_with("accounts.tier"));
        damage("UPDATE accounts SET tier = 'free'").await;

        damage("UPDATE api_keys SET mode = 'staging'").await;
        assert!(corrupt(s.list_api_keys(&proj.id).await).starts_with("api_keys.mode: unknown mode"));
        damage("UPDATE api_keys SET mode = 'live', key_hash = X'0303'").await;
        let row = sqlx::query(crate::queries::SELECT_KEY_AUTH)
            .bind(&[3u8, 3][..])
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(
            corrupt(crate::rows::key_auth(&row)),
            "api_keys.key_hash: 2 bytes, expected 32"
        );

        damage("UPDATE projects SET account_id = 'acct_short'").await;
        assert!(corrupt(s.find_project(&proj.id).await)
            .starts_with("projects.account_id: not a valid account id"));
    }

    /// STRICT tables refuse a value of the wrong type at write time, as PostgreSQL does.
    #[tokio::test]
    async fn tables_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir).await;
        let r = sqlx::query(
            "INSERT INTO accounts (id, email, tier, created_at) VALUES ('a', 'e', 'free', 'soon')",
        )
        .execute(&s.pool)
        .await;
        assert!(r.is_err());
    }
}

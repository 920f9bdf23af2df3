//! The scale-out store: PostgreSQL, shared by several stateless skygate nodes. Migrations take
//! PostgreSQL's advisory lock (sqlx does this), so nodes starting together apply them once. Connection
//! errors never echo the URL, which may hold a password.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::queries::impl_store;
use crate::{Result, StoreError};

pub struct PgStore {
    pool: PgPool,
    sealer: crate::Sealer,
    /// Set by [`PgStore::connect_in_schema`]: the schema every pooled connection uses.
    schema: Option<String>,
}

/// The advisory-lock key of the audit chain ("skygaud" in ASCII).
const AUDIT_LOCK: i64 = 0x0073_6b79_6761_7564;
/// The advisory lock capped queue claims take turns under ("skyqueue" in ASCII).
const QUEUE_LOCK: i64 = 0x736b_7971_7565_7565;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Config("storage.database_url is not a valid postgres:// URL".into()))
}

async fn pool(opts: PgConnectOptions) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| StoreError::Config(format!("cannot connect to PostgreSQL: {}", redact(&e))))
}

/// A connection error without any part of the URL.
fn redact(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        _ => "connection failed".into(),
    }
}

/// `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL's identifier limit): safe to splice unquoted.
fn valid_schema_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PgStore {
    pub async fn connect(url: &str, sealer: crate::Sealer) -> Result<Self> {
        Ok(PgStore {
            pool: pool(options(url)?).await?,
            sealer,
            schema: None,
        })
    }

    /// Connects with every pooled connection's `search_path` set to `schema`, creating the schema if
    /// missing. Tests use it to give each case a fresh schema in one shared database.
    pub async fn connect_in_schema(url: &str, schema: &str, sealer: crate::Sealer) -> Result<Self> {
        if !valid_schema_name(schema) {
            return Err(StoreError::Config(format!(
                "invalid schema name {schema:?} (expected [a-z_][a-z0-9_]*)"
            )));
        }
        let mut admin = options(url)?
            .connect()
            .await
            .map_err(|e| StoreError::Config(format!("cannot connect to PostgreSQL: {}", redact(&e))))?;
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut admin)
            .await;
        admin.close().await?;
        match created {
            Ok(_) => {}
            // Two connections creating the same schema at once: IF NOT EXISTS does not cover the race,
            // the loser gets a unique violation on the catalog, and the schema exists either way.
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {}
            Err(e) => return Err(e.into()),
        }
        let opts = options(url)?.options([("search_path", schema)]);
        Ok(PgStore {
            pool: pool(opts).await?,
            sealer,
            schema: Some(schema.to_owned()),
        })
    }

    /// Drops the schema made by [`PgStore::connect_in_schema`], with everything in it (test cleanup).
    /// Does nothing for a store opened with [`PgStore::connect`].
    pub async fn drop_schema(&self) -> Result<()> {
        if let Some(s) = &self.schema {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The pool, for backend-specific tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn run_migrations(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// A write transaction holding the audit chain's transaction-scoped advisory lock, so two nodes
    /// appending at once take turns instead of both reading the same tail.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A transaction that reads, then writes depending on what it read: an ordinary one here (row locks and
    /// unique constraints settle races; see SQLite's for why it differs).
    async fn begin_read_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Capped claims count each account's running predictions, which row locks cannot guard: claims take
    /// turns under a transaction-scoped advisory lock, so two nodes never both fill the last slot.
    async fn begin_capped_claim(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(QUEUE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The queue claim (see `predictions`): `FOR UPDATE SKIP LOCKED`, so nodes never claim the same row.
    const CLAIM_SQL: &'static str = crate::predictions::CLAIM_POSTGRES;

    /// The webhook delivery claim (see `webhooks`): `FOR UPDATE SKIP LOCKED`, like the queue claim.
    const CLAIM_DELIVERIES_SQL: &'static str = crate::webhooks::CLAIM_DELIVERIES_POSTGRES;

    const TOUCH_SQL: &'static str =
        "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1) WHERE id = $2";
}

impl_store!(PgStore, backend = "postgres", db = sqlx::Postgres);

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for ok in ["t_0a1b", "_x", "skygate"] {
            assert!(valid_schema_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "T_x", "a-b", "a;drop", "a b", "é", &"a".repeat(64)] {
            assert!(!valid_schema_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_bad_schema_name_is_refused_before_connecting() {
        let r = PgStore::connect_in_schema(
            "postgres://nobody@127.0.0.1:1/x",
            "x; DROP TABLE y",
            crate::Sealer::ephemeral().unwrap(),
        )
        .await;
        assert!(matches!(r, Err(StoreError::Config(m)) if m.contains("invalid schema name")));
    }

    #[test]
    fn errors_do_not_echo_the_url() {
        let Err(StoreError::Config(m)) = options("postgres://user:hunter2@[::1/db") else {
            panic!("a malformed URL was accepted")
        };
        assert!(!m.contains("hunter2"), "{m}");
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(redact(&io), "refused");
        assert_eq!(
            redact(&sqlx::Error::Configuration("postgres://user:hunter2@h/db".into())),
            "connection failed"
        );
    }
}

//! The scale-out store: PostgreSQL, shared by several stateless skygate nodes. Migrations take
//! PostgreSQL's advisory lock, so nodes starting together apply them once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::common::impl_store;
use crate::{Result, StoreError};

pub struct PgStore {
    pool: PgPool,
    schema: Option<String>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn options(url: &str) -> Result<PgConnectOptions> {
    // The URL may hold a password: never echo it.
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

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(PgStore {
            pool: pool(options(url)?).await?,
            schema: None,
        })
    }

    /// Connects with every pooled connection's `search_path` set to `schema`, creating it if missing.
    /// Used by tests to give each run its own fresh schema.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self> {
        let valid = schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && schema.len() <= 63;
        if !valid {
            return Err(StoreError::Config(format!("invalid schema name {schema:?}")));
        }
        let admin = pool(options(url)?).await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let opts = options(url)?.options([("search_path", schema)]);
        Ok(PgStore {
            pool: pool(opts).await?,
            schema: Some(schema.to_owned()),
        })
    }

    /// Drops the schema made by [`PgStore::connect_in_schema`] (test cleanup).
    pub async fn drop_schema(&self) -> Result<()> {
        if let Some(s) = &self.schema {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    backend = "postgres",
    greatest = "GREATEST"
);

//! One conformance suite for every `Store` backend. Each case is written once, as an async fn taking a
//! fresh, unmigrated [`Db`], and [`conformance!`] runs it as `sqlite::<case>` (a new temp-file database)
//! and `postgres::<case>` (a new schema in `SKYGATE_TEST_DATABASE_URL`, dropped afterwards even if the
//! case fails). Without that variable the PostgreSQL runs print `SKIPPED …` and pass, unless
//! `SKYGATE_TEST_REQUIRE_ALL` is set (CI), in which case they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod cases;
mod console;
mod partial_output;
mod predictions;
mod schema;
mod webhooks;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use skygate_store::postgres::PgStore;
use skygate_store::sqlite::SqliteStore;
use skygate_store::{DynStore, Sealer};

/// A fresh database for one test; [`Db::open`] gives another handle on the same one.
#[derive(Clone)]
pub enum Db {
    Sqlite(PathBuf, Sealer),
    Postgres {
        url: String,
        schema: String,
        sealer: Sealer,
    },
}

impl Db {
    /// A new handle (own pool) on this database, not migrated. Every handle shares the test's keyring.
    pub async fn open(&self) -> DynStore {
        match self {
            Db::Sqlite(path, sealer) => Arc::new(SqliteStore::open(path, sealer.clone()).await.unwrap()),
            Db::Postgres { url, schema, sealer } => Arc::new(
                PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// The test's keyring (an in-memory key provider of its own).
    pub fn sealer(&self) -> &Sealer {
        match self {
            Db::Sqlite(_, s) | Db::Postgres { sealer: s, .. } => s,
        }
    }

    /// A new handle, migrated.
    pub async fn migrated(&self) -> DynStore {
        let s = self.open().await;
        s.migrate().await.unwrap();
        s
    }
}

fn require_all() -> bool {
    std::env::var("SKYGATE_TEST_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The PostgreSQL URL, or `None` after saying loudly why `test` is skipped (or failing under
/// `SKYGATE_TEST_REQUIRE_ALL`).
fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("SKYGATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let msg = format!("SKIPPED {test}: SKYGATE_TEST_DATABASE_URL not set");
            if require_all() {
                panic!("{msg} (SKYGATE_TEST_REQUIRE_ALL is set, so this may not be skipped)");
            }
            // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "{msg}");
            None
        }
    }
}

pub async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    case(Db::Sqlite(
        dir.path().join("test.db"),
        Sealer::ephemeral().unwrap(),
    ))
    .await;
}

/// Runs `case` in its own schema and drops the schema afterwards, also when the case panics (the panic
/// is then re-raised), so failed runs do not leave schemas behind.
pub async fn on_postgres<F, Fut>(test: &str, case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = postgres_url(test) else { return };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let sealer = Sealer::ephemeral().unwrap();
    let owner = PgStore::connect_in_schema(&url, &schema, sealer.clone())
        .await
        .unwrap();
    let outcome = tokio::spawn(case(Db::Postgres { url, schema, sealer })).await;
    owner.drop_schema().await.unwrap();
    skygate_store::Store::close(&owner).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::on_sqlite(super::cases::$case).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::on_postgres(concat!("postgres::", stringify!($case)), super::cases::$case).await
                }
            )*
        }
    };
}

conformance!(
    accounts_round_trip,
    duplicate_email_conflicts,
    set_tier,
    projects_are_scoped_to_their_account,
    project_for_unknown_account_is_not_found,
    keys_create_and_list_newest_first,
    duplicate_key_hash_conflicts,
    key_for_unknown_project_is_not_found,
    lookup_by_hash,
    revoke_outcomes,
    expiry_round_trips,
    touch_takes_the_max_and_ignores_unknown,
    migrate_is_idempotent,
    concurrent_migrate,
    handles_see_each_others_writes,
    concurrent_writers,
    ping,
    sensitive_columns_hold_no_plaintext,
    erase_shreds_the_account_in_backups_too,
    rewrap_moves_every_value_then_retire_is_safe,
    audit_chain_appends_from_two_handles,
    pending_shreds_are_finished,
    tampered_or_swapped_values_fail_closed,
    predictions_create_get_and_scope,
    list_predictions_newest_first_filtered_and_paged,
    claim_takes_the_oldest_pending_first,
    claims_respect_running_caps,
    concurrent_claimers_never_share_a_prediction,
    progress_and_lease_renewal,
    complete_prediction_outcomes,
    cancel_prediction_outcomes,
    reclaim_expired_leases,
    retention_purges_due_predictions,
    retire_windows_shreds_purged_windows,
    tampered_prediction_values_fail_closed,
    erase_removes_predictions_and_usage,
    usage_without_a_prediction_is_sealed_and_erased,
    rewrap_covers_prediction_columns,
    release_lease_requeues_without_counting,
    partial_output_is_sealed_leased_and_replaced,
    partial_output_does_not_outlive_its_run,
    outbox_rows_follow_subscribed_transitions,
    status_change_and_outbox_row_commit_together,
    unknown_webhook_events_are_invalid,
    delivery_claims_are_exclusive_and_leases_expire,
    record_attempt_moves_deliveries_on,
    a_batch_of_attempts_commits_together_and_skips_stale_leases,
    attempt_responses_are_sealed_and_cut,
    webhook_secrets_ensure_and_rotate,
    concurrent_secret_writers_agree,
    stop_prediction_deliveries_fails_pending_ones,
    retry_and_release_delivery,
    list_deliveries_filters,
    webhook_target_survives_the_purge,
    deleted_or_unreadable_targets_have_no_url,
    erase_removes_webhook_data,
    rewrap_covers_webhook_columns,
    access_tokens_create_list_and_scope,
    access_token_lookup_touch_and_revoke,
    account_scoped_key_and_audit_lookups,
    erase_removes_access_tokens,
    second_factor_enrol_confirm_and_replay,
    second_factor_failures_lock_and_recovery_codes_work_once,
    setup_links_work_once_and_expire,
    sessions_rotate_touch_list_and_end,
);

/// Both migration trees reach the same tables, columns (with nullability) and named indexes. SQLite's
/// side always runs; PostgreSQL's skips (or fails) like the rest of the suite.
#[tokio::test]
async fn both_migration_trees_reach_the_same_schema() {
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("s.db"), Sealer::ephemeral().unwrap())
        .await
        .unwrap();
    skygate_store::Store::migrate(&lite).await.unwrap();
    let lite_schema = schema::sqlite_schema(&lite).await;
    for expected in [
        "table accounts",
        "column accounts.id NOT NULL",
        "column api_keys.key_hash NOT NULL",
    ] {
        assert!(
            lite_schema.contains(expected),
            "{expected} missing from {lite_schema:#?}"
        );
    }
    for expected in [
        "column api_keys.revoked_at NULL",
        "index api_keys_project_id",
        "index projects_account_id",
        "table predictions",
        "column predictions.id NOT NULL",
        "column predictions.input NULL",
        "column predictions.shred_id NOT NULL",
        "column predictions.lease_token NULL",
        "index predictions_project_created",
        "index predictions_queue",
        "index predictions_purge",
        "index predictions_shred",
        "column retention_windows.shred_id NOT NULL",
        "column usage_records.record NOT NULL",
        "index usage_records_account_at",
        "column predictions.webhook_events NOT NULL",
        "column predictions.webhook_target NULL",
        "table webhook_secrets",
        "column webhook_secrets.retires_at NULL",
        "table webhook_deliveries",
        "column webhook_deliveries.next_attempt_at NULL",
        "column webhook_deliveries.last_error NULL",
        "index webhook_deliveries_due",
        "index webhook_deliveries_prediction",
        "index webhook_deliveries_account",
        "index webhook_deliveries_project",
        "index webhook_deliveries_created",
        "table webhook_attempts",
        "column webhook_attempts.response NULL",
    ] {
        assert!(
            lite_schema.contains(expected),
            "{expected} missing from {lite_schema:#?}"
        );
    }

    on_postgres(
        "both_migration_trees_reach_the_same_schema",
        move |db| async move {
            let Db::Postgres { url, schema, sealer } = db else {
                unreachable!()
            };
            let pg = PgStore::connect_in_schema(&url, &schema, sealer).await.unwrap();
            skygate_store::Store::migrate(&pg).await.unwrap();
            let pg_schema = schema::postgres_schema(&pg, &schema).await;
            assert_eq!(pg_schema, lite_schema);
        },
    )
    .await;
}

/// One stored value as the database holds it, read back without going through the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

impl Db {
    /// Every value of `table.column`, straight from the database (the "backup" an attacker would hold).
    pub async fn raw_column(&self, table: &str, column: &str) -> Vec<Raw> {
        match self {
            Db::Sqlite(path, sealer) => {
                let s = SqliteStore::open(path, sealer.clone()).await.unwrap();
                let rows: Vec<(String, String)> =
                    sqlx::query_as(&format!("SELECT typeof({column}), quote({column}) FROM {table}"))
                        .fetch_all(s.pool())
                        .await
                        .unwrap();
                skygate_store::Store::close(&s).await;
                rows.into_iter()
                    .map(|(ty, q)| match ty.as_str() {
                        "null" => Raw::Null,
                        "integer" => Raw::Int(q.parse().unwrap()),
                        "text" => Raw::Text(q[1..q.len() - 1].replace("''", "'")),
                        "blob" => Raw::Bytes(hex(&q[2..q.len() - 1])),
                        other => panic!("unexpected SQLite type {other}"),
                    })
                    .collect()
            }
            Db::Postgres { url, schema, sealer } => {
                let s = PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap();
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
                    "SELECT pg_typeof({column})::text, {column}::text FROM {table}"
                ))
                .fetch_all(s.pool())
                .await
                .unwrap();
                skygate_store::Store::close(&s).await;
                rows.into_iter()
                    .map(|(ty, v)| match (ty.as_str(), v) {
                        (_, None) => Raw::Null,
                        ("bigint" | "integer", Some(v)) => Raw::Int(v.parse().unwrap()),
                        ("bytea", Some(v)) => Raw::Bytes(hex(v.trim_start_matches("\\x"))),
                        (_, Some(v)) => Raw::Text(v),
                    })
                    .collect()
            }
        }
    }

    /// Overwrites one stored byte string straight in the database (tampering, or a swap between rows).
    pub async fn raw_set(&self, table: &str, column: &str, id: &str, value: &[u8]) {
        let sql = format!("UPDATE {table} SET {column} = $1 WHERE id = $2");
        match self {
            Db::Sqlite(path, sealer) => {
                let s = SqliteStore::open(path, sealer.clone()).await.unwrap();
                sqlx::query(&sql)
                    .bind(value)
                    .bind(id)
                    .execute(s.pool())
                    .await
                    .unwrap();
                skygate_store::Store::close(&s).await;
            }
            Db::Postgres { url, schema, sealer } => {
                let s = PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap();
                sqlx::query(&sql)
                    .bind(value)
                    .bind(id)
                    .execute(s.pool())
                    .await
                    .unwrap();
                skygate_store::Store::close(&s).await;
            }
        }
    }

    /// Runs one statement straight on the database (to break or restore the schema under the store).
    pub async fn raw_exec(&self, sql: &str) {
        match self {
            Db::Sqlite(path, sealer) => {
                let s = SqliteStore::open(path, sealer.clone()).await.unwrap();
                sqlx::query(sql).execute(s.pool()).await.unwrap();
                skygate_store::Store::close(&s).await;
            }
            Db::Postgres { url, schema, sealer } => {
                let s = PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap();
                sqlx::query(sql).execute(s.pool()).await.unwrap();
                skygate_store::Store::close(&s).await;
            }
        }
    }

    /// Makes every insert into the webhook outbox fail (`down`), or work again. On PostgreSQL a rename
    /// is not enough: connections keep statements prepared against the table itself, so a constraint no
    /// row passes is added instead.
    pub async fn outbox_down(&self, down: bool) {
        let sql = match (self, down) {
            (Db::Sqlite(..), true) => "ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_away",
            (Db::Sqlite(..), false) => "ALTER TABLE webhook_deliveries_away RENAME TO webhook_deliveries",
            (Db::Postgres { .. }, true) => {
                "ALTER TABLE webhook_deliveries ADD CONSTRAINT outbox_down CHECK (false) NOT VALID"
            }
            (Db::Postgres { .. }, false) => "ALTER TABLE webhook_deliveries DROP CONSTRAINT outbox_down",
        };
        self.raw_exec(sql).await;
    }

    /// One stored byte string.
    pub async fn raw_get(&self, table: &str, column: &str, id: &str) -> Vec<u8> {
        let sql = format!("SELECT {column} FROM {table} WHERE id = $1");
        match self {
            Db::Sqlite(path, sealer) => {
                let s = SqliteStore::open(path, sealer.clone()).await.unwrap();
                let v = sqlx::query_scalar(&sql)
                    .bind(id)
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
                skygate_store::Store::close(&s).await;
                v
            }
            Db::Postgres { url, schema, sealer } => {
                let s = PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap();
                let v = sqlx::query_scalar(&sql)
                    .bind(id)
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
                skygate_store::Store::close(&s).await;
                v
            }
        }
    }

    /// The schema's columns as `table.column`.
    pub async fn columns(&self) -> Vec<String> {
        let described = match self {
            Db::Sqlite(path, sealer) => {
                let s = SqliteStore::open(path, sealer.clone()).await.unwrap();
                schema::sqlite_schema(&s).await
            }
            Db::Postgres { url, schema, sealer } => {
                let s = PgStore::connect_in_schema(url, schema, sealer.clone())
                    .await
                    .unwrap();
                schema::postgres_schema(&s, schema).await
            }
        };
        described
            .into_iter()
            .filter_map(|d| {
                d.strip_prefix("column ")
                    .map(|c| c.split(' ').next().unwrap().to_owned())
            })
            .collect()
    }
}

//! Reads each backend's catalog into one comparable form: `table T`, `column T.C NULL|NOT NULL` and
//! `index I` (explicitly created indexes; those behind PRIMARY KEY and UNIQUE are implied by the tables).
//! sqlx's own `_sqlx_migrations` table is left out.

use std::collections::BTreeSet;

use skygate_store::postgres::PgStore;
use skygate_store::sqlite::SqliteStore;

fn column(table: &str, col: &str, not_null: bool) -> String {
    format!(
        "column {table}.{col} {}",
        if not_null { "NOT NULL" } else { "NULL" }
    )
}

pub async fn sqlite_schema(s: &SqliteStore) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    for table in tables {
        let cols: Vec<(String, i64)> = sqlx::query_as("SELECT name, \"notnull\" FROM pragma_table_info($1)")
            .bind(&table)
            .fetch_all(s.pool())
            .await
            .unwrap();
        out.extend(cols.into_iter().map(|(c, nn)| column(&table, &c, nn != 0)));
        out.insert(format!("table {table}"));
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' \
         AND sql IS NOT NULL AND tbl_name <> '_sqlx_migrations'",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    out.extend(indexes.into_iter().map(|i| format!("index {i}")));
    out
}

pub async fn postgres_schema(s: &PgStore, schema: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let cols: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name <> '_sqlx_migrations'",
    )
    .bind(schema)
    .fetch_all(s.pool())
    .await
    .unwrap();
    for (table, col, nullable) in cols {
        out.insert(column(&table, &col, nullable == "NO"));
        out.insert(format!("table {table}"));
    }
    // Constraint-backed indexes (primary keys, UNIQUE columns) are the tables' business, not named here.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT i.indexname::text FROM pg_indexes i WHERE i.schemaname = $1 \
         AND i.tablename <> '_sqlx_migrations' AND NOT EXISTS ( \
           SELECT 1 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
           WHERE n.nspname = $1 AND c.conname = i.indexname)",
    )
    .bind(schema)
    .fetch_all(s.pool())
    .await
    .unwrap();
    out.extend(indexes.into_iter().map(|i| format!("index {i}")));
    out
}

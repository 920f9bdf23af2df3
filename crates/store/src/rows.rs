//! Row decoding and constraint-error mapping, shared by both backends. Decoding never panics: a value
//! the domain types reject (bad id, unknown tier or mode, a hash that is not 32 bytes, a NULL or mistyped
//! column) becomes [`StoreError::Corrupt`] naming the table and column, so a damaged row fails one request
//! with a clear log line instead of taking the process down.

use std::fmt::Display;
use std::str::FromStr;

use skygate_core::{Account, ApiKeyRecord, AuditEntry, KeyAuthRecord, NewAuditEntry, Project, Timestamp};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Result, Sealer, StoreError};

/// The four column types this crate stores, read from either backend's row type. `table` is where the
/// column is stored (a joined query reads some columns from another table); errors name `table.col`.
pub(crate) trait StoreRow {
    fn text(&self, table: &str, col: &'static str) -> Result<String>;
    fn int(&self, table: &str, col: &'static str) -> Result<i64>;
    fn opt_int(&self, table: &str, col: &'static str) -> Result<Option<i64>>;
    fn opt_text(&self, table: &str, col: &'static str) -> Result<Option<String>>;
    fn bytes(&self, table: &str, col: &'static str) -> Result<Vec<u8>>;
    fn opt_bytes(&self, table: &str, col: &'static str) -> Result<Option<Vec<u8>>>;
}

impl<R> StoreRow for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, table: &str, col: &'static str) -> Result<String> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }

    fn int(&self, table: &str, col: &'static str) -> Result<i64> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }

    fn opt_int(&self, table: &str, col: &'static str) -> Result<Option<i64>> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }

    fn opt_text(&self, table: &str, col: &'static str) -> Result<Option<String>> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }

    fn bytes(&self, table: &str, col: &'static str) -> Result<Vec<u8>> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }

    fn opt_bytes(&self, table: &str, col: &'static str) -> Result<Option<Vec<u8>>> {
        self.try_get(col).map_err(|e| decode_error(table, col, e))
    }
}

/// A value that cannot be read as its column's type (NULL, wrong type) is corrupt data; anything else (a
/// column missing from the query) is a bug in this crate and stays a database error.
fn decode_error(table: &str, col: &str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { source, .. } => corrupt(table, col, source),
        other => StoreError::Database(other),
    }
}

pub(crate) fn corrupt(table: &str, col: &str, why: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{table}.{col}: {why}"))
}

/// A text column parsed into a domain type (typed ids, tier, mode).
pub(crate) fn parsed<T>(r: &impl StoreRow, table: &str, col: &'static str) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    r.text(table, col)?.parse().map_err(|e| corrupt(table, col, e))
}

pub(crate) fn ts(r: &impl StoreRow, table: &str, col: &'static str) -> Result<Timestamp> {
    Ok(Timestamp::from_micros(r.int(table, col)?))
}

pub(crate) fn opt_ts(r: &impl StoreRow, table: &str, col: &'static str) -> Result<Option<Timestamp>> {
    Ok(r.opt_int(table, col)?.map(Timestamp::from_micros))
}

pub(crate) fn hash(r: &impl StoreRow, table: &str, col: &'static str) -> Result<[u8; 32]> {
    let b = r.bytes(table, col)?;
    b.as_slice()
        .try_into()
        .map_err(|_| corrupt(table, col, format_args!("{} bytes, expected 32", b.len())))
}

/// Columns: `id, email (sealed), tier, created_at` of `accounts`.
pub(crate) fn account(r: &impl StoreRow, sealer: &Sealer) -> Result<Account> {
    let t = "accounts";
    let id: skygate_core::AccountId = parsed(r, t, "id")?;
    let email = sealer.open((t, id.as_str(), "email"), id.as_str(), &r.bytes(t, "email")?)?;
    Ok(Account {
        email,
        tier: parsed(r, t, "tier")?,
        created_at: ts(r, t, "created_at")?,
        id,
    })
}

/// Columns: `id, account_id, name (sealed), created_at` of `projects`.
pub(crate) fn project(r: &impl StoreRow, sealer: &Sealer) -> Result<Project> {
    let t = "projects";
    let id: skygate_core::ProjectId = parsed(r, t, "id")?;
    let account_id: skygate_core::AccountId = parsed(r, t, "account_id")?;
    let name = sealer.open(
        (t, id.as_str(), "name"),
        account_id.as_str(),
        &r.bytes(t, "name")?,
    )?;
    Ok(Project {
        id,
        account_id,
        name,
        created_at: ts(r, t, "created_at")?,
    })
}

/// Columns: the key's own columns plus its project's `account_id` (see `queries::key_select!`).
pub(crate) fn api_key(r: &impl StoreRow, sealer: &Sealer) -> Result<ApiKeyRecord> {
    let t = "api_keys";
    let id: skygate_core::KeyId = parsed(r, t, "id")?;
    let account: skygate_core::AccountId = parsed(r, "projects", "account_id")?;
    let name = sealer.open((t, id.as_str(), "name"), account.as_str(), &r.bytes(t, "name")?)?;
    Ok(ApiKeyRecord {
        id,
        project: parsed(r, t, "project_id")?,
        account,
        mode: parsed(r, t, "mode")?,
        name,
        prefix: r.text(t, "prefix")?,
        last4: r.text(t, "last4")?,
        created_at: ts(r, t, "created_at")?,
        last_used_at: opt_ts(r, t, "last_used_at")?,
        expires_at: opt_ts(r, t, "expires_at")?,
        revoked_at: opt_ts(r, t, "revoked_at")?,
    })
}

/// Columns: `id, project_id, account_id, mode, tier, key_hash, expires_at, revoked_at` (see
/// `queries::SELECT_KEY_AUTH`).
pub(crate) fn key_auth(r: &impl StoreRow) -> Result<KeyAuthRecord> {
    let t = "api_keys";
    Ok(KeyAuthRecord {
        key_id: parsed(r, t, "id")?,
        project: parsed(r, t, "project_id")?,
        account: parsed(r, "projects", "account_id")?,
        mode: parsed(r, t, "mode")?,
        tier: parsed(r, "accounts", "tier")?,
        hash: hash(r, t, "key_hash")?,
        expires_at: opt_ts(r, t, "expires_at")?,
        revoked_at: opt_ts(r, t, "revoked_at")?,
    })
}

/// Columns: every column of `audit_log`.
pub(crate) fn audit_entry(r: &impl StoreRow) -> Result<AuditEntry> {
    let t = "audit_log";
    Ok(AuditEntry {
        seq: r.int(t, "seq")?,
        entry: NewAuditEntry {
            at: ts(r, t, "at")?,
            actor: r.text(t, "actor")?,
            action: r.text(t, "action")?,
            target: r.text(t, "target")?,
            detail: r.text(t, "detail")?,
            account: r.text(t, "account_id")?,
            ip: r.text(t, "ip")?,
            user_agent: r.text(t, "user_agent")?,
        },
        prev_hash: hash(r, t, "prev_hash")?,
        hash: hash(r, t, "hash")?,
    })
}

/// Columns: [`crate::predictions::PRED_COLS`] of `predictions`. Sealed JSON values are opened and parsed;
/// NULL means removed (or not produced yet).
pub(crate) fn prediction(
    r: &impl StoreRow,
    sealer: &Sealer,
) -> Result<skygate_core::predictions::PredictionRecord> {
    let t = "predictions";
    let id: skygate_core::predictions::PredictionId = parsed(r, t, "id")?;
    let account: skygate_core::AccountId = parsed(r, t, "account_id")?;
    let status = r.text(t, "status")?;
    let status = skygate_proto::PredictionStatus::parse(&status)
        .ok_or_else(|| corrupt(t, "status", format_args!("unknown status {status:?}")))?;
    let open = |col: &'static str| -> Result<Option<String>> {
        r.opt_bytes(t, col)?
            .map(|b| sealer.open((t, id.as_str(), col), account.as_str(), &b))
            .transpose()
    };
    let json = |col: &'static str| -> Result<Option<serde_json::Value>> {
        open(col)?
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(t, col, e)))
            .transpose()
    };
    let output = open("output")?
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(t, "output", e)))
        .transpose()?;
    let webhook = open("webhook")?
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(t, "webhook", e)))
        .transpose()?;
    let small = |col: &'static str| -> Result<i64> { r.int(t, col) };
    Ok(skygate_core::predictions::PredictionRecord {
        project: parsed(r, t, "project_id")?,
        mode: parsed(r, t, "mode")?,
        model: r.text(t, "model")?,
        status,
        stream: small("stream")? != 0,
        input: json("input")?,
        output,
        error: open("error")?,
        webhook,
        progress: u8::try_from(small("progress")?.clamp(0, 100)).unwrap_or(0),
        attempts: u32::try_from(small("attempts")?.max(0)).unwrap_or(u32::MAX),
        cancel_requested: small("cancel_requested")? != 0,
        created_at: ts(r, t, "created_at")?,
        started_at: opt_ts(r, t, "started_at")?,
        completed_at: opt_ts(r, t, "completed_at")?,
        updated_at: ts(r, t, "updated_at")?,
        predict_time_us: r.opt_int(t, "predict_time_us")?,
        sandbox: match (
            r.opt_int(t, "sandbox_start_us")?,
            r.opt_int(t, "sandbox_run_us")?,
            r.opt_text(t, "sandbox_exit")?,
        ) {
            (Some(start_us), Some(run_us), Some(exit)) => Some(skygate_core::predictions::SandboxMetrics {
                start_us,
                run_us,
                exit,
            }),
            _ => None,
        },
        purge_at: opt_ts(r, t, "purge_at")?,
        data_removed: small("data_removed")? != 0,
        id,
        account,
    })
}

/// Maps the constraint errors an insert can raise to the store's own errors, at the call site that knows
/// what they mean: a unique violation is a `Conflict` naming `conflict`, a foreign-key violation means
/// the referenced row is missing (`NotFound` naming `missing`). Anything else stays a database error.
pub(crate) fn constraint(e: sqlx::Error, conflict: &str, missing: impl FnOnce() -> String) -> StoreError {
    if let Some(db) = e.as_database_error() {
        if db.is_unique_violation() {
            return StoreError::Conflict(conflict.to_owned());
        }
        if db.is_foreign_key_violation() {
            return StoreError::NotFound(missing());
        }
    }
    StoreError::Database(e)
}

//! The `Store` implementation shared by both backends. The SQL is written once, in the subset SQLite
//! and PostgreSQL agree on (`$N` placeholders, `BIGINT` micros, byte strings for hashes); the only
//! dialect difference in these queries, the two-argument maximum (`MAX` vs `GREATEST`), is a macro
//! argument. Each backend module instantiates [`impl_store!`] for its own pool type, so every query is
//! concrete and there is one copy of the logic.

use skygate_core::{AccountId, KeyId, Mode, ProjectId, Tier, Timestamp};

use crate::StoreError;

pub(crate) fn corrupt(column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {why}"))
}

pub(crate) fn account_id(s: String) -> Result<AccountId, StoreError> {
    s.parse().map_err(|e| corrupt("account id", e))
}

pub(crate) fn project_id(s: String) -> Result<ProjectId, StoreError> {
    s.parse().map_err(|e| corrupt("project id", e))
}

pub(crate) fn key_id(s: String) -> Result<KeyId, StoreError> {
    s.parse().map_err(|e| corrupt("key id", e))
}

pub(crate) fn tier(s: String) -> Result<Tier, StoreError> {
    s.parse().map_err(|e| corrupt("tier", e))
}

pub(crate) fn mode(s: String) -> Result<Mode, StoreError> {
    s.parse().map_err(|e| corrupt("mode", e))
}

pub(crate) fn hash(b: Vec<u8>) -> Result<[u8; 32], StoreError> {
    b.as_slice()
        .try_into()
        .map_err(|_| corrupt("key_hash", format!("{} bytes, expected 32", b.len())))
}

pub(crate) fn ts(v: i64) -> Timestamp {
    Timestamp::from_micros(v)
}

pub(crate) fn opt_ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_micros)
}

/// Maps a unique or foreign-key violation to the store's own error; anything else stays a database error.
pub(crate) fn constraint(e: sqlx::Error, conflict: &str, missing: &str) -> StoreError {
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => return StoreError::Conflict(conflict.to_owned()),
            sqlx::error::ErrorKind::ForeignKeyViolation => return StoreError::NotFound(missing.to_owned()),
            _ => {}
        }
    }
    StoreError::Database(e)
}

pub(crate) const KEY_COLUMNS: &str = "k.id, k.project_id, p.account_id, k.mode, k.name, k.prefix, k.last4, \
     k.created_at, k.last_used_at, k.expires_at, k.revoked_at";

/// Implements [`crate::Store`] for `$ty`, whose field `pool` is a `sqlx::Pool<$db>`.
macro_rules! impl_store {
    ($ty:ty, $db:ty, backend = $backend:literal, greatest = $greatest:literal) => {
        mod store_impl {
            use async_trait::async_trait;
            use skygate_core::{
                Account, AccountId, ApiKeyRecord, KeyAuthRecord, KeyId, NewAccount, NewApiKey, NewProject, Project,
                ProjectId, Tier, Timestamp,
            };
            use sqlx::Row;

            use super::*;
            use crate::common::{self, KEY_COLUMNS};
            use crate::{Result, RevokeOutcome, Store};

            type DbRow = <$db as sqlx::Database>::Row;

            fn account_row(r: &DbRow) -> Result<Account> {
                Ok(Account {
                    id: common::account_id(r.try_get("id")?)?,
                    email: r.try_get("email")?,
                    tier: common::tier(r.try_get("tier")?)?,
                    created_at: common::ts(r.try_get("created_at")?),
                })
            }

            fn project_row(r: &DbRow) -> Result<Project> {
                Ok(Project {
                    id: common::project_id(r.try_get("id")?)?,
                    account_id: common::account_id(r.try_get("account_id")?)?,
                    name: r.try_get("name")?,
                    created_at: common::ts(r.try_get("created_at")?),
                })
            }

            fn key_row(r: &DbRow) -> Result<ApiKeyRecord> {
                Ok(ApiKeyRecord {
                    id: common::key_id(r.try_get("id")?)?,
                    project: common::project_id(r.try_get("project_id")?)?,
                    account: common::account_id(r.try_get("account_id")?)?,
                    mode: common::mode(r.try_get("mode")?)?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    last4: r.try_get("last4")?,
                    created_at: common::ts(r.try_get("created_at")?),
                    last_used_at: common::opt_ts(r.try_get("last_used_at")?),
                    expires_at: common::opt_ts(r.try_get("expires_at")?),
                    revoked_at: common::opt_ts(r.try_get("revoked_at")?),
                })
            }

            const PROJECT_COLUMNS: &str = "id, account_id, name, created_at";

            #[async_trait]
            impl Store for $ty {
                fn backend(&self) -> &'static str {
                    $backend
                }

                async fn migrate(&self) -> Result<()> {
                    self.migrator().run(&self.pool).await?;
                    Ok(())
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                async fn close(&self) {
                    self.pool.close().await;
                }

                async fn create_account(&self, new: &NewAccount) -> Result<Account> {
                    sqlx::query("INSERT INTO accounts (id, email, tier, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(new.id.as_str())
                        .bind(&new.email)
                        .bind(new.tier.as_str())
                        .bind(new.created_at.as_micros())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| common::constraint(e, "account email", "account"))?;
                    Ok(Account {
                        id: new.id.clone(),
                        email: new.email.clone(),
                        tier: new.tier,
                        created_at: new.created_at,
                    })
                }

                async fn account(&self, id: &AccountId) -> Result<Option<Account>> {
                    let r = sqlx::query("SELECT id, email, tier, created_at FROM accounts WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    r.as_ref().map(account_row).transpose()
                }

                async fn account_by_email(&self, email: &str) -> Result<Option<Account>> {
                    let r = sqlx::query("SELECT id, email, tier, created_at FROM accounts WHERE email = $1")
                        .bind(email)
                        .fetch_optional(&self.pool)
                        .await?;
                    r.as_ref().map(account_row).transpose()
                }

                async fn set_account_tier(&self, id: &AccountId, tier: Tier) -> Result<bool> {
                    let r = sqlx::query("UPDATE accounts SET tier = $1 WHERE id = $2")
                        .bind(tier.as_str())
                        .bind(id.as_str())
                        .execute(&self.pool)
                        .await?;
                    Ok(r.rows_affected() == 1)
                }

                async fn create_project(&self, account: &AccountId, new: &NewProject) -> Result<Project> {
                    sqlx::query("INSERT INTO projects (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(new.id.as_str())
                        .bind(account.as_str())
                        .bind(&new.name)
                        .bind(new.created_at.as_micros())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| common::constraint(e, "project id", &format!("account {account}")))?;
                    Ok(Project {
                        id: new.id.clone(),
                        account_id: account.clone(),
                        name: new.name.clone(),
                        created_at: new.created_at,
                    })
                }

                async fn project(&self, account: &AccountId, id: &ProjectId) -> Result<Option<Project>> {
                    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE account_id = $1 AND id = $2");
                    let r = sqlx::query(&sql)
                        .bind(account.as_str())
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    r.as_ref().map(project_row).transpose()
                }

                async fn list_projects(&self, account: &AccountId) -> Result<Vec<Project>> {
                    let sql = format!(
                        "SELECT {PROJECT_COLUMNS} FROM projects WHERE account_id = $1 ORDER BY created_at DESC, id DESC"
                    );
                    let rows = sqlx::query(&sql).bind(account.as_str()).fetch_all(&self.pool).await?;
                    rows.iter().map(project_row).collect()
                }

                async fn find_project(&self, id: &ProjectId) -> Result<Option<Project>> {
                    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1");
                    let r = sqlx::query(&sql).bind(id.as_str()).fetch_optional(&self.pool).await?;
                    r.as_ref().map(project_row).transpose()
                }

                async fn create_api_key(&self, project: &ProjectId, new: &NewApiKey) -> Result<ApiKeyRecord> {
                    sqlx::query(
                        "INSERT INTO api_keys (id, project_id, mode, name, key_hash, prefix, last4, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(new.id.as_str())
                    .bind(project.as_str())
                    .bind(new.mode.as_str())
                    .bind(&new.name)
                    .bind(&new.hash[..])
                    .bind(&new.prefix)
                    .bind(&new.last4)
                    .bind(new.created_at.as_micros())
                    .bind(new.expires_at.map(Timestamp::as_micros))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| common::constraint(e, "API key", &format!("project {project}")))?;
                    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.id = $1");
                    let r = sqlx::query(&sql).bind(new.id.as_str()).fetch_one(&self.pool).await?;
                    key_row(&r)
                }

                async fn list_api_keys(&self, project: &ProjectId) -> Result<Vec<ApiKeyRecord>> {
                    let sql = format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id \
                         WHERE k.project_id = $1 ORDER BY k.created_at DESC, k.id DESC"
                    );
                    let rows = sqlx::query(&sql).bind(project.as_str()).fetch_all(&self.pool).await?;
                    rows.iter().map(key_row).collect()
                }

                async fn list_all_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
                    let sql = format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id \
                         ORDER BY k.created_at DESC, k.id DESC"
                    );
                    let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                    rows.iter().map(key_row).collect()
                }

                async fn revoke_api_key(&self, id: &KeyId, now: Timestamp) -> Result<RevokeOutcome> {
                    let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(now.as_micros())
                        .bind(id.as_str())
                        .execute(&self.pool)
                        .await?;
                    if r.rows_affected() == 1 {
                        return Ok(RevokeOutcome::Revoked);
                    }
                    let exists = sqlx::query("SELECT 1 FROM api_keys WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?
                        .is_some();
                    Ok(if exists { RevokeOutcome::AlreadyRevoked } else { RevokeOutcome::NotFound })
                }

                async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyAuthRecord>> {
                    let r = sqlx::query(
                        "SELECT k.id, k.project_id, p.account_id, k.mode, a.tier, k.key_hash, k.expires_at, k.revoked_at \
                         FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN accounts a ON a.id = p.account_id \
                         WHERE k.key_hash = $1",
                    )
                    .bind(&hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(r) = r else { return Ok(None) };
                    Ok(Some(KeyAuthRecord {
                        key_id: common::key_id(r.try_get("id")?)?,
                        project: common::project_id(r.try_get("project_id")?)?,
                        account: common::account_id(r.try_get("account_id")?)?,
                        mode: common::mode(r.try_get("mode")?)?,
                        tier: common::tier(r.try_get("tier")?)?,
                        hash: common::hash(r.try_get("key_hash")?)?,
                        expires_at: common::opt_ts(r.try_get("expires_at")?),
                        revoked_at: common::opt_ts(r.try_get("revoked_at")?),
                    }))
                }

                async fn touch_api_keys(&self, uses: &[(KeyId, Timestamp)]) -> Result<()> {
                    if uses.is_empty() {
                        return Ok(());
                    }
                    let sql = concat!(
                        "UPDATE api_keys SET last_used_at = ",
                        $greatest,
                        "(COALESCE(last_used_at, 0), $1) WHERE id = $2"
                    );
                    let mut tx = self.pool.begin().await?;
                    for (id, at) in uses {
                        sqlx::query(sql).bind(at.as_micros()).bind(id.as_str()).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use impl_store;

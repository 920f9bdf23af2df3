//! The [`Store`](crate::Store) implementation both backends share. Its SQL is written once, in the subset
//! SQLite and PostgreSQL agree on (`$N` placeholders, `BIGINT` micros, byte strings for hashes). sqlx
//! has no practical generic executor over two databases, so [`impl_store!`] stamps the same method bodies
//! onto each backend's concrete pool type; rows are decoded by the shared [`crate::rows`].
//!
//! Where the dialects differ, the macro calls into the backend module, which owns that SQL:
//! `Self::run_migrations` (locking differs) and `Self::TOUCH_SQL` (`MAX` vs `GREATEST`). A future
//! method whose SQL differs follows the same pattern instead of branching here.

pub(crate) const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (id, email, tier, created_at) VALUES ($1, $2, $3, $4)";
pub(crate) const SELECT_ACCOUNT_BY_ID: &str =
    "SELECT id, email, tier, created_at FROM accounts WHERE id = $1";
pub(crate) const SELECT_ACCOUNT_BY_EMAIL: &str =
    "SELECT id, email, tier, created_at FROM accounts WHERE email = $1";
pub(crate) const UPDATE_ACCOUNT_TIER: &str = "UPDATE accounts SET tier = $1 WHERE id = $2";

pub(crate) const INSERT_PROJECT: &str =
    "INSERT INTO projects (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)";
pub(crate) const SELECT_PROJECT_SCOPED: &str =
    "SELECT id, account_id, name, created_at FROM projects WHERE account_id = $1 AND id = $2";
pub(crate) const SELECT_PROJECTS_OF_ACCOUNT: &str = "SELECT id, account_id, name, created_at FROM projects \
     WHERE account_id = $1 ORDER BY created_at DESC, id DESC";
pub(crate) const SELECT_PROJECT_BY_ID: &str =
    "SELECT id, account_id, name, created_at FROM projects WHERE id = $1";

pub(crate) const INSERT_API_KEY: &str = "INSERT INTO api_keys \
     (id, project_id, mode, name, key_hash, prefix, last4, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A key's columns with its project's `account_id`, as [`crate::rows::api_key`] reads them.
macro_rules! key_select {
    ($tail:literal) => {
        concat!(
            "SELECT k.id, k.project_id, p.account_id, k.mode, k.name, k.prefix, k.last4, k.created_at, ",
            "k.last_used_at, k.expires_at, k.revoked_at ",
            "FROM api_keys k JOIN projects p ON p.id = k.project_id ",
            $tail
        )
    };
}

pub(crate) const SELECT_KEY_BY_ID: &str = key_select!("WHERE k.id = $1");
pub(crate) const SELECT_KEYS_OF_PROJECT: &str =
    key_select!("WHERE k.project_id = $1 ORDER BY k.created_at DESC, k.id DESC");
pub(crate) const SELECT_ALL_KEYS: &str = key_select!("ORDER BY k.created_at DESC, k.id DESC");

/// Only the first revocation sets the time.
pub(crate) const REVOKE_KEY: &str =
    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
pub(crate) const KEY_EXISTS: &str = "SELECT 1 FROM api_keys WHERE id = $1";

/// The authentication lookup: one probe of the unique `key_hash` index, then two primary-key joins.
pub(crate) const SELECT_KEY_AUTH: &str =
    "SELECT k.id, k.project_id, p.account_id, k.mode, a.tier, k.key_hash, \
     k.expires_at, k.revoked_at \
     FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN accounts a ON a.id = p.account_id \
     WHERE k.key_hash = $1";

/// Collapses a batch of key uses to the latest use per key, sorted by id. Sorting makes two nodes that
/// flush overlapping batches lock the rows in the same order, so they cannot deadlock each other.
pub(crate) fn latest_uses(
    uses: &[(skygate_core::KeyId, skygate_core::Timestamp)],
) -> std::collections::BTreeMap<&str, i64> {
    let mut latest = std::collections::BTreeMap::new();
    for (id, at) in uses {
        let e = latest.entry(id.as_str()).or_insert(i64::MIN);
        *e = (*e).max(at.as_micros());
    }
    latest
}

/// Implements [`crate::Store`] for `$store`, which has a field `pool` (a concrete sqlx pool), an
/// inherent `async fn run_migrations(&self) -> Result<()>` and an associated `const TOUCH_SQL: &str`
/// (binds: `$1` the use time in micros, `$2` the key id).
macro_rules! impl_store {
    ($store:ty, backend = $backend:literal) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> $crate::Result<()> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn create_account(
                &self,
                new: &skygate_core::NewAccount,
            ) -> $crate::Result<skygate_core::Account> {
                sqlx::query($crate::queries::INSERT_ACCOUNT)
                    .bind(new.id.as_str())
                    .bind(&new.email)
                    .bind(new.tier.as_str())
                    .bind(new.created_at.as_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::rows::constraint(e, "account email", || "account".into()))?;
                Ok(skygate_core::Account {
                    id: new.id.clone(),
                    email: new.email.clone(),
                    tier: new.tier,
                    created_at: new.created_at,
                })
            }

            async fn account(
                &self,
                id: &skygate_core::AccountId,
            ) -> $crate::Result<Option<skygate_core::Account>> {
                let row = sqlx::query($crate::queries::SELECT_ACCOUNT_BY_ID)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::account).transpose()
            }

            async fn account_by_email(&self, email: &str) -> $crate::Result<Option<skygate_core::Account>> {
                let row = sqlx::query($crate::queries::SELECT_ACCOUNT_BY_EMAIL)
                    .bind(email)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::account).transpose()
            }

            async fn set_account_tier(
                &self,
                id: &skygate_core::AccountId,
                tier: skygate_core::Tier,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::queries::UPDATE_ACCOUNT_TIER)
                    .bind(tier.as_str())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_project(
                &self,
                account: &skygate_core::AccountId,
                new: &skygate_core::NewProject,
            ) -> $crate::Result<skygate_core::Project> {
                // The foreign key is the existence check: no read-then-write race, one statement.
                sqlx::query($crate::queries::INSERT_PROJECT)
                    .bind(new.id.as_str())
                    .bind(account.as_str())
                    .bind(&new.name)
                    .bind(new.created_at.as_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| {
                        $crate::rows::constraint(e, "project id", || format!("account {account}"))
                    })?;
                Ok(skygate_core::Project {
                    id: new.id.clone(),
                    account_id: account.clone(),
                    name: new.name.clone(),
                    created_at: new.created_at,
                })
            }

            async fn project(
                &self,
                account: &skygate_core::AccountId,
                id: &skygate_core::ProjectId,
            ) -> $crate::Result<Option<skygate_core::Project>> {
                let row = sqlx::query($crate::queries::SELECT_PROJECT_SCOPED)
                    .bind(account.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::project).transpose()
            }

            async fn list_projects(
                &self,
                account: &skygate_core::AccountId,
            ) -> $crate::Result<Vec<skygate_core::Project>> {
                let rows = sqlx::query($crate::queries::SELECT_PROJECTS_OF_ACCOUNT)
                    .bind(account.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::rows::project).collect()
            }

            async fn find_project(
                &self,
                id: &skygate_core::ProjectId,
            ) -> $crate::Result<Option<skygate_core::Project>> {
                let row = sqlx::query($crate::queries::SELECT_PROJECT_BY_ID)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::project).transpose()
            }

            async fn create_api_key(
                &self,
                project: &skygate_core::ProjectId,
                new: &skygate_core::NewApiKey,
            ) -> $crate::Result<skygate_core::ApiKeyRecord> {
                // Write first, then read back inside the same transaction: the write takes the lock, so
                // the read sees a consistent project (and SQLite never has to upgrade a read lock).
                let mut tx = self.pool.begin().await?;
                sqlx::query($crate::queries::INSERT_API_KEY)
                    .bind(new.id.as_str())
                    .bind(project.as_str())
                    .bind(new.mode.as_str())
                    .bind(&new.name)
                    .bind(&new.hash[..])
                    .bind(&new.prefix)
                    .bind(&new.last4)
                    .bind(new.created_at.as_micros())
                    .bind(new.expires_at.map(skygate_core::Timestamp::as_micros))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        $crate::rows::constraint(e, "API key hash", || format!("project {project}"))
                    })?;
                let row = sqlx::query($crate::queries::SELECT_KEY_BY_ID)
                    .bind(new.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let record = $crate::rows::api_key(&row)?;
                tx.commit().await?;
                Ok(record)
            }

            async fn list_api_keys(
                &self,
                project: &skygate_core::ProjectId,
            ) -> $crate::Result<Vec<skygate_core::ApiKeyRecord>> {
                let rows = sqlx::query($crate::queries::SELECT_KEYS_OF_PROJECT)
                    .bind(project.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::rows::api_key).collect()
            }

            async fn list_all_api_keys(&self) -> $crate::Result<Vec<skygate_core::ApiKeyRecord>> {
                let rows = sqlx::query($crate::queries::SELECT_ALL_KEYS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::rows::api_key).collect()
            }

            async fn revoke_api_key(
                &self,
                id: &skygate_core::KeyId,
                now: skygate_core::Timestamp,
            ) -> $crate::Result<$crate::RevokeOutcome> {
                let done = sqlx::query($crate::queries::REVOKE_KEY)
                    .bind(now.as_micros())
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok($crate::RevokeOutcome::Revoked);
                }
                // Nothing changed: either it was revoked before (keep that time) or it never existed.
                let exists = sqlx::query($crate::queries::KEY_EXISTS)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match exists {
                    Some(_) => $crate::RevokeOutcome::AlreadyRevoked,
                    None => $crate::RevokeOutcome::NotFound,
                })
            }

            async fn api_key_by_hash(
                &self,
                hash: &[u8; 32],
            ) -> $crate::Result<Option<skygate_core::KeyAuthRecord>> {
                let row = sqlx::query($crate::queries::SELECT_KEY_AUTH)
                    .bind(&hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::rows::key_auth).transpose()
            }

            async fn touch_api_keys(
                &self,
                uses: &[(skygate_core::KeyId, skygate_core::Timestamp)],
            ) -> $crate::Result<()> {
                if uses.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                for (id, at) in $crate::queries::latest_uses(uses) {
                    sqlx::query(Self::TOUCH_SQL)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_store;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use skygate_core::{KeyId, Timestamp};

    use super::*;

    #[test]
    fn latest_uses_keeps_the_max_per_key_in_id_order() {
        let a = KeyId::generate().unwrap();
        let b = KeyId::generate().unwrap();
        let t = Timestamp::from_micros;
        let uses = [
            (a.clone(), t(5)),
            (b.clone(), t(1)),
            (a.clone(), t(9)),
            (a.clone(), t(7)),
        ];
        let got = latest_uses(&uses);
        let mut want = vec![(a.as_str(), 9), (b.as_str(), 1)];
        want.sort();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
    }
}

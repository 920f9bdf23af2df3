//! Access tokens in the store, and the account-scoped lookups the management API needs (an account's
//! key by id, an account's audit entries). SQL both backends share, row decoding, and the
//! [`access_methods!`] macro that [`crate::queries::impl_store!`] expands inside each backend's `impl`
//! (its `impl Store` forwards to them). No dialect differences.

use skygate_core::{Scopes, TokenAuthRecord, TokenRecord};

use crate::rows::{corrupt, hash, opt_ts, parsed, ts, StoreRow};
use crate::{Result, Sealer};

pub(crate) const INSERT_TOKEN: &str = "INSERT INTO access_tokens \
     (id, account_id, name, scopes, token_hash, last4, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const SELECT_TOKENS_OF_ACCOUNT: &str = "SELECT id, account_id, name, scopes, last4, created_at, \
     last_used_at, expires_at, revoked_at FROM access_tokens WHERE account_id = $1 \
     ORDER BY created_at DESC, id DESC";
/// Only the first revocation sets the time; another account's token is not touched.
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE access_tokens SET revoked_at = $1 WHERE account_id = $2 AND id = $3 AND revoked_at IS NULL";
pub(crate) const TOKEN_EXISTS: &str = "SELECT 1 FROM access_tokens WHERE account_id = $1 AND id = $2";
/// The authentication lookup: one probe of the unique `token_hash` index and a primary-key join.
pub(crate) const SELECT_TOKEN_AUTH: &str = "SELECT t.id, t.account_id, a.tier, t.scopes, t.token_hash, \
     t.expires_at, t.revoked_at FROM access_tokens t JOIN accounts a ON a.id = t.account_id \
     WHERE t.token_hash = $1";
/// Portable `max(last_used_at, $1)`.
pub(crate) const TOUCH_TOKEN: &str = "UPDATE access_tokens SET last_used_at = $1 \
     WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)";

fn scopes(r: &impl StoreRow, t: &str) -> Result<Scopes> {
    Scopes::parse_list(&r.text(t, "scopes")?).map_err(|e| corrupt(t, "scopes", e))
}

/// Columns: every column of `access_tokens` but `token_hash` (see [`SELECT_TOKENS_OF_ACCOUNT`]).
pub(crate) fn token(r: &impl StoreRow, sealer: &Sealer) -> Result<TokenRecord> {
    let t = "access_tokens";
    let id: skygate_core::TokenId = parsed(r, t, "id")?;
    let account: skygate_core::AccountId = parsed(r, t, "account_id")?;
    let name = sealer.open((t, id.as_str(), "name"), account.as_str(), &r.bytes(t, "name")?)?;
    Ok(TokenRecord {
        scopes: scopes(r, t)?,
        last4: r.text(t, "last4")?,
        created_at: ts(r, t, "created_at")?,
        last_used_at: opt_ts(r, t, "last_used_at")?,
        expires_at: opt_ts(r, t, "expires_at")?,
        revoked_at: opt_ts(r, t, "revoked_at")?,
        id,
        account,
        name,
    })
}

/// Columns: see [`SELECT_TOKEN_AUTH`].
pub(crate) fn token_auth(r: &impl StoreRow) -> Result<TokenAuthRecord> {
    let t = "access_tokens";
    Ok(TokenAuthRecord {
        token_id: parsed(r, t, "id")?,
        account: parsed(r, t, "account_id")?,
        tier: parsed(r, "accounts", "tier")?,
        scopes: scopes(r, t)?,
        hash: hash(r, t, "token_hash")?,
        expires_at: opt_ts(r, t, "expires_at")?,
        revoked_at: opt_ts(r, t, "revoked_at")?,
    })
}

/// The bodies of the access-token `Store` methods, expanded as inherent methods of each backend by
/// [`crate::queries::impl_store!`] (whose `impl Store` forwards to them).
macro_rules! access_methods {
    () => {
        /// The account's shred key (what its sealed values are bound to); `NotFound` for an unknown
        /// account.
        async fn account_shred(&self, account: &skygate_core::AccountId) -> $crate::Result<u64> {
            let shred: Option<i64> = sqlx::query_scalar($crate::queries::SELECT_ACCOUNT_SHRED)
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            shred
                .map(|s| s as u64)
                .ok_or_else(|| $crate::StoreError::NotFound(format!("account {account}")))
        }

        async fn create_access_token(
            &self,
            account: &skygate_core::AccountId,
            new: &skygate_core::token::NewAccessToken,
        ) -> $crate::Result<skygate_core::TokenRecord> {
            let shred = self.account_shred(account).await?;
            let name = self.sealer.seal(
                ("access_tokens", new.id.as_str(), "name"),
                account.as_str(),
                shred,
                &new.name,
            )?;
            sqlx::query($crate::access::INSERT_TOKEN)
                .bind(new.id.as_str())
                .bind(account.as_str())
                .bind(name)
                .bind(new.scopes.to_list())
                .bind(&new.hash[..])
                .bind(&new.last4)
                .bind(new.created_at.as_micros())
                .bind(new.expires_at.map(skygate_core::Timestamp::as_micros))
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    $crate::rows::constraint(e, "access token hash", || format!("account {account}"))
                })?;
            Ok(skygate_core::TokenRecord {
                id: new.id.clone(),
                account: account.clone(),
                name: new.name.clone(),
                scopes: new.scopes,
                last4: new.last4.clone(),
                created_at: new.created_at,
                last_used_at: None,
                expires_at: new.expires_at,
                revoked_at: None,
            })
        }

        async fn list_access_tokens(
            &self,
            account: &skygate_core::AccountId,
        ) -> $crate::Result<Vec<skygate_core::TokenRecord>> {
            let rows = sqlx::query($crate::access::SELECT_TOKENS_OF_ACCOUNT)
                .bind(account.as_str())
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| $crate::access::token(r, &self.sealer))
                .collect()
        }

        async fn revoke_access_token(
            &self,
            account: &skygate_core::AccountId,
            id: &skygate_core::TokenId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<$crate::RevokeOutcome> {
            let done = sqlx::query($crate::access::REVOKE_TOKEN)
                .bind(now.as_micros())
                .bind(account.as_str())
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 1 {
                return Ok($crate::RevokeOutcome::Revoked);
            }
            let exists = sqlx::query($crate::access::TOKEN_EXISTS)
                .bind(account.as_str())
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            Ok($crate::RevokeOutcome::unchanged(exists.is_some()))
        }

        async fn access_token_by_hash(
            &self,
            hash: &[u8; 32],
        ) -> $crate::Result<Option<skygate_core::TokenAuthRecord>> {
            let row = sqlx::query($crate::access::SELECT_TOKEN_AUTH)
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map($crate::access::token_auth).transpose()
        }

        async fn touch_access_token(
            &self,
            id: &skygate_core::TokenId,
            at: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            sqlx::query($crate::access::TOUCH_TOKEN)
                .bind(at.as_micros())
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn account_api_key(
            &self,
            account: &skygate_core::AccountId,
            id: &skygate_core::KeyId,
        ) -> $crate::Result<Option<skygate_core::ApiKeyRecord>> {
            let row = sqlx::query($crate::queries::SELECT_KEY_OF_ACCOUNT)
                .bind(id.as_str())
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref()
                .map(|r| $crate::rows::api_key(r, &self.sealer))
                .transpose()
        }

        async fn find_api_key(
            &self,
            id: &skygate_core::KeyId,
        ) -> $crate::Result<Option<skygate_core::ApiKeyRecord>> {
            let row = sqlx::query($crate::queries::SELECT_KEY_BY_ID)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref()
                .map(|r| $crate::rows::api_key(r, &self.sealer))
                .transpose()
        }

        async fn account_audit(
            &self,
            account: &skygate_core::AccountId,
            before_seq: i64,
            limit: i64,
        ) -> $crate::Result<Vec<skygate_core::AuditEntry>> {
            let rows = sqlx::query($crate::queries::SELECT_ACCOUNT_AUDIT)
                .bind(account.as_str())
                .bind(before_seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map($crate::rows::audit_entry).collect()
        }
    };
}
pub(crate) use access_methods;

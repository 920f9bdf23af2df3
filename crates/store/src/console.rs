//! The console in the store: account passwords (argon2id PHC strings), single-use setup links and
//! sessions, each secret kept only as its keyed hash. SQL both backends share, row decoding, and the
//! [`console_methods!`] macro that [`crate::queries::impl_store!`] expands inside each backend's `impl`
//! (its `impl Store` forwards to them). Using a link is one conditional UPDATE, so two requests (or
//! nodes) racing with one link cannot both set a password.

use skygate_core::session::{SessionRecord, SessionStage};

use crate::rows::{corrupt, parsed, ts, StoreRow};
use crate::Result;

pub(crate) const DELETE_UNUSED_LINKS: &str =
    "DELETE FROM password_setup_links WHERE account_id = $1 AND used_at IS NULL";
pub(crate) const INSERT_LINK: &str = "INSERT INTO password_setup_links \
     (token_hash, account_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const SELECT_LINK: &str = "SELECT account_id FROM password_setup_links \
     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2";
pub(crate) const USE_LINK: &str = "UPDATE password_setup_links SET used_at = $1 \
     WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING account_id";
pub(crate) const SET_PASSWORD: &str =
    "UPDATE accounts SET password_hash = $1, password_set_at = $2 WHERE id = $3";
pub(crate) const SELECT_PASSWORD: &str = "SELECT password_hash, password_set_at FROM accounts WHERE id = $1";
pub(crate) const DELETE_SESSIONS_OF: &str = "DELETE FROM console_sessions WHERE account_id = $1";

pub(crate) const INSERT_SESSION: &str = "INSERT INTO console_sessions \
     (id, account_id, token_hash, stage, created_at, last_seen_at, expires_at, ip, user_agent) \
     VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)";
pub(crate) const SELECT_SESSION_BY_HASH: &str = "SELECT id, account_id, stage, created_at, last_seen_at, \
     expires_at, ip, user_agent FROM console_sessions WHERE token_hash = $1";
pub(crate) const SELECT_SESSIONS_OF: &str = "SELECT id, account_id, stage, created_at, last_seen_at, \
     expires_at, ip, user_agent FROM console_sessions WHERE account_id = $1 AND expires_at > $2 \
     ORDER BY last_seen_at DESC, id DESC";
/// Portable `max(last_seen_at, $1)`.
pub(crate) const TOUCH_SESSION: &str =
    "UPDATE console_sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1";
pub(crate) const DELETE_SESSION: &str = "DELETE FROM console_sessions WHERE id = $1";
pub(crate) const DELETE_SESSION_OF: &str = "DELETE FROM console_sessions WHERE account_id = $1 AND id = $2";

/// Columns: every column of `console_sessions` but `token_hash` (see [`SELECT_SESSION_BY_HASH`]).
pub(crate) fn session(r: &impl StoreRow) -> Result<SessionRecord> {
    let t = "console_sessions";
    let stage = r.text(t, "stage")?;
    Ok(SessionRecord {
        id: parsed(r, t, "id")?,
        account: parsed(r, t, "account_id")?,
        stage: SessionStage::parse(&stage).ok_or_else(|| corrupt(t, "stage", stage))?,
        created_at: ts(r, t, "created_at")?,
        last_seen_at: ts(r, t, "last_seen_at")?,
        expires_at: ts(r, t, "expires_at")?,
        ip: r.text(t, "ip")?,
        user_agent: r.text(t, "user_agent")?,
    })
}

/// The bodies of the console `Store` methods (see the module docs).
macro_rules! console_methods {
    ($db:ty) => {
        async fn insert_session_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            new: &skygate_core::session::NewSession,
        ) -> $crate::Result<()> {
            sqlx::query($crate::console::INSERT_SESSION)
                .bind(new.id.as_str())
                .bind(new.account.as_str())
                .bind(&new.hash[..])
                .bind(new.stage.as_str())
                .bind(new.created_at.as_micros())
                .bind(new.expires_at.as_micros())
                .bind(&new.ip)
                .bind(&new.user_agent)
                .execute(&mut **tx)
                .await
                .map_err(|e| {
                    $crate::rows::constraint(e, "console session", || format!("account {}", new.account))
                })?;
            Ok(())
        }

        async fn issue_setup_link(
            &self,
            account: &skygate_core::AccountId,
            hash: &[u8; 32],
            purpose: skygate_core::session::SetupPurpose,
            now: skygate_core::Timestamp,
            expires_at: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            let mut tx = self.begin_read_write().await?;
            sqlx::query($crate::console::DELETE_UNUSED_LINKS)
                .bind(account.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query($crate::console::INSERT_LINK)
                .bind(&hash[..])
                .bind(account.as_str())
                .bind(purpose.as_str())
                .bind(now.as_micros())
                .bind(expires_at.as_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::rows::constraint(e, "setup link", || format!("account {account}")))?;
            tx.commit().await?;
            Ok(())
        }

        async fn setup_link_account(
            &self,
            hash: &[u8; 32],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Option<skygate_core::AccountId>> {
            let id: Option<String> = sqlx::query_scalar($crate::console::SELECT_LINK)
                .bind(&hash[..])
                .bind(now.as_micros())
                .fetch_optional(&self.pool)
                .await?;
            id.map(|s| {
                s.parse()
                    .map_err(|e| $crate::rows::corrupt("password_setup_links", "account_id", e))
            })
            .transpose()
        }

        async fn redeem_setup_link(
            &self,
            hash: &[u8; 32],
            phc: &str,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Option<skygate_core::AccountId>> {
            let mut tx = self.begin_read_write().await?;
            let id: Option<String> = sqlx::query_scalar($crate::console::USE_LINK)
                .bind(now.as_micros())
                .bind(&hash[..])
                .fetch_optional(&mut *tx)
                .await?;
            let Some(id) = id else { return Ok(None) };
            sqlx::query($crate::console::SET_PASSWORD)
                .bind(phc)
                .bind(now.as_micros())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            sqlx::query($crate::console::DELETE_SESSIONS_OF)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            id.parse()
                .map(Some)
                .map_err(|e| $crate::rows::corrupt("password_setup_links", "account_id", e))
        }

        async fn password(
            &self,
            account: &skygate_core::AccountId,
        ) -> $crate::Result<Option<skygate_core::session::PasswordRecord>> {
            use $crate::rows::StoreRow as _;
            let row = sqlx::query($crate::console::SELECT_PASSWORD)
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let t = "accounts";
            match (
                r.opt_text(t, "password_hash")?,
                $crate::rows::opt_ts(&r, t, "password_set_at")?,
            ) {
                (Some(phc), Some(set_at)) => Ok(Some(skygate_core::session::PasswordRecord { phc, set_at })),
                _ => Ok(None),
            }
        }

        async fn create_session(&self, new: &skygate_core::session::NewSession) -> $crate::Result<()> {
            let mut tx = self.begin_read_write().await?;
            Self::insert_session_in(&mut tx, new).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn replace_session(
            &self,
            old: &skygate_core::SessionId,
            new: &skygate_core::session::NewSession,
        ) -> $crate::Result<bool> {
            let mut tx = self.begin_read_write().await?;
            let gone = sqlx::query($crate::console::DELETE_SESSION)
                .bind(old.as_str())
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() != 1 {
                return Ok(false);
            }
            Self::insert_session_in(&mut tx, new).await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn session_by_hash(
            &self,
            hash: &[u8; 32],
        ) -> $crate::Result<Option<skygate_core::session::SessionRecord>> {
            let row = sqlx::query($crate::console::SELECT_SESSION_BY_HASH)
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map($crate::console::session).transpose()
        }

        async fn touch_session(
            &self,
            id: &skygate_core::SessionId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            sqlx::query($crate::console::TOUCH_SESSION)
                .bind(now.as_micros())
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn list_sessions(
            &self,
            account: &skygate_core::AccountId,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<Vec<skygate_core::session::SessionRecord>> {
            let rows = sqlx::query($crate::console::SELECT_SESSIONS_OF)
                .bind(account.as_str())
                .bind(now.as_micros())
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map($crate::console::session).collect()
        }

        async fn delete_session(
            &self,
            account: &skygate_core::AccountId,
            id: &skygate_core::SessionId,
        ) -> $crate::Result<bool> {
            let done = sqlx::query($crate::console::DELETE_SESSION_OF)
                .bind(account.as_str())
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }
    };
}
pub(crate) use console_methods;

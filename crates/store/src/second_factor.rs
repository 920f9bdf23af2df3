//! Two-factor authentication in the store: an account's TOTP secret (sealed), its replay guard and
//! soft-lock, and its recovery codes (keyed hashes, each usable once). SQL both backends share and the
//! [`second_factor_methods!`] macro that [`crate::queries::impl_store!`] expands inside each backend's
//! `impl` (its `impl Store` forwards to them). The checks that must hold across nodes (a code step
//! accepted once, a recovery code used once, an enrolment confirmed once) are each one conditional
//! UPDATE, so they need no lock beyond the row's.

/// A new or restarted enrolment; an enabled one is left alone (0 rows).
pub(crate) const BEGIN_TOTP: &str = "INSERT INTO account_totp (account_id, secret, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (account_id) DO UPDATE SET secret = excluded.secret, \
     created_at = excluded.created_at, last_step = NULL, failures = 0, locked_until = NULL \
     WHERE account_totp.enabled_at IS NULL";
pub(crate) const SELECT_TOTP: &str = "SELECT account_id, secret, created_at, enabled_at, last_step, \
     failures, locked_until FROM account_totp WHERE account_id = $1";
pub(crate) const CONFIRM_TOTP: &str = "UPDATE account_totp SET enabled_at = $1, last_step = $2, \
     failures = 0, locked_until = NULL WHERE account_id = $3 AND enabled_at IS NULL \
     AND (last_step IS NULL OR last_step < $2)";
/// The replay guard: moves `last_step` forward only.
pub(crate) const ACCEPT_STEP: &str = "UPDATE account_totp SET last_step = $1, failures = 0, \
     locked_until = NULL WHERE account_id = $2 AND (last_step IS NULL OR last_step < $1)";
pub(crate) const COUNT_FAILURE: &str =
    "UPDATE account_totp SET failures = failures + 1 WHERE account_id = $1";
pub(crate) const LOCK_AFTER_FAILURES: &str = "UPDATE account_totp SET locked_until = $1, failures = 0 \
     WHERE account_id = $2 AND failures >= $3";
pub(crate) const DELETE_TOTP: &str = "DELETE FROM account_totp WHERE account_id = $1";
pub(crate) const TWO_FACTOR_ENABLED: &str =
    "SELECT 1 FROM account_totp WHERE account_id = $1 AND enabled_at IS NOT NULL";
pub(crate) const DELETE_CODES: &str = "DELETE FROM recovery_codes WHERE account_id = $1";
pub(crate) const INSERT_CODE: &str =
    "INSERT INTO recovery_codes (account_id, code_hash, created_at) VALUES ($1, $2, $3)";
pub(crate) const USE_CODE: &str = "UPDATE recovery_codes SET used_at = $1 \
     WHERE account_id = $2 AND code_hash = $3 AND used_at IS NULL";
pub(crate) const CODES_LEFT: &str =
    "SELECT COUNT(*) FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL";

/// The bodies of the second-factor `Store` methods (see the module docs).
macro_rules! second_factor_methods {
    ($db:ty) => {
        async fn replace_codes_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            account: &skygate_core::AccountId,
            codes: &[[u8; 32]],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            sqlx::query($crate::second_factor::DELETE_CODES)
                .bind(account.as_str())
                .execute(&mut **tx)
                .await?;
            for hash in codes {
                sqlx::query($crate::second_factor::INSERT_CODE)
                    .bind(account.as_str())
                    .bind(&hash[..])
                    .bind(now.as_micros())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        async fn begin_totp(
            &self,
            account: &skygate_core::AccountId,
            secret: &skygate_core::totp::TotpSecret,
            now: skygate_core::Timestamp,
        ) -> $crate::Result<bool> {
            let shred = self.account_shred(account).await?;
            let sealed = self.sealer.seal_bytes(
                ("account_totp", account.as_str(), "secret"),
                account.as_str(),
                shred,
                secret.expose(),
            )?;
            let done = sqlx::query($crate::second_factor::BEGIN_TOTP)
                .bind(account.as_str())
                .bind(sealed)
                .bind(now.as_micros())
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::rows::constraint(e, "account_totp", || format!("account {account}")))?;
            Ok(done.rows_affected() == 1)
        }

        async fn totp_state(
            &self,
            account: &skygate_core::AccountId,
        ) -> $crate::Result<Option<skygate_core::totp::TotpState>> {
            use $crate::rows::StoreRow as _;
            let row = sqlx::query($crate::second_factor::SELECT_TOTP)
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let t = "account_totp";
            let secret = self.sealer.open_bytes(
                (t, account.as_str(), "secret"),
                account.as_str(),
                &r.bytes(t, "secret")?,
            )?;
            let step = r.opt_int(t, "last_step")?;
            Ok(Some(skygate_core::totp::TotpState {
                secret: skygate_core::totp::TotpSecret::from_bytes(secret),
                created_at: $crate::rows::ts(&r, t, "created_at")?,
                enabled_at: $crate::rows::opt_ts(&r, t, "enabled_at")?,
                last_step: step
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|e| $crate::rows::corrupt(t, "last_step", e))?,
                failures: u32::try_from(r.int(t, "failures")?).unwrap_or(u32::MAX),
                locked_until: $crate::rows::opt_ts(&r, t, "locked_until")?,
            }))
        }

        async fn confirm_totp(
            &self,
            account: &skygate_core::AccountId,
            step: u64,
            codes: &[[u8; 32]],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<bool> {
            let step = i64::try_from(step).map_err(|_| $crate::StoreError::Invalid("TOTP step".into()))?;
            let mut tx = self.begin_read_write().await?;
            let done = sqlx::query($crate::second_factor::CONFIRM_TOTP)
                .bind(now.as_micros())
                .bind(step)
                .bind(account.as_str())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            Self::replace_codes_in(&mut tx, account, codes, now).await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn accept_totp_step(
            &self,
            account: &skygate_core::AccountId,
            step: u64,
        ) -> $crate::Result<bool> {
            let step = i64::try_from(step).map_err(|_| $crate::StoreError::Invalid("TOTP step".into()))?;
            let done = sqlx::query($crate::second_factor::ACCEPT_STEP)
                .bind(step)
                .bind(account.as_str())
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn record_second_factor_failure(
            &self,
            account: &skygate_core::AccountId,
            max_failures: u32,
            locked_until: skygate_core::Timestamp,
        ) -> $crate::Result<bool> {
            let mut tx = self.begin_read_write().await?;
            sqlx::query($crate::second_factor::COUNT_FAILURE)
                .bind(account.as_str())
                .execute(&mut *tx)
                .await?;
            let locked = sqlx::query($crate::second_factor::LOCK_AFTER_FAILURES)
                .bind(locked_until.as_micros())
                .bind(account.as_str())
                .bind(i64::from(max_failures))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(locked.rows_affected() == 1)
        }

        async fn replace_recovery_codes(
            &self,
            account: &skygate_core::AccountId,
            codes: &[[u8; 32]],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<()> {
            let mut tx = self.begin_read_write().await?;
            Self::replace_codes_in(&mut tx, account, codes, now).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn use_recovery_code(
            &self,
            account: &skygate_core::AccountId,
            hash: &[u8; 32],
            now: skygate_core::Timestamp,
        ) -> $crate::Result<bool> {
            let done = sqlx::query($crate::second_factor::USE_CODE)
                .bind(now.as_micros())
                .bind(account.as_str())
                .bind(&hash[..])
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn recovery_codes_left(&self, account: &skygate_core::AccountId) -> $crate::Result<u32> {
            let n: i64 = sqlx::query_scalar($crate::second_factor::CODES_LEFT)
                .bind(account.as_str())
                .fetch_one(&self.pool)
                .await?;
            Ok(u32::try_from(n).unwrap_or(0))
        }

        async fn disable_totp(&self, account: &skygate_core::AccountId) -> $crate::Result<bool> {
            let mut tx = self.begin_read_write().await?;
            let done = sqlx::query($crate::second_factor::DELETE_TOTP)
                .bind(account.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query($crate::second_factor::DELETE_CODES)
                .bind(account.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        }

        async fn two_factor_enabled(&self, account: &skygate_core::AccountId) -> $crate::Result<bool> {
            // `query`, not `query_scalar`: `SELECT 1` is INT4 on PostgreSQL and INTEGER on SQLite.
            let row = sqlx::query($crate::second_factor::TWO_FACTOR_ENABLED)
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.is_some())
        }
    };
}
pub(crate) use second_factor_methods;

//! Two-factor authentication for accounts: enrolment, confirmation by the first code, the second-factor
//! check at login (a TOTP code or a recovery code), disabling and regenerating recovery codes. Every
//! call takes the current time from the caller (fixed-clock tests) and writes its audit entry.
//!
//! Rules: a code is accepted once (the store's replay guard refuses its step, and every earlier one,
//! atomically across nodes); [`MAX_FAILURES`] wrong answers in a row soft-lock the second factor for
//! [`LOCK_FOR`], during which even a right code is refused; a recovery code works once and is checked
//! by its keyed hash; disabling or regenerating needs a current code. Answers never say more than
//! "wrong", "already used" or "locked until".

use std::time::Duration;

use skygate_core::totp::{self, RecoveryCode, TotpError, TotpSecret};
use skygate_core::{Account, KeyHasher, Timestamp};
use skygate_store::DynStore;

use crate::admin::AdminError;
use crate::credentials::Actor;

/// Wrong second factors in a row before the lock.
pub const MAX_FAILURES: u32 = 5;
/// How long the lock lasts.
pub const LOCK_FOR: Duration = Duration::from_secs(60);
/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "skygate";

/// Why a second factor was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecondFactorError {
    #[error("{0}")]
    Code(TotpError),
    #[error("that recovery code is wrong or was already used")]
    RecoveryCode,
    #[error("too many wrong codes: try again after {0}")]
    Locked(Timestamp),
    #[error("two-factor authentication is not on for this account")]
    NotEnabled,
    #[error("there is no enrolment waiting for its first code; start again")]
    NoEnrolment,
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl From<skygate_store::StoreError> for SecondFactorError {
    fn from(e: skygate_store::StoreError) -> Self {
        SecondFactorError::Admin(e.into())
    }
}

type Result<T> = std::result::Result<T, SecondFactorError>;

/// What an enrolment shows the user once: the secret as text and as the `otpauth://` URI (for the QR
/// code). Both are secrets (zeroized on drop).
pub struct Enrolment {
    pub secret: TotpSecret,
    pub uri: zeroize::Zeroizing<String>,
}

/// Which second factor was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Code,
    /// A recovery code; `left` are still unused.
    RecoveryCode {
        left: u32,
    },
}

fn audit(
    actor: &Actor,
    account: &Account,
    now: Timestamp,
    action: &str,
    detail: String,
) -> skygate_core::NewAuditEntry {
    skygate_core::NewAuditEntry::new(now, actor.who.clone(), action, account.id.as_str(), detail)
        .for_account(account.id.as_str())
        .from_client(actor.ip.clone(), &actor.user_agent)
}

/// Starts (or restarts) an enrolment: a fresh secret, stored sealed, not yet enabled.
pub async fn begin(store: &DynStore, account: &Account, now: Timestamp) -> Result<Enrolment> {
    let secret = TotpSecret::generate().map_err(|_| AdminError::Random)?;
    if !store.begin_totp(&account.id, &secret, now).await? {
        return Err(AdminError::Conflict("two-factor authentication is already on".into()).into());
    }
    let uri = secret.otpauth_uri(ISSUER, &account.email);
    Ok(Enrolment { secret, uri })
}

fn new_codes(hasher: &dyn KeyHasher) -> Result<(Vec<RecoveryCode>, Vec<[u8; 32]>)> {
    let codes = RecoveryCode::generate_set().map_err(|_| AdminError::Random)?;
    let hashes = codes.iter().map(|c| hasher.hash(c.expose().as_bytes())).collect();
    Ok((codes, hashes))
}

/// Turns 2FA on once the first code from the app checks out; returns the recovery codes (their only
/// showing). A wrong code counts as a failure like at login.
pub async fn confirm(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    actor: &Actor,
    account: &Account,
    code: &str,
    now: Timestamp,
) -> Result<Vec<RecoveryCode>> {
    let Some(state) = store.totp_state(&account.id).await? else {
        return Err(SecondFactorError::NoEnrolment);
    };
    if state.enabled_at.is_some() {
        return Err(AdminError::Conflict("two-factor authentication is already on".into()).into());
    }
    unlocked(&state, now)?;
    let step = match totp::verify(&state.secret, code, now, state.last_step) {
        Ok(step) => step,
        Err(e) => return Err(failed(store, actor, account, now, "2fa.enable.failure", e).await),
    };
    let (codes, hashes) = new_codes(hasher)?;
    if !store.confirm_totp(&account.id, step, &hashes, now).await? {
        return Err(SecondFactorError::NoEnrolment);
    }
    store
        .append_audit(&audit(
            actor,
            account,
            now,
            "2fa.enable",
            format!("{} recovery codes", codes.len()),
        ))
        .await?;
    Ok(codes)
}

fn unlocked(state: &totp::TotpState, now: Timestamp) -> Result<()> {
    match state.locked_until {
        Some(until) if now < until => Err(SecondFactorError::Locked(until)),
        _ => Ok(()),
    }
}

/// Counts a failure (locking after [`MAX_FAILURES`]), audits it, and returns the error to answer.
async fn failed(
    store: &DynStore,
    actor: &Actor,
    account: &Account,
    now: Timestamp,
    action: &str,
    why: TotpError,
) -> SecondFactorError {
    let until = now.saturating_add(LOCK_FOR);
    let locked = match store
        .record_second_factor_failure(&account.id, MAX_FAILURES, until)
        .await
    {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let detail = if locked {
        format!("{why}; second factor locked until {until}")
    } else {
        why.to_string()
    };
    if let Err(e) = store
        .append_audit(&audit(actor, account, now, action, detail))
        .await
    {
        return e.into();
    }
    if locked {
        SecondFactorError::Locked(until)
    } else {
        SecondFactorError::Code(why)
    }
}

/// The login's second step: a 6-digit code, or (anything else) a recovery code.
pub async fn check(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    actor: &Actor,
    account: &Account,
    answer: &str,
    now: Timestamp,
) -> Result<Accepted> {
    let Some(state) = store.totp_state(&account.id).await? else {
        return Err(SecondFactorError::NotEnabled);
    };
    if state.enabled_at.is_none() {
        return Err(SecondFactorError::NotEnabled);
    }
    unlocked(&state, now)?;
    let digits = answer.chars().filter(|c| !c.is_whitespace()).count() == totp::DIGITS
        && answer
            .chars()
            .filter(|c| !c.is_whitespace())
            .all(|c| c.is_ascii_digit());
    if !digits {
        let used = match RecoveryCode::parse(answer) {
            Some(code) => {
                store
                    .use_recovery_code(&account.id, &hasher.hash(code.expose().as_bytes()), now)
                    .await?
            }
            None => false,
        };
        if !used {
            let e = failed(store, actor, account, now, "login.2fa.failure", TotpError::Wrong).await;
            return Err(match e {
                SecondFactorError::Code(_) => SecondFactorError::RecoveryCode,
                other => other,
            });
        }
        let left = store.recovery_codes_left(&account.id).await?;
        store
            .append_audit(&audit(
                actor,
                account,
                now,
                "2fa.recovery_code.use",
                format!("{left} left"),
            ))
            .await?;
        return Ok(Accepted::RecoveryCode { left });
    }
    let step = match totp::verify(&state.secret, answer, now, state.last_step) {
        Ok(step) => step,
        Err(e) => return Err(failed(store, actor, account, now, "login.2fa.failure", e).await),
    };
    // The store's guard is the real replay check: another node may have taken this step meanwhile.
    if !store.accept_totp_step(&account.id, step).await? {
        return Err(failed(
            store,
            actor,
            account,
            now,
            "login.2fa.failure",
            TotpError::Replayed,
        )
        .await);
    }
    Ok(Accepted::Code)
}

/// Checks a current code for a change to the second factor itself (only a code, not a recovery code).
async fn current_code(
    store: &DynStore,
    actor: &Actor,
    account: &Account,
    code: &str,
    now: Timestamp,
    action: &str,
) -> Result<()> {
    let Some(state) = store.totp_state(&account.id).await? else {
        return Err(SecondFactorError::NotEnabled);
    };
    if state.enabled_at.is_none() {
        return Err(SecondFactorError::NotEnabled);
    }
    unlocked(&state, now)?;
    let step = match totp::verify(&state.secret, code, now, state.last_step) {
        Ok(step) => step,
        Err(e) => return Err(failed(store, actor, account, now, action, e).await),
    };
    if !store.accept_totp_step(&account.id, step).await? {
        return Err(failed(store, actor, account, now, action, TotpError::Replayed).await);
    }
    Ok(())
}

/// Turns 2FA off (needs a current code); the recovery codes go with it.
pub async fn disable(
    store: &DynStore,
    actor: &Actor,
    account: &Account,
    code: &str,
    now: Timestamp,
) -> Result<()> {
    current_code(store, actor, account, code, now, "2fa.disable.failure").await?;
    store.disable_totp(&account.id).await?;
    store
        .append_audit(&audit(actor, account, now, "2fa.disable", String::new()))
        .await?;
    Ok(())
}

/// Replaces the recovery codes with 10 new ones (needs a current code); returns them (shown once).
pub async fn regenerate_codes(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    actor: &Actor,
    account: &Account,
    code: &str,
    now: Timestamp,
) -> Result<Vec<RecoveryCode>> {
    current_code(store, actor, account, code, now, "2fa.recovery_codes.failure").await?;
    let (codes, hashes) = new_codes(hasher)?;
    store.replace_recovery_codes(&account.id, &hashes, now).await?;
    store
        .append_audit(&audit(
            actor,
            account,
            now,
            "2fa.recovery_codes.regenerate",
            String::new(),
        ))
        .await?;
    Ok(codes)
}

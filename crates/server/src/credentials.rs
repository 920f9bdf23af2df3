//! Creating and revoking credentials on behalf of an account, the one path the operator CLI and the
//! management API share: the two-factor policy for live credentials, and the audit entry for each
//! create and revoke (who, from where, never the secret).
//!
//! Policy (`accounts.require_2fa_for_live_credentials`, on by default): a live API key or an access
//! token is a production credential. Self-service channels (the management API, the console) refuse to
//! make one for an account without two-factor authentication; the operator on the host is not blocked
//! (it holds the data dir anyway), but the outcome says so, the CLI warns, and the audit entry records
//! the override.

use std::time::Duration;

use skygate_core::token::NewAccessToken;
use skygate_core::{
    AccessToken, Account, AccountId, ApiKey, ApiKeyRecord, KeyHasher, KeyId, Mode, NewApiKey, NewAuditEntry,
    Project, Scopes, Timestamp, TokenId, TokenRecord,
};
use skygate_store::{DynStore, RevokeOutcome, StoreError};

use crate::admin::AdminError;
use crate::config::AccountsConfig;

/// The message a refused self-service creation carries (the wording, for clients to match).
pub const TWO_FACTOR_FIRST: &str = "enable two-factor authentication first";

/// Who asks, and through which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `operator`, or the acting credential (`tok_…`) or account.
    pub who: String,
    pub channel: Channel,
    pub ip: String,
    pub user_agent: String,
}

impl Actor {
    /// The operator CLI on the host.
    pub fn operator() -> Actor {
        Actor {
            who: "operator".into(),
            channel: Channel::Operator,
            ip: String::new(),
            user_agent: String::new(),
        }
    }

    fn entry(
        &self,
        now: Timestamp,
        account: &AccountId,
        action: &str,
        target: &str,
        detail: String,
    ) -> NewAuditEntry {
        NewAuditEntry::new(now, self.who.clone(), action, target, detail)
            .for_account(account.as_str())
            .from_client(self.ip.clone(), &self.user_agent)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The `skygate` CLI on the host: never blocked by the policy.
    Operator,
    /// The management API or the console, acting for the account itself.
    SelfService,
}

/// Whether the policy let a creation through as it stands, or only because the operator overrode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutcome {
    Allowed,
    /// The account has no two-factor authentication; the operator made the credential anyway.
    OperatorOverride,
}

const OVERRIDE_NOTE: &str = "policy override: the account has no two-factor authentication";

/// Applies the policy to a live credential for `account`.
pub async fn live_credential_policy(
    store: &DynStore,
    policy: &AccountsConfig,
    account: &AccountId,
    channel: Channel,
) -> Result<PolicyOutcome, AdminError> {
    if !policy.require_2fa_for_live_credentials || store.two_factor_enabled(account).await? {
        return Ok(PolicyOutcome::Allowed);
    }
    match channel {
        Channel::Operator => Ok(PolicyOutcome::OperatorOverride),
        Channel::SelfService => Err(AdminError::Forbidden(TWO_FACTOR_FIRST.into())),
    }
}

fn expiry(now: Timestamp, expires_in: Option<Duration>) -> Result<Option<Timestamp>, AdminError> {
    if expires_in.is_some_and(|d| d.is_zero()) {
        return Err(AdminError::Invalid("expires_in must be longer than 0".into()));
    }
    Ok(expires_in.map(|d| now.saturating_add(d)))
}

fn with_override(detail: String, outcome: PolicyOutcome) -> String {
    match outcome {
        PolicyOutcome::Allowed => detail,
        PolicyOutcome::OperatorOverride => format!("{detail}; {OVERRIDE_NOTE}"),
    }
}

/// What creating a credential gives back: the record, the secret (its only copy), the policy outcome.
pub struct Created<R, S> {
    pub record: R,
    pub secret: S,
    pub policy: PolicyOutcome,
}

/// Makes an API key in `project` (already found within its account), audited as `keys.create`.
#[allow(clippy::too_many_arguments)]
pub async fn create_key(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    policy: &AccountsConfig,
    actor: &Actor,
    project: &Project,
    mode: Mode,
    name: Option<&str>,
    expires_in: Option<Duration>,
    now: Timestamp,
) -> Result<Created<ApiKeyRecord, ApiKey>, AdminError> {
    let name = match name {
        Some(n) => crate::admin::check_name("a key name", n)?,
        None => format!("{mode} key"),
    };
    let expires_at = expiry(now, expires_in)?;
    let outcome = match mode {
        Mode::Live => live_credential_policy(store, policy, &project.account_id, actor.channel).await?,
        Mode::Test => PolicyOutcome::Allowed,
    };
    let key = ApiKey::generate(mode).map_err(|_| AdminError::Random)?;
    let new = NewApiKey {
        id: KeyId::generate().map_err(|_| AdminError::Random)?,
        mode,
        name,
        hash: hasher.hash(key.expose().as_bytes()),
        prefix: key.prefix().to_owned(),
        last4: key.last4().to_owned(),
        created_at: now,
        expires_at,
    };
    let record = store.create_api_key(&project.id, &new).await?;
    let detail = format!("{mode} key in project {}", project.id);
    store
        .append_audit(&actor.entry(
            now,
            &project.account_id,
            "keys.create",
            record.id.as_str(),
            with_override(detail, outcome),
        ))
        .await?;
    Ok(Created {
        record,
        secret: key,
        policy: outcome,
    })
}

/// Revokes a key (already found within its account), audited as `keys.revoke` (a second revoke is
/// not audited again).
pub async fn revoke_key(
    store: &DynStore,
    actor: &Actor,
    key: &ApiKeyRecord,
    now: Timestamp,
) -> Result<RevokeOutcome, AdminError> {
    let outcome = store.revoke_api_key(&key.id, now).await?;
    if outcome == RevokeOutcome::Revoked {
        let detail = format!("{} key in project {}", key.mode, key.project);
        store
            .append_audit(&actor.entry(now, &key.account, "keys.revoke", key.id.as_str(), detail))
            .await?;
    }
    Ok(outcome)
}

/// Makes an access token for `account`, audited as `tokens.create` (with its scopes and expiry).
#[allow(clippy::too_many_arguments)]
pub async fn create_token(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    policy: &AccountsConfig,
    actor: &Actor,
    account: &Account,
    name: Option<&str>,
    scopes: Scopes,
    expires_in: Option<Duration>,
    now: Timestamp,
) -> Result<Created<TokenRecord, AccessToken>, AdminError> {
    if scopes.is_empty() {
        return Err(AdminError::Invalid("give at least one scope".into()));
    }
    let name = match name {
        Some(n) => crate::admin::check_name("a token name", n)?,
        None => "access token".to_owned(),
    };
    let expires_at = expiry(now, expires_in)?;
    let outcome = live_credential_policy(store, policy, &account.id, actor.channel).await?;
    let token = AccessToken::generate().map_err(|_| AdminError::Random)?;
    let new = NewAccessToken {
        id: TokenId::generate().map_err(|_| AdminError::Random)?,
        name,
        scopes,
        hash: hasher.hash(token.expose().as_bytes()),
        last4: token.last4().to_owned(),
        created_at: now,
        expires_at,
    };
    let record = store
        .create_access_token(&account.id, &new)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => AdminError::NotFound(format!("no account {}", account.id)),
            other => other.into(),
        })?;
    let until = expires_at.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
    let detail = format!("scopes {}; expires {until}", scopes.to_list());
    store
        .append_audit(&actor.entry(
            now,
            &account.id,
            "tokens.create",
            record.id.as_str(),
            with_override(detail, outcome),
        ))
        .await?;
    Ok(Created {
        record,
        secret: token,
        policy: outcome,
    })
}

/// Revokes a token of `account`, audited as `tokens.revoke`. Another account's token is `NotFound`.
pub async fn revoke_token(
    store: &DynStore,
    actor: &Actor,
    account: &AccountId,
    token: &TokenId,
    now: Timestamp,
) -> Result<RevokeOutcome, AdminError> {
    let outcome = store.revoke_access_token(account, token, now).await?;
    match outcome {
        RevokeOutcome::NotFound => return Err(AdminError::NotFound(format!("no token {token}"))),
        RevokeOutcome::Revoked => {
            store
                .append_audit(&actor.entry(now, account, "tokens.revoke", token.as_str(), String::new()))
                .await?;
        }
        RevokeOutcome::AlreadyRevoked => {}
    }
    Ok(outcome)
}

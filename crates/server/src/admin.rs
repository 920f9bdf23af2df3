//! Operator actions on accounts, projects and API keys: what the `skygate` CLI runs on the host,
//! directly against the same store as a running server. Each takes the current time from the caller.

use std::time::Duration;

use skygate_core::records::normalize_email;
use skygate_core::{
    AccessToken, Account, AccountId, ApiKey, ApiKeyRecord, KeyHasher, KeyId, Mode, NewAccount, NewProject,
    Project, ProjectId, Scopes, Tier, Timestamp, TokenId, TokenRecord,
};
use skygate_store::{DynStore, RevokeOutcome, StoreError};

use crate::config::AccountsConfig;
use crate::credentials::{self, Actor, Created};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Refused by policy (the message says what to do first).
    #[error("{0}")]
    Forbidden(String),
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    #[error("the system random source failed")]
    Random,
}

type Result<T> = std::result::Result<T, AdminError>;

pub(crate) fn check_name(what: &str, name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "{what} must be 1-100 characters with no control characters"
        )));
    }
    Ok(n.to_owned())
}

pub async fn create_account(store: &DynStore, email: &str, tier: Tier, now: Timestamp) -> Result<Account> {
    let email = normalize_email(email).map_err(AdminError::Invalid)?;
    let id = AccountId::generate().map_err(|_| AdminError::Random)?;
    store
        .create_account(&NewAccount {
            id,
            email: email.clone(),
            tier,
            created_at: now,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                AdminError::Conflict(format!("an account with email {email} already exists"))
            }
            other => other.into(),
        })
}

/// Finds an account by email or by `acct_…` id.
pub async fn find_account(store: &DynStore, who: &str) -> Result<Account> {
    let found = if let Ok(id) = who.parse::<AccountId>() {
        store.account(&id).await?
    } else {
        let email = normalize_email(who).map_err(AdminError::Invalid)?;
        store.account_by_email(&email).await?
    };
    found.ok_or_else(|| AdminError::NotFound(format!("no account {who}")))
}

/// Changes an account's tier (audited as `account.tier`).
pub async fn set_tier(store: &DynStore, who: &str, tier: Tier, now: Timestamp) -> Result<Account> {
    let acct = find_account(store, who).await?;
    store.set_account_tier(&acct.id, tier).await?;
    let detail = format!("{} -> {}", acct.tier.as_str(), tier.as_str());
    store
        .append_audit(
            &skygate_core::NewAuditEntry::new(now, "operator", "account.tier", acct.id.as_str(), detail)
                .for_account(acct.id.as_str()),
        )
        .await?;
    Ok(Account { tier, ..acct })
}

/// Erases an account (see [`skygate_store::Store::erase_account`]), recording who did it. The audit entry
/// names only the account id: the log outlives the account and holds no personal data. The account's
/// output objects are deleted afterwards (their keys are already unusable by then: the rows that named
/// them are gone and their retention windows' keys are destroyed once spent).
pub async fn erase_account(
    store: &DynStore,
    objects: &skygate_store::objects::Objects,
    acct: &Account,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let entry = skygate_core::NewAuditEntry::new(now, actor, "account.erase", acct.id.to_string(), "")
        .for_account(acct.id.to_string());
    if !store.erase_account(&acct.id, &entry).await? {
        return Err(AdminError::NotFound(format!("no account {}", acct.id)));
    }
    objects
        .delete_prefix(&format!("outputs/{}", acct.id.as_str()))
        .await?;
    Ok(())
}

pub async fn create_project(store: &DynStore, account: &str, name: &str, now: Timestamp) -> Result<Project> {
    let acct = find_account(store, account).await?;
    let name = check_name("a project name", name)?;
    let id = ProjectId::generate().map_err(|_| AdminError::Random)?;
    Ok(store
        .create_project(
            &acct.id,
            &NewProject {
                id,
                name,
                created_at: now,
            },
        )
        .await?)
}

fn parse_project(project: &str) -> Result<ProjectId> {
    project
        .parse()
        .map_err(|e: skygate_core::ids::IdParseError| AdminError::Invalid(e.to_string()))
}

/// Creates a key as the operator (audited; a live key for an account without two-factor authentication
/// is made anyway, and the outcome says so). The returned [`ApiKey`] is the only copy of the secret.
#[allow(clippy::too_many_arguments)]
pub async fn create_key(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    policy: &AccountsConfig,
    project: &str,
    mode: Mode,
    name: Option<&str>,
    expires_in: Option<Duration>,
    now: Timestamp,
) -> Result<Created<ApiKeyRecord, ApiKey>> {
    let project = parse_project(project)?;
    let Some(project) = store.find_project(&project).await? else {
        return Err(AdminError::NotFound(format!("no project {project}")));
    };
    credentials::create_key(
        store,
        hasher,
        policy,
        &Actor::operator(),
        &project,
        mode,
        name,
        expires_in,
        now,
    )
    .await
}

pub async fn list_keys(store: &DynStore, project: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
    match project {
        Some(p) => {
            let p = parse_project(p)?;
            if store.find_project(&p).await?.is_none() {
                return Err(AdminError::NotFound(format!("no project {p}")));
            }
            Ok(store.list_api_keys(&p).await?)
        }
        None => Ok(store.list_all_api_keys().await?),
    }
}

/// Revokes a key as the operator (audited).
pub async fn revoke_key(store: &DynStore, key: &str, now: Timestamp) -> Result<RevokeOutcome> {
    let id: KeyId = key
        .parse()
        .map_err(|e: skygate_core::ids::IdParseError| AdminError::Invalid(e.to_string()))?;
    let Some(record) = store.find_api_key(&id).await? else {
        return Err(AdminError::NotFound(format!("no key {id}")));
    };
    credentials::revoke_key(store, &Actor::operator(), &record, now).await
}

/// Creates an access token as the operator (audited, like [`create_key`]).
#[allow(clippy::too_many_arguments)]
pub async fn create_token(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    policy: &AccountsConfig,
    account: &str,
    name: Option<&str>,
    scopes: &str,
    expires_in: Option<Duration>,
    now: Timestamp,
) -> Result<Created<TokenRecord, AccessToken>> {
    let acct = find_account(store, account).await?;
    let scopes = Scopes::parse_list(scopes).map_err(AdminError::Invalid)?;
    credentials::create_token(
        store,
        hasher,
        policy,
        &Actor::operator(),
        &acct,
        name,
        scopes,
        expires_in,
        now,
    )
    .await
}

pub async fn list_tokens(store: &DynStore, account: &str) -> Result<Vec<TokenRecord>> {
    let acct = find_account(store, account).await?;
    Ok(store.list_access_tokens(&acct.id).await?)
}

/// Revokes an access token of `account` as the operator (audited).
pub async fn revoke_token(
    store: &DynStore,
    account: &str,
    token: &str,
    now: Timestamp,
) -> Result<RevokeOutcome> {
    let acct = find_account(store, account).await?;
    let id: TokenId = token
        .parse()
        .map_err(|e: skygate_core::ids::IdParseError| AdminError::Invalid(e.to_string()))?;
    credentials::revoke_token(store, &Actor::operator(), &acct.id, &id, now).await
}

/// A project's webhook signing secrets, newest first (the first one is made on first use). With
/// `rotate`, a new secret is made first and the current one keeps signing for `overlap`; the rotation is
/// audited.
pub async fn webhook_secret(
    store: &DynStore,
    project: &str,
    rotate: bool,
    overlap: Duration,
    now: Timestamp,
) -> Result<Vec<skygate_core::webhooks::WebhookSecretRecord>> {
    let project = parse_project(project)?;
    let Some(p) = store.find_project(&project).await? else {
        return Err(AdminError::NotFound(format!("no project {project}")));
    };
    let fresh = skygate_webhooks::WebhookSecret::generate().map_err(|_| AdminError::Random)?;
    let fresh = skygate_core::SecretString::new(fresh.expose());
    if !rotate {
        return Ok(store.ensure_webhook_secret(&project, &fresh, now).await?);
    }
    let secrets = store
        .rotate_webhook_secret(&project, &fresh, now, overlap)
        .await?;
    let version = secrets.first().map_or(0, |s| s.version);
    store
        .append_audit(
            &skygate_core::NewAuditEntry::new(
                now,
                "operator",
                "webhooks.secret.rotate",
                project.to_string(),
                format!(
                    "account {}: new signing secret v{version}; older secrets sign until {}",
                    p.account_id,
                    now.saturating_add(overlap)
                ),
            )
            .for_account(p.account_id.to_string()),
        )
        .await?;
    Ok(secrets)
}

/// Schedules a delivery for another attempt now (the operator's replay).
pub async fn retry_delivery(
    store: &DynStore,
    id: &str,
    now: Timestamp,
) -> Result<skygate_core::webhooks::Delivery> {
    let id: skygate_core::webhooks::DeliveryId = id
        .parse()
        .map_err(|e: skygate_core::webhooks::DeliveryIdError| AdminError::Invalid(e.to_string()))?;
    store
        .retry_delivery(&id, now)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no delivery {id}")))
}

//! The management API, authenticated by access tokens and checked per route by scope
//! ([`TokenWithScope`]): `GET /v1/account`, `GET/POST /v1/projects`, `GET/POST /v1/projects/{id}/keys`,
//! `DELETE /v1/keys/{id}`, `GET /v1/audit`. Everything is scoped to the token's account: another
//! account's project or key is `404 NOT_FOUND`, like an unknown id. Creating a live key is refused with
//! `403 FORBIDDEN` ("enable two-factor authentication first") while the account has no second factor.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use skygate_core::{ApiKeyRecord, KeyId, Mode, NewProject, ProjectId, Timestamp};
use skygate_proto::manage::{
    AccountInfo, AuditEvent, AuditList, CreateKey, CreateProject, CreatedKey, KeyInfo, KeyList, ProjectInfo,
    ProjectList,
};
use skygate_proto::{ErrorId, Success};

use crate::admin::AdminError;
use crate::auth::token::{
    AccountRead, AuditRead, KeysRead, KeysWrite, ProjectsRead, ProjectsWrite, TokenWithScope,
};
use crate::credentials;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

fn not_found(what: &str) -> ApiError {
    ApiError::new(ErrorId::NotFound, "Not found", format!("No such {what}."))
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::Invalid(m) => ApiError::new(ErrorId::ValidationError, "Invalid request", m),
        AdminError::NotFound(_) => not_found("resource"),
        AdminError::Forbidden(m) => ApiError::forbidden(m),
        AdminError::Conflict(m) => ApiError::new(ErrorId::ValidationError, "Conflict", m),
        AdminError::Store(e) => ApiError::internal(&e),
        AdminError::Random => ApiError::internal(&AdminError::Random),
    }
}

pub(crate) fn ts(t: Timestamp) -> String {
    t.to_rfc3339()
}

pub(crate) fn key_info(k: &ApiKeyRecord) -> KeyInfo {
    KeyInfo {
        id: k.id.to_string(),
        project: k.project.to_string(),
        mode: k.mode.as_str().to_owned(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        last4: k.last4.clone(),
        created_at: ts(k.created_at),
        last_used_at: k.last_used_at.map(ts),
        expires_at: k.expires_at.map(ts),
        revoked_at: k.revoked_at.map(ts),
    }
}

pub async fn account(
    State(state): State<AppState>,
    t: TokenWithScope<AccountRead>,
) -> Result<Json<AccountInfo>, ApiError> {
    let store = state.store();
    let acct = store
        .account(&t.token.account)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let two_factor = store.two_factor_enabled(&acct.id).await?;
    Ok(Json(account_info(acct, two_factor)))
}

pub async fn list_projects(
    State(state): State<AppState>,
    t: TokenWithScope<ProjectsRead>,
) -> Result<Json<ProjectList>, ApiError> {
    let list = state.store().list_projects(&t.token.account).await?;
    Ok(Json(ProjectList {
        data: list
            .into_iter()
            .map(|p| ProjectInfo {
                id: p.id.to_string(),
                name: p.name,
                created_at: ts(p.created_at),
            })
            .collect(),
    }))
}

pub async fn create_project(
    State(state): State<AppState>,
    t: TokenWithScope<ProjectsWrite>,
    ApiJson(body): ApiJson<CreateProject>,
) -> Result<impl IntoResponse, ApiError> {
    let name = crate::admin::check_name("a project name", &body.name).map_err(admin_error)?;
    let id = ProjectId::generate().map_err(|_| admin_error(AdminError::Random))?;
    let p = state
        .store()
        .create_project(
            &t.token.account,
            &NewProject {
                id,
                name,
                created_at: t.now,
            },
        )
        .await?;
    let entry =
        skygate_core::NewAuditEntry::new(t.now, t.actor.who.clone(), "projects.create", p.id.as_str(), "")
            .for_account(t.token.account.as_str())
            .from_client(t.actor.ip.clone(), &t.actor.user_agent);
    state.store().append_audit(&entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectInfo {
            id: p.id.to_string(),
            name: p.name,
            created_at: ts(p.created_at),
        }),
    ))
}

async fn own_project(
    state: &AppState,
    t_account: &skygate_core::AccountId,
    id: &str,
) -> Result<skygate_core::Project, ApiError> {
    let Ok(id) = id.parse::<ProjectId>() else {
        return Err(not_found("project"));
    };
    state
        .store()
        .project(t_account, &id)
        .await?
        .ok_or_else(|| not_found("project"))
}

pub async fn list_keys(
    State(state): State<AppState>,
    t: TokenWithScope<KeysRead>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyList>, ApiError> {
    let p = own_project(&state, &t.token.account, &id).await?;
    let keys = state.store().list_api_keys(&p.id).await?;
    Ok(Json(KeyList {
        data: keys.iter().map(key_info).collect(),
    }))
}

pub async fn create_key(
    State(state): State<AppState>,
    t: TokenWithScope<KeysWrite>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let p = own_project(&state, &t.token.account, &id).await?;
    let mode = match body.mode.as_deref() {
        None | Some("live") => Mode::Live,
        Some("test") => Mode::Test,
        Some(other) => {
            return Err(admin_error(AdminError::Invalid(format!(
                "mode must be \"live\" or \"test\", not {other:?}"
            ))))
        }
    };
    let expires_in = body
        .expires_in
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| {
            admin_error(AdminError::Invalid(format!(
                "expires_in: {e} (examples: 30d, 12h)"
            )))
        })?;
    let created = credentials::create_key(
        state.store(),
        state.auth().hasher(),
        &state.config().accounts,
        &t.actor,
        &p,
        mode,
        body.name.as_deref(),
        expires_in,
        t.now,
    )
    .await
    .map_err(admin_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: created.secret.expose().to_owned(),
            info: key_info(&created.record),
        }),
    ))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    t: TokenWithScope<KeysWrite>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Success>, ApiError> {
    let Ok(id) = id.parse::<KeyId>() else {
        return Err(not_found("key"));
    };
    let key = state
        .store()
        .account_api_key(&t.token.account, &id)
        .await?
        .ok_or_else(|| not_found("key"))?;
    credentials::revoke_key(state.store(), &t.actor, &key, t.now)
        .await
        .map_err(admin_error)?;
    announce_revocation(&state, &id).await;
    Ok(Json(Success { success: true }))
}

/// After a key was revoked: this node's credential cache is dropped, and other nodes are told through
/// Redis (else they may accept the key for up to the cache TTL). Shared by the console.
pub(crate) async fn announce_revocation(state: &AppState, id: &KeyId) {
    state.auth().cache().clear();
    if let Some(url) = &state.config().limits.redis_url {
        if let Err(e) = crate::revocation::publish(url, id.as_str()).await {
            tracing::warn!(error = %format!("{e:#}"), key = %id, "could not announce a revocation through Redis; other nodes drop it within auth.key_cache_ttl");
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit(
    State(state): State<AppState>,
    t: TokenWithScope<AuditRead>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_parameter("limit must be 1..200"));
    }
    let before = q.before.unwrap_or(i64::MAX);
    let entries = state
        .store()
        .account_audit(&t.token.account, before, limit)
        .await?;
    let next_before = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditList {
        data: entries.into_iter().map(audit_event).collect(),
        next_before,
    }))
}

pub(crate) fn audit_event(e: skygate_core::AuditEntry) -> AuditEvent {
    AuditEvent {
        seq: e.seq,
        at: ts(e.entry.at),
        actor: e.entry.actor,
        action: e.entry.action,
        target: e.entry.target,
        detail: e.entry.detail,
        ip: e.entry.ip,
        user_agent: e.entry.user_agent,
    }
}

pub(crate) fn account_info(acct: skygate_core::Account, two_factor: bool) -> AccountInfo {
    AccountInfo {
        id: acct.id.to_string(),
        email: acct.email,
        tier: acct.tier.as_str().to_owned(),
        created_at: ts(acct.created_at),
        two_factor,
    }
}

/// `GET /v1/account/export`: everything held about the token's account (scope `account.read`), at most
/// `limits.exports_per_hour` times an hour, audited.
pub async fn export(
    State(state): State<AppState>,
    t: TokenWithScope<AccountRead>,
) -> Result<Json<skygate_proto::manage::AccountExport>, ApiError> {
    let store = state.store();
    let acct = store
        .account(&t.token.account)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    state.limits().check_export(&acct.id, acct.tier).await?;
    let doc = crate::export::account_export(store, acct, t.now).await?;
    let entry = skygate_core::NewAuditEntry::new(
        t.now,
        t.actor.who.clone(),
        "account.export",
        doc.account.id.as_str(),
        "",
    )
    .for_account(doc.account.id.as_str())
    .from_client(t.actor.ip.clone(), &t.actor.user_agent);
    store.append_audit(&entry).await?;
    Ok(Json(doc))
}

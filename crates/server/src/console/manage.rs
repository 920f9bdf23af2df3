//! API keys (per project: list, create shown once, revoke), access tokens (create shown once, list,
//! revoke), sessions (list, revoke) and the account's audit events. Creation and revocation go through
//! [`crate::credentials`], the path the CLI and the management API share: the two-factor policy for
//! live credentials (refused here with a hint) and the audit entries.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use skygate_core::{KeyId, Mode, ProjectId, Scope, Scopes, SessionId, TokenId};

use super::session::ConsoleUser;
use super::{form, html, pages, ConsoleError};
use crate::credentials;
use crate::state::AppState;

/// Audit events shown on the audit page.
const AUDIT_PAGE: i64 = 100;

async fn keys_page(state: &AppState, user: &ConsoleUser, extra: Markup) -> Result<Response, ConsoleError> {
    let store = state.store();
    let mut projects = Vec::new();
    for p in store.list_projects(&user.account.id).await? {
        let keys = store.list_api_keys(&p.id).await?;
        projects.push((p, keys));
    }
    Ok(html(
        StatusCode::OK,
        pages::keys(&user.csrf, &projects, user.now, extra),
    ))
}

pub async fn keys(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ConsoleError> {
    keys_page(&state, &user, html! {}).await
}

fn no_such(what: &str) -> ConsoleError {
    ConsoleError::NotFound(format!("No such {what}."))
}

pub async fn create_key(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let project: ProjectId = f.get("project").parse().map_err(|_| no_such("project"))?;
    let mode: Mode = f
        .get("mode")
        .parse()
        .map_err(|_| ConsoleError::BadRequest("Choose live or test.".into()))?;
    let store = state.store();
    let project = store
        .project(&user.account.id, &project)
        .await?
        .ok_or_else(|| no_such("project"))?;
    let name = Some(f.get("name").trim()).filter(|n| !n.is_empty());
    let created = credentials::create_key(
        store,
        state.auth().hasher(),
        &state.config().accounts,
        &user.actor,
        &project,
        mode,
        name,
        None,
        user.now,
    )
    .await?;
    keys_page(
        &state,
        &user,
        pages::shown_once("API key", created.secret.expose()),
    )
    .await
}

pub async fn revoke_key(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let id: KeyId = f.get("key").parse().map_err(|_| no_such("key"))?;
    let key = state
        .store()
        .account_api_key(&user.account.id, &id)
        .await?
        .ok_or_else(|| no_such("key"))?;
    credentials::revoke_key(state.store(), &user.actor, &key, user.now).await?;
    crate::api::announce_revocation(&state, &id).await;
    keys_page(&state, &user, html! { p.notice { "The key is revoked." } }).await
}

async fn tokens_page(state: &AppState, user: &ConsoleUser, extra: Markup) -> Result<Response, ConsoleError> {
    let list = state.store().list_access_tokens(&user.account.id).await?;
    Ok(html(
        StatusCode::OK,
        pages::tokens(&user.csrf, &list, user.now, extra),
    ))
}

pub async fn tokens(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ConsoleError> {
    tokens_page(&state, &user, html! {}).await
}

pub async fn create_token(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let mut list = Vec::new();
    for s in f.all("scope") {
        if !Scope::ALL.iter().any(|k| k.as_str() == s) {
            return Err(ConsoleError::BadRequest(format!("Unknown scope {s:?}.")));
        }
        list.push(s);
    }
    let scopes = Scopes::parse_list(&list.join(",")).map_err(ConsoleError::BadRequest)?;
    if scopes.is_empty() {
        return Err(ConsoleError::BadRequest("Choose at least one scope.".into()));
    }
    let expires = match f.get("expires_days").trim() {
        "" => None,
        d => match d.parse::<u64>() {
            Ok(n @ 1..=3650) => Some(Duration::from_secs(n * 86_400)),
            _ => {
                return Err(ConsoleError::BadRequest(
                    "Expiry is a number of days from 1 to 3650.".into(),
                ))
            }
        },
    };
    let name = Some(f.get("name").trim()).filter(|n| !n.is_empty());
    let created = credentials::create_token(
        state.store(),
        state.auth().hasher(),
        &state.config().accounts,
        &user.actor,
        &user.account,
        name,
        scopes,
        expires,
        user.now,
    )
    .await?;
    tokens_page(
        &state,
        &user,
        pages::shown_once("access token", created.secret.expose()),
    )
    .await
}

pub async fn revoke_token(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let id: TokenId = f.get("token").parse().map_err(|_| no_such("token"))?;
    credentials::revoke_token(state.store(), &user.actor, &user.account.id, &id, user.now).await?;
    tokens_page(&state, &user, html! { p.notice { "The token is revoked." } }).await
}

pub async fn sessions(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ConsoleError> {
    let list = state.store().list_sessions(&user.account.id, user.now).await?;
    Ok(html(
        StatusCode::OK,
        pages::sessions(&user.csrf, &list, &user.session.id),
    ))
}

pub async fn revoke_session(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let id: SessionId = f.get("session").parse().map_err(|_| no_such("session"))?;
    let store = state.store();
    if !store.delete_session(&user.account.id, &id).await? {
        return Err(no_such("session"));
    }
    let entry = skygate_core::NewAuditEntry::new(
        user.now,
        user.actor.who.clone(),
        "session.revoke",
        id.as_str(),
        "",
    )
    .for_account(user.account.id.as_str())
    .from_client(user.actor.ip.clone(), &user.actor.user_agent);
    store.append_audit(&entry).await?;
    let list = store.list_sessions(&user.account.id, user.now).await?;
    Ok(html(
        StatusCode::OK,
        pages::sessions(&user.csrf, &list, &user.session.id),
    ))
}

pub async fn audit(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ConsoleError> {
    let events = state
        .store()
        .account_audit(&user.account.id, i64::MAX, AUDIT_PAGE)
        .await?;
    Ok(html(StatusCode::OK, pages::audit(&user.csrf, &events)))
}

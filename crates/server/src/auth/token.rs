//! Where an access token gets checked: [`TokenWithScope`], the typed extractor of the management API,
//! and [`inference_caller`], a token with the `inference` scope on the predictions API.
//!
//! `Authorization: Bearer sk_pat_…` (or `x-api-key`). The presented bytes are hashed with the pepper
//! whatever their shape, looked up by hash with no cache (a revocation holds from the next request),
//! compared in constant time and checked for expiry; every failure is the one `401 UNAUTHORIZED` body,
//! and counts against the client address's failed-authentication budget like an API key. A valid token
//! without the route's scope is `403 FORBIDDEN` naming the scope.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use skygate_core::{AccessToken, ProjectId, Scope, Timestamp, TokenAuthRecord};
use skygate_proto::ErrorId;

use super::{ApiKeyAuth, TokenCaller};
use crate::credentials::{Actor, Channel};
use crate::error::ApiError;
use crate::state::AppState;

/// A route's required scope, as a type.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

macro_rules! scope_markers {
    ($($name:ident => $scope:ident),* $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($scope), "` scope.")]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Scope = Scope::$scope;
            }
        )*
    };
}

scope_markers!(
    AccountRead => AccountRead,
    ProjectsRead => ProjectsRead,
    ProjectsWrite => ProjectsWrite,
    KeysRead => KeysRead,
    KeysWrite => KeysWrite,
    AuditRead => AuditRead,
);

/// An authenticated access token holding scope `S`, with the request's client for audit entries.
pub struct TokenWithScope<S> {
    pub token: TokenAuthRecord,
    pub actor: Actor,
    /// The time read once at the edge of this request.
    pub now: Timestamp,
    _scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for TokenWithScope<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now = Timestamp::now();
        let (token, client) = with_scope(state, parts, now, S::SCOPE).await?;
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let actor = Actor {
            who: token.token_id.to_string(),
            channel: Channel::SelfService,
            ip: client.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent: user_agent.to_owned(),
        };
        Ok(TokenWithScope {
            token,
            actor,
            now,
            _scope: PhantomData,
        })
    }
}

/// The header an access token names the project of a predictions API call in (optional when its
/// account has exactly one project).
pub const PROJECT_HEADER: &str = "x-skytells-project";

/// An access token calling the predictions API: it needs the `inference` scope, and acts for the
/// project named in [`PROJECT_HEADER`] (one of its account's), or for the account's only project.
pub(crate) async fn inference_caller(
    state: &AppState,
    parts: &Parts,
    now: Timestamp,
) -> Result<ApiKeyAuth, ApiError> {
    let (token, _) = with_scope(state, parts, now, Scope::Inference).await?;
    let projects = state.store().list_projects(&token.account).await?;
    let project = match parts.headers.get(PROJECT_HEADER) {
        Some(named) => {
            let wanted = named
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<ProjectId>().ok());
            wanted
                .filter(|w| projects.iter().any(|p| &p.id == w))
                .ok_or_else(|| {
                    ApiError::forbidden(format!(
                        "the {PROJECT_HEADER} header names no project of this access token's account"
                    ))
                })?
        }
        None => match projects.as_slice() {
            [only] => only.id.clone(),
            [] => {
                return Err(ApiError::forbidden(
                    "this access token's account has no project yet: create one first",
                ))
            }
            several => {
                return Err(ApiError::new(
                    ErrorId::ValidationError,
                    "Project not named",
                    format!(
                        "this access token's account has {} projects: name one in the {PROJECT_HEADER} \
                         header",
                        several.len()
                    ),
                ))
            }
        },
    };
    Ok(ApiKeyAuth::of_token(TokenCaller {
        token: token.token_id,
        project,
        account: token.account,
        tier: token.tier,
    }))
}

/// Authenticates the presented access token under the client address's failed-authentication budget,
/// checks it holds `scope` (403 naming it) and records its use. Returns it with the client address.
async fn with_scope(
    state: &AppState,
    parts: &Parts,
    now: Timestamp,
    scope: Scope,
) -> Result<(TokenAuthRecord, Option<std::net::IpAddr>), ApiError> {
    let presented = super::presented_credential(&parts.headers).unwrap_or_default();
    let check = async {
        authenticate(state, presented, now)
            .await?
            .ok_or_else(ApiError::unauthorized)
    };
    let (token, client) = super::within_failure_budget(state, parts, check).await?;
    if !token.scopes.contains(scope) {
        return Err(ApiError::forbidden(format!(
            "this access token lacks the scope {scope}"
        )));
    }
    if let Err(e) = state.store().touch_access_token(&token.token_id, now).await {
        tracing::warn!(error = %e, token = %token.token_id, "cannot record an access token's use");
    }
    Ok((token, client))
}

/// The token the bytes name, if it is well formed, known, unrevoked and unexpired.
async fn authenticate(
    state: &AppState,
    presented: &[u8],
    now: Timestamp,
) -> Result<Option<TokenAuthRecord>, ApiError> {
    let auth = state.auth();
    // Hash first, whatever the input, so the work does not depend on which check fails.
    let hash = auth.hasher().hash(presented);
    let well_formed = std::str::from_utf8(presented)
        .ok()
        .is_some_and(|s| AccessToken::parse(s).is_ok());
    if !well_formed {
        return Ok(None);
    }
    let found = auth.store().access_token_by_hash(&hash).await?;
    Ok(found.filter(|r| skygate_core::apikey::hashes_equal(&r.hash, &hash) & r.is_active(now)))
}

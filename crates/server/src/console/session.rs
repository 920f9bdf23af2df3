//! Console sessions: the cookies, the [`ConsoleUser`] extractor (a full session, touched on every
//! request), the halfway session of a login waiting for its second factor, the pre-session cookie the
//! login and setup forms' CSRF token is bound to, and starting and rotating sessions.
//!
//! The cookie holds a [`SessionSecret`] (256 random bits); the store keeps `hasher(secret)`, the CSRF
//! token is `hasher("csrf\0" ‖ secret)` in hex: bound to the session, unguessable without the cookie,
//! and never stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use skygate_core::session::{NewSession, SessionRecord, SessionSecret, SessionStage};
use skygate_core::{Account, KeyHasher, NewAuditEntry, SessionId, Timestamp};

use super::ConsoleError;
use crate::credentials::{Actor, Channel};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "__Host-skygate-session";
pub const PRE_COOKIE: &str = "__Host-skygate-pre";
pub const CLEAR_SESSION_COOKIE: &str =
    "__Host-skygate-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0";

/// `Set-Cookie` for a secret: host-only, HTTPS-only, invisible to scripts, never sent cross-site.
pub fn set_cookie(name: &str, secret: &SessionSecret) -> Result<HeaderValue, ConsoleError> {
    HeaderValue::from_str(&format!(
        "{name}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
        secret.expose()
    ))
    .map_err(|e| ConsoleError::internal(&e))
}

/// The well-formed value of cookie `name`, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<SessionSecret> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| SessionSecret::parse(v))
}

/// The CSRF token bound to `secret`.
pub fn csrf_token(hasher: &dyn KeyHasher, secret: &SessionSecret) -> String {
    let mut input = zeroize::Zeroizing::new(Vec::with_capacity(69));
    input.extend_from_slice(b"csrf\0");
    input.extend_from_slice(secret.expose().as_bytes());
    hasher.hash(&input).iter().map(|b| format!("{b:02x}")).collect()
}

/// An audit entry by `actor` (with the client's address and user agent), tied to `account` if known.
pub fn audit_entry(
    now: Timestamp,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    account: Option<&str>,
) -> NewAuditEntry {
    let e = NewAuditEntry::new(now, actor.who.clone(), action, target, detail)
        .from_client(actor.ip.clone(), &actor.user_agent);
    match account {
        Some(a) => e.for_account(a),
        None => e,
    }
}

/// Who is asking from where, for audit entries.
pub fn actor(who: &str, state: &AppState, parts_ext: &axum::http::Extensions, headers: &HeaderMap) -> Actor {
    let ip = crate::screen::client_of_parts(state, parts_ext, headers)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
        .unwrap_or_default();
    Actor {
        who: who.to_owned(),
        channel: Channel::SelfService,
        ip,
        user_agent,
    }
}

/// A session found by its cookie, still live at `now`. An expired one is deleted, and its end is
/// audited (`session.expired`, once: the row is gone afterwards).
async fn live_session(
    state: &AppState,
    headers: &HeaderMap,
    ext: &axum::http::Extensions,
    now: Timestamp,
) -> Result<Option<(SessionSecret, SessionRecord)>, ConsoleError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let store = state.store();
    let hash = state.auth().hasher().hash(secret.expose().as_bytes());
    let Some(rec) = store.session_by_hash(&hash).await? else {
        return Ok(None);
    };
    let accounts = &state.config().accounts;
    if !rec.live_at(now, accounts.session_idle_timeout) {
        if store.delete_session(&rec.account, &rec.id).await? {
            let why = if now >= rec.expires_at {
                "absolute lifetime reached"
            } else {
                "idle timeout"
            };
            let a = actor(rec.account.as_str(), state, ext, headers);
            let entry = NewAuditEntry::new(now, a.who, "session.expired", rec.id.as_str(), why)
                .for_account(rec.account.as_str())
                .from_client(a.ip, &a.user_agent);
            store.append_audit(&entry).await?;
        }
        return Ok(None);
    }
    Ok(Some((secret, rec)))
}

/// A logged-in console user (a full session), its account and the request's audit actor.
pub struct ConsoleUser {
    pub account: Account,
    pub session: SessionRecord,
    pub secret: SessionSecret,
    pub actor: Actor,
    pub now: Timestamp,
    /// This session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl FromRequestParts<AppState> for ConsoleUser {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now = Timestamp::now();
        let ended = || ConsoleError::SessionEnded {
            method: parts.method.clone(),
        };
        let Some((secret, session)) = live_session(state, &parts.headers, &parts.extensions, now).await?
        else {
            return Err(ended());
        };
        if session.stage != SessionStage::Full {
            return Err(ConsoleError::SecondFactorDue {
                method: parts.method.clone(),
            });
        }
        let Some(account) = state.store().account(&session.account).await? else {
            return Err(ended());
        };
        state.store().touch_session(&session.id, now).await?;
        let actor = actor(account.id.as_str(), state, &parts.extensions, &parts.headers);
        let csrf = csrf_token(state.auth().hasher(), &secret);
        Ok(ConsoleUser {
            account,
            session,
            secret,
            actor,
            now,
            csrf,
        })
    }
}

/// A login halfway: the password was right, the second factor is due.
pub struct PendingLogin {
    pub account: Account,
    pub session: SessionRecord,
    pub csrf: String,
}

impl PendingLogin {
    pub async fn find(
        state: &AppState,
        headers: &HeaderMap,
        ext: &axum::http::Extensions,
        now: Timestamp,
    ) -> Result<Option<Self>, ConsoleError> {
        let Some((secret, session)) = live_session(state, headers, ext, now).await? else {
            return Ok(None);
        };
        if session.stage != SessionStage::SecondFactor {
            return Ok(None);
        }
        let Some(account) = state.store().account(&session.account).await? else {
            return Ok(None);
        };
        let csrf = csrf_token(state.auth().hasher(), &secret);
        Ok(Some(PendingLogin {
            account,
            session,
            csrf,
        }))
    }
}

/// A fresh session for `account` at `stage`, replacing `old` if given (id rotation). Returns the
/// `Set-Cookie` value for its secret and its CSRF token.
pub async fn start(
    state: &AppState,
    account: &Account,
    stage: SessionStage,
    actor: &Actor,
    old: Option<&SessionId>,
    now: Timestamp,
) -> Result<(HeaderValue, String), ConsoleError> {
    let rnd = |_| ConsoleError::internal(&crate::admin::AdminError::Random);
    let secret = SessionSecret::generate().map_err(rnd)?;
    let new = NewSession {
        id: SessionId::generate().map_err(rnd)?,
        account: account.id.clone(),
        hash: state.auth().hasher().hash(secret.expose().as_bytes()),
        stage,
        created_at: now,
        expires_at: now.saturating_add(state.config().accounts.session_lifetime),
        ip: actor.ip.clone(),
        user_agent: actor.user_agent.clone(),
    };
    let store = state.store();
    match old {
        Some(old) => {
            if !store.replace_session(old, &new).await? {
                return Err(ConsoleError::SessionEnded {
                    method: axum::http::Method::POST,
                });
            }
        }
        None => store.create_session(&new).await?,
    }
    let csrf = csrf_token(state.auth().hasher(), &secret);
    Ok((set_cookie(SESSION_COOKIE, &secret)?, csrf))
}

/// The pre-session secret of a login or setup form: the one the browser sent, or a new one to set
/// (`Some` header value).
pub fn pre_session(headers: &HeaderMap) -> Result<(SessionSecret, Option<HeaderValue>), ConsoleError> {
    if let Some(s) = cookie(headers, PRE_COOKIE) {
        return Ok((s, None));
    }
    let s =
        SessionSecret::generate().map_err(|_| ConsoleError::internal(&crate::admin::AdminError::Random))?;
    let set = set_cookie(PRE_COOKIE, &s)?;
    Ok((s, Some(set)))
}

/// The CSRF token a login or setup POST must carry (none without a pre-session cookie).
pub fn pre_csrf(state: &AppState, headers: &HeaderMap) -> Option<String> {
    cookie(headers, PRE_COOKIE).map(|s| csrf_token(state.auth().hasher(), &s))
}

//! Login (password, then the second factor when it is on), logout, and password setup from a link.
//!
//! Login answers an unknown email exactly like a wrong password: the same 401 page, after one argon2id
//! verification either way (against a dummy hash when there is no account or no password yet), and the
//! same audit write. Failures are throttled per client address (the API's failed-authentication
//! budget, `limits.auth_failures_per_minute`) and per email, known or not
//! (`accounts.login_failures_per_account` per 15 minutes): past either, 429 until it refills.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use skygate_core::ratelimit::Quota;
use skygate_core::session::{SessionSecret, SessionStage};
use skygate_core::{Account, KeyHasher, NewAuditEntry, SecretString, Timestamp};

use super::error::WRONG_LOGIN;
use super::form;
use super::session::{self, ConsoleUser, PendingLogin, CLEAR_SESSION_COOKIE};
use super::{html, pages, ConsoleError};
use crate::credentials::Actor;
use crate::second_factor::{self, Accepted};
use crate::state::AppState;

/// The per-email login failure window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

pub(super) fn see_other(to: &'static str, cookie: Option<HeaderValue>) -> Response {
    let mut res = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static(to))],
    )
        .into_response();
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

fn with_cookie(mut res: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

fn query_param(parts: &Parts, name: &str) -> Option<String> {
    url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn audit(
    actor: &Actor,
    now: Timestamp,
    action: &str,
    account: Option<&Account>,
    detail: &str,
) -> NewAuditEntry {
    let id = account.map(|a| a.id.as_str());
    session::audit_entry(now, actor, action, id.unwrap_or("unknown account"), detail, id)
}

pub async fn form(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let (parts, _) = req.into_parts();
    let (pre, set) = session::pre_session(&parts.headers)?;
    let csrf = session::csrf_token(state.auth().hasher(), &pre);
    let notice = match query_param(&parts, "done").as_deref() {
        Some("password") => Some("Your password is set. Log in with it."),
        Some("logout") => Some("You are logged out."),
        _ => None,
    };
    Ok(with_cookie(
        html(StatusCode::OK, pages::login(&csrf, notice)),
        set,
    ))
}

/// The per-email failure budget's bucket: a keyed hash of the normalised email (the email itself never
/// reaches the limiter or Redis).
fn email_bucket(hasher: &dyn KeyHasher, email: &str) -> String {
    let h = hasher.hash(format!("console-login\0{email}").as_bytes());
    let mut s = String::with_capacity(34);
    s.push_str("l:");
    for b in &h[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn too_many(secs: u64, what: &str) -> ConsoleError {
    ConsoleError::TooMany {
        message: format!("Too many failed logins {what}: try again in {secs} seconds."),
        retry_after: secs,
    }
}

pub async fn submit(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let now = Timestamp::now();
    let expected = session::pre_csrf(&state, req.headers());
    let (parts, form) = form::posted(&state, req, expected.as_deref(), None).await?;
    let email = form.get("email").trim().to_lowercase();
    let password = form.raw("password");
    if email.is_empty() || password.is_empty() || email.len() > 320 {
        return Err(ConsoleError::BadRequest("Enter your email and password.".into()));
    }
    let limits = state.limits();
    let client = crate::screen::client_of_parts(&state, &parts.extensions, &parts.headers);
    if let Some(ip) = client {
        if let Some(e) = limits.auth_throttled(ip).await {
            return Err(too_many(e.retry_after.unwrap_or(60), "from this address"));
        }
    }
    let hasher = state.auth().hasher();
    let bucket = email_bucket(hasher, &email);
    let quota = Quota {
        limit: state.config().accounts.login_failures_per_account,
        window: LOGIN_WINDOW,
    };
    if let Some(secs) = limits.failure_budget("failed_logins", &bucket, quota, 0).await {
        return Err(too_many(secs, "for this account"));
    }
    let store = state.store();
    let account = store.account_by_email(&email).await?;
    let stored = match &account {
        Some(a) => store.password(&a.id).await?.map(|p| p.phc),
        None => None,
    };
    let matched = state
        .console()
        .verify(SecretString::new(password), stored)
        .await?;
    let who = account.as_ref().map_or("anonymous", |a| a.id.as_str());
    let actor = session::actor(who, &state, &parts.extensions, &parts.headers);
    let account = match account {
        Some(a) if matched => a,
        known => {
            store
                .append_audit(&audit(
                    &actor,
                    now,
                    "login.failure",
                    known.as_ref(),
                    "wrong email or password",
                ))
                .await?;
            if let Some(ip) = client {
                if let Some(e) = limits.auth_failed(ip).await {
                    return Err(too_many(e.retry_after.unwrap_or(60), "from this address"));
                }
            }
            if let Some(secs) = limits.failure_budget("failed_logins", &bucket, quota, 1).await {
                return Err(too_many(secs, "for this account"));
            }
            return Err(ConsoleError::Unauthorized(WRONG_LOGIN.into()));
        }
    };
    // A session the browser still had ends here: the id always changes at login.
    if let Some(old) = session::cookie(&parts.headers, session::SESSION_COOKIE) {
        if let Some(rec) = store
            .session_by_hash(&hasher.hash(old.expose().as_bytes()))
            .await?
        {
            store.delete_session(&rec.account, &rec.id).await?;
        }
    }
    if store.two_factor_enabled(&account.id).await? {
        let (cookie, _) =
            session::start(&state, &account, SessionStage::SecondFactor, &actor, None, now).await?;
        store
            .append_audit(&audit(
                &actor,
                now,
                "login.password",
                Some(&account),
                "second factor due",
            ))
            .await?;
        return Ok(see_other("/console/login/2fa", Some(cookie)));
    }
    let (cookie, _) = session::start(&state, &account, SessionStage::Full, &actor, None, now).await?;
    store
        .append_audit(&audit(
            &actor,
            now,
            "login.success",
            Some(&account),
            "password; no second factor",
        ))
        .await?;
    Ok(see_other("/console/security", Some(cookie)))
}

pub async fn second_form(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let (parts, _) = req.into_parts();
    match PendingLogin::find(&state, &parts.headers, &parts.extensions, Timestamp::now()).await? {
        Some(p) => Ok(html(StatusCode::OK, pages::second_factor(&p.csrf))),
        None => Ok(see_other("/console/login", None)),
    }
}

pub async fn second_submit(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let now = Timestamp::now();
    let Some(pending) = PendingLogin::find(&state, req.headers(), req.extensions(), now).await? else {
        return Err(ConsoleError::SessionEnded {
            method: req.method().clone(),
        });
    };
    let (parts, form) = form::posted(&state, req, Some(&pending.csrf), Some(&pending.account.id)).await?;
    let answer = form.required("code", "the code from your authenticator app or a recovery code")?;
    let actor = session::actor(
        pending.account.id.as_str(),
        &state,
        &parts.extensions,
        &parts.headers,
    );
    let accepted = second_factor::check(
        state.store(),
        state.auth().hasher(),
        &actor,
        &pending.account,
        answer,
        now,
    )
    .await?;
    let (cookie, _) = session::start(
        &state,
        &pending.account,
        SessionStage::Full,
        &actor,
        Some(&pending.session.id),
        now,
    )
    .await?;
    let how = match accepted {
        Accepted::Code => "password and authenticator code".to_owned(),
        Accepted::RecoveryCode { left } => format!("password and recovery code ({left} left)"),
    };
    state
        .store()
        .append_audit(&audit(&actor, now, "login.success", Some(&pending.account), &how))
        .await?;
    Ok(see_other("/console/security", Some(cookie)))
}

pub async fn logout(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let store = state.store();
    store.delete_session(&user.account.id, &user.session.id).await?;
    store
        .append_audit(&audit(
            &user.actor,
            user.now,
            "logout",
            Some(&user.account),
            user.session.id.as_str(),
        ))
        .await?;
    Ok(see_other(
        "/console/login?done=logout",
        Some(HeaderValue::from_static(CLEAR_SESSION_COOKIE)),
    ))
}

const BAD_LINK: &str =
    "This setup link is invalid, expired or already used. Ask your operator for a new one.";

async fn link_account(
    state: &AppState,
    token: &str,
    now: Timestamp,
) -> Result<Option<(SessionSecret, Account)>, ConsoleError> {
    let Some(secret) = SessionSecret::parse(token.trim()) else {
        return Ok(None);
    };
    let hash = state.auth().hasher().hash(secret.expose().as_bytes());
    let Some(id) = state.store().setup_link_account(&hash, now).await? else {
        return Ok(None);
    };
    Ok(state.store().account(&id).await?.map(|a| (secret, a)))
}

pub async fn setup_form(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let (parts, _) = req.into_parts();
    let token = query_param(&parts, "token").unwrap_or_default();
    let Some((secret, account)) = link_account(&state, &token, Timestamp::now()).await? else {
        return Err(ConsoleError::BadRequest(BAD_LINK.into()));
    };
    let (pre, set) = session::pre_session(&parts.headers)?;
    let csrf = session::csrf_token(state.auth().hasher(), &pre);
    Ok(with_cookie(
        html(
            StatusCode::OK,
            pages::setup(&csrf, secret.expose(), &account.email),
        ),
        set,
    ))
}

pub async fn setup_submit(State(state): State<AppState>, req: Request) -> Result<Response, ConsoleError> {
    let now = Timestamp::now();
    let expected = session::pre_csrf(&state, req.headers());
    let (parts, form) = form::posted(&state, req, expected.as_deref(), None).await?;
    let store = state.store();
    let Some((secret, account)) = link_account(&state, form.get("token"), now).await? else {
        let actor = session::actor("anonymous", &state, &parts.extensions, &parts.headers);
        store
            .append_audit(&audit(
                &actor,
                now,
                "password.set.failure",
                None,
                "invalid, expired or used setup link",
            ))
            .await?;
        return Err(ConsoleError::BadRequest(BAD_LINK.into()));
    };
    let (pw, again) = (form.raw("password"), form.raw("password_again"));
    if pw != again {
        return Err(ConsoleError::BadRequest("The two passwords differ.".into()));
    }
    skygate_core::password::check_policy(pw, &account.email)
        .map_err(|e| ConsoleError::BadRequest(format!("Choose another password: {e}.")))?;
    let phc = state.console().hash(SecretString::new(pw)).await?;
    let hash = state.auth().hasher().hash(secret.expose().as_bytes());
    let actor = session::actor(account.id.as_str(), &state, &parts.extensions, &parts.headers);
    if store.redeem_setup_link(&hash, &phc, now).await?.is_none() {
        return Err(ConsoleError::BadRequest(BAD_LINK.into()));
    }
    store
        .append_audit(&audit(
            &actor,
            now,
            "password.set",
            Some(&account),
            "from a setup link; sessions ended",
        ))
        .await?;
    Ok(see_other("/console/login?done=password", None))
}

//! The console at `/console`: server-rendered HTML (maud) on the API's TLS listener, usable without
//! JavaScript. Login with email and password (then the second factor when it is on), logout, password
//! setup from a single-use link, Settings → Security (protection status, 2FA enrolment with a QR code,
//! disable and regenerate with a current code), API keys, access tokens, sessions and audit events.
//!
//! Promises:
//! - sessions live in the store ([`session`]): the cookie `__Host-skygate-session` (HttpOnly, Secure,
//!   SameSite=Strict, Path=/) carries 256 random bits, the store only their keyed hash; the id changes
//!   at login and at every change to the second factor; idle and absolute timeouts from `[accounts]`;
//! - every POST passes an Origin (or, without one, Referer) check against `server.public_url` and a
//!   synchronizer CSRF token bound to the session (or, before login, to a pre-session cookie);
//! - every page carries a CSP without inline scripts or styles (the stylesheet is `/console/style.css`);
//! - login answers the same (same body, one argon2id verification either way) for an unknown email and
//!   a wrong password, and is throttled per address and per email ([`login`]);
//! - password hashing runs on a bounded pool of low-priority threads ([`password::PasswordPool`]);
//! - everything security-relevant is audited; no secret is logged or shown twice.

mod error;
mod form;
mod login;
mod manage;
mod pages;
pub mod password;
mod security;
pub mod session;
pub mod setup;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};

pub use error::ConsoleError;

use crate::state::AppState;

/// The console's CSP: no scripts at all, styles only from the stylesheet, images only inline (the QR
/// code is a `data:` SVG), forms only to ourselves, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (added to the API's route table).
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/console", get(security::home)),
        ("/console/style.css", get(stylesheet)),
        ("/console/login", get(login::form).post(login::submit)),
        (
            "/console/login/2fa",
            get(login::second_form).post(login::second_submit),
        ),
        ("/console/logout", post(login::logout)),
        ("/console/setup", get(login::setup_form).post(login::setup_submit)),
        ("/console/security", get(security::page)),
        ("/console/security/2fa/begin", post(security::begin)),
        ("/console/security/2fa/confirm", post(security::confirm)),
        ("/console/security/2fa/disable", post(security::disable)),
        ("/console/security/2fa/regenerate", post(security::regenerate)),
        ("/console/keys", get(manage::keys).post(manage::create_key)),
        ("/console/keys/revoke", post(manage::revoke_key)),
        ("/console/tokens", get(manage::tokens).post(manage::create_token)),
        ("/console/tokens/revoke", post(manage::revoke_token)),
        ("/console/sessions", get(manage::sessions)),
        ("/console/sessions/revoke", post(manage::revoke_session)),
        ("/console/audit", get(manage::audit)),
    ]
}

const STYLE: &str = include_str!("style.css");

async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        STYLE,
    )
        .into_response()
}

/// An HTML answer with the console's headers.
pub(crate) fn html(status: axum::http::StatusCode, body: maud::Markup) -> Response {
    let mut res = (status, body.into_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not the API's `no-referrer`: under it browsers send `Origin: null` on form posts, which the
    // Origin check must refuse. `same-origin` keeps the origin for our own forms and tells no one else.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    res
}

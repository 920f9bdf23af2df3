//! Settings → Security: the protection status, and the second factor's enrolment (QR code and secret,
//! confirmed by the first code, then 10 recovery codes shown once), disabling and regenerating (each
//! needs a current code). The session id is rotated at every change to the second factor.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use qrcode::render::svg;
use qrcode::QrCode;
use skygate_core::session::SessionStage;

use super::login::see_other;
use super::session::ConsoleUser;
use super::{form, html, pages, ConsoleError};
use crate::second_factor;
use crate::state::AppState;

/// Recent security events shown on the page.
const RECENT_EVENTS: i64 = 10;

async fn status(state: &AppState, user: &ConsoleUser) -> Result<pages::Status, ConsoleError> {
    let store = state.store();
    let id = &user.account.id;
    let mut keys = Vec::new();
    for p in store.list_projects(id).await? {
        keys.extend(store.list_api_keys(&p.id).await?);
    }
    Ok(pages::Status {
        two_factor: store.two_factor_enabled(id).await?,
        codes_left: store.recovery_codes_left(id).await?,
        password_set: store.password(id).await?.map(|p| p.set_at),
        sessions: store.list_sessions(id, user.now).await?,
        current: user.session.id.clone(),
        keys,
        tokens: store.list_access_tokens(id).await?,
        events: store.account_audit(id, i64::MAX, RECENT_EVENTS).await?,
        now: user.now,
    })
}

async fn render(
    state: &AppState,
    user: &ConsoleUser,
    csrf: &str,
    notice: Option<&str>,
    extra: Markup,
    cookie: Option<axum::http::HeaderValue>,
) -> Result<Response, ConsoleError> {
    let s = status(state, user).await?;
    let mut res = html(StatusCode::OK, pages::security(csrf, &s, notice, extra));
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(res)
}

pub async fn home() -> Response {
    see_other("/console/security", None)
}

pub async fn page(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ConsoleError> {
    render(&state, &user, &user.csrf, None, html! {}, None).await
}

/// The otpauth URI as an SVG QR code.
fn qr_svg(uri: &str) -> Result<String, ConsoleError> {
    let code = QrCode::new(uri.as_bytes()).map_err(|e| ConsoleError::internal(&e))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

pub async fn begin(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let e = second_factor::begin(state.store(), &user.account, user.now).await?;
    let secret = e.secret.base32();
    let qr = pages::svg_data_uri(&qr_svg(&e.uri)?);
    let extra = pages::enrol(&user.csrf, &qr, &secret, &e.uri);
    render(&state, &user, &user.csrf, None, extra, None).await
}

/// A new session id after a change to the second factor; the page's forms need the new CSRF token.
async fn rotated(
    state: &AppState,
    user: &ConsoleUser,
) -> Result<(axum::http::HeaderValue, String), ConsoleError> {
    super::session::start(
        state,
        &user.account,
        SessionStage::Full,
        &user.actor,
        Some(&user.session.id),
        user.now,
    )
    .await
}

fn shown_codes(codes: &[skygate_core::totp::RecoveryCode]) -> Vec<String> {
    codes.iter().map(|c| c.expose().to_owned()).collect()
}

pub async fn confirm(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let code = f.required("code", "the code your app shows")?;
    let codes = second_factor::confirm(
        state.store(),
        state.auth().hasher(),
        &user.actor,
        &user.account,
        code,
        user.now,
    )
    .await?;
    let (cookie, csrf) = rotated(&state, &user).await?;
    let extra = pages::codes(&shown_codes(&codes));
    render(
        &state,
        &user,
        &csrf,
        Some("Two-factor authentication is on."),
        extra,
        Some(cookie),
    )
    .await
}

pub async fn disable(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let code = f.required("code", "a current code from your app")?;
    second_factor::disable(state.store(), &user.actor, &user.account, code, user.now).await?;
    let (cookie, csrf) = rotated(&state, &user).await?;
    render(
        &state,
        &user,
        &csrf,
        Some("Two-factor authentication is off."),
        html! {},
        Some(cookie),
    )
    .await
}

pub async fn regenerate(
    State(state): State<AppState>,
    user: ConsoleUser,
    req: Request,
) -> Result<Response, ConsoleError> {
    let (_, f) = form::posted(&state, req, Some(&user.csrf), Some(&user.account.id)).await?;
    let code = f.required("code", "a current code from your app")?;
    let codes = second_factor::regenerate_codes(
        state.store(),
        state.auth().hasher(),
        &user.actor,
        &user.account,
        code,
        user.now,
    )
    .await?;
    let (cookie, csrf) = rotated(&state, &user).await?;
    render(
        &state,
        &user,
        &csrf,
        Some("New recovery codes: the old ones no longer work."),
        pages::codes(&shown_codes(&codes)),
        Some(cookie),
    )
    .await
}

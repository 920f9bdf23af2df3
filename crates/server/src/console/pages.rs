//! The console's HTML, rendered with maud (every value escaped). No scripts and no inline styles: the
//! layout links `/console/style.css`, and the QR code is an `<img>` with a `data:` SVG.

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use skygate_core::session::SessionRecord;
use skygate_core::{ApiKeyRecord, AuditEntry, Project, Timestamp, TokenRecord};

use super::form::CSRF_FIELD;

/// A signed-in page: the navigation (with a logout form carrying `csrf`) and `body`.
pub fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · skygate console" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    span.brand { "skygate" }
                    @if let Some(csrf) = csrf {
                        nav {
                            a href="/console/security" { "Security" }
                            a href="/console/keys" { "API keys" }
                            a href="/console/tokens" { "Access tokens" }
                            a href="/console/sessions" { "Sessions" }
                            a href="/console/audit" { "Audit events" }
                        }
                        form method="post" action="/console/logout" {
                            (csrf_field(csrf))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(csrf); }
}

pub fn when(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
}

/// Whole days since `t`.
pub fn days_since(t: Timestamp, now: Timestamp) -> i64 {
    (now.as_micros() - t.as_micros()).max(0) / 86_400_000_000
}

pub fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            p.error { (message) }
            p { a href="/console/login" { "Log in" } " · " a href="/console/security" { "Security settings" } }
        },
    )
}

pub fn login(csrf: &str, notice: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(n) = notice { p.notice { (n) } }
            section {
                form method="post" action="/console/login" {
                    (csrf_field(csrf))
                    label for="email" { "Email" }
                    input #email type="email" name="email" autocomplete="username" required;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

pub fn second_factor(csrf: &str) -> Markup {
    layout(
        "Two-factor authentication",
        None,
        html! {
            section {
                p { "Enter the 6-digit code from your authenticator app, or one of your recovery codes." }
                form method="post" action="/console/login/2fa" {
                    (csrf_field(csrf))
                    label for="code" { "Code" }
                    input #code type="text" name="code" autocomplete="one-time-code" required;
                    button type="submit" { "Continue" }
                }
            }
        },
    )
}

pub fn setup(csrf: &str, token: &str, email: &str) -> Markup {
    layout(
        "Set your password",
        None,
        html! {
            section {
                p { "Choose the console password for " strong { (email) } ". At least 12 characters; common passwords are refused." }
                form method="post" action="/console/setup" {
                    (csrf_field(csrf))
                    input type="hidden" name="token" value=(token);
                    label for="password" { "New password" }
                    input #password type="password" name="password" autocomplete="new-password" minlength="12" required;
                    label for="password_again" { "New password, again" }
                    input #password_again type="password" name="password_again" autocomplete="new-password" minlength="12" required;
                    button type="submit" { "Set password" }
                }
            }
        },
    )
}

/// What the Security page shows.
pub struct Status {
    pub two_factor: bool,
    pub codes_left: u32,
    pub password_set: Option<Timestamp>,
    pub sessions: Vec<SessionRecord>,
    pub current: skygate_core::SessionId,
    pub keys: Vec<ApiKeyRecord>,
    pub tokens: Vec<TokenRecord>,
    pub events: Vec<AuditEntry>,
    pub now: Timestamp,
}

fn on_off(on: bool) -> Markup {
    html! { @if on { span.on { "on" } } @else { span.off { "off" } } }
}

/// The "do this next" hints, most important first.
pub fn hints(s: &Status) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !s.two_factor {
        out.push("Turn on two-factor authentication: it is required before you can create live API keys or access tokens.");
    } else if s.codes_left <= 3 {
        out.push("Few recovery codes are left: regenerate them and store the new ones safely.");
    }
    if s.password_set.is_some_and(|t| days_since(t, s.now) > 365) {
        out.push("Your password is over a year old: ask your operator for a reset link to change it.");
    }
    if s.sessions.len() > 1 {
        out.push("Other sessions are signed in: revoke the ones you do not recognise.");
    }
    let active = |e: Option<Timestamp>, r: Option<Timestamp>| r.is_none() && e.is_none_or(|e| e > s.now);
    let stale = s
        .keys
        .iter()
        .filter(|k| active(k.expires_at, k.revoked_at) && k.last_used_at.is_none())
        .count();
    if stale > 0 {
        out.push("Some active API keys were never used: revoke the ones you do not need.");
    }
    if out.is_empty() {
        out.push("Nothing to do: your account is well protected.");
    }
    out
}

pub fn security(csrf: &str, s: &Status, notice: Option<&str>, extra: Markup) -> Markup {
    let active = |e: Option<Timestamp>, r: Option<Timestamp>| r.is_none() && e.is_none_or(|e| e > s.now);
    let live = s
        .keys
        .iter()
        .filter(|k| k.mode == skygate_core::Mode::Live && active(k.expires_at, k.revoked_at))
        .count();
    let test = s
        .keys
        .iter()
        .filter(|k| k.mode == skygate_core::Mode::Test && active(k.expires_at, k.revoked_at))
        .count();
    let tokens = s
        .tokens
        .iter()
        .filter(|t| active(t.expires_at, t.revoked_at))
        .count();
    layout(
        "Security",
        Some(csrf),
        html! {
            @if let Some(n) = notice { p.notice { (n) } }
            (extra)
            section #status {
                h2 { "Protection status" }
                div.status {
                    div #status-2fa { "Two-factor authentication: " (on_off(s.two_factor)) }
                    div #status-codes { "Recovery codes left: " strong { (s.codes_left) } }
                    div #status-password { "Password age: " strong { @match s.password_set { Some(t) => { (days_since(t, s.now)) " days" }, None => "not set" } } }
                    div #status-sessions { "Active sessions: " strong { (s.sessions.len()) } }
                    div #status-keys { "Active API keys: " strong { (live) " live, " (test) " test" } }
                    div #status-tokens { "Active access tokens: " strong { (tokens) } }
                }
                h2 { "Do this next" }
                @for h in hints(s) { p.hint { (h) } }
            }
            section #two-factor {
                h2 { "Two-factor authentication" }
                @if s.two_factor {
                    p { "On. Disabling it or getting new recovery codes needs a current code from your app." }
                    form method="post" action="/console/security/2fa/regenerate" {
                        (csrf_field(csrf))
                        label for="regen-code" { "Current code" }
                        input #regen-code type="text" name="code" autocomplete="one-time-code" required;
                        button type="submit" { "Regenerate recovery codes" }
                    }
                    form method="post" action="/console/security/2fa/disable" {
                        (csrf_field(csrf))
                        label for="disable-code" { "Current code" }
                        input #disable-code type="text" name="code" autocomplete="one-time-code" required;
                        button.danger type="submit" { "Turn off two-factor authentication" }
                    }
                } @else {
                    p { "Off. Pair an authenticator app to protect your account." }
                    form method="post" action="/console/security/2fa/begin" {
                        (csrf_field(csrf))
                        button type="submit" { "Set up two-factor authentication" }
                    }
                }
            }
            section {
                h2 { "Sessions" }
                (sessions_table(csrf, &s.sessions, &s.current))
            }
            section {
                h2 { "Credentials" }
                table {
                    tr { th { "Kind" } th { "Name" } th { "Ends in" } th { "Last used" } th { "Expires" } th { "State" } }
                    @for k in &s.keys {
                        tr { td { (k.mode.as_str()) " key" } td { (k.name) } td { code { "…" (k.last4) } } td { (when(k.last_used_at)) } td { (when(k.expires_at)) } td { (state(k.expires_at, k.revoked_at, s.now)) } }
                    }
                    @for t in &s.tokens {
                        tr { td { "token" } td { (t.name) } td { code { "…" (t.last4) } } td { (when(t.last_used_at)) } td { (when(t.expires_at)) } td { (state(t.expires_at, t.revoked_at, s.now)) } }
                    }
                }
            }
            section {
                h2 { "Recent security events" }
                (events_table(&s.events))
            }
        },
    )
}

pub fn state(expires: Option<Timestamp>, revoked: Option<Timestamp>, now: Timestamp) -> &'static str {
    match (revoked, expires) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= now => "expired",
        _ => "active",
    }
}

pub fn sessions_table(csrf: &str, sessions: &[SessionRecord], current: &skygate_core::SessionId) -> Markup {
    html! {
        table #sessions {
            tr { th { "Started" } th { "Last seen" } th { "Address" } th { "Browser" } th {} }
            @for r in sessions {
                tr {
                    td { (r.created_at.to_rfc3339()) } td { (r.last_seen_at.to_rfc3339()) } td { (r.ip) }
                    td { (r.user_agent.chars().take(60).collect::<String>()) }
                    td {
                        @if &r.id == current { "this session" } @else {
                            form method="post" action="/console/sessions/revoke" {
                                (csrf_field(csrf))
                                input type="hidden" name="session" value=(r.id.as_str());
                                button.danger type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn events_table(events: &[AuditEntry]) -> Markup {
    html! {
        table #events {
            tr { th { "#" } th { "When" } th { "Event" } th { "Detail" } th { "Address" } }
            @for e in events {
                tr { td { (e.seq) } td { (e.entry.at.to_rfc3339()) } td { code { (e.entry.action) } } td { (e.entry.detail) } td { (e.entry.ip) } }
            }
        }
    }
}

/// The enrolment step: the QR code, the secret as text, and the confirmation form.
pub fn enrol(csrf: &str, qr_svg_data_uri: &str, secret: &str, uri: &str) -> Markup {
    html! {
        section #enrol {
            h2 { "Pair your authenticator app" }
            p { "Scan the QR code, or enter the secret by hand. Then type the first code the app shows." }
            div.qr { img alt="QR code of the otpauth URI" src=(qr_svg_data_uri); }
            p { "Secret: " span #totp-secret .secret { (secret) } }
            p.muted { "URI: " code #totp-uri { (uri) } }
            form method="post" action="/console/security/2fa/confirm" {
                (csrf_field(csrf))
                label for="confirm-code" { "First code" }
                input #confirm-code type="text" name="code" autocomplete="one-time-code" required;
                button type="submit" { "Confirm and turn on" }
            }
        }
    }
}

/// Recovery codes, shown once.
pub fn codes(codes: &[String]) -> Markup {
    html! {
        section #recovery-codes {
            h2 { "Your recovery codes" }
            p { strong { "Shown once." } " Store them somewhere safe: each one logs you in once if you lose your app." }
            ul.codes { @for c in codes { li { code.recovery-code { (c) } } } }
        }
    }
}

/// A secret shown once (a new key or token).
pub fn shown_once(what: &str, secret: &str) -> Markup {
    html! {
        section #created {
            h2 { "Your new " (what) }
            p { strong { "Copy it now: it is shown once." } }
            span #new-secret .secret { (secret) }
        }
    }
}

pub fn keys(csrf: &str, projects: &[(Project, Vec<ApiKeyRecord>)], now: Timestamp, extra: Markup) -> Markup {
    layout(
        "API keys",
        Some(csrf),
        html! {
            (extra)
            @if projects.is_empty() { p.hint { "You have no projects yet: ask your operator to create one (skygate projects create)." } }
            @for (p, ks) in projects {
                section.project {
                    h2 { (p.name) " " span.muted { code { (p.id.as_str()) } } }
                    table {
                        tr { th { "Name" } th { "Mode" } th { "Key" } th { "Created" } th { "Last used" } th { "Expires" } th { "State" } th {} }
                        @for k in ks {
                            tr {
                                td { (k.name) } td { (k.mode.as_str()) } td { code { (k.prefix) "…" (k.last4) } }
                                td { (k.created_at.to_rfc3339()) } td { (when(k.last_used_at)) } td { (when(k.expires_at)) }
                                td { (state(k.expires_at, k.revoked_at, now)) }
                                td {
                                    @if k.revoked_at.is_none() {
                                        form method="post" action="/console/keys/revoke" {
                                            (csrf_field(csrf))
                                            input type="hidden" name="key" value=(k.id.as_str());
                                            button.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    form method="post" action="/console/keys" {
                        (csrf_field(csrf))
                        input type="hidden" name="project" value=(p.id.as_str());
                        label { "Name" input type="text" name="name" maxlength="100"; }
                        label { "Mode "
                            select name="mode" { option value="test" { "test" } option value="live" { "live" } }
                        }
                        button type="submit" { "Create key" }
                    }
                }
            }
        },
    )
}

pub fn tokens(csrf: &str, list: &[TokenRecord], now: Timestamp, extra: Markup) -> Markup {
    layout(
        "Access tokens",
        Some(csrf),
        html! {
            (extra)
            section {
                table #tokens {
                    tr { th { "Name" } th { "Scopes" } th { "Token" } th { "Created" } th { "Last used" } th { "Expires" } th { "State" } th {} }
                    @for t in list {
                        tr {
                            td { (t.name) } td { code { (t.scopes.to_list()) } } td { code { "sk_pat_…" (t.last4) } }
                            td { (t.created_at.to_rfc3339()) } td { (when(t.last_used_at)) } td { (when(t.expires_at)) }
                            td { (state(t.expires_at, t.revoked_at, now)) }
                            td {
                                @if t.revoked_at.is_none() {
                                    form method="post" action="/console/tokens/revoke" {
                                        (csrf_field(csrf))
                                        input type="hidden" name="token" value=(t.id.as_str());
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "New access token" }
                form method="post" action="/console/tokens" {
                    (csrf_field(csrf))
                    label for="token-name" { "Name" }
                    input #token-name type="text" name="name" maxlength="100";
                    p.checks {
                        @for s in skygate_core::Scope::ALL {
                            label { input type="checkbox" name="scope" value=(s.as_str()); " " (s.as_str()) }
                        }
                    }
                    label for="expires" { "Expires in (days, empty for never)" }
                    input #expires type="number" name="expires_days" min="1" max="3650" value="90";
                    button type="submit" { "Create token" }
                }
            }
        },
    )
}

pub fn sessions(csrf: &str, list: &[SessionRecord], current: &skygate_core::SessionId) -> Markup {
    layout(
        "Sessions",
        Some(csrf),
        html! { section { (sessions_table(csrf, list, current)) } },
    )
}

pub fn audit(csrf: &str, events: &[AuditEntry]) -> Markup {
    layout(
        "Audit events",
        Some(csrf),
        html! { section { (events_table(events)) } },
    )
}

/// An SVG as a `data:` URI for an `<img>` (the CSP allows `img-src data:`).
pub fn svg_data_uri(svg: &str) -> String {
    use base64::Engine as _;
    format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg.as_bytes())
    )
}

//! A console form POST: the body (URL-encoded, at most [`MAX_FORM`] bytes), the Origin/Referer check
//! against `server.public_url`, and the CSRF token check; refusals are audited and throttled.

use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use skygate_core::{AccountId, Timestamp};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::ConsoleError;
use crate::state::AppState;

/// Longest form body read (a password form is well under 1 KiB).
pub const MAX_FORM: usize = 16 * 1024;
/// The hidden field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The fields of one form; values are zeroized on drop (they may hold passwords and codes).
pub struct Form {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.fields.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, ConsoleError> {
        if body.len() > MAX_FORM {
            return Err(ConsoleError::BadRequest("The form is too large.".into()));
        }
        let fields = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
            .collect();
        Ok(Form { fields })
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The value of `name` exactly as sent (passwords keep their spaces).
    pub fn raw(&self, name: &str) -> &str {
        self.get(name)
    }

    /// Every value of `name` (checkbox groups).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A required field, trimmed.
    pub fn required(&self, name: &str, what: &str) -> Result<&str, ConsoleError> {
        let v = self.get(name).trim();
        if v.is_empty() {
            return Err(ConsoleError::BadRequest(format!("Enter {what}.")));
        }
        Ok(v)
    }
}

/// The origin `server.public_url` names (`https://host[:port]`).
fn own_origin(public_url: &str) -> &str {
    let rest = public_url.strip_prefix("https://").unwrap_or(public_url);
    let host_len = rest.find('/').unwrap_or(rest.len());
    &public_url[..public_url.len() - rest.len() + host_len]
}

/// Why a POST was refused as possibly cross-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An `Origin` header that is not this console's.
    ForeignOrigin,
    /// Neither an `Origin` nor a `Referer` of this console.
    NoOrigin,
    /// The form's CSRF token is missing or does not match the session's.
    Token,
}

impl Refusal {
    /// The page's message.
    fn message(self) -> &'static str {
        match self {
            Refusal::ForeignOrigin => "Cross-site request refused: the Origin header is not this console's.",
            Refusal::NoOrigin => {
                "Cross-site request refused: the request has no Origin or Referer header of this console."
            }
            Refusal::Token => {
                "The form's security token is missing or wrong (the page may be stale): reload it and try again."
            }
        }
    }

    /// The audit entry's detail.
    fn detail(self) -> &'static str {
        match self {
            Refusal::ForeignOrigin => "foreign Origin",
            Refusal::NoOrigin => "no Origin or Referer",
            Refusal::Token => "CSRF token missing or wrong",
        }
    }
}

/// Refuses a POST whose `Origin` is not ours, or that has no `Origin` and no `Referer` of ours.
pub fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    let ours = own_origin(state.public_url());
    if let Some(origin) = headers.get(header::ORIGIN) {
        if origin.as_bytes() == ours.as_bytes() {
            return Ok(());
        }
        return Err(Refusal::ForeignOrigin);
    }
    let referer_ok = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r.strip_prefix(ours).is_some_and(|rest| rest.starts_with('/')));
    if referer_ok {
        return Ok(());
    }
    Err(Refusal::NoOrigin)
}

/// The Origin check and the CSRF check of `form` against `expected` (the token of the session, or
/// pre-session, the request came with).
fn check(state: &AppState, headers: &HeaderMap, form: &Form, expected: Option<&str>) -> Result<(), Refusal> {
    check_origin(state, headers)?;
    let given = form.get(CSRF_FIELD);
    let ok = expected.is_some_and(|e| !given.is_empty() && bool::from(e.as_bytes().ct_eq(given.as_bytes())));
    if ok {
        Ok(())
    } else {
        Err(Refusal::Token)
    }
}

/// Reads a POST's body (at most [`MAX_FORM`] bytes) and checks its Origin and CSRF token (see
/// [`check`]). `account` is the session's, if the form is posted in one (for the audit entry).
///
/// A refusal is audited (`console.refused`, naming the account when known, with the client's address
/// and user agent) and counts as a failed authentication of the client address, so a flood of forged
/// forms meets the per-address throttle (429, no further audit entries) instead of filling the log.
pub async fn posted(
    state: &AppState,
    req: Request,
    expected: Option<&str>,
    account: Option<&AccountId>,
) -> Result<(Parts, Form), ConsoleError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| ConsoleError::BadRequest("The form is too large or could not be read.".into()))?;
    let form = Form::parse(&bytes)?;
    match check(state, &parts.headers, &form, expected) {
        Ok(()) => Ok((parts, form)),
        Err(r) => Err(refused(state, &parts, account, r).await),
    }
}

async fn refused(state: &AppState, parts: &Parts, account: Option<&AccountId>, r: Refusal) -> ConsoleError {
    let client = crate::screen::client_of_parts(state, &parts.extensions, &parts.headers);
    let limits = state.limits();
    if let Some(ip) = client {
        if let Some(e) = limits.auth_throttled(ip).await {
            return throttled(e.retry_after);
        }
    }
    let who = account.map_or("anonymous", AccountId::as_str);
    let actor = super::session::actor(who, state, &parts.extensions, &parts.headers);
    let target = format!("{} {}", parts.method, parts.uri.path());
    let entry = super::session::audit_entry(
        Timestamp::now(),
        &actor,
        "console.refused",
        &target,
        r.detail(),
        account.map(AccountId::as_str),
    );
    if let Err(e) = state.store().append_audit(&entry).await {
        return ConsoleError::from(e);
    }
    if let Some(ip) = client {
        if let Some(e) = limits.auth_failed(ip).await {
            return throttled(e.retry_after);
        }
    }
    ConsoleError::Forbidden(r.message().into())
}

fn throttled(retry_after: Option<u64>) -> ConsoleError {
    let secs = retry_after.unwrap_or(60);
    ConsoleError::TooMany {
        message: format!("Too many refused requests from this address: try again in {secs} seconds."),
        retry_after: secs,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origin_of_the_public_url() {
        assert_eq!(own_origin("https://127.0.0.1:8443"), "https://127.0.0.1:8443");
        assert_eq!(own_origin("https://example.com/base"), "https://example.com");
    }

    #[test]
    fn forms_parse_and_hide_values() {
        let f = Form::parse(b"email=a%40b.c&password=p+w%20x&s=1&s=2").unwrap();
        assert_eq!(f.get("email"), "a@b.c");
        assert_eq!(f.raw("password"), "p w x");
        assert_eq!(f.all("s").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(f.get("missing"), "");
        assert!(!format!("{f:?}").contains("p w x"));
        assert!(Form::parse(&vec![b'a'; MAX_FORM + 1]).is_err());
    }
}

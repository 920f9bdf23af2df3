//! What a console request can fail with, and its HTML answer: the right status, a clear message, never
//! an internal detail (internal errors are logged with an opaque id that the page shows).

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::AdminError;
use crate::second_factor::SecondFactorError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    TooMany { message: String, retry_after: u64 },
    /// No session, or it ended: GETs go to the login page, POSTs get a 401 page.
    #[error("your session has ended; log in again")]
    SessionEnded { method: Method },
    /// A login halfway (password checked, second factor due): GETs go to the second step.
    #[error("finish logging in with your second factor first")]
    SecondFactorDue { method: Method },
    #[error("something went wrong on our side (error id {0}); try again")]
    Internal(uuid::Uuid),
}

/// The one message for every failed password check.
pub const WRONG_LOGIN: &str = "The email or password is wrong.";

impl ConsoleError {
    pub fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        ConsoleError::Internal(crate::error::log_internal(err))
    }

    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::SessionEnded { .. } | ConsoleError::SecondFactorDue { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<skygate_store::StoreError> for ConsoleError {
    fn from(e: skygate_store::StoreError) -> Self {
        ConsoleError::internal(&e)
    }
}

impl From<AdminError> for ConsoleError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) | AdminError::Conflict(m) => ConsoleError::BadRequest(m),
            AdminError::NotFound(_) => ConsoleError::NotFound("No such item.".into()),
            AdminError::Forbidden(m) if m == crate::credentials::TWO_FACTOR_FIRST => ConsoleError::Forbidden(
                "Enable two-factor authentication first (Settings → Security), then create live \
                 credentials."
                    .into(),
            ),
            AdminError::Forbidden(m) => ConsoleError::Forbidden(m),
            other => ConsoleError::internal(&other),
        }
    }
}

impl From<SecondFactorError> for ConsoleError {
    fn from(e: SecondFactorError) -> Self {
        match e {
            SecondFactorError::Code(c) => ConsoleError::Unauthorized(format!("That code was refused: {c}.")),
            SecondFactorError::RecoveryCode => ConsoleError::Unauthorized(e.to_string()),
            SecondFactorError::Locked(until) => ConsoleError::TooMany {
                message: format!(
                    "Too many wrong codes: the second factor is locked until {}.",
                    until.to_rfc3339()
                ),
                retry_after: u64::try_from(
                    (until.as_micros() - skygate_core::Timestamp::now().as_micros()) / 1_000_000,
                )
                .unwrap_or(1)
                .max(1),
            },
            SecondFactorError::NotEnabled | SecondFactorError::NoEnrolment => {
                ConsoleError::BadRequest(e.to_string())
            }
            SecondFactorError::Admin(a) => a.into(),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let ConsoleError::SecondFactorDue { method } = &self {
            if method == Method::GET || method == Method::HEAD {
                return (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, HeaderValue::from_static("/console/login/2fa"))],
                )
                    .into_response();
            }
        }
        if let ConsoleError::SessionEnded { method } = &self {
            let clear = HeaderValue::from_static(super::session::CLEAR_SESSION_COOKIE);
            if method == Method::GET || method == Method::HEAD {
                let mut res = (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, HeaderValue::from_static("/console/login"))],
                )
                    .into_response();
                res.headers_mut().insert(header::SET_COOKIE, clear);
                return res;
            }
            let mut res = super::html(
                self.status(),
                super::pages::error_page(self.status(), &self.to_string()),
            );
            res.headers_mut().insert(header::SET_COOKIE, clear);
            return res;
        }
        let status = self.status();
        let mut res = super::html(status, super::pages::error_page(status, &self.to_string()));
        if let ConsoleError::TooMany { retry_after, .. } = &self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        res
    }
}

//! Extractors whose rejections are the documented error envelope instead of axum's plain-text ones:
//! [`ApiJson`] (body limit, nesting limit, JSON syntax, then shape), [`ApiQuery`] and [`ApiPath`].

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use skygate_proto::ErrorId;

use crate::error::ApiError;

/// Deepest accepted nesting of JSON arrays and objects.
pub const MAX_JSON_DEPTH: usize = 64;

/// A JSON body. An empty body is read as `{}`, because the official SDK sends
/// `Content-Type: application/json` with no body on cancel and delete.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(inner) if is_length_limit(&inner) => {
                ApiError::for_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE)
            }
            _ => ApiError::invalid_json("The request body could not be read."),
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Parses a request body: empty → `{}`; too deep → `INVALID_JSON`; bad syntax → `INVALID_JSON` with the
/// position; valid JSON of the wrong shape → `VALIDATION_ERROR` naming the problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let trimmed = bytes.iter().all(u8::is_ascii_whitespace);
    let src: &[u8] = if trimmed { b"{}" } else { bytes };
    if json_depth_exceeds(src, MAX_JSON_DEPTH) {
        return Err(ApiError::invalid_json(format!(
            "JSON nesting deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(src).map_err(|e| {
        ApiError::invalid_json(format!(
            "line {}, column {}: {}",
            e.line(),
            e.column(),
            syntax_reason(&e)
        ))
    })?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(ErrorId::ValidationError, "Request body is invalid", e.to_string()))
}

fn syntax_reason(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Io => "could not read body",
        serde_json::error::Category::Data => "invalid value",
    }
}

/// Whether arrays/objects nest deeper than `max`, scanning bytes (strings and escapes skipped) without
/// recursion, so hostile input cannot exhaust the stack.
pub fn json_depth_exceeds(src: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in src {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Query parameters; a malformed query is `INVALID_PARAMETER`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| ApiError::invalid_parameter(e.body_text()))
    }
}

/// Path parameters; an undecodable path segment is `NOT_FOUND` (no such resource can exist).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_: PathRejection| ApiError::for_status(axum::http::StatusCode::NOT_FOUND))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[allow(dead_code)]
        model: String,
    }

    #[test]
    fn depth_is_counted_outside_strings() {
        assert!(!json_depth_exceeds(b"[[[]]]", 3));
        assert!(json_depth_exceeds(b"[[[[]]]]", 3));
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[[[[[\"["}"#, 2));
        let deep = "[".repeat(100_000);
        assert!(json_depth_exceeds(deep.as_bytes(), MAX_JSON_DEPTH));
    }

    #[test]
    fn parse_errors_map_to_documented_ids() {
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(e.id, ErrorId::InvalidJson);
        let e = parse_json::<Body>(b"{}").unwrap_err();
        assert_eq!(e.id, ErrorId::ValidationError);
        assert!(e.details.contains("model"), "{}", e.details);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err().id,
            ErrorId::InvalidJson
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_json::<serde_json::Value>(ok.as_bytes()).is_ok());
        // Unknown fields are ignored; an empty body reads as {}.
        assert!(parse_json::<Body>(br#"{"model":"echo","extra":1}"#).is_ok());
        assert!(parse_json::<serde_json::Value>(b"  ").unwrap().is_object());
    }
}

//! Models API: `GET /v1/models`, `GET /v1/models/{slug}`, `GET /v1/model/{slug}` (the SDK's singular
//! form). `?fields=input_schema,output_schema` adds the schemas. A test key sees only the models test
//! keys may run; asking a test key for a live-only model is `403 FORBIDDEN`. The registry is fixed
//! at start, so every answer is serialised once, up front ([`ModelCatalog`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use skygate_core::models::{ModelRegistry, ModelSpec};
use skygate_core::{Mode, Timestamp};

use crate::auth::{presented_credential, ApiKeyAuth, CacheLookup};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::middleware::FastAnswer;
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct FieldsQuery {
    fields: Option<String>,
}

/// Which optional fields were asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
struct Fields {
    input_schema: bool,
    output_schema: bool,
}

fn parse_fields(q: &FieldsQuery) -> Result<Fields, ApiError> {
    let mut f = Fields::default();
    for name in q
        .fields
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match name {
            "input_schema" => f.input_schema = true,
            "output_schema" => f.output_schema = true,
            _ => {
                return Err(ApiError::invalid_parameter(
                    "fields: allowed values are input_schema and output_schema (comma-separated)",
                ))
            }
        }
    }
    Ok(f)
}

fn visible(mode: Mode, m: &ModelSpec) -> bool {
    mode == Mode::Live || m.test_ok
}

const ALL_FIELDS: [Fields; 4] = [
    Fields {
        input_schema: false,
        output_schema: false,
    },
    Fields {
        input_schema: true,
        output_schema: false,
    },
    Fields {
        input_schema: false,
        output_schema: true,
    },
    Fields {
        input_schema: true,
        output_schema: true,
    },
];

/// Every Models API answer, serialised once.
pub struct ModelCatalog {
    lists: HashMap<(Mode, Fields), Bytes>,
    one: HashMap<(String, Fields), (bool, Bytes)>,
    /// The plain lists (no optional fields), live and test: the hot path, without a hash lookup.
    plain_live: Bytes,
    plain_test: Bytes,
}

impl ModelCatalog {
    pub fn new(registry: &ModelRegistry) -> Result<Self, serde_json::Error> {
        let mut lists = HashMap::new();
        let mut one = HashMap::new();
        for f in ALL_FIELDS {
            for mode in [Mode::Live, Mode::Test] {
                let items: Vec<_> = registry
                    .iter()
                    .filter(|m| visible(mode, m))
                    .map(|m| m.to_wire(f.input_schema, f.output_schema))
                    .collect();
                lists.insert((mode, f), Bytes::from(serde_json::to_vec(&items)?));
            }
            for m in registry.iter() {
                let body = Bytes::from(serde_json::to_vec(&m.to_wire(f.input_schema, f.output_schema))?);
                one.insert((m.slug.clone(), f), (m.test_ok, body));
            }
        }
        let plain = |mode| lists.get(&(mode, Fields::default())).cloned().unwrap_or_default();
        let (plain_live, plain_test) = (plain(Mode::Live), plain(Mode::Test));
        Ok(ModelCatalog {
            lists,
            one,
            plain_live,
            plain_test,
        })
    }

    fn list(&self, mode: Mode, f: Fields) -> Option<&Bytes> {
        if f == Fields::default() {
            return Some(match mode {
                Mode::Live => &self.plain_live,
                Mode::Test => &self.plain_test,
            });
        }
        self.lists.get(&(mode, f))
    }
}

/// Headers a JSON answer ends up with: content type, request id, six security headers (the edge layer),
/// content length and date (hyper adds those two while writing, not into this map).
const RESPONSE_HEADERS: usize = 8;

/// A pre-serialised JSON answer: the body shares the catalogue's bytes (no copy), and the header map is
/// sized up front for the headers the edge adds, so it never grows.
fn json(body: &Bytes) -> Response {
    let mut headers = HeaderMap::with_capacity(RESPONSE_HEADERS);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut res = Response::new(Body::from(body.clone()));
    *res.headers_mut() = headers;
    res
}

pub async fn list(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiQuery(q): ApiQuery<FieldsQuery>,
) -> Result<Response, ApiError> {
    let f = parse_fields(&q)?;
    let body = state
        .catalog()
        .list(auth.mode(), f)
        .ok_or_else(|| ApiError::model_not_found(""))?;
    Ok(json(body))
}

/// [`list`] without a query, for the hot path in front of the router: answered only when the
/// credential check is decided in memory (a valid cached key, or a refusal); `None` when the store has to
/// be asked, so the routed handler does that. Same checks, same order, same bytes as [`list`].
pub(super) fn list_cached(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> Option<FastAnswer> {
    if state.config().auth.key_cache_ttl.is_zero() {
        // No cache: every check needs the store; don't hash here only to hash again there.
        return None;
    }
    let lookup = state
        .auth()
        .check_cached(presented_credential(headers), Timestamp::now());
    // The failed-authentication budget of the address (with Redis: the routed path checks it).
    if let Some(ip) = client {
        let failed = matches!(lookup, CacheLookup::Decided(Err(_)));
        if let Some(refused) = state.limits().auth_now(ip, failed)? {
            return Some(FastAnswer::Response(refused.into_response()));
        }
    }
    let auth = match lookup {
        CacheLookup::Decided(Ok(auth)) => auth,
        CacheLookup::Decided(Err(e)) => return Some(FastAnswer::Response(e.into_response())),
        CacheLookup::Miss { .. } | CacheLookup::Token => return None,
    };
    // With Redis the limit check awaits: the routed path does it.
    let (rate, verdict) = state.limits().check_request_now(&auth)?;
    let refused = |e: ApiError| {
        let mut res = e.into_response();
        if let Some(rate) = rate {
            rate.apply(res.headers_mut());
        }
        FastAnswer::Response(res)
    };
    if let Err(e) = verdict {
        return Some(refused(e));
    }
    Some(match state.catalog().list(auth.mode(), Fields::default()) {
        Some(body) => match rate {
            Some(rate) => FastAnswer::JsonRated(body.clone(), rate),
            None => FastAnswer::Json(body.clone()),
        },
        None => refused(ApiError::model_not_found("")),
    })
}

pub async fn get(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiPath(slug): ApiPath<String>,
    ApiQuery(q): ApiQuery<FieldsQuery>,
) -> Result<Response, ApiError> {
    let f = parse_fields(&q)?;
    let (test_ok, body) = state
        .catalog()
        .one
        .get(&(slug.clone(), f))
        .ok_or_else(|| ApiError::model_not_found(&slug))?;
    if auth.mode() == Mode::Test && !test_ok {
        return Err(ApiError::forbidden(
            "Test-mode keys may run only models marked for test mode.",
        ));
    }
    Ok(json(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse() {
        let q = FieldsQuery {
            fields: Some("input_schema, output_schema".into()),
        };
        assert_eq!(
            parse_fields(&q).unwrap(),
            Fields {
                input_schema: true,
                output_schema: true
            }
        );
        assert_eq!(parse_fields(&FieldsQuery::default()).unwrap(), Fields::default());
        assert!(parse_fields(&FieldsQuery {
            fields: Some("secret".into())
        })
        .is_err());
    }
}

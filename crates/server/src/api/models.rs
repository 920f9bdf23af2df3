//! Models API: `GET /v1/models`, `GET /v1/models/{slug}`, `GET /v1/model/{slug}` (the SDK's singular
//! form). `?fields=input_schema,output_schema` adds the schemas. A test key sees only the models test
//! keys may run; asking a test key for a live-only model is `403 FORBIDDEN`. The registry is fixed
//! at start, so every answer is serialised once, up front ([`ModelCatalog`]).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use skygate_core::models::{ModelRegistry, ModelSpec};
use skygate_core::Mode;

use crate::auth::ApiKeyAuth;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
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
        Ok(ModelCatalog { lists, one })
    }
}

fn json(body: &Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.clone(),
    )
        .into_response()
}

pub async fn list(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiQuery(q): ApiQuery<FieldsQuery>,
) -> Result<Response, ApiError> {
    let f = parse_fields(&q)?;
    let body = state
        .catalog()
        .lists
        .get(&(auth.mode(), f))
        .ok_or_else(|| ApiError::model_not_found(""))?;
    Ok(json(body))
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

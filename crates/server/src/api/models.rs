//! Models API: `GET /v1/models`, `GET /v1/models/{slug}`, `GET /v1/model/{slug}` (the SDK's singular
//! form). `?fields=input_schema,output_schema` adds the schemas. A test key sees only the models test
//! keys may run; asking a test key for a live-only model is `403 FORBIDDEN`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use skygate_core::models::ModelSpec;
use skygate_core::Mode;
use skygate_proto::Model;

use crate::auth::ApiKeyAuth;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct FieldsQuery {
    fields: Option<String>,
}

/// Which optional fields were asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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

fn visible(auth: &ApiKeyAuth, m: &ModelSpec) -> bool {
    auth.mode == Mode::Live || m.test_ok
}

pub async fn list(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiQuery(q): ApiQuery<FieldsQuery>,
) -> Result<Json<Vec<Model>>, ApiError> {
    let f = parse_fields(&q)?;
    let out = state
        .models()
        .iter()
        .filter(|m| visible(&auth, m))
        .map(|m| m.to_wire(f.input_schema, f.output_schema))
        .collect();
    Ok(Json(out))
}

pub async fn get(
    State(state): State<AppState>,
    auth: ApiKeyAuth,
    ApiPath(slug): ApiPath<String>,
    ApiQuery(q): ApiQuery<FieldsQuery>,
) -> Result<Json<Model>, ApiError> {
    let f = parse_fields(&q)?;
    let m = state
        .models()
        .get(&slug)
        .ok_or_else(|| ApiError::model_not_found(&slug))?;
    if !visible(&auth, m) {
        return Err(ApiError::forbidden(
            "Test-mode keys may run only models marked for test mode.",
        ));
    }
    Ok(Json(m.to_wire(f.input_schema, f.output_schema)))
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

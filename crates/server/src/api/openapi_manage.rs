//! The management API's part of the OpenAPI document (see [`super::openapi`]): access-token
//! authentication and the `/v1/account`, `/v1/projects`, `/v1/keys` and `/v1/audit` paths, mirroring
//! [`super::manage`].

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, PathsBuilder, Required};

use super::openapi::{error_ref, integer, json_response, path_param, query_param, schema_ref, JSON};

pub const ACCESS_TOKEN: &str = "access_token";
pub const TAG_MANAGE: &str = "management";

/// The security scheme management routes require.
pub fn scheme() -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A personal access token (`sk_pat_…`) as `Authorization: Bearer <token>`. Each route \
                 needs one scope; a token without it gets `403 FORBIDDEN` naming the scope.",
            ))
            .build(),
    )
}

fn op(operation_id: &str, summary: &str, scope: &str) -> OperationBuilder {
    OperationBuilder::new()
        .tag(TAG_MANAGE)
        .operation_id(Some(operation_id))
        .summary(Some(summary))
        .description(Some(format!("Scope: `{scope}`.")))
        .security(SecurityRequirement::new(ACCESS_TOKEN, Vec::<String>::new()))
        .response("401", error_ref("Unauthorized"))
        .response("403", error_ref("Forbidden"))
        .response("429", error_ref("TooManyRequests"))
}

fn body(schema: &str) -> RequestBodyBuilder {
    RequestBodyBuilder::new().required(Some(Required::True)).content(
        JSON,
        ContentBuilder::new().schema(Some(schema_ref(schema))).build(),
    )
}

fn id(description: &str) -> ParameterBuilder {
    path_param(
        "id",
        description,
        ObjectBuilder::new().schema_type(Type::String).into(),
    )
}

pub fn paths(b: PathsBuilder) -> PathsBuilder {
    b.path(
        "/v1/account",
        PathItem::new(
            HttpMethod::Get,
            op("getAccount", "The token's account", "account.read")
                .response("200", json_response("The account.", schema_ref("AccountInfo"))),
        ),
    )
    .path(
        "/v1/account/export",
        PathItem::new(
            HttpMethod::Get,
            op(
                "exportAccount",
                "Everything held about the token's account, decrypted (no secrets); at most \
                 `limits.exports_per_hour` an hour; audited",
                "account.read",
            )
            .response("200", json_response("The export.", schema_ref("AccountExport"))),
        ),
    )
    .path("/v1/projects", {
        let mut item = PathItem::new(
            HttpMethod::Get,
            op("listProjects", "The account's projects", "projects.read").response(
                "200",
                json_response("The projects, newest first.", schema_ref("ProjectList")),
            ),
        );
        item.post = Some(
            op("createProject", "Create a project", "projects.write")
                .request_body(Some(body("CreateProject").build()))
                .response(
                    "201",
                    json_response("The new project.", schema_ref("ProjectInfo")),
                )
                .response("400", error_ref("BadRequest"))
                .response("422", error_ref("UnprocessableEntity"))
                .build(),
        );
        item
    })
    .path("/v1/projects/{id}/keys", {
        let mut item = PathItem::new(
            HttpMethod::Get,
            op(
                "listKeys",
                "A project's API keys (never their secrets)",
                "keys.read",
            )
            .parameter(id("The project id."))
            .response(
                "200",
                json_response("The keys, newest first.", schema_ref("KeyList")),
            )
            .response("404", error_ref("NotFound")),
        );
        item.post = Some(
            op("createKey", "Create an API key (shown once)", "keys.write")
                .description(Some(
                    "Scope: `keys.write`. A live key is refused with `403 FORBIDDEN` (details \"enable \
                     two-factor authentication first\") while the account has no two-factor \
                     authentication and `accounts.require_2fa_for_live_credentials` is on.",
                ))
                .parameter(id("The project id."))
                .request_body(Some(body("CreateKey").build()))
                .response(
                    "201",
                    json_response("The key, shown this once.", schema_ref("CreatedKey")),
                )
                .response("400", error_ref("BadRequest"))
                .response("404", error_ref("NotFound"))
                .response("422", error_ref("UnprocessableEntity"))
                .build(),
        );
        item
    })
    .path(
        "/v1/keys/{id}",
        PathItem::new(
            HttpMethod::Delete,
            op("revokeKey", "Revoke an API key", "keys.write")
                .parameter(id("The key id (`key_…`)."))
                .response("200", json_response("Revoked.", schema_ref("Success")))
                .response("404", error_ref("NotFound")),
        ),
    )
    .path(
        "/v1/audit",
        PathItem::new(
            HttpMethod::Get,
            op(
                "listAudit",
                "The account's security events, newest first",
                "audit.read",
            )
            .parameter(query_param(
                "before",
                "Only entries with a smaller sequence number (the previous page's `next_before`).",
                ObjectBuilder::new().schema_type(Type::Integer).into(),
            ))
            .parameter(query_param("limit", "Entries per page.", integer(1, 200, 50)))
            .response("200", json_response("The events.", schema_ref("AuditList")))
            .response("400", error_ref("BadRequest")),
        ),
    )
}

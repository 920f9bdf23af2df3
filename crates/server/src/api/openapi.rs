//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of the HTTP API.
//!
//! The schemas come from the wire types themselves (`#[derive(ToSchema)]` in `skygate-proto`), so the
//! document cannot drift from what the handlers serialise. The paths are built here with utoipa's
//! builder rather than by annotating handlers, and mirror the router in [`super`] (DESIGN §3). The
//! repository root holds the generated `openapi.json`; `crates/server/tests/openapi.rs` keeps it in step.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use skygate_proto::manage::{
    AccountExport, AccountInfo, AuditEvent, AuditList, CreateKey, CreateProject, CreatedKey,
    ExportedPrediction, ExportedProject, ExportedToken, ExportedUsage, KeyInfo, KeyList, ProjectInfo,
    ProjectList,
};
use skygate_proto::{
    CreatePrediction, ErrorBody, ErrorEnvelope, ErrorId, Health, Model, ModelPricing, OutputFileInfo,
    Pagination, Prediction, PredictionList, PredictionMetadata, PredictionMetrics, PredictionModel,
    PredictionStatus, PredictionUrls, Storage, Success, WebhookSpec,
};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    Components, ContentBuilder, KnownFormat, Paths, PathsBuilder, Ref, RefOr, Required, Response, Schema,
};

/// The components: every wire type. utoipa also pulls in the types these refer to.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    Health,
    Model,
    ModelPricing,
    CreatePrediction,
    WebhookSpec,
    Prediction,
    PredictionStatus,
    PredictionModel,
    PredictionMetrics,
    PredictionMetadata,
    Storage,
    OutputFileInfo,
    PredictionUrls,
    PredictionList,
    Pagination,
    Success,
    ErrorEnvelope,
    ErrorBody,
    ErrorId,
    AccountInfo,
    ProjectInfo,
    ProjectList,
    CreateProject,
    KeyInfo,
    KeyList,
    CreateKey,
    CreatedKey,
    AuditEvent,
    AuditList,
    AccountExport,
    ExportedProject,
    ExportedPrediction,
    ExportedToken,
    ExportedUsage,
)))]
struct ApiDoc;

pub(super) const JSON: &str = "application/json";
const API_KEY: &str = "api_key";
const BEARER: &str = "bearer";

const TAG_MODELS: &str = "models";
const TAG_PREDICTIONS: &str = "predictions";
const TAG_OUTPUTS: &str = "outputs";
const TAG_SERVICE: &str = "service";
const TAG_INFERENCE: &str = "inference";

/// The reusable error responses (`#/components/responses/…`): name, status, description.
const ERRORS: [(&str, u16, &str); 9] = [
    (
        "BadRequest",
        400,
        "`INVALID_PARAMETER`, `INVALID_DATE_FORMAT` or `INVALID_DATE_RANGE` (bad query parameters), or \
         `INVALID_JSON` (the body is not JSON, or is nested deeper than 64).",
    ),
    (
        "Unauthorized",
        401,
        "`UNAUTHORIZED`: missing, malformed, unknown, revoked or expired credential (one identical body \
         for all).",
    ),
    (
        "Forbidden",
        403,
        "`FORBIDDEN` (the key lacks the scope, or a test key asked for a live-only resource) or \
         `REQUEST_BLOCKED` (a WAF rule matched; details name the rule id).",
    ),
    (
        "NotFound",
        404,
        "`MODEL_NOT_FOUND`, `PREDICTION_NOT_FOUND` or `NOT_FOUND`: unknown, or another tenant's.",
    ),
    (
        "Conflict",
        409,
        "`PREDICTION_NOT_CANCELLABLE`: the prediction is already terminal.",
    ),
    (
        "PayloadTooLarge",
        413,
        "`PAYLOAD_TOO_LARGE`: the body is over the server's body limit.",
    ),
    (
        "UnprocessableEntity",
        422,
        "`VALIDATION_ERROR` (the body lacks `model` or `input`, or a field is malformed) or \
         `INVALID_INPUT` (the input fails the model's JSON Schema; details name the field).",
    ),
    (
        "TooManyRequests",
        429,
        "`RATE_LIMIT_EXCEEDED`; `Retry-After` says when to retry.",
    ),
    (
        "ServiceUnavailable",
        503,
        "`SERVICE_UNAVAILABLE`: the server cannot serve requests right now.",
    ),
];

/// The OpenAPI document. Deterministic: every map in it is ordered.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    doc.info = InfoBuilder::new()
        .title("skygate")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Self-hosted AI inference API, wire-compatible with the Skytells predictions API. Every \
             non-2xx answer is an `ErrorEnvelope` with `Content-Type: application/json`. Authenticated \
             answers carry the `x-skytells-ratelimit-limit-requests`, \
             `x-skytells-ratelimit-remaining-requests`, `x-skytells-ratelimit-reset-requests` and \
             `x-skytells-ratelimit-window` headers.",
        ))
        .license(Some(
            LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    doc.tags = Some(
        [
            (TAG_MODELS, "The models this server runs."),
            (
                TAG_PREDICTIONS,
                "Create, read, list, cancel and delete predictions.",
            ),
            (TAG_OUTPUTS, "Signed, expiring downloads of output files."),
            (TAG_SERVICE, "Health and this document."),
            (
                TAG_INFERENCE,
                "OpenAI-compatible inference with the server's real models: chat completions and \
                 embeddings. Errors on these routes use OpenAI's shape: `{\"error\": {message, type, param, code}}`.",
            ),
            (
                super::openapi_manage::TAG_MANAGE,
                "Account management with a personal access token: projects, API keys, audit events.",
            ),
        ]
        .into_iter()
        .map(|(name, description)| {
            TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        })
        .collect(),
    );
    let mut components = doc.components.take().unwrap_or_else(Components::new);
    components.add_security_scheme(
        API_KEY,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "An API key (`sk_live_…` or `sk_test_…`). Preferred over the bearer form.",
        ))),
    );
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The same API key as `Authorization: Bearer <key>`."))
                .build(),
        ),
    );
    components.add_security_scheme(
        super::openapi_manage::ACCESS_TOKEN,
        super::openapi_manage::scheme(),
    );
    for (name, status, description) in ERRORS {
        let mut response = ResponseBuilder::new()
            .description(format!("{status}: {description}"))
            .content(
                JSON,
                ContentBuilder::new()
                    .schema(Some(schema_ref("ErrorEnvelope")))
                    .build(),
            );
        if status == 429 {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
                    .description(Some("Seconds until a request may succeed."))
                    .build(),
            );
        }
        components
            .responses
            .insert(name.to_owned(), response.build().into());
    }
    doc.components = Some(components);
    doc.paths = paths();
    doc
}

/// [`spec`] as pretty JSON with a trailing newline: the bytes of the committed `openapi.json`.
pub fn spec_json() -> String {
    // Serialising the document cannot fail: it is plain data with string keys only.
    let mut json = serde_json::to_string_pretty(&spec()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document did not serialise");
        String::from("{}")
    });
    json.push('\n');
    json
}

/// `GET /v1/openapi.json`. No authentication: the document holds nothing secret.
pub async fn serve_spec() -> impl IntoResponse {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    let body = BODY.get_or_init(|| Bytes::from(spec_json())).clone();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(JSON))], body)
}

fn paths() -> Paths {
    let model_get = |operation_id: &str, summary: &str| {
        authed(TAG_MODELS, operation_id, summary)
            .parameter(slug_param())
            .parameter(fields_param())
            .response("200", json_response("The model.", schema_ref("Model")))
            .response("400", error_ref("BadRequest"))
            .response("404", error_ref("NotFound"))
    };
    let create = |operation_id: &str, summary: &str| {
        authed(TAG_PREDICTIONS, operation_id, summary)
            .description(Some(
                "Unknown body fields are ignored. With `\"await\": true` the answer waits (up to the \
                 server's await timeout) for the final state and is `200`; otherwise it is `201` with \
                 the new, `pending` prediction.",
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        JSON,
                        ContentBuilder::new()
                            .schema(Some(schema_ref("CreatePrediction")))
                            .build(),
                    )
                    .build(),
            ))
            .response(
                "200",
                json_response(
                    "`await` was true: the prediction in its final state (or its latest one, if the \
                     await timeout passed first).",
                    schema_ref("Prediction"),
                ),
            )
            .response(
                "201",
                json_response("The prediction was created.", schema_ref("Prediction")),
            )
            .response("400", error_ref("BadRequest"))
            .response("404", error_ref("NotFound"))
            .response("413", error_ref("PayloadTooLarge"))
            .response("422", error_ref("UnprocessableEntity"))
    };
    let delete = |operation_id: &str, summary: &str| {
        authed(TAG_PREDICTIONS, operation_id, summary)
            .description(Some(
                "Destroys the prediction's inputs and outputs now (a running prediction is cancelled) \
                 and removes it.",
            ))
            .parameter(id_param())
            .response("200", json_response("Deleted.", schema_ref("Success")))
            .response("404", error_ref("NotFound"))
    };

    super::openapi_manage::paths(PathsBuilder::new())
        .path(
            "/healthz",
            get(OperationBuilder::new()
                .tag(TAG_SERVICE)
                .operation_id(Some("healthz"))
                .summary(Some("Liveness"))
                .response("200", json_response("The server is up.", schema_ref("Health")))),
        )
        .path(
            "/readyz",
            get(OperationBuilder::new()
                .tag(TAG_SERVICE)
                .operation_id(Some("readyz"))
                .summary(Some("Readiness"))
                .response(
                    "200",
                    json_response("The server can serve requests.", schema_ref("Health")),
                )
                .response("503", error_ref("ServiceUnavailable"))),
        )
        .path(
            "/v1/openapi.json",
            get(OperationBuilder::new()
                .tag(TAG_SERVICE)
                .operation_id(Some("getOpenApi"))
                .summary(Some("This OpenAPI document"))
                .response(
                    "200",
                    json_response(
                        "The OpenAPI 3.1 document.",
                        ObjectBuilder::new().schema_type(Type::Object).into(),
                    ),
                )),
        )
        .path(
            "/v1/models",
            get(
                authed(TAG_MODELS, "listModels", "List the models visible to the key")
                    .parameter(fields_param())
                    .response(
                        "200",
                        json_response(
                            "The models: all of them for a live key, those test keys may run for a test key.",
                            ArrayBuilder::new().items(schema_ref("Model")).into(),
                        ),
                    )
                    .response("400", error_ref("BadRequest")),
            ),
        )
        .path("/v1/models/{slug}", get(model_get("getModel", "Get a model")))
        .path(
            "/v1/model/{slug}",
            get(model_get(
                "getModelSingular",
                "Get a model (the SDK's singular path)",
            )),
        )
        .path(
            "/v1/predictions",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Post,
                    create("createPrediction", "Create a prediction"),
                )
                .operation(
                    HttpMethod::Get,
                    authed(
                        TAG_PREDICTIONS,
                        "listPredictions",
                        "List predictions, newest first",
                    )
                    .parameter(query_param(
                        "page",
                        "Page number, from 1.",
                        integer(1, 1_000_000, 1),
                    ))
                    .parameter(query_param("per_page", "Page size.", integer(1, 50, 20)))
                    .parameter(query_param(
                        "from",
                        "Only predictions created on or after this day (UTC).",
                        date(),
                    ))
                    .parameter(query_param(
                        "to",
                        "Only predictions created on or before this day (UTC).",
                        date(),
                    ))
                    .parameter(query_param("model", "Only predictions of this model.", slug()))
                    .response(
                        "200",
                        json_response("One page of predictions.", schema_ref("PredictionList")),
                    )
                    .response("400", error_ref("BadRequest")),
                )
                .build(),
        )
        .path(
            "/v1/predict",
            post(create("predict", "Create a prediction (alias)")),
        )
        .path(
            "/v1/predictions/{id}",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    authed(TAG_PREDICTIONS, "getPrediction", "Get a prediction")
                        .parameter(id_param())
                        .response("200", json_response("The prediction.", schema_ref("Prediction")))
                        .response("404", error_ref("NotFound")),
                )
                .operation(
                    HttpMethod::Delete,
                    delete("deletePrediction", "Delete a prediction"),
                )
                .build(),
        )
        .path(
            "/v1/predictions/{id}/delete",
            PathItem::new(
                HttpMethod::Delete,
                delete("deletePredictionAlias", "Delete a prediction (alias)"),
            ),
        )
        .path(
            "/v1/predictions/{id}/cancel",
            post(
                authed(TAG_PREDICTIONS, "cancelPrediction", "Cancel a prediction")
                    .description(Some(
                        "Cancels a prediction that is not terminal yet. The SDK sends \
                     `Content-Type: application/json` with no body; that is accepted.",
                    ))
                    .parameter(id_param())
                    .response(
                        "200",
                        json_response(
                            "The prediction (usually already `cancelled`).",
                            schema_ref("Prediction"),
                        ),
                    )
                    .response("404", error_ref("NotFound"))
                    .response("409", error_ref("Conflict")),
            ),
        )
        .path(
            "/v1/predictions/{id}/stream",
            get(authed(TAG_PREDICTIONS, "streamPrediction", "Follow a prediction")
                .parameter(id_param())
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description(
                            "The Prediction JSON; with `Accept: text/event-stream`, Server-Sent Events \
                             instead: `status`, `progress`, `output` and `done` events with JSON data, \
                             until the prediction is terminal. `output` events carry `id`, `output` (as \
                             the Prediction shows it) and, for text, `delta`: the text added since the \
                             previous `output` event (a text model's output streams, one event each time \
                             it grew; `\"reset\": true` marks a run that started over, its `delta` the \
                             whole text).",
                        )
                        .content(
                            JSON,
                            ContentBuilder::new()
                                .schema(Some(schema_ref("Prediction")))
                                .build(),
                        )
                        .content(
                            "text/event-stream",
                            ContentBuilder::new()
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .build(),
                        ),
                )
                .response("404", error_ref("NotFound"))),
        )
        .path(
            "/v1/chat/completions",
            post(openai_op(
                "createChatCompletion",
                "Create a chat completion",
                "OpenAI's chat completion with a language model of this server: `messages` rendered by \
                 the model's chat template, `max_tokens` (or `max_completion_tokens`), `temperature`, \
                 `top_p`, `seed`, `stop`, `presence_penalty`, `frequency_penalty`. With `stream: true` \
                 the answer is `text/event-stream` of `chat.completion.chunk` objects ending in \
                 `data: [DONE]`. Parameters the model cannot honour (`n` > 1, tools, image parts, \
                 `logit_bias`, …) are a 400 naming them. Nothing is stored.",
            )),
        )
        .path(
            "/v1/embeddings",
            post(openai_op(
                "createEmbedding",
                "Create embeddings",
                "OpenAI's embeddings with an embedding model of this server: `input` is a string, an \
                 array of up to 2,048 strings or token arrays; `encoding_format` `float` or `base64` \
                 (little-endian f32). Vectors are L2-normalised. Nothing is stored.",
            )),
        )
        .path(
            "/v1/outputs/{id}/{file}",
            get(OperationBuilder::new()
                .tag(TAG_OUTPUTS)
                .operation_id(Some("downloadOutput"))
                .summary(Some("Download an output file"))
                .description(Some(
                    "A signed, expiring link from the prediction's `output` or `metadata.storage.files`. \
                     No API key: the signature is the capability. Every failure (bad or missing \
                     signature, expired link, unknown file, deleted data) is the same 404.",
                ))
                .parameter(path_param("id", "The prediction id.", uuid()))
                .parameter(path_param(
                    "file",
                    "The output file name.",
                    ObjectBuilder::new().schema_type(Type::String).into(),
                ))
                .parameter(
                    query_param(
                        "exp",
                        "Expiry, in Unix seconds.",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                            .into(),
                    )
                    .required(Required::True),
                )
                .parameter(
                    query_param(
                        "sig",
                        "The link's signature.",
                        ObjectBuilder::new().schema_type(Type::String).into(),
                    )
                    .required(Required::True),
                )
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("The file, with its own content type.")
                        .content(
                            "*/*",
                            ContentBuilder::new()
                                .schema(Some(
                                    ObjectBuilder::new()
                                        .schema_type(Type::String)
                                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
                                ))
                                .build(),
                        ),
                )
                .response("404", error_ref("NotFound"))),
        )
        .build()
}

/// An operation that needs an API key; every one can also be blocked (403) or rate limited (429).
fn authed(tag: &str, operation_id: &str, summary: &str) -> OperationBuilder {
    OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(operation_id))
        .summary(Some(summary))
        .security(SecurityRequirement::new(API_KEY, Vec::<String>::new()))
        .security(SecurityRequirement::new(BEARER, Vec::<String>::new()))
        .response("401", error_ref("Unauthorized"))
        .response("403", error_ref("Forbidden"))
        .response("429", error_ref("TooManyRequests"))
}

/// An OpenAI-compatible operation: a JSON body in OpenAI's request shape, answers and errors in
/// OpenAI's shape (described, not modelled: the OpenAI API reference is their schema).
fn openai_op(operation_id: &str, summary: &str, description: &str) -> OperationBuilder {
    let object = || ObjectBuilder::new().schema_type(Type::Object);
    let error = |what: &str| json_response(what, object().into());
    OperationBuilder::new()
        .tag(TAG_INFERENCE)
        .operation_id(Some(operation_id))
        .summary(Some(summary))
        .description(Some(description))
        .security(SecurityRequirement::new(API_KEY, Vec::<String>::new()))
        .security(SecurityRequirement::new(BEARER, Vec::<String>::new()))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(JSON, ContentBuilder::new().schema(Some(object())).build())
                .build(),
        ))
        .response(
            "200",
            json_response("The answer, in OpenAI's shape.", object().into()),
        )
        .response(
            "400",
            error("A parameter is invalid or unsupported (`param` names it)."),
        )
        .response(
            "401",
            error("The credential is missing or invalid (`invalid_api_key`)."),
        )
        .response("403", error("The credential may not use this model."))
        .response("404", error("No such model of this kind (`model_not_found`)."))
        .response("429", error("A rate limit was reached (`rate_limit_exceeded`)."))
        .response("503", error("The model is unavailable on this server."))
}

fn get(operation: OperationBuilder) -> PathItem {
    PathItem::new(HttpMethod::Get, operation)
}

fn post(operation: OperationBuilder) -> PathItem {
    PathItem::new(HttpMethod::Post, operation)
}

pub(super) fn schema_ref(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}

pub(super) fn error_ref(name: &str) -> RefOr<Response> {
    Ref::from_response_name(name).into()
}

pub(super) fn json_response(description: &str, schema: RefOr<Schema>) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
}

pub(super) fn path_param(name: &str, description: &str, schema: RefOr<Schema>) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
}

pub(super) fn query_param(name: &str, description: &str, schema: RefOr<Schema>) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
}

fn id_param() -> ParameterBuilder {
    path_param("id", "The prediction id.", uuid())
}

fn slug_param() -> ParameterBuilder {
    path_param("slug", "The model slug (its `namespace`).", slug())
}

fn fields_param() -> ParameterBuilder {
    query_param(
        "fields",
        "Comma-separated optional fields to add: `input_schema`, `output_schema`.",
        ObjectBuilder::new().schema_type(Type::String).into(),
    )
}

fn uuid() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("uuid".into())))
        .into()
}

fn slug() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9][a-z0-9._-]*$"))
        .max_length(Some(64))
        .into()
}

fn date() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
        .into()
}

pub(super) fn integer(min: i64, max: i64, default: i64) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(max))
        .default(Some(default.into()))
        .into()
}

//! The OpenAPI document: the committed `openapi.json` at the repository root is what the code generates,
//! the server serves it, it lists every route, and real answers validate against its schemas.
//!
//! Regenerate the committed file with
//! `SKYGATE_UPDATE_OPENAPI=1 cargo test -p skygate-server --test openapi`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use skygate_core::Mode;
use skygate_server::api::openapi::{spec, spec_json};
use skygate_testkit::net::{LoopbackOnly, MapResolver};
use skygate_testkit::TestServer;

const REGENERATE: &str =
    "run `SKYGATE_UPDATE_OPENAPI=1 cargo test -p skygate-server --test openapi` to regenerate";

fn committed_path() -> PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/server -> the repository root.
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("crates/server is two levels down");
    root.join("openapi.json")
}

fn updating() -> bool {
    std::env::var_os("SKYGATE_UPDATE_OPENAPI").is_some_and(|v| v == "1")
}

fn spec_value() -> Value {
    serde_json::from_str(&spec_json()).unwrap()
}

#[test]
fn committed_openapi_json_is_current() {
    let fresh = spec_json();
    assert_eq!(fresh, spec_json(), "spec_json() is not deterministic");
    assert_eq!(
        serde_json::to_value(spec()).unwrap(),
        serde_json::from_str::<Value>(&fresh).unwrap()
    );
    assert!(fresh.ends_with("}\n"));
    let path = committed_path();
    if updating() {
        std::fs::write(&path, &fresh).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()))
            + 1;
        panic!(
            "{} is out of date (first difference at line {line}): {REGENERATE}",
            path.display()
        );
    }
}

#[tokio::test]
async fn server_serves_the_document_without_auth() {
    let srv = TestServer::start().await.unwrap();
    let res = srv
        .client()
        .get(srv.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body = res.bytes().await.unwrap();
    assert_eq!(
        body.as_ref(),
        spec_json().as_bytes(),
        "served bytes differ from spec_json()"
    );
    if !updating() {
        let committed: Value =
            serde_json::from_slice(&std::fs::read(committed_path()).unwrap()).expect(REGENERATE);
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            served == committed,
            "served document differs from openapi.json: {REGENERATE}"
        );
    }
    srv.stop().await.unwrap();
}

#[test]
fn document_lists_every_route_and_the_wire_fields() {
    let doc = spec_value();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "skygate");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let expected: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/v1/models", &["get"]),
        ("/v1/models/{slug}", &["get"]),
        ("/v1/model/{slug}", &["get"]),
        ("/v1/predictions", &["get", "post"]),
        ("/v1/predict", &["post"]),
        ("/v1/predictions/{id}", &["delete", "get"]),
        ("/v1/predictions/{id}/cancel", &["post"]),
        ("/v1/predictions/{id}/delete", &["delete"]),
        ("/v1/predictions/{id}/stream", &["get"]),
        ("/v1/outputs/{id}/{file}", &["get"]),
        ("/v1/chat/completions", &["post"]),
        ("/v1/embeddings", &["post"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/account", &["get"]),
        ("/v1/account/export", &["get"]),
        ("/v1/projects", &["get", "post"]),
        ("/v1/projects/{id}/keys", &["get", "post"]),
        ("/v1/keys/{id}", &["delete"]),
        ("/v1/audit", &["get"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    want.sort_unstable();
    assert_eq!(listed, want);
    let unauthenticated = [
        "/healthz",
        "/readyz",
        "/v1/outputs/{id}/{file}",
        "/v1/openapi.json",
    ];
    for (path, methods) in expected {
        let item = paths[*path].as_object().unwrap();
        let mut got: Vec<&str> = item.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(&got, methods, "{path}");
        for m in *methods {
            let op = &item[*m];
            let ok = op["responses"]["200"].is_object() || op["responses"]["201"].is_object();
            assert!(ok, "{m} {path}: no 200 or 201");
            let security = op.get("security");
            let managed = [
                "/v1/account",
                "/v1/account/export",
                "/v1/projects",
                "/v1/projects/{id}/keys",
                "/v1/keys/{id}",
                "/v1/audit",
            ];
            if managed.contains(path) {
                assert_eq!(security, Some(&json!([{"access_token": []}])), "{m} {path}");
                assert!(op["responses"]["403"].is_object(), "{m} {path}: no 403");
            } else if unauthenticated.contains(path) {
                assert!(security.is_none(), "{m} {path} should need no key");
            } else {
                assert_eq!(
                    security,
                    Some(&json!([{"api_key": []}, {"bearer": []}])),
                    "{m} {path}"
                );
                assert!(op["responses"]["401"].is_object(), "{m} {path}: no 401");
            }
        }
    }
    for create in ["/v1/predictions", "/v1/predict"] {
        let responses = paths[create]["post"]["responses"].as_object().unwrap();
        for code in ["200", "201", "400", "401", "403", "404", "413", "422", "429"] {
            assert!(responses.contains_key(code), "POST {create}: no {code}");
        }
    }
    assert!(paths["/v1/predictions/{id}/cancel"]["post"]["responses"]["409"].is_object());
    let stream = &paths["/v1/predictions/{id}/stream"]["get"]["responses"]["200"]["content"];
    assert!(stream["application/json"].is_object() && stream["text/event-stream"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"],
        json!({"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": doc["components"]["securitySchemes"]["api_key"]["description"]})
    );

    let schemas = &doc["components"]["schemas"];
    let props = |name: &str| -> Vec<String> {
        let mut p: Vec<String> = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has no properties"))
            .keys()
            .cloned()
            .collect();
        p.sort_unstable();
        p
    };
    let prediction = props("Prediction");
    for f in [
        "id",
        "status",
        "output",
        "urls",
        "metrics",
        "metadata",
        "data_removed",
        "type",
    ] {
        assert!(
            prediction.contains(&f.to_owned()),
            "Prediction lacks {f}: {prediction:?}"
        );
    }
    assert!(!prediction.contains(&"kind".to_owned()));
    let create = props("CreatePrediction");
    assert!(create.contains(&"await".to_owned()) && !create.contains(&"wait".to_owned()));
    assert!(props("Model").contains(&"type".to_owned()));
    assert_eq!(
        schemas["PredictionStatus"]["enum"],
        json!([
            "pending",
            "starting",
            "processing",
            "succeeded",
            "failed",
            "cancelled"
        ])
    );
    assert!(schemas["ErrorId"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("PREDICTION_NOT_CANCELLABLE")));
}

/// A validator for one component schema of the document (OpenAPI 3.1 schemas are JSON Schema 2020-12).
fn validator(schema: Value) -> jsonschema::Validator {
    let doc = spec_value();
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"wanted": schema},
        "$ref": "#/$defs/wanted",
        "components": doc["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap()
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:?}\n{instance:#}"
    );
}

/// The schema of `name`, closed: an answer may carry no top-level field the document does not describe
/// (and must carry every one it marks required).
fn exact(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}"), "unevaluatedProperties": false})
}

#[tokio::test]
async fn real_answers_match_the_schemas() {
    // The webhook host "resolves" to a public address through a test resolver (no DNS query leaves the
    // machine), and the test connector opens nothing that is not loopback.
    let resolver = MapResolver::default();
    resolver.set("example.test", &["93.184.216.34"]);
    let network: (
        Arc<dyn skygate_webhooks::Resolver>,
        Arc<dyn skygate_webhooks::Connector>,
    ) = (Arc::new(resolver), Arc::new(LoopbackOnly::default()));
    let srv = TestServer::start_with_network(|_| {}, Some(network))
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let client = srv.client();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client.request(method, srv.url(path)).header("x-api-key", &k.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };

    let prediction = validator(exact("Prediction"));
    let envelope = validator(exact("ErrorEnvelope"));
    assert!(
        !envelope.is_valid(&json!({"status": false, "response": "x", "error": {}})),
        "the validator accepts anything"
    );
    assert!(
        !envelope.is_valid(&json!({"status": false, "response": "x", "extra": 1,
        "error": {"http_status": 404, "message": "x", "details": "", "error_id": "NOT_FOUND"}}))
    );

    let (s, models) = call(
        reqwest::Method::GET,
        "/v1/models?fields=input_schema,output_schema",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_valid(
        &validator(json!({"type": "array", "items": exact("Model")})),
        &models,
        "GET /v1/models",
    );
    let (s, model) = call(reqwest::Method::GET, "/v1/model/echo", None).await;
    assert_eq!(s, 200);
    assert_valid(&validator(exact("Model")), &model, "GET /v1/model/echo");

    for body in [
        json!({"model": "sky-image", "input": {"prompt": "dunes", "width": 48, "height": 32, "steps": 2, "num_outputs": 2}, "await": true}),
        json!({"model": "echo", "input": {"prompt": "hi"}, "await": true}),
        json!({"model": "echo", "input": {"prompt": "hi"}, "webhook": {"url": "https://example.test/hook", "events": ["completed"]}}),
    ] {
        let (s, p) = call(reqwest::Method::POST, "/v1/predictions", Some(body.clone())).await;
        assert!(s == 200 || s == 201, "{s}: {p}");
        assert_valid(&prediction, &p, &format!("POST /v1/predictions {body}"));
    }
    let (s, list) = call(reqwest::Method::GET, "/v1/predictions?per_page=50", None).await;
    assert_eq!(s, 200);
    assert_valid(&validator(exact("PredictionList")), &list, "GET /v1/predictions");
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();

    let (s, p) = call(
        reqwest::Method::GET,
        &format!("/v1/predictions/{id}/stream"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_valid(&prediction, &p, "GET /v1/predictions/{id}/stream");
    let (s, done) = call(reqwest::Method::DELETE, &format!("/v1/predictions/{id}"), None).await;
    assert_eq!(s, 200);
    assert_valid(&validator(exact("Success")), &done, "DELETE /v1/predictions/{id}");
    let (s, e) = call(reqwest::Method::GET, &format!("/v1/predictions/{id}"), None).await;
    assert_eq!(s, 404);
    assert_valid(&envelope, &e, "404");
    let (s, e) = call(
        reqwest::Method::POST,
        "/v1/predictions",
        Some(json!({"input": {}})),
    )
    .await;
    assert_eq!(s, 422);
    assert_valid(&envelope, &e, "422");

    let health: Value = client
        .get(srv.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&validator(exact("Health")), &health, "GET /healthz");
    srv.stop().await.unwrap();
}

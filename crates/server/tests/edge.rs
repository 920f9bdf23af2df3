//! The edge middleware stack on routes built for the test: panics become an opaque 500 envelope,
//! JSON bodies are checked for size, depth and syntax, and every error is the documented envelope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::Value;
use skygate_server::extract::ApiJson;
use tower::ServiceExt;

#[derive(serde::Deserialize)]
struct Create {
    model: String,
}

fn app() -> Router {
    let routes = Router::new()
        .route(
            "/panic",
            get(|| async {
                let v: Vec<u8> = Vec::new();
                // Index out of bounds: a bug, not a deliberate panic.
                #[allow(clippy::indexing_slicing)]
                let x = v[usize::from(v.is_empty())];
                x.to_string()
            }),
        )
        .route(
            "/create",
            post(|ApiJson(c): ApiJson<Create>| async move { Json(serde_json::json!({"model": c.model})) }),
        );
    skygate_server::api::with_edge_layers(routes, 1024, Duration::from_secs(5))
}

async fn call(req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let res = app().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/create")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn a_panic_is_an_opaque_500_envelope() {
    let (s, v, h) = call(Request::get("/panic").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 500);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(v["error"]["error_id"], "INTERNAL_ERROR");
    let details = v["error"]["details"].as_str().unwrap();
    assert!(details.starts_with("error id "), "{details}");
    assert!(!details.contains("index out of bounds"), "{details}");
}

#[tokio::test]
async fn json_bodies_are_checked() {
    let (s, v, _) = call(post_json(r#"{"model":"echo","unknown":[1,2]}"#)).await;
    assert_eq!((s, &v["model"]), (StatusCode::OK, &Value::from("echo")));

    let (s, v, _) = call(post_json("{nope")).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_JSON"))
    );

    let deep = format!("{{\"model\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    let (s, v, _) = call(post_json(deep)).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_JSON"))
    );

    let (s, v, _) = call(post_json("{}")).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("VALIDATION_ERROR"))
    );
    assert!(v["error"]["details"].as_str().unwrap().contains("model"));

    // Over the limit without Content-Length (a stream): refused while reading.
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let (s, v, _) = call(post_json(Body::from_stream(chunks))).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE"))
    );

    // Over the limit with Content-Length: refused before reading.
    let (s, v, _) = call(post_json(vec![b' '; 4096])).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE"))
    );

    // Binary junk.
    let (s, v, _) = call(post_json(vec![0xff, 0xfe, 0x00])).await;
    assert_eq!(
        (s, v["error"]["error_id"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_JSON"))
    );
}

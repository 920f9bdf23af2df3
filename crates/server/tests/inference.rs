//! The OpenAI-compatible inference routes end to end against an in-process server over real TLS,
//! with real models (SmolLM2-135M Q4_1, all-MiniLM-L6-v2 from `scripts/models.sh`) in real engine
//! sandboxes: chat completions (JSON and SSE), embeddings, warm sandboxes per account, a client
//! that disconnects, every kind of bad input, models whose files are broken, and the same language
//! model through the predictions API.
//!
//! `SKYGATE_TEST_MODELS` names the models folder; without it these tests print `SKIPPED` (and fail
//! under `SKYGATE_TEST_REQUIRE_ALL`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use skygate_core::Mode;
use skygate_server::config::ModelConfig;
use skygate_testkit::{skip, TestServer};

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM: &str = "all-MiniLM-L6-v2";
const LLM: &str = "smol";
const EMB: &str = "minilm";

fn models_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SKYGATE_TEST_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            skip(
                test,
                "SKYGATE_TEST_MODELS is not set (scripts/models.sh fills a models folder)",
            );
            return None;
        }
    };
    if !dir.join(GGUF).exists() || !dir.join(MINILM).exists() {
        skip(
            test,
            &format!("{} lacks the test models (run scripts/models.sh)", dir.display()),
        );
        return None;
    }
    Some(dir)
}

fn engine(backend: &str, path: PathBuf) -> ModelConfig {
    let mut m: ModelConfig = toml::from_str(&format!("backend = \"{backend}\"")).unwrap();
    m.path = Some(path);
    // One thread: the test binary runs two tests at once on CI's two cores, and two engines of two
    // OpenMP threads each would oversubscribe them (llama.cpp's spinning threads then crawl).
    m.threads = Some(1);
    m.context = Some(1024);
    m
}

/// A server with the two test models as `smol` and `minilm`, plus `edit`.
async fn server(dir: &std::path::Path, edit: impl FnOnce(&mut skygate_server::config::Config)) -> TestServer {
    let (llm, emb) = (dir.join(GGUF), dir.join(MINILM));
    TestServer::start_with(move |c| {
        c.models.insert(LLM.into(), engine("llm", llm));
        c.models.insert(EMB.into(), engine("embedding", emb));
        edit(c);
    })
    .await
    .unwrap()
}

/// The usual start: a server with the test models and a live key (`None` when the models are missing).
async fn start(test: &str) -> Option<(TestServer, skygate_testkit::TestKey)> {
    let dir = models_dir(test)?;
    let srv = server(&dir, |_| {}).await;
    let k = srv.new_key(Mode::Live).await.unwrap();
    Some((srv, k))
}

async fn post_raw(srv: &TestServer, path: &str, key: &str, body: &Value) -> reqwest::Response {
    srv.client()
        .post(srv.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
}

async fn post(srv: &TestServer, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let res = post_raw(srv, path, key, body).await;
    let status = res.status();
    assert!(res.headers().contains_key("x-request-id"));
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// A greedy chat completion of one user message.
async fn ask(srv: &TestServer, key: &str, content: &str, max_tokens: u32) -> (StatusCode, Value) {
    post(srv, "/v1/chat/completions", key, &greedy(content, max_tokens)).await
}

fn greedy(content: &str, max_tokens: u32) -> Value {
    json!({"model": LLM, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

/// Reads an SSE body to its end: the `data:` payloads in order.
async fn sse(res: reqwest::Response) -> Vec<String> {
    let text = res.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn chat_completions_json_and_stream_from_a_warm_sandbox() {
    let Some((srv, k)) = start("chat_completions_json_and_stream_from_a_warm_sandbox").await else {
        return;
    };
    let (s, a) = ask(&srv, &k.key, "What is the capital of France?", 24).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(a["model"], LLM);
    let choice = &a["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_owned();
    assert!(text.split_whitespace().count() >= 3, "{text}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let u = &a["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    // The same request streamed, with x-api-key this time: the same text in pieces.
    let mut body = greedy("What is the capital of France?", 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = srv
        .client()
        .post(srv.url("/v1/chat/completions"))
        .header("x-api-key", &k.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse(res).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, text);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], choice["finish_reason"]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], a["usage"]);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    // Without max_tokens, the default length is shortened to the room a long prompt leaves (not a 400).
    let long = json!({"model": LLM, "temperature": 0, "messages": [{"role": "user", "content": "word ".repeat(900)}]});
    let (s, l) = post(&srv, "/v1/chat/completions", &k.key, &long).await;
    assert_eq!(s, 200, "{l}");
    assert!(l["usage"]["total_tokens"].as_u64().unwrap() <= 1024, "{l}");
    // OpenAI's request-limit headers, next to skygate's own.
    let res = post_raw(&srv, "/v1/chat/completions", &k.key, &greedy("Hi", 2)).await;
    let h = res.headers();
    let limit: u64 = h["x-ratelimit-limit-requests"].to_str().unwrap().parse().unwrap();
    let left: u64 = h["x-ratelimit-remaining-requests"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < limit, "{h:?}");
    assert!(h["x-ratelimit-reset-requests"].to_str().unwrap().ends_with('s'));
    assert!(h.contains_key("x-skytells-ratelimit-limit-requests"));
    // Both answers came from one sandbox, loaded once.
    let engines = srv.state.engines().unwrap();
    assert_eq!(engines.engines_started(), 1);

    // Another account gets its own sandbox: never shared.
    let other = srv.new_key(Mode::Live).await.unwrap();
    let (s, b) = ask(&srv, &other.key, "What is the capital of France?", 24).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(engines.engines_started(), 2);
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_generation() {
    let Some((srv, k)) = start("a_client_that_disconnects_stops_the_generation").await else {
        return;
    };
    let mut body = greedy("Write a very long story about a lighthouse keeper.", 900);
    body["stream"] = json!(true);
    let mut res = post_raw(&srv, "/v1/chat/completions", &k.key, &body).await;
    assert_eq!(res.status(), 200);
    let mut got = 0;
    while got < 3 {
        let chunk = res.chunk().await.unwrap().expect("the stream ended early");
        got += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    drop(res);
    // The engine stops within a token and its sandbox goes back to the pool long before 900 tokens
    // could have been generated.
    let engines = srv.state.engines().unwrap().clone();
    let t = Instant::now();
    while engines.engines_idle() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the sandbox was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("released {} ms after the disconnect", t.elapsed().as_millis());
    let (s, a) = ask(&srv, &k.key, "Say hi.", 4).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(engines.engines_started(), 1, "the cancelled sandbox was reused");
}

#[tokio::test]
async fn embeddings_as_floats_and_base64() {
    let Some((srv, k)) = start("embeddings_as_floats_and_base64").await else {
        return;
    };
    let input = json!([
        "The cat sat on the mat.",
        "A feline rested on the rug.",
        "Stock prices fell sharply."
    ]);
    let (s, a) = post(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": EMB, "input": input}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["object"], "list");
    assert_eq!(a["model"], EMB);
    let vecs: Vec<Vec<f32>> = a["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(
                (d["object"].as_str(), d["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            serde_json::from_value(d["embedding"].clone()).unwrap()
        })
        .collect();
    assert_eq!(vecs.len(), 3);
    assert!(vecs.iter().all(|v| v.len() == 384));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(
        dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]) + 0.2,
        "similar sentences are closer"
    );
    assert!(a["usage"]["prompt_tokens"].as_u64().unwrap() > 10);

    let (s, b) = post(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": EMB, "input": input, "encoding_format": "base64", "dimensions": 384}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    for (d, want) in b["data"].as_array().unwrap().iter().zip(&vecs) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().unwrap())
            .unwrap();
        let got: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&got, want);
    }
    // One string and token ids work too.
    let (s, c) = post(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": EMB, "input": "hello"}),
    )
    .await;
    assert_eq!((s, c["data"].as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, c) = post(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": EMB, "input": [[7592, 2088], [7592]]}),
    )
    .await;
    assert_eq!(
        (s, c["data"].as_array().unwrap().len()),
        (StatusCode::OK, 2),
        "{c}"
    );
}

fn assert_openai_error(
    got: &(StatusCode, Value),
    status: u16,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    what: &str,
) {
    assert_eq!(got.0.as_u16(), status, "{what}: {}", got.1);
    let e = &got.1["error"];
    assert_eq!(e["type"], kind, "{what}: {}", got.1);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{what}: {}", got.1);
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{what}: {}", got.1);
    }
}

#[tokio::test]
async fn bad_input_gets_openai_errors_naming_the_parameter() {
    let Some((srv, k)) = start("bad_input_gets_openai_errors_naming_the_parameter").await else {
        return;
    };
    let user = json!([{"role": "user", "content": "hi"}]);
    let chat = |extra: Value| {
        let mut b = json!({"model": LLM, "messages": user, "max_tokens": 4});
        for (key, v) in extra.as_object().unwrap() {
            b[key] = v.clone();
        }
        b
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (json!({"messages": []}), "messages", None),
        (json!({"messages": "hi"}), "messages", None),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
            Some("invalid_value"),
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
            Some("unsupported_parameter"),
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
            None,
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}),
            "messages[0].content[0].type",
            Some("unsupported_parameter"),
        ),
        (json!({"n": 2}), "n", Some("unsupported_parameter")),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
            Some("unsupported_parameter"),
        ),
        (
            json!({"logit_bias": {"42": 10}}),
            "logit_bias",
            Some("unsupported_parameter"),
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
            Some("unsupported_parameter"),
        ),
        (json!({"temperature": 2.5}), "temperature", Some("invalid_value")),
        (json!({"temperature": "hot"}), "temperature", None),
        (json!({"top_p": 0}), "top_p", Some("invalid_value")),
        (
            json!({"presence_penalty": -2.5}),
            "presence_penalty",
            Some("invalid_value"),
        ),
        (
            json!({"frequency_penalty": 3}),
            "frequency_penalty",
            Some("invalid_value"),
        ),
        (json!({"max_tokens": 0}), "max_tokens", Some("invalid_value")),
        (json!({"max_tokens": -5}), "max_tokens", Some("invalid_value")),
        (
            json!({"max_tokens": 5000}),
            "max_tokens",
            Some("context_length_exceeded"),
        ),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop", None),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
            None,
        ),
        (json!({"frobnicate": true}), "frobnicate", None),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(1200)}]}),
            "messages",
            Some("context_length_exceeded"),
        ),
    ];
    for (extra, param, code) in cases {
        let got = post(&srv, "/v1/chat/completions", &k.key, &chat(extra.clone())).await;
        let shown: String = extra.to_string().chars().take(120).collect();
        assert_openai_error(&got, 400, "invalid_request_error", Some(param), code, &shown);
    }
    // Unknown models, models of the wrong kind: 404 model_not_found on both routes.
    let not_found = [
        ("/v1/chat/completions", chat(json!({"model": "nope"}))),
        ("/v1/chat/completions", chat(json!({"model": EMB}))),
        ("/v1/chat/completions", chat(json!({"model": "echo"}))),
        ("/v1/embeddings", json!({"model": LLM, "input": "x"})),
    ];
    for (route, body) in not_found {
        let got = post(&srv, route, &k.key, &body).await;
        let what = format!("{route} {}", body["model"]);
        assert_openai_error(
            &got,
            404,
            "not_found_error",
            Some("model"),
            Some("model_not_found"),
            &what,
        );
    }
    let missing = post(&srv, "/v1/chat/completions", &k.key, &json!({"messages": user})).await;
    assert_openai_error(
        &missing,
        400,
        "invalid_request_error",
        Some("model"),
        None,
        "no model",
    );

    // Embeddings.
    let emb = |input: Value, extra: Value| {
        let mut b = json!({"model": EMB, "input": input});
        for (key, v) in extra.as_object().unwrap() {
            b[key] = v.clone();
        }
        b
    };
    let many: Vec<String> = (0..2049).map(|i| format!("s{i}")).collect();
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (emb(json!([]), json!({})), "input", None),
        (emb(json!(""), json!({})), "input", None),
        (emb(json!(many), json!({})), "input", None),
        (
            emb(json!("word ".repeat(400)), json!({})),
            "input",
            Some("context_length_exceeded"),
        ),
        (emb(json!([[99999999]]), json!({})), "input", None),
        (emb(json!({"a": 1}), json!({})), "input", None),
        (
            emb(json!("x"), json!({"encoding_format": "hex"})),
            "encoding_format",
            Some("invalid_value"),
        ),
        (
            emb(json!("x"), json!({"dimensions": 128})),
            "dimensions",
            Some("unsupported_parameter"),
        ),
    ];
    for (body, param, code) in cases {
        let got = post(&srv, "/v1/embeddings", &k.key, &body).await;
        let shown: String = body.to_string().chars().take(120).collect();
        assert_openai_error(&got, 400, "invalid_request_error", Some(param), code, &shown);
    }

    // Bodies that are not JSON, or not UTF-8.
    for raw in [
        &b"{not json"[..],
        &b"{\"model\": \"smol\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}"[..],
    ] {
        let res = srv
            .client()
            .post(srv.url("/v1/chat/completions"))
            .bearer_auth(&k.key)
            .header("content-type", "application/json")
            .body(raw.to_vec())
            .send()
            .await
            .unwrap();
        let s = res.status();
        let v: Value = res.json().await.unwrap();
        assert_openai_error(&(s, v), 400, "invalid_request_error", None, None, "raw body");
    }

    // Credentials: one identical 401 for every bad one, in OpenAI's shape.
    let a = post(&srv, "/v1/chat/completions", "sk_live_nope", &chat(json!({}))).await;
    let b = post(&srv, "/v1/embeddings", "", &emb(json!("x"), json!({}))).await;
    assert_openai_error(
        &a,
        401,
        "authentication_error",
        None,
        Some("invalid_api_key"),
        "bad key",
    );
    assert_eq!(a.1, b.1);
    // Test keys may not run live-only models.
    let t = srv.new_key(Mode::Test).await.unwrap();
    let denied = post(&srv, "/v1/chat/completions", &t.key, &chat(json!({}))).await;
    assert_openai_error(&denied, 403, "permission_error", None, None, "test key");

    // None of it left a sandbox running, and the model still answers.
    let engines = srv.state.engines().unwrap();
    let (s, ok) = post(&srv, "/v1/chat/completions", &k.key, &chat(json!({}))).await;
    assert_eq!(s, 200, "{ok}");
    assert!(
        engines.engines_started() <= 2,
        "{} sandboxes",
        engines.engines_started()
    );
}

#[tokio::test]
async fn broken_model_files_are_listed_unavailable_and_the_rest_serve() {
    let Some(dir) = models_dir("broken_model_files_are_listed_unavailable_and_the_rest_serve") else {
        return;
    };
    let junk = tempfile::tempdir().unwrap();
    let whole = std::fs::read(dir.join(GGUF)).unwrap();
    std::fs::write(junk.path().join("cut.gguf"), &whole[..whole.len() / 3]).unwrap();
    std::fs::write(junk.path().join("junk.gguf"), b"this is not a model").unwrap();
    let (cut, bad) = (junk.path().join("cut.gguf"), junk.path().join("junk.gguf"));
    let minilm = dir.join(MINILM);
    // Also a model found with no configuration in <data_dir>/models/.
    let srv = server(&dir, move |c| {
        c.models.insert("cut".into(), engine("llm", cut));
        c.models.insert("junk".into(), engine("llm", bad));
        let found = c.data_dir.join("models");
        std::fs::create_dir_all(&found).unwrap();
        std::os::unix::fs::symlink(minilm, found.join("Found-MiniLM")).unwrap();
    })
    .await;
    let k = srv.new_key(Mode::Live).await.unwrap();
    let res = srv
        .client()
        .get(srv.url("/v1/models"))
        .header("x-api-key", &k.key)
        .send()
        .await
        .unwrap();
    let models: Value = res.json().await.unwrap();
    let find = |slug: &str| -> Value {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("{slug} missing: {models}"))
    };
    let smol = find(LLM);
    assert_eq!(
        (smol["type"].as_str(), smol["status"].as_str()),
        (Some("text"), Some("operational"))
    );
    assert_eq!(smol["context_length"], 1024);
    assert_eq!(smol["metadata"]["openai_compatible"], true);
    let found = find("found-minilm");
    assert_eq!(
        (found["type"].as_str(), found["status"].as_str()),
        (Some("embedding"), Some("operational"))
    );
    assert_eq!(
        (
            found["context_length"].as_u64(),
            found["metadata"]["dimensions"].as_u64()
        ),
        (Some(256), Some(384))
    );
    for slug in ["cut", "junk"] {
        assert_eq!(find(slug)["status"], "unavailable", "{slug}");
        let got = post(
            &srv,
            "/v1/chat/completions",
            &k.key,
            &json!({"model": slug, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_openai_error(&got, 503, "server_error", None, None, slug);
    }
    let (s, a) = ask(&srv, &k.key, "Hi", 3).await;
    assert_eq!(s, 200, "{a}");
    let (s, e) = post(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": "found-minilm", "input": "x"}),
    )
    .await;
    assert_eq!(s, 200, "{e}");
}

#[tokio::test]
async fn the_language_model_through_the_predictions_api() {
    let Some((srv, k)) = start("the_language_model_through_the_predictions_api").await else {
        return;
    };
    let (s, chat) = ask(&srv, &k.key, "What is the capital of France?", 16).await;
    assert_eq!(s, 200, "{chat}");
    let (s, p) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": LLM, "input": {"prompt": "What is the capital of France?", "max_tokens": 16, "temperature": 0}, "await": true}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["status"], "succeeded", "{p}");
    assert_eq!(p["output"], chat["choices"][0]["message"]["content"]);
    // An embedding model is not run as a prediction, and a bad input is refused up front.
    let (s, e) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": EMB, "input": {"prompt": "x"}}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": LLM, "input": {"prompt": "x", "temperature": 9}}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
}

#[tokio::test]
async fn runs_are_bounded_and_waiters_are_served_round_robin_across_accounts() {
    let Some(dir) = models_dir("runs_are_bounded_and_waiters_are_served_round_robin_across_accounts") else {
        return;
    };
    let srv = server(&dir, |c| {
        c.sandbox.engine_runs = 1;
        c.sandbox.engine_streams = 1;
        c.sandbox.engine_queue = 3;
    })
    .await;
    let (a, b) = (
        srv.new_key(Mode::Live).await.unwrap(),
        srv.new_key(Mode::Live).await.unwrap(),
    );
    let srv = std::sync::Arc::new(srv);
    let t0 = Instant::now();
    let call = |key: String, max: u32| {
        let srv = srv.clone();
        tokio::spawn(async move {
            let got = ask(&srv, &key, "Tell me about the sea.", max).await;
            (got, t0.elapsed())
        })
    };
    // a's three requests queue up behind the one run; then b's.
    let mut a_runs = Vec::new();
    let engines = srv.state.engines().unwrap().clone();
    for _ in 0..3 {
        a_runs.push(call(a.key.clone(), 48));
        let t = Instant::now();
        while engines.engine_load().0 + engines.engine_load().1 < a_runs.len() {
            assert!(t.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let b_run = call(b.key.clone(), 8);
    let t = Instant::now();
    while engines.engine_load().1 < 3 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The queue is full: one more is refused at once, in OpenAI's shape.
    let busy = ask(&srv, &b.key, "hi", 2).await;
    assert_openai_error(&busy, 503, "server_error", None, None, "busy");
    assert!(engines.engine_load().0 <= 1);
    let (b_got, b_done) = b_run.await.unwrap();
    assert_eq!(b_got.0, 200, "{}", b_got.1);
    let mut a_done = Vec::new();
    for r in a_runs {
        let (got, at) = r.await.unwrap();
        assert_eq!(got.0, 200, "{}", got.1);
        a_done.push(at);
    }
    // Round robin: b went second in line, before a's last request (not after all of a's).
    assert!(b_done < a_done[2], "b at {b_done:?}, a at {a_done:?}");
    assert_eq!(engines.engine_load(), (0, 0));
}

/// The events of an SSE body, in order: each event's name and its JSON data.
async fn sse_named(res: reqwest::Response) -> Vec<(String, Value)> {
    let text = res.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|ev| {
            let name = ev.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn a_language_model_prediction_streams_its_output_as_it_is_generated() {
    let Some((srv, k)) = start("a_language_model_prediction_streams_its_output_as_it_is_generated").await
    else {
        return;
    };
    let prompt = "Write a short story about a lighthouse keeper.";
    let input = json!({"prompt": prompt, "max_tokens": 48, "temperature": 0});
    let (s, p) = post(
        &srv,
        "/v1/predictions",
        &k.key,
        &json!({"model": LLM, "input": input}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    let res = srv
        .client()
        .get(srv.url(&format!("/v1/predictions/{id}/stream")))
        .bearer_auth(&k.key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = sse_named(res).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{names:?}");
    assert_eq!(done["status"], "succeeded", "{done}");
    let text = done["output"].as_str().unwrap().to_owned();
    assert!(text.split_whitespace().count() >= 10, "{text}");

    // Output events as the text grew, each with the output so far and only the new text.
    let outputs: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "output")
        .map(|(_, d)| d)
        .collect();
    assert!(outputs.len() >= 3, "{names:?}");
    let mut streamed = String::new();
    for o in &outputs {
        assert_eq!(o["id"], id.as_str());
        assert!(o.get("reset").is_none(), "{o}");
        let delta = o["delta"].as_str().unwrap();
        assert!(!delta.is_empty(), "{o}");
        streamed.push_str(delta);
        assert_eq!(o["output"], streamed.as_str(), "the output so far");
    }
    assert_eq!(streamed, text);
    // They arrived while it ran: before the terminal status was announced.
    let first_output = names.iter().position(|n| *n == "output").unwrap();
    let finished = events
        .iter()
        .position(|(n, d)| n == "status" && d["status"] == "succeeded")
        .unwrap();
    let while_running = names[first_output..finished]
        .iter()
        .filter(|n| **n == "output")
        .count();
    assert!(while_running >= 2, "{names:?}");

    // The stored prediction holds the final text; greedy decoding gives the chat route's answer.
    let got = srv
        .client()
        .get(srv.url(&format!("/v1/predictions/{id}")))
        .bearer_auth(&k.key)
        .send()
        .await
        .unwrap();
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["output"], text.as_str());
    let (s, chat) = ask(&srv, &k.key, prompt, 48).await;
    assert_eq!(s, 200, "{chat}");
    assert_eq!(chat["choices"][0]["message"]["content"], text.as_str());
}

/// The `x-ratelimit-*-tokens` headers of an answer: (limit, remaining).
fn token_headers(res: &reqwest::Response) -> (u64, u64) {
    let h = |name: &str| -> u64 {
        res.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(res
        .headers()
        .get("x-ratelimit-reset-tokens")
        .is_some_and(|v| v.to_str().unwrap().ends_with('s')));
    (h("x-ratelimit-limit-tokens"), h("x-ratelimit-remaining-tokens"))
}

/// The account's usage records, once `n` are there (they are written as a run ends).
async fn usage_records(
    srv: &TestServer,
    k: &skygate_testkit::TestKey,
    n: usize,
) -> Vec<skygate_core::predictions::UsageRecord> {
    let t = Instant::now();
    loop {
        let u = srv
            .store
            .usage(&k.account, skygate_core::Timestamp::from_micros(0), 100)
            .await
            .unwrap();
        if u.len() >= n || t.elapsed() > Duration::from_secs(10) {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tokens_per_minute_are_taken_up_front_and_settled_after_with_sealed_usage() {
    let test = "tokens_per_minute_are_taken_up_front_and_settled_after_with_sealed_usage";
    let Some(dir) = models_dir(test) else {
        return;
    };
    const TPM: u64 = 600;
    let srv = server(&dir, |c| {
        let free = c.limits.tiers.get_mut("free").unwrap();
        free.tokens_per_minute = Some(TPM as u32);
    })
    .await;
    let k = srv.new_key(Mode::Live).await.unwrap();

    // Admitted for its prompt and all 400 tokens it allows; it stops at the first space.
    let mut body = greedy("Write a long story about the sea.", 400);
    body["stop"] = json!([" "]);
    let res = post_raw(&srv, "/v1/chat/completions", &k.key, &body).await;
    assert_eq!(res.status(), 200);
    let (limit, after_first) = token_headers(&res);
    assert_eq!(limit, TPM);
    assert!(after_first <= TPM - 400, "the estimate was taken: {after_first}");
    let a: Value = res.json().await.unwrap();
    let used = a["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 100, "{a}");

    // The record: tokens counted, sealed, no text.
    let records = usage_records(&srv, &k, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!((r.model.as_str(), r.unit.as_str()), (LLM, "tokens"));
    let t = r.tokens.unwrap();
    assert_eq!(u64::from(t.prompt), a["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(
        u64::from(t.completion),
        a["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(r.status, skygate_proto::PredictionStatus::Succeeded);

    // What it did not use came back: the next answer shows the limit less what was really used (and
    // the new request's own estimate), not less the first estimate.
    let res = post_raw(&srv, "/v1/chat/completions", &k.key, &greedy("Hi", 1)).await;
    assert_eq!(res.status(), 200);
    let (_, after_second) = token_headers(&res);
    let second: Value = res.json().await.unwrap();
    let second_estimate = 8; // "Hi": 1 + 4 per message + 2, and 1 to generate
    assert!(
        after_second + 1 >= TPM - used - second_estimate,
        "refunded: {after_second} left after using {used}"
    );
    assert!(after_second <= TPM - second_estimate, "{after_second}");
    assert_eq!(second["usage"]["completion_tokens"], 1);

    // More than the limit could ever allow: refused at once, nothing run, nothing recorded.
    let big = ask(&srv, &k.key, "Hello", 700).await;
    assert_openai_error(
        &big,
        429,
        "rate_limit_error",
        None,
        Some("rate_limit_exceeded"),
        "too large",
    );
    assert!(
        big.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request too large"),
        "{}",
        big.1
    );

    // Embeddings count tokens too, with the same headers and records.
    let res = post_raw(
        &srv,
        "/v1/embeddings",
        &k.key,
        &json!({"model": EMB, "input": ["the sea", "a story"]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let (limit, _) = token_headers(&res);
    assert_eq!(limit, TPM);
    let e: Value = res.json().await.unwrap();
    let records = usage_records(&srv, &k, 3).await;
    assert_eq!(records.len(), 3, "{records:?}");
    let emb = records.iter().find(|r| r.model == EMB).unwrap();
    assert_eq!(
        u64::from(emb.tokens.unwrap().prompt),
        e["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(emb.tokens.unwrap().completion, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        usage_records(&srv, &k, 3).await.len(),
        3,
        "the refused request left no record"
    );
    srv.stop().await.unwrap();
}

//! WAF rules through the API: the default rules on the fast path and on routed requests, before
//! authentication; operator rules on client address, method, path and JSON body; `X-Forwarded-For`
//! believed only from trusted proxies; the per-period audit summary; and the defaults switched off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use skygate_core::Mode;
use skygate_server::config::Config;
use skygate_server::waf::RuleConfig;
use skygate_testkit::{TestKey, TestServer};

fn rule(v: Value) -> RuleConfig {
    serde_json::from_value(v).unwrap()
}

async fn call(
    srv: &TestServer,
    k: &TestKey,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = srv
        .client()
        .request(method, srv.url(path))
        .header("x-api-key", &k.key);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn assert_blocked(got: &(u16, Value), rule: &str) {
    assert_eq!(got.0, 403, "{}", got.1);
    assert_eq!(got.1["error"]["error_id"], "REQUEST_BLOCKED");
    assert_eq!(got.1["error"]["details"], format!("blocked by WAF rule {rule}"));
}

fn create_body(prompt: &str) -> Option<Value> {
    Some(json!({"model": "echo", "input": {"prompt": prompt}}))
}

#[tokio::test]
async fn default_rules_block_scanners_and_traversal_before_auth_on_every_path() {
    let srv = TestServer::start().await.unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let get = reqwest::Method::GET;
    let scanner = [("user-agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")];
    // The fast path (/v1/models), routed reads and a create: all blocked, whatever the key.
    for path in ["/v1/models", "/v1/models/echo", "/v1/predictions", "/healthz"] {
        assert_blocked(
            &call(&srv, &k, get.clone(), path, &scanner, None).await,
            "default.scanner-user-agent",
        );
    }
    let post = call(
        &srv,
        &k,
        reqwest::Method::POST,
        "/v1/predictions",
        &scanner,
        create_body("hi"),
    )
    .await;
    assert_blocked(&post, "default.scanner-user-agent");
    let bad_key = TestKey {
        key: "sk_live_nonsense".into(),
        ..k.clone()
    };
    assert_blocked(
        &call(&srv, &bad_key, get.clone(), "/v1/models", &scanner, None).await,
        "default.scanner-user-agent",
    );
    assert_blocked(
        &call(
            &srv,
            &k,
            get.clone(),
            "/v1/models/..%2f..%2fetc%2fpasswd",
            &[],
            None,
        )
        .await,
        "default.path-traversal",
    );
    assert_blocked(
        &call(&srv, &k, get.clone(), "/.env", &[], None).await,
        "default.probe-path",
    );
    // Ordinary traffic, including a prompt that mentions "../", passes.
    let sdk = [("user-agent", "skytells-python/1.0.0")];
    assert_eq!(call(&srv, &k, get.clone(), "/v1/models", &sdk, None).await.0, 200);
    let ok = call(
        &srv,
        &k,
        reqwest::Method::POST,
        "/v1/predictions",
        &sdk,
        create_body("explain ../ in unix"),
    )
    .await;
    assert_eq!(ok.0, 201, "{}", ok.1);

    // One audit entry sums the period up; the next period starts from zero.
    let blocked = skygate_server::screen::audit_summary(&srv.state).await.unwrap();
    assert_eq!(blocked, 8);
    let audit = srv.store.audit_page(0, 1000).await.unwrap();
    let summaries: Vec<_> = audit.iter().filter(|e| e.entry.action == "waf.summary").collect();
    assert_eq!(summaries.len(), 1);
    let detail = &summaries[0].entry.detail;
    assert!(
        detail.contains("default.scanner-user-agent: 6 blocked"),
        "{detail}"
    );
    assert!(detail.contains("default.path-traversal: 1 blocked"), "{detail}");
    assert_eq!(
        skygate_server::screen::audit_summary(&srv.state).await.unwrap(),
        0
    );
    assert_eq!(srv.store.audit_page(0, 1000).await.unwrap().len(), audit.len());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn operator_rules_match_address_method_path_and_body() {
    let srv = TestServer::start_with(|c: &mut Config| {
        c.waf.rules = vec![
            rule(
                json!({"id": "no-creates-from-here", "action": "block", "ip_deny": ["127.0.0.0/8"],
                        "methods": ["POST"], "path": "/v1/predictions"}),
            ),
            rule(json!({"id": "no-drop", "action": "block", "body": "(?i)drop\\s+tables"})),
            rule(json!({"id": "watch-cancels", "action": "log", "path": "/v1/predictions/*/cancel"})),
        ];
    })
    .await
    .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let post = reqwest::Method::POST;
    assert_blocked(
        &call(&srv, &k, post.clone(), "/v1/predictions", &[], create_body("hi")).await,
        "no-creates-from-here",
    );
    // /v1/predict is another path: the address rule does not apply, the body rule does.
    assert_blocked(
        &call(
            &srv,
            &k,
            post.clone(),
            "/v1/predict",
            &[],
            create_body("please DROP   tables"),
        )
        .await,
        "no-drop",
    );
    let ok = call(&srv, &k, post.clone(), "/v1/predict", &[], create_body("hello")).await;
    assert_eq!(ok.0, 201, "{}", ok.1);
    let id = ok.1["id"].as_str().unwrap().to_owned();
    // A log rule lets the request through (and counts it).
    let cancel = call(&srv, &k, post, &format!("/v1/predictions/{id}/cancel"), &[], None).await;
    assert!(cancel.0 == 200 || cancel.0 == 409, "{}", cancel.1);
    let summary = srv.state.waf().take_summary();
    assert!(
        summary
            .iter()
            .any(|(r, _, logged)| &**r == "watch-cancels" && *logged == 1),
        "{summary:?}"
    );
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let deny = |c: &mut Config| {
        c.waf.rules = vec![rule(
            json!({"id": "bad-net", "action": "block", "ip_deny": ["198.51.100.0/24"]}),
        )];
    };
    let behind_proxy = TestServer::start_with(|c| {
        deny(c);
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    .unwrap();
    let direct = TestServer::start_with(deny).await.unwrap();
    let get = reqwest::Method::GET;
    let xff = [("x-forwarded-for", "198.51.100.7")];
    let spoofed = [("x-forwarded-for", "198.51.100.7, 203.0.113.4")];
    let k = behind_proxy.new_key(Mode::Live).await.unwrap();
    assert_blocked(
        &call(&behind_proxy, &k, get.clone(), "/v1/models", &xff, None).await,
        "bad-net",
    );
    assert_blocked(
        &call(&behind_proxy, &k, get.clone(), "/v1/predictions", &xff, None).await,
        "bad-net",
    );
    // The right-most untrusted entry is the client; what the client put left of it is not believed.
    assert_eq!(
        call(&behind_proxy, &k, get.clone(), "/v1/models", &spoofed, None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&behind_proxy, &k, get.clone(), "/v1/models", &[], None)
            .await
            .0,
        200
    );
    // Without trusted proxies the header is the client's own claim: ignored.
    let k2 = direct.new_key(Mode::Live).await.unwrap();
    assert_eq!(
        call(&direct, &k2, get.clone(), "/v1/models", &xff, None).await.0,
        200
    );
    assert_eq!(
        call(&direct, &k2, get, "/v1/predictions", &xff, None).await.0,
        200
    );
    behind_proxy.stop().await.unwrap();
    direct.stop().await.unwrap();
}

#[tokio::test]
async fn default_rules_can_be_switched_off_and_bad_rules_stop_the_start() {
    let srv = TestServer::start_with(|c| c.waf.default_rules = false)
        .await
        .unwrap();
    let k = srv.new_key(Mode::Live).await.unwrap();
    let got = call(
        &srv,
        &k,
        reqwest::Method::GET,
        "/v1/models",
        &[("user-agent", "nikto/2.5")],
        None,
    )
    .await;
    assert_eq!(got.0, 200);
    srv.stop().await.unwrap();

    let mut c = Config::default();
    c.waf.rules = vec![rule(
        json!({"id": "broken", "action": "block", "body": "(unclosed"}),
    )];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("waf.rules[broken].body"), "{e}");
    let mut c = Config::default();
    c.server.trusted_proxies = vec!["not-an-ip".into()];
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("server.trusted_proxies[0]"));
}

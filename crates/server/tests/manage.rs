//! The management API over real TLS: access-token authentication (Bearer), scope checks, tenant
//! scoping, the live-key policy before and after two-factor enrolment, key revocation, the account's
//! audit events, and token revocation taking effect on the next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use skygate_core::{Account, Tier, Timestamp};
use skygate_server::config::AccountsConfig;
use skygate_server::{admin, second_factor};
use skygate_testkit::api::{assert_error, read};
use skygate_testkit::TestServer;

async fn call(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = srv
        .client()
        .request(method, srv.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", "manage-test/1");
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

async fn token(srv: &TestServer, acct: &Account, scopes: &str) -> String {
    admin::create_token(
        &srv.store,
        srv.hasher.as_ref(),
        &AccountsConfig::default(),
        acct.id.as_str(),
        None,
        scopes,
        None,
        Timestamp::now(),
    )
    .await
    .unwrap()
    .secret
    .expose()
    .to_owned()
}

const ALL: &str = "projects.read,projects.write,keys.read,keys.write,account.read,audit.read";

#[tokio::test]
async fn management_api_scopes_tenancy_policy_and_revocation() {
    let srv = TestServer::start().await.unwrap();
    let now = Timestamp::now();
    let acct = admin::create_account(&srv.store, "ops@example.com", Tier::Pro, now)
        .await
        .unwrap();
    let other = admin::create_account(&srv.store, "other@example.com", Tier::Free, now)
        .await
        .unwrap();
    let tok = token(&srv, &acct, ALL).await;

    let (s, v) = call(&srv, Method::GET, "/v1/account", &tok, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["email"].as_str(), v["tier"].as_str(), v["two_factor"].as_bool()),
        (Some("ops@example.com"), Some("pro"), Some(false))
    );

    // Authentication failures: one body for junk, unknown and revoked tokens.
    let junk = call(&srv, Method::GET, "/v1/account", "sk_pat_nope", None).await;
    assert_error(&junk, 401, "UNAUTHORIZED");
    let unknown = call(
        &srv,
        Method::GET,
        "/v1/account",
        &format!("sk_pat_{}", "0".repeat(64)),
        None,
    )
    .await;
    assert_eq!(unknown, junk);
    // An API key is not an access token.
    let k = srv.new_key(skygate_core::Mode::Test).await.unwrap();
    assert_eq!(call(&srv, Method::GET, "/v1/account", &k.key, None).await, junk);

    // A token without the route's scope: 403 naming it.
    let narrow = token(&srv, &acct, "projects.read").await;
    let r = call(&srv, Method::GET, "/v1/account", &narrow, None).await;
    assert_error(&r, 403, "FORBIDDEN");
    assert!(
        r.1["error"]["details"].as_str().unwrap().contains("account.read"),
        "{}",
        r.1
    );
    let r = call(
        &srv,
        Method::POST,
        "/v1/projects",
        &narrow,
        Some(json!({"name": "x"})),
    )
    .await;
    assert!(r.1["error"]["details"]
        .as_str()
        .unwrap()
        .contains("projects.write"));

    // Projects.
    let (s, p) = call(
        &srv,
        Method::POST,
        "/v1/projects",
        &tok,
        Some(json!({"name": "Nightingale"})),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    let (_, list) = call(&srv, Method::GET, "/v1/projects", &narrow, None).await;
    assert_eq!(list["data"][0]["name"], "Nightingale");
    let r = call(
        &srv,
        Method::POST,
        "/v1/projects",
        &tok,
        Some(json!({"name": ""})),
    )
    .await;
    assert_error(&r, 422, "VALIDATION_ERROR");
    let r = call(&srv, Method::POST, "/v1/projects", &tok, Some(json!({"nom": 1}))).await;
    assert_error(&r, 422, "VALIDATION_ERROR");

    // A live key needs 2FA; a test key does not.
    let keys = format!("/v1/projects/{pid}/keys");
    let r = call(&srv, Method::POST, &keys, &tok, Some(json!({}))).await;
    assert_error(&r, 403, "FORBIDDEN");
    assert_eq!(r.1["error"]["details"], "enable two-factor authentication first");
    let (s, test_key) = call(
        &srv,
        Method::POST,
        &keys,
        &tok,
        Some(json!({"mode": "test", "name": "ci"})),
    )
    .await;
    assert_eq!(s, 201, "{test_key}");
    assert!(test_key["key"].as_str().unwrap().starts_with("sk_test_"));
    let r = call(&srv, Method::POST, &keys, &tok, Some(json!({"mode": "prod"}))).await;
    assert_error(&r, 422, "VALIDATION_ERROR");
    let r = call(
        &srv,
        Method::POST,
        &keys,
        &tok,
        Some(json!({"mode": "test", "expires_in": "soon"})),
    )
    .await;
    assert_error(&r, 422, "VALIDATION_ERROR");

    // Enrol and confirm 2FA (codes computed from the secret, as an app would): live keys are allowed.
    let e = second_factor::begin(&srv.store, &acct, now).await.unwrap();
    let code = e.secret.code_at(u64::try_from(now.as_unix_seconds()).unwrap(), 6);
    let actor = skygate_server::credentials::Actor::operator();
    second_factor::confirm(&srv.store, srv.hasher.as_ref(), &actor, &acct, &code, now)
        .await
        .unwrap();
    let (s, live) = call(
        &srv,
        Method::POST,
        &keys,
        &tok,
        Some(json!({"name": "prod", "expires_in": "30d"})),
    )
    .await;
    assert_eq!(s, 201, "{live}");
    let live_key = live["key"].as_str().unwrap().to_owned();
    assert!(live_key.starts_with("sk_live_"));
    assert!(live["info"]["expires_at"].is_string());
    let (_, listed) = call(&srv, Method::GET, &keys, &tok, None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&live_key), "listing shows no secret");
    let models = srv
        .client()
        .get(srv.url("/v1/models"))
        .header("x-api-key", &live_key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);

    // Another account's project and key: 404, like unknown ones.
    let theirs = token(&srv, &other, ALL).await;
    assert_error(
        &call(&srv, Method::GET, &keys, &theirs, None).await,
        404,
        "NOT_FOUND",
    );
    let kid = live["info"]["id"].as_str().unwrap().to_owned();
    let del = format!("/v1/keys/{kid}");
    assert_error(
        &call(&srv, Method::DELETE, &del, &theirs, None).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &call(&srv, Method::GET, "/v1/projects/proj_bogus/keys", &tok, None).await,
        404,
        "NOT_FOUND",
    );

    // Revoke: the key stops working at once.
    let (s, v) = call(&srv, Method::DELETE, &del, &tok, None).await;
    assert_eq!((s.as_u16(), v["success"].as_bool()), (200, Some(true)), "{v}");
    let models = srv
        .client()
        .get(srv.url("/v1/models"))
        .header("x-api-key", &live_key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);

    // The account's security events, newest first, with the client; nothing of the other account's.
    let (s, log) = call(&srv, Method::GET, "/v1/audit?limit=50", &tok, None).await;
    assert_eq!(s, 200, "{log}");
    let actions: Vec<_> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for want in [
        "keys.revoke",
        "keys.create",
        "2fa.enable",
        "projects.create",
        "tokens.create",
    ] {
        assert!(
            actions.contains(&want.to_owned()),
            "{want} missing from {actions:?}"
        );
    }
    let revoke = &log["data"][0];
    assert_eq!(
        (
            revoke["action"].as_str(),
            revoke["ip"].as_str(),
            revoke["user_agent"].as_str()
        ),
        (Some("keys.revoke"), Some("127.0.0.1"), Some("manage-test/1"))
    );
    assert!(!log.to_string().contains(&live_key) && !log.to_string().contains(&tok));
    assert_error(
        &call(&srv, Method::GET, "/v1/audit?limit=0", &tok, None).await,
        400,
        "INVALID_PARAMETER",
    );

    // Revoking the token: the next request is refused.
    let tokens = srv.store.list_access_tokens(&acct.id).await.unwrap();
    for t in &tokens {
        admin::revoke_token(&srv.store, acct.id.as_str(), t.id.as_str(), Timestamp::now())
            .await
            .unwrap();
    }
    assert_eq!(call(&srv, Method::GET, "/v1/account", &tok, None).await, junk);
    srv.stop().await.unwrap();
}

/// An access token with the `inference` scope calls the predictions API for its account's projects:
/// the only project by default, another named in `x-skytells-project`; never another account's, never
/// without the scope, and not after its revocation.
#[tokio::test]
async fn inference_tokens_call_the_predictions_api_for_their_accounts_projects() {
    let srv = TestServer::start().await.unwrap();
    let now = Timestamp::now();
    let acct = admin::create_account(&srv.store, "infer@example.com", Tier::Pro, now)
        .await
        .unwrap();
    let tok = token(&srv, &acct, "inference").await;
    let narrow = token(&srv, &acct, "projects.read").await;
    let create = |t: &str, project: Option<&str>| {
        let mut req = srv
            .client()
            .post(srv.url("/v1/predictions"))
            .header("authorization", format!("Bearer {t}"))
            .json(&json!({"model": "echo", "input": {"prompt": "hi"}, "await": true}));
        if let Some(p) = project {
            req = req.header("x-skytells-project", p);
        }
        async move { read(req.send().await.unwrap()).await }
    };
    // No project yet.
    assert_error(&create(&tok, None).await, 403, "FORBIDDEN");
    let first = admin::create_project(&srv.store, acct.id.as_str(), "first", now)
        .await
        .unwrap();
    let (s, p) = create(&tok, None).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["status"].as_str(), p["output"].as_str()),
        (Some("succeeded"), Some("hi"))
    );
    // The prediction belongs to the project: its live API key sees it; the token reads it back too.
    let key = srv
        .key_in(&acct.id, &first.id, skygate_core::Mode::Live, None)
        .await
        .unwrap();
    let path = format!("/v1/predictions/{}", p["id"].as_str().unwrap());
    let (s, seen) = call(&srv, Method::GET, &path, &key.key, None).await;
    assert_eq!((s.as_u16(), &seen["id"]), (200, &p["id"]), "{seen}");
    let (s, _) = call(&srv, Method::GET, &path, &tok, None).await;
    assert_eq!(s, 200);
    // Rate headers are kept for the token as for a key.
    let r = srv
        .client()
        .get(srv.url("/v1/models"))
        .header("authorization", format!("Bearer {tok}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .contains_key("x-skytells-ratelimit-remaining-requests"));

    // Without the scope: 403 naming it.
    let r = create(&narrow, None).await;
    assert_error(&r, 403, "FORBIDDEN");
    assert!(
        r.1["error"]["details"].as_str().unwrap().contains("inference"),
        "{}",
        r.1
    );

    // Two projects: the header is needed, and picks one of the account's own.
    let second = admin::create_project(&srv.store, acct.id.as_str(), "second", now)
        .await
        .unwrap();
    assert_error(&create(&tok, None).await, 422, "VALIDATION_ERROR");
    let (s, p2) = create(&tok, Some(second.id.as_str())).await;
    assert_eq!(s, 200, "{p2}");
    let path2 = format!("/v1/predictions/{}", p2["id"].as_str().unwrap());
    assert_eq!(call(&srv, Method::GET, &path2, &key.key, None).await.0, 404);
    let other = srv.new_key(skygate_core::Mode::Live).await.unwrap();
    for bad in [other.project.as_str(), "proj_nope", ""] {
        assert_error(&create(&tok, Some(bad)).await, 403, "FORBIDDEN");
    }

    // Revoked: refused on the next request with the one 401 body.
    for t in srv.store.list_access_tokens(&acct.id).await.unwrap() {
        admin::revoke_token(&srv.store, "infer@example.com", t.id.as_str(), Timestamp::now())
            .await
            .unwrap();
    }
    assert_error(&create(&tok, Some(first.id.as_str())).await, 401, "UNAUTHORIZED");
    srv.stop().await.unwrap();
}

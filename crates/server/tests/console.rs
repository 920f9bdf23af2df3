//! The console over real TLS, as a browser without JavaScript would use it (cookies handled by hand,
//! redirects not followed): password setup from a single-use link, login, the second factor, logout,
//! the Security page, live-key policy, session rotation, and every bad input the issue names — wrong
//! CSRF token, missing or foreign Origin, expired session, reused setup link, wrong/old/replayed TOTP
//! code, exhausted recovery codes, login brute force — each with its status and message, audited,
//! never a 500, and never a hint whether an email exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use skygate_core::session::SetupPurpose;
use skygate_core::{Account, Tier, Timestamp};
use skygate_server::admin;
use skygate_server::console::setup::issue_link;
use skygate_testkit::TestServer;

const PASSWORD: &str = "lighthouse-at-dusk-42";

struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn csrf(&self) -> String {
        let re = regex::Regex::new(r#"name="csrf" value="([0-9a-f]{64})""#).unwrap();
        re.captures(&self.body)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))[1]
            .to_owned()
    }

    fn expect(&self, status: u16, text: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert!(self.body.contains(text), "expected {text:?} in {}", self.body);
    }
}

impl Browser {
    fn new(srv: &TestServer) -> Browser {
        let ca = reqwest::Certificate::from_pem(&srv.ca_pem).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Browser {
            client,
            base: srv.url(""),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, res: reqwest::Response) -> Page {
        for c in res.headers().get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.text().await.unwrap();
        assert_ne!(status, 500, "{body}");
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.finish(res).await
    }

    /// A form POST with our Origin (`origin: None` sends none, `Some(o)` sends `o`).
    async fn post_from(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "console-test/1")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let res = req.send().await.unwrap();
        self.finish(res).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.post_from(path, fields, Some(&origin)).await
    }

    async fn login(&mut self, email: &str, password: &str) -> Page {
        let csrf = self.get("/console/login").await.csrf();
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("email", email), ("password", password)],
        )
        .await
    }

    async fn csrf_of(&mut self, path: &str) -> String {
        let p = self.get(path).await;
        assert_eq!(p.status, 200, "{}", p.body);
        p.csrf()
    }
}

async fn account_with_password(srv: &TestServer, email: &str) -> Account {
    let acct = admin::create_account(&srv.store, email, Tier::Free, Timestamp::now())
        .await
        .unwrap();
    let link = issue_link(
        &srv.store,
        srv.hasher.as_ref(),
        &srv.url(""),
        &acct,
        SetupPurpose::Setup,
        Timestamp::now(),
    )
    .await
    .unwrap();
    let mut b = Browser::new(srv);
    let path = link.strip_prefix(&srv.url("")).unwrap().to_owned();
    let form = b.get(&path).await;
    let token = path.rsplit('=').next().unwrap().to_owned();
    let done = b
        .post(
            "/console/setup",
            &[
                ("csrf", &form.csrf()),
                ("token", &token),
                ("password", PASSWORD),
                ("password_again", PASSWORD),
            ],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    acct
}

async fn actions(srv: &TestServer, acct: &Account) -> Vec<String> {
    srv.store
        .account_audit(&acct.id, i64::MAX, 200)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.entry.action)
        .collect()
}

/// The `console.refused` entries of the whole log: (actor, target, detail, ip).
async fn refusals(srv: &TestServer) -> Vec<(String, String, String, String)> {
    srv.store
        .audit_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.entry.action == "console.refused")
        .map(|e| (e.entry.actor, e.entry.target, e.entry.detail, e.entry.ip))
        .collect()
}

fn code_now(secret: &skygate_core::totp::TotpSecret, offset_steps: i64) -> String {
    let secs = Timestamp::now().as_unix_seconds() + offset_steps * 30;
    secret.code_at(u64::try_from(secs).unwrap(), 6).to_string()
}

#[tokio::test]
async fn setup_link_password_policy_and_reuse() {
    let srv = TestServer::start().await.unwrap();
    let acct = admin::create_account(&srv.store, "dana@example.com", Tier::Free, Timestamp::now())
        .await
        .unwrap();
    let link = issue_link(
        &srv.store,
        srv.hasher.as_ref(),
        &srv.url(""),
        &acct,
        SetupPurpose::Setup,
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert!(
        link.starts_with(&format!("{}/console/setup?token=", srv.url(""))),
        "{}",
        *link
    );
    let path = link.strip_prefix(&srv.url("")).unwrap().to_owned();
    let token = path.rsplit('=').next().unwrap().to_owned();
    let mut b = Browser::new(&srv);

    b.get("/console/setup?token=junk")
        .await
        .expect(400, "invalid, expired or already used");
    b.get(&format!("/console/setup?token={}", "a".repeat(64)))
        .await
        .expect(400, "invalid, expired or already used");
    let form = b.get(&path).await;
    form.expect(200, "dana@example.com");
    assert!(form.body.contains("Set your password"));
    let csrf = form.csrf();
    let set = |pw: &'static str, again: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("token", token.clone()),
            ("password", pw.to_owned()),
            ("password_again", again.to_owned()),
        ]
    };
    let as_ref = |v: &Vec<(&'static str, String)>| -> Vec<(String, String)> {
        v.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    };
    async fn send(b: &mut Browser, v: Vec<(String, String)>, origin: Option<&str>) -> Page {
        let r: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        b.post_from("/console/setup", &r, origin).await
    }
    let origin = srv.url("");
    // No Origin (and no Referer), a foreign Origin, a wrong CSRF token: refused before anything.
    send(&mut b, as_ref(&set(PASSWORD, PASSWORD)), None)
        .await
        .expect(403, "no Origin or Referer");
    send(
        &mut b,
        as_ref(&set(PASSWORD, PASSWORD)),
        Some("https://evil.example"),
    )
    .await
    .expect(403, "Origin header is not this console");
    let mut wrong = as_ref(&set(PASSWORD, PASSWORD));
    wrong[0].1 = "0".repeat(64);
    send(&mut b, wrong, Some(&origin))
        .await
        .expect(403, "security token is missing or wrong");
    // Each refusal is audited, anonymously (no session yet), with the client's address.
    let seen = refusals(&srv).await;
    let want = [
        "no Origin or Referer",
        "foreign Origin",
        "CSRF token missing or wrong",
    ];
    assert_eq!(seen.len(), want.len(), "{seen:?}");
    for ((who, target, detail, ip), want) in seen.iter().zip(want) {
        assert_eq!(
            (who.as_str(), target.as_str(), detail.as_str(), ip.as_str()),
            ("anonymous", "POST /console/setup", want, "127.0.0.1")
        );
    }
    // The policy.
    send(&mut b, as_ref(&set("short-pw", "short-pw")), Some(&origin))
        .await
        .expect(400, "at least 12 characters");
    send(
        &mut b,
        as_ref(&set("qwerty123456", "qwerty123456")),
        Some(&origin),
    )
    .await
    .expect(400, "commonly used passwords");
    send(&mut b, as_ref(&set(PASSWORD, "something-else-42")), Some(&origin))
        .await
        .expect(400, "two passwords differ");
    assert_eq!(srv.store.password(&acct.id).await.unwrap(), None);

    let done = send(&mut b, as_ref(&set(PASSWORD, PASSWORD)), Some(&origin)).await;
    assert_eq!(
        (done.status.as_u16(), done.location()),
        (303, "/console/login?done=password")
    );
    let pw = srv.store.password(&acct.id).await.unwrap().unwrap();
    assert!(
        pw.phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        pw.phc
    );
    // Reused: refused, audited, the password unchanged.
    send(
        &mut b,
        as_ref(&set("another-fine-passphrase", "another-fine-passphrase")),
        Some(&origin),
    )
    .await
    .expect(400, "invalid, expired or already used");
    b.get(&path).await.expect(400, "already used");
    assert_eq!(srv.store.password(&acct.id).await.unwrap().unwrap(), pw);
    let acts = actions(&srv, &acct).await;
    assert!(acts.contains(&"password.set".to_owned()), "{acts:?}");
    let all = srv.store.audit_page(0, 1000).await.unwrap();
    assert!(all.iter().any(|e| e.entry.action == "password.set.failure"));
    // No secret in the audit log.
    for e in &all {
        let text = format!("{:?}", e.entry);
        assert!(!text.contains(&token) && !text.contains(PASSWORD), "{text}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn login_second_factor_sessions_and_policy() {
    let srv = TestServer::start().await.unwrap();
    let acct = account_with_password(&srv, "eve@example.com").await;
    let project = admin::create_project(&srv.store, acct.id.as_str(), "main", Timestamp::now())
        .await
        .unwrap();
    let mut b = Browser::new(&srv);

    // Unknown email and wrong password: the same status and the same bytes.
    let wrong = b.login("eve@example.com", "not-the-password-at-all").await;
    let unknown = b.login("nobody@example.com", "not-the-password-at-all").await;
    wrong.expect(401, "The email or password is wrong.");
    assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
    // A login form without its CSRF token is refused.
    b.post(
        "/console/login",
        &[("email", "eve@example.com"), ("password", PASSWORD)],
    )
    .await
    .expect(403, "security token");

    // Not logged in: pages redirect to the login, POSTs are 401.
    let p = b.get("/console/security").await;
    assert_eq!((p.status.as_u16(), p.location()), (303, "/console/login"));
    b.post("/console/logout", &[("csrf", &"0".repeat(64))])
        .await
        .expect(401, "session has ended");

    let ok = b.login("EVE@example.com ", PASSWORD).await;
    assert_eq!(
        (ok.status.as_u16(), ok.location()),
        (303, "/console/security"),
        "{}",
        ok.body
    );
    let set = ok.headers.get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    for attr in [
        "__Host-skygate-session=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    let page = b.get("/console/security").await;
    page.expect(200, "Two-factor authentication: <span class=\"off\">off</span>");
    assert!(page.body.contains("Turn on two-factor authentication"), "hint");
    let csp = page
        .headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(csp, skygate_server::console::CSP);
    assert!(!page.body.contains("<script"));
    assert!(page.headers.get("strict-transport-security").is_some());
    let css = b.get("/console/style.css").await;
    assert_eq!(
        css.headers.get("content-type").unwrap(),
        "text/css; charset=utf-8"
    );
    let csrf = page.csrf();

    // A wrong CSRF token and a missing Origin on a logged-in POST.
    b.post("/console/security/2fa/begin", &[("csrf", &"f".repeat(64))])
        .await
        .expect(403, "security token");
    b.post_from("/console/security/2fa/begin", &[("csrf", &csrf)], None)
        .await
        .expect(403, "Origin");
    // Audited for the session's account (it shows on the account's own audit page too).
    let acts = actions(&srv, &acct).await;
    assert_eq!(
        acts.iter().filter(|a| *a == "console.refused").count(),
        2,
        "{acts:?}"
    );

    // Live key before 2FA: refused with the hint; a test key is fine and shown once.
    let pid = project.id.to_string();
    b.post(
        "/console/keys",
        &[
            ("csrf", &csrf),
            ("project", &pid),
            ("mode", "live"),
            ("name", "prod"),
        ],
    )
    .await
    .expect(403, "Enable two-factor authentication first");
    let made = b
        .post(
            "/console/keys",
            &[("csrf", &csrf), ("project", &pid), ("mode", "test")],
        )
        .await;
    made.expect(200, "shown once");
    assert!(made.body.contains("sk_test_"));
    // Another account's project is not found.
    b.post(
        "/console/keys",
        &[
            ("csrf", &csrf),
            ("project", "proj_0000000000000000000000"),
            ("mode", "test"),
        ],
    )
    .await
    .expect(404, "No such project");

    // Enrolment: QR code and secret shown, a wrong then an old code refused, then the first code.
    let enrol = b.post("/console/security/2fa/begin", &[("csrf", &csrf)]).await;
    enrol.expect(200, "data:image/svg+xml;base64,");
    assert!(enrol.body.contains("otpauth://totp/"));
    let state = srv.store.totp_state(&acct.id).await.unwrap().unwrap();
    assert!(enrol.body.contains(state.secret.base32().as_str()));
    let secret = state.secret;
    b.post(
        "/console/security/2fa/confirm",
        &[("csrf", &csrf), ("code", &code_now(&secret, -10))],
    )
    .await
    .expect(401, "wrong or expired");
    let old_cookie = b.cookies.clone();
    let code = code_now(&secret, 0);
    let on = b
        .post(
            "/console/security/2fa/confirm",
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    on.expect(200, "Two-factor authentication is on.");
    let re = regex::Regex::new(r#"class="recovery-code">([^<]+)<"#).unwrap();
    let codes: Vec<String> = re.captures_iter(&on.body).map(|c| c[1].to_owned()).collect();
    assert_eq!(codes.len(), 10, "{}", on.body);
    assert!(on
        .body
        .contains("Two-factor authentication: <span class=\"on\">on</span>"));
    // The session id changed: the old cookie no longer works, the new one does.
    assert_ne!(old_cookie, b.cookies);
    let mut stale = Browser::new(&srv);
    stale.cookies = old_cookie;
    assert_eq!(stale.get("/console/security").await.status, 303);
    let csrf = b.csrf_of("/console/security").await;

    // Replayed code (the one that confirmed) for disabling: refused.
    b.post(
        "/console/security/2fa/disable",
        &[("csrf", &csrf), ("code", &code)],
    )
    .await
    .expect(401, "already used");

    // Live key after 2FA: shown once, listed without its secret, revocable.
    let live = b
        .post(
            "/console/keys",
            &[("csrf", &csrf), ("project", &pid), ("mode", "live")],
        )
        .await;
    live.expect(200, "sk_live_");
    let key = regex::Regex::new(r"(sk_live_[A-Za-z0-9]{38})")
        .unwrap()
        .captures(&live.body)
        .unwrap()[1]
        .to_owned();
    let listing = b.get("/console/keys").await;
    assert!(!listing.body.contains(&key));
    let kid = srv.store.list_api_keys(&project.id).await.unwrap()[0]
        .id
        .to_string();
    b.post("/console/keys/revoke", &[("csrf", &csrf), ("key", &kid)])
        .await
        .expect(200, "The key is revoked.");

    // Logout, then the second factor at login.
    b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(b.get("/console/security").await.status, 303);
    let half = b.login("eve@example.com", PASSWORD).await;
    assert_eq!(
        (half.status.as_u16(), half.location()),
        (303, "/console/login/2fa")
    );
    // Halfway is not logged in.
    assert_eq!(b.get("/console/security").await.location(), "/console/login/2fa");
    let form = b.get("/console/login/2fa").await;
    let csrf2 = form.csrf();
    b.post("/console/login/2fa", &[("csrf", &csrf2), ("code", &code)])
        .await
        .expect(401, "already used");
    let in_ = b
        .post("/console/login/2fa", &[("csrf", &csrf2), ("code", &codes[0])])
        .await;
    assert_eq!((in_.status.as_u16(), in_.location()), (303, "/console/security"));
    let page = b.get("/console/security").await;
    page.expect(200, "Recovery codes left: <strong>9</strong>");
    let csrf = page.csrf();

    // Sessions: a second browser's session is listed and revocable.
    let mut other = Browser::new(&srv);
    other.login("eve@example.com", PASSWORD).await;
    let f = other.csrf_of("/console/login/2fa").await;
    other
        .post("/console/login/2fa", &[("csrf", &f), ("code", &codes[1])])
        .await;
    assert_eq!(other.get("/console/security").await.status, 200);
    let sessions = srv.store.list_sessions(&acct.id, Timestamp::now()).await.unwrap();
    assert_eq!(sessions.len(), 2);
    let current = b.get("/console/sessions").await;
    let theirs = sessions
        .iter()
        .find(|s| current.body.contains(s.id.as_str()))
        .unwrap()
        .id
        .to_string();
    b.post(
        "/console/sessions/revoke",
        &[("csrf", &csrf), ("session", &theirs)],
    )
    .await
    .expect(200, "this session");
    assert_eq!(other.get("/console/security").await.status, 303);

    // A used recovery code is refused the second time.
    b.post("/console/logout", &[("csrf", &csrf)]).await;
    b.login("eve@example.com", PASSWORD).await;
    let f = b.csrf_of("/console/login/2fa").await;
    b.post("/console/login/2fa", &[("csrf", &f), ("code", &codes[0])])
        .await
        .expect(401, "wrong or was already used");

    let acts = actions(&srv, &acct).await;
    for a in [
        "login.failure",
        "login.success",
        "login.password",
        "2fa.enable",
        "2fa.enable.failure",
        "2fa.recovery_code.use",
        "login.2fa.failure",
        "keys.create",
        "keys.revoke",
        "logout",
        "session.revoke",
    ] {
        assert!(acts.iter().any(|x| x == a), "{a} not in {acts:?}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn brute_force_locks_expired_sessions_end_and_codes_run_out() {
    let srv = TestServer::start_with(|c| {
        c.accounts.login_failures_per_account = 3;
        c.limits.auth_failures_per_minute = 1000;
        c.accounts.session_idle_timeout = Duration::from_secs(2);
        c.accounts.session_lifetime = Duration::from_secs(3600);
    })
    .await
    .unwrap();
    let acct = account_with_password(&srv, "fox@example.com").await;
    let mut b = Browser::new(&srv);

    // Three failures soft-lock the email: the right password is refused too, with 429 and Retry-After;
    // an unknown email locks exactly the same way (no hint whether it exists).
    for email in ["fox@example.com", "ghost@example.com"] {
        for _ in 0..3 {
            b.login(email, "wrong-password-guess").await.expect(401, "wrong");
        }
        let locked = b.login(email, PASSWORD).await;
        locked.expect(429, "Too many failed logins for this account");
        assert!(locked.headers.get("retry-after").is_some());
    }
    let acts = actions(&srv, &acct).await;
    assert_eq!(
        acts.iter().filter(|a| *a == "login.failure").count(),
        3,
        "{acts:?}"
    );

    // An expired session: pages go to the login, forms get 401, the row is gone.
    let mut c = Browser::new(&srv);
    let acct2 = account_with_password(&srv, "gil@example.com").await;
    assert_eq!(c.login("gil@example.com", PASSWORD).await.status, 303);
    let csrf = c.csrf_of("/console/security").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    c.post("/console/security/2fa/begin", &[("csrf", &csrf)])
        .await
        .expect(401, "session has ended");
    assert_eq!(c.get("/console/security").await.location(), "/console/login");
    let acts = actions(&srv, &acct2).await;
    assert_eq!(
        acts.iter().filter(|a| *a == "session.expired").count(),
        1,
        "{acts:?}"
    );
    assert!(srv
        .store
        .list_sessions(&acct2.id, Timestamp::now())
        .await
        .unwrap()
        .is_empty());

    // Exhausted recovery codes and the second-factor lock (through the store-level flow).
    let actor = skygate_server::credentials::Actor::operator();
    let now = Timestamp::now();
    let e = skygate_server::second_factor::begin(&srv.store, &acct2, now)
        .await
        .unwrap();
    let codes = skygate_server::second_factor::confirm(
        &srv.store,
        srv.hasher.as_ref(),
        &actor,
        &acct2,
        &code_now(&e.secret, 0),
        now,
    )
    .await
    .unwrap();
    for code in &codes {
        assert!(c.login("gil@example.com", PASSWORD).await.status == 303);
        let f = c.csrf_of("/console/login/2fa").await;
        let p = c
            .post("/console/login/2fa", &[("csrf", &f), ("code", code.expose())])
            .await;
        assert_eq!(p.status, 303, "{}", p.body);
        c.get("/console/security")
            .await
            .expect(200, "Recovery codes left");
        let csrf = c.csrf_of("/console/security").await;
        c.post("/console/logout", &[("csrf", &csrf)]).await;
    }
    assert_eq!(srv.store.recovery_codes_left(&acct2.id).await.unwrap(), 0);
    assert_eq!(c.login("gil@example.com", PASSWORD).await.status, 303);
    let f = c.csrf_of("/console/login/2fa").await;
    for _ in 0..4 {
        c.post("/console/login/2fa", &[("csrf", &f), ("code", codes[0].expose())])
            .await
            .expect(401, "wrong or was already used");
    }
    let locked = c
        .post("/console/login/2fa", &[("csrf", &f), ("code", codes[1].expose())])
        .await;
    locked.expect(429, "locked until");
    c.post(
        "/console/login/2fa",
        &[("csrf", &f), ("code", &code_now(&e.secret, 1))],
    )
    .await
    .expect(429, "locked until");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn forged_form_floods_meet_the_address_throttle_not_the_audit_log() {
    let srv = TestServer::start_with(|c| c.limits.auth_failures_per_minute = 3)
        .await
        .unwrap();
    let mut b = Browser::new(&srv);
    let csrf = b.csrf_of("/console/login").await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("email", "a@example.com"),
        ("password", "whatever-it-is"),
    ];
    for _ in 0..3 {
        b.post_from("/console/login", &fields, Some("https://evil.example"))
            .await
            .expect(403, "Origin header is not this console");
    }
    for _ in 0..3 {
        let p = b
            .post_from("/console/login", &fields, Some("https://evil.example"))
            .await;
        p.expect(429, "Too many refused requests from this address");
        assert!(p.headers.get("retry-after").is_some());
    }
    // The budget is the API's failed-authentication one: the same address's logins wait too.
    b.login("a@example.com", "whatever-it-is")
        .await
        .expect(429, "Too many failed logins from this address");
    assert_eq!(refusals(&srv).await.len(), 3);
    srv.stop().await.unwrap();
}

//! Two-factor authentication against a real (SQLite) store with a fixed clock: enrolment confirmed by
//! the first code, login codes accepted once, the ±1 step window, the soft-lock after 5 failures,
//! recovery codes used once and exhausted, disable and regenerate needing a current code, and the
//! audit entries each step writes. Codes are computed from the enrolment's secret, as an app would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use skygate_core::totp::TotpSecret;
use skygate_core::{Account, Pepper, Tier, Timestamp};
use skygate_server::credentials::Actor;
use skygate_server::second_factor::{self, Accepted, SecondFactorError};
use skygate_server::{admin, credentials};
use skygate_store::{DynStore, Sealer};

const T0: i64 = 1_700_000_000; // a step boundary (divisible by 30)

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_seconds(secs)
}

fn code(secret: &TotpSecret, secs: i64) -> String {
    secret.code_at(u64::try_from(secs).unwrap(), 6).to_string()
}

async fn store(dir: &std::path::Path) -> DynStore {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let s = skygate_store::connect(&url, Sealer::ephemeral().unwrap())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

fn actor() -> Actor {
    Actor {
        who: "console".into(),
        channel: credentials::Channel::SelfService,
        ip: "192.0.2.1".into(),
        user_agent: "test-browser/1".into(),
    }
}

async fn enrolled(s: &DynStore, pepper: &Pepper) -> (Account, TotpSecret, Vec<String>) {
    let acct = admin::create_account(s, "dana@example.com", Tier::Free, at(T0))
        .await
        .unwrap();
    let e = second_factor::begin(s, &acct, at(T0)).await.unwrap();
    assert!(e
        .uri
        .starts_with("otpauth://totp/skygate:dana%40example.com?secret="));
    assert!(e.uri.contains(e.secret.base32().as_str()));
    assert!(
        !s.two_factor_enabled(&acct.id).await.unwrap(),
        "off until the first code"
    );
    let codes = second_factor::confirm(s, pepper, &actor(), &acct, &code(&e.secret, T0), at(T0))
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);
    assert!(s.two_factor_enabled(&acct.id).await.unwrap());
    let codes = codes.iter().map(|c| c.expose().to_owned()).collect();
    (acct, e.secret, codes)
}

#[tokio::test]
async fn enrolment_needs_the_first_code_and_login_codes_work_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let pepper = Pepper::from_bytes([7; 32]);
    let acct = admin::create_account(&s, "a@example.com", Tier::Free, at(T0))
        .await
        .unwrap();
    let e = second_factor::begin(&s, &acct, at(T0)).await.unwrap();
    // A wrong first code does not turn it on.
    let wrong = if code(&e.secret, T0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = second_factor::confirm(&s, &pepper, &actor(), &acct, wrong, at(T0)).await;
    assert!(matches!(r, Err(SecondFactorError::Code(_))), "{r:?}");
    assert!(!s.two_factor_enabled(&acct.id).await.unwrap());
    second_factor::confirm(&s, &pepper, &actor(), &acct, &code(&e.secret, T0 + 5), at(T0 + 5))
        .await
        .unwrap();
    // Once on, it cannot be silently re-enrolled.
    assert!(second_factor::begin(&s, &acct, at(T0 + 6)).await.is_err());

    // The enrolment's code is spent: it (and its step) cannot log in.
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &code(&e.secret, T0), at(T0 + 10)).await;
    assert!(
        matches!(
            r,
            Err(SecondFactorError::Code(skygate_core::totp::TotpError::Replayed))
        ),
        "{r:?}"
    );
    // The next step's code works once, even 30 s late (clock drift), and never again.
    let next = code(&e.secret, T0 + 30);
    let ok = second_factor::check(&s, &pepper, &actor(), &acct, &next, at(T0 + 59)).await;
    assert_eq!(ok.unwrap(), Accepted::Code);
    let again = second_factor::check(&s, &pepper, &actor(), &acct, &next, at(T0 + 59)).await;
    assert!(matches!(
        again,
        Err(SecondFactorError::Code(skygate_core::totp::TotpError::Replayed))
    ));
    // Two steps late: refused as wrong.
    let old = code(&e.secret, T0 + 90);
    let late = second_factor::check(&s, &pepper, &actor(), &acct, &old, at(T0 + 150)).await;
    assert!(
        matches!(
            late,
            Err(SecondFactorError::Code(skygate_core::totp::TotpError::Wrong))
        ),
        "{late:?}"
    );

    let log = s.account_audit(&acct.id, i64::MAX, 100).await.unwrap();
    let actions: Vec<_> = log.iter().rev().map(|e| e.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "2fa.enable.failure",
            "2fa.enable",
            "login.2fa.failure",
            "login.2fa.failure",
            "login.2fa.failure"
        ]
    );
    assert!(log
        .iter()
        .all(|e| e.entry.ip == "192.0.2.1" && e.entry.user_agent == "test-browser/1"));
    // No code or secret in the log.
    let text = format!("{log:?}");
    assert!(!text.contains(e.secret.base32().as_str()) && !text.contains(&next));
}

#[tokio::test]
async fn five_failures_lock_the_second_factor_for_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let pepper = Pepper::from_bytes([7; 32]);
    let (acct, secret, _) = enrolled(&s, &pepper).await;
    let now = T0 + 300;
    let right = code(&secret, now);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    for i in 1..5 {
        let r = second_factor::check(&s, &pepper, &actor(), &acct, wrong, at(now)).await;
        assert!(matches!(r, Err(SecondFactorError::Code(_))), "failure {i}: {r:?}");
    }
    let fifth = second_factor::check(&s, &pepper, &actor(), &acct, wrong, at(now)).await;
    assert!(
        matches!(fifth, Err(SecondFactorError::Locked(t)) if t == at(now + 60)),
        "{fifth:?}"
    );
    // Locked: even the right code is refused, until the minute is over.
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &right, at(now + 1)).await;
    assert!(matches!(r, Err(SecondFactorError::Locked(_))), "{r:?}");
    let later = code(&secret, now + 60);
    assert_eq!(
        second_factor::check(&s, &pepper, &actor(), &acct, &later, at(now + 60))
            .await
            .unwrap(),
        Accepted::Code
    );
    let log = s.account_audit(&acct.id, i64::MAX, 1_000).await.unwrap();
    assert!(log
        .iter()
        .any(|e| e.entry.detail.contains("second factor locked until")));
}

#[tokio::test]
async fn recovery_codes_work_once_and_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let pepper = Pepper::from_bytes([7; 32]);
    let (acct, _, codes) = enrolled(&s, &pepper).await;
    // Typed loosely (upper case, spaces for the dash): still the same code.
    let typed = codes[0].to_uppercase().replace('-', " ");
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &typed, at(T0 + 40)).await;
    assert_eq!(r.unwrap(), Accepted::RecoveryCode { left: 9 });
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &codes[0], at(T0 + 41)).await;
    assert!(
        matches!(r, Err(SecondFactorError::RecoveryCode)),
        "used twice: {r:?}"
    );
    // A made-up code is refused the same way.
    let r = second_factor::check(&s, &pepper, &actor(), &acct, "abcdef-ghjkmn", at(T0 + 42)).await;
    assert!(matches!(r, Err(SecondFactorError::RecoveryCode)), "{r:?}");
    // Spend the rest, a minute apart so the failures above never add up to a lock.
    for (i, c) in codes.iter().enumerate().skip(1) {
        let r = second_factor::check(&s, &pepper, &actor(), &acct, c, at(T0 + 100 + i as i64)).await;
        assert_eq!(r.unwrap(), Accepted::RecoveryCode { left: 9 - i as u32 });
    }
    assert_eq!(s.recovery_codes_left(&acct.id).await.unwrap(), 0);
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &codes[5], at(T0 + 200)).await;
    assert!(
        matches!(r, Err(SecondFactorError::RecoveryCode)),
        "exhausted: {r:?}"
    );
    let used = s.account_audit(&acct.id, i64::MAX, 100).await.unwrap();
    assert_eq!(
        used.iter()
            .filter(|e| e.entry.action == "2fa.recovery_code.use")
            .count(),
        10
    );
}

#[tokio::test]
async fn disable_and_regenerate_need_a_current_code() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let pepper = Pepper::from_bytes([7; 32]);
    let (acct, secret, old_codes) = enrolled(&s, &pepper).await;
    // A recovery code is not enough to change the second factor.
    let r = second_factor::regenerate_codes(&s, &pepper, &actor(), &acct, &old_codes[0], at(T0 + 30)).await;
    assert!(r.is_err());
    let fresh =
        second_factor::regenerate_codes(&s, &pepper, &actor(), &acct, &code(&secret, T0 + 30), at(T0 + 30))
            .await
            .unwrap();
    assert_eq!(fresh.len(), 10);
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &old_codes[1], at(T0 + 31)).await;
    assert!(
        matches!(r, Err(SecondFactorError::RecoveryCode)),
        "old codes are void: {r:?}"
    );
    let r = second_factor::check(&s, &pepper, &actor(), &acct, fresh[0].expose(), at(T0 + 32)).await;
    assert_eq!(r.unwrap(), Accepted::RecoveryCode { left: 9 });

    // The regenerate's code is spent, so it cannot also disable.
    let r = second_factor::disable(&s, &actor(), &acct, &code(&secret, T0 + 30), at(T0 + 33)).await;
    assert!(r.is_err());
    assert!(s.two_factor_enabled(&acct.id).await.unwrap());
    second_factor::disable(&s, &actor(), &acct, &code(&secret, T0 + 60), at(T0 + 60))
        .await
        .unwrap();
    assert!(!s.two_factor_enabled(&acct.id).await.unwrap());
    let r = second_factor::check(&s, &pepper, &actor(), &acct, &code(&secret, T0 + 90), at(T0 + 90)).await;
    assert!(matches!(r, Err(SecondFactorError::NotEnabled)), "{r:?}");
    let actions: Vec<_> = s
        .account_audit(&acct.id, i64::MAX, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.entry.action)
        .collect();
    assert!(
        actions.contains(&"2fa.disable".to_owned())
            && actions.contains(&"2fa.recovery_codes.regenerate".to_owned())
    );
}

/// The live-credential policy: self-service refused without 2FA, allowed with it; the operator is
/// never blocked but its override is reported.
#[tokio::test]
async fn live_credentials_need_two_factor_outside_the_operator_cli() {
    use skygate_server::config::AccountsConfig;
    use skygate_server::credentials::{live_credential_policy, Channel, PolicyOutcome, TWO_FACTOR_FIRST};
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let pepper = Pepper::from_bytes([7; 32]);
    let on = AccountsConfig::default();
    let off = AccountsConfig {
        require_2fa_for_live_credentials: false,
        ..AccountsConfig::default()
    };
    let bare = admin::create_account(&s, "bare@example.com", Tier::Free, at(T0))
        .await
        .unwrap();
    let r = live_credential_policy(&s, &on, &bare.id, Channel::SelfService).await;
    assert!(
        matches!(r, Err(admin::AdminError::Forbidden(ref m)) if m == TWO_FACTOR_FIRST),
        "{r:?}"
    );
    assert_eq!(
        live_credential_policy(&s, &on, &bare.id, Channel::Operator)
            .await
            .unwrap(),
        PolicyOutcome::OperatorOverride
    );
    assert_eq!(
        live_credential_policy(&s, &off, &bare.id, Channel::SelfService)
            .await
            .unwrap(),
        PolicyOutcome::Allowed
    );
    let (acct, _, _) = enrolled(&s, &pepper).await;
    assert_eq!(
        live_credential_policy(&s, &on, &acct.id, Channel::SelfService)
            .await
            .unwrap(),
        PolicyOutcome::Allowed
    );
    // A self-service token for the account without 2FA is refused before anything is written.
    let r = credentials::create_token(
        &s,
        &pepper,
        &on,
        &actor(),
        &bare,
        None,
        skygate_core::Scopes::parse_list("keys.read").unwrap(),
        None,
        at(T0),
    )
    .await;
    assert!(matches!(r, Err(admin::AdminError::Forbidden(_))));
    assert!(s.list_access_tokens(&bare.id).await.unwrap().is_empty());
}

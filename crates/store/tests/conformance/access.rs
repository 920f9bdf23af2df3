//! Conformance cases for access tokens and the account-scoped lookups of the management API.

use skygate_core::token::NewAccessToken;
use skygate_core::{AccountId, KeyId, Scope, Scopes, TokenId};
use skygate_store::{RevokeOutcome, StoreError};

use crate::cases::{contains, new_account, new_key, new_project, t};
use crate::predictions::audit;
use crate::{Db, Raw};

fn new_token(hash_byte: u8, at: i64, scopes: &str) -> NewAccessToken {
    NewAccessToken {
        id: TokenId::generate().unwrap(),
        name: format!("token {hash_byte}"),
        scopes: Scopes::parse_list(scopes).unwrap(),
        hash: [hash_byte; 32],
        last4: format!("{hash_byte:04x}"),
        created_at: t(at),
        expires_at: Some(t(at + 1_000)),
    }
}

/// Fills the sealed columns of this module (a token's name, a TOTP secret) for
/// `sensitive_columns_hold_no_plaintext`; returns the plaintexts that must not appear anywhere.
pub async fn sensitive_access_workload(s: &skygate_store::DynStore, a: &AccountId, i: u8) -> Vec<String> {
    let mut tok = new_token(100 + i, 5, "inference");
    tok.name = format!("ci token of carol {i}");
    s.create_access_token(a, &tok).await.unwrap();
    // A base32-looking secret, so a plaintext copy would show in any text or blob column.
    let secret = format!("TOTPSECRETOFCAROL{i}XYZ");
    s.begin_totp(
        a,
        &skygate_core::totp::TotpSecret::from_bytes(secret.clone().into_bytes()),
        t(6),
    )
    .await
    .unwrap();
    vec![tok.name, secret]
}

pub async fn access_tokens_create_list_and_scope(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    let first = s
        .create_access_token(&a, &new_token(1, 10, "inference"))
        .await
        .unwrap();
    let second = s
        .create_access_token(&a, &new_token(2, 20, "keys.read,audit.read"))
        .await
        .unwrap();
    s.create_access_token(&b, &new_token(3, 30, "account.read"))
        .await
        .unwrap();
    let listed = s.list_access_tokens(&a).await.unwrap();
    assert_eq!(
        listed,
        vec![second.clone(), first.clone()],
        "newest first, only a's"
    );
    assert!(listed[0].scopes.contains(Scope::AuditRead) && !listed[0].scopes.contains(Scope::Inference));
    assert_eq!(listed[1].name, "token 1");
    assert_eq!(listed[1].expires_at, Some(t(1_010)));
    // Same hash again: a conflict, whichever account.
    let r = s.create_access_token(&b, &new_token(1, 40, "inference")).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s
        .create_access_token(&AccountId::generate().unwrap(), &new_token(9, 40, "inference"))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    // The name is sealed; the hash and scopes are not secret.
    for raw in db.raw_column("access_tokens", "name").await {
        assert!(
            matches!(raw, Raw::Bytes(ref b) if !contains(b, b"token")),
            "{raw:?}"
        );
    }
}

pub async fn access_token_lookup_touch_and_revoke(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    let tok = s
        .create_access_token(&a, &new_token(7, 10, "inference,projects.write"))
        .await
        .unwrap();
    let auth = s.access_token_by_hash(&[7; 32]).await.unwrap().unwrap();
    assert_eq!((&auth.token_id, &auth.account), (&tok.id, &a));
    assert!(auth.scopes.contains(Scope::ProjectsWrite));
    assert!(
        auth.is_active(t(11)) && !auth.is_active(t(1_010)),
        "expires at 1010"
    );
    assert_eq!(s.access_token_by_hash(&[8; 32]).await.unwrap(), None);

    s.touch_access_token(&tok.id, t(50)).await.unwrap();
    s.touch_access_token(&tok.id, t(40)).await.unwrap();
    s.touch_access_token(&TokenId::generate().unwrap(), t(60))
        .await
        .unwrap();
    assert_eq!(
        s.list_access_tokens(&a).await.unwrap()[0].last_used_at,
        Some(t(50))
    );

    // Another account cannot revoke it, and learns nothing (NotFound, like an unknown id).
    assert_eq!(
        s.revoke_access_token(&b, &tok.id, t(60)).await.unwrap(),
        RevokeOutcome::NotFound
    );
    assert_eq!(
        s.revoke_access_token(&a, &tok.id, t(60)).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(
        s.revoke_access_token(&a, &tok.id, t(70)).await.unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    let auth = s.access_token_by_hash(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(auth.revoked_at, Some(t(60)), "the first revocation time is kept");
    assert!(!auth.is_active(t(61)));
}

pub async fn account_scoped_key_and_audit_lookups(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    let pa = new_project(&s, &a, 1).await;
    let key = s.create_api_key(&pa, &new_key(5, 2)).await.unwrap();
    assert_eq!(s.account_api_key(&a, &key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(s.account_api_key(&b, &key.id).await.unwrap(), None);
    assert_eq!(
        s.account_api_key(&a, &KeyId::generate().unwrap()).await.unwrap(),
        None
    );
    assert_eq!(s.find_api_key(&key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(s.find_api_key(&KeyId::generate().unwrap()).await.unwrap(), None);

    for i in 0..5 {
        let owner = if i % 2 == 0 { &a } else { &b };
        s.append_audit(
            &audit("keys.create", &format!("k{i}"), t(i))
                .for_account(owner.as_str())
                .from_client("192.0.2.7", "test-agent/1"),
        )
        .await
        .unwrap();
    }
    s.append_audit(&audit("keyring.rotate", "v2", t(9)))
        .await
        .unwrap();
    let mine = s.account_audit(&a, i64::MAX, 100).await.unwrap();
    let targets: Vec<_> = mine.iter().map(|e| e.entry.target.as_str()).collect();
    assert_eq!(targets, ["k4", "k2", "k0"], "a's entries, newest first");
    assert_eq!(mine[0].entry.ip, "192.0.2.7");
    assert_eq!(mine[0].entry.user_agent, "test-agent/1");
    let older = s.account_audit(&a, mine[0].seq, 1).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].entry.target, "k2");
    // The whole chain, with the new fields, still verifies.
    let log = s.audit_page(0, 100).await.unwrap();
    assert_eq!(skygate_core::audit::verify_chain(&log).unwrap(), 6);
}

pub async fn erase_removes_access_tokens(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    s.create_access_token(&a, &new_token(4, 1, "inference"))
        .await
        .unwrap();
    assert!(s
        .erase_account(&a, &audit("account.erase", a.as_str(), t(2)))
        .await
        .unwrap());
    assert_eq!(s.access_token_by_hash(&[4; 32]).await.unwrap(), None);
    assert!(db.raw_column("access_tokens", "name").await.is_empty());
}

pub async fn second_factor_enrol_confirm_and_replay(db: Db) {
    use skygate_core::totp::TotpSecret;
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    assert!(!s.two_factor_enabled(&a).await.unwrap());
    let (accounts, with_2fa) = s.two_factor_adoption().await.unwrap();
    assert!(accounts >= 1 && with_2fa < accounts, "{accounts} {with_2fa}");
    assert_eq!(s.totp_state(&a).await.unwrap(), None);
    let first = TotpSecret::generate().unwrap();
    assert!(s.begin_totp(&a, &first, t(1)).await.unwrap());
    // Restarting a pending enrolment replaces the secret.
    let secret = TotpSecret::generate().unwrap();
    assert!(s.begin_totp(&a, &secret, t(2)).await.unwrap());
    let st = s.totp_state(&a).await.unwrap().unwrap();
    assert_eq!((&st.secret, st.enabled_at, st.last_step), (&secret, None, None));
    assert!(!s.two_factor_enabled(&a).await.unwrap(), "pending is not on");
    // The secret is sealed.
    for raw in db.raw_column("account_totp", "secret").await {
        assert!(
            matches!(raw, Raw::Bytes(ref b) if !contains(b, secret.expose())),
            "{raw:?}"
        );
    }

    let codes: Vec<[u8; 32]> = (1..=10u8).map(|i| [i; 32]).collect();
    assert!(s.confirm_totp(&a, 100, &codes, t(3)).await.unwrap());
    assert!(
        !s.confirm_totp(&a, 101, &codes, t(4)).await.unwrap(),
        "confirmed once"
    );
    assert!(s.two_factor_enabled(&a).await.unwrap());
    assert_eq!(
        s.two_factor_adoption().await.unwrap(),
        (accounts, with_2fa + 1),
        "a confirmed second factor counts"
    );
    assert!(
        !s.begin_totp(&a, &first, t(5)).await.unwrap(),
        "an enabled factor is not replaced"
    );
    assert_eq!(s.totp_state(&a).await.unwrap().unwrap().secret, secret);

    // The replay guard only moves forward.
    assert!(!s.accept_totp_step(&a, 100).await.unwrap());
    assert!(!s.accept_totp_step(&a, 99).await.unwrap());
    assert!(s.accept_totp_step(&a, 101).await.unwrap());
    assert!(!s.accept_totp_step(&a, 101).await.unwrap());
    assert_eq!(s.totp_state(&a).await.unwrap().unwrap().last_step, Some(101));

    // Two handles racing for one step: exactly one wins.
    let other = db.open().await;
    let (x, y) = tokio::join!(s.accept_totp_step(&a, 102), other.accept_totp_step(&a, 102));
    assert!(x.unwrap() ^ y.unwrap());
}

pub async fn second_factor_failures_lock_and_recovery_codes_work_once(db: Db) {
    use skygate_core::totp::TotpSecret;
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    s.begin_totp(&a, &TotpSecret::generate().unwrap(), t(1))
        .await
        .unwrap();
    s.confirm_totp(&a, 5, &[[1; 32], [2; 32]], t(2)).await.unwrap();
    for i in 1..5 {
        assert!(
            !s.record_second_factor_failure(&a, 5, t(100)).await.unwrap(),
            "failure {i}"
        );
    }
    assert_eq!(s.totp_state(&a).await.unwrap().unwrap().failures, 4);
    assert!(
        s.record_second_factor_failure(&a, 5, t(100)).await.unwrap(),
        "the 5th locks"
    );
    let st = s.totp_state(&a).await.unwrap().unwrap();
    assert_eq!((st.failures, st.locked_until), (0, Some(t(100))));
    // A success clears the lock.
    assert!(s.accept_totp_step(&a, 6).await.unwrap());
    assert_eq!(s.totp_state(&a).await.unwrap().unwrap().locked_until, None);

    assert_eq!(s.recovery_codes_left(&a).await.unwrap(), 2);
    assert!(
        !s.use_recovery_code(&b, &[1; 32], t(3)).await.unwrap(),
        "another account's code"
    );
    assert!(s.use_recovery_code(&a, &[1; 32], t(3)).await.unwrap());
    assert!(
        !s.use_recovery_code(&a, &[1; 32], t(4)).await.unwrap(),
        "used once"
    );
    assert!(!s.use_recovery_code(&a, &[9; 32], t(4)).await.unwrap());
    assert_eq!(s.recovery_codes_left(&a).await.unwrap(), 1);
    s.replace_recovery_codes(&a, &[[3; 32], [4; 32], [5; 32]], t(5))
        .await
        .unwrap();
    assert_eq!(s.recovery_codes_left(&a).await.unwrap(), 3);
    assert!(
        !s.use_recovery_code(&a, &[2; 32], t(6)).await.unwrap(),
        "old codes are gone"
    );

    assert!(s.disable_totp(&a).await.unwrap());
    assert!(!s.disable_totp(&a).await.unwrap());
    assert!(!s.two_factor_enabled(&a).await.unwrap());
    assert_eq!(s.recovery_codes_left(&a).await.unwrap(), 0);
    // Erasing an account takes its second factor with it.
    s.begin_totp(&b, &TotpSecret::generate().unwrap(), t(7))
        .await
        .unwrap();
    assert!(s
        .erase_account(&b, &audit("account.erase", b.as_str(), t(8)))
        .await
        .unwrap());
    assert!(db.raw_column("account_totp", "secret").await.is_empty());
}

//! Conformance cases for the console: passwords, single-use setup links, sessions.

use skygate_core::session::{NewSession, SessionStage, SetupPurpose};
use skygate_core::{AccountId, SessionId};
use skygate_store::StoreError;

use crate::cases::{new_account, t};
use crate::predictions::audit;
use crate::Db;

fn session(a: &AccountId, hash_byte: u8, at: i64, stage: SessionStage) -> NewSession {
    NewSession {
        id: SessionId::generate().unwrap(),
        account: a.clone(),
        hash: [hash_byte; 32],
        stage,
        created_at: t(at),
        expires_at: t(at + 1_000),
        ip: "127.0.0.1".into(),
        user_agent: "test agent".into(),
    }
}

pub async fn setup_links_work_once_and_expire(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    assert_eq!(s.password(&a).await.unwrap(), None);
    s.issue_setup_link(&a, &[1; 32], SetupPurpose::Setup, t(10), t(100))
        .await
        .unwrap();
    assert_eq!(
        s.setup_link_account(&[1; 32], t(50)).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        s.setup_link_account(&[1; 32], t(100)).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        s.setup_link_account(&[2; 32], t(50)).await.unwrap(),
        None,
        "unknown"
    );
    // An expired link sets nothing.
    assert_eq!(
        s.redeem_setup_link(&[1; 32], "$argon2id$x", t(100))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.password(&a).await.unwrap(), None);

    // A live session ends when the password is set.
    s.create_session(&session(&a, 9, 40, SessionStage::Full))
        .await
        .unwrap();
    assert_eq!(
        s.redeem_setup_link(&[1; 32], "$argon2id$one", t(60))
            .await
            .unwrap(),
        Some(a.clone())
    );
    let pw = s.password(&a).await.unwrap().unwrap();
    assert_eq!((pw.phc.as_str(), pw.set_at), ("$argon2id$one", t(60)));
    assert_eq!(s.session_by_hash(&[9; 32]).await.unwrap(), None);
    // Used once: a second use changes nothing.
    assert_eq!(
        s.redeem_setup_link(&[1; 32], "$argon2id$two", t(61))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.setup_link_account(&[1; 32], t(61)).await.unwrap(), None);
    assert_eq!(s.password(&a).await.unwrap().unwrap().phc, "$argon2id$one");

    // A new link replaces the unused ones.
    s.issue_setup_link(&a, &[3; 32], SetupPurpose::Reset, t(70), t(200))
        .await
        .unwrap();
    s.issue_setup_link(&a, &[4; 32], SetupPurpose::Reset, t(71), t(200))
        .await
        .unwrap();
    assert_eq!(s.setup_link_account(&[3; 32], t(72)).await.unwrap(), None);
    // Two handles racing for one link: exactly one sets its password.
    let other = db.open().await;
    let (x, y) = tokio::join!(
        s.redeem_setup_link(&[4; 32], "$argon2id$x", t(80)),
        other.redeem_setup_link(&[4; 32], "$argon2id$y", t(80))
    );
    assert!(x.unwrap().is_some() ^ y.unwrap().is_some());

    let unknown = AccountId::generate().unwrap();
    let e = s
        .issue_setup_link(&unknown, &[5; 32], SetupPurpose::Setup, t(1), t(2))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

pub async fn sessions_rotate_touch_list_and_end(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    let first = session(&a, 1, 10, SessionStage::SecondFactor);
    s.create_session(&first).await.unwrap();
    let got = s.session_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(
        (&got.id, got.stage, got.last_seen_at, got.expires_at),
        (&first.id, SessionStage::SecondFactor, t(10), t(1_010))
    );
    // Rotation: the old id and secret stop working, the new ones work.
    let full = session(&a, 2, 20, SessionStage::Full);
    assert!(s.replace_session(&first.id, &full).await.unwrap());
    assert_eq!(s.session_by_hash(&[1; 32]).await.unwrap(), None);
    assert!(!s
        .replace_session(&first.id, &session(&a, 3, 21, SessionStage::Full))
        .await
        .unwrap());
    assert_eq!(
        s.session_by_hash(&[3; 32]).await.unwrap(),
        None,
        "nothing half-done"
    );

    s.touch_session(&full.id, t(500)).await.unwrap();
    s.touch_session(&full.id, t(400)).await.unwrap();
    assert_eq!(
        s.session_by_hash(&[2; 32]).await.unwrap().unwrap().last_seen_at,
        t(500)
    );

    let other = session(&a, 4, 600, SessionStage::Full);
    s.create_session(&other).await.unwrap();
    s.create_session(&session(&b, 5, 30, SessionStage::Full))
        .await
        .unwrap();
    let ids: Vec<_> = s
        .list_sessions(&a, t(700))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![other.id.clone(), full.id.clone()]);
    // Past its absolute end a session is not listed.
    let ids: Vec<_> = s
        .list_sessions(&a, t(1_020))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![other.id.clone()]);

    // Another account's session is not ours to end.
    assert!(!s.delete_session(&b, &full.id).await.unwrap());
    assert!(s.delete_session(&a, &full.id).await.unwrap());
    assert!(!s.delete_session(&a, &full.id).await.unwrap());
    assert_eq!(s.session_by_hash(&[2; 32]).await.unwrap(), None);

    // A duplicate secret hash is a conflict, an unknown account is not found.
    let e = s
        .create_session(&session(&a, 4, 1, SessionStage::Full))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = s
        .create_session(&session(
            &AccountId::generate().unwrap(),
            6,
            1,
            SessionStage::Full,
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // Erasing the account ends its sessions.
    assert!(s
        .erase_account(&a, &audit("account.erase", a.as_str(), t(2)))
        .await
        .unwrap());
    assert_eq!(s.session_by_hash(&[4; 32]).await.unwrap(), None);
    assert_eq!(s.list_sessions(&b, t(40)).await.unwrap().len(), 1);
}

//! The key provider inside a running server: a rotation made by another process (the CLI, another node)
//! is used for new writes within a second; the rotation period triggers an audited automatic rotation;
//! the background rewrap moves old values to the new version without being asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use skygate_core::{Tier, Timestamp};
use skygate_server::{admin, keyring};
use skygate_testkit::TestServer;

/// Values under each KEK version, as `keyring status` counts them.
async fn refs(srv: &TestServer) -> std::collections::BTreeMap<u32, u64> {
    keyring::references(&srv.store, srv.state.objects())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rotation_elsewhere_reaches_the_running_server_within_a_second() {
    let srv = TestServer::start().await.unwrap();
    assert_eq!(srv.provider.current_version(), 1);
    // Another process's view of the same keyring (what `skygate keyring rotate` opens).
    let other = keyring::open_provider(&srv.config, false).unwrap().provider;
    let v = other.rotate().unwrap();
    assert_eq!(v, 2);
    let start = Instant::now();
    while srv.provider.current_version() != v {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the server did not pick up version {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("the running server used version {v} after {:?}", start.elapsed());
    // What the server writes from now on is sealed under the new version.
    admin::create_account(&srv.store, "after@example.com", Tier::Free, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(refs(&srv).await.get(&2).copied(), Some(1));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn the_rotation_period_rotates_automatically_and_audits_it() {
    let srv = TestServer::start().await.unwrap();
    let provider = srv.provider.as_ref();
    // Fresh keyring: not due under the default 30 days.
    assert_eq!(
        keyring::rotate_if_due(&srv.store, provider, Duration::from_secs(30 * 86_400))
            .await
            .unwrap(),
        None
    );
    // A period the newest version has outlived: rotated, and recorded by the system actor.
    assert_eq!(
        keyring::rotate_if_due(&srv.store, provider, Duration::ZERO)
            .await
            .unwrap(),
        Some(2)
    );
    let log = srv.store.audit_page(0, 100).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.entry.actor.as_str(),
            last.entry.action.as_str(),
            last.entry.target.as_str()
        ),
        ("system", "keyring.rotate", "v2")
    );
    skygate_core::audit::verify_chain(&log).unwrap();
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn the_background_rewrap_moves_old_values_by_itself() {
    let srv = TestServer::start_with(|c| {
        c.keyring.rewrap_interval = Duration::from_millis(100);
        c.keyring.rewrap_batch = 3;
    })
    .await
    .unwrap();
    for i in 0..10 {
        let a = admin::create_account(
            &srv.store,
            &format!("bg{i}@example.com"),
            Tier::Free,
            Timestamp::now(),
        )
        .await
        .unwrap();
        admin::create_project(&srv.store, a.id.as_str(), "p", Timestamp::now())
            .await
            .unwrap();
    }
    assert_eq!(refs(&srv).await.get(&1).copied(), Some(20));
    srv.provider.rotate().unwrap();
    let start = Instant::now();
    loop {
        let r = refs(&srv).await;
        if !r.contains_key(&1) && r.get(&2).copied() == Some(20) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "background rewrap did not finish: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Version 1 can now be retired (after the propagation window) and everything still reads.
    tokio::time::sleep(keyring::PROPAGATION).await;
    keyring::retire(
        &srv.store,
        srv.state.objects(),
        srv.provider.as_ref(),
        1,
        "operator",
    )
    .await
    .unwrap();
    for i in 0..10 {
        let a = srv
            .store
            .account_by_email(&format!("bg{i}@example.com"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(srv.store.list_projects(&a.id).await.unwrap()[0].name, "p");
    }
    srv.stop().await.unwrap();
}

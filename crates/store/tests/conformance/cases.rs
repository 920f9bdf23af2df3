//! The conformance cases: each gets a fresh, unmigrated database and must pass on every backend.

use skygate_core::{AccountId, KeyId, Mode, NewAccount, NewApiKey, NewProject, ProjectId, Tier, Timestamp};
use skygate_store::{DynStore, RevokeOutcome, StoreError};

use crate::{Db, Raw};

pub use crate::access::*;
pub use crate::console::*;
pub use crate::partial_output::*;
pub use crate::predictions::*;
pub use crate::webhooks::*;

pub(crate) fn t(us: i64) -> Timestamp {
    Timestamp::from_micros(us)
}

fn account(email: &str, at: i64) -> NewAccount {
    NewAccount {
        id: AccountId::generate().unwrap(),
        email: email.into(),
        tier: Tier::Free,
        created_at: t(at),
    }
}

pub(crate) async fn new_account(s: &DynStore, email: &str) -> AccountId {
    s.create_account(&account(email, 1)).await.unwrap().id
}

pub(crate) async fn new_project(s: &DynStore, a: &AccountId, at: i64) -> ProjectId {
    let new = NewProject {
        id: ProjectId::generate().unwrap(),
        name: format!("p{at}"),
        created_at: t(at),
    };
    s.create_project(a, &new).await.unwrap().id
}

pub(crate) fn new_key(hash_byte: u8, at: i64) -> NewApiKey {
    NewApiKey {
        id: KeyId::generate().unwrap(),
        mode: Mode::Live,
        name: format!("k{hash_byte}"),
        hash: [hash_byte; 32],
        prefix: "sk_live_".into(),
        last4: format!("{hash_byte:04}"),
        created_at: t(at),
        expires_at: None,
    }
}

fn ids<T, I>(items: Vec<T>, id: impl Fn(T) -> I) -> Vec<I> {
    items.into_iter().map(id).collect()
}

pub async fn accounts_round_trip(db: Db) {
    let s = db.migrated().await;
    let new = account("a@example.com", 42);
    let created = s.create_account(&new).await.unwrap();
    assert_eq!(
        (&created.id, created.email.as_str(), created.tier),
        (&new.id, "a@example.com", Tier::Free)
    );
    assert_eq!(created.created_at, t(42));
    assert_eq!(s.account(&new.id).await.unwrap(), Some(created.clone()));
    assert_eq!(s.account_by_email("a@example.com").await.unwrap(), Some(created));
    assert_eq!(s.account_by_email("b@example.com").await.unwrap(), None);
    assert_eq!(s.account(&AccountId::generate().unwrap()).await.unwrap(), None);
}

pub async fn duplicate_email_conflicts(db: Db) {
    let s = db.migrated().await;
    let first = new_account(&s, "a@example.com").await;
    let mut again = account("a@example.com", 2);
    again.tier = Tier::Pro;
    let r = s.create_account(&again).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let kept = s.account_by_email("a@example.com").await.unwrap().unwrap();
    assert_eq!((kept.id, kept.tier), (first, Tier::Free));
    assert_eq!(s.account(&again.id).await.unwrap(), None);
}

pub async fn set_tier(db: Db) {
    let s = db.migrated().await;
    let id = new_account(&s, "a@example.com").await;
    let other = new_account(&s, "b@example.com").await;
    for tier in Tier::ALL {
        assert!(s.set_account_tier(&id, tier).await.unwrap());
        assert_eq!(s.account(&id).await.unwrap().unwrap().tier, tier);
    }
    assert_eq!(
        s.account(&other).await.unwrap().unwrap().tier,
        Tier::Free,
        "only the named account changes"
    );
    assert!(!s
        .set_account_tier(&AccountId::generate().unwrap(), Tier::Pro)
        .await
        .unwrap());
}

pub async fn projects_are_scoped_to_their_account(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let b = new_account(&s, "b@example.com").await;
    let p1 = new_project(&s, &a, 10).await;
    let p2 = new_project(&s, &a, 20).await;
    let pb = new_project(&s, &b, 30).await;
    let got = s.project(&a, &p1).await.unwrap().unwrap();
    assert_eq!(
        (&got.account_id, got.name.as_str(), got.created_at),
        (&a, "p10", t(10))
    );
    assert_eq!(
        s.project(&a, &pb).await.unwrap(),
        None,
        "another account's project must not be found"
    );
    assert_eq!(s.project(&b, &p1).await.unwrap(), None);
    assert_eq!(ids(s.list_projects(&a).await.unwrap(), |p| p.id), vec![p2, p1]);
    assert_eq!(
        ids(s.list_projects(&b).await.unwrap(), |p| p.id),
        vec![pb.clone()]
    );
    assert!(s
        .list_projects(&AccountId::generate().unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.find_project(&pb).await.unwrap().unwrap().account_id, b);
    assert_eq!(
        s.find_project(&ProjectId::generate().unwrap()).await.unwrap(),
        None
    );

    // Equal creation times fall back to id order, newest-first meaning descending.
    let mut same = vec![
        new_project(&s, &b, 5).await,
        new_project(&s, &b, 5).await,
        new_project(&s, &b, 5).await,
    ];
    same.sort();
    same.reverse();
    same.insert(0, pb);
    assert_eq!(ids(s.list_projects(&b).await.unwrap(), |p| p.id), same);
}

pub async fn project_for_unknown_account_is_not_found(db: Db) {
    let s = db.migrated().await;
    let new = NewProject {
        id: ProjectId::generate().unwrap(),
        name: "x".into(),
        created_at: t(1),
    };
    let r = s.create_project(&AccountId::generate().unwrap(), &new).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert_eq!(s.find_project(&new.id).await.unwrap(), None);
}

pub async fn keys_create_and_list_newest_first(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let p = new_project(&s, &a, 1).await;
    let other = new_project(&s, &a, 2).await;
    let nk = new_key(1, 100);
    let k1 = s.create_api_key(&p, &nk).await.unwrap();
    assert_eq!(
        (&k1.id, &k1.project, &k1.account, k1.mode),
        (&nk.id, &p, &a, Mode::Live)
    );
    assert_eq!(
        (k1.name.as_str(), k1.prefix.as_str(), k1.last4.as_str()),
        ("k1", "sk_live_", "0001")
    );
    assert_eq!(
        (k1.created_at, k1.last_used_at, k1.expires_at, k1.revoked_at),
        (t(100), None, None, None)
    );
    let k2 = s.create_api_key(&p, &new_key(2, 200)).await.unwrap();
    let k3 = s.create_api_key(&other, &new_key(3, 300)).await.unwrap();
    let listed = s.list_api_keys(&p).await.unwrap();
    assert_eq!(
        listed,
        vec![k2.clone(), k1.clone()],
        "what create returns is what list shows"
    );
    assert_eq!(
        ids(s.list_api_keys(&other).await.unwrap(), |k| k.id),
        vec![k3.id.clone()]
    );
    assert!(s
        .list_api_keys(&ProjectId::generate().unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s.list_all_api_keys().await.unwrap(), |k| k.id),
        vec![k3.id, k2.id, k1.id.clone()]
    );

    let mut same = [
        s.create_api_key(&p, &new_key(4, 100)).await.unwrap().id,
        s.create_api_key(&p, &new_key(5, 100)).await.unwrap().id,
        k1.id,
    ];
    same.sort();
    same.reverse();
    let listed = ids(s.list_api_keys(&p).await.unwrap(), |k| k.id);
    assert_eq!(
        &listed[1..],
        &same[..],
        "equal creation times fall back to id, descending"
    );
}

pub async fn duplicate_key_hash_conflicts(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let p = new_project(&s, &a, 1).await;
    let q = new_project(&s, &a, 2).await;
    s.create_api_key(&p, &new_key(9, 1)).await.unwrap();
    let r = s.create_api_key(&p, &new_key(9, 2)).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s.create_api_key(&q, &new_key(9, 3)).await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "the hash is unique across projects: {r:?}"
    );
    assert_eq!(s.list_all_api_keys().await.unwrap().len(), 1);
}

pub async fn key_for_unknown_project_is_not_found(db: Db) {
    let s = db.migrated().await;
    let r = s
        .create_api_key(&ProjectId::generate().unwrap(), &new_key(1, 1))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert!(s.list_all_api_keys().await.unwrap().is_empty());
}

pub async fn lookup_by_hash(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    s.set_account_tier(&a, Tier::Business).await.unwrap();
    let p = new_project(&s, &a, 1).await;
    let mut nk = new_key(5, 1);
    nk.mode = Mode::Test;
    let k = s.create_api_key(&p, &nk).await.unwrap();
    let r = s.api_key_by_hash(&[5; 32]).await.unwrap().unwrap();
    assert_eq!((&r.key_id, &r.project, &r.account), (&k.id, &p, &a));
    assert_eq!((r.mode, r.tier, r.hash), (Mode::Test, Tier::Business, [5; 32]));
    assert_eq!((r.expires_at, r.revoked_at), (None, None));
    assert!(r.is_active(t(2)));
    assert_eq!(s.api_key_by_hash(&[6; 32]).await.unwrap(), None);

    // The tier is read at lookup time, so a tier change applies to the next request.
    s.set_account_tier(&a, Tier::Free).await.unwrap();
    assert_eq!(
        s.api_key_by_hash(&[5; 32]).await.unwrap().unwrap().tier,
        Tier::Free
    );
}

pub async fn revoke_outcomes(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let p = new_project(&s, &a, 1).await;
    let k = s.create_api_key(&p, &new_key(1, 1)).await.unwrap();
    let kept = s.create_api_key(&p, &new_key(2, 2)).await.unwrap();
    assert_eq!(
        s.revoke_api_key(&k.id, t(50)).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(
        s.revoke_api_key(&k.id, t(60)).await.unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    let auth = s.api_key_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(auth.revoked_at, Some(t(50)), "the first revocation time is kept");
    assert!(!auth.is_active(t(51)));
    let listed = s.list_api_keys(&p).await.unwrap();
    assert_eq!(
        ids(listed, |k| (k.id, k.revoked_at)),
        vec![(kept.id, None), (k.id, Some(t(50)))]
    );
    assert_eq!(
        s.revoke_api_key(&KeyId::generate().unwrap(), t(1)).await.unwrap(),
        RevokeOutcome::NotFound
    );
}

pub async fn expiry_round_trips(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let p = new_project(&s, &a, 1).await;
    let far = 1_000_000_000_000_007;
    let mut nk = new_key(1, 1);
    nk.expires_at = Some(t(far));
    let k = s.create_api_key(&p, &nk).await.unwrap();
    assert_eq!(k.expires_at, Some(t(far)));
    let r = s.api_key_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(r.expires_at, Some(t(far)));
    assert!(r.is_active(t(far - 1)));
    assert!(!r.is_active(t(far)));

    // The full 64-bit range survives (BIGINT / INTEGER, not a 32-bit or floating column).
    let mut nk = new_key(2, i64::MAX);
    nk.expires_at = Some(t(i64::MIN));
    s.create_api_key(&p, &nk).await.unwrap();
    let listed = s.list_api_keys(&p).await.unwrap();
    assert_eq!(
        (listed[0].created_at, listed[0].expires_at),
        (t(i64::MAX), Some(t(i64::MIN)))
    );
}

pub async fn touch_takes_the_max_and_ignores_unknown(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "a@example.com").await;
    let p = new_project(&s, &a, 1).await;
    let k = s.create_api_key(&p, &new_key(1, 1)).await.unwrap().id;
    let idle = s.create_api_key(&p, &new_key(2, 2)).await.unwrap().id;
    s.touch_api_keys(&[(k.clone(), t(500)), (KeyId::generate().unwrap(), t(9))])
        .await
        .unwrap();
    assert_eq!(last_used(&s, &p, &k).await, Some(t(500)));
    assert_eq!(last_used(&s, &p, &idle).await, None, "other keys are untouched");
    s.touch_api_keys(&[(k.clone(), t(400))]).await.unwrap();
    assert_eq!(
        last_used(&s, &p, &k).await,
        Some(t(500)),
        "an older use never moves it back"
    );
    s.touch_api_keys(&[(k.clone(), t(600)), (k.clone(), t(550)), (idle.clone(), t(7))])
        .await
        .unwrap();
    assert_eq!(
        last_used(&s, &p, &k).await,
        Some(t(600)),
        "the latest of a batch wins"
    );
    assert_eq!(last_used(&s, &p, &idle).await, Some(t(7)));
    s.touch_api_keys(&[]).await.unwrap();
}

async fn last_used(s: &DynStore, p: &ProjectId, key: &KeyId) -> Option<Timestamp> {
    s.list_api_keys(p)
        .await
        .unwrap()
        .into_iter()
        .find(|k| &k.id == key)
        .unwrap()
        .last_used_at
}

pub async fn migrate_is_idempotent(db: Db) {
    let s = db.open().await;
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    new_account(&s, "a@example.com").await;
    s.migrate().await.unwrap();
    db.migrated().await;
    assert!(
        s.account_by_email("a@example.com").await.unwrap().is_some(),
        "migrating again keeps the data"
    );
}

/// Two nodes (or the server and the CLI) starting together on a fresh database both migrate it.
pub async fn concurrent_migrate(db: Db) {
    let (a, b, c) = (db.open().await, db.open().await, db.open().await);
    let (ra, rb, rc) = tokio::join!(a.migrate(), b.migrate(), c.migrate());
    ra.unwrap();
    rb.unwrap();
    rc.unwrap();
    new_account(&a, "a@example.com").await;
    assert!(b.account_by_email("a@example.com").await.unwrap().is_some());
}

/// The server and the operator CLI hold separate handles: a revocation through one is seen by the next
/// lookup through the other, with no cache in between.
pub async fn handles_see_each_others_writes(db: Db) {
    let server = db.migrated().await;
    let cli = db.open().await;
    let a = new_account(&cli, "a@example.com").await;
    let p = new_project(&cli, &a, 1).await;
    let k = cli.create_api_key(&p, &new_key(1, 1)).await.unwrap();
    assert!(server
        .api_key_by_hash(&[1; 32])
        .await
        .unwrap()
        .unwrap()
        .is_active(t(2)));
    assert_eq!(
        cli.revoke_api_key(&k.id, t(3)).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert!(!server
        .api_key_by_hash(&[1; 32])
        .await
        .unwrap()
        .unwrap()
        .is_active(t(4)));
    server.touch_api_keys(&[(k.id.clone(), t(5))]).await.unwrap();
    assert_eq!(cli.list_api_keys(&p).await.unwrap()[0].last_used_at, Some(t(5)));
}

pub async fn ping(db: Db) {
    let s = db.migrated().await;
    s.ping().await.unwrap();
    let want = match db {
        Db::Sqlite(..) => "sqlite",
        Db::Postgres { .. } => "postgres",
    };
    assert_eq!(s.backend(), want);
    s.close().await;
}

/// Writers on separate handles at once (server flushing key use while the CLI creates and revokes keys)
/// all succeed: SQLite writers wait on the busy timeout instead of failing, and overlapping touch batches
/// lock rows in one order on PostgreSQL, so they cannot deadlock.
pub async fn concurrent_writers(db: Db) {
    let server = db.migrated().await;
    let cli = db.open().await;
    let a = new_account(&cli, "a@example.com").await;
    let p = new_project(&cli, &a, 1).await;
    let mut keys = Vec::new();
    for i in 0..8u8 {
        keys.push(
            cli.create_api_key(&p, &new_key(i, i64::from(i)))
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..20i64 {
        let (server, cli, p, keys) = (server.clone(), cli.clone(), p.clone(), keys.clone());
        tasks.spawn(async move {
            let mut batch: Vec<_> = keys.iter().map(|k| (k.clone(), t(1_000 + round))).collect();
            if round % 2 == 0 {
                batch.reverse();
            }
            server.touch_api_keys(&batch).await.unwrap();
            let hash_byte = u8::try_from(100 + round).unwrap();
            let k = cli
                .create_api_key(&p, &new_key(hash_byte, 10 + round))
                .await
                .unwrap();
            assert_eq!(
                cli.revoke_api_key(&k.id, t(2_000)).await.unwrap(),
                RevokeOutcome::Revoked
            );
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(last_used(&server, &p, &keys[0]).await, Some(t(1_019)));
    assert_eq!(cli.list_api_keys(&p).await.unwrap().len(), 28);
}

/// Columns reviewed as not sensitive: ids, timestamps, statuses, keyed hashes, sizes, and the audit log
/// (ids and actions only, see `skygate_core::audit`). Every other column must be in
/// `skygate_store::SEALED_COLUMNS`; a new column on neither list fails this suite until it is reviewed.
const NOT_SENSITIVE: &[&str] = &[
    "accounts.id",
    "accounts.email_index",
    "accounts.shred_id",
    "accounts.tier",
    "accounts.created_at",
    "projects.id",
    "projects.account_id",
    "projects.created_at",
    "api_keys.id",
    "api_keys.project_id",
    "api_keys.mode",
    "api_keys.key_hash",
    "api_keys.prefix",
    "api_keys.last4",
    "api_keys.created_at",
    "api_keys.last_used_at",
    "api_keys.expires_at",
    "api_keys.revoked_at",
    "audit_log.seq",
    "audit_log.at",
    "audit_log.actor",
    "audit_log.action",
    "audit_log.target",
    "audit_log.detail",
    "audit_log.prev_hash",
    "audit_log.hash",
    "audit_log.account_id",
    // The client of a request-caused entry, as the issue asks the log to keep (hashed into the chain,
    // so it cannot be sealed under a shred key: see skygate_core::audit).
    "audit_log.ip",
    "audit_log.user_agent",
    "account_totp.account_id",
    "account_totp.created_at",
    "account_totp.enabled_at",
    "account_totp.last_step",
    "account_totp.failures",
    "account_totp.locked_until",
    // Keyed hashes of random codes (see the migration).
    "recovery_codes.account_id",
    "recovery_codes.code_hash",
    "recovery_codes.created_at",
    "recovery_codes.used_at",
    // The console: a salted argon2id PHC string (never the password), keyed hashes of link and
    // session secrets, and a session's client address and user agent (as the audit log keeps them).
    "accounts.password_hash",
    "accounts.password_set_at",
    "password_setup_links.token_hash",
    "password_setup_links.account_id",
    "password_setup_links.purpose",
    "password_setup_links.created_at",
    "password_setup_links.expires_at",
    "password_setup_links.used_at",
    "console_sessions.id",
    "console_sessions.account_id",
    "console_sessions.token_hash",
    "console_sessions.stage",
    "console_sessions.created_at",
    "console_sessions.last_seen_at",
    "console_sessions.expires_at",
    "console_sessions.ip",
    "console_sessions.user_agent",
    "access_tokens.id",
    "access_tokens.account_id",
    "access_tokens.scopes",
    "access_tokens.token_hash",
    "access_tokens.last4",
    "access_tokens.created_at",
    "access_tokens.last_used_at",
    "access_tokens.expires_at",
    "access_tokens.revoked_at",
    "pending_shreds.shred_id",
    "pending_shreds.reason",
    "pending_shreds.created_at",
    "predictions.id",
    "predictions.account_id",
    "predictions.project_id",
    "predictions.key_id",
    "predictions.mode",
    "predictions.model",
    "predictions.status",
    "predictions.stream",
    "predictions.shred_id",
    "predictions.progress",
    "predictions.attempts",
    "predictions.cancel_requested",
    "predictions.lease_token",
    "predictions.lease_until",
    "predictions.created_at",
    "predictions.started_at",
    "predictions.completed_at",
    "predictions.updated_at",
    "predictions.predict_time_us",
    "predictions.purge_at",
    "predictions.data_removed",
    // Timings and a short exit reason chosen by skygate (see the migration).
    "predictions.sandbox_start_us",
    "predictions.sandbox_run_us",
    "predictions.sandbox_exit",
    "retention_windows.starts_at",
    "retention_windows.ends_at",
    "retention_windows.shred_id",
    "usage_records.prediction_id",
    "usage_records.account_id",
    "usage_records.at",
    // The subscribed event mask (which events, not where to).
    "predictions.webhook_events",
    "webhook_secrets.project_id",
    "webhook_secrets.version",
    "webhook_secrets.id",
    "webhook_secrets.account_id",
    "webhook_secrets.created_at",
    "webhook_secrets.retires_at",
    "webhook_deliveries.id",
    "webhook_deliveries.prediction_id",
    "webhook_deliveries.account_id",
    "webhook_deliveries.project_id",
    "webhook_deliveries.event",
    "webhook_deliveries.state",
    "webhook_deliveries.attempts",
    "webhook_deliveries.next_attempt_at",
    "webhook_deliveries.lease_token",
    "webhook_deliveries.lease_expires",
    "webhook_deliveries.created_at",
    "webhook_deliveries.updated_at",
    "webhook_deliveries.last_status",
    // Only the store's and the dispatcher's own short reasons ("HTTP 500", "timed out", "410 Gone: the
    // endpoint is gone"), never a payload, a response body, a URL or a secret: the body excerpt is the
    // sealed `webhook_attempts.response`.
    "webhook_deliveries.last_error",
    "webhook_attempts.delivery_id",
    "webhook_attempts.number",
    "webhook_attempts.id",
    "webhook_attempts.at",
    "webhook_attempts.duration_us",
    "webhook_attempts.status",
    // The same kind of short reason as `webhook_deliveries.last_error`.
    "webhook_attempts.error",
    "webhook_attempts.next_attempt_at",
];

fn audit(action: &str, target: &str, at: i64) -> skygate_core::NewAuditEntry {
    crate::predictions::audit(action, target, t(at))
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// After a realistic workload, every column is either reviewed as not sensitive or holds only sealed
/// values of this keyring, and no column anywhere holds one of the workload's plaintexts.
pub async fn sensitive_columns_hold_no_plaintext(db: Db) {
    let s = db.migrated().await;
    let mut secrets: Vec<String> = Vec::new();
    for i in 0..3 {
        let email = format!("person{i}.secretname@example.org");
        let a = new_account(&s, &email).await;
        secrets.push(email);
        let project = format!("Project Nightingale {i}");
        let p = s
            .create_project(
                &a,
                &NewProject {
                    id: ProjectId::generate().unwrap(),
                    name: project.clone(),
                    created_at: t(2),
                },
            )
            .await
            .unwrap();
        secrets.push(project);
        let mut k = new_key(i, 3);
        k.name = format!("deploy key for alice {i}");
        secrets.push(k.name.clone());
        s.create_api_key(&p.id, &k).await.unwrap();
        s.append_audit(&audit("key.create", k.id.as_str(), 4))
            .await
            .unwrap();
        secrets.extend(sensitive_prediction_workload(&s, &p.id, i).await);
        secrets.extend(sensitive_webhook_workload(&s, &p.id, i).await);
        secrets.extend(sensitive_access_workload(&s, &a, i).await);
    }
    let erased = new_account(&s, "erased.person@example.org").await;
    secrets.push("erased.person@example.org".into());
    s.erase_account(&erased, &audit("account.erase", erased.as_str(), 5))
        .await
        .unwrap();

    let sealed: Vec<String> = skygate_store::SEALED_COLUMNS
        .iter()
        .map(|c| format!("{}.{}", c.table, c.column))
        .collect();
    let keyring = db.sealer().cipher().provider().keyring_id();
    let columns = db.columns().await;
    assert!(columns.len() >= NOT_SENSITIVE.len() + sealed.len(), "{columns:?}");
    for col in &sealed {
        assert!(columns.contains(col), "sealed column {col} is not in the schema");
    }
    for col in NOT_SENSITIVE {
        assert!(
            columns.iter().any(|c| c == col),
            "allowlisted column {col} is not in the schema"
        );
    }
    for col in &columns {
        let is_sealed = sealed.contains(col);
        assert!(
            is_sealed || NOT_SENSITIVE.contains(&col.as_str()),
            "column {col} is neither sealed nor reviewed as not sensitive"
        );
        let (table, column) = col.split_once('.').unwrap();
        let mut sealed_values = 0;
        for value in db.raw_column(table, column).await {
            let bytes = match &value {
                Raw::Text(s) => s.as_bytes().to_vec(),
                Raw::Bytes(b) => b.clone(),
                Raw::Int(_) | Raw::Null => Vec::new(),
            };
            for secret in &secrets {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{col} holds plaintext {secret:?}"
                );
            }
            // A sealed column may be NULL (data not produced yet, or purged); any value is sealed.
            if is_sealed && value != Raw::Null {
                let Raw::Bytes(b) = &value else {
                    panic!("{col}: {value:?} is not a sealed value")
                };
                let h = skygate_crypto::envelope::header_of(b).unwrap();
                assert_eq!(h.kek_id, keyring, "{col}");
                sealed_values += 1;
            }
        }
        assert!(
            !is_sealed || sealed_values > 0,
            "the workload leaves no value in {col} to check"
        );
    }
    // And the store still reads everything back.
    for i in 0..3 {
        let a = s
            .account_by_email(&format!("person{i}.secretname@example.org"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.list_projects(&a.id).await.unwrap()[0].name,
            format!("Project Nightingale {i}")
        );
    }
}

/// Erasing an account deletes its rows, records the erase in the audit chain, and destroys its shred
/// key: a copy of its sealed values taken before (a backup) no longer opens.
pub async fn erase_shreds_the_account_in_backups_too(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "gone@example.com").await;
    let keep = new_account(&s, "stays@example.com").await;
    let p = new_project(&s, &a, 1).await;
    s.create_api_key(&p, &new_key(9, 2)).await.unwrap();
    let backup = db.raw_column("accounts", "email").await;
    assert_eq!(backup.len(), 2);

    assert!(s
        .erase_account(&a, &audit("account.erase", a.as_str(), 10))
        .await
        .unwrap());
    assert!(!s
        .erase_account(&a, &audit("account.erase", a.as_str(), 11))
        .await
        .unwrap());
    assert_eq!(s.account(&a).await.unwrap(), None);
    assert_eq!(s.account_by_email("gone@example.com").await.unwrap(), None);
    assert_eq!(s.find_project(&p).await.unwrap(), None);
    assert!(s.list_all_api_keys().await.unwrap().is_empty());
    assert!(s.account(&keep).await.unwrap().is_some());

    let cipher = db.sealer().cipher();
    let place = |id: &AccountId| skygate_crypto::Aad::field("accounts", id.as_str(), "email", id.as_str());
    let mut opened = 0;
    for value in backup {
        let Raw::Bytes(b) = value else {
            panic!("not sealed")
        };
        match cipher.open(&b, &place(&keep)) {
            Ok(plain) => {
                assert_eq!(&plain[..], b"stays@example.com");
                opened += 1;
            }
            Err(_) => assert!(
                matches!(
                    cipher.open(&b, &place(&a)),
                    Err(skygate_crypto::CryptoError::Shredded(_))
                ),
                "the erased account's backed-up email must be unreadable for lack of its shred key"
            ),
        }
    }
    assert_eq!(opened, 1);
    // The address is free again, and the erase is in the audit chain.
    new_account(&s, "gone@example.com").await;
    let log = s.audit_page(0, 100).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].entry.action.as_str(), log[0].entry.target.as_str()),
        ("account.erase", a.as_str())
    );
    skygate_core::audit::verify_chain(&log).unwrap();
}

async fn rewrap_all(s: &DynStore) -> u64 {
    let mut moved = 0;
    for c in skygate_store::SEALED_COLUMNS {
        let mut after = String::new();
        loop {
            let b = s.rewrap_batch(c, &after, 2).await.unwrap();
            assert_eq!(b.failed, 0);
            moved += b.moved;
            match b.last_key {
                Some(k) => after = k,
                None => break,
            }
        }
    }
    moved
}

/// Rotation then rewrap moves every sealed value to the new version (in small batches, keyset
/// paginated), touching only the wrapped key; afterwards nothing references version 1, it can be
/// retired, and every value still reads back.
pub async fn rewrap_moves_every_value_then_retire_is_safe(db: Db) {
    let s = db.migrated().await;
    let mut accounts = Vec::new();
    for i in 0..5 {
        let a = new_account(&s, &format!("r{i}@example.com")).await;
        let p = new_project(&s, &a, i).await;
        s.create_api_key(&p, &new_key(i as u8, i)).await.unwrap();
        accounts.push(a);
    }
    let provider = db.sealer().cipher().provider().clone();
    let count = |v: u32| {
        let s = s.clone();
        async move {
            let mut n = 0;
            for c in skygate_store::SEALED_COLUMNS {
                n += s.sealed_versions(c).await.unwrap().get(&v).copied().unwrap_or(0);
            }
            n
        }
    };
    assert_eq!(count(1).await, 15);
    assert_eq!(provider.rotate().unwrap(), 2);
    // New writes use version 2 at once.
    let late = new_account(&s, "late@example.com").await;
    assert_eq!(count(2).await, 1);
    assert_eq!(rewrap_all(&s).await, 15);
    assert_eq!(count(1).await, 0);
    assert_eq!(count(2).await, 16);
    assert_eq!(rewrap_all(&s).await, 0, "rewrap is idempotent");
    provider.retire(1).unwrap();
    for (i, a) in accounts.iter().enumerate() {
        assert_eq!(
            s.account(a).await.unwrap().unwrap().email,
            format!("r{i}@example.com")
        );
        let p = s.list_projects(a).await.unwrap();
        assert_eq!(s.list_api_keys(&p[0].id).await.unwrap().len(), 1);
    }
    assert!(s.account(&late).await.unwrap().is_some());
}

/// Two handles (a server and the CLI, or two nodes) appending at once produce one unbroken chain.
pub async fn audit_chain_appends_from_two_handles(db: Db) {
    let a = db.migrated().await;
    let b = db.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20i64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            s.append_audit(&audit("keyring.rotate", &format!("v{i}"), i))
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let log = a.audit_page(0, 1000).await.unwrap();
    assert_eq!(skygate_core::audit::verify_chain(&log).unwrap(), 20);
    assert_eq!(a.audit_page(15, 100).await.unwrap().len(), 5);
}

/// An erase that committed but died before destroying the shred key is finished on the next start.
pub async fn pending_shreds_are_finished(db: Db) {
    let s = db.migrated().await;
    assert_eq!(s.finish_pending_shreds().await.unwrap(), 0);
    let a = new_account(&s, "half@example.com").await;
    let p = new_project(&s, &a, 1).await;
    // The erase runs to completion here; re-running the finisher afterwards finds nothing left.
    s.erase_account(&a, &audit("account.erase", a.as_str(), 2))
        .await
        .unwrap();
    assert_eq!(s.finish_pending_shreds().await.unwrap(), 0);
    assert_eq!(s.find_project(&p).await.unwrap(), None);
}

/// A stored value edited in place, or copied from another row, fails with an error that names the place
/// (never the value), and the other rows keep working.
pub async fn tampered_or_swapped_values_fail_closed(db: Db) {
    let s = db.migrated().await;
    let a = new_account(&s, "alice@example.com").await;
    let b = new_account(&s, "bob@example.com").await;
    let original = db.raw_get("accounts", "email", a.as_str()).await;

    // Every region of the sealed value: format, kek id, version, shred id, nonce, length, wrapped key,
    // ciphertext, tag.
    for pos in [0, 2, 6, 12, 20, 30, 40, original.len() - 20, original.len() - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x04;
        db.raw_set("accounts", "email", a.as_str(), &bad).await;
        let err = s.account(&a).await.unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, StoreError::Sealed { .. }), "byte {pos}: {err:?}");
        assert!(
            shown.contains("accounts.email") && !shown.contains("alice"),
            "{shown}"
        );
    }
    // Bob's sealed email copied into Alice's row: bound to Bob's row, so it does not open here.
    let bobs = db.raw_get("accounts", "email", b.as_str()).await;
    db.raw_set("accounts", "email", a.as_str(), &bobs).await;
    assert!(matches!(s.account(&a).await, Err(StoreError::Sealed { .. })));
    // Truncated.
    db.raw_set("accounts", "email", a.as_str(), &original[..original.len() / 2])
        .await;
    assert!(matches!(s.account(&a).await, Err(StoreError::Sealed { .. })));
    // Bob is unaffected, and restoring the bytes restores Alice.
    assert_eq!(s.account(&b).await.unwrap().unwrap().email, "bob@example.com");
    db.raw_set("accounts", "email", a.as_str(), &original).await;
    assert_eq!(s.account(&a).await.unwrap().unwrap().email, "alice@example.com");
}

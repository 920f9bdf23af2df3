//! One conformance suite for every `Store` backend. Each case is written once and run against SQLite
//! (a fresh file per test) and PostgreSQL (a fresh schema per test, when SKYGATE_TEST_DATABASE_URL is
//! set; otherwise it is skipped loudly, or fails under SKYGATE_TEST_REQUIRE_ALL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use skygate_core::{AccountId, KeyId, Mode, NewAccount, NewApiKey, NewProject, ProjectId, Tier, Timestamp};
use skygate_store::postgres::PgStore;
use skygate_store::sqlite::SqliteStore;
use skygate_store::{DynStore, RevokeOutcome, Store, StoreError};

fn require_all() -> bool {
    std::env::var("SKYGATE_TEST_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn with_sqlite<F, Fut>(f: F)
where
    F: FnOnce(DynStore, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store: DynStore = Arc::new(SqliteStore::open(&path).await.unwrap());
    store.migrate().await.unwrap();
    f(store, format!("sqlite://{}", path.display())).await;
}

async fn with_postgres<F, Fut>(test: &str, f: F)
where
    F: FnOnce(DynStore, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(url) = std::env::var("SKYGATE_TEST_DATABASE_URL") else {
        let msg = format!("SKIPPED postgres_{test}: SKYGATE_TEST_DATABASE_URL not set");
        if require_all() {
            panic!("{msg} (SKYGATE_TEST_REQUIRE_ALL is set)");
        }
        eprintln!("{msg}");
        return;
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pg = Arc::new(PgStore::connect_in_schema(&url, &schema).await.unwrap());
    pg.migrate().await.unwrap();
    let store: DynStore = pg.clone();
    f(store, schema).await;
    pg.drop_schema().await.unwrap();
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::with_sqlite(super::cases::$name).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::with_postgres(stringify!($name), super::cases::$name).await } )*
        }
    };
}

conformance!(
    accounts_roundtrip,
    duplicate_email_conflicts,
    set_tier,
    projects_are_scoped_to_their_account,
    project_for_unknown_account_is_not_found,
    keys_create_and_list_newest_first,
    duplicate_key_hash_conflicts,
    key_for_unknown_project_is_not_found,
    lookup_by_hash,
    revoke_outcomes,
    expiry_round_trips,
    touch_takes_the_max_and_ignores_unknown,
    migrate_is_idempotent,
    ping_works,
);

fn t(us: i64) -> Timestamp {
    Timestamp::from_micros(us)
}

pub async fn new_account(s: &DynStore, email: &str) -> AccountId {
    let id = AccountId::generate().unwrap();
    s.create_account(&NewAccount {
        id: id.clone(),
        email: email.into(),
        tier: Tier::Free,
        created_at: t(1),
    })
    .await
    .unwrap();
    id
}

pub async fn new_project(s: &DynStore, a: &AccountId, at: i64) -> ProjectId {
    let id = ProjectId::generate().unwrap();
    s.create_project(
        a,
        &NewProject {
            id: id.clone(),
            name: "p".into(),
            created_at: t(at),
        },
    )
    .await
    .unwrap();
    id
}

pub fn new_key(hash_byte: u8, at: i64) -> NewApiKey {
    NewApiKey {
        id: KeyId::generate().unwrap(),
        mode: Mode::Live,
        name: format!("k{hash_byte}"),
        hash: [hash_byte; 32],
        prefix: "sk_live_".into(),
        last4: "abcd".into(),
        created_at: t(at),
        expires_at: None,
    }
}

mod cases {
    use super::*;

    pub async fn accounts_roundtrip(s: DynStore, _: String) {
        let id = new_account(&s, "a@example.com").await;
        let a = s.account(&id).await.unwrap().unwrap();
        assert_eq!(a.email, "a@example.com");
        assert_eq!(a.tier, Tier::Free);
        assert_eq!(a.created_at, t(1));
        assert_eq!(s.account_by_email("a@example.com").await.unwrap().unwrap().id, id);
        assert!(s.account_by_email("b@example.com").await.unwrap().is_none());
        assert!(s
            .account(&AccountId::generate().unwrap())
            .await
            .unwrap()
            .is_none());
    }

    pub async fn duplicate_email_conflicts(s: DynStore, _: String) {
        new_account(&s, "a@example.com").await;
        let again = NewAccount {
            id: AccountId::generate().unwrap(),
            email: "a@example.com".into(),
            tier: Tier::Pro,
            created_at: t(2),
        };
        assert!(matches!(
            s.create_account(&again).await,
            Err(StoreError::Conflict(_))
        ));
    }

    pub async fn set_tier(s: DynStore, _: String) {
        let id = new_account(&s, "a@example.com").await;
        assert!(s.set_account_tier(&id, Tier::Enterprise).await.unwrap());
        assert_eq!(s.account(&id).await.unwrap().unwrap().tier, Tier::Enterprise);
        assert!(!s
            .set_account_tier(&AccountId::generate().unwrap(), Tier::Pro)
            .await
            .unwrap());
    }

    pub async fn projects_are_scoped_to_their_account(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let b = new_account(&s, "b@example.com").await;
        let p1 = new_project(&s, &a, 10).await;
        let p2 = new_project(&s, &a, 20).await;
        let pb = new_project(&s, &b, 30).await;
        assert_eq!(s.project(&a, &p1).await.unwrap().unwrap().account_id, a);
        assert!(
            s.project(&a, &pb).await.unwrap().is_none(),
            "another account's project must not be found"
        );
        let list: Vec<_> = s
            .list_projects(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(list, vec![p2, p1.clone()]);
        assert_eq!(s.find_project(&pb).await.unwrap().unwrap().account_id, b);
        assert!(s
            .find_project(&ProjectId::generate().unwrap())
            .await
            .unwrap()
            .is_none());
    }

    pub async fn project_for_unknown_account_is_not_found(s: DynStore, _: String) {
        let r = s
            .create_project(
                &AccountId::generate().unwrap(),
                &NewProject {
                    id: ProjectId::generate().unwrap(),
                    name: "x".into(),
                    created_at: t(1),
                },
            )
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }

    pub async fn keys_create_and_list_newest_first(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let p = new_project(&s, &a, 1).await;
        let other = new_project(&s, &a, 2).await;
        let k1 = s.create_api_key(&p, &new_key(1, 100)).await.unwrap();
        assert_eq!(k1.project, p);
        assert_eq!(k1.account, a);
        assert_eq!(k1.last4, "abcd");
        assert!(k1.last_used_at.is_none() && k1.revoked_at.is_none());
        let k2 = s.create_api_key(&p, &new_key(2, 200)).await.unwrap();
        let k3 = s.create_api_key(&other, &new_key(3, 300)).await.unwrap();
        let ids: Vec<_> = s
            .list_api_keys(&p)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(ids, vec![k2.id.clone(), k1.id.clone()]);
        let all: Vec<_> = s
            .list_all_api_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(all, vec![k3.id, k2.id, k1.id]);
    }

    pub async fn duplicate_key_hash_conflicts(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let p = new_project(&s, &a, 1).await;
        s.create_api_key(&p, &new_key(9, 1)).await.unwrap();
        assert!(matches!(
            s.create_api_key(&p, &new_key(9, 2)).await,
            Err(StoreError::Conflict(_))
        ));
    }

    pub async fn key_for_unknown_project_is_not_found(s: DynStore, _: String) {
        let r = s
            .create_api_key(&ProjectId::generate().unwrap(), &new_key(1, 1))
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }

    pub async fn lookup_by_hash(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        s.set_account_tier(&a, Tier::Business).await.unwrap();
        let p = new_project(&s, &a, 1).await;
        let mut nk = new_key(5, 1);
        nk.mode = Mode::Test;
        let k = s.create_api_key(&p, &nk).await.unwrap();
        let r = s.api_key_by_hash(&[5; 32]).await.unwrap().unwrap();
        assert_eq!(r.key_id, k.id);
        assert_eq!(r.project, p);
        assert_eq!(r.account, a);
        assert_eq!(r.tier, Tier::Business);
        assert_eq!(r.mode, Mode::Test);
        assert_eq!(r.hash, [5; 32]);
        assert!(s.api_key_by_hash(&[6; 32]).await.unwrap().is_none());
    }

    pub async fn revoke_outcomes(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let p = new_project(&s, &a, 1).await;
        let k = s.create_api_key(&p, &new_key(1, 1)).await.unwrap();
        assert_eq!(
            s.revoke_api_key(&k.id, t(50)).await.unwrap(),
            RevokeOutcome::Revoked
        );
        assert_eq!(
            s.revoke_api_key(&k.id, t(60)).await.unwrap(),
            RevokeOutcome::AlreadyRevoked
        );
        assert_eq!(
            s.api_key_by_hash(&[1; 32]).await.unwrap().unwrap().revoked_at,
            Some(t(50))
        );
        assert_eq!(
            s.revoke_api_key(&KeyId::generate().unwrap(), t(1)).await.unwrap(),
            RevokeOutcome::NotFound
        );
    }

    pub async fn expiry_round_trips(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let p = new_project(&s, &a, 1).await;
        let mut nk = new_key(1, 1);
        nk.expires_at = Some(t(1_000_000_000_000_007));
        let k = s.create_api_key(&p, &nk).await.unwrap();
        assert_eq!(k.expires_at, Some(t(1_000_000_000_000_007)));
        let r = s.api_key_by_hash(&[1; 32]).await.unwrap().unwrap();
        assert_eq!(r.expires_at, Some(t(1_000_000_000_000_007)));
        assert!(r.is_active(t(1_000_000_000_000_006)));
        assert!(!r.is_active(t(1_000_000_000_000_007)));
    }

    pub async fn touch_takes_the_max_and_ignores_unknown(s: DynStore, _: String) {
        let a = new_account(&s, "a@example.com").await;
        let p = new_project(&s, &a, 1).await;
        let k = s.create_api_key(&p, &new_key(1, 1)).await.unwrap();
        s.touch_api_keys(&[(k.id.clone(), t(500)), (KeyId::generate().unwrap(), t(9))])
            .await
            .unwrap();
        assert_eq!(s.list_api_keys(&p).await.unwrap()[0].last_used_at, Some(t(500)));
        s.touch_api_keys(&[(k.id.clone(), t(400))]).await.unwrap();
        assert_eq!(s.list_api_keys(&p).await.unwrap()[0].last_used_at, Some(t(500)));
        s.touch_api_keys(&[(k.id.clone(), t(600))]).await.unwrap();
        assert_eq!(s.list_api_keys(&p).await.unwrap()[0].last_used_at, Some(t(600)));
        s.touch_api_keys(&[]).await.unwrap();
    }

    pub async fn migrate_is_idempotent(s: DynStore, _: String) {
        s.migrate().await.unwrap();
        s.migrate().await.unwrap();
        new_account(&s, "a@example.com").await;
        s.migrate().await.unwrap();
        assert!(s.account_by_email("a@example.com").await.unwrap().is_some());
    }

    pub async fn ping_works(s: DynStore, _: String) {
        s.ping().await.unwrap();
        assert!(["sqlite", "postgres"].contains(&s.backend()));
    }
}

/// Both migration trees reach the same tables and columns.
#[tokio::test]
async fn both_backends_reach_the_same_schema() {
    let mut sqlite_cols = BTreeSet::new();
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    Store::migrate(&lite).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(lite.pool())
    .await
    .unwrap();
    for table in tables {
        let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(&table)
            .fetch_all(lite.pool())
            .await
            .unwrap();
        for c in cols {
            sqlite_cols.insert(format!("{table}.{c}"));
        }
    }
    assert!(sqlite_cols.contains("api_keys.key_hash"), "{sqlite_cols:?}");
    with_postgres("same_schema", |store, schema| async move {
        let _ = store;
        let url = std::env::var("SKYGATE_TEST_DATABASE_URL").unwrap();
        let pg = PgStore::connect_in_schema(&url, &schema).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name NOT LIKE '_sqlx%'",
        )
        .bind(&schema)
        .fetch_all(pg.pool())
        .await
        .unwrap();
        let pg_cols: BTreeSet<String> = rows.into_iter().map(|(t, c)| format!("{t}.{c}")).collect();
        assert_eq!(pg_cols, sqlite_cols);
    })
    .await;
}

/// Two handles migrating the same database at once (two nodes starting together).
#[tokio::test]
async fn concurrent_migrations_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.db");
    let a = SqliteStore::open(&p).await.unwrap();
    let b = SqliteStore::open(&p).await.unwrap();
    let (ra, rb) = tokio::join!(Store::migrate(&a), Store::migrate(&b));
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test]
async fn concurrent_migrations_on_postgres() {
    with_postgres("concurrent_migrations", |_, schema| async move {
        let url = std::env::var("SKYGATE_TEST_DATABASE_URL").unwrap();
        let a = PgStore::connect_in_schema(&url, &schema).await.unwrap();
        let b = PgStore::connect_in_schema(&url, &schema).await.unwrap();
        let (ra, rb) = tokio::join!(Store::migrate(&a), Store::migrate(&b));
        ra.unwrap();
        rb.unwrap();
    })
    .await;
}

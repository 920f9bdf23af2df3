//! Per-request credential check: parse + checksum + HMAC-SHA256 + in-memory index lookup (the cache
//! hit path every request after the first takes), beside its parts and the store-lookup miss path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use skygate_core::{ApiKey, KeyHasher, Mode, Pepper, Tier, Timestamp};
use skygate_server::admin;
use skygate_server::auth::{Authenticator, CacheLookup};
use skygate_store::DynStore;

fn setup(rt: &tokio::runtime::Runtime, ttl: Duration) -> (Authenticator, String) {
    rt.block_on(async {
        let store: DynStore = Arc::new(
            skygate_store::sqlite::SqliteStore::open_in_memory(skygate_store::Sealer::ephemeral().unwrap())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let hasher: Arc<dyn KeyHasher> = Arc::new(Pepper::from_bytes([7; 32]));
        let now = Timestamp::now();
        let acct = admin::create_account(&store, "bench@example.com", Tier::Pro, now)
            .await
            .unwrap();
        let proj = admin::create_project(&store, acct.id.as_str(), "bench", now)
            .await
            .unwrap();
        let key = admin::create_key(
            &store,
            hasher.as_ref(),
            &skygate_server::config::AccountsConfig::default(),
            proj.id.as_str(),
            Mode::Live,
            None,
            None,
            now,
        )
        .await
        .unwrap()
        .secret;
        let auth = Authenticator::new(store, hasher, ttl);
        auth.authenticate(Some(key.expose().as_bytes()), now)
            .await
            .unwrap();
        (auth, key.expose().to_owned())
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (auth, key) = setup(&rt, Duration::from_secs(1));
    let pepper = Pepper::from_bytes([7; 32]);

    c.bench_function("key_parse_checksum", |b| {
        b.iter(|| ApiKey::parse(black_box(&key)).unwrap())
    });
    c.bench_function("key_hmac_sha256", |b| {
        b.iter(|| pepper.hash(black_box(key.as_bytes())))
    });
    c.bench_function("credential_check_cached", |b| {
        b.iter(|| {
            let now = Timestamp::now();
            match auth.check_cached(Some(black_box(key.as_bytes())), now) {
                CacheLookup::Decided(Ok(a)) => a,
                // Once per TTL the entry goes stale and one lookup refreshes it, as in production.
                CacheLookup::Miss { .. } => {
                    rt.block_on(auth.authenticate(Some(key.as_bytes()), now)).unwrap()
                }
                CacheLookup::Decided(Err(_)) | CacheLookup::Token => panic!("the key was refused"),
            }
        })
    });
    let (uncached, key2) = setup(&rt, Duration::ZERO);
    c.bench_function("credential_check_sqlite_lookup", |b| {
        b.iter(|| {
            rt.block_on(uncached.authenticate(Some(black_box(key2.as_bytes())), Timestamp::now()))
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);

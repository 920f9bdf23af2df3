//! Sealed object storage on every backend: the local directory, and S3 through a real moto server on a
//! loopback port (skipped loudly without `SKYGATE_TEST_MOTO_SERVER`, failing under
//! `SKYGATE_TEST_REQUIRE_ALL`). The same cases run on both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use skygate_crypto::{Aad, Cipher, KeyProvider, MemoryKeyring};
use skygate_store::objects::{Objects, S3Settings};
use skygate_store::StoreError;

fn cipher() -> (Cipher, Arc<MemoryKeyring>) {
    let ring = Arc::new(MemoryKeyring::new().unwrap());
    (Cipher::new(ring.clone()), ring)
}

fn aad(key: &str) -> Aad {
    Aad::parts(&[b"object", key.as_bytes(), b"acct_test"])
}

/// Deterministic, incompressible-looking bytes with a findable marker at the start.
fn data(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    let marker = b"SECRET-OUTPUT-MARKER";
    if len >= marker.len() {
        v[..marker.len()].copy_from_slice(marker);
    }
    v
}

async fn cases(objects: &Objects, ring: &MemoryKeyring) {
    // Round trips across chunk and part boundaries (64 KiB chunks, 5 MiB upload parts).
    for len in [0, 1, 65_535, 65_536, 65_537, 200_000, 6 * 1024 * 1024 + 3] {
        let key = format!("acct_test/out-{len}");
        let body = data(len);
        // Feed it in odd-sized pieces, as a network body would arrive.
        let pieces: Vec<std::io::Result<Bytes>> = body
            .chunks(7_777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let n = objects
            .put_stream(&key, &aad(&key), 0, futures_util::stream::iter(pieces))
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        assert_eq!(objects.get(&key, &aad(&key)).await.unwrap(), body, "len {len}");
    }
    // Bound to its place: another key's AAD does not open it.
    let err = objects
        .get("acct_test/out-1", &aad("acct_test/out-0"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(_) | StoreError::Sealed { .. }),
        "{err:?}"
    );
    // Missing objects and bad keys are clear errors.
    assert!(matches!(
        objects.get("acct_test/none", &aad("x")).await,
        Err(StoreError::NotFound(_))
    ));
    for bad in ["", "../etc/passwd", "a//b", "a b", "a/./b"] {
        assert!(
            matches!(objects.get(bad, &aad(bad)).await, Err(StoreError::Objects(_))),
            "{bad:?}"
        );
    }

    // Rotation: versions are counted, rewrap moves headers only, the old version can then go.
    let before = objects.versions().await.unwrap();
    assert_eq!(before.get(&1).copied(), Some(7));
    ring.rotate().unwrap();
    objects
        .put(
            "acct_test/new",
            &aad("acct_test/new"),
            0,
            Bytes::from_static(b"fresh"),
        )
        .await
        .unwrap();
    assert_eq!(objects.versions().await.unwrap().get(&2).copied(), Some(1));
    let (moved, failed) = objects.rewrap_all().await.unwrap();
    assert_eq!((moved, failed), (7, 0));
    assert_eq!(objects.rewrap_all().await.unwrap(), (0, 0), "idempotent");
    ring.retire(1).unwrap();
    for len in [0, 65_537, 6 * 1024 * 1024 + 3] {
        let key = format!("acct_test/out-{len}");
        assert_eq!(objects.get(&key, &aad(&key)).await.unwrap(), data(len));
    }

    // Crypto-shredding: destroying the shred key makes the object unreadable, even a copy of it.
    let shred = ring.create_shred_key().unwrap();
    objects
        .put(
            "acct_test/shred",
            &aad("acct_test/shred"),
            shred,
            Bytes::from(data(100_000)),
        )
        .await
        .unwrap();
    assert_eq!(
        objects
            .get("acct_test/shred", &aad("acct_test/shred"))
            .await
            .unwrap()
            .len(),
        100_000
    );
    ring.destroy_shred_key(shred).unwrap();
    assert!(objects
        .get("acct_test/shred", &aad("acct_test/shred"))
        .await
        .is_err());

    // Delete is idempotent and really deletes.
    objects.delete("acct_test/new").await.unwrap();
    objects.delete("acct_test/new").await.unwrap();
    assert!(matches!(
        objects.get("acct_test/new", &aad("acct_test/new")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!objects
        .keys()
        .await
        .unwrap()
        .contains(&"acct_test/new".to_owned()));
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (c, ring) = cipher();
    let objects = Objects::local(&dir.path().join("objects"), c).unwrap();
    cases(&objects, &ring).await;

    // What `strings` over the objects directory would find: no plaintext.
    let marker = b"SECRET-OUTPUT-MARKER";
    let mut files = 0;
    for e in walk(&dir.path().join("objects")) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{} holds plaintext",
            e.display()
        );
        files += 1;
    }
    assert!(files >= 7);

    // Tampering with a stored file, or truncating it, is detected.
    let key = "acct_test/out-200000";
    let path = dir.path().join("objects").join(key);
    let original = std::fs::read(&path).unwrap();
    for at in [0, 10, 40, 70_000, original.len() - 1] {
        let mut bad = original.clone();
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert!(
            objects.get(key, &aad(key)).await.is_err(),
            "flip at {at} was accepted"
        );
    }
    for cut in [10, 65_536 + 60, original.len() - 16] {
        std::fs::write(&path, &original[..cut]).unwrap();
        assert!(
            objects.get(key, &aad(key)).await.is_err(),
            "truncation at {cut} was accepted"
        );
    }
    std::fs::write(&path, &original).unwrap();
    assert_eq!(objects.get(key, &aad(key)).await.unwrap(), data(200_000));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn in_memory() {
    let (c, ring) = cipher();
    cases(&Objects::in_memory(c), &ring).await;
}

#[tokio::test]
async fn s3_on_moto() {
    let Some(moto) = skygate_testkit::moto::MotoServer::start("s3_on_moto").unwrap() else {
        return;
    };
    // moto needs the bucket first (object_store does not create buckets).
    let created = reqwest::Client::new()
        .put(format!("{}/outputs", moto.endpoint()))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let (c, ring) = cipher();
    let objects = Objects::s3(
        &S3Settings {
            url: "s3://outputs/skygate".into(),
            endpoint: Some(moto.endpoint()),
            region: "us-east-1".into(),
            allow_http: true,
            credentials: Some(("testing".into(), skygate_core::SecretString::new("testing"))),
        },
        c,
    )
    .unwrap();
    cases(&objects, &ring).await;
    // The bucket holds only sealed bytes under the prefix (read raw, as a backup would).
    use object_store::ObjectStoreExt;
    let raw_store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("outputs")
        .with_region("us-east-1")
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let raw = raw_store
        .get(&object_store::path::Path::from("skygate/acct_test/out-200000"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(raw.len() > 200_000);
    assert!(!raw.windows(20).any(|w| w == b"SECRET-OUTPUT-MARKER"));
}

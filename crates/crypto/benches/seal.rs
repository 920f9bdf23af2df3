//! Seal and open throughput with the local key provider, data-key generation and wrap/unwrap included:
//! `cargo bench -p skygate-crypto --bench seal`. Targets (DESIGN §5): ≥ 2 GB/s per core at ≥ 16 KiB,
//! ≤ 5 µs fixed cost. Streaming sealing of a 16 MiB object is measured beside the single-value path.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skygate_crypto::local::{LocalKeyring, MasterKey};
use skygate_crypto::{Aad, Cipher};

fn cipher(dir: &std::path::Path) -> Cipher {
    let (master, _) = MasterKey::load_or_create_file(&dir.join("master.key")).unwrap();
    let (ring, _) = LocalKeyring::open_or_create(&dir.join("keyring"), master).unwrap();
    Cipher::new(Arc::new(ring))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cipher = cipher(dir.path());
    let aad = Aad::field(
        "predictions",
        "pred_0123456789abcdefghijkl",
        "output",
        "acct_0123456789abcdefghijkl",
    );

    let mut fixed = c.benchmark_group("fixed_cost");
    fixed.measurement_time(Duration::from_secs(3));
    for n in [0usize, 16] {
        let data = vec![0x5a; n];
        let sealed = cipher.seal(&data, &aad).unwrap();
        fixed.bench_function(BenchmarkId::new("seal", n), |b| {
            b.iter(|| cipher.seal(black_box(&data), &aad).unwrap())
        });
        fixed.bench_function(BenchmarkId::new("open", n), |b| {
            b.iter(|| cipher.open(black_box(&sealed), &aad).unwrap())
        });
    }
    fixed.finish();

    let mut g = c.benchmark_group("throughput");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in [1024usize, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024] {
        let data = vec![0xa5; n];
        let sealed = cipher.seal(&data, &aad).unwrap();
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::new("seal", n), |b| {
            b.iter(|| cipher.seal(black_box(&data), &aad).unwrap())
        });
        g.bench_function(BenchmarkId::new("open", n), |b| {
            b.iter(|| cipher.open(black_box(&sealed), &aad).unwrap())
        });
    }
    // Baseline in the same run: bare AES-256-GCM (ring, one fixed key, no data key, no wrap, no copy).
    for n in [64 * 1024usize, 1024 * 1024] {
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
        );
        let mut buf = vec![0xa5; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::new("baseline_bare_aes_gcm_seal", n), |b| {
            b.iter(|| {
                key.seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([0; 12]),
                    ring::aead::Aad::empty(),
                    black_box(&mut buf),
                )
                .unwrap()
            })
        });
    }
    let n = 16 * 1024 * 1024;
    let data = vec![0x3c; n];
    let sealed = cipher.seal_all(&data, &aad, 0).unwrap();
    g.throughput(Throughput::Bytes(n as u64));
    g.bench_function(BenchmarkId::new("stream_seal", n), |b| {
        b.iter(|| cipher.seal_all(black_box(&data), &aad, 0).unwrap())
    });
    g.bench_function(BenchmarkId::new("stream_open", n), |b| {
        b.iter(|| cipher.open_all(black_box(&sealed), &aad).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Signing and verification cost per delivery (1 KiB body).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use skygate_webhooks::{sign, verify, WebhookSecret};

const ID: &str = "msg_2b8f6c1e5d3a4f7e9c0b1a2d3e4f5a6b";
const TS: i64 = 1_700_000_000;

fn signing(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let one = [WebhookSecret::generate().unwrap()];
    let two = [one[0].clone(), WebhookSecret::generate().unwrap()];
    let mut headers = HeaderMap::new();
    sign(&one, ID, TS, &body).apply(&mut headers);

    let mut group = c.benchmark_group("webhooks");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("sign/1KiB/1 secret", |b| {
        b.iter(|| sign(black_box(&one), ID, TS, black_box(&body)))
    });
    group.bench_function("sign/1KiB/2 secrets", |b| {
        b.iter(|| sign(black_box(&two), ID, TS, black_box(&body)))
    });
    group.bench_function("verify/1KiB/both schemes", |b| {
        b.iter(|| {
            verify(
                &one,
                black_box(&headers),
                black_box(&body),
                TS,
                Duration::from_secs(300),
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);

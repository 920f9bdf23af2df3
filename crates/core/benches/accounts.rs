//! Account-security costs: argon2id (m=19456, t=2, p=1) hashing and verification, the dummy
//! verification an unknown email gets, and a TOTP check; with an HMAC-SHA256 credential hash measured
//! in the same run as the baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use skygate_core::password::PasswordHasher;
use skygate_core::totp::{self, TotpSecret};
use skygate_core::{KeyHasher, Pepper, SecretString, Timestamp};

fn bench(c: &mut Criterion) {
    let hasher = PasswordHasher::new().unwrap();
    let pw = SecretString::new("correct horse battery staple");
    let phc = hasher.hash(&pw).unwrap();
    let mut slow = c.benchmark_group("argon2id");
    slow.sample_size(20);
    slow.bench_function("hash", |b| b.iter(|| hasher.hash(black_box(&pw)).unwrap()));
    slow.bench_function("verify_match", |b| {
        b.iter(|| assert!(hasher.verify_or_dummy(black_box(&pw), Some(&phc))))
    });
    slow.bench_function("verify_unknown_account_dummy", |b| {
        b.iter(|| assert!(!hasher.verify_or_dummy(black_box(&pw), None)))
    });
    slow.finish();

    let secret = TotpSecret::generate().unwrap();
    let now = Timestamp::from_unix_seconds(1_700_000_000);
    let code = secret.code_at(1_700_000_000, 6);
    c.bench_function("totp_verify_3_steps", |b| {
        b.iter(|| totp::verify(&secret, black_box(&code), now, None).unwrap())
    });
    let pepper = Pepper::from_bytes([7; 32]);
    c.bench_function("baseline_hmac_sha256_credential", |b| {
        b.iter(|| pepper.hash(black_box(b"sk_live_0123456789abcdefghijABCDEFGHIJ012345")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

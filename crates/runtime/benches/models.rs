//! Built-in model cost: `sky-image` at its defaults (256x256, 20 steps) and `sky-text`. Run with
//! `cargo bench -p skygate-runtime --bench models`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use skygate_runtime::{builtin, NullControl};

fn models(c: &mut Criterion) {
    let mut g = c.benchmark_group("builtin");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));

    let image = json!({"prompt": "a lighthouse in fog", "width": 256, "height": 256, "steps": 20, "seed": 1});
    g.bench_function("sky-image 256x256 20 steps", |b| {
        b.iter(|| builtin::run("sky-image", &image, &NullControl))
    });
    let image1 = json!({"prompt": "a lighthouse in fog", "width": 256, "height": 256, "steps": 1, "seed": 1});
    g.bench_function("sky-image 256x256 1 step", |b| {
        b.iter(|| builtin::run("sky-image", &image1, &NullControl))
    });

    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    for mode in ["title", "words", "rot13"] {
        let input = json!({"prompt": prompt, "mode": mode});
        g.bench_function(format!("sky-text {mode} 900 chars"), |b| {
            b.iter(|| builtin::run("sky-text", &input, &NullControl))
        });
    }
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);

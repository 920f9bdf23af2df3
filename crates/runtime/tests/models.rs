//! Every built-in model: valid output (PNGs decode to the asked size, WAV headers add up), determinism,
//! schema defaults applied by the models themselves, clamping of odd values, and raw progress reports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use serde_json::{json, Value};
use skygate_core::models::{builtin_models, Backend};
use skygate_runtime::{builtin, Control, NullControl, Output, OutputFile, RunError};

/// Long enough that only a working stop ends it in time, short enough that a broken stop cannot hang
/// the test binary for long (dropping a Tokio runtime waits for its blocking tasks).
const LONG_COUNTDOWN: u64 = 20;

fn run(id: &str, input: Value) -> Result<Output, RunError> {
    builtin::run(id, &input, &NullControl)
}

fn files(out: Output) -> Vec<OutputFile> {
    match out {
        Output::Files(f) => f,
        Output::Text(t) => panic!("expected files, got text {t:?}"),
    }
}

fn text(out: Output) -> String {
    match out {
        Output::Text(t) => t,
        Output::Files(f) => panic!("expected text, got {f:?}"),
    }
}

/// A minimal valid input for each built-in (its required fields only).
fn minimal_input(id: &str) -> Value {
    match id {
        "echo" | "sky-text" | "sky-image" => json!({"prompt": "a quiet lake at dawn"}),
        "sky-audio" => json!({"notes": "C4 E4 G4 C5"}),
        "countdown" => json!({"seconds": 0}),
        "fail" => json!({}),
        other => panic!("no sample input for {other}"),
    }
}

#[test]
fn runtime_and_registry_agree_on_the_builtins() {
    let mut registry: Vec<String> = builtin_models()
        .into_iter()
        .map(|m| match m.backend {
            Backend::Builtin(id) => id,
            other => panic!("{}: {other:?}", m.slug),
        })
        .collect();
    let mut runtime: Vec<String> = builtin::ids().map(String::from).collect();
    registry.sort();
    runtime.sort();
    assert_eq!(registry, runtime);
}

#[test]
fn models_apply_their_schema_defaults() {
    // With every default spelled out, each model must produce exactly what it produces with the
    // field left out: the schema and the model agree on the defaults.
    for spec in builtin_models() {
        let minimal = minimal_input(&spec.slug);
        let mut explicit = minimal.clone();
        let props = spec.input_schema["properties"].as_object().unwrap();
        let mut n = 0;
        for (name, p) in props {
            if let Some(d) = p.get("default") {
                explicit[name] = d.clone();
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        assert_eq!(
            run(&spec.slug, minimal),
            run(&spec.slug, explicit),
            "{}",
            spec.slug
        );
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let out = files(run("sky-image", json!({"prompt": "x", "steps": 1})).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(png_size(&out[0].bytes), (256, 256));
    let wav = &files(run("sky-audio", json!({"text": "hi"})).unwrap())[0].bytes;
    let h = wav_header(wav);
    assert_eq!(h.sample_rate, 22050);
    assert_eq!(h.data_len, 2 * 22050 * 2);
    assert_eq!(text(run("echo", json!({"prompt": "x"})).unwrap()), "x");
    assert_eq!(
        text(run("sky-text", json!({"prompt": "hello there"})).unwrap()),
        "Hello There"
    );
}

/// Decodes a PNG, checking it is 8-bit RGB; returns (width, height).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    assert_eq!(info.buffer_size(), (info.width * info.height * 3) as usize);
    (info.width, info.height)
}

fn png_pixels(bytes: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn sky_image_makes_pngs_of_the_asked_size() {
    let input =
        json!({"prompt": "mountains", "width": 48, "height": 32, "steps": 8, "num_outputs": 3, "seed": 9});
    let out = files(run("sky-image", input).unwrap());
    assert_eq!(out.len(), 3);
    for (i, f) in out.iter().enumerate() {
        assert_eq!(f.name, format!("output-{i}.png"));
        assert_eq!(f.content_type, "image/png");
        assert_eq!(png_size(&f.bytes), (48, 32));
        // A picture, not a flat fill: plenty of distinct colours.
        let px = png_pixels(&f.bytes);
        let mut colours: Vec<&[u8]> = px.chunks(3).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 100, "output {i}: only {} colours", colours.len());
    }
    assert_ne!(out[0].bytes, out[1].bytes);
    assert_ne!(out[1].bytes, out[2].bytes);
}

#[test]
fn sky_image_is_deterministic_in_prompt_and_seed() {
    let base = json!({"prompt": "forest", "width": 40, "height": 40, "steps": 6, "seed": 1});
    let a = run("sky-image", base.clone()).unwrap();
    assert_eq!(a, run("sky-image", base.clone()).unwrap());
    let mut other_seed = base.clone();
    other_seed["seed"] = json!(2);
    assert_ne!(a, run("sky-image", other_seed).unwrap());
    let mut other_prompt = base.clone();
    other_prompt["prompt"] = json!("desert");
    assert_ne!(a, run("sky-image", other_prompt).unwrap());
    let mut more_steps = base;
    more_steps["steps"] = json!(7);
    assert_ne!(a, run("sky-image", more_steps).unwrap());
    // Without a seed, the prompt decides.
    let unseeded = json!({"prompt": "forest", "width": 24, "height": 24, "steps": 2});
    assert_eq!(
        run("sky-image", unseeded.clone()).unwrap(),
        run("sky-image", unseeded).unwrap()
    );
}

#[test]
fn sky_image_clamps_odd_values() {
    let out = files(
        run(
            "sky-image",
            json!({"prompt": "x", "width": 5000, "height": 1, "steps": 0, "num_outputs": 0, "seed": -4}),
        )
        .unwrap(),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(png_size(&out[0].bytes), (1024, 16));
    let out = files(
        run(
            "sky-image",
            json!({"prompt": "x", "width": 20.7, "height": "tall", "steps": 1}),
        )
        .unwrap(),
    );
    assert_eq!(png_size(&out[0].bytes), (21, 256));
    assert!(matches!(
        run("sky-image", json!({"width": 20})),
        Err(RunError::Failed(_))
    ));
}

struct WavHeader {
    channels: u16,
    sample_rate: u32,
    bits: u16,
    data_len: u32,
}

/// Parses and checks the canonical 44-byte header against the file's real length.
fn wav_header(b: &[u8]) -> WavHeader {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    assert_eq!(&b[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, b.len() - 8);
    assert_eq!(&b[8..16], b"WAVEfmt ");
    assert_eq!(u32_at(16), 16);
    assert_eq!(u16_at(20), 1, "PCM");
    let h = WavHeader {
        channels: u16_at(22),
        sample_rate: u32_at(24),
        bits: u16_at(34),
        data_len: u32_at(40),
    };
    assert_eq!(
        u32_at(28),
        h.sample_rate * u32::from(h.channels) * u32::from(h.bits) / 8,
        "byte rate"
    );
    assert_eq!(u16_at(32), h.channels * h.bits / 8, "block align");
    assert_eq!(&b[36..40], b"data");
    assert_eq!(h.data_len as usize, b.len() - 44);
    h
}

fn samples(wav: &[u8]) -> Vec<i16> {
    wav[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn sky_audio_writes_a_valid_wav() {
    for (input, rate, secs) in [
        (
            json!({"notes": "A4 R C5", "duration": 1.5, "sample_rate": 16000}),
            16000,
            1.5,
        ),
        (
            json!({"text": "hello world", "duration": 0.5, "sample_rate": 8000}),
            8000,
            0.5,
        ),
        (
            json!({"notes": "C4", "duration": 1000, "sample_rate": 8000}),
            8000,
            30.0,
        ),
        (
            json!({"notes": "C4", "duration": 0, "sample_rate": 44100}),
            44100,
            0.1,
        ),
    ] {
        let out = files(run("sky-audio", input.clone()).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "output.wav");
        assert_eq!(out[0].content_type, "audio/wav");
        let h = wav_header(&out[0].bytes);
        assert_eq!((h.channels, h.bits, h.sample_rate), (1, 16, rate), "{input}");
        let want = (secs * f64::from(rate)).round() as u32;
        assert_eq!(h.data_len, want * 2, "{input}");
        let s = samples(&out[0].bytes);
        let peak = s.iter().map(|v| v.unsigned_abs()).max().unwrap();
        assert!(peak > 5000, "{input}: too quiet ({peak})");
    }
}

#[test]
fn sky_audio_rests_are_silent_and_tones_are_pitched() {
    // A4 then a rest, 1 s at 8 kHz: the second half is silence, the first has ~440 Hz.
    let wav = &files(
        run(
            "sky-audio",
            json!({"notes": "A4 R", "duration": 1, "sample_rate": 8000}),
        )
        .unwrap(),
    )[0]
    .bytes;
    let s = samples(wav);
    assert!(s[4000..].iter().all(|v| *v == 0));
    let crossings = s[..4000].windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    assert!(
        (200..=240).contains(&crossings),
        "{crossings} upward zero crossings in 0.5 s"
    );
}

#[test]
fn sky_audio_is_deterministic_and_seeded() {
    let base = json!({"text": "skygate", "duration": 0.5, "seed": 3});
    let a = run("sky-audio", base.clone()).unwrap();
    assert_eq!(a, run("sky-audio", base.clone()).unwrap());
    let mut b = base.clone();
    b["seed"] = json!(4);
    assert_ne!(a, run("sky-audio", b).unwrap());
    // notes win over text
    let both = run(
        "sky-audio",
        json!({"notes": "C4", "text": "zzz", "duration": 0.5}),
    )
    .unwrap();
    assert_eq!(
        both,
        run("sky-audio", json!({"notes": "C4", "duration": 0.5})).unwrap()
    );
    for bad in [
        json!({}),
        json!({"notes": "H9"}),
        json!({"notes": " "}),
        json!({"text": ""}),
    ] {
        assert!(
            matches!(run("sky-audio", bad.clone()), Err(RunError::Failed(_))),
            "{bad}"
        );
    }
}

#[test]
fn text_models_run() {
    assert_eq!(
        text(run("echo", json!({"prompt": "ab", "repeat": 2})).unwrap()),
        "ab\nab"
    );
    assert_eq!(
        text(run("sky-text", json!({"prompt": "abc", "mode": "reverse"})).unwrap()),
        "cba"
    );
    let w = json!({"prompt": "a b c d e f g h", "mode": "words", "seed": 5});
    assert_eq!(
        run("sky-text", w.clone()).unwrap(),
        run("sky-text", w.clone()).unwrap()
    );
    let mut w2 = w;
    w2["seed"] = json!(6);
    assert_ne!(
        run(
            "sky-text",
            json!({"prompt": "a b c d e f g h", "mode": "words", "seed": 5})
        )
        .unwrap(),
        run("sky-text", w2).unwrap()
    );
    assert_eq!(
        text(run("countdown", json!({"seconds": 0.05})).unwrap()),
        "done after 0.05s"
    );
    assert_eq!(
        run("fail", json!({"message": "m"})),
        Err(RunError::Failed("m".into()))
    );
    assert!(matches!(run("nope", json!({})), Err(RunError::Unsupported(_))));
}

/// Records every raw progress report; never asks to stop.
struct Recorder {
    reports: Mutex<Vec<u8>>,
}

impl Control for Recorder {
    fn progress(&self, percent: u8) {
        self.reports.lock().unwrap().push(percent);
    }

    fn should_stop(&self) -> bool {
        false
    }
}

#[test]
fn raw_progress_reports_are_monotonic_and_end_at_100() {
    for (id, input) in [
        (
            "sky-image",
            json!({"prompt": "p", "width": 16, "height": 16, "steps": 30, "num_outputs": 2}),
        ),
        (
            "sky-audio",
            json!({"notes": "C4 D4", "duration": 2, "sample_rate": 44100}),
        ),
        ("countdown", json!({"seconds": 0.2})),
        ("sky-text", json!({"prompt": "x"})),
        ("echo", json!({"prompt": "x"})),
    ] {
        let rec = Recorder {
            reports: Mutex::new(Vec::new()),
        };
        builtin::run(id, &input, &rec).unwrap();
        let r = rec.reports.into_inner().unwrap();
        assert!(r.windows(2).all(|w| w[0] <= w[1]), "{id}: {r:?}");
        assert_eq!(r.last(), Some(&100), "{id}: {r:?}");
        assert_eq!(
            r.iter().filter(|p| **p == 100).count(),
            1,
            "{id}: 100 before the end: {r:?}"
        );
        if id == "sky-image" {
            assert!(r.len() > 60, "{id}: one report per step: {r:?}");
        }
    }
}

/// Says stop after a number of checks: every model must notice and return promptly.
struct StopAfter {
    checks: Mutex<u32>,
}

impl Control for StopAfter {
    fn progress(&self, _: u8) {}

    fn should_stop(&self) -> bool {
        let mut n = self.checks.lock().unwrap();
        *n = n.saturating_sub(1);
        *n == 0
    }
}

#[test]
fn models_stop_when_asked() {
    for (id, input) in [
        (
            "sky-image",
            json!({"prompt": "p", "width": 1024, "height": 1024, "steps": 200, "num_outputs": 2}),
        ),
        (
            "sky-audio",
            json!({"notes": "C4", "duration": 30, "sample_rate": 44100}),
        ),
        ("countdown", json!({"seconds": LONG_COUNTDOWN})),
    ] {
        let ctl = StopAfter {
            checks: Mutex::new(5),
        };
        let t = std::time::Instant::now();
        assert_eq!(builtin::run(id, &input, &ctl), Err(RunError::Cancelled), "{id}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{id}: {:?}",
            t.elapsed()
        );
    }
}

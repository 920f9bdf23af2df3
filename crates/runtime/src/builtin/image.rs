//! `sky-image`: a procedural stand-in for an image model. A scalar field starts at zero; every step is
//! one real refinement pass over every pixel that adds an octave of value noise, sampled at coordinates
//! warped by the field so far (so each pass builds on the previous ones). The finished field is mapped
//! through a seeded colour gradient and encoded as an 8-bit RGB PNG.
//!
//! Everything derives from (prompt, seed, output index) through integer hashing and plain f32
//! arithmetic, so the same input gives byte-identical PNGs. Runtime is proportional to
//! `width * height * steps * num_outputs`; progress is reported after every step and the stop flag is
//! checked every 16 rows.

use std::f32::consts::TAU;

use serde_json::Value;

use super::params::{fnv1a, int_or, mix, required_str, seed_or, truncate_chars, Rng};
use crate::control::{Control, ModelError};
use crate::{Output, OutputFile};

/// Octaves cycle with this period: step `s` adds octave `s % OCTAVES`, each later cycle at half the
/// previous cycle's weight.
const OCTAVES: usize = 6;
/// Rows between two stop checks.
const CHECK_ROWS: usize = 16;

pub(super) fn run(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    let prompt = truncate_chars(required_str(input, "prompt")?, 2000);
    let width = int_or(input, "width", 256, 16, 1024) as usize;
    let height = int_or(input, "height", 256, 16, 1024) as usize;
    let steps = int_or(input, "steps", 20, 1, 200) as usize;
    let outputs = int_or(input, "num_outputs", 1, 1, 4) as usize;
    let prompt_hash = fnv1a(prompt.as_bytes());
    let seed = seed_or(input, prompt_hash);

    let total_steps = outputs * steps;
    let mut files = Vec::with_capacity(outputs);
    for i in 0..outputs {
        let image_seed = mix(prompt_hash ^ mix(seed ^ mix(i as u64)));
        let mut field = vec![0f32; width * height];
        for step in 0..steps {
            refine(&mut field, width, height, image_seed, step, ctl)?;
            // 100 is reported only once every file is encoded.
            ctl.progress(((i * steps + step + 1) * 99 / total_steps) as u8);
        }
        let rgb = colorize(&field, width, height, image_seed, ctl)?;
        let bytes = encode_png(width as u32, height as u32, &rgb)
            .map_err(|_| ModelError::Failed("could not encode the image".into()))?;
        files.push(OutputFile {
            name: format!("output-{i}.png"),
            content_type: "image/png".into(),
            bytes,
        });
    }
    ctl.progress(100);
    Ok(Output::Files(files))
}

/// One refinement pass: adds octave `step % OCTAVES` of rotated, domain-warped value noise.
fn refine(
    field: &mut [f32],
    width: usize,
    height: usize,
    seed: u64,
    step: usize,
    ctl: &dyn Control,
) -> Result<(), ModelError> {
    let mut rng = Rng::new(mix(seed ^ (step as u64).wrapping_mul(0xa076_1d64_78bd_642f)));
    let octave = step % OCTAVES;
    let cycle = (step / OCTAVES) as f32;
    let freq = 2.5 * (1u32 << octave) as f32 * (0.85 + 0.3 * rng.next_f32());
    let amp = 0.55f32.powi(octave as i32) / (1.0 + cycle);
    let warp = 0.3 / (1.0 + octave as f32);
    let (ox, oy) = (rng.next_f32() * 512.0, rng.next_f32() * 512.0);
    let (sin, cos) = (rng.next_f32() * TAU).sin_cos();
    let lattice_seed = rng.next_u64() as u32;
    // Square pixels: both axes share one scale, so the pattern does not stretch with the aspect ratio.
    let scale = 1.0 / width.max(height) as f32;

    for (y, row) in field.chunks_exact_mut(width).take(height).enumerate() {
        if y % CHECK_ROWS == 0 {
            ctl.checkpoint()?;
        }
        let v = y as f32 * scale;
        for (x, f) in row.iter_mut().enumerate() {
            let u = x as f32 * scale;
            let (wu, wv) = (u + warp * *f, v - warp * *f);
            let px = (wu * cos - wv * sin) * freq + ox;
            let py = (wu * sin + wv * cos) * freq + oy;
            *f += amp * value_noise(px, py, lattice_seed);
        }
    }
    Ok(())
}

/// A pseudo-random value in `[-1, 1]` for each integer lattice point.
fn lattice(ix: i32, iy: i32, seed: u32) -> f32 {
    let mut h = (ix as u32).wrapping_mul(0x27d4_eb2d) ^ (iy as u32).wrapping_mul(0x1656_67b1) ^ seed;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297a_2d39);
    h ^= h >> 15;
    (h >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0
}

/// Value noise: lattice values blended with a smoothstep, continuous everywhere.
fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (ix, iy) = (x0 as i32, y0 as i32);
    let sx = fx * fx * (3.0 - 2.0 * fx);
    let sy = fy * fy * (3.0 - 2.0 * fy);
    let a = lattice(ix, iy, seed);
    let b = lattice(ix.wrapping_add(1), iy, seed);
    let c = lattice(ix, iy.wrapping_add(1), seed);
    let d = lattice(ix.wrapping_add(1), iy.wrapping_add(1), seed);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Maps the field through a seeded four-stop gradient, dimmed slightly towards the bottom.
fn colorize(
    field: &[f32],
    width: usize,
    height: usize,
    seed: u64,
    ctl: &dyn Control,
) -> Result<Vec<u8>, ModelError> {
    let (lo, hi) = field
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-6);
    let stops = palette(seed);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for (y, row) in field.chunks_exact(width).take(height).enumerate() {
        if y % CHECK_ROWS == 0 {
            ctl.checkpoint()?;
        }
        let light = 1.0 - 0.25 * (y as f32 / height as f32);
        for &f in row {
            let [r, g, b] = gradient(&stops, (f - lo) / span);
            for c in [r, g, b] {
                rgb.push((c * light * 255.0 + 0.5).clamp(0.0, 255.0) as u8);
            }
        }
    }
    Ok(rgb)
}

/// Four colour stops from dark to light, with seeded neighbouring hues.
fn palette(seed: u64) -> [[f32; 3]; 4] {
    let mut rng = Rng::new(mix(seed ^ 0x00c0_1042));
    let base = rng.next_f32();
    let spread = 0.06 + 0.3 * rng.next_f32();
    let mut stops = [[0f32; 3]; 4];
    for (k, stop) in stops.iter_mut().enumerate() {
        let hue = (base + spread * k as f32).fract();
        let sat = 0.35 + 0.55 * rng.next_f32();
        let val = 0.12 + 0.88 * (k as f32 / 3.0).powf(0.8);
        *stop = hsv_to_rgb(hue, sat, val);
    }
    stops
}

fn gradient(stops: &[[f32; 3]; 4], t: f32) -> [f32; 3] {
    let pos = t.clamp(0.0, 1.0) * 3.0;
    let i = (pos as usize).min(2);
    let local = pos - i as f32;
    let (a, b) = (stops[i], stops[i + 1]);
    [
        a[0] + (b[0] - a[0]) * local,
        a[1] + (b[1] - a[1]) * local,
        a[2] + (b[2] - a[2]) * local,
    ]
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let sector = (h6 as usize) % 6;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // fdeflate's fast mode: ~10x quicker than the default (Balanced) for these images, whose encoding
    // would otherwise cost as much as 20 steps, at files 10-70% larger (they live minutes, not years).
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_bounded_and_continuous() {
        let mut prev = value_noise(0.0, 0.3, 7);
        for i in 1..2000 {
            let x = i as f32 * 0.01;
            let n = value_noise(x, 0.3, 7);
            assert!((-1.0..=1.0).contains(&n), "{n}");
            assert!((n - prev).abs() < 0.1, "jump at {x}: {prev} -> {n}");
            prev = n;
        }
        assert_ne!(value_noise(0.5, 0.5, 1), value_noise(0.5, 0.5, 2));
    }

    #[test]
    fn palette_runs_dark_to_light() {
        for seed in 0..50 {
            let p = palette(seed);
            let luma = |c: [f32; 3]| 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2];
            assert!(luma(p[0]) < luma(p[3]), "seed {seed}: {p:?}");
            assert!(p.iter().flatten().all(|c| (0.0..=1.0).contains(c)));
        }
    }
}

//! `sky-audio`: synthesises a 16-bit mono PCM WAV. `notes` ("C4 E4 G4 C5", `R` for a rest) play in
//! order, each an equal share of `duration`; otherwise `text` becomes a tone sequence (each character a
//! step of a seeded pentatonic scale, whitespace a rest). Tones mix a sine and a triangle wave (the mix
//! is seeded) under an attack/decay/release envelope. Generated in chunks, with progress and a stop check
//! per chunk.

use serde_json::Value;

use super::params::{fnv1a, int_or, mix, num_or, optional_str, seed_or, Rng};
use crate::control::{Control, ModelError};
use crate::{Output, OutputFile};

pub(crate) const SAMPLE_RATES: [u32; 4] = [8000, 16000, 22050, 44100];
const DEFAULT_SAMPLE_RATE: u32 = 22050;
/// Samples between two progress reports / stop checks.
const CHUNK: usize = 4096;
/// Shortest tone: longer inputs are cut so every tone stays audible.
const MIN_TONE_SECS: f64 = 0.03;
const MAX_NOTES: usize = 256;
const AMPLITUDE: f64 = 0.6;

pub(super) fn run(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    let duration = num_or(input, "duration", 2.0, 0.1, 30.0);
    let sample_rate = nearest_rate(int_or(
        input,
        "sample_rate",
        DEFAULT_SAMPLE_RATE.into(),
        0,
        1_000_000,
    ));
    let notes = optional_str(input, "notes");
    let source = notes
        .or_else(|| optional_str(input, "text"))
        .ok_or_else(|| ModelError::Failed("input needs either notes or text (a string)".into()))?;
    let seed = seed_or(input, fnv1a(source.as_bytes()));
    let tones = match notes {
        Some(notes) => parse_notes(notes)?,
        None => text_tones(source, seed),
    };
    if tones.is_empty() {
        return Err(ModelError::Failed(
            "input.text must contain at least one character".into(),
        ));
    }
    let max_tones = ((duration / MIN_TONE_SECS) as usize).max(1);
    let tones = &tones[..tones.len().min(max_tones)];

    let samples = synthesize(tones, duration, sample_rate, seed, ctl)?;
    let wav = wav_bytes(sample_rate, &samples);
    ctl.progress(100);
    Ok(Output::Files(vec![OutputFile {
        name: "output.wav".into(),
        content_type: "audio/wav".into(),
        bytes: wav,
    }]))
}

/// The allowed rate closest to what was asked (the schema only lets the four through).
fn nearest_rate(asked: i64) -> u32 {
    SAMPLE_RATES
        .iter()
        .copied()
        .min_by_key(|r| (i64::from(*r) - asked).unsigned_abs())
        .unwrap_or(DEFAULT_SAMPLE_RATE)
}

/// A tone's frequency in Hz, `None` for a rest.
type Tone = Option<f64>;

/// Parses "C4 E4 G#4 Bb3 R": a letter A–G, an optional `#` or `b`, an optional octave 0–8 (default 4);
/// `R` or `-` is a rest.
fn parse_notes(notes: &str) -> Result<Vec<Tone>, ModelError> {
    let mut tones = Vec::new();
    for token in notes
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        if tones.len() == MAX_NOTES {
            break;
        }
        tones.push(parse_note(token).ok_or_else(|| {
            let shown: String = token.chars().take(12).collect();
            ModelError::Failed(format!(
                "input.notes: cannot read {shown:?}; write notes like C4, F#3 or Bb5, and R for a rest"
            ))
        })?);
    }
    if tones.is_empty() {
        return Err(ModelError::Failed(
            "input.notes must name at least one note, like \"C4 E4 G4\"".into(),
        ));
    }
    Ok(tones)
}

fn parse_note(token: &str) -> Option<Tone> {
    if matches!(token, "R" | "r" | "-") {
        return Some(None);
    }
    let mut chars = token.chars();
    let semitone: i32 = match chars.next()?.to_ascii_uppercase() {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    let (accidental, octave) = match rest.as_bytes().first() {
        Some(b'#') => (1, &rest[1..]),
        Some(b'b') => (-1, &rest[1..]),
        _ => (0, rest),
    };
    let octave: i32 = match octave {
        "" => 4,
        o if o.len() == 1 => o.parse().ok().filter(|o| (0..=8).contains(o))?,
        _ => return None,
    };
    let midi = 12 * (octave + 1) + semitone + accidental;
    Some(Some(440.0 * 2f64.powf(f64::from(midi - 69) / 12.0)))
}

/// One tone per character (at most [`MAX_NOTES`]): whitespace rests, anything else a step of a seeded
/// two-octave pentatonic scale.
fn text_tones(text: &str, seed: u64) -> Vec<Tone> {
    const PENTATONIC: [i32; 10] = [0, 2, 4, 7, 9, 12, 14, 16, 19, 21];
    let mut rng = Rng::new(mix(seed ^ 0x5a5a));
    // Root between A2 (45) and A3 (57).
    let root = 45 + rng.below(13) as i32;
    let shift = rng.next_u64();
    text.chars()
        .take(MAX_NOTES)
        .map(|c| {
            if c.is_whitespace() {
                None
            } else {
                let step = (u64::from(u32::from(c)).wrapping_add(shift) % PENTATONIC.len() as u64) as usize;
                let midi = root + PENTATONIC[step];
                Some(440.0 * 2f64.powf(f64::from(midi - 69) / 12.0))
            }
        })
        .collect()
}

fn synthesize(
    tones: &[Tone],
    duration: f64,
    sample_rate: u32,
    seed: u64,
    ctl: &dyn Control,
) -> Result<Vec<i16>, ModelError> {
    let rate = f64::from(sample_rate);
    let total = ((duration * rate).round() as usize).max(1);
    let mut rng = Rng::new(mix(seed ^ 0x00a0_0d10));
    let triangle_mix = f64::from(rng.next_f32());
    let decay = 0.5 + 2.5 * f64::from(rng.next_f32());
    let nyquist_guard = rate * 0.45;

    let n = tones.len();
    let mut out = Vec::with_capacity(total);
    let mut note = 0;
    let mut phase = 0.0f64;
    for i in 0..total {
        if i % CHUNK == 0 {
            ctl.checkpoint()?;
            ctl.progress((i * 99 / total) as u8);
        }
        // Tone k covers samples [k * total / n, (k + 1) * total / n).
        while note + 1 < n && i >= (note + 1) * total / n {
            note += 1;
            phase = 0.0;
        }
        let start = note * total / n;
        let end = (note + 1) * total / n;
        let sample = match tones[note] {
            None => 0.0,
            Some(freq) => {
                let t = (i - start) as f64 / rate;
                let len = (end - start) as f64 / rate;
                let value = (1.0 - triangle_mix) * (phase * std::f64::consts::TAU).sin()
                    + triangle_mix * (4.0 * (phase - (phase + 0.5).floor()).abs() - 1.0);
                phase = (phase + freq.min(nyquist_guard) / rate).fract();
                value * envelope(t, len, decay) * AMPLITUDE
            }
        };
        out.push((sample * f64::from(i16::MAX)).round().clamp(-32768.0, 32767.0) as i16);
    }
    Ok(out)
}

/// Linear attack (10 ms), exponential decay, linear release over the last 25% (at most 80 ms).
fn envelope(t: f64, len: f64, decay: f64) -> f64 {
    let attack = 0.01f64.min(len / 4.0);
    let release = (len * 0.25).min(0.08);
    let a = if t < attack { t / attack } else { 1.0 };
    let r = if t > len - release {
        ((len - t) / release).max(0.0)
    } else {
        1.0
    };
    a * r * (-decay * t).exp()
}

/// A canonical 44-byte RIFF/WAVE header followed by little-endian 16-bit mono PCM.
fn wav_bytes(sample_rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[test]
    fn notes_parse() {
        let t = parse_notes("A4 C4, c#4 Db4 R A0 C8 A Bb").unwrap();
        assert!(close(t[0].unwrap(), 440.0));
        assert!(close(t[1].unwrap(), 261.63));
        assert!(close(t[2].unwrap(), 277.18));
        assert!(close(t[3].unwrap(), 277.18));
        assert_eq!(t[4], None);
        assert!(close(t[5].unwrap(), 27.5));
        assert!(close(t[6].unwrap(), 4186.01));
        assert!(close(t[7].unwrap(), 440.0));
        assert!(close(t[8].unwrap(), 466.16));
        for bad in ["H4", "C9", "C##4", "C44", "4", "C-1", "x"] {
            let r = parse_notes(bad);
            assert!(matches!(r, Err(ModelError::Failed(_))), "{bad}: {r:?}");
        }
        assert!(parse_notes("  ,, ").is_err());
        assert_eq!(parse_notes(&"C4 ".repeat(1000)).unwrap().len(), MAX_NOTES);
    }

    #[test]
    fn rates_snap_to_the_allowed_set() {
        assert_eq!(nearest_rate(22050), 22050);
        assert_eq!(nearest_rate(44000), 44100);
        assert_eq!(nearest_rate(0), 8000);
        assert_eq!(nearest_rate(i64::MAX), 44100);
    }

    #[test]
    fn envelope_starts_and_ends_silent() {
        assert_eq!(envelope(0.0, 0.5, 1.0), 0.0);
        assert!(envelope(0.5, 0.5, 1.0) < 1e-9);
        assert!(envelope(0.1, 0.5, 1.0) > 0.5);
    }
}

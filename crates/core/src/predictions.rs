//! Predictions in the domain: ids, the record the store keeps, the state machine, retention windows,
//! list filters and usage. Pure: the caller passes the time in.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skygate_proto::{PredictionStatus, WebhookSpec};

use crate::ids::{AccountId, KeyId, ProjectId};
use crate::records::{Mode, Tier};
use crate::time::Timestamp;

/// A prediction id: a UUID v4 in its lowercase hyphenated form (what the Skytells API returns).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PredictionId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid prediction id (expected a UUID)")]
pub struct PredictionIdError;

impl PredictionId {
    /// A fresh random (v4) id.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)?;
        Ok(PredictionId(
            uuid::Builder::from_random_bytes(b).into_uuid().to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PredictionId {
    type Err = PredictionIdError;
    /// Any UUID spelling is accepted and normalised to the lowercase hyphenated form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 45 {
            return Err(PredictionIdError);
        }
        let u = uuid::Uuid::try_parse(s).map_err(|_| PredictionIdError)?;
        Ok(PredictionId(u.hyphenated().to_string()))
    }
}

impl TryFrom<String> for PredictionId {
    type Error = PredictionIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PredictionId> for String {
    fn from(id: PredictionId) -> String {
        id.0
    }
}

impl fmt::Display for PredictionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PredictionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PredictionId({})", self.0)
    }
}

/// One output file as the store keeps it (inside the sealed `output` column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

/// What a finished prediction produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoredOutput {
    Text { text: String },
    Files { files: Vec<StoredFile> },
}

impl StoredOutput {
    pub fn files(&self) -> &[StoredFile] {
        match self {
            StoredOutput::Files { files } => files,
            StoredOutput::Text { .. } => &[],
        }
    }
}

/// Where a prediction's output file is kept in the object store. Under the account, so an account's
/// objects can be listed and removed together.
pub fn object_key(account: &AccountId, id: &PredictionId, file: &str) -> String {
    format!("{}/{file}", object_prefix(account, id))
}

/// The object-store prefix holding one prediction's output files.
pub fn object_prefix(account: &AccountId, id: &PredictionId) -> String {
    format!("outputs/{}/{id}", account.as_str())
}

/// Output file names the runtime may produce: `[A-Za-z0-9._-]{1,64}`, not starting with a dot. They
/// become a URL path segment and an object key part.
pub fn is_valid_file_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0] != b'.'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A new prediction as the API accepted it.
#[derive(Debug, Clone)]
pub struct NewPrediction {
    pub id: PredictionId,
    pub project: ProjectId,
    pub key: Option<KeyId>,
    pub mode: Mode,
    pub model: String,
    pub stream: bool,
    pub input: Value,
    pub webhook: Option<WebhookSpec>,
    pub created_at: Timestamp,
}

/// A prediction as the store keeps it. Sensitive parts (`input`, `output`, `error`, `webhook`) were
/// sealed at rest and are `None` once the data is removed.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    pub id: PredictionId,
    pub account: AccountId,
    pub project: ProjectId,
    pub mode: Mode,
    pub model: String,
    pub status: PredictionStatus,
    pub stream: bool,
    pub input: Option<Value>,
    pub output: Option<StoredOutput>,
    pub error: Option<String>,
    pub webhook: Option<WebhookSpec>,
    pub progress: u8,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Microseconds the model ran (last attempt).
    pub predict_time_us: Option<i64>,
    /// What the sandbox of the last attempt did (absent for runs that never reached one).
    pub sandbox: Option<SandboxMetrics>,
    /// When inputs and outputs are destroyed (terminal time + retention).
    pub purge_at: Option<Timestamp>,
    pub data_removed: bool,
}

impl PredictionRecord {
    /// The record of a prediction just accepted: `pending`, nothing run yet.
    pub fn new_pending(new: &NewPrediction, account: AccountId) -> Self {
        PredictionRecord {
            id: new.id.clone(),
            account,
            project: new.project.clone(),
            mode: new.mode,
            model: new.model.clone(),
            status: PredictionStatus::Pending,
            stream: new.stream,
            input: Some(new.input.clone()),
            output: None,
            error: None,
            webhook: new.webhook.clone(),
            progress: 0,
            attempts: 0,
            cancel_requested: false,
            created_at: new.created_at,
            started_at: None,
            completed_at: None,
            updated_at: new.created_at,
            predict_time_us: None,
            sandbox: None,
            purge_at: None,
            data_removed: false,
        }
    }
}

/// A job a worker claimed: the record plus the lease it holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub record: PredictionRecord,
    pub lease: Lease,
    /// The shred key of the prediction's retention window: output objects are sealed under it too.
    pub shred: u64,
}

/// Per-tier ceilings on how many of an account's predictions may run at once (`starting` or
/// `processing`), indexed like [`Tier::ALL`]. The queue claim leaves an account's excess creates pending
/// until one of its running predictions ends; other accounts' work is claimed past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningCaps(pub [u32; 4]);

impl RunningCaps {
    /// No ceiling (the claim then takes the oldest pending predictions, whoever owns them).
    pub const NONE: RunningCaps = RunningCaps([u32::MAX; 4]);

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// The ceiling for `tier`.
    pub fn of(&self, tier: Tier) -> u32 {
        let i = Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0);
        self.0[i]
    }
}

/// A worker's lease on a running prediction. Every write a worker makes checks the token, so a worker
/// whose lease expired and was taken over cannot overwrite the new owner's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub until: Timestamp,
}

/// How a run ended, as the worker reports it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Succeeded(StoredOutput),
    Failed(String),
    Cancelled,
}

impl Completion {
    pub fn status(&self) -> PredictionStatus {
        match self {
            Completion::Succeeded(_) => PredictionStatus::Succeeded,
            Completion::Failed(_) => PredictionStatus::Failed,
            Completion::Cancelled => PredictionStatus::Cancelled,
        }
    }
}

/// `GET /v1/predictions` filters, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Inclusive lower bound on `created_at`.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound on `created_at`.
    pub until: Option<Timestamp>,
    pub model: Option<String>,
    /// Only predictions of this mode (test keys see test data only).
    pub mode: Option<Mode>,
}

/// Why a list filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{0} must be a date in the form YYYY-MM-DD")]
    DateFormat(&'static str),
    #[error("from must not be after to")]
    DateRange,
}

/// Parses `from`/`to` (`YYYY-MM-DD`, inclusive, UTC) into `[from 00:00, to+1 00:00)`.
pub fn date_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Option<Timestamp>, Option<Timestamp>), FilterError> {
    let day = |s: &str, name: &'static str| -> Result<i64, FilterError> {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        if s.len() != 10 {
            return Err(FilterError::DateFormat(name));
        }
        let d = time::Date::parse(s, &fmt).map_err(|_| FilterError::DateFormat(name))?;
        Ok(d.midnight().assume_utc().unix_timestamp())
    };
    let from = from.map(|s| day(s, "from")).transpose()?;
    let to = to.map(|s| day(s, "to")).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(FilterError::DateRange);
        }
    }
    Ok((
        from.map(Timestamp::from_unix_seconds),
        to.map(|t| Timestamp::from_unix_seconds(t + 86_400)),
    ))
}

/// The retention window a prediction created at `at` belongs to: windows are `len` long and aligned to
/// the epoch. All predictions of one window share a shred key, destroyed once every one of them has
/// been purged.
pub fn window_start(at: Timestamp, len: Duration) -> Timestamp {
    let len = i64::try_from(len.as_micros()).unwrap_or(i64::MAX).max(1);
    Timestamp::from_micros(at.as_micros().div_euclid(len) * len)
}

/// What the sandbox of one run did: how long it took to build (namespaces, mounts, limits, until the
/// model started), how long the model ran, and how it ended (`exited 0`, `killed by signal 9`,
/// `deadline`, `cancelled`, `memory limit`, `setup failed`, …: a short reason, never model output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMetrics {
    pub start_us: i64,
    pub run_us: i64,
    pub exit: String,
}

/// How long a run took, as the worker reports it with the terminal status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunMetrics {
    /// Microseconds from the start of the run to its end (the wire's `predict_time`).
    pub predict_time_us: i64,
    pub sandbox: Option<SandboxMetrics>,
}

impl RunMetrics {
    /// A run that reported only its duration (no sandbox, e.g. it never started).
    pub fn model_time(predict_time_us: i64) -> RunMetrics {
        RunMetrics {
            predict_time_us,
            sandbox: None,
        }
    }
}

/// One usage record: what an account ran, for billing and the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub prediction: PredictionId,
    pub project: ProjectId,
    pub model: String,
    pub mode: Mode,
    pub status: PredictionStatus,
    /// Seconds the model ran.
    pub predict_time: f64,
    /// Billable units: images for image models, seconds of audio, characters of text, …
    pub units: f64,
    pub unit: String,
    pub at: Timestamp,
    /// Language-model tokens, when the run counted them (chat completions, embeddings, language-model
    /// predictions). Absent from records written before tokens were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenUsage>,
}

/// The tokens one language-model or embedding run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt: u32,
    pub completion: u32,
}

impl TokenUsage {
    /// Prompt and completion tokens together.
    pub fn total(&self) -> u32 {
        self.prompt.saturating_add(self.completion)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v4_and_parse_normalises() {
        let id = PredictionId::generate().unwrap();
        let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        let upper = id.as_str().to_uppercase();
        assert_eq!(upper.parse::<PredictionId>().unwrap(), id);
        for bad in [
            "",
            "x",
            "pred_abc",
            "00000000-0000-0000-0000-00000000000g",
            &"a".repeat(100),
        ] {
            assert!(bad.parse::<PredictionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn date_ranges_are_inclusive_days_in_utc() {
        let (f, t) = date_range(Some("2026-01-02"), Some("2026-01-02")).unwrap();
        assert_eq!(f.unwrap().to_rfc3339(), "2026-01-02T00:00:00.000000Z");
        assert_eq!(t.unwrap().to_rfc3339(), "2026-01-03T00:00:00.000000Z");
        assert_eq!(date_range(None, None).unwrap(), (None, None));
        for bad in [
            "2026-1-02",
            "2026-13-01",
            "yesterday",
            "2026-02-30",
            "2026-01-02T00:00:00Z",
            "",
        ] {
            assert_eq!(
                date_range(Some(bad), None),
                Err(FilterError::DateFormat("from")),
                "{bad}"
            );
        }
        assert_eq!(
            date_range(Some("2026-01-03"), Some("2026-01-02")),
            Err(FilterError::DateRange)
        );
    }

    #[test]
    fn windows_align_to_their_length() {
        let five = Duration::from_secs(300);
        let t = Timestamp::from_unix_seconds(1_000_000_123);
        let w = window_start(t, five);
        assert_eq!(w.as_micros() % 300_000_000, 0);
        assert!(w <= t && t.as_micros() - w.as_micros() < 300_000_000);
        assert_eq!(window_start(w, five), w);
    }

    #[test]
    fn file_names() {
        for ok in ["output-0.png", "output.wav", "a", "A_b-1.txt"] {
            assert!(is_valid_file_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn stored_output_round_trips() {
        let o = StoredOutput::Files {
            files: vec![StoredFile {
                name: "a.png".into(),
                content_type: "image/png".into(),
                size: 3,
            }],
        };
        let s = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<StoredOutput>(&s).unwrap(), o);
        assert_eq!(o.files().len(), 1);
    }
}

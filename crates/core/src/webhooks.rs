//! Webhooks in the domain: event names and subscriptions, delivery ids, the outbox records the store
//! keeps for each delivery and each attempt, and project signing secrets. Pure: no I/O, no HTTP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, ProjectId};
use crate::predictions::PredictionId;
use crate::time::Timestamp;

/// A prediction event a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "prediction.started")]
    Started,
    #[serde(rename = "prediction.succeeded")]
    Succeeded,
    #[serde(rename = "prediction.failed")]
    Failed,
    #[serde(rename = "prediction.cancelled")]
    Cancelled,
}

/// The names accepted in `webhook.events`: ours, then the SDKs' older names (same order of meaning).
pub const EVENT_NAMES: &[&str] = &[
    "prediction.started",
    "prediction.succeeded",
    "prediction.failed",
    "prediction.cancelled",
    "started",
    "completed",
    "failed",
    "canceled",
];

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 4] = [
        WebhookEvent::Started,
        WebhookEvent::Succeeded,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
    ];

    /// The canonical name (what deliveries and the delivery log show).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Started => "prediction.started",
            WebhookEvent::Succeeded => "prediction.succeeded",
            WebhookEvent::Failed => "prediction.failed",
            WebhookEvent::Cancelled => "prediction.cancelled",
        }
    }

    /// This event's bit in an [`EventMask`].
    pub fn bit(self) -> u8 {
        match self {
            WebhookEvent::Started => 1,
            WebhookEvent::Succeeded => 2,
            WebhookEvent::Failed => 4,
            WebhookEvent::Cancelled => 8,
        }
    }

    /// The terminal event for a final prediction status name (`succeeded`, `failed`, `cancelled`).
    pub fn terminal(status: &str) -> Option<WebhookEvent> {
        match status {
            "succeeded" => Some(WebhookEvent::Succeeded),
            "failed" => Some(WebhookEvent::Failed),
            "cancelled" => Some(WebhookEvent::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {0:?} (allowed: {names})", names = EVENT_NAMES.join(", "))]
pub struct UnknownEvent(pub String);

impl FromStr for WebhookEvent {
    type Err = UnknownEvent;
    /// Our names and the SDKs' older ones: `started`, `completed` (= succeeded), `failed`, `canceled`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "prediction.started" | "started" => WebhookEvent::Started,
            "prediction.succeeded" | "completed" => WebhookEvent::Succeeded,
            "prediction.failed" | "failed" => WebhookEvent::Failed,
            "prediction.cancelled" | "canceled" => WebhookEvent::Cancelled,
            other => return Err(UnknownEvent(other.chars().take(64).collect())),
        })
    }
}

/// The set of events a webhook subscribes to, as the bit mask the store keeps beside the prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventMask(pub u8);

impl EventMask {
    /// All terminal events: what an empty `events` list means.
    pub const TERMINAL: EventMask = EventMask(2 | 4 | 8);

    /// The mask for a `webhook.events` list; an empty list means every terminal event. The error names
    /// the index of the first unknown name.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<EventMask, (usize, UnknownEvent)> {
        if names.is_empty() {
            return Ok(EventMask::TERMINAL);
        }
        let mut bits = 0u8;
        for (i, n) in names.iter().enumerate() {
            bits |= n.as_ref().parse::<WebhookEvent>().map_err(|e| (i, e))?.bit();
        }
        Ok(EventMask(bits))
    }

    pub fn contains(self, e: WebhookEvent) -> bool {
        self.0 & e.bit() != 0
    }

    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }
}

/// A delivery id, sent as `webhook-id` and stable across retries: `msg_` + 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid delivery id (expected msg_ and 32 hex digits)")]
pub struct DeliveryIdError;

impl DeliveryId {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)?;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(DeliveryId(format!("msg_{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeliveryId {
    type Err = DeliveryIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("msg_") {
            Some(h)
                if h.len() == 32
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(DeliveryId(s.to_owned()))
            }
            _ => Err(DeliveryIdError),
        }
    }
}

impl TryFrom<String> for DeliveryId {
    type Error = DeliveryIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeliveryId> for String {
    fn from(id: DeliveryId) -> String {
        id.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryId({})", self.0)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (`next_attempt_at`), or being attempted under a lease.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// No more attempts: gave up after the schedule, 410 Gone, a refused target, or the prediction
    /// was deleted. `last_error` says which.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(format!("unknown delivery state {other:?}")),
        }
    }
}

/// One outbox row: one event of one prediction to its webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub prediction: PredictionId,
    pub account: AccountId,
    pub project: ProjectId,
    pub event: WebhookEvent,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The last answer's status code, if an answer came.
    pub last_status: Option<u16>,
    /// The last failure, or why the delivery stopped (never contains a secret or the payload).
    pub last_error: Option<String>,
}

/// A delivery claimed by a dispatcher under a lease, with its target URL (decrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    pub lease_token: String,
    /// `None` when the prediction (and with it the webhook target) no longer exists.
    pub url: Option<String>,
}

/// One attempt of a delivery, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub delivery: DeliveryId,
    /// 1 for the first attempt.
    pub number: u32,
    pub at: Timestamp,
    pub duration_us: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// When the next attempt was scheduled (none after the last).
    pub next_attempt_at: Option<Timestamp>,
    /// The first bytes of the answer's body (at most 1 KiB; sealed at rest).
    pub response: Option<Vec<u8>>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    Retry {
        at: Timestamp,
    },
    /// No more attempts, for this reason.
    GiveUp {
        reason: String,
    },
}

/// One finished attempt to record: what happened, under which lease, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: DeliveryAttempt,
    pub lease_token: String,
    pub next: NextStep,
}

/// The most a stored response excerpt holds.
pub const MAX_RESPONSE_EXCERPT: usize = 1024;

/// One version of a project's webhook signing secret (`whsec_…`, sealed at rest).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecretRecord {
    pub project: ProjectId,
    pub version: u32,
    pub secret: crate::SecretString,
    pub created_at: Timestamp,
    /// Set when a newer secret replaced this one: it signs until then (the rotation overlap).
    pub retires_at: Option<Timestamp>,
}

impl fmt::Debug for WebhookSecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecretRecord")
            .field("project", &self.project)
            .field("version", &self.version)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish()
    }
}

/// Which deliveries a listing shows, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub prediction: Option<PredictionId>,
    /// Only deliveries that stopped without success.
    pub failed_only: bool,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn old_and_new_names_map_to_the_same_events() {
        for (a, b) in [
            ("prediction.started", "started"),
            ("prediction.succeeded", "completed"),
            ("prediction.failed", "failed"),
            ("prediction.cancelled", "canceled"),
        ] {
            assert_eq!(
                a.parse::<WebhookEvent>().unwrap(),
                b.parse::<WebhookEvent>().unwrap()
            );
        }
        assert!("prediction.canceled".parse::<WebhookEvent>().is_err());
        assert!("Started".parse::<WebhookEvent>().is_err());
    }

    #[test]
    fn empty_events_mean_every_terminal_event() {
        let m = EventMask::from_names::<&str>(&[]).unwrap();
        assert!(!m.contains(WebhookEvent::Started));
        for e in [
            WebhookEvent::Succeeded,
            WebhookEvent::Failed,
            WebhookEvent::Cancelled,
        ] {
            assert!(m.contains(e));
        }
        let m = EventMask::from_names(&["started", "prediction.failed"]).unwrap();
        assert_eq!(m, EventMask(1 | 4));
        let (i, e) = EventMask::from_names(&["started", "nope"]).unwrap_err();
        assert_eq!(i, 1);
        assert!(e.to_string().contains("\"nope\""));
    }

    #[test]
    fn delivery_ids_round_trip_and_reject_junk() {
        let id = DeliveryId::generate().unwrap();
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(id.as_str().parse::<DeliveryId>().unwrap(), id);
        for bad in [
            "",
            "msg_",
            "msg_XYZ",
            "evt_0123456789abcdef0123456789abcdef",
            "msg_0123456789ABCDEF0123456789abcdef",
        ] {
            assert!(bad.parse::<DeliveryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_records_do_not_print_the_secret() {
        let r = WebhookSecretRecord {
            project: ProjectId::generate().unwrap(),
            version: 1,
            secret: crate::SecretString::new("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".to_owned()),
            created_at: Timestamp::from_micros(0),
            retires_at: None,
        };
        assert!(!format!("{r:?}").contains("whsec_"));
    }
}

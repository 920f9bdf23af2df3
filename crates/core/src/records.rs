//! The records the store keeps for accounts, projects and API keys, and the small enums they use.
//! A record of an API key never holds the key: only its keyed hash, the mode prefix and the last 4 chars.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, KeyId, ProjectId};
use crate::time::Timestamp;

/// Live or test mode. A `sk_test_` key sees only test-mode data and runs only test-enabled models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Mode::Live),
            "test" => Ok(Mode::Test),
            other => Err(format!("unknown mode {other:?} (expected live or test)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account's service tier; rate limits and quotas are set per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Business, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Business => "business",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier {s:?} (expected free, pro, business or enterprise)"))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: AccountId,
    /// Normalised (trimmed, lower-case) address.
    pub email: String,
    pub tier: Tier,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: AccountId,
    pub email: String,
    pub tier: Tier,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: ProjectId,
    pub account_id: AccountId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewProject {
    pub id: ProjectId,
    pub name: String,
    pub created_at: Timestamp,
}

/// What is stored about an API key; safe to list and print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub project: ProjectId,
    pub account: AccountId,
    pub mode: Mode,
    pub name: String,
    /// `sk_live_` or `sk_test_`.
    pub prefix: String,
    pub last4: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// A key to insert. `hash` is the keyed hash of the secret; the secret itself is not here.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: KeyId,
    pub mode: Mode,
    pub name: String,
    pub hash: [u8; 32],
    pub prefix: String,
    pub last4: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// What authentication needs to know about a key, found by its hash in one indexed lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAuthRecord {
    pub key_id: KeyId,
    pub project: ProjectId,
    pub account: AccountId,
    pub mode: Mode,
    pub tier: Tier,
    pub hash: [u8; 32],
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl KeyAuthRecord {
    /// Whether the key may be used at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Trims and lower-cases an email address, and checks its rough shape (one `@`, something either side,
/// no whitespace or control characters, at most 254 bytes).
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let e = raw.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.matches('@').count() == 1
        && !e.starts_with('@')
        && !e.ends_with('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(format!("{raw:?} is not a valid email address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in ["", "alice", "@x", "a@", "a@@b", "a b@c", "a@b\nc"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tier_and_mode_parse() {
        assert_eq!("pro".parse::<Tier>().unwrap(), Tier::Pro);
        assert!("gold".parse::<Tier>().is_err());
        assert_eq!("test".parse::<Mode>().unwrap(), Mode::Test);
    }

    #[test]
    fn active_respects_revocation_and_expiry() {
        let now = Timestamp::from_unix_seconds(1_000);
        let mut r = KeyAuthRecord {
            key_id: KeyId::generate().unwrap(),
            project: ProjectId::generate().unwrap(),
            account: AccountId::generate().unwrap(),
            mode: Mode::Live,
            tier: Tier::Free,
            hash: [0; 32],
            expires_at: None,
            revoked_at: None,
        };
        assert!(r.is_active(now));
        r.expires_at = Some(now);
        assert!(!r.is_active(now));
        r.expires_at = Some(Timestamp::from_unix_seconds(2_000));
        assert!(r.is_active(now));
        r.revoked_at = Some(now);
        assert!(!r.is_active(now));
    }
}

//! Console sessions and password setup links: the records the store keeps, and the rules for when a
//! session is still good. Pure: the caller passes the current time.
//!
//! A session's secret is 256 random bits, sent only in the `__Host-` cookie; the store keeps its keyed
//! hash (the provider-held pepper), so a stolen database holds no usable session. A session is either
//! halfway (the password checked, the second factor not yet) or full. It ends at the first of: its
//! absolute lifetime, its idle timeout since the last request, logout or revocation.
//!
//! A setup link (new account or password reset) carries 256 random bits too, stored as a keyed hash,
//! good once and for 24 hours.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{AccountId, SessionId, Timestamp};

/// How long a setup link works.
pub const SETUP_LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// 32 random bytes as 64 lower-case hex characters: a session id or a setup token. Zeroized on drop;
/// `Debug` never shows it.
pub struct SessionSecret(Zeroizing<String>);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(…)")
    }
}

impl SessionSecret {
    /// A fresh secret. Fails only if the OS random source fails.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut b = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(&mut b[..])?;
        let mut s = Zeroizing::new(String::with_capacity(64));
        for x in b.iter() {
            s.push(char::from(b"0123456789abcdef"[usize::from(x >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(x & 0xf)]));
        }
        Ok(SessionSecret(s))
    }

    /// Accepts only the exact shape (64 lower-case hex characters), so junk never reaches a lookup.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
        .then(|| SessionSecret(Zeroizing::new(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How far a session got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStage {
    /// The password was right; the second factor is still due.
    SecondFactor,
    /// Logged in.
    Full,
}

impl SessionStage {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStage::SecondFactor => "2fa",
            SessionStage::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "2fa" => Some(SessionStage::SecondFactor),
            "full" => Some(SessionStage::Full),
            _ => None,
        }
    }
}

/// A session to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: SessionId,
    pub account: AccountId,
    /// Keyed hash of the cookie's secret.
    pub hash: [u8; 32],
    pub stage: SessionStage,
    pub created_at: Timestamp,
    /// The absolute end.
    pub expires_at: Timestamp,
    pub ip: String,
    pub user_agent: String,
}

/// A stored session (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub account: AccountId,
    pub stage: SessionStage,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: String,
    pub user_agent: String,
}

impl SessionRecord {
    /// Whether the session still works at `now` with the idle timeout `idle`.
    pub fn live_at(&self, now: Timestamp, idle: Duration) -> bool {
        now < self.expires_at && now < self.last_seen_at.saturating_add(idle)
    }
}

/// Why a setup link was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupPurpose {
    /// A new account's first password.
    Setup,
    /// A password reset by the operator.
    Reset,
}

impl SetupPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            SetupPurpose::Setup => "setup",
            SetupPurpose::Reset => "reset",
        }
    }
}

/// An account's password hash (a PHC string) and when it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordRecord {
    pub phc: String,
    pub set_at: Timestamp,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_64_hex_and_parse_strictly() {
        let a = SessionSecret::generate().unwrap();
        let b = SessionSecret::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a.expose(), b.expose());
        assert!(SessionSecret::parse(a.expose()).is_some());
        assert!(SessionSecret::parse(&a.expose().to_uppercase()).is_none());
        assert!(SessionSecret::parse(&a.expose()[1..]).is_none());
        assert!(SessionSecret::parse(&format!("{}g", &a.expose()[1..])).is_none());
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn a_session_ends_at_its_idle_or_absolute_limit() {
        let t = |s: i64| Timestamp::from_unix_seconds(s);
        let r = SessionRecord {
            id: SessionId::generate().unwrap(),
            account: AccountId::generate().unwrap(),
            stage: SessionStage::Full,
            created_at: t(1000),
            last_seen_at: t(2000),
            expires_at: t(5000),
            ip: String::new(),
            user_agent: String::new(),
        };
        let idle = Duration::from_secs(600);
        assert!(r.live_at(t(2599), idle));
        assert!(!r.live_at(t(2600), idle), "idle");
        let recent = SessionRecord {
            last_seen_at: t(4900),
            ..r.clone()
        };
        assert!(!recent.live_at(t(5000), idle), "absolute");
        assert_eq!(SessionStage::parse("2fa"), Some(SessionStage::SecondFactor));
        assert_eq!(
            SessionStage::parse(SessionStage::Full.as_str()),
            Some(SessionStage::Full)
        );
        assert_eq!(SessionStage::parse("x"), None);
    }
}

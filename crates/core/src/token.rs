//! Personal access tokens for the management API: format, scopes and records.
//!
//! Format: `sk_pat_` + 64 lowercase hex characters (256 random bits). Stored like API keys: only
//! `HMAC-SHA256(pepper, token)` (the unique lookup index), the last 4 characters for display, and
//! the scopes, expiry, last use and revocation time. A token belongs to one account and acts on all of
//! its projects, within its scopes.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};

use crate::{AccountId, SecretString, Tier, Timestamp, TokenId};

pub const TOKEN_PREFIX: &str = "sk_pat_";
const HEX_LEN: usize = 64;
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + HEX_LEN;

/// One permission a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Call the predictions API for the account's projects.
    Inference,
    ProjectsRead,
    ProjectsWrite,
    KeysRead,
    KeysWrite,
    AccountRead,
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Inference,
        Scope::ProjectsRead,
        Scope::ProjectsWrite,
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::AccountRead,
        Scope::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::ProjectsRead => "projects.read",
            Scope::ProjectsWrite => "projects.write",
            Scope::KeysRead => "keys.read",
            Scope::KeysWrite => "keys.write",
            Scope::AccountRead => "account.read",
            Scope::AuditRead => "audit.read",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {:?} (known: {})", s.trim(), known.join(", "))
            })
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u32);

impl Scopes {
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses `inference,projects.read` (commas or spaces). Empty or unknown → an error naming it.
    pub fn parse_list(list: &str) -> Result<Scopes, String> {
        let mut out = Scopes::default();
        for part in list.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
            out.0 |= part.parse::<Scope>()?.bit();
        }
        if out.is_empty() {
            return Err("give at least one scope".into());
        }
        Ok(out)
    }

    /// The stored form: names joined by commas, in a fixed order.
    pub fn to_list(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(",")
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(it: I) -> Self {
        Scopes(it.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({})", self.to_list())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("an access token is sk_pat_ followed by 64 lowercase hex characters")]
    Malformed,
}

/// A well-formed access token. Holds the secret: redacted in `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(SecretString);

impl AccessToken {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut b = [0u8; HEX_LEN / 2];
        SystemRandom::new().fill(&mut b)?;
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(TOKEN_PREFIX);
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        zeroize::Zeroize::zeroize(&mut b);
        Ok(AccessToken(SecretString::new(s)))
    }

    /// Checks prefix, length and alphabet (no early exit inside the characters).
    pub fn parse(raw: &str) -> Result<Self, TokenFormatError> {
        let b = raw.as_bytes();
        if b.len() != TOKEN_LEN || !raw.starts_with(TOKEN_PREFIX) {
            return Err(TokenFormatError::Malformed);
        }
        let ok = b[TOKEN_PREFIX.len()..]
            .iter()
            .fold(true, |ok, c| ok & matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(TokenFormatError::Malformed);
        }
        Ok(AccessToken(SecretString::new(raw)))
    }

    pub fn last4(&self) -> &str {
        &self.0.expose()[TOKEN_LEN - 4..]
    }

    /// The whole token: only the creation path (to show it once) and the hasher see it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(sk_pat_…{})", self.last4())
    }
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub account: AccountId,
    pub name: String,
    pub scopes: Scopes,
    pub last4: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl TokenRecord {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// What creating a token stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccessToken {
    pub id: TokenId,
    pub name: String,
    pub scopes: Scopes,
    pub hash: [u8; 32],
    pub last4: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// What authenticating a token needs, found by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuthRecord {
    pub token_id: TokenId,
    pub account: AccountId,
    pub tier: Tier,
    pub scopes: Scopes,
    pub hash: [u8; 32],
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl TokenAuthRecord {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_parse_back() {
        let t = AccessToken::generate().unwrap();
        assert_eq!(t.expose().len(), 71);
        assert!(t.expose().starts_with("sk_pat_"));
        assert_eq!(AccessToken::parse(t.expose()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.expose()[7..60]));
        assert_ne!(AccessToken::generate().unwrap(), t);
        let upper = t.expose().to_uppercase().replace("SK_PAT_", "sk_pat_");
        if upper != t.expose() {
            assert_eq!(AccessToken::parse(&upper), Err(TokenFormatError::Malformed));
        }
        for bad in ["", "sk_pat_", &t.expose()[..70], &format!("{}0", t.expose())] {
            assert_eq!(AccessToken::parse(bad), Err(TokenFormatError::Malformed));
        }
        let g = format!("sk_pat_{}", "g".repeat(64));
        assert_eq!(AccessToken::parse(&g), Err(TokenFormatError::Malformed));
    }

    #[test]
    fn scopes_parse_store_and_check() {
        let s = Scopes::parse_list("keys.write, inference projects.read").unwrap();
        assert!(
            s.contains(Scope::Inference) && s.contains(Scope::KeysWrite) && s.contains(Scope::ProjectsRead)
        );
        assert!(!s.contains(Scope::AuditRead));
        assert_eq!(s.to_list(), "inference,projects.read,keys.write");
        assert_eq!(Scopes::parse_list(&s.to_list()).unwrap(), s);
        assert!(Scopes::parse_list("").is_err());
        let e = Scopes::parse_list("inference,admin").unwrap_err();
        assert!(e.contains("\"admin\"") && e.contains("audit.read"), "{e}");
        let all: Scopes = Scope::ALL.into_iter().collect();
        assert_eq!(all.iter().count(), 7);
    }
}

//! Typed, prefixed ids (`acct_…`, `proj_…`, `key_…`): never bare strings across modules, so a project id
//! cannot be passed where an account id is expected, and a pasted id says what it names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::base62;

/// Random characters after the prefix: 22 base62 chars ≈ 131 bits.
const ID_RANDOM_LEN: usize = 22;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid {kind} id (expected {prefix} followed by {len} letters or digits)")]
pub struct IdParseError {
    kind: &'static str,
    prefix: &'static str,
    len: usize,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id. Fails only if the OS random source fails.
            pub fn generate() -> Result<Self, ring::error::Unspecified> {
                Ok($name(format!("{}{}", $prefix, base62::random(ID_RANDOM_LEN)?)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.strip_prefix($prefix) {
                    Some(rest) if rest.len() == ID_RANDOM_LEN && base62::is_base62(rest.as_bytes()) => {
                        Ok($name(s.to_owned()))
                    }
                    _ => Err(IdParseError { kind: $kind, prefix: $prefix, len: ID_RANDOM_LEN }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdParseError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// An account (a customer: owns projects, has a tier).
    AccountId,
    "acct_",
    "account"
);
prefixed_id!(
    /// A project (the tenant an API key is scoped to).
    ProjectId,
    "proj_",
    "project"
);
prefixed_id!(
    /// An API key's public id (never the secret).
    KeyId,
    "key_",
    "key"
);
prefixed_id!(
    /// An access token's public id (never the secret).
    TokenId,
    "tok_",
    "access token"
);
prefixed_id!(
    /// A console session's public id (shown in the sessions list; never the cookie's secret).
    SessionId,
    "ses_",
    "session"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_round_trip() {
        let id = ProjectId::generate().unwrap();
        assert!(id.as_str().starts_with("proj_"));
        assert_eq!(id.as_str().parse::<ProjectId>().unwrap(), id);
    }

    #[test]
    fn wrong_prefix_or_shape_is_refused() {
        let acct = AccountId::generate().unwrap();
        assert!(acct.as_str().parse::<ProjectId>().is_err());
        assert!("proj_short".parse::<ProjectId>().is_err());
        assert!("proj_!!!!!!!!!!!!!!!!!!!!!!".parse::<ProjectId>().is_err());
        let err = "x".parse::<KeyId>().unwrap_err().to_string();
        assert!(err.contains("key_"), "{err}");
    }
}

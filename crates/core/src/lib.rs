//! The skygate domain: typed ids, credential formats and their checksums, key hashing, the records the
//! store keeps, and the model registry. Pure: no I/O, no HTTP, no SQL. The caller passes the current
//! time in, so expiry and windows are testable with a fixed clock.

pub mod apikey;
pub mod audit;
pub mod base62;
pub mod ids;
pub mod models;
pub mod password;
pub mod predictions;
pub mod ratelimit;
pub mod records;
pub mod secret;
pub mod session;
pub mod time;
pub mod token;
pub mod totp;
pub mod webhooks;

pub use apikey::{ApiKey, KeyFormatError, KeyHasher, Pepper};
pub use audit::{AuditEntry, NewAuditEntry};
pub use ids::{AccountId, KeyId, ProjectId, SessionId, TokenId};
pub use records::{
    Account, ApiKeyRecord, KeyAuthRecord, Mode, NewAccount, NewApiKey, NewProject, Project, Tier,
};
pub use secret::SecretString;
pub use time::Timestamp;
pub use token::{AccessToken, Scope, Scopes, TokenAuthRecord, TokenRecord};

//! Wire types of the management API (`/v1/account`, `/v1/projects`, `/v1/keys`, `/v1/audit`),
//! authenticated by access tokens. Times are RFC 3339 UTC strings; secrets appear only in
//! [`CreatedKey::key`], once.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountInfo {
    pub id: String,
    pub email: String,
    pub tier: String,
    pub created_at: String,
    /// Whether two-factor authentication is on (live credentials need it).
    pub two_factor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectInfo {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub data: Vec<ProjectInfo>,
}

/// `POST /v1/projects` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateProject {
    pub name: String,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub project: String,
    /// `live` or `test`.
    pub mode: String,
    pub name: String,
    /// `sk_live_` or `sk_test_`.
    pub prefix: String,
    pub last4: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyInfo>,
}

/// `POST /v1/projects/{id}/keys` body. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `live` (default) or `test`. A live key needs two-factor authentication on the account.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime, e.g. `30d`, `12h`.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// The answer to a key creation: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub key: String,
    pub info: KeyInfo,
}

/// One audit entry (ids and actions only; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub ip: String,
    pub user_agent: String,
}

/// `GET /v1/audit`: newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditEvent>,
    pub next_before: Option<i64>,
}

/// `GET /v1/account/export` (and `skygate accounts export`): everything held about one account, decrypted.
/// Secrets are never part of it: keys and tokens appear as their metadata only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountExport {
    /// `skygate.account-export/1`.
    pub format: String,
    pub exported_at: String,
    pub account: AccountInfo,
    /// Unused recovery codes (the codes themselves are stored only as hashes).
    pub recovery_codes_left: u32,
    pub projects: Vec<ExportedProject>,
    pub access_tokens: Vec<ExportedToken>,
    /// Usage records, newest first.
    pub usage: Vec<ExportedUsage>,
    /// Audit entries concerning the account, oldest first.
    pub audit: Vec<AuditEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportedProject {
    #[serde(flatten)]
    pub project: ProjectInfo,
    pub keys: Vec<KeyInfo>,
    /// Predictions still held (within retention their inputs and outputs too), newest first.
    pub predictions: Vec<ExportedPrediction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportedPrediction {
    pub id: String,
    pub model: String,
    /// `live` or `test`.
    pub mode: String,
    pub status: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// When inputs and outputs are (or were) destroyed.
    pub purge_at: Option<String>,
    pub data_removed: bool,
    /// The input as submitted; `null` once removed.
    #[schema(value_type = Object)]
    pub input: Option<serde_json::Value>,
    /// A text output, or the output files' names, types and sizes; `null` once removed.
    #[schema(value_type = Object)]
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    /// The webhook URL the prediction reports to, if any.
    pub webhook_url: Option<String>,
}

/// An access token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedToken {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub last4: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportedUsage {
    pub prediction: String,
    pub project: String,
    pub model: String,
    pub mode: String,
    pub status: String,
    /// Seconds the model ran.
    pub predict_time: f64,
    pub units: f64,
    pub unit: String,
    pub at: String,
}

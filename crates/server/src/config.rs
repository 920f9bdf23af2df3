//! Configuration: embedded defaults, then a TOML file, then `SKYGATE_*` environment variables, then
//! command-line flags; parsed and validated once, then shared read-only as `Arc<Config>`.
//!
//! Unknown keys are an error that names the key and its source. Environment variables map onto keys as
//! `SKYGATE_<SECTION>__<KEY>` (e.g. `SKYGATE_SERVER__BODY_LIMIT`), plus the shorthands
//! `SKYGATE_LISTEN`, `SKYGATE_DATA_DIR`, `SKYGATE_DATABASE_URL` and `SKYGATE_PUBLIC_URL`. Variables
//! without `__` (such as `SKYGATE_MASTER_KEY` or the test variables) are not configuration keys.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use skygate_core::models::{self, Backend, CogModel, CommandModel, ModelSpec};

pub mod engine;
mod sandbox;
pub use sandbox::{SandboxConfig, SandboxLimits};

/// A validated configuration. Build it with [`Config::load`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, keyring, TLS files and outputs live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub accounts: AccountsConfig,
    pub keyring: KeyringConfig,
    pub outputs: OutputsConfig,
    pub queue: QueueConfig,
    pub webhooks: WebhooksConfig,
    pub limits: LimitsConfig,
    pub waf: crate::waf::WafConfig,
    pub metrics: MetricsConfig,
    pub sandbox: SandboxConfig,
    pub models: BTreeMap<String, ModelConfig>,
}

/// `[metrics]`: the Prometheus endpoint, a plaintext listener that may only bind a loopback address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served, e.g. `127.0.0.1:9464`; unset (default): no metrics listener and
    /// nothing counted.
    pub listen: Option<SocketAddr>,
}

/// `[limits]`: rate limits by account tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Rate limits on (default). Off only where something in front enforces them.
    pub enabled: bool,
    /// Share the limits between nodes through this Redis (`redis://…`); unset: in-process.
    pub redis_url: Option<String>,
    /// How long a Redis check may take before the failure policy decides.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// When Redis cannot answer: refuse prediction creates (`closed`) or let them through (`open`).
    pub on_failure_create: FailureMode,
    /// The same for every other request.
    pub on_failure_read: FailureMode,
    /// Failed authentications per minute per client address; past it the address gets 429s (valid
    /// credentials included) until the budget refills.
    pub auth_failures_per_minute: u32,
    /// Data exports (`GET /v1/account/export`) per hour per account.
    pub exports_per_hour: u32,
    /// `[limits.tiers.<free|pro|business|enterprise>]`.
    pub tiers: BTreeMap<String, TierLimits>,
}

/// What a limit check does when its backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    Open,
    Closed,
}

/// The limits of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Requests per minute per API key, across every endpoint.
    pub requests_per_minute: u32,
    /// Prediction creates per minute per account and model.
    pub predictions_per_minute: u32,
    /// Predictions running at once per account; further creates wait in the queue.
    pub concurrent_predictions: u32,
    /// Prediction creates per day per account (unset: no daily quota).
    #[serde(default)]
    pub daily_predictions: Option<u32>,
    /// Model tokens (prompt + completion) per minute per account and model, on the OpenAI-compatible
    /// routes (unset: the tier's default, free 40k, pro 200k, business 1M, enterprise 5M).
    /// Language-model predictions count against `predictions_per_minute` instead.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

impl TierLimits {
    fn defaults(t: skygate_core::Tier) -> TierLimits {
        let (requests, predictions, concurrent, tokens) = match t {
            skygate_core::Tier::Free => (600, 25, 5, 40_000),
            skygate_core::Tier::Pro => (1200, 50, 10, 200_000),
            skygate_core::Tier::Business => (3000, 150, 25, 1_000_000),
            skygate_core::Tier::Enterprise => (12000, 600, 100, 5_000_000),
        };
        TierLimits {
            requests_per_minute: requests,
            predictions_per_minute: predictions,
            concurrent_predictions: concurrent,
            daily_predictions: None,
            tokens_per_minute: Some(tokens),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            on_failure_create: FailureMode::Closed,
            on_failure_read: FailureMode::Open,
            auth_failures_per_minute: 20,
            exports_per_hour: 6,
            tiers: skygate_core::Tier::ALL
                .iter()
                .map(|t| (t.as_str().to_owned(), TierLimits::defaults(*t)))
                .collect(),
        }
    }
}

impl LimitsConfig {
    /// The limits of a tier (its defaults if the table is missing).
    pub fn tier(&self, t: skygate_core::Tier) -> TierLimits {
        let defaults = TierLimits::defaults(t);
        match self.tiers.get(t.as_str()) {
            Some(l) => TierLimits {
                tokens_per_minute: l.tokens_per_minute.or(defaults.tokens_per_minute),
                ..l.clone()
            },
            None => defaults,
        }
    }

    /// The queue claim's per-account running ceilings (none when limits are off).
    pub fn running_caps(&self) -> skygate_core::predictions::RunningCaps {
        if !self.enabled {
            return skygate_core::predictions::RunningCaps::NONE;
        }
        skygate_core::predictions::RunningCaps(
            skygate_core::Tier::ALL.map(|t| self.tier(t).concurrent_predictions),
        )
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.redis_url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err("limits.redis_url must start with redis:// or rediss://".into());
            }
        }
        if self.redis_timeout.is_zero() || self.redis_timeout > Duration::from_secs(5) {
            return Err("limits.redis_timeout must be between 1ms and 5s".into());
        }
        if self.auth_failures_per_minute == 0 || self.auth_failures_per_minute > 100_000 {
            return Err("limits.auth_failures_per_minute must be between 1 and 100000".into());
        }
        if self.exports_per_hour == 0 || self.exports_per_hour > 3_600 {
            return Err("limits.exports_per_hour must be between 1 and 3600".into());
        }
        for (name, t) in &self.tiers {
            if name.parse::<skygate_core::Tier>().is_err() {
                return Err(format!(
                    "limits.tiers.{name}: unknown tier (expected free, pro, business or enterprise)"
                ));
            }
            for (key, v, max) in [
                ("requests_per_minute", t.requests_per_minute, 10_000_000),
                ("predictions_per_minute", t.predictions_per_minute, 1_000_000),
                ("concurrent_predictions", t.concurrent_predictions, 100_000),
                ("daily_predictions", t.daily_predictions.unwrap_or(1), 100_000_000),
                (
                    "tokens_per_minute",
                    t.tokens_per_minute.unwrap_or(1),
                    1_000_000_000,
                ),
            ] {
                if v == 0 || v > max {
                    return Err(format!(
                        "limits.tiers.{name}.{key} must be between 1 and {max}, got {v}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[webhooks]`: how prediction webhooks are checked, signed and delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Accept plain `http://` webhook URLs (local development and tests only).
    pub allow_insecure_http: bool,
    /// Deliver to loopback, private, link-local and other non-public addresses (on-prem receivers).
    pub allow_private_networks: bool,
    /// Total time one attempt may take: connect, TLS, request and response.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long resolving a webhook host may take (on create and before each new connection).
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// Deliveries this node sends at once (0: this node sends none).
    pub concurrency: u32,
    /// Delay before each attempt: the first is normally `0s`; its length is the number of attempts.
    #[serde(with = "duration_list")]
    pub schedule: Vec<Duration>,
    /// Random spread of each retry delay, as a fraction (0.1 = ±10 %).
    pub jitter: f64,
    /// The longest `Retry-After` from a receiver that is honoured.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
    /// How long a dispatcher's claim on a delivery lasts (longer than `timeout`); a dispatcher that
    /// dies is noticed after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle dispatcher looks for due deliveries (changes made on this node wake it at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After `webhooks secret --rotate`, how long the old secret keeps signing beside the new one.
    #[serde(with = "humantime_serde")]
    pub secret_overlap: Duration,
    /// PEM files of extra certificate authorities trusted for webhook receivers.
    pub extra_ca: Vec<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        WebhooksConfig {
            allow_insecure_http: false,
            allow_private_networks: false,
            timeout: s(15),
            resolve_timeout: s(2),
            concurrency: 128,
            schedule: vec![s(0), s(5), s(300), s(1800), s(7200), s(18000), s(36000), s(36000)],
            jitter: 0.1,
            retry_after_cap: s(3600),
            lease: s(60),
            poll_interval: Duration::from_millis(500),
            secret_overlap: s(86400),
            extra_ca: Vec::new(),
        }
    }
}

/// `[queue]`: the prediction workers of this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Predictions this node runs at once (0: this node runs none, like `--role api`).
    pub workers: u32,
    /// How long a claim lasts without a heartbeat; a worker that dies is noticed after this. Heartbeats
    /// come every third of it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Runs started before a prediction that keeps being interrupted is failed.
    pub max_attempts: u32,
    /// How often an idle worker looks for new work (work created on this node wakes it at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest one run of a model may take before it is killed and the prediction fails.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 2,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            poll_interval: Duration::from_millis(500),
            job_timeout: Duration::from_secs(600),
        }
    }
}

/// `[outputs]`: where generated outputs are stored (always sealed before they leave the process).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// `file` (the `objects/` directory under the data dir) or `s3://bucket[/prefix]` (any
    /// S3-compatible endpoint; credentials from the usual `AWS_*` environment variables).
    pub store: String,
    /// For S3: the endpoint URL (e.g. a MinIO or Ceph gateway); AWS itself when unset.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// For S3: allow an `http://` endpoint (tests and local development only).
    pub s3_allow_http: bool,
    /// How long inputs, outputs and errors are kept after a prediction finishes; then they are destroyed
    /// (objects deleted, keys shredded).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The largest `retention` this deployment accepts (a guard against a typo keeping data for years).
    #[serde(with = "humantime_serde")]
    pub max_retention: Duration,
    /// How often the retention sweeper runs.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            store: "file".into(),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_allow_http: false,
            retention: Duration::from_secs(300),
            max_retention: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// `[keyring]`: where the key-encryption keys live and how often they rotate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyringConfig {
    /// `local` (a keyring directory under the data dir, sealed by the master key) or `pkcs11` (an HSM).
    pub provider: String,
    /// A new KEK version is made when the newest is older than this (checked at start and hourly).
    #[serde(with = "humantime_serde")]
    pub rotation_period: Duration,
    /// Values rewrapped per database round trip by the background rewrap.
    pub rewrap_batch: u32,
    /// How often the background rewrap looks for values under old versions.
    #[serde(with = "humantime_serde")]
    pub rewrap_interval: Duration,
    /// For `pkcs11`: the module (shared library) path.
    pub pkcs11_module: Option<PathBuf>,
    /// For `pkcs11`: the token, by label (preferred) or slot id.
    pub pkcs11_token_label: Option<String>,
    pub pkcs11_slot: Option<u64>,
    /// For `pkcs11`: the name of the environment variable holding the user PIN (never the PIN itself).
    pub pkcs11_pin_env: String,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        KeyringConfig {
            provider: "local".into(),
            rotation_period: Duration::from_secs(30 * 24 * 3600),
            rewrap_batch: 500,
            rewrap_interval: Duration::from_secs(10),
            pkcs11_module: None,
            pkcs11_token_label: None,
            pkcs11_slot: None,
            pkcs11_pin_env: "SKYGATE_PKCS11_PIN".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base of the absolute URLs the API returns; defaults to `https://<listen>`.
    pub public_url: Option<String>,
    /// Operator-supplied certificate chain and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated server certificate.
    pub tls_names: Vec<String>,
    /// Largest accepted request body.
    pub body_limit: ByteSize,
    /// Per-route overrides of `body_limit`, by route template (`"/v1/predictions" = "8MiB"`).
    pub body_limits: BTreeMap<String, ByteSize>,
    /// Time a client gets to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a client gets to send the request headers (slowloris defence).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Upper bound on one request, body included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest a `POST … {"await": true}` waits for the final result.
    #[serde(with = "humantime_serde")]
    pub await_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Open connections accepted at once; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// Most header fields in one request; more get `431` (the head's size is capped at 64 KiB too).
    pub max_headers: usize,
    /// A connection with no request in flight and no bytes moving for this long is closed (HTTP/1
    /// keep-alive and HTTP/2 alike), so idle connections cannot hold the connection slots.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` or `postgres://…`; defaults to `sqlite://<data_dir>/skygate.db`.
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a cached credential lookup. At most 1 s, so a revocation is in force everywhere
    /// within 1 s; `0s` turns the cache off.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// How often coalesced `last_used_at` updates are written.
    #[serde(with = "humantime_serde")]
    pub last_used_flush: Duration,
}

/// `[accounts]`: account security policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Self-service creation of live API keys and access tokens (console, management API) is refused
    /// until the account has two-factor authentication on. The operator CLI is not blocked, but warns
    /// and writes an audit entry.
    pub require_2fa_for_live_credentials: bool,
    /// A console session ends after this long without a request.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A console session ends this long after login, however active.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Password hashes (argon2id, ~19 MiB and tens of ms each) computed at once, on threads of the lowest
    /// CPU priority; up to 32 more logins per thread wait, then 429.
    pub password_hash_concurrency: u32,
    /// Failed console logins per account (by email, known or not) per 15 minutes; past it the email
    /// is soft-locked (429) until the budget refills. Per address, `limits.auth_failures_per_minute`.
    pub login_failures_per_account: u32,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            require_2fa_for_live_credentials: true,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
            password_hash_concurrency: 2,
            login_failures_per_account: 10,
        }
    }
}

/// `[models.<slug>]`: a model this deployment serves (besides the built-ins).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `builtin`, `command`, `cog`, `llm` (a GGUF language model) or `embedding` (a
    /// sentence-transformers folder).
    pub backend: String,
    /// For `llm` and `embedding`: the GGUF file or the model folder (default: the file or folder of
    /// this slug found in `<data_dir>/models/`).
    pub path: Option<PathBuf>,
    /// For `llm`: the context window in tokens (at most the model's own; default the model's).
    pub context: Option<u32>,
    /// For `llm` and `embedding`: threads of one run (default: the machine's cores, at most 8).
    pub threads: Option<u16>,
    /// For `llm`: the completion length when a request gives none (default 512).
    pub max_tokens: Option<u32>,
    /// For `builtin`: which built-in model runs (defaults to the slug).
    pub builtin: Option<String>,
    /// For `command`: the argv to execute (`argv[0]` resolved inside the sandbox).
    pub command: Option<Vec<String>>,
    /// For `command`: the model's directory, mounted read-only at `/model`.
    pub dir: Option<PathBuf>,
    /// For `command`: wall-clock limit of one run (at most `queue.job_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// For `command`: address-space limit (default `sandbox.limits.memory`).
    pub memory: Option<ByteSize>,
    /// For `command`: CPU-time limit (default `sandbox.limits.cpu_seconds`).
    pub cpu_seconds: Option<u64>,
    /// For `command`: how many of `sandbox.devices` each run gets (leased to it alone).
    pub devices: Option<u32>,
    /// The input schema read from a JSON file instead of `input_schema`.
    pub input_schema_file: Option<PathBuf>,
    /// For `cog`: a virtualenv with Cog installed (made from a Python under `/usr`), bound read-only
    /// at `/venv`; its `bin/python` then runs the server.
    pub venv: Option<PathBuf>,
    /// For `cog`: the Python with Cog installed, resolved inside the sandbox (default `/venv/bin/python`
    /// with `venv`, else `python3`).
    pub python: Option<String>,
    /// For `cog`: the predictor reference (default: the `predict` key of `dir/cog.yaml`).
    pub predictor: Option<String>,
    /// For `cog`: `none` (default: a fresh sandbox per prediction) or `tenant` (one warm sandbox per
    /// account, never shared across accounts).
    pub reuse: Option<String>,
    /// For `cog` with `reuse = "tenant"`: how long an unused warm sandbox lives (default 60 s); for
    /// `llm` and `embedding`, how long an account's unused engine sandbox lives (default 5 min).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// `text`, `image`, `video`, `audio`, `music`, `code` or `multimodal`.
    #[serde(rename = "type", default = "default_model_type")]
    pub kind: String,
    #[serde(default)]
    pub test_ok: bool,
    #[serde(default = "default_true")]
    pub billable: bool,
    /// JSON Schema of the input object (a TOML table).
    pub input_schema: Option<serde_json::Value>,
    pub output_schema: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "text".into()
}

fn default_true() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("skygate-data"),
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            accounts: AccountsConfig::default(),
            keyring: KeyringConfig::default(),
            outputs: OutputsConfig::default(),
            queue: QueueConfig::default(),
            webhooks: WebhooksConfig::default(),
            limits: LimitsConfig::default(),
            waf: crate::waf::WafConfig::default(),
            metrics: MetricsConfig::default(),
            sandbox: SandboxConfig::default(),
            models: BTreeMap::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_url: None,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            body_limit: ByteSize(1024 * 1024),
            body_limits: BTreeMap::new(),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(90),
            await_timeout: Duration::from_secs(55),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 4096,
            max_headers: 100,
            idle_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The body limit of each route: `server.body_limit`, or the route's override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyLimits {
    pub default: u64,
    routes: Vec<(&'static str, u64)>,
}

impl BodyLimits {
    pub fn uniform(default: u64) -> BodyLimits {
        BodyLimits {
            default,
            routes: Vec::new(),
        }
    }

    /// The limit for a request to `path` (one route match when overrides exist, nothing otherwise).
    pub fn for_path(&self, path: &str) -> u64 {
        if self.routes.is_empty() {
            return self.default;
        }
        self.for_route(crate::metrics::route_of(path))
    }

    /// The limit of a route template.
    pub fn for_route(&self, route: &str) -> u64 {
        self.routes
            .iter()
            .find(|(r, _)| *r == route)
            .map_or(self.default, |(_, n)| *n)
    }

    /// The largest limit of any route.
    pub fn max(&self) -> u64 {
        self.routes.iter().map(|(_, n)| *n).fold(self.default, u64::max)
    }
}

impl ServerConfig {
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            default: self.body_limit.0,
            routes: crate::metrics::ROUTES
                .iter()
                .filter_map(|r| self.body_limits.get(*r).map(|n| (*r, n.0)))
                .collect(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_cache_ttl: Duration::from_secs(1),
            last_used_flush: Duration::from_secs(5),
        }
    }
}

impl WebhooksConfig {
    fn validate(&self) -> Result<(), String> {
        let w = self;
        if w.timeout.is_zero() || w.timeout > Duration::from_secs(300) {
            return Err("webhooks.timeout must be between 1ms and 5m".into());
        }
        if w.resolve_timeout.is_zero() || w.resolve_timeout > w.timeout {
            return Err(
                "webhooks.resolve_timeout must be greater than 0 and at most webhooks.timeout".into(),
            );
        }
        if w.concurrency > 10_000 {
            return Err("webhooks.concurrency must be at most 10000".into());
        }
        if w.schedule.is_empty() || w.schedule.len() > 50 {
            return Err("webhooks.schedule must list 1 to 50 delays".into());
        }
        if w.schedule.iter().any(|d| *d > Duration::from_secs(7 * 86400)) {
            return Err("webhooks.schedule: each delay must be at most 7 days".into());
        }
        if !(0.0..=0.5).contains(&w.jitter) {
            return Err("webhooks.jitter must be between 0 and 0.5".into());
        }
        if w.lease <= w.timeout {
            return Err("webhooks.lease must be longer than webhooks.timeout".into());
        }
        if w.poll_interval.is_zero() {
            return Err("webhooks.poll_interval must be greater than 0".into());
        }
        Ok(())
    }
}

/// A list of durations written as `["0s", "5s", "5m"]`.
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
            })
            .collect()
    }
}

/// A byte count written as an integer or as `"1MiB"`, `"512KiB"`, `"2MB"`, `"100kb"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 1048576 or \"1MiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Why the configuration was refused. One line, naming the file or key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Flags that override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Loads defaults → file → environment → flags, then validates. The file is `--config` if given
    /// (it must exist), else `<data_dir>/skygate.toml` if that exists.
    pub fn load(over: &Overrides) -> Result<Config, ConfigError> {
        let env_data_dir = std::env::var_os("SKYGATE_DATA_DIR").map(PathBuf::from);
        let data_dir_hint = over
            .data_dir
            .clone()
            .or(env_data_dir)
            .unwrap_or_else(|| Config::default().data_dir);
        let file = match &over.config_file {
            Some(f) if !f.is_file() => {
                return Err(ConfigError(format!("config file {} does not exist", f.display())))
            }
            Some(f) => Some(f.clone()),
            None => Some(data_dir_hint.join("skygate.toml")).filter(|f| f.is_file()),
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig
            .merge(
                Env::prefixed("SKYGATE_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
            .merge(Env::raw().filter_map(|k| {
                let mapped = match k.as_str().to_ascii_uppercase().as_str() {
                    "SKYGATE_LISTEN" => "server.listen",
                    "SKYGATE_DATA_DIR" => "data_dir",
                    "SKYGATE_DATABASE_URL" => "storage.database_url",
                    "SKYGATE_PUBLIC_URL" => "server.public_url",
                    _ => return None,
                };
                Some(mapped.into())
            }));
        if let Some(d) = &over.data_dir {
            fig = fig.merge(Serialized::default("data_dir", d));
        }
        if let Some(l) = &over.listen {
            fig = fig.merge(Serialized::default("server.listen", l.to_string()));
        }
        let cfg: Config = fig.extract().map_err(|e| ConfigError(one_line(&e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.data_dir.as_os_str().is_empty() {
            return err("data_dir must not be empty".into());
        }
        let s = &self.server;
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return err("server.tls_cert and server.tls_key must be given together".into());
        }
        if let Some(u) = &s.public_url {
            if !u.starts_with("https://") || u.len() <= "https://".len() || u.contains(char::is_whitespace) {
                return err(format!("server.public_url must be an https:// URL, got {u:?}"));
            }
        }
        if s.body_limit.0 == 0 || s.body_limit.0 > 1024 * 1024 * 1024 {
            return err("server.body_limit must be between 1 byte and 1GiB".into());
        }
        for (route, limit) in &s.body_limits {
            if !crate::metrics::ROUTES.contains(&route.as_str()) {
                return err(format!(
                    "server.body_limits.{route:?}: not a route template (one of {})",
                    crate::metrics::ROUTES.join(", ")
                ));
            }
            if limit.0 == 0 || limit.0 > 1024 * 1024 * 1024 {
                return err(format!(
                    "server.body_limits.{route:?} must be between 1 byte and 1GiB"
                ));
            }
        }
        for (name, d) in [
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.request_timeout", s.request_timeout),
            ("server.await_timeout", s.await_timeout),
            ("server.idle_timeout", s.idle_timeout),
        ] {
            if d.is_zero() {
                return err(format!("{name} must be greater than 0"));
            }
        }
        if s.await_timeout >= s.request_timeout {
            return err("server.await_timeout must be shorter than server.request_timeout".into());
        }
        let a = &self.accounts;
        if a.session_idle_timeout.is_zero() || a.session_idle_timeout > a.session_lifetime {
            return err(
                "accounts.session_idle_timeout must be greater than 0 and at most accounts.session_lifetime"
                    .into(),
            );
        }
        if a.password_hash_concurrency == 0 || a.password_hash_concurrency > 256 {
            return err("accounts.password_hash_concurrency must be between 1 and 256".into());
        }
        if a.login_failures_per_account == 0 {
            return err("accounts.login_failures_per_account must be greater than 0".into());
        }
        if s.max_headers == 0 || s.max_headers > 1000 {
            return err(format!(
                "server.max_headers must be between 1 and 1000, got {}",
                s.max_headers
            ));
        }
        if let Some(a) = self.metrics.listen {
            if !a.ip().is_loopback() {
                return err(format!(
                    "metrics.listen must be a loopback address (the metrics listener is plaintext), got {a}"
                ));
            }
        }
        if s.max_connections == 0 {
            return err("server.max_connections must be at least 1".into());
        }
        if self.auth.key_cache_ttl > Duration::from_secs(1) {
            return err("auth.key_cache_ttl must be at most 1s (revocations must apply within 1s)".into());
        }
        if self.auth.last_used_flush.is_zero() {
            return err("auth.last_used_flush must be greater than 0".into());
        }
        if let Some(u) = &self.storage.database_url {
            let ok = ["sqlite://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| u.starts_with(p));
            if !ok {
                return err(
                    "storage.database_url must start with sqlite://, postgres:// or postgresql://".into(),
                );
            }
        }
        self.webhooks.validate().map_err(ConfigError)?;
        self.sandbox.validate().map_err(ConfigError)?;
        self.limits.validate().map_err(ConfigError)?;
        crate::screen::parse_proxies(&self.server.trusted_proxies).map_err(ConfigError)?;
        crate::waf::Waf::new(&self.waf).map_err(ConfigError)?;
        let k = &self.keyring;
        match k.provider.as_str() {
            "local" => {}
            "pkcs11" => {
                if k.pkcs11_module.is_none() {
                    return err(
                        "keyring.pkcs11_module is required with keyring.provider = \"pkcs11\"".into(),
                    );
                }
                if k.pkcs11_token_label.is_none() && k.pkcs11_slot.is_none() {
                    return err(
                        "keyring.pkcs11_token_label or keyring.pkcs11_slot is required with \
                         keyring.provider = \"pkcs11\""
                            .into(),
                    );
                }
                if k.pkcs11_pin_env.is_empty() {
                    return err("keyring.pkcs11_pin_env must name an environment variable".into());
                }
            }
            other => {
                return err(format!(
                    "keyring.provider must be \"local\" or \"pkcs11\", got {other:?}"
                ))
            }
        }
        if k.rotation_period < Duration::from_secs(60) {
            return err("keyring.rotation_period must be at least 1m".into());
        }
        if k.rewrap_batch == 0 || k.rewrap_batch > 10_000 {
            return err("keyring.rewrap_batch must be between 1 and 10000".into());
        }
        if k.rewrap_interval.is_zero() {
            return err("keyring.rewrap_interval must be greater than 0".into());
        }
        let o = &self.outputs;
        if o.store != "file" {
            let bucket = o
                .store
                .strip_prefix("s3://")
                .map(|r| r.split('/').next().unwrap_or(""));
            if bucket.is_none_or(str::is_empty) {
                return err(format!(
                    "outputs.store must be \"file\" or s3://BUCKET[/PREFIX], got {:?}",
                    o.store
                ));
            }
        }
        if let Some(e) = &o.s3_endpoint {
            let http = e.starts_with("http://");
            if !(e.starts_with("https://") || http) || (http && !o.s3_allow_http) {
                return err(format!(
                    "outputs.s3_endpoint must be an https:// URL (http:// only with outputs.s3_allow_http), got {e:?}"
                ));
            }
        }
        if o.retention < Duration::from_secs(1) || o.retention > o.max_retention {
            return err(format!(
                "outputs.retention must be between 1s and outputs.max_retention ({})",
                humantime::format_duration(o.max_retention)
            ));
        }
        if o.sweep_interval.is_zero() {
            return err("outputs.sweep_interval must be greater than 0".into());
        }
        let q = &self.queue;
        if q.workers > 256 {
            return err("queue.workers must be at most 256".into());
        }
        if q.lease < Duration::from_secs(1) {
            return err("queue.lease must be at least 1s".into());
        }
        if q.max_attempts == 0 || q.max_attempts > 100 {
            return err("queue.max_attempts must be between 1 and 100".into());
        }
        if q.poll_interval.is_zero() || q.job_timeout.is_zero() {
            return err("queue.poll_interval and queue.job_timeout must be greater than 0".into());
        }
        if self.server.await_timeout.is_zero() || self.server.await_timeout >= self.server.request_timeout {
            return err(
                "server.await_timeout must be greater than 0 and less than server.request_timeout".into(),
            );
        }
        let found = engine::discover(&self.models_dir());
        for (slug, m) in &self.models {
            self.resolved(slug, m, &found)
                .to_spec(slug)
                .map_err(|e| ConfigError(format!("models.{slug}: {e}")))?;
            let have = self.sandbox.devices.len();
            match m.devices {
                Some(n) if m.backend != "command" && n > 0 => {
                    return err(format!("models.{slug}: devices is only for backend \"command\""));
                }
                Some(n) if usize::try_from(n).unwrap_or(usize::MAX) > have => {
                    return err(format!(
                        "models.{slug}: devices = {n}, but sandbox.devices lists {have}"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        match &self.storage.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("skygate.db").display()),
        }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The local object store's directory.
    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }

    /// The local key provider's directory.
    pub fn keyring_dir(&self) -> PathBuf {
        self.data_dir.join("keyring")
    }

    /// The operator-configured models as registry entries (validated in [`Config::validate`]).
    /// Models found in `<data_dir>/models/` are added unless a `[models.<slug>]` entry of the same
    /// slug overrides them; a real model whose file failed its check is logged here, once per start.
    pub fn model_specs(&self) -> Result<Vec<ModelSpec>, ConfigError> {
        let found = engine::discover(&self.models_dir());
        let mut specs = self
            .models
            .iter()
            .map(|(slug, m)| {
                self.resolved(slug, m, &found)
                    .to_spec(slug)
                    .map_err(|e| ConfigError(format!("models.{slug}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for f in found.iter().filter(|f| !self.models.contains_key(&f.slug)) {
            let m = engine::engine_model(f.kind, &f.path, None);
            specs.push(engine::engine_spec(&f.slug, m, None));
        }
        for s in &specs {
            if let Backend::Engine(m) = &s.backend {
                match &m.unavailable {
                    Some(why) => tracing::error!(
                        model = %s.slug,
                        file = %m.path.display(),
                        "model {} unavailable: {}: {why}",
                        s.slug,
                        m.path.display()
                    ),
                    None => {
                        tracing::info!(model = %s.slug, kind = ?m.kind, context = m.context_length, threads = m.threads, "model ready to serve")
                    }
                }
            }
        }
        Ok(specs)
    }

    /// Where real models are found with no configuration.
    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    /// `m` with the path of the model of this slug found in the models folder, when it is a real
    /// model given without a path.
    fn resolved<'a>(
        &self,
        slug: &str,
        m: &'a ModelConfig,
        found: &[engine::Found],
    ) -> std::borrow::Cow<'a, ModelConfig> {
        let engine = matches!(m.backend.as_str(), "llm" | "embedding");
        match found.iter().find(|f| f.slug == slug) {
            Some(f) if engine && m.path.is_none() => std::borrow::Cow::Owned(ModelConfig {
                path: Some(f.path.clone()),
                ..m.clone()
            }),
            _ => std::borrow::Cow::Borrowed(m),
        }
    }

    /// Base URL for absolute links in responses, without a trailing slash.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("https://{bound}"),
        }
    }
}

/// The `predict` key of a Cog predictor's `cog.yaml` (a top-level `predict: "file.py:Class"` line;
/// anything more elaborate is given as `predictor` instead).
fn cog_predictor(dir: &Path) -> Result<String, String> {
    let file = dir.join("cog.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "backend \"cog\": cannot read {} ({e}); give predictor = \"predict.py:Predictor\"",
            file.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("predict:"))
        .map(|v| {
            let v = v.split(" #").next().unwrap_or(v).trim();
            v.trim_matches(|c| c == '"' || c == '\'').to_owned()
        })
        .ok_or_else(|| {
            format!(
                "backend \"cog\": {} has no top-level predict key; give predictor = \"predict.py:Predictor\"",
                file.display()
            )
        })
}

/// `path/to/file.py:ClassName`: a relative Python file inside the predictor's directory and a name.
fn is_predictor_ref(r: &str) -> bool {
    let Some((file, class)) = r.rsplit_once(':') else {
        return false;
    };
    let file_ok = file.ends_with(".py")
        && !file.starts_with('/')
        && file.split('/').all(|c| !c.is_empty() && c != "..")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    let class_ok = class
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    file_ok && class_ok
}

const MODEL_TYPES: [&str; 7] = ["image", "video", "audio", "music", "text", "code", "multimodal"];

impl ModelConfig {
    /// The sandbox of a `command` or `cog` model: `argv`, its directory and its own limits.
    fn sandboxed(&self, argv: Vec<String>) -> Result<CommandModel, String> {
        if let Some(d) = &self.dir {
            if !d.is_absolute() || !d.is_dir() {
                return Err(format!(
                    "dir must be an existing absolute directory, got {}",
                    d.display()
                ));
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout must be greater than 0".into());
        }
        if self.memory.is_some_and(|m| m.0 < 16 << 20) {
            return Err("memory must be at least 16MiB".into());
        }
        if self.cpu_seconds == Some(0) {
            return Err("cpu_seconds must be at least 1".into());
        }
        Ok(CommandModel {
            argv,
            dir: self.dir.clone(),
            timeout: self.timeout,
            memory: self.memory.map(|m| m.0),
            cpu_seconds: self.cpu_seconds,
            devices: self.devices.unwrap_or(0),
        })
    }

    fn to_spec(&self, slug: &str) -> Result<ModelSpec, String> {
        if !models::is_valid_slug(slug) {
            return Err(
                "a model slug is 1-64 of a-z, 0-9, '.', '_' or '-', starting with a letter or digit".into(),
            );
        }
        if !MODEL_TYPES.contains(&self.kind.as_str()) {
            return Err(format!("type must be one of {}", MODEL_TYPES.join(", ")));
        }
        let engine_only = [
            ("path", self.path.is_some()),
            ("context", self.context.is_some()),
            ("threads", self.threads.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
        ];
        let kind = match self.backend.as_str() {
            "llm" => Some(models::EngineKind::Llm),
            "embedding" => Some(models::EngineKind::Embedding),
            _ => None,
        };
        if let (None, Some((key, _))) = (kind, engine_only.iter().find(|(_, set)| *set)) {
            return Err(format!("{key} is only for backend \"llm\" or \"embedding\""));
        }
        if let Some(kind) = kind {
            let Some(path) = &self.path else {
                return Err(format!(
                    "backend \"{}\" needs path = \"/path/to/model\" (or the model in <data_dir>/models/ named after the slug)",
                    self.backend
                ));
            };
            if self.context == Some(0) || self.threads == Some(0) || self.max_tokens == Some(0) {
                return Err("context, threads and max_tokens must be at least 1".into());
            }
            if self.memory.is_some_and(|m| m.0 < 64 << 20) {
                return Err("memory must be at least 64MiB for a real model".into());
            }
            if self.idle_timeout.is_some_and(|t| t.is_zero()) {
                return Err("idle_timeout must be greater than 0".into());
            }
            let m = engine::engine_model(kind, path, Some(self));
            return Ok(engine::engine_spec(slug, m, Some(self)));
        }
        let backend = match self.backend.as_str() {
            "builtin" => {
                let id = self.builtin.clone().unwrap_or_else(|| slug.to_owned());
                if !models::builtin_models().iter().any(|b| b.slug == id) {
                    return Err(format!("no built-in model named {id:?}"));
                }
                Backend::Builtin(id)
            }
            "command" => match &self.command {
                Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
                    Backend::Command(self.sandboxed(argv.clone())?)
                }
                _ => return Err("backend \"command\" needs command = [\"/path/to/exe\", …]".into()),
            },
            "cog" => {
                if self.command.is_some() {
                    return Err("backend \"cog\" starts Cog's own server: give python, not command".into());
                }
                let Some(dir) = &self.dir else {
                    return Err(
                        "backend \"cog\" needs dir = \"/path/to/predictor\" (holding cog.yaml)".into(),
                    );
                };
                let predictor = match &self.predictor {
                    Some(p) => p.clone(),
                    None => cog_predictor(dir)?,
                };
                if !is_predictor_ref(&predictor) {
                    return Err(format!(
                        "predictor must look like \"predict.py:Predictor\", got {predictor:?}"
                    ));
                }
                if let Some(v) = &self.venv {
                    if !v.is_absolute() || !v.join("bin/python").exists() {
                        return Err(format!(
                            "venv must be the absolute path of a virtualenv (with bin/python), got {}",
                            v.display()
                        ));
                    }
                }
                let python = self.python.clone().unwrap_or_else(|| match &self.venv {
                    Some(_) => format!("{}/bin/python", models::COG_VENV),
                    None => "python3".into(),
                });
                if python.is_empty() {
                    return Err("python must name the interpreter with Cog installed".into());
                }
                let argv = [python.as_str(), "-m", "cog.server.http", "--host", "127.0.0.1"];
                Backend::Cog(CogModel {
                    run: self.sandboxed(argv.map(String::from).to_vec())?,
                    predictor,
                    venv: self.venv.clone(),
                    warm_idle: match self.reuse.as_deref() {
                        None | Some("none") if self.idle_timeout.is_none() => None,
                        None | Some("none") => {
                            return Err("idle_timeout needs reuse = \"tenant\"".into())
                        }
                        Some("tenant") if self.devices.unwrap_or(0) > 0 => {
                            return Err("reuse = \"tenant\" cannot be combined with devices (a warm sandbox would hold them while idle)".into())
                        }
                        Some("tenant") => match self.idle_timeout {
                            Some(t) if t.is_zero() => {
                                return Err("idle_timeout must be greater than 0".into())
                            }
                            t => Some(t.unwrap_or(Duration::from_secs(60))),
                        },
                        Some(other) => {
                            return Err(format!("reuse must be \"none\" or \"tenant\", got {other:?}"))
                        }
                    },
                })
            }
            other => {
                return Err(format!(
                    "unknown backend {other:?} (expected builtin, command, cog, llm or embedding)"
                ))
            }
        };
        let builtin = match &backend {
            Backend::Builtin(id) => models::builtin_models().into_iter().find(|b| &b.slug == id),
            _ => None,
        };
        let from_file = match (&self.input_schema_file, &self.input_schema) {
            (Some(_), Some(_)) => return Err("give input_schema or input_schema_file, not both".into()),
            (Some(f), None) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("input_schema_file {}: {e}", f.display()))?;
                Some(
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| format!("input_schema_file {}: not JSON: {e}", f.display()))?,
                )
            }
            (None, given) => given.clone(),
        };
        let schema =
            |given: &Option<serde_json::Value>, fallback: Option<serde_json::Value>, what: &str| match given
                .clone()
                .or(fallback)
            {
                Some(v) if v.is_object() => Ok(v),
                Some(_) => Err(format!("{what} must be a table (a JSON Schema object)")),
                None => Ok(serde_json::json!({"type": "object"})),
            };
        Ok(ModelSpec {
            slug: slug.to_owned(),
            name: self.name.clone().unwrap_or_else(|| slug.to_owned()),
            description: self.description.clone(),
            kind: self.kind.clone(),
            vendor: "skygate".into(),
            billable: self.billable,
            test_ok: self.test_ok,
            input_schema: schema(
                &from_file,
                builtin.as_ref().map(|b| b.input_schema.clone()),
                "input_schema",
            )?,
            output_schema: schema(
                &self.output_schema,
                builtin.as_ref().map(|b| b.output_schema.clone()),
                "output_schema",
            )?,
            backend,
        })
    }
}

fn one_line(e: &figment::Error) -> String {
    e.to_string().replace('\n', " ")
}

/// Creates `dir` (mode 0700) if missing and checks it is a writable directory.
pub fn ensure_data_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ConfigError(format!("cannot create data dir {}: {e}", dir.display())))?;
    }
    if !dir.is_dir() {
        return Err(ConfigError(format!(
            "data dir {} is not a directory",
            dir.display()
        )));
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| ConfigError(format!("data dir {} is not writable: {e}", dir.display())))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure error type is figment's own.
mod tests {
    use super::*;

    fn load_in(jail: &figment::Jail, over: Overrides) -> Result<Config, ConfigError> {
        let mut over = over;
        if over.data_dir.is_none() {
            over.data_dir = Some(jail.directory().join("data"));
        }
        Config::load(&over)
    }

    fn load_listen(
        jail: &figment::Jail,
        file: &Option<PathBuf>,
        listen: Option<SocketAddr>,
    ) -> Result<Config, String> {
        let over = Overrides {
            config_file: file.clone(),
            listen,
            ..Default::default()
        };
        load_in(jail, over).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        figment::Jail::expect_with(|jail| {
            let c = load_in(jail, Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8443)));
            assert_eq!(c.server.body_limit, ByteSize(1024 * 1024));
            assert!(c.database_url().starts_with("sqlite://"));
            Ok(())
        });
    }

    #[test]
    fn the_example_config_is_valid() {
        figment::Jail::expect_with(|jail| {
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../skygate.example.toml");
            let over = Overrides {
                config_file: Some(PathBuf::from(example)),
                ..Overrides::default()
            };
            let c = load_in(jail, over).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.key_cache_ttl, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[server]\nlisten = \"127.0.0.1:1111\"\nbody_limit = \"2MiB\"\n",
            )?;
            let file = Some(jail.directory().join("c.toml"));
            let c = load_listen(jail, &file, None)?;
            assert_eq!(c.server.listen.port(), 1111);
            assert_eq!(c.server.body_limit, ByteSize(2 * 1024 * 1024));
            jail.set_env("SKYGATE_LISTEN", "127.0.0.1:2222");
            jail.set_env("SKYGATE_SERVER__BODY_LIMIT", "4096");
            jail.set_env("SKYGATE_MASTER_KEY", "not a config key");
            let c = load_listen(jail, &file, None)?;
            assert_eq!(c.server.listen.port(), 2222);
            assert_eq!(c.server.body_limit, ByteSize(4096));
            let c = load_listen(jail, &file, Some(SocketAddr::from(([127, 0, 0, 1], 3333))))?;
            assert_eq!(c.server.listen.port(), 3333);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let cases = [
            (
                "[storage]\ndatabase_uri = \"x\"\n",
                &["database_uri", "c.toml"][..],
            ),
            (
                "[storage]\ndatabase_url = \"mysql://x\"\n",
                &["storage.database_url"][..],
            ),
            ("[server]\ntls_cert = \"/x.pem\"\n", &["tls_key"][..]),
            (
                "[models.x]\nbackend = \"command\"\n",
                &["models.x", "command"][..],
            ),
            ("[sandbox]\nmode = \"off\"\n", &["sandbox.mode"][..]),
            (
                "[sandbox.limits]\nprocesses = 1\n",
                &["sandbox.limits.processes"][..],
            ),
            ("[sandbox]\nro_binds = [\"/proc/x\"]\n", &["sandbox.ro_binds"][..]),
            ("[sandbox]\njob_dir = \"rel\"\n", &["sandbox.job_dir"][..]),
            ("[sandbox]\nuid = 5\n", &["uid"][..]),
            (
                "[models.x]\nbackend = \"command\"\ncommand = [\"x\"]\ndir = \"/nonexistent-dir\"\n",
                &["models.x", "dir"][..],
            ),
            (
                "[sandbox]\ndevices = [\"/etc/passwd\"]\n",
                &["sandbox.devices", "not a character device"][..],
            ),
            (
                "[sandbox]\ndevices = [\"/nonexistent/gpu0\"]\n",
                &["sandbox.devices", "/nonexistent/gpu0"][..],
            ),
            (
                "[sandbox]\ndevices = [\"/dev/tty\"]\n[models.x]\nbackend = \"command\"\ncommand = [\"x\"]\ndevices = 2\n",
                &["models.x", "devices = 2", "lists 1"][..],
            ),
            (
                "[models.x]\nbackend = \"builtin\"\nbuiltin = \"echo\"\ndevices = 1\n",
                &["models.x", "devices is only for backend"][..],
            ),
        ];
        for (toml, wanted) in cases {
            figment::Jail::expect_with(|jail| {
                jail.create_file("c.toml", toml)?;
                let file = Some(jail.directory().join("c.toml"));
                let over = Overrides {
                    config_file: file,
                    ..Default::default()
                };
                let e = load_in(jail, over)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(wanted.iter().all(|w| e.contains(w)), "{toml}: {e}");
                Ok(())
            });
        }
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("512kib").unwrap(), ByteSize(512 * 1024));
        assert_eq!(ByteSize::parse("2MB").unwrap(), ByteSize(2_000_000));
        assert_eq!(ByteSize::parse("77").unwrap(), ByteSize(77));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("5 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
    }

    #[test]
    fn operator_models_are_validated() {
        let m = |backend: &str| ModelConfig {
            backend: backend.into(),
            path: None,
            context: None,
            threads: None,
            max_tokens: None,
            builtin: None,
            command: Some(vec!["/bin/true".into()]),
            dir: None,
            timeout: None,
            memory: None,
            cpu_seconds: None,
            devices: None,
            input_schema_file: None,
            venv: None,
            python: None,
            predictor: None,
            reuse: None,
            idle_timeout: None,
            name: None,
            description: String::new(),
            kind: "text".into(),
            test_ok: false,
            billable: true,
            input_schema: None,
            output_schema: None,
        };
        assert!(m("command").to_spec("ok-slug").is_ok());
        assert!(m("command").to_spec("Bad").is_err());
        assert!(m("builtin").to_spec("no-such-builtin").is_err());
        assert_eq!(
            m("builtin").to_spec("echo").unwrap().input_schema["required"][0],
            "prompt"
        );
        // Cog: needs a directory with cog.yaml (or an explicit predictor), never a command.
        assert!(m("cog").to_spec("x").unwrap_err().contains("python, not command"));
        let cog = |dir: Option<&Path>, predictor: Option<&str>| ModelConfig {
            command: None,
            dir: dir.map(Path::to_owned),
            predictor: predictor.map(String::from),
            ..m("cog")
        };
        assert!(cog(None, None).to_spec("x").unwrap_err().contains("needs dir"));
        let d = tempfile::tempdir().unwrap();
        assert!(cog(Some(d.path()), None)
            .to_spec("x")
            .unwrap_err()
            .contains("cog.yaml"));
        std::fs::write(
            d.path().join("cog.yaml"),
            "build:\n  python_version: \"3.11\"\npredict: \"predict.py:Predictor\"  # the entry point\n",
        )
        .unwrap();
        let Backend::Cog(c) = cog(Some(d.path()), None).to_spec("x").unwrap().backend else {
            panic!("not a cog model")
        };
        assert_eq!(c.predictor, "predict.py:Predictor");
        assert_eq!(
            c.run.argv,
            ["python3", "-m", "cog.server.http", "--host", "127.0.0.1"]
        );
        assert_eq!(c.run.dir.as_deref(), Some(d.path()));
        for bad in ["predict.py", "/etc/x.py:P", "../x.py:P", "x.py:1P", "x.sh:P"] {
            assert!(cog(Some(d.path()), Some(bad)).to_spec("x").is_err(), "{bad}");
        }
        assert!(cog(Some(d.path()), Some("src/run.py:Runner"))
            .to_spec("x")
            .is_ok());
        // A virtualenv is checked, and its interpreter runs the server.
        let with_venv = |v: &Path| ModelConfig {
            venv: Some(v.to_owned()),
            ..cog(Some(d.path()), None)
        };
        assert!(with_venv(d.path())
            .to_spec("x")
            .unwrap_err()
            .contains("virtualenv"));
        std::fs::create_dir_all(d.path().join("env/bin")).unwrap();
        std::fs::write(d.path().join("env/bin/python"), "").unwrap();
        let Backend::Cog(c) = with_venv(&d.path().join("env")).to_spec("x").unwrap().backend else {
            panic!("not a cog model")
        };
        assert_eq!(c.run.argv[0], "/venv/bin/python");
        assert_eq!(c.venv, Some(d.path().join("env")));
        assert_eq!(c.warm_idle, None);
        let reuse = |r: &str, idle: Option<u64>| ModelConfig {
            reuse: Some(r.into()),
            idle_timeout: idle.map(Duration::from_secs),
            ..cog(Some(d.path()), None)
        };
        let warm = |m: ModelConfig| match m.to_spec("x").unwrap().backend {
            Backend::Cog(c) => c.warm_idle,
            _ => panic!("not a cog model"),
        };
        assert_eq!(warm(reuse("tenant", None)), Some(Duration::from_secs(60)));
        assert_eq!(warm(reuse("tenant", Some(5))), Some(Duration::from_secs(5)));
        assert!(reuse("tenant", Some(0)).to_spec("x").is_err());
        assert!(reuse("none", Some(5)).to_spec("x").is_err());
        assert!(reuse("shared", None).to_spec("x").unwrap_err().contains("tenant"));
        assert!(m("docker").to_spec("x").is_err());
    }
}

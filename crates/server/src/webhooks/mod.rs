//! Prediction webhooks in the server: the checks on `webhook` in a create body, the delivery client
//! (SSRF guard, TLS 1.3, bounded time and memory: `skygate-webhooks`), project signing secrets, and the
//! dispatcher that drains the outbox ([`dispatcher`]).

pub mod dispatcher;

use std::sync::Arc;

use skygate_core::webhooks::EventMask;
use skygate_core::{ProjectId, SecretString, Timestamp};
use skygate_proto::WebhookSpec;
use skygate_store::DynStore;
use skygate_webhooks::{
    Client, ClientConfig, Connector, Policy, Resolver, Schedule, TcpConnector, WebhookSecret,
};

use crate::config::WebhooksConfig;

/// The webhook machinery of one node: policy, resolver, client and schedule, built once at start.
#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

struct Inner {
    policy: Policy,
    resolver: Arc<dyn Resolver>,
    resolve_timeout: std::time::Duration,
    client: Client,
    schedule: Schedule,
}

/// A `webhook` in a create body that cannot be accepted: the field and why (user-facing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Webhooks {
    /// The real thing: system DNS and plain TCP.
    pub fn new(config: &WebhooksConfig) -> anyhow::Result<Self> {
        Self::with_network(
            config,
            Arc::new(skygate_webhooks::SystemResolver),
            Arc::new(TcpConnector),
        )
    }

    /// With an injected resolver and connector (tests map names and record connection attempts).
    pub fn with_network(
        config: &WebhooksConfig,
        resolver: Arc<dyn Resolver>,
        connector: Arc<dyn Connector>,
    ) -> anyhow::Result<Self> {
        let policy = Policy {
            allow_private_networks: config.allow_private_networks,
            allow_insecure_http: config.allow_insecure_http,
            ..Policy::default()
        };
        let mut extra_roots = Vec::new();
        for path in &config.extra_ca {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("webhooks.extra_ca: cannot read {}: {e}", path.display()))?;
            let certs = skygate_webhooks::load_pem_roots(&pem)
                .map_err(|e| anyhow::anyhow!("webhooks.extra_ca: {}: {e}", path.display()))?;
            extra_roots.extend(certs);
        }
        let client = Client::new(
            ClientConfig {
                policy,
                timeout: config.timeout,
                resolve_timeout: config.resolve_timeout,
                extra_roots,
                user_agent: format!("skygate-webhooks/{}", env!("CARGO_PKG_VERSION")),
                ..ClientConfig::default()
            },
            resolver.clone(),
            connector,
        )
        .map_err(|e| anyhow::anyhow!("cannot build the webhook client: {e}"))?;
        let schedule = Schedule {
            delays: config.schedule.clone(),
            jitter: config.jitter,
            retry_after_cap: config.retry_after_cap,
        };
        Ok(Webhooks(Arc::new(Inner {
            policy,
            resolver,
            resolve_timeout: config.resolve_timeout,
            client,
            schedule,
        })))
    }

    pub fn client(&self) -> &Client {
        &self.0.client
    }

    pub fn schedule(&self) -> &Schedule {
        &self.0.schedule
    }

    /// Checks a create body's `webhook`: URL syntax and scheme, events, and that the host resolves to
    /// addresses the policy allows (delivery checks again, right before each new connection).
    pub async fn check(&self, spec: &WebhookSpec) -> Result<EventMask, WebhookError> {
        let field = |f: &str, reason: String| WebhookError {
            field: f.to_owned(),
            reason,
        };
        let mask = EventMask::from_names(&spec.events)
            .map_err(|(i, e)| field(&format!("webhook.events[{i}]"), e.to_string()))?;
        let target = skygate_webhooks::check_url(spec.url.trim(), &self.0.policy)
            .map_err(|e| field("webhook.url", e.to_string()))?;
        skygate_webhooks::vet(
            &target,
            self.0.resolver.as_ref(),
            &self.0.policy,
            self.0.resolve_timeout,
        )
        .await
        .map_err(|e| field("webhook.url", e.to_string()))?;
        Ok(mask)
    }
}

/// The signing secrets of a project, newest first; the first one is made on first use.
pub async fn project_secrets(
    store: &DynStore,
    project: &ProjectId,
    now: Timestamp,
) -> anyhow::Result<Vec<WebhookSecret>> {
    let mut records = store.webhook_secrets(project, now).await?;
    if records.is_empty() {
        let fresh = WebhookSecret::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        records = store
            .ensure_webhook_secret(project, &SecretString::new(fresh.expose()), now)
            .await?;
    }
    records
        .iter()
        .map(|r| {
            WebhookSecret::parse(r.secret.expose()).map_err(|e| {
                anyhow::anyhow!(
                    "stored webhook secret v{} of {project} is unusable: {e}",
                    r.version
                )
            })
        })
        .collect()
}

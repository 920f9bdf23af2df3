//! Prediction webhooks in the server: the checks on `webhook` in a create body, the delivery client
//! (SSRF guard, TLS 1.3, bounded time and memory: `skygate-webhooks`), project signing secrets, and the
//! dispatcher that drains the outbox ([`dispatcher`]).

pub mod dispatcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Signing secrets per project, each entry valid until the store time it holds.
    secrets: Mutex<HashMap<ProjectId, CachedSecrets>>,
}

/// A project's secrets and the store time until which they may be used without a re-read.
type CachedSecrets = (Timestamp, Arc<Vec<WebhookSecret>>);

/// How long signing secrets read from the store are reused: a rotation made on another node or by the
/// CLI signs deliveries within this.
const SECRETS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

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
            secrets: Mutex::default(),
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

impl Webhooks {
    /// The signing secrets of a project at `now`, newest first (the first one is made on first use),
    /// read from the store at most once per second per project, and never past a secret's retirement.
    pub async fn secrets(
        &self,
        store: &DynStore,
        project: &ProjectId,
        now: Timestamp,
    ) -> anyhow::Result<Arc<Vec<WebhookSecret>>> {
        if let Ok(cache) = self.0.secrets.lock() {
            if let Some((until, s)) = cache.get(project) {
                if now < *until {
                    return Ok(s.clone());
                }
            }
        }
        let (secrets, retires) = project_secrets(store, project, now).await?;
        let until = retires
            .into_iter()
            .fold(now.saturating_add(SECRETS_TTL), std::cmp::min);
        let secrets = Arc::new(secrets);
        if let Ok(mut cache) = self.0.secrets.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(project.clone(), (until, secrets.clone()));
        }
        Ok(secrets)
    }
}

/// The signing secrets of a project, newest first (the first one is made on first use), and the
/// retirement times among them.
async fn project_secrets(
    store: &DynStore,
    project: &ProjectId,
    now: Timestamp,
) -> anyhow::Result<(Vec<WebhookSecret>, Vec<Timestamp>)> {
    let mut records = store.webhook_secrets(project, now).await?;
    if records.is_empty() {
        let fresh = WebhookSecret::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        records = store
            .ensure_webhook_secret(project, &SecretString::new(fresh.expose()), now)
            .await?;
    }
    let secrets = records
        .iter()
        .map(|r| {
            WebhookSecret::parse(r.secret.expose()).map_err(|e| {
                anyhow::anyhow!(
                    "stored webhook secret v{} of {project} is unusable: {e}",
                    r.version
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((secrets, records.iter().filter_map(|r| r.retires_at).collect()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn with_ca(files: Vec<std::path::PathBuf>) -> anyhow::Result<Webhooks> {
        let config = WebhooksConfig {
            extra_ca: files,
            ..WebhooksConfig::default()
        };
        Webhooks::new(&config)
    }

    #[test]
    fn extra_ca_files_are_loaded_or_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["receiver.test".to_owned()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        with_ca(vec![good]).unwrap();

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = with_ca(vec![junk]).err().unwrap().to_string();
        assert!(
            e.starts_with("webhooks.extra_ca:") && e.contains("junk.pem"),
            "{e}"
        );
        let e = with_ca(vec![dir.path().join("missing.pem")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read") && e.contains("missing.pem"), "{e}");
    }

    #[tokio::test]
    async fn secrets_are_cached_for_a_second_and_not_past_a_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = skygate_store::connect(&url, skygate_store::Sealer::ephemeral().unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let t0 = Timestamp::now();
        let acct = crate::admin::create_account(&store, "c@example.test", skygate_core::Tier::Free, t0)
            .await
            .unwrap();
        let p = crate::admin::create_project(&store, acct.id.as_str(), "p", t0)
            .await
            .unwrap();
        let w = Webhooks::new(&WebhooksConfig::default()).unwrap();
        let ms = |n: u64| t0.saturating_add(std::time::Duration::from_millis(n));
        let first = w.secrets(&store, &p.id, t0).await.unwrap();
        assert_eq!(first.len(), 1);
        let new = WebhookSecret::generate().unwrap();
        store
            .rotate_webhook_secret(
                &p.id,
                &SecretString::new(new.expose()),
                ms(100),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(
            w.secrets(&store, &p.id, ms(500)).await.unwrap().len(),
            1,
            "cached"
        );
        let both = w.secrets(&store, &p.id, ms(1100)).await.unwrap();
        assert_eq!(both.len(), 2, "re-read after a second");
        assert_eq!(both[0].expose(), new.expose());
        // The old one retires at 10.1 s: an entry read at 10 s is not used past that.
        assert_eq!(w.secrets(&store, &p.id, ms(10_000)).await.unwrap().len(), 2);
        let after = w.secrets(&store, &p.id, ms(10_200)).await.unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].expose(), new.expose());
    }
}

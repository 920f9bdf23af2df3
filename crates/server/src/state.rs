//! Shared application state handed to every handler: config, store, authenticator, model registry.
//! No globals: tests build as many independent states as they like.

use std::sync::Arc;

use skygate_core::models::ModelRegistry;
use skygate_store::objects::Objects;
use skygate_store::DynStore;

use crate::api::ModelCatalog;
use crate::auth::Authenticator;
use crate::config::{BodyLimits, Config};
use crate::console::password::PasswordPool;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::predictions::{Hub, OutputSigner, Validators};
use crate::waf::Waf;
use crate::webhooks::Webhooks;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    store: DynStore,
    objects: Objects,
    auth: Arc<Authenticator>,
    models: ModelRegistry,
    catalog: ModelCatalog,
    validators: Validators,
    signer: OutputSigner,
    hub: Hub,
    webhooks: Webhooks,
    limits: Arc<RateLimits>,
    waf: Arc<Waf>,
    trusted_proxies: Vec<ipnet::IpNet>,
    public_url: String,
    metrics: Option<Arc<Metrics>>,
    body_limits: BodyLimits,
    console: PasswordPool,
    engines: Option<Arc<skygate_runtime::SandboxRunner>>,
}

/// What a state is built from; the rest (catalog, validators, change feed) is derived.
pub struct StateParts {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub objects: Objects,
    pub auth: Arc<Authenticator>,
    pub models: ModelRegistry,
    pub signer: OutputSigner,
    pub webhooks: Webhooks,
    pub limits: Arc<RateLimits>,
    pub waf: Arc<Waf>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Base for absolute URLs in responses, no trailing slash.
    pub public_url: String,
    /// `[metrics]` on: what this node counts.
    pub metrics: Option<Arc<Metrics>>,
    /// The sandbox launcher that runs real models for the inference routes (this node serves them
    /// itself, streaming), when any is configured.
    pub engines: Option<Arc<skygate_runtime::SandboxRunner>>,
}

impl AppState {
    pub fn new(parts: StateParts) -> anyhow::Result<Self> {
        let StateParts {
            config,
            store,
            objects,
            auth,
            models,
            signer,
            webhooks,
            limits,
            waf,
            trusted_proxies,
            public_url,
            metrics,
            engines,
        } = parts;
        let catalog = ModelCatalog::new(&models)?;
        let body_limits = config.server.body_limits();
        let validators = Validators::new(&models)?;
        let console = PasswordPool::new(config.accounts.password_hash_concurrency);
        Ok(AppState(Arc::new(Inner {
            config,
            store,
            objects,
            auth,
            models,
            catalog,
            validators,
            signer,
            hub: Hub::default(),
            webhooks,
            limits,
            waf,
            trusted_proxies,
            public_url,
            metrics,
            body_limits,
            console,
            engines,
        })))
    }

    /// Compiled input schemas of every model.
    pub fn validators(&self) -> &Validators {
        &self.0.validators
    }

    /// Signs and checks output download URLs.
    pub fn signer(&self) -> &OutputSigner {
        &self.0.signer
    }

    /// This node's change feed for predictions.
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// The WAF rules.
    pub fn waf(&self) -> &Waf {
        &self.0.waf
    }

    /// Proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.0.trusted_proxies
    }

    /// Rate limits by tier.
    pub fn limits(&self) -> &RateLimits {
        &self.0.limits
    }

    /// Webhook checks, client and schedule.
    pub fn webhooks(&self) -> &Webhooks {
        &self.0.webhooks
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn store(&self) -> &DynStore {
        &self.0.store
    }

    /// Sealed object storage for outputs.
    pub fn objects(&self) -> &Objects {
        &self.0.objects
    }

    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    pub fn models(&self) -> &ModelRegistry {
        &self.0.models
    }

    /// The Models API answers, serialised once.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.0.catalog
    }

    /// The body limit of each route (`server.body_limit` and `server.body_limits`).
    pub fn body_limits(&self) -> &BodyLimits {
        &self.0.body_limits
    }

    /// The console's bounded argon2id pool.
    pub fn console(&self) -> &PasswordPool {
        &self.0.console
    }

    /// This node's metrics (none unless `[metrics] listen` is set).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.0.metrics.as_ref()
    }

    /// Base for absolute URLs in responses, no trailing slash.
    /// The launcher of real models' sandboxes (`None` when this node serves no real model).
    pub fn engines(&self) -> Option<&Arc<skygate_runtime::SandboxRunner>> {
        self.0.engines.as_ref()
    }

    pub fn public_url(&self) -> &str {
        &self.0.public_url
    }
}

//! The skygate network edge and its wiring: configuration, the TLS 1.3 listener, the axum router with
//! its middleware, authentication, handlers, background tasks and the operator actions the CLI runs.
//!
//! Entry points: [`Server::prepare`] (open the key provider and the store, migrate, load TLS material) then
//! [`Server::serve`] on an already-bound listener; [`run`] does both. Tests bind port 0 and call these.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod credentials;
pub mod error;
pub mod export;
pub mod extract;
pub mod keyring;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod predictions;
pub mod revocation;
pub mod screen;
pub mod second_factor;
pub mod state;
pub mod tasks;
pub mod tls;
pub mod waf;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skygate_core::models::ModelRegistry;
use skygate_core::KeyHasher;
use skygate_store::DynStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::state::AppState;

/// How often the server certificate is checked for renewal.
const CERT_CHECK_PERIOD: Duration = Duration::from_secs(12 * 3600);

/// The key provider, the store sealed by it, and the API-key hasher derived from it: what every command
/// that touches data needs.
pub struct Backend {
    pub provider: Arc<dyn skygate_crypto::KeyProvider>,
    pub store: DynStore,
    pub objects: skygate_store::objects::Objects,
    pub hasher: Arc<dyn KeyHasher>,
}

/// The configured object store for outputs, sealing with `provider`.
pub fn open_objects(
    config: &Config,
    provider: Arc<dyn skygate_crypto::KeyProvider>,
) -> anyhow::Result<skygate_store::objects::Objects> {
    use skygate_store::objects::{Objects, S3Settings};
    let cipher = skygate_crypto::Cipher::new(provider);
    let o = &config.outputs;
    Ok(if o.store == "file" {
        Objects::local(&config.objects_dir(), cipher)?
    } else {
        Objects::s3(
            &S3Settings {
                url: o.store.clone(),
                endpoint: o.s3_endpoint.clone(),
                region: o.s3_region.clone(),
                allow_http: o.s3_allow_http,
                credentials: None,
            },
            cipher,
        )?
    })
}

/// Opens the key provider (creating the local keyring and master key on first use, with a warning that
/// the master key must be backed up), then the store with migrations applied, and finishes any
/// crypto-shred an earlier process left half done.
pub async fn open_backend(config: &Config) -> anyhow::Result<Backend> {
    config::ensure_data_dir(&config.data_dir)?;
    let opened = keyring::open_provider(config, true)?;
    if let Some(path) = &opened.created_master {
        let msg = format!(
            "generated a new master key at {}: back it up separately from the data (without it nothing \
             stored can be decrypted), or move it into ${} and delete the file",
            path.display(),
            keyring::MASTER_KEY_ENV
        );
        tracing::warn!("{msg}");
        eprintln!("warning: {msg}");
    }
    let provider = opened.provider;
    let hasher = keyring::hasher(provider.as_ref())?;
    let sealer = keyring::sealer(provider.clone())?;
    let store = skygate_store::connect(&config.database_url(), sealer)
        .await
        .context("cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    let finished = store
        .finish_pending_shreds()
        .await
        .context("cannot finish an interrupted crypto-shred")?;
    if finished > 0 {
        tracing::info!(finished, "finished interrupted crypto-shreds");
    }
    let objects = open_objects(config, provider.clone())?;
    Ok(Backend {
        provider,
        store,
        objects,
        hasher,
    })
}

fn tls_settings(config: &Config) -> tls::TlsSettings {
    tls::TlsSettings {
        cert: config.server.tls_cert.clone(),
        key: config.server.tls_key.clone(),
        extra_names: config.server.tls_names.clone(),
    }
}

/// A prepared server: store open and migrated, TLS material loaded, state built.
pub struct Server {
    config: Arc<Config>,
    state: AppState,
    auth: Arc<Authenticator>,
    store: DynStore,
    provider: Arc<dyn skygate_crypto::KeyProvider>,
    tls: Arc<rustls::ServerConfig>,
    resolver: Arc<tls::CertResolver>,
    ca_path: Option<PathBuf>,
    /// `[metrics] listen`, bound.
    metrics_listener: Option<TcpListener>,
    /// The sandbox launcher of this node's workers (`None` with `queue.workers = 0`).
    runner: Option<Arc<dyn skygate_runtime::Runner>>,
}

impl Server {
    /// Everything that can fail at start fails here, with one clear message.
    pub async fn prepare(config: Arc<Config>, bound: SocketAddr) -> anyhow::Result<Server> {
        let webhooks = webhooks::Webhooks::new(&config.webhooks)?;
        Self::prepare_with(config, bound, webhooks).await
    }

    /// As [`Server::prepare`], with webhook machinery built by the caller (tests inject a resolver and a
    /// connector).
    pub async fn prepare_with(
        config: Arc<Config>,
        bound: SocketAddr,
        webhooks: webhooks::Webhooks,
    ) -> anyhow::Result<Server> {
        config::ensure_data_dir(&config.data_dir)?;
        let settings = tls_settings(&config);
        let material = tls::prepare(&config.tls_dir(), &settings, time::OffsetDateTime::now_utc())?;
        if material.renewed {
            tracing::info!(not_after = %material.not_after, "issued a new server certificate");
        }
        let resolver = Arc::new(tls::CertResolver::new(material.certified_key.clone()));
        let tls = tls::server_config(resolver.clone())?;
        let Backend {
            provider,
            store,
            objects,
            hasher,
        } = open_backend(&config).await?;
        if let Some(v) =
            keyring::rotate_if_due(&store, provider.as_ref(), config.keyring.rotation_period).await?
        {
            tracing::info!(
                version = v,
                "rotated the key-encryption key (rotation period reached)"
            );
        }
        let models = ModelRegistry::new(config.model_specs()?);
        // One launcher serves the queue's predictions and the inference routes' real models, so
        // their sandboxes share one job directory and one pool of warm engines.
        let has_engines = models
            .iter()
            .any(|m| matches!(m.backend, skygate_core::models::Backend::Engine(_)));
        let sandboxes = match (config.queue.workers, has_engines) {
            (0, false) => None,
            _ => Some(sandbox_runner(&config)?),
        };
        let runner = match config.queue.workers {
            0 => None,
            _ => sandboxes.clone().map(|r| r as Arc<dyn skygate_runtime::Runner>),
        };
        let engines = sandboxes.filter(|_| has_engines);
        let auth = Arc::new(Authenticator::new(
            store.clone(),
            hasher,
            config.auth.key_cache_ttl,
        ));
        let public_url = config.public_url(bound);
        let signer = predictions::OutputSigner::new(&provider.derive_secret(predictions::signing::PURPOSE)?);
        // Bound here so a taken port fails the start; counted only when it is on.
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let mut counters = metrics_listener.as_ref().map(|_| metrics::Metrics::new());
        let limits = Arc::new(
            limits::RateLimits::counted(&config.limits, counters.as_ref().map(|m| m.limiter().clone()))
                .await?,
        );
        let waf = Arc::new(waf::Waf::new(&config.waf).map_err(anyhow::Error::msg)?);
        if let Some(m) = counters.as_mut() {
            m.add_sources(waf.clone(), limits.clone());
        }
        let state = AppState::new(state::StateParts {
            config: config.clone(),
            store: store.clone(),
            objects,
            auth: auth.clone(),
            models,
            signer,
            webhooks,
            limits,
            waf,
            trusted_proxies: screen::parse_proxies(&config.server.trusted_proxies)
                .map_err(anyhow::Error::msg)?,
            public_url,
            metrics: counters.map(Arc::new),
            engines,
        })?;
        Ok(Server {
            metrics_listener,
            config,
            state,
            auth,
            store,
            provider,
            tls,
            resolver,
            ca_path: material.ca_path,
            runner,
        })
    }

    /// The local CA certificate clients should trust (None with an operator certificate).
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The key provider this server seals with.
    pub fn provider(&self) -> &Arc<dyn skygate_crypto::KeyProvider> {
        &self.provider
    }

    /// Serves until `shutdown` is cancelled, then drains connections, stops background tasks, writes
    /// pending key-use times and closes the store.
    pub async fn serve(mut self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks_stop = CancellationToken::new();
        let mut tasks = tasks::Tasks::default();
        if let (Some(l), Some(m)) = (self.metrics_listener.take(), self.state.metrics().cloned()) {
            tasks.spawn("metrics", metrics::serve(l, m, tasks_stop.clone()));
        }
        {
            let auth = self.auth.clone();
            let stop = tasks_stop.clone();
            let period = self.config.auth.last_used_flush;
            tasks.spawn("last-used-flush", async move {
                tasks::every(period, stop, "last-used-flush", || {
                    let auth = auth.clone();
                    async move { auth.flush_usage().await.map(|_| ()).map_err(anyhow::Error::from) }
                })
                .await;
                Ok(())
            });
        }
        {
            let dir = self.config.tls_dir();
            let settings = tls_settings(&self.config);
            let resolver = self.resolver.clone();
            let stop = tasks_stop.clone();
            tasks.spawn("cert-renewal", async move {
                tasks::every(CERT_CHECK_PERIOD, stop, "cert-renewal", || {
                    let (dir, settings, resolver) = (dir.clone(), settings.clone(), resolver.clone());
                    async move {
                        let renewed = tls::renew_if_needed(
                            &dir,
                            &settings,
                            &resolver,
                            time::OffsetDateTime::now_utc(),
                        )?;
                        if renewed {
                            tracing::info!("renewed the server certificate");
                        }
                        Ok(())
                    }
                })
                .await;
                Ok(())
            });
        }

        self.spawn_keyring_tasks(&mut tasks, &tasks_stop);
        self.spawn_prediction_tasks(&mut tasks, &tasks_stop);

        let s = &self.config.server;
        let settings = listener::ListenerSettings {
            handshake_timeout: s.handshake_timeout,
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections,
            shutdown_grace: s.shutdown_grace,
            idle_timeout: s.idle_timeout,
            max_headers: s.max_headers,
        };
        let app = api::router(self.state.clone());
        listener::serve_tls(listener, self.tls.clone(), app, settings, shutdown).await;

        tasks_stop.cancel();
        let failed = tasks.join().await;
        if let Err(e) = self.auth.flush_usage().await {
            tracing::warn!(error = %e, "could not record final key-use times");
        }
        self.store.close().await;
        if !failed.is_empty() {
            anyhow::bail!("background tasks failed: {}", failed.join(", "));
        }
        Ok(())
    }
}

impl Server {
    /// The queue workers (unless `queue.workers = 0`), the lease reclaimer and the retention sweeper.
    /// The reclaimer and sweeper run once at start, so a restart catches up at once.
    fn spawn_prediction_tasks(&self, tasks: &mut tasks::Tasks, stop: &CancellationToken) {
        let q = &self.config.queue;
        if let Some(runner) = self.runner.clone() {
            let (state, stop) = (self.state.clone(), stop.clone());
            tasks.spawn("queue", predictions::worker::run_queue(state, runner, stop));
        }
        if let Some(url) = self.config.limits.redis_url.clone() {
            let (auth, stop) = (self.auth.clone(), stop.clone());
            tasks.spawn("revocations", revocation::listen(url, auth, stop));
        }
        tasks.spawn("waf-summary", {
            let (state, stop) = (self.state.clone(), stop.clone());
            async move {
                tasks::every(WAF_SUMMARY, stop, "waf-summary", || {
                    let state = state.clone();
                    async move { screen::audit_summary(&state).await.map(|_| ()) }
                })
                .await;
                // What the last period saw is written on the way out too.
                screen::audit_summary(&state).await.map(|_| ())
            }
        });
        if self.config.webhooks.concurrency > 0 {
            let (state, stop) = (self.state.clone(), stop.clone());
            tasks.spawn("webhook-dispatcher", webhooks::dispatcher::run(state, stop));
        }
        tasks.spawn("lease-reclaimer", {
            let (state, stop) = (self.state.clone(), stop.clone());
            let period = (q.lease / 2).max(Duration::from_millis(500));
            async move {
                if let Err(e) = predictions::worker::reclaim(&state, skygate_core::Timestamp::now()).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not reclaim predictions at start");
                }
                tasks::every(period, stop, "lease-reclaimer", || {
                    let state = state.clone();
                    async move { predictions::worker::reclaim(&state, skygate_core::Timestamp::now()).await }
                })
                .await;
                Ok(())
            }
        });
        tasks.spawn("retention-sweeper", {
            let (state, stop) = (self.state.clone(), stop.clone());
            let period = self.config.outputs.sweep_interval;
            async move {
                if let Err(e) = predictions::worker::sweep(&state, skygate_core::Timestamp::now()).await {
                    tracing::warn!(error = %format!("{e:#}"), "retention sweep at start failed");
                }
                tasks::every(period, stop, "retention-sweeper", || {
                    let state = state.clone();
                    async move {
                        predictions::worker::sweep(&state, skygate_core::Timestamp::now())
                            .await
                            .map(|_| ())
                    }
                })
                .await;
                Ok(())
            }
        });
    }

    /// Keyring upkeep: refresh (so a rotation made by another node or the CLI is used for new writes
    /// within a second), the rotation-period check, and the background rewrap.
    fn spawn_keyring_tasks(&self, tasks: &mut tasks::Tasks, stop: &CancellationToken) {
        let provider = self.provider.clone();
        tasks.spawn("keyring-refresh", {
            let (provider, stop) = (provider.clone(), stop.clone());
            async move {
                tasks::every(KEYRING_REFRESH, stop, "keyring-refresh", || {
                    let provider = provider.clone();
                    async move { provider.refresh().map_err(anyhow::Error::from) }
                })
                .await;
                Ok(())
            }
        });
        tasks.spawn("keyring-rotation", {
            let (provider, stop, store) = (provider.clone(), stop.clone(), self.store.clone());
            let period = self.config.keyring.rotation_period;
            async move {
                tasks::every(ROTATION_CHECK, stop, "keyring-rotation", || {
                    let (provider, store) = (provider.clone(), store.clone());
                    async move {
                        if let Some(v) = keyring::rotate_if_due(&store, provider.as_ref(), period).await? {
                            tracing::info!(
                                version = v,
                                "rotated the key-encryption key (rotation period reached)"
                            );
                        }
                        Ok(())
                    }
                })
                .await;
                Ok(())
            }
        });
        tasks.spawn("keyring-rewrap", {
            let (stop, store, objects) = (stop.clone(), self.store.clone(), self.state.objects().clone());
            let (interval, batch) = (
                self.config.keyring.rewrap_interval,
                self.config.keyring.rewrap_batch,
            );
            async move {
                tasks::every(interval, stop, "keyring-rewrap", || {
                    let (store, objects) = (store.clone(), objects.clone());
                    async move {
                        let t = keyring::rewrap_all(&store, &objects, batch, |_| {}).await?;
                        if t.moved > 0 || t.failed > 0 {
                            tracing::info!(
                                moved = t.moved,
                                failed = t.failed,
                                "rewrapped data keys to the current key-encryption key"
                            );
                        }
                        Ok(())
                    }
                })
                .await;
                Ok(())
            }
        });
    }
}

/// The sandbox launcher from `[sandbox]`. Its job directory is named after the data dir, so servers
/// with different data dirs on one host never sweep each other's running jobs.
pub fn sandbox_runner(config: &Config) -> anyhow::Result<Arc<skygate_runtime::SandboxRunner>> {
    let dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let digest = ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
    let instance: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let settings = config.sandbox.settings(&instance).map_err(anyhow::Error::msg)?;
    let runner = skygate_runtime::SandboxRunner::new(settings).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(runner))
}

/// How often WAF blocks are summarised into the audit chain.
const WAF_SUMMARY: Duration = Duration::from_secs(60);
/// How often the key provider is re-read for versions made elsewhere.
const KEYRING_REFRESH: Duration = Duration::from_secs(1);
/// How often the rotation period is checked.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// Prepares and serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    Server::prepare(config, bound)
        .await?
        .serve(listener, shutdown)
        .await
}

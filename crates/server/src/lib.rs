//! The skygate network edge and its wiring: configuration, the TLS 1.3 listener, the axum router with
//! its middleware, authentication, handlers, background tasks and the operator actions the CLI runs.
//!
//! Entry points: [`Server::prepare`] (open the store, migrate, load the pepper and TLS material) then
//! [`Server::serve`] on an already-bound listener; [`run`] does both. Tests bind port 0 and call these.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod listener;
pub mod middleware;
pub mod pepper;
pub mod state;
pub mod tasks;
pub mod tls;

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

/// Opens the configured store and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<DynStore> {
    config::ensure_data_dir(&config.data_dir)?;
    let store = skygate_store::connect(&config.database_url())
        .await
        .context("cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// Loads (or on first use creates) the API-key pepper.
pub fn load_hasher(config: &Config) -> anyhow::Result<Arc<dyn KeyHasher>> {
    Ok(pepper::load_or_create(&config.data_dir)?)
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
    tls: Arc<rustls::ServerConfig>,
    resolver: Arc<tls::CertResolver>,
    ca_path: Option<PathBuf>,
}

impl Server {
    /// Everything that can fail at start fails here, with one clear message.
    pub async fn prepare(config: Arc<Config>, bound: SocketAddr) -> anyhow::Result<Server> {
        config::ensure_data_dir(&config.data_dir)?;
        let settings = tls_settings(&config);
        let material = tls::prepare(&config.tls_dir(), &settings, time::OffsetDateTime::now_utc())?;
        if material.renewed {
            tracing::info!(not_after = %material.not_after, "issued a new server certificate");
        }
        let resolver = Arc::new(tls::CertResolver::new(material.certified_key.clone()));
        let tls = tls::server_config(resolver.clone())?;
        let hasher = load_hasher(&config)?;
        let store = open_store(&config).await?;
        let models = ModelRegistry::new(config.model_specs()?);
        let auth = Arc::new(Authenticator::new(
            store.clone(),
            hasher,
            config.auth.key_cache_ttl,
        ));
        let public_url = config.public_url(bound);
        let state = AppState::new(config.clone(), store.clone(), auth.clone(), models, public_url)?;
        Ok(Server {
            config,
            state,
            auth,
            store,
            tls,
            resolver,
            ca_path: material.ca_path,
        })
    }

    /// The local CA certificate clients should trust (None with an operator certificate).
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then drains connections, stops background tasks, writes
    /// pending key-use times and closes the store.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks_stop = CancellationToken::new();
        let mut tasks = tasks::Tasks::default();
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

        let s = &self.config.server;
        let settings = listener::ListenerSettings {
            handshake_timeout: s.handshake_timeout,
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections,
            shutdown_grace: s.shutdown_grace,
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

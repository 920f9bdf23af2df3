//! Test helpers for skygate: start the server in-process on `127.0.0.1:0` with a throwaway data dir, or
//! start the real binary and read its address from stdout; an HTTPS client that trusts only the test
//! server's CA; raw TLS clients with chosen protocol versions; and the skip-or-fail rule for tests whose
//! component (PostgreSQL, openssl, Python…) is missing.

pub mod api;
pub mod binary;
pub mod moto;
pub mod net;
pub mod pg;
pub mod receiver;
pub mod redis;
pub mod tlsclient;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skygate_core::{AccountId, KeyHasher, KeyId, Mode, ProjectId, Tier, Timestamp};
use skygate_server::config::Config;
use skygate_server::state::AppState;
use skygate_server::{admin, Server};
use skygate_store::DynStore;
use tokio_util::sync::CancellationToken;

/// Whether `SKYGATE_TEST_REQUIRE_ALL` forbids skipping (CI sets it).
pub fn require_all() -> bool {
    std::env::var("SKYGATE_TEST_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Call when a test cannot run here: prints why, loudly, or fails under `SKYGATE_TEST_REQUIRE_ALL`.
/// The caller returns right after.
#[allow(clippy::panic)]
pub fn skip(test: &str, reason: &str) {
    if require_all() {
        panic!("{test}: {reason} (SKYGATE_TEST_REQUIRE_ALL is set, so this may not be skipped)");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The value of the environment variable `var`, or `None` after [`skip`]ping `test` when it is unset.
pub fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(test, &format!("{var} is not set"));
            None
        }
    }
}

/// Whether an executable is on PATH.
pub fn have_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Credentials made for a test.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub account: AccountId,
    pub project: ProjectId,
    pub key_id: KeyId,
    /// The secret key.
    pub key: String,
}

/// A server running in this process over real TLS on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The plaintext metrics listener, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub config: Arc<Config>,
    pub ca_pem: Vec<u8>,
    pub store: DynStore,
    pub hasher: Arc<dyn KeyHasher>,
    /// The server's key provider.
    pub provider: Arc<dyn skygate_crypto::KeyProvider>,
    pub state: AppState,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    /// Starts with the default configuration (data dir in a temp dir, port 0) edited by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> anyhow::Result<TestServer> {
        Self::start_with_network(edit, None).await
    }

    /// As [`TestServer::start_with`], with the webhook resolver and connector injected (`None`: the
    /// system resolver and plain TCP).
    pub async fn start_with_network(
        edit: impl FnOnce(&mut Config),
        network: Option<(
            Arc<dyn skygate_webhooks::Resolver>,
            Arc<dyn skygate_webhooks::Connector>,
        )>,
    ) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut cfg = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        cfg.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.server.shutdown_grace = Duration::from_secs(5);
        // The sandbox re-executes the skygate binary (this process is a test binary).
        cfg.sandbox.helper = Some(binary::skygate_binary()?);
        edit(&mut cfg);
        cfg.validate()?;
        let config = Arc::new(cfg);
        let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
        let addr = listener.local_addr()?;
        let webhooks = match network {
            Some((resolver, connector)) => {
                skygate_server::webhooks::Webhooks::with_network(&config.webhooks, resolver, connector)?
            }
            None => skygate_server::webhooks::Webhooks::new(&config.webhooks)?,
        };
        let server = Server::prepare_with(config.clone(), addr, webhooks).await?;
        let ca_pem = match server.ca_path() {
            Some(p) => std::fs::read(p)?,
            None => Vec::new(),
        };
        let state = server.state().clone();
        let metrics_addr = server.metrics_addr();
        let store = state.store().clone();
        let hasher = skygate_server::keyring::hasher(server.provider().as_ref())?;
        let provider = server.provider().clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        Ok(TestServer {
            addr,
            metrics_addr,
            config,
            ca_pem,
            store,
            hasher,
            provider,
            state,
            shutdown,
            handle,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// An HTTPS client that trusts only this server's CA.
    pub fn client(&self) -> reqwest::Client {
        client_trusting(&self.ca_pem)
    }

    /// A fresh account, project and key.
    pub async fn new_key(&self, mode: Mode) -> anyhow::Result<TestKey> {
        let now = Timestamp::now();
        let email = format!(
            "{}@example.test",
            skygate_core::base62::random(12).map_err(|_| anyhow::anyhow!("rng"))?
        );
        let acct = admin::create_account(&self.store, &email, Tier::Free, now).await?;
        let proj = admin::create_project(&self.store, acct.id.as_str(), "test project", now).await?;
        self.key_in(&acct.id, &proj.id, mode, None).await
    }

    /// Another key in an existing project.
    pub async fn key_in(
        &self,
        account: &AccountId,
        project: &ProjectId,
        mode: Mode,
        expires_in: Option<Duration>,
    ) -> anyhow::Result<TestKey> {
        let skygate_server::credentials::Created {
            record: rec,
            secret: key,
            ..
        } = admin::create_key(
            &self.store,
            self.hasher.as_ref(),
            &skygate_server::config::AccountsConfig::default(),
            project.as_str(),
            mode,
            None,
            expires_in,
            Timestamp::now(),
        )
        .await?;
        Ok(TestKey {
            account: account.clone(),
            project: project.clone(),
            key_id: rec.id,
            key: key.expose().to_owned(),
        })
    }

    /// Revokes through the operator path (as the CLI does) and waits out the lookup cache.
    pub async fn revoke(&self, key: &KeyId) -> anyhow::Result<()> {
        admin::revoke_key(&self.store, key.as_str(), Timestamp::now()).await?;
        tokio::time::sleep(self.config.auth.key_cache_ttl).await;
        Ok(())
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await?
    }
}

/// An HTTPS client (HTTP/1.1 and HTTP/2, TLS 1.3) that trusts only `ca_pem`.
#[allow(clippy::expect_used)]
pub fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("test CA is valid PEM");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client builds")
}

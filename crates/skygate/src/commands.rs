//! What each command does: load the configuration, call one server/admin function, print the result.

use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use skygate_core::models::ModelRegistry;
use skygate_core::{ApiKeyRecord, Mode, Tier, Timestamp};
use skygate_server::config::{Config, Overrides};
use skygate_server::{admin, keyring, open_backend, Backend, Server};
use tokio_util::sync::CancellationToken;

use crate::security::warn_override;

use crate::cli::{
    AccountsCmd, Cli, Command, KeyringCmd, KeysCmd, ModelsCmd, ProjectsCmd, SandboxCmd, ServeArgs,
    WebhooksCmd,
};

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let listen = match &cli.command {
        Command::Serve(ServeArgs { listen }) => *listen,
        _ => None,
    };
    let over = Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        listen,
    };
    let config = Arc::new(Config::load(&over)?);
    match cli.command {
        Command::Serve(_) => serve(config).await,
        Command::Migrate => {
            let store = open_backend(&config).await?.store;
            store.close().await;
            eprintln!("migrations applied ({})", store.backend());
            Ok(())
        }
        Command::Accounts(cmd) => accounts(&config, cmd).await,
        Command::Projects(cmd) => projects(&config, cmd).await,
        Command::Keys(cmd) => keys(&config, cmd).await,
        Command::Keyring(cmd) => keyring_cmd(&config, cmd).await,
        Command::Models(ModelsCmd::List { json }) => models(&config, json),
        Command::Webhooks(WebhooksCmd::Verify {
            secrets,
            body,
            headers,
            tolerance,
        }) => verify_webhook(&secrets, &body, &headers, tolerance),
        Command::Webhooks(cmd) => webhooks(&config, cmd).await,
        Command::Tokens(cmd) => crate::security::tokens(&config, cmd).await,
        Command::Audit(cmd) => crate::security::audit(&config, cmd).await,
        Command::Sandbox(SandboxCmd::Check) => crate::sandbox::check(&config).await,
        Command::Selftest {
            url,
            ca,
            advisory_db,
            json,
        } => {
            let opts = crate::selftest::Options {
                url,
                ca,
                advisory_db,
                json,
            };
            crate::selftest::run(&config, opts).await
        }
    }
}

async fn webhooks(config: &Config, cmd: WebhooksCmd) -> anyhow::Result<()> {
    let store = open_backend(config).await?.store;
    let now = Timestamp::now();
    match cmd {
        WebhooksCmd::Secret {
            project,
            rotate,
            overlap,
        } => {
            let overlap = overlap.unwrap_or(config.webhooks.secret_overlap);
            let secrets = admin::webhook_secret(&store, &project, rotate, overlap, now).await?;
            for s in &secrets {
                let until = s
                    .retires_at
                    .map_or_else(String::new, |t| format!(", signs until {t}"));
                eprintln!("v{} made {}{until}", s.version, s.created_at);
            }
            if rotate {
                eprintln!("rotated: deliveries carry signatures from every secret listed above");
            }
            let newest = secrets
                .first()
                .ok_or_else(|| anyhow::anyhow!("the project has no signing secret"))?;
            println!("{}", newest.secret.expose());
        }
        WebhooksCmd::Deliveries {
            prediction,
            failed,
            limit,
            json,
        } => {
            let prediction = prediction.map(|p| p.parse()).transpose().map_err(
                |e: skygate_core::predictions::PredictionIdError| anyhow::anyhow!("--prediction: {e}"),
            )?;
            let show_attempts = prediction.is_some();
            let filter = skygate_core::webhooks::DeliveryFilter {
                prediction,
                failed_only: failed,
                limit: limit.clamp(1, 1000),
            };
            let list = store.list_deliveries(&filter).await?;
            let mut rows = Vec::with_capacity(list.len());
            for d in list {
                let attempts = if show_attempts || json {
                    store.delivery_attempts(&d.id).await?
                } else {
                    Vec::new()
                };
                rows.push((d, attempts));
            }
            print_deliveries(&rows, json, show_attempts)?;
        }
        WebhooksCmd::Retry { delivery_id } => {
            let d = admin::retry_delivery(&store, &delivery_id, now).await?;
            eprintln!(
                "delivery {} ({} of prediction {}) is due now; a running server sends it within its poll interval",
                d.id, d.event, d.prediction
            );
            println!("{}", d.id);
        }
        // Dispatched before the store is opened.
        WebhooksCmd::Verify { .. } => {}
    }
    store.close().await;
    Ok(())
}

fn print_deliveries(
    rows: &[(
        skygate_core::webhooks::Delivery,
        Vec<skygate_core::webhooks::DeliveryAttempt>,
    )],
    as_json: bool,
    show_attempts: bool,
) -> anyhow::Result<()> {
    let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
    if as_json {
        let out: Vec<_> = rows
            .iter()
            .map(|(d, attempts)| {
                json!({
                    "id": d.id, "prediction": d.prediction, "project": d.project, "event": d.event,
                    "state": d.state, "attempts": d.attempts, "next_attempt_at": ts(d.next_attempt_at),
                    "created_at": d.created_at.to_rfc3339(), "updated_at": d.updated_at.to_rfc3339(),
                    "last_status": d.last_status, "last_error": d.last_error,
                    "log": attempts.iter().map(|a| json!({
                        "number": a.number, "at": a.at.to_rfc3339(), "duration_ms": a.duration_us as f64 / 1000.0,
                        "status": a.status, "error": a.error, "next_attempt_at": ts(a.next_attempt_at),
                        "response": a.response.as_ref().map(|r| String::from_utf8_lossy(r).into_owned()),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<20} {:<9} {:>3} {:<6} {:<25} LAST ERROR",
        "DELIVERY", "EVENT", "STATE", "TRY", "STATUS", "NEXT ATTEMPT"
    );
    for (d, attempts) in rows {
        let status = d.last_status.map_or_else(|| "-".to_owned(), |s| s.to_string());
        let next = ts(d.next_attempt_at).unwrap_or_else(|| "-".into());
        let err: String = d.last_error.as_deref().unwrap_or("").chars().take(80).collect();
        println!(
            "{:<36} {:<20} {:<9} {:>3} {:<6} {:<25} {err}",
            d.id,
            d.event.as_str(),
            d.state.as_str(),
            d.attempts,
            status,
            next
        );
        if show_attempts {
            for a in attempts {
                let what = match (a.status, &a.error) {
                    (Some(s), _) => format!("answered {s}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "-".into(),
                };
                println!(
                    "    #{} at {} took {:.1} ms: {what}",
                    a.number,
                    a.at,
                    a.duration_us as f64 / 1000.0
                );
            }
        }
    }
    Ok(())
}

/// `webhooks verify`: "valid (…)" on stdout, or an error naming the reason (exit 1).
fn verify_webhook(
    secrets: &[String],
    body: &std::path::Path,
    headers: &[String],
    tolerance: std::time::Duration,
) -> anyhow::Result<()> {
    let secrets = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            skygate_webhooks::WebhookSecret::parse(s.trim())
                .map_err(|e| anyhow::anyhow!("--secret #{}: {e}", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = std::fs::read(body).with_context(|| format!("cannot read {}", body.display()))?;
    let mut map = http::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected \"name: value\""))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow::anyhow!("--header {h:?}: not a valid header name"))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow::anyhow!("--header {h:?}: not a valid header value"))?;
        map.append(name, value);
    }
    let now = Timestamp::now().as_unix_seconds();
    match skygate_webhooks::verify(&secrets, &map, &body, now, tolerance) {
        Ok(v) => {
            let schemes: Vec<&str> = v
                .schemes
                .iter()
                .map(|s| match s {
                    skygate_webhooks::Scheme::Standard => "Standard Webhooks",
                    skygate_webhooks::Scheme::Skytells => "X-Skytells-Signature",
                })
                .collect();
            println!("valid ({})", schemes.join(", "));
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("invalid webhook: {e}")),
    }
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let server = Server::prepare(config.clone(), bound).await?;
    println!(
        "skygate {} listening on https://{bound}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(ca) = server.ca_path() {
        println!("CA certificate: {}", ca.display());
        eprintln!("hint: curl --cacert {} https://{bound}/healthz", ca.display());
    }
    eprintln!("hint: create an account with: skygate accounts create --email you@example.com");
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    server.serve(listener, shutdown).await?;
    eprintln!("skygate stopped");
    Ok(())
}

/// First SIGINT/SIGTERM: graceful shutdown. A second one: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            tracing::info!("shutting down (signal again to exit at once)");
            shutdown.cancel();
        } else {
            std::process::exit(130);
        }
    }
}

async fn accounts(config: &Config, cmd: AccountsCmd) -> anyhow::Result<()> {
    let Backend {
        store,
        objects,
        hasher,
        ..
    } = open_backend(config).await?;
    let now = Timestamp::now();
    let public_url = config.public_url(config.server.listen);
    let link = |acct: skygate_core::Account, purpose| {
        let (store, hasher, public_url) = (store.clone(), hasher.clone(), public_url.clone());
        async move {
            skygate_server::console::setup::issue_link(
                &store,
                hasher.as_ref(),
                &public_url,
                &acct,
                purpose,
                now,
            )
            .await
        }
    };
    match cmd {
        AccountsCmd::Create { email, tier } => {
            let tier: Tier = tier.parse().map_err(anyhow::Error::msg)?;
            let acct = admin::create_account(&store, &email, tier, now).await?;
            eprintln!("created account {} ({}, tier {})", acct.id, acct.email, acct.tier);
            let id = acct.id.clone();
            let url = link(acct, skygate_core::session::SetupPurpose::Setup).await?;
            eprintln!("console setup link (single use, valid 24 hours):");
            println!("{}", url.as_str());
            println!("{id}");
        }
        AccountsCmd::ResetPassword { account } => {
            let acct = admin::find_account(&store, &account).await?;
            eprintln!(
                "password reset link for {} (single use, valid 24 hours; the password changes when it is used):",
                acct.id
            );
            let url = link(acct, skygate_core::session::SetupPurpose::Reset).await?;
            println!("{}", url.as_str());
        }
        AccountsCmd::SetTier { account, tier } => {
            let tier: Tier = tier.parse().map_err(anyhow::Error::msg)?;
            let acct = admin::set_tier(&store, &account, tier, Timestamp::now()).await?;
            eprintln!("account {} is now on tier {}", acct.id, acct.tier);
            println!("{}", acct.id);
        }
        AccountsCmd::Export { account, output } => {
            let acct = admin::find_account(&store, &account).await?;
            let id = acct.id.clone();
            let doc = skygate_server::export::account_export(&store, acct, now).await?;
            let mut text = serde_json::to_string_pretty(&doc)?;
            text.push('\n');
            match &output {
                Some(path) => write_private(path, text.as_bytes())?,
                None => print!("{text}"),
            }
            store
                .append_audit(
                    &skygate_core::NewAuditEntry::new(now, "operator", "account.export", id.as_str(), "")
                        .for_account(id.as_str()),
                )
                .await?;
            eprintln!(
                "exported account {id}: {} project(s), {} audit entries",
                doc.projects.len(),
                doc.audit.len()
            );
        }
        AccountsCmd::Erase { account, yes } => {
            let acct = admin::find_account(&store, &account).await?;
            if !yes {
                anyhow::bail!(
                    "erasing {} destroys its projects, keys and data for ever (backups included); \
                     re-run with --yes to confirm",
                    acct.id
                );
            }
            admin::erase_account(&store, &objects, &acct, "operator", now).await?;
            announce_revocation(config, acct.id.as_str()).await;
            // Cached credential lookups end within key_cache_ttl everywhere.
            tokio::time::sleep(config.auth.key_cache_ttl).await;
            eprintln!(
                "erased account {}: its data keys are destroyed and its keys refused",
                acct.id
            );
            println!("{}", acct.id);
        }
    }
    store.close().await;
    Ok(())
}

/// Writes `bytes` to a new file readable only by its owner (an export holds personal data).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// With Redis configured, every server drops its credential cache at once; without it (or if Redis does
/// not answer) the cache's TTL ends the credential everywhere, which the callers wait out.
async fn announce_revocation(config: &Config, what: &str) {
    if let Some(url) = &config.limits.redis_url {
        if let Err(e) = skygate_server::revocation::publish(url, what).await {
            eprintln!("warning: could not announce the revocation through Redis ({e:#}); servers drop it within auth.key_cache_ttl");
        }
    }
}

async fn projects(config: &Config, cmd: ProjectsCmd) -> anyhow::Result<()> {
    let store = open_backend(config).await?.store;
    match cmd {
        ProjectsCmd::Create { account, name } => {
            let p = admin::create_project(&store, &account, &name, Timestamp::now()).await?;
            eprintln!(
                "created project {} ({:?}) for account {}",
                p.id, p.name, p.account_id
            );
            println!("{}", p.id);
        }
    }
    store.close().await;
    Ok(())
}

async fn keys(config: &Config, cmd: KeysCmd) -> anyhow::Result<()> {
    let Backend { store, hasher, .. } = open_backend(config).await?;
    let now = Timestamp::now();
    match cmd {
        KeysCmd::Create {
            project,
            test,
            name,
            expires_in,
        } => {
            let mode = if test { Mode::Test } else { Mode::Live };
            let created = admin::create_key(
                &store,
                hasher.as_ref(),
                &config.accounts,
                &project,
                mode,
                name.as_deref(),
                expires_in,
                now,
            )
            .await?;
            warn_override(created.policy, &created.record.account);
            let (rec, key) = (created.record, created.secret);
            eprintln!("created {} key {} for project {}", rec.mode, rec.id, rec.project);
            if let Some(exp) = rec.expires_at {
                eprintln!("it expires at {exp}");
            }
            eprintln!("this is the only time the key is shown; store it now:");
            println!("{}", key.expose());
        }
        KeysCmd::List { project, json } => {
            let keys = admin::list_keys(&store, project.as_deref()).await?;
            print_keys(&keys, json)?;
        }
        KeysCmd::Revoke { key_id } => {
            let outcome = admin::revoke_key(&store, &key_id, now).await?;
            announce_revocation(config, &key_id).await;
            // Servers cache lookups for at most key_cache_ttl; once that has passed, no node accepts it.
            tokio::time::sleep(config.auth.key_cache_ttl).await;
            match outcome {
                skygate_store::RevokeOutcome::AlreadyRevoked => eprintln!("key {key_id} was already revoked"),
                _ => eprintln!("revoked key {key_id}; every node refuses it from now on"),
            }
            println!("{key_id}");
        }
    }
    store.close().await;
    Ok(())
}

async fn keyring_cmd(config: &Config, cmd: KeyringCmd) -> anyhow::Result<()> {
    let Backend {
        store,
        provider,
        objects,
        ..
    } = open_backend(config).await?;
    match cmd {
        KeyringCmd::Status { json } => {
            let st = keyring::status(&store, &objects, provider.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!(
                    "provider {}  keyring {}  current version {}",
                    st.provider, st.keyring_id, st.current_version
                );
                println!(
                    "{:<8} {:<8} {:<28} {:>10}",
                    "VERSION", "STATE", "CREATED", "VALUES"
                );
                for v in &st.versions {
                    let state = if v.current { "current" } else { v.state };
                    println!(
                        "{:<8} {:<8} {:<28} {:>10}",
                        v.version, state, v.created_at, v.references
                    );
                }
                println!("pending rewrap: {} value(s)", st.pending_rewrap);
                if st.unknown_references > 0 {
                    println!(
                        "WARNING: {} value(s) reference versions this keyring does not have",
                        st.unknown_references
                    );
                }
            }
        }
        KeyringCmd::Rotate => {
            let v = keyring::rotate(&store, provider.as_ref(), "operator", "manual").await?;
            eprintln!(
                "version {v} is now current; running servers use it within 1s. Old values move to it \
                 in the background, or now with `skygate keyring rewrap --force`"
            );
            println!("{v}");
        }
        KeyringCmd::Rewrap { force } => {
            let pending = keyring::status(&store, &objects, provider.as_ref())
                .await?
                .pending_rewrap;
            if !force {
                eprintln!(
                    "{pending} value(s) wait for rewrap; running servers move them in the background \
                     (run with --force to do it now)"
                );
            } else {
                let bar = Progress::new(pending);
                let t = keyring::rewrap_all(&store, &objects, config.keyring.rewrap_batch, |n| bar.show(n))
                    .await?;
                bar.finish();
                eprintln!(
                    "rewrapped {} value(s); {} could not be rewrapped",
                    t.moved, t.failed
                );
                if t.failed > 0 {
                    anyhow::bail!("{} value(s) could not be rewrapped (see the log)", t.failed);
                }
            }
        }
        KeyringCmd::Retire { version } => {
            keyring::retire(&store, &objects, provider.as_ref(), version, "operator").await?;
            eprintln!("retired version {version}: it can no longer unwrap anything");
            println!("{version}");
        }
    }
    store.close().await;
    Ok(())
}

/// A one-line progress bar on stderr (plain lines when stderr is not a terminal).
struct Progress {
    total: u64,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        Progress {
            total,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, done: u64) {
        let total = self.total.max(done).max(1);
        let width = 30;
        let filled = (done * width / total) as usize;
        let line = format!(
            "rewrap [{}{}] {done}/{total}",
            "#".repeat(filled),
            ".".repeat(width as usize - filled)
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn print_keys(keys: &[ApiKeyRecord], as_json: bool) -> anyhow::Result<()> {
    let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
    if as_json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "id": k.id, "project": k.project, "mode": k.mode, "name": k.name,
                    "prefix": k.prefix, "last4": k.last4, "created_at": k.created_at.to_rfc3339(),
                    "last_used_at": ts(k.last_used_at), "expires_at": ts(k.expires_at),
                    "revoked_at": ts(k.revoked_at),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<27} {:<27} {:<5} {:<16} {:<12} {:<8} LAST USED",
        "ID", "PROJECT", "MODE", "NAME", "KEY", "STATUS"
    );
    for k in keys {
        let now = Timestamp::now();
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else if k.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        let name: String = k.name.chars().take(16).collect();
        println!(
            "{:<27} {:<27} {:<5} {:<16} {:<12} {:<8} {}",
            k.id,
            k.project,
            k.mode,
            name,
            format!("{}…{}", k.prefix, k.last4),
            status,
            ts(k.last_used_at).unwrap_or_else(|| "never".into())
        );
    }
    Ok(())
}

fn models(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let registry = ModelRegistry::new(config.model_specs()?);
    if as_json {
        let rows: Vec<_> = registry.iter().map(|m| m.to_wire(false, false)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<24} {:<10} {:<6} DESCRIPTION", "SLUG", "TYPE", "TEST");
    for m in registry.iter() {
        println!(
            "{:<24} {:<10} {:<6} {}",
            m.slug,
            m.kind,
            if m.test_ok { "yes" } else { "no" },
            m.description
        );
    }
    Ok(())
}

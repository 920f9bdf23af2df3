//! `skygate selftest`: checks a deployment against every security promise and prints one line per
//! check — PASS, WARN or FAIL with the reason — or `--json` for monitoring. Exit 0 only when nothing
//! fails. The network checks talk to the running server (`--url`, default `server.listen`); the local
//! ones read the configuration, the store and the key provider of this data dir.

mod remote;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use skygate_core::Timestamp;
use skygate_server::config::Config;
use skygate_server::{keyring, open_backend, Backend};

/// Retention may run this late before it counts as lagging (the sweeper wakes every few seconds).
const SWEEPER_SLACK: Duration = Duration::from_secs(60);
/// Projects whose sealed values are opened as a sample.
const SAMPLE_PROJECTS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One judged promise.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(check: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            check,
            status,
            detail: detail.into(),
        }
    }
    fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Pass, detail)
    }
    fn warn(check: &'static str, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, detail)
    }
    fn fail(check: &'static str, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Fail, detail)
    }
}

pub struct Options {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub advisory_db: Option<PathBuf>,
    pub json: bool,
}

pub async fn run(config: &Config, opts: Options) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    match target(config, &opts) {
        Ok(t) => checks.extend(remote::checks(&t).await),
        Err(e) => checks.push(Check::fail("tls.versions", format!("{e:#}"))),
    }
    checks.extend(local(config).await);
    checks.push(advisories(opts.advisory_db.as_deref()));
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passed": failed == 0,
                "checks": checks,
            }))?
        );
    } else {
        println!("{:<26} {:<6} DETAIL", "CHECK", "RESULT");
        for c in &checks {
            println!("{:<26} {:<6} {}", c.check, c.status.as_str(), c.detail);
        }
        println!(
            "{} passed, {warned} warning(s), {failed} failed",
            checks.len() - failed - warned
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

fn target(config: &Config, opts: &Options) -> anyhow::Result<remote::Target> {
    let (host, port) = match &opts.url {
        Some(u) => remote::parse_url(u)?,
        None => {
            let a = config.server.listen;
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            (ip.to_string(), a.port())
        }
    };
    let ca = opts
        .ca
        .clone()
        .unwrap_or_else(|| config.data_dir.join("tls").join("ca.pem"));
    let ca_pem = std::fs::read(&ca)
        .map_err(|e| anyhow::anyhow!("cannot read the CA {} ({e}); pass --ca", ca.display()))?;
    Ok(remote::Target { host, port, ca_pem })
}

async fn local(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let backend = match open_backend(config).await {
        Ok(b) => b,
        Err(e) => {
            out.push(Check::fail("storage.open", format!("{e:#}")));
            return out;
        }
    };
    out.extend(keyring_checks(config, &backend).await);
    out.push(sealed_sample(&backend).await);
    out.push(sweeper(&backend).await);
    out.push(sandbox(config).await);
    out.push(webhooks(config));
    out.push(two_factor(&backend).await);
    out.push(match crate::security::verify_chain(&backend.store).await {
        Ok((n, _)) => Check::pass("audit.chain", format!("{n} entries, the hash chain is intact")),
        Err(e) => Check::fail("audit.chain", format!("{e:#}")),
    });
    backend.store.close().await;
    out
}

async fn keyring_checks(config: &Config, b: &Backend) -> Vec<Check> {
    let st = match keyring::status(&b.store, &b.objects, b.provider.as_ref()).await {
        Ok(st) => st,
        Err(e) => return vec![Check::fail("keyring.provider", format!("{e:#}"))],
    };
    let mut out = vec![Check::pass(
        "keyring.provider",
        match st.provider {
            "pkcs11" => "PKCS#11 HSM: key-encryption keys never leave the device".to_owned(),
            p => format!("{p} keyring, sealed by the master key"),
        },
    )];
    let newest = st.versions.iter().find(|v| v.current);
    let period = config.keyring.rotation_period;
    out.push(
        match newest.and_then(|v| Timestamp::parse_rfc3339(&v.created_at)) {
            None => Check::fail("keyring.rotation", "no current key version"),
            Some(created) => {
                let age = Duration::from_micros(
                    u64::try_from(Timestamp::now().as_micros() - created.as_micros()).unwrap_or(0),
                );
                let (age_s, period_s) = (human(age), human(period));
                if age > period {
                    Check::fail(
                        "keyring.rotation",
                        format!(
                            "rotation overdue: version {} is {age_s} old (rotation_period {period_s})",
                            st.current_version
                        ),
                    )
                } else {
                    Check::pass(
                        "keyring.rotation",
                        format!(
                            "version {} is {age_s} old (rotation_period {period_s})",
                            st.current_version
                        ),
                    )
                }
            }
        },
    );
    out.push(if st.unknown_references > 0 {
        Check::fail(
            "keyring.rewrap",
            format!(
                "{} value(s) reference key versions the provider lacks",
                st.unknown_references
            ),
        )
    } else if st.pending_rewrap > 0 {
        Check::warn(
            "keyring.rewrap",
            format!(
                "{} value(s) still wait for rewrap under version {}",
                st.pending_rewrap, st.current_version
            ),
        )
    } else {
        Check::pass("keyring.rewrap", "every value is under the current version")
    });
    out
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Opens a sample of sealed values through the store's own reads (every key name; for up to
/// [`SAMPLE_PROJECTS`] projects their name, the owner's email, recent predictions and webhook secrets).
async fn sealed_sample(b: &Backend) -> Check {
    let name = "storage.sealed_sample";
    let now = Timestamp::now();
    let sample = async {
        let keys = b.store.list_all_api_keys().await?;
        let mut opened = keys.len() as u64;
        let mut projects: Vec<_> = keys.iter().map(|k| k.project.clone()).collect();
        projects.dedup();
        for id in projects.iter().take(SAMPLE_PROJECTS) {
            let Some(p) = b.store.find_project(id).await? else {
                continue;
            };
            opened += 1;
            if b.store.account(&p.account_id).await?.is_some() {
                opened += 1;
            }
            let (preds, _) = b.store.list_predictions(&p.id, &Default::default(), 0, 5).await?;
            opened += preds.len() as u64;
            opened += b.store.webhook_secrets(&p.id, now).await?.len() as u64;
        }
        Ok::<_, skygate_store::StoreError>(opened)
    };
    match sample.await {
        Ok(0) => Check::pass(name, "no projects with keys yet: nothing to sample"),
        Ok(n) => Check::pass(name, format!("{n} sealed record(s) opened and authenticated")),
        Err(e) => Check::fail(name, format!("a sealed value does not open: {e}")),
    }
}

async fn sweeper(b: &Backend) -> Check {
    let name = "retention.sweeper";
    let late = Timestamp::now().saturating_sub(SWEEPER_SLACK);
    match b.store.due_purges(late, 100).await {
        Ok(due) if due.is_empty() => Check::pass(name, "no prediction data is kept past its retention"),
        Ok(due) => Check::fail(
            name,
            format!(
                "{}{} prediction(s) kept over {}s past retention (is the server running?)",
                due.len(),
                if due.len() == 100 { "+" } else { "" },
                SWEEPER_SLACK.as_secs()
            ),
        ),
        Err(e) => Check::fail(name, format!("{e}")),
    }
}

async fn sandbox(config: &Config) -> Check {
    let name = "sandbox";
    if config.sandbox.mode == "none-unsafe" {
        return Check::fail(
            name,
            "sandbox.mode = \"none-unsafe\": predictions run without isolation",
        );
    }
    match crate::sandbox::results(config).await {
        Ok(lines) => {
            let failed: Vec<_> = lines
                .iter()
                .filter(|l| !l.passed)
                .map(|l| l.probe.as_str())
                .collect();
            if failed.is_empty() {
                Check::pass(name, format!("{} escape probes all contained", lines.len()))
            } else {
                Check::fail(
                    name,
                    format!("escape probes not contained: {}", failed.join(", ")),
                )
            }
        }
        Err(e) => Check::fail(name, format!("cannot build a sandbox on this host: {e:#}")),
    }
}

fn webhooks(config: &Config) -> Check {
    let name = "webhooks.ssrf_guard";
    let w = &config.webhooks;
    if w.allow_private_networks {
        Check::fail(
            name,
            "webhooks.allow_private_networks = true: targets on private networks are allowed",
        )
    } else if w.allow_insecure_http {
        Check::warn(
            name,
            "private networks refused, but webhooks.allow_insecure_http = true allows plain http://",
        )
    } else {
        Check::pass(
            name,
            "private, loopback and link-local targets refused; https only",
        )
    }
}

async fn two_factor(b: &Backend) -> Check {
    let name = "accounts.two_factor";
    match b.store.two_factor_adoption().await {
        Ok((0, _)) => Check::pass(name, "no accounts yet"),
        Ok((n, on)) if on == n => {
            Check::pass(name, format!("all {n} account(s) have two-factor authentication"))
        }
        Ok((n, on)) => Check::warn(
            name,
            format!("{} of {n} account(s) have no two-factor authentication", n - on),
        ),
        Err(e) => Check::fail(name, format!("{e}")),
    }
}

/// The advisories ignored on purpose, with their reasons (the same file `cargo audit` reads in CI).
const AUDIT_TOML: &str = include_str!("../../../../.cargo/audit.toml");
/// The dependency versions this binary was built from.
const CARGO_LOCK: &str = include_str!("../../../../Cargo.lock");

fn advisories(db: Option<&Path>) -> Check {
    let name = "dependencies.advisories";
    let Some(db) = db else {
        return Check::warn(
            name,
            "no advisory database given (--advisory-db DIR, a RustSec advisory-db copy)",
        );
    };
    match scan(db) {
        Ok((n, found)) if found.is_empty() => Check::pass(
            name,
            format!("{n} advisories checked against the built dependencies: none apply"),
        ),
        Ok((_, found)) => Check::fail(name, format!("vulnerable dependencies: {}", found.join(", "))),
        Err(e) => Check::fail(name, format!("{e:#}")),
    }
}

fn scan(db: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    #[derive(serde::Deserialize, Default)]
    struct AuditToml {
        #[serde(default)]
        advisories: Ignored,
    }
    #[derive(serde::Deserialize, Default)]
    struct Ignored {
        #[serde(default)]
        ignore: Vec<String>,
    }
    let ignored: AuditToml = toml::from_str(AUDIT_TOML)?;
    let database = rustsec::Database::open(db)
        .map_err(|e| anyhow::anyhow!("cannot read the advisory database {}: {e}", db.display()))?;
    let lock: rustsec::Lockfile = CARGO_LOCK
        .parse()
        .map_err(|e| anyhow::anyhow!("Cargo.lock: {e}"))?;
    let found = database
        .vulnerabilities(&lock)
        .into_iter()
        .filter(|v| {
            !ignored
                .advisories
                .ignore
                .iter()
                .any(|i| i == v.advisory.id.as_str())
        })
        .map(|v| format!("{} {} ({})", v.package.name, v.package.version, v.advisory.id))
        .collect();
    Ok((database.iter().count(), found))
}

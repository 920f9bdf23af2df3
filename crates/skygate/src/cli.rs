//! Argument definitions (clap derive). `--config` and `--data-dir` are accepted by every command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "skygate",
    version,
    about = "A self-hosted, secure-by-design AI inference API"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: <data-dir>/skygate.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (database, keyring, TLS files). Default: ./skygate-data or $SKYGATE_DATA_DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS API server.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    Accounts(AccountsCmd),
    /// Manage projects.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Inspect the model registry.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Key-encryption keys: status, rotation, rewrap, retirement.
    #[command(subcommand)]
    Keyring(KeyringCmd),
    /// Webhooks: signing secrets, the delivery log, replays, signature checks.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// Personal access tokens for the management API.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// The tamper-evident audit log: verify the chain, export entries.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The prediction sandbox.
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Check this deployment against every security promise: PASS, WARN or FAIL per check with the
    /// reason. Exit 0 only when nothing fails.
    Selftest {
        /// The running server (default: `server.listen`).
        #[arg(long)]
        url: Option<String>,
        /// The CA that signs its certificate (default: the data dir's tls/ca.pem).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// A RustSec advisory-db directory to check the built dependencies against (offline).
        #[arg(long)]
        advisory_db: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create an access token. Last stdout line: the token itself, shown this once.
    Create {
        /// Owning account (email or account id).
        #[arg(long)]
        account: String,
        /// Comma-separated: inference, projects.read, projects.write, keys.read, keys.write,
        /// account.read, audit.read.
        #[arg(long)]
        scopes: String,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 90d.
        #[arg(long, value_parser = humantime_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List an account's tokens (never their secrets).
    List {
        #[arg(long)]
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; the next request with it is refused.
    Revoke {
        #[arg(long)]
        account: String,
        /// The token's id (tok_…), as shown by `tokens list`.
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check every entry of the hash chain. Exits 0 and prints the count and head hash, or exits 1
    /// naming the first entry that was edited, dropped, inserted or moved.
    Verify,
    /// Entries as JSON lines, oldest first.
    Export {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z, or a date).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Run the escape checks on this host (a hostile model in real sandboxes) and print each result;
    /// exit 1 if any check fails.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// Show a project's signing secret (made on first use). Last stdout line: the newest secret.
    Secret {
        #[arg(long)]
        project: String,
        /// Make a new secret; the current one keeps signing beside it for the overlap.
        #[arg(long)]
        rotate: bool,
        /// How long the old secret keeps signing after --rotate. Default: webhooks.secret_overlap (24h).
        #[arg(long, value_parser = humantime_duration, requires = "rotate")]
        overlap: Option<std::time::Duration>,
    },
    /// The delivery log, newest first: state, attempts, last answer or error, next attempt.
    Deliveries {
        /// Only this prediction's deliveries (with every attempt listed).
        #[arg(long)]
        prediction: Option<String>,
        /// Only deliveries that stopped without success.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again now (its webhook-id stays the same). Last stdout line: the delivery id.
    Retry { delivery_id: String },
    /// Check a received webhook's signatures (Standard Webhooks and X-Skytells-Signature). Exits 0 and
    /// prints "valid …", or exits 1 and prints the reason.
    Verify {
        /// A candidate secret (whsec_…); repeat for several.
        #[arg(long = "secret", required = true, value_name = "SECRET")]
        secrets: Vec<String>,
        /// The raw request body.
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// A received header as "name: value"; repeat for each.
        #[arg(long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// How far the webhook-timestamp may be from now.
        #[arg(long, value_parser = humantime_duration, default_value = "5m")]
        tolerance: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyringCmd {
    /// Versions, their creation dates, and how many stored values each wraps.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make a new key-encryption key version; new writes use it at once. Last stdout line: the version.
    Rotate,
    /// Move wrapped data keys from older versions to the current one (servers also do this in the
    /// background).
    Rewrap {
        /// Do it now, with a progress bar, instead of only reporting what is pending.
        #[arg(long)]
        force: bool,
    },
    /// Destroy an old version. Refused while any stored value still references it.
    Retire { version: u32 },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTPS). Default: 127.0.0.1:8443 or $SKYGATE_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    /// Create an account. Prints its console setup link (single use, valid 24 hours) on stdout, then
    /// the account id as the last stdout line.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "free", value_parser = ["free", "pro", "business", "enterprise"])]
        tier: String,
    },
    /// Erase an account: its projects, keys and data are deleted and its data keys destroyed
    /// (crypto-shredding), so backups cannot be read either. Audited.
    Erase {
        /// Email or account id.
        account: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Write one JSON document of everything held about an account (profile, projects, key and token
    /// metadata without secrets, usage, predictions within retention, audit entries), decrypted.
    /// Audited. An erased or unknown account is "not found" (exit 1).
    Export {
        /// Email or account id.
        account: String,
        /// Write to this file (created 0600) instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Print a new single-use, 24-hour link that sets the account's console password (last stdout
    /// line). Earlier unused links stop working; the password changes, and every console session ends,
    /// only once the link is used. Audited.
    ResetPassword {
        /// Email or account id.
        account: String,
    },
    /// Change an account's tier.
    SetTier {
        /// Email or account id.
        account: String,
        #[arg(value_parser = ["free", "pro", "business", "enterprise"])]
        tier: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCmd {
    /// Create a project. Last stdout line: the project id.
    Create {
        /// Owning account (email or account id).
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an API key. Last stdout line: the key itself, shown this once.
    Create {
        #[arg(long)]
        project: String,
        /// A test-mode key (sk_test_…): test data only, test-enabled models only.
        #[arg(long)]
        test: bool,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long, value_parser = humantime_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; when this returns, every node refuses it.
    Revoke {
        /// The key's id (key_…), as shown by `keys list`.
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// List the models this deployment serves.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30d, 12h, 90m)"))
}

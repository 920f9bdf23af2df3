//! The account-security commands: access tokens (`tokens create|list|revoke`) and the audit log
//! (`audit verify|export`), plus the warning the CLI prints when it overrides the two-factor policy.

use std::io::Write;

use anyhow::Context;
use serde_json::json;
use skygate_core::audit::ChainVerifier;
use skygate_core::{AccountId, AuditEntry, Timestamp, TokenRecord};
use skygate_server::config::Config;
use skygate_server::credentials::PolicyOutcome;
use skygate_server::{admin, open_backend, Backend};

use crate::cli::{AuditCmd, TokensCmd};

/// Entries read per page by `audit verify` and `audit export`.
const AUDIT_PAGE: i64 = 1_000;

/// The stderr warning for a live credential made for an account without two-factor authentication
/// (the audit entry already records it).
pub fn warn_override(outcome: PolicyOutcome, account: &AccountId) {
    if outcome == PolicyOutcome::OperatorOverride {
        eprintln!(
            "warning: account {account} has no two-factor authentication; \
             accounts.require_2fa_for_live_credentials would refuse this outside the operator CLI \
             (the override is in the audit log)"
        );
    }
}

pub async fn tokens(config: &Config, cmd: TokensCmd) -> anyhow::Result<()> {
    let Backend { store, hasher, .. } = open_backend(config).await?;
    let now = Timestamp::now();
    match cmd {
        TokensCmd::Create {
            account,
            scopes,
            name,
            expires_in,
        } => {
            let created = admin::create_token(
                &store,
                hasher.as_ref(),
                &config.accounts,
                &account,
                name.as_deref(),
                &scopes,
                expires_in,
                now,
            )
            .await?;
            warn_override(created.policy, &created.record.account);
            let rec = &created.record;
            eprintln!(
                "created access token {} for account {} with scopes {}",
                rec.id,
                rec.account,
                rec.scopes.to_list()
            );
            if let Some(exp) = rec.expires_at {
                eprintln!("it expires at {exp}");
            }
            eprintln!("this is the only time the token is shown; store it now:");
            println!("{}", created.secret.expose());
        }
        TokensCmd::List { account, json } => {
            let list = admin::list_tokens(&store, &account).await?;
            print_tokens(&list, json, now)?;
        }
        TokensCmd::Revoke { account, token_id } => {
            let outcome = admin::revoke_token(&store, &account, &token_id, now).await?;
            // Token lookups are never cached, so the next request is refused on every node.
            match outcome {
                skygate_store::RevokeOutcome::AlreadyRevoked => {
                    eprintln!("token {token_id} was already revoked")
                }
                _ => eprintln!("revoked token {token_id}"),
            }
            println!("{token_id}");
        }
    }
    store.close().await;
    Ok(())
}

fn print_tokens(list: &[TokenRecord], as_json: bool, now: Timestamp) -> anyhow::Result<()> {
    let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
    if as_json {
        let out: Vec<_> = list
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "account": t.account, "name": t.name, "scopes": t.scopes.to_list(),
                    "last4": t.last4, "created_at": t.created_at.to_rfc3339(),
                    "last_used_at": ts(t.last_used_at), "expires_at": ts(t.expires_at),
                    "revoked_at": ts(t.revoked_at), "active": t.is_active(now),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<26} {:<10} {:<40} {:<25} STATE",
        "TOKEN", "ENDS", "SCOPES", "LAST USED"
    );
    for t in list {
        let state = match (t.revoked_at, t.is_active(now)) {
            (Some(_), _) => "revoked",
            (None, false) => "expired",
            (None, true) => "active",
        };
        println!(
            "{:<26} …{:<9} {:<40} {:<25} {state}",
            t.id,
            t.last4,
            t.scopes.to_list(),
            ts(t.last_used_at).unwrap_or_else(|| "never".into()),
        );
    }
    Ok(())
}

pub async fn audit(config: &Config, cmd: AuditCmd) -> anyhow::Result<()> {
    let store = open_backend(config).await?.store;
    let result = match cmd {
        AuditCmd::Verify => verify(&store).await,
        AuditCmd::Export { since } => export(&store, since.as_deref()).await,
    };
    store.close().await;
    result
}

/// Walks the whole chain page by page; the first break is the error (exit 1).
async fn verify(store: &skygate_store::DynStore) -> anyhow::Result<()> {
    let (count, head) = verify_chain(store).await?;
    eprintln!("the audit log is intact: {count} entries");
    println!("{count} entries, head {}", hex(&head));
    Ok(())
}

/// The number of entries and the head hash of an intact chain, or the first break.
pub async fn verify_chain(store: &skygate_store::DynStore) -> anyhow::Result<(u64, [u8; 32])> {
    let mut v = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            v.push(e)
                .map_err(|b| anyhow::anyhow!("the audit log is not intact: {b}"))?;
        }
    }
    Ok((v.count(), v.head()))
}

fn parse_since(s: &str) -> anyhow::Result<Timestamp> {
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z"))
        .with_context(|| format!("--since {s:?}: expected an RFC 3339 time (2026-01-31T12:00:00Z) or a date"))
}

/// One JSON object per line, oldest first. Hashes are hex, so an exported log can be re-verified.
async fn export(store: &skygate_store::DynStore, since: Option<&str>) -> anyhow::Result<()> {
    let since = since.map(parse_since).transpose()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let page = store.audit_page(after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page.iter().filter(|e| since.is_none_or(|s| e.entry.at >= s)) {
            serde_json::to_writer(&mut out, &entry_json(e))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn entry_json(e: &AuditEntry) -> serde_json::Value {
    let n = &e.entry;
    json!({
        "seq": e.seq, "at": n.at.to_rfc3339(), "actor": n.actor, "action": n.action, "target": n.target,
        "detail": n.detail, "account": n.account, "ip": n.ip, "user_agent": n.user_agent,
        "prev_hash": hex(&e.prev_hash), "hash": hex(&e.hash),
    })
}

//! The audit log through the real binary: operator actions are chained, `audit export` writes them as
//! JSON lines without secrets, and `audit verify` finds an entry edited, deleted, moved or inserted
//! directly in the database (exit 1, naming the first bad entry).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use skygate_testkit::binary::cli;

mod common;
use common::{bin, ok};

/// A data dir whose chain has 8 entries: the account's console setup link, 2 key creations, a token creation, a tier change, a key
/// revocation, a token revocation and a webhook-secret rotation. Returns the secrets made on the way.
fn fresh(data: &Path) -> Vec<String> {
    let acct = ok(data, &["accounts", "create", "--email", "audit@example.com"]);
    let proj = ok(data, &["projects", "create", "--account", &acct, "--name", "p"]);
    let live = ok(data, &["keys", "create", "--project", &proj]);
    let test = ok(data, &["keys", "create", "--project", &proj, "--test"]);
    let token = ok(
        data,
        &[
            "tokens",
            "create",
            "--account",
            &acct,
            "--scopes",
            "inference,audit.read",
            "--expires-in",
            "90d",
        ],
    );
    ok(data, &["accounts", "set-tier", &acct, "pro"]);
    let keys: serde_json::Value = serde_json::from_str(&stdout(data, &["keys", "list", "--json"])).unwrap();
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    ok(data, &["keys", "revoke", &key_id]);
    let tokens: serde_json::Value =
        serde_json::from_str(&stdout(data, &["tokens", "list", "--account", &acct, "--json"])).unwrap();
    let token_id = tokens[0]["id"].as_str().unwrap().to_owned();
    ok(data, &["tokens", "revoke", "--account", &acct, &token_id]);
    let secret = ok(data, &["webhooks", "secret", "--project", &proj, "--rotate"]);
    vec![live, test, token, secret]
}

fn stdout(data: &Path, args: &[&str]) -> String {
    let out = cli(&bin(), data, args).unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn verify(data: &Path) -> (bool, String, String) {
    let out = cli(&bin(), data, &["audit", "verify"]).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn db(data: &Path) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", data.join("skygate.db").display());
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

async fn exec(data: &Path, sqls: &[&str]) {
    let pool = db(data).await;
    for sql in sqls {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// `audit verify` fails with exit 1 and exactly one error line containing `want`.
fn fails_naming(data: &Path, want: &str) {
    let (ok, _, err) = verify(data);
    assert!(!ok, "verify passed a tampered log");
    let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(want), "wanted {want:?} in {err}");
}

#[test]
fn operator_actions_are_chained_and_exported_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let secrets = fresh(&data);
    let (ok_, out, _) = verify(&data);
    assert!(ok_);
    assert!(out.starts_with("8 entries, head "), "{out}");

    let out = cli(&bin(), &data, &["audit", "export"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<_> = lines.iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "password.setup_link",
            "keys.create",
            "keys.create",
            "tokens.create",
            "account.tier",
            "keys.revoke",
            "tokens.revoke",
            "webhooks.secret.rotate"
        ]
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as i64 + 1);
        assert_eq!(l["actor"], "operator");
        assert!(l["account"].as_str().unwrap().starts_with("acct_"), "{l}");
        assert_eq!(l["hash"].as_str().unwrap().len(), 64);
    }
    // The live key was made without two-factor authentication: the override is on record.
    assert!(
        lines[1]["detail"].as_str().unwrap().contains("policy override"),
        "{}",
        lines[1]
    );
    assert!(
        !lines[2]["detail"].as_str().unwrap().contains("policy override"),
        "test keys are not live"
    );
    assert!(lines[3]["detail"]
        .as_str()
        .unwrap()
        .contains("scopes inference,audit.read"));
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret reached the audit log");
    }

    // --since keeps the entries at or after the time; a bad time is one clear error.
    let all = cli(&bin(), &data, &["audit", "export", "--since", "2000-01-01"]).unwrap();
    assert_eq!(String::from_utf8(all.stdout).unwrap().lines().count(), 8);
    let none = cli(
        &bin(),
        &data,
        &["audit", "export", "--since", "2999-01-01T00:00:00Z"],
    )
    .unwrap();
    assert!(none.status.success() && none.stdout.is_empty());
    let bad = cli(&bin(), &data, &["audit", "export", "--since", "yesterday"]).unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since \"yesterday\""));
}

#[test]
fn live_key_without_two_factor_warns_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let acct = ok(&data, &["accounts", "create", "--email", "w@example.com"]);
    let proj = ok(&data, &["projects", "create", "--account", &acct, "--name", "p"]);
    let live = cli(&bin(), &data, &["keys", "create", "--project", &proj]).unwrap();
    assert!(live.status.success());
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(
        err.contains("warning: account") && err.contains("no two-factor authentication"),
        "{err}"
    );
    let test = cli(&bin(), &data, &["keys", "create", "--project", &proj, "--test"]).unwrap();
    assert!(!String::from_utf8_lossy(&test.stderr).contains("warning"));
    // With the policy off there is nothing to override.
    std::fs::write(
        data.join("skygate.toml"),
        "[accounts]\nrequire_2fa_for_live_credentials = false\n",
    )
    .unwrap();
    let off = cli(&bin(), &data, &["keys", "create", "--project", &proj]).unwrap();
    assert!(!String::from_utf8_lossy(&off.stderr).contains("warning"));
    let bad = cli(
        &bin(),
        &data,
        &[
            "tokens",
            "create",
            "--account",
            &acct,
            "--scopes",
            "inference,root",
        ],
    )
    .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope \"root\""));
}

#[tokio::test]
async fn an_edited_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fresh(&data);
    exec(
        &data,
        &["UPDATE audit_log SET detail = 'nothing happened' WHERE seq = 3"],
    )
    .await;
    fails_naming(&data, "audit entry 3: its content does not match its hash");
}

#[tokio::test]
async fn an_edited_client_address_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fresh(&data);
    exec(&data, &["UPDATE audit_log SET ip = '203.0.113.9' WHERE seq = 5"]).await;
    fails_naming(&data, "audit entry 5: its content does not match its hash");
}

#[tokio::test]
async fn a_deleted_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fresh(&data);
    exec(&data, &["DELETE FROM audit_log WHERE seq = 4"]).await;
    fails_naming(&data, "audit entry 5: expected sequence number 4");
    // Renumbering the rest to close the gap does not help.
    exec(&data, &["UPDATE audit_log SET seq = seq - 1 WHERE seq > 4"]).await;
    fails_naming(&data, "audit entry 4: its previous-hash does not match entry 3");
}

#[tokio::test]
async fn reordered_entries_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fresh(&data);
    exec(
        &data,
        &[
            "UPDATE audit_log SET seq = -2 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = -2",
        ],
    )
    .await;
    fails_naming(&data, "audit entry 2: its previous-hash does not match entry 1");
}

/// Even an insertion whose own hash is computed correctly breaks the link of the entry after it.
#[tokio::test]
async fn an_inserted_entry_is_found() {
    use skygate_core::audit::chain_hash;
    use skygate_core::{NewAuditEntry, Timestamp};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fresh(&data);
    let pool = db(&data).await;
    let prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 3")
        .fetch_one(&pool)
        .await
        .unwrap();
    let prev: [u8; 32] = prev.try_into().unwrap();
    let forged = NewAuditEntry::new(Timestamp::from_micros(1), "operator", "keys.revoke", "key_x", "");
    let hash = chain_hash(&prev, 4, &forged);
    // Make room at 4 (two steps, so the primary key never collides), then insert.
    sqlx::query("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, detail, account_id, ip, user_agent, \
         prev_hash, hash) VALUES (4, 1, 'operator', 'keys.revoke', 'key_x', '', '', '', '', $1, $2)",
    )
    .bind(&prev[..])
    .bind(&hash[..])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    fails_naming(&data, "audit entry 5: its previous-hash does not match entry 4");
}

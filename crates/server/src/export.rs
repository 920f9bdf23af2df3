//! An account's data export (GDPR access / portability): one JSON document of everything skygate holds
//! about the account, decrypted — profile, projects, API key and access token metadata (never a secret),
//! usage records, the predictions still held (inputs and outputs only within retention) and the audit
//! entries about it. `skygate accounts export` writes it for the operator; `GET /v1/account/export`
//! serves it to the account itself.

use skygate_core::predictions::{ListFilter, PredictionRecord, StoredOutput, UsageRecord};
use skygate_core::{Account, Timestamp, TokenRecord};
use skygate_proto::manage::{
    AccountExport, ExportedPrediction, ExportedProject, ExportedToken, ExportedUsage,
};
use skygate_store::{DynStore, StoreError};

use crate::api::manage::{account_info, audit_event, key_info, ts};

/// The export's `format` field: bump it when the document's shape changes incompatibly.
pub const FORMAT: &str = "skygate.account-export/1";

/// Rows read per store call while collecting.
const PAGE: u64 = 200;

/// Everything held about `acct`, as of `now`.
pub async fn account_export(
    store: &DynStore,
    acct: Account,
    now: Timestamp,
) -> Result<AccountExport, StoreError> {
    let two_factor = store.two_factor_enabled(&acct.id).await?;
    let recovery_codes_left = store.recovery_codes_left(&acct.id).await?;
    let mut projects = Vec::new();
    for p in store.list_projects(&acct.id).await? {
        let keys = store.list_api_keys(&p.id).await?;
        let mut predictions = Vec::new();
        let filter = ListFilter::default();
        let mut offset = 0;
        loop {
            let (page, total) = store.list_predictions(&p.id, &filter, offset, PAGE).await?;
            let n = page.len() as u64;
            predictions.extend(page.iter().map(prediction));
            offset += n;
            if n == 0 || offset >= total {
                break;
            }
        }
        projects.push(ExportedProject {
            project: skygate_proto::manage::ProjectInfo {
                id: p.id.to_string(),
                name: p.name,
                created_at: ts(p.created_at),
            },
            keys: keys.iter().map(key_info).collect(),
            predictions,
        });
    }
    let access_tokens = store
        .list_access_tokens(&acct.id)
        .await?
        .iter()
        .map(token)
        .collect();
    let usage = store
        .usage(&acct.id, Timestamp::from_micros(0), u32::MAX)
        .await?
        .iter()
        .map(usage)
        .collect();
    let mut audit = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = store.account_audit(&acct.id, before, PAGE as i64).await?;
        let Some(last) = page.last() else { break };
        before = last.seq;
        let full = page.len() as u64 == PAGE;
        audit.extend(page.into_iter().map(audit_event));
        if !full {
            break;
        }
    }
    audit.reverse();
    Ok(AccountExport {
        format: FORMAT.to_owned(),
        exported_at: ts(now),
        account: account_info(acct, two_factor),
        recovery_codes_left,
        projects,
        access_tokens,
        usage,
        audit,
    })
}

fn prediction(r: &PredictionRecord) -> ExportedPrediction {
    let output = r.output.as_ref().map(|o| match o {
        StoredOutput::Text { text } => serde_json::json!({ "text": text }),
        StoredOutput::Files { files } => serde_json::json!({
            "files": files
                .iter()
                .map(|f| serde_json::json!({ "name": f.name, "content_type": f.content_type, "size": f.size }))
                .collect::<Vec<_>>()
        }),
    });
    ExportedPrediction {
        id: r.id.as_str().to_owned(),
        model: r.model.clone(),
        mode: r.mode.as_str().to_owned(),
        status: r.status.as_str().to_owned(),
        created_at: ts(r.created_at),
        started_at: r.started_at.map(ts),
        completed_at: r.completed_at.map(ts),
        purge_at: r.purge_at.map(ts),
        data_removed: r.data_removed,
        input: r.input.clone(),
        output,
        error: r.error.clone(),
        webhook_url: r.webhook.as_ref().map(|w| w.url.clone()),
    }
}

fn token(t: &TokenRecord) -> ExportedToken {
    ExportedToken {
        id: t.id.to_string(),
        name: t.name.clone(),
        scopes: t.scopes.iter().map(|s| s.to_string()).collect(),
        last4: t.last4.clone(),
        created_at: ts(t.created_at),
        last_used_at: t.last_used_at.map(ts),
        expires_at: t.expires_at.map(ts),
        revoked_at: t.revoked_at.map(ts),
    }
}

fn usage(u: &UsageRecord) -> ExportedUsage {
    ExportedUsage {
        prediction: u.prediction.as_str().to_owned(),
        project: u.project.to_string(),
        model: u.model.clone(),
        mode: u.mode.as_str().to_owned(),
        status: u.status.as_str().to_owned(),
        predict_time: u.predict_time,
        units: u.units,
        unit: u.unit.clone(),
        at: ts(u.at),
    }
}

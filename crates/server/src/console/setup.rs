//! Setup links: `https://…/console/setup?token=…`, single use, 24 hours, the token (256 random bits)
//! stored as its keyed hash. Made by the operator CLI (`skygate accounts create` and
//! `accounts reset-password`), used on the console's setup page.

use skygate_core::session::{SessionSecret, SetupPurpose, SETUP_LINK_LIFETIME};
use skygate_core::{Account, KeyHasher, NewAuditEntry, Timestamp};
use skygate_store::DynStore;
use zeroize::Zeroizing;

use crate::admin::AdminError;

/// Makes a setup link for `account` (earlier unused ones stop working), audited as
/// `password.setup_link` or `password.reset_link`. The link is the only copy of its token.
pub async fn issue_link(
    store: &DynStore,
    hasher: &dyn KeyHasher,
    public_url: &str,
    account: &Account,
    purpose: SetupPurpose,
    now: Timestamp,
) -> Result<Zeroizing<String>, AdminError> {
    let token = SessionSecret::generate().map_err(|_| AdminError::Random)?;
    let expires = now.saturating_add(SETUP_LINK_LIFETIME);
    store
        .issue_setup_link(
            &account.id,
            &hasher.hash(token.expose().as_bytes()),
            purpose,
            now,
            expires,
        )
        .await?;
    let action = match purpose {
        SetupPurpose::Setup => "password.setup_link",
        SetupPurpose::Reset => "password.reset_link",
    };
    let entry = NewAuditEntry::new(
        now,
        "operator",
        action,
        account.id.as_str(),
        format!("expires {}", expires.to_rfc3339()),
    )
    .for_account(account.id.as_str());
    store.append_audit(&entry).await?;
    Ok(Zeroizing::new(format!(
        "{}/console/setup?token={}",
        public_url.trim_end_matches('/'),
        token.expose()
    )))
}

//! The key provider as the server and CLI use it: opening the configured provider (refusing to start
//! without one: there is no plaintext fallback), the secrets derived from it (API-key pepper), and the
//! keyring operations `keyring status|rotate|rewrap|retire` with their safety rules:
//!
//! * **rotate** makes a new KEK version; new writes use it at once here and, through the 1 s refresh
//!   task, on every other node;
//! * **rewrap** moves wrapped data keys of older versions to the newest, in batches, never touching the
//!   ciphertext; it is idempotent and resumable (it only ever selects values not yet current);
//! * **retire** refuses the newest version, a version younger than the propagation window, and any
//!   version that a stored value still references; only then is the version destroyed.
//!
//! Every rotate and retire is appended to the audit chain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skygate_core::{KeyHasher, NewAuditEntry, Pepper, Timestamp};
use skygate_crypto::{KekState, KeyProvider};
use skygate_store::objects::Objects;
use skygate_store::{DynStore, Sealer, SEALED_COLUMNS};

use crate::config::Config;

/// The purpose string of the API-key pepper.
const PEPPER_PURPOSE: &str = "api-key-pepper-v1";
/// How long a new version needs to reach every node (the refresh period, with margin). Retiring the
/// version before it could still be in use for writes by a node that has not refreshed yet.
pub const PROPAGATION: Duration = Duration::from_secs(2);
/// The environment variable holding the local keyring's master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "SKYGATE_MASTER_KEY";

/// An opened provider and what opening it did.
pub struct Opened {
    pub provider: Arc<dyn KeyProvider>,
    /// A master key file was generated: the operator must back it up separately.
    pub created_master: Option<std::path::PathBuf>,
    /// A new keyring was created.
    pub created_keyring: bool,
}

/// Opens the configured key provider. `create` allows making a new local keyring and master key (the
/// server and first-use commands); without it a missing keyring is an error.
pub fn open_provider(config: &Config, create: bool) -> anyhow::Result<Opened> {
    let k = &config.keyring;
    match k.provider.as_str() {
        "pkcs11" => {
            let pin = std::env::var(&k.pkcs11_pin_env).map_err(|_| {
                anyhow::anyhow!(
                    "keyring.provider is pkcs11 but the PIN variable {} is not set",
                    k.pkcs11_pin_env
                )
            })?;
            let module = k
                .pkcs11_module
                .clone()
                .context("keyring.pkcs11_module is not set")?;
            let provider =
                skygate_crypto::pkcs11::Pkcs11Provider::open(skygate_crypto::pkcs11::Pkcs11Config {
                    module,
                    slot: k.pkcs11_slot,
                    token_label: k.pkcs11_token_label.clone(),
                    pin: skygate_crypto::pkcs11::Pkcs11Pin::new(pin),
                })?;
            Ok(Opened {
                provider: Arc::new(provider),
                created_master: None,
                created_keyring: false,
            })
        }
        _ => {
            use skygate_crypto::local::{LocalKeyring, MasterKey};
            let mut created_master = None;
            let master = match std::env::var(MASTER_KEY_ENV) {
                Ok(b64) => MasterKey::from_base64(&b64).context(format!("{MASTER_KEY_ENV} is not valid"))?,
                Err(_) => {
                    let path = config.data_dir.join("master.key");
                    // An existing keyring without its master key must never get a new one: nothing
                    // sealed could be opened, and a new file would hide the real problem.
                    let keyring_exists = config.keyring_dir().join("keyring.id").exists();
                    if keyring_exists && !path.exists() {
                        anyhow::bail!(
                            "the keyring {} exists but its master key is missing: set {MASTER_KEY_ENV} or \
                             restore {}",
                            config.keyring_dir().display(),
                            path.display()
                        );
                    }
                    if !create && !path.exists() {
                        anyhow::bail!(
                            "no master key: set {MASTER_KEY_ENV} or provide {} (start the server once to \
                             create one)",
                            path.display()
                        );
                    }
                    let (master, created) = MasterKey::load_or_create_file(&path)?;
                    if created {
                        created_master = Some(path);
                    }
                    master
                }
            };
            let dir = config.keyring_dir();
            let (ring, created_keyring) = if create {
                LocalKeyring::open_or_create(&dir, master)?
            } else {
                (LocalKeyring::open(&dir, master)?, false)
            };
            Ok(Opened {
                provider: Arc::new(ring),
                created_master,
                created_keyring,
            })
        }
    }
}

/// The API-key hasher: HMAC-SHA256 keyed by a pepper the provider derives (inside the HSM for
/// `pkcs11`), so neither the database nor the data directory alone can test key guesses.
pub fn hasher(provider: &dyn KeyProvider) -> anyhow::Result<Arc<dyn KeyHasher>> {
    let secret = provider
        .derive_secret(PEPPER_PURPOSE)
        .context("cannot derive the API-key pepper from the key provider")?;
    Ok(Arc::new(Pepper::from_bytes(*secret.expose())))
}

/// The store's sealer over `provider`.
pub fn sealer(provider: Arc<dyn KeyProvider>) -> anyhow::Result<Sealer> {
    Sealer::new(skygate_crypto::Cipher::new(provider)).context("cannot set up field encryption")
}

/// One KEK version as `keyring status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionStatus {
    pub version: u32,
    /// RFC 3339.
    pub created_at: String,
    pub state: &'static str,
    pub current: bool,
    /// Stored values whose data key this version wraps.
    pub references: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyringStatus {
    pub provider: &'static str,
    pub keyring_id: String,
    pub current_version: u32,
    pub versions: Vec<VersionStatus>,
    /// Values not yet under the current version (what rewrap still has to move).
    pub pending_rewrap: u64,
    /// Values referencing a version the provider does not know (should be 0: such values are lost).
    pub unknown_references: u64,
}

/// How many stored values (database values and objects) each KEK version wraps.
pub async fn references(store: &DynStore, objects: &Objects) -> anyhow::Result<BTreeMap<u32, u64>> {
    let mut total = BTreeMap::new();
    for c in SEALED_COLUMNS {
        for (v, n) in store.sealed_versions(c).await? {
            *total.entry(v).or_insert(0) += n;
        }
    }
    for (v, n) in objects.versions().await? {
        *total.entry(v).or_insert(0) += n;
    }
    Ok(total)
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_micros(unix.saturating_mul(1_000_000)).to_string()
}

pub async fn status(
    store: &DynStore,
    objects: &Objects,
    provider: &dyn KeyProvider,
) -> anyhow::Result<KeyringStatus> {
    provider.refresh()?;
    let current = provider.current_version();
    let mut refs = references(store, objects).await?;
    let versions: Vec<VersionStatus> = provider
        .versions()?
        .into_iter()
        .map(|v| VersionStatus {
            version: v.version,
            created_at: rfc3339(v.created_at),
            state: match v.state {
                KekState::Active => "active",
                KekState::Retired => "retired",
            },
            current: v.version == current,
            references: refs.remove(&v.version).unwrap_or(0),
        })
        .collect();
    let pending_rewrap = versions.iter().filter(|v| !v.current).map(|v| v.references).sum();
    Ok(KeyringStatus {
        provider: provider.kind(),
        keyring_id: format!("{:08x}", provider.keyring_id()),
        current_version: current,
        versions,
        pending_rewrap,
        unknown_references: refs.values().sum(),
    })
}

fn audit(actor: &str, action: &str, target: String, detail: String) -> NewAuditEntry {
    NewAuditEntry::new(Timestamp::now(), actor, action, target, detail)
}

/// Makes a new KEK version and records it in the audit chain.
pub async fn rotate(
    store: &DynStore,
    provider: &dyn KeyProvider,
    actor: &str,
    why: &str,
) -> anyhow::Result<u32> {
    let v = provider
        .rotate()
        .context("cannot rotate the key-encryption key")?;
    store
        .append_audit(&audit(actor, "keyring.rotate", format!("v{v}"), why.into()))
        .await?;
    Ok(v)
}

/// Rotates when the newest version is older than `period`. Returns the new version if it rotated.
pub async fn rotate_if_due(
    store: &DynStore,
    provider: &dyn KeyProvider,
    period: Duration,
) -> anyhow::Result<Option<u32>> {
    provider.refresh()?;
    let current = provider.current_version();
    let newest = provider.versions()?.into_iter().find(|v| v.version == current);
    let age = newest.map_or(i64::MAX, |v| {
        Timestamp::now().as_micros() / 1_000_000 - v.created_at
    });
    if age >= 0 && (age as u64) < period.as_secs() {
        return Ok(None);
    }
    let v = rotate(
        store,
        provider,
        "system",
        &format!(
            "automatic: newest version older than {}",
            humantime::format_duration(period)
        ),
    )
    .await?;
    Ok(Some(v))
}

/// Totals of one rewrap pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewrapTotals {
    pub moved: u64,
    pub failed: u64,
}

/// Moves every value under an older version to the current one, `batch` rows per round trip, calling
/// `progress(moved_so_far)` after each batch, then every object. Safe to run on several nodes at once and
/// to kill at any point: each swap is one conditional `UPDATE` (or an object copy renamed over the
/// original), and a value stays readable under its old version until it is swapped.
pub async fn rewrap_all(
    store: &DynStore,
    objects: &Objects,
    batch: u32,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<RewrapTotals> {
    let mut totals = RewrapTotals::default();
    for c in SEALED_COLUMNS {
        let mut after = String::new();
        loop {
            let b = store.rewrap_batch(c, &after, i64::from(batch)).await?;
            totals.moved += b.moved;
            totals.failed += b.failed;
            progress(totals.moved);
            match b.last_key {
                Some(k) => after = k,
                None => break,
            }
        }
    }
    let (moved, failed) = objects.rewrap_all().await?;
    totals.moved += moved;
    totals.failed += failed;
    progress(totals.moved);
    Ok(totals)
}

/// Destroys KEK `version` after checking that nothing needs it.
pub async fn retire(
    store: &DynStore,
    objects: &Objects,
    provider: &dyn KeyProvider,
    version: u32,
    actor: &str,
) -> anyhow::Result<()> {
    provider.refresh()?;
    let versions = provider.versions()?;
    let Some(info) = versions.iter().find(|v| v.version == version) else {
        anyhow::bail!("key-encryption key version {version} does not exist");
    };
    if info.state == KekState::Retired {
        anyhow::bail!("version {version} is already retired");
    }
    let current = provider.current_version();
    if version == current {
        anyhow::bail!("version {version} is the current version; run `skygate keyring rotate` first");
    }
    // A node that has not refreshed since the newest version appeared may still write under `version`.
    let newest_age = versions
        .iter()
        .find(|v| v.version == current)
        .map_or(0, |v| Timestamp::now().as_micros() / 1_000_000 - v.created_at);
    if newest_age < PROPAGATION.as_secs() as i64 {
        anyhow::bail!(
            "version {current} was created {newest_age}s ago; wait {}s so every node writes with it, then retry",
            PROPAGATION.as_secs()
        );
    }
    let refs = references(store, objects)
        .await?
        .get(&version)
        .copied()
        .unwrap_or(0);
    if refs > 0 {
        anyhow::bail!(
            "version {version} still wraps {refs} stored value(s); run `skygate keyring rewrap --force` first"
        );
    }
    provider
        .retire(version)
        .context("the key provider refused to retire the version")?;
    store
        .append_audit(&audit(
            actor,
            "keyring.retire",
            format!("v{version}"),
            String::new(),
        ))
        .await?;
    Ok(())
}

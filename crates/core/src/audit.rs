//! The tamper-evident audit chain. Each entry's hash is SHA-256 over the previous entry's hash and the
//! entry's own fields (length-prefixed, so no two field splits hash alike). Editing, dropping or
//! reordering any entry breaks every later link; [`verify_chain`] finds the first break.
//!
//! Entries name ids and actions, never secrets or personal data (no emails): the log must stay readable
//! after an account is erased, and its bytes are hashed as stored.

use ring::digest::{Context, SHA256};

use crate::Timestamp;

/// The `prev_hash` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// An entry as the caller writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub at: Timestamp,
    /// Who acted: `operator` (the CLI on the host), an account id, or `system` (background tasks).
    pub actor: String,
    /// What happened, dotted: `account.erase`, `keyring.rotate`, `keyring.retire`, …
    pub action: String,
    /// What it happened to: an id, a version.
    pub target: String,
    /// Non-secret context.
    pub detail: String,
}

/// An entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub entry: NewAuditEntry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The hash of entry `seq` following `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: i64, e: &NewAuditEntry) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"skygate-audit-v1");
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&e.at.as_micros().to_be_bytes());
    for field in [&e.actor, &e.action, &e.target, &e.detail] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Where a chain stops being intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("audit entry {seq}: expected sequence number {expected} (an entry was dropped or reordered)")]
    Gap { seq: i64, expected: i64 },
    #[error("audit entry {seq}: its previous-hash does not match entry {prev} (an entry was dropped, reordered or edited)")]
    Link { seq: i64, prev: i64 },
    #[error("audit entry {seq}: its content does not match its hash (the entry was edited)")]
    Content { seq: i64 },
}

/// Checks a whole chain from the first entry (seq 1), oldest first. Returns the number of entries.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<u64, ChainBreak> {
    let mut prev = GENESIS;
    let mut n = 0;
    for (expected, e) in (1..).zip(entries) {
        if e.seq != expected {
            return Err(ChainBreak::Gap { seq: e.seq, expected });
        }
        if e.prev_hash != prev {
            return Err(ChainBreak::Link {
                seq: e.seq,
                prev: e.seq - 1,
            });
        }
        if chain_hash(&prev, e.seq, &e.entry) != e.hash {
            return Err(ChainBreak::Content { seq: e.seq });
        }
        prev = e.hash;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let entry = NewAuditEntry {
                    at: Timestamp::from_micros(seq * 1000),
                    actor: "operator".into(),
                    action: "keyring.rotate".into(),
                    target: format!("v{seq}"),
                    detail: String::new(),
                };
                let hash = chain_hash(&prev, seq, &entry);
                let e = AuditEntry {
                    seq,
                    entry,
                    prev_hash: prev,
                    hash,
                };
                prev = hash;
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)).unwrap(), 5);
        assert_eq!(verify_chain(&[]).unwrap(), 0);
    }

    #[test]
    fn edits_drops_and_reorders_are_found() {
        let mut edited = chain(5);
        edited[2].entry.target = "v9".into();
        assert_eq!(verify_chain(&edited), Err(ChainBreak::Content { seq: 3 }));

        let mut dropped = chain(5);
        dropped.remove(2);
        assert_eq!(
            verify_chain(&dropped),
            Err(ChainBreak::Gap { seq: 4, expected: 3 })
        );

        // Dropping an entry and renumbering the rest still breaks the link.
        let mut renumbered = chain(5);
        renumbered.remove(2);
        for (i, e) in renumbered.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        assert_eq!(
            verify_chain(&renumbered),
            Err(ChainBreak::Link { seq: 3, prev: 2 })
        );

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert!(verify_chain(&swapped).is_err());

        // Field boundaries are part of the hash.
        let a = NewAuditEntry {
            at: Timestamp::from_micros(1),
            actor: "ab".into(),
            action: "c".into(),
            target: String::new(),
            detail: String::new(),
        };
        let b = NewAuditEntry {
            actor: "a".into(),
            action: "bc".into(),
            ..a.clone()
        };
        assert_ne!(chain_hash(&GENESIS, 1, &a), chain_hash(&GENESIS, 1, &b));
    }
}

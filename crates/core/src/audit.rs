//! The tamper-evident audit chain. Each entry's hash is SHA-256 over the previous entry's hash and the
//! entry's own fields (length-prefixed, so no two field splits hash alike). Editing, dropping or
//! reordering any entry breaks every later link; [`verify_chain`] finds the first break.
//!
//! Entries name ids and actions, never secrets or personal data (no emails): the log must stay readable
//! after an account is erased, and its bytes are hashed as stored. Entries caused by a request also carry
//! the client's address and user agent (cut to [`MAX_USER_AGENT`] characters); operator and system
//! entries leave them empty.

use ring::digest::{Context, SHA256};

use crate::Timestamp;

/// The `prev_hash` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Longest user agent kept (in characters).
pub const MAX_USER_AGENT: usize = 200;

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
    /// The account the event concerns (what `GET /v1/audit` filters on); empty for system-wide events.
    pub account: String,
    /// The client's address, for entries caused by a request; empty otherwise.
    pub ip: String,
    /// The client's user agent (at most [`MAX_USER_AGENT`] characters), for entries caused by a request.
    pub user_agent: String,
}

impl NewAuditEntry {
    /// An entry with no client (the operator CLI, background tasks).
    pub fn new(
        at: Timestamp,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        NewAuditEntry {
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
            account: String::new(),
            ip: String::new(),
            user_agent: String::new(),
        }
    }

    /// The same entry, concerning `account`.
    pub fn for_account(mut self, account: impl Into<String>) -> Self {
        self.account = account.into();
        self
    }

    /// The same entry, caused by a request from `ip` with `user_agent` (control characters dropped,
    /// cut to [`MAX_USER_AGENT`] characters).
    pub fn from_client(mut self, ip: impl Into<String>, user_agent: &str) -> Self {
        self.ip = ip.into();
        self.user_agent = user_agent
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT)
            .collect();
        self
    }
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
    ctx.update(b"skygate-audit-v2");
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&e.at.as_micros().to_be_bytes());
    for field in [
        &e.actor,
        &e.action,
        &e.target,
        &e.detail,
        &e.account,
        &e.ip,
        &e.user_agent,
    ] {
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

/// Checks a chain one entry at a time, oldest first from seq 1, so a log of any length is verified
/// page by page in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: [u8; 32],
    count: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            prev: GENESIS,
            count: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry against everything before it.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        let expected = i64::try_from(self.count).unwrap_or(i64::MAX).saturating_add(1);
        if e.seq != expected {
            return Err(ChainBreak::Gap { seq: e.seq, expected });
        }
        if e.prev_hash != self.prev {
            return Err(ChainBreak::Link {
                seq: e.seq,
                prev: e.seq - 1,
            });
        }
        if chain_hash(&self.prev, e.seq, &e.entry) != e.hash {
            return Err(ChainBreak::Content { seq: e.seq });
        }
        self.prev = e.hash;
        self.count += 1;
        Ok(())
    }

    /// Entries checked so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash of the last entry checked (the chain head): an operator who records it elsewhere can
    /// later tell that nothing was cut off the end, which a chain alone cannot show.
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }
}

/// Checks a whole chain from the first entry (seq 1), oldest first. Returns the number of entries.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<u64, ChainBreak> {
    let mut v = ChainVerifier::default();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.count())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let entry = NewAuditEntry::new(
                    Timestamp::from_micros(seq * 1000),
                    "operator",
                    "keyring.rotate",
                    format!("v{seq}"),
                    "",
                )
                .from_client("127.0.0.1", "agent\n/1.0");
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
        let a = NewAuditEntry::new(Timestamp::from_micros(1), "ab", "c", "", "");
        let b = NewAuditEntry {
            actor: "a".into(),
            action: "bc".into(),
            ..a.clone()
        };
        assert_ne!(chain_hash(&GENESIS, 1, &a), chain_hash(&GENESIS, 1, &b));

        // The client's address and user agent are covered too.
        let mut ua = chain(3);
        ua[1].entry.user_agent = "curl/8".into();
        assert_eq!(verify_chain(&ua), Err(ChainBreak::Content { seq: 2 }));
        let mut acct = chain(3);
        acct[0].entry.account = "acct_x".into();
        assert_eq!(verify_chain(&acct), Err(ChainBreak::Content { seq: 1 }));
        let mut ip = chain(3);
        ip[2].entry.ip = "10.0.0.1".into();
        assert_eq!(verify_chain(&ip), Err(ChainBreak::Content { seq: 3 }));
        assert_eq!(chain(1)[0].entry.user_agent, "agent/1.0");
    }
}

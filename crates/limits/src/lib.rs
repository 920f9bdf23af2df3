//! Rate limiters for skygate: one [`Limiter`] interface, two backends.
//!
//! A request is checked against several limits at once (the key's request limit, the account+model
//! create limit, the daily quota…) and is allowed only if every one allows it; then all of them are
//! consumed, otherwise none is (all or nothing, also under concurrency and across nodes). The
//! arithmetic is the GCRA of [`skygate_core::ratelimit`]:
//!
//! - [`InProcessLimiter`] keeps each key's TAT in a sharded map in this process (the default);
//! - [`RedisLimiter`] keeps them in Redis and decides in one Lua script on Redis time, so several
//!   nodes sharing one Redis enforce one limit together.
//!
//! A backend that cannot decide returns [`LimitError::Unavailable`] within a bounded time; the caller
//! chooses what that means with a [`FailurePolicy`] and [`check_with_policy`].

mod in_process;
mod redis_backend;

use std::time::Duration;

use smallvec::SmallVec;

pub use in_process::{system_clock, Clock, InProcessLimiter};
pub use redis_backend::{RedisConfig, RedisLimiter};
pub use skygate_core::ratelimit::{Quota, Verdict};

/// How many limits a [`Decision`] holds without allocating.
pub const INLINE_LIMITS: usize = 4;

/// The name [`Decision::tripped`] reports when a [`FailurePolicy::Closed`] fallback denied the request.
pub const UNAVAILABLE: &str = "limiter_unavailable";

/// One limit to check: whose it is, how much it allows, and what to call it in a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<'a> {
    /// The bucket, e.g. `"k:key_…"` (per key) or `"c:acct_…:model"` (per account and model). Keys
    /// must be distinct within one check.
    pub key: &'a str,
    /// How many requests per window.
    pub quota: Quota,
    /// What the limit is called in responses: `"requests"`, `"predictions"`, `"daily_quota"`.
    pub name: &'static str,
    /// What one unit of a check's cost counts on this limit: 1 for request limits, a request's
    /// estimated tokens for a token limit checked in the same all-or-nothing decision.
    pub weight: u32,
}

impl<'a> Limit<'a> {
    /// A limit named `name` of `quota` on the bucket `key`, counting 1 per unit of cost.
    pub fn new(name: &'static str, key: &'a str, quota: Quota) -> Self {
        Limit {
            key,
            quota,
            name,
            weight: 1,
        }
    }

    /// The same limit counting `weight` per unit of cost.
    pub fn weighted(self, weight: u32) -> Self {
        Limit { weight, ..self }
    }

    /// What a check of `cost` takes from this limit.
    pub fn cost(&self, cost: u32) -> u32 {
        cost.saturating_mul(self.weight)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed (and every limit was consumed).
    pub allowed: bool,
    /// One verdict per limit, in the order the limits were given; empty for a fallback decision.
    pub verdicts: SmallVec<[Verdict; INLINE_LIMITS]>,
    /// The limits' names, parallel to `verdicts`.
    pub names: SmallVec<[&'static str; INLINE_LIMITS]>,
    /// `Some` when the backend was unavailable and this decision is the failure policy's, not a count.
    pub fallback: Option<FailurePolicy>,
}

/// Which limit denied a request, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// The name of the first limit that denied ([`UNAVAILABLE`] for a fail-closed fallback).
    pub name: &'static str,
    /// How long until the request could pass every limit (the longest wait among those that denied).
    pub retry_after: Duration,
}

impl Tripped {
    /// `retry_after` in whole seconds, rounded up, at least 1: the `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let up = secs + u64::from(self.retry_after.subsec_nanos() > 0);
        up.max(1)
    }
}

impl Decision {
    /// Builds a decision from the limits and their verdicts (same order).
    pub fn from_verdicts(limits: &[Limit<'_>], verdicts: SmallVec<[Verdict; INLINE_LIMITS]>) -> Self {
        Decision {
            allowed: verdicts.iter().all(|v| v.allowed),
            names: limits.iter().map(|l| l.name).collect(),
            verdicts,
            fallback: None,
        }
    }

    /// The decision a [`FailurePolicy`] makes when the backend is unavailable.
    pub fn fallback(policy: FailurePolicy) -> Self {
        Decision {
            allowed: policy == FailurePolicy::Open,
            verdicts: SmallVec::new(),
            names: SmallVec::new(),
            fallback: Some(policy),
        }
    }

    /// When denied: the first limit that denied and how long to wait. `None` when allowed.
    pub fn tripped(&self) -> Option<Tripped> {
        if self.allowed {
            return None;
        }
        let mut denied = self.verdicts.iter().zip(&self.names).filter(|(v, _)| !v.allowed);
        let Some((first, name)) = denied.next() else {
            return Some(Tripped {
                name: UNAVAILABLE,
                retry_after: Duration::from_secs(1),
            });
        };
        let longest = denied.fold(first.retry_after_us, |m, (v, _)| m.max(v.retry_after_us));
        Some(Tripped {
            name,
            retry_after: micros(longest.max(1)),
        })
    }

    /// The verdict the rate-limit headers show (`remaining`, `reset`): the first limit's.
    pub fn headline(&self) -> Option<&Verdict> {
        self.verdicts.first()
    }
}

/// A non-negative microsecond count as a [`Duration`].
fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Why a backend could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The backend did not answer in time or is unreachable; apply the [`FailurePolicy`].
    #[error("rate-limit backend unavailable: {0}")]
    Unavailable(String),
    /// The backend is misconfigured (bad URL, refused credentials).
    #[error("rate-limit backend misconfigured: {0}")]
    Config(String),
}

/// What to do when the backend cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let the request through (reads: availability over strictness).
    Open,
    /// Refuse the request (creates: nothing runs unmetered).
    Closed,
}

/// Checks several limits at once, all or nothing.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync {
    /// Decides a request of `cost` against every limit in `limits`. Allowed only if each allows it,
    /// and then all are consumed; if any denies, none is. Never waits longer than the backend's
    /// bounded timeout: [`LimitError::Unavailable`] instead.
    async fn check(&self, limits: &[Limit<'_>], cost: u32) -> Result<Decision, LimitError>;

    /// Corrects one limit after the fact by `delta` units ([`skygate_core::ratelimit::adjust`]): a
    /// request admitted on an estimate is charged what it used beyond it, or given back what it did
    /// not use. Never refused; bounded by the same timeout as [`Limiter::check`].
    async fn adjust(&self, limit: &Limit<'_>, delta: i64) -> Result<(), LimitError>;

    /// How many checks failed with an error so far (a metric).
    fn failures(&self) -> u64 {
        0
    }
}

/// [`Limiter::check`], with an error mapped by `policy`: allowed ([`FailurePolicy::Open`]) or denied
/// ([`FailurePolicy::Closed`]), either way marked by [`Decision::fallback`]. The backend counts and
/// logs its failures (at most one line per second).
pub async fn check_with_policy<L: Limiter + ?Sized>(
    limiter: &L,
    limits: &[Limit<'_>],
    cost: u32,
    policy: FailurePolicy,
) -> Decision {
    match limiter.check(limits, cost).await {
        Ok(decision) => decision,
        Err(_) => Decision::fallback(policy),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn verdict(allowed: bool, retry_after_us: i64) -> Verdict {
        Verdict {
            allowed,
            new_tat: 0,
            remaining: 3,
            reset_us: 10,
            retry_after_us,
        }
    }

    fn limits() -> [Limit<'static>; 3] {
        let q = Quota {
            limit: 1,
            window: Duration::from_secs(1),
        };
        [
            Limit::new("requests", "k:a", q),
            Limit::new("predictions", "c:a:m", q),
            Limit::new("daily_quota", "d:a", q),
        ]
    }

    #[test]
    fn tripped_names_the_first_denied_and_the_longest_wait() {
        let vs = [
            verdict(true, 0),
            verdict(false, 1_500_000),
            verdict(false, 4_000_001),
        ];
        let d = Decision::from_verdicts(&limits(), vs.into_iter().collect());
        assert!(!d.allowed);
        let t = d.tripped().unwrap();
        assert_eq!(t.name, "predictions");
        assert_eq!(t.retry_after, Duration::from_micros(4_000_001));
        assert_eq!(t.retry_after_secs(), 5);
        assert_eq!(d.headline().unwrap().remaining, 3);
    }

    #[test]
    fn allowed_has_no_tripped_limit() {
        let vs = [verdict(true, 0), verdict(true, 0), verdict(true, 0)];
        let d = Decision::from_verdicts(&limits(), vs.into_iter().collect());
        assert!(d.allowed && d.tripped().is_none());
    }

    #[test]
    fn fallbacks_are_marked() {
        let open = Decision::fallback(FailurePolicy::Open);
        assert!(open.allowed && open.tripped().is_none() && open.headline().is_none());
        let closed = Decision::fallback(FailurePolicy::Closed);
        assert!(!closed.allowed);
        assert_eq!(closed.fallback, Some(FailurePolicy::Closed));
        let t = closed.tripped().unwrap();
        assert_eq!((t.name, t.retry_after_secs()), (UNAVAILABLE, 1));
    }

    #[test]
    fn retry_after_is_at_least_a_second() {
        let t = Tripped {
            name: "requests",
            retry_after: Duration::from_micros(1),
        };
        assert_eq!(t.retry_after_secs(), 1);
        let t = Tripped {
            name: "requests",
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(t.retry_after_secs(), 2);
    }
}

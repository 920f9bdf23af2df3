//! The Redis backend (`[limits] redis_url`): every node decides in one Lua script on Redis, so the
//! nodes sharing a Redis enforce one limit together.
//!
//! The script (`src/gcra.lua`) mirrors `skygate_core::ratelimit` exactly, reads the time
//! from Redis (`TIME`, one clock for all nodes), checks every limit and stores all new TATs or none (a
//! script runs atomically), each with an expiry at its TAT so replenished buckets vanish. It is loaded
//! once at connect and called by hash (EVALSHA, reloaded if Redis lost it). One multiplexed,
//! self-reconnecting connection serves all checks. Each check is bounded by a timeout: past it, or on
//! any error, [`LimitError::Unavailable`] — never a hang — counted in [`RedisLimiter::failures`] and
//! logged at most once a second.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use skygate_core::ratelimit::Verdict;
use smallvec::SmallVec;

use crate::{Decision, Limit, LimitError, Limiter, INLINE_LIMITS};

/// Values returned per limit by the script.
const FIELDS: usize = 5;

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every bucket key (default `skygate:rl:`).
    pub prefix: String,
    /// The most one check may take before it is [`LimitError::Unavailable`] (default 50 ms).
    pub timeout: Duration,
}

impl RedisConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "skygate:rl:".to_owned(),
            timeout: Duration::from_millis(50),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// GCRA state in Redis, shared by every node using the same Redis and prefix.
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    adjust: Script,
    prefix: String,
    timeout: Duration,
    failures: AtomicU64,
    /// When the last failure was logged, in microseconds since `started`.
    last_log_us: AtomicI64,
    started: Instant,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects and loads the script. Fails when the URL is invalid or Redis does not answer within a
    /// second, so a bad `redis_url` stops the start instead of failing every request.
    pub async fn connect(config: RedisConfig) -> Result<Self, LimitError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|_| LimitError::Config("redis_url is not a valid Redis URL".to_owned()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // A frozen connection times out and is replaced rather than failing checks for ever.
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(5);
        let mut conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| LimitError::Config(e.to_string()))?;
        let script = Script::new(include_str!("gcra.lua"));
        let adjust = Script::new(include_str!("adjust.lua"));
        for s in [&script, &adjust] {
            match tokio::time::timeout(Duration::from_secs(1), s.load_async(&mut conn)).await {
                Ok(Ok(_sha)) => {}
                Ok(Err(e)) => return Err(LimitError::Unavailable(e.to_string())),
                Err(_) => return Err(LimitError::Unavailable("redis did not answer within 1 s".into())),
            }
        }
        Ok(RedisLimiter {
            conn,
            script,
            adjust,
            prefix: config.prefix,
            timeout: config.timeout,
            failures: AtomicU64::new(0),
            last_log_us: AtomicI64::new(i64::MIN),
            started: Instant::now(),
        })
    }

    /// How many checks have failed (timed out or errored) since connecting.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn run(&self, limits: &[Limit<'_>], cost: u32) -> Result<Vec<i64>, String> {
        let mut call = self.script.prepare_invoke();
        call.arg(cost);
        for l in limits {
            let interval = l.quota.interval_us();
            let tolerance = interval.saturating_mul(i64::from(l.quota.limit.max(1)));
            call.key(format!("{}{}", self.prefix, l.key))
                .arg(interval)
                .arg(tolerance)
                .arg(l.weight);
        }
        self.invoke(&call).await
    }

    async fn run_adjust(&self, limit: &Limit<'_>, delta: i64) -> Result<i64, String> {
        let mut call = self.adjust.prepare_invoke();
        call.key(format!("{}{}", self.prefix, limit.key))
            .arg(limit.quota.interval_us())
            .arg(delta);
        self.invoke(&call).await
    }

    /// Runs a prepared script call within the timeout; the reason as text when it fails.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    fn unavailable(&self, reason: String) -> LimitError {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX);
        let last = self.last_log_us.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000_000
            && self
                .last_log_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(failures, reason = %reason, "rate limiter: redis unavailable");
        }
        LimitError::Unavailable(reason)
    }
}

/// Reads the script's reply: `[allowed, (allowed, new_tat, remaining, reset_us, retry_after_us)…]`.
fn parse(limits: &[Limit<'_>], reply: &[i64]) -> Option<Decision> {
    let (&all, rest) = reply.split_first()?;
    if rest.len() != limits.len() * FIELDS {
        return None;
    }
    let verdicts: SmallVec<[Verdict; INLINE_LIMITS]> = rest
        .chunks_exact(FIELDS)
        .map(|f| Verdict {
            allowed: f[0] == 1,
            new_tat: f[1],
            remaining: u32::try_from(f[2]).unwrap_or(u32::MAX),
            reset_us: f[3],
            retry_after_us: f[4],
        })
        .collect();
    let decision = Decision::from_verdicts(limits, verdicts);
    (decision.allowed == (all == 1)).then_some(decision)
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, limits: &[Limit<'_>], cost: u32) -> Result<Decision, LimitError> {
        if limits.is_empty() {
            return Ok(Decision::from_verdicts(limits, SmallVec::new()));
        }
        let reply = self
            .run(limits, cost)
            .await
            .map_err(|reason| self.unavailable(reason))?;
        parse(limits, &reply).ok_or_else(|| self.unavailable("unexpected script reply".to_owned()))
    }

    async fn adjust(&self, limit: &Limit<'_>, delta: i64) -> Result<(), LimitError> {
        if delta == 0 {
            return Ok(());
        }
        self.run_adjust(limit, delta)
            .await
            .map(drop)
            .map_err(|reason| self.unavailable(reason))
    }

    fn failures(&self) -> u64 {
        RedisLimiter::failures(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::Quota;

    #[test]
    fn replies_parse_and_must_agree() {
        let q = Quota {
            limit: 2,
            window: Duration::from_secs(1),
        };
        let limits = [Limit::new("requests", "a", q), Limit::new("predictions", "b", q)];
        let d = parse(&limits, &[0, 1, 10, 1, 5, 0, 0, 7, 0, 9, 3]).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.tripped().unwrap().name, "predictions");
        assert_eq!(d.verdicts[1].retry_after_us, 3);
        assert!(parse(&limits, &[1, 1, 10, 1, 5, 0]).is_none(), "short reply");
        assert!(
            parse(&limits, &[1, 1, 10, 1, 5, 0, 0, 7, 0, 9, 3]).is_none(),
            "inconsistent"
        );
    }

    #[test]
    fn the_url_is_not_in_debug_output() {
        let c = RedisConfig::new("redis://:hunter2@127.0.0.1:6379");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

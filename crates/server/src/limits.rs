//! Rate limits by account tier, on every authenticated request: a per-key request limit, and on
//! prediction creates, in the same all-or-nothing check, a per-account-and-model create limit and an
//! optional daily quota. The limiter is in-process, or shared by every node through Redis
//! (`[limits] redis_url`); when Redis does not answer in time the failure policy decides (closed for
//! creates, open for reads, by default).
//!
//! The decision travels to the response through a [`RateSlot`] that [`rate_headers`] puts in the request
//! and reads back, so every authenticated answer (429s included) carries the `x-skytells-ratelimit-*`
//! headers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use skygate_core::ratelimit::Quota;
use skygate_core::Tier;
use skygate_limits::{check_with_policy, Decision, FailurePolicy, InProcessLimiter, Limit, Limiter};
use skygate_proto::ErrorId;

use crate::auth::ApiKeyAuth;
use crate::config::{FailureMode, LimitsConfig, TierLimits};
use crate::error::ApiError;
use crate::metrics::LimiterMetrics;
use crate::middleware::number_value;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

static LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-skytells-ratelimit-limit-requests");
static REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-skytells-ratelimit-remaining-requests");
static RESET_REQUESTS: HeaderName = HeaderName::from_static("x-skytells-ratelimit-reset-requests");
static WINDOW: HeaderName = HeaderName::from_static("x-skytells-ratelimit-window");

/// The limiter and the tiers' quotas.
pub struct RateLimits {
    /// `limits.enabled`: off, nothing is checked and no rate headers are sent.
    enabled: bool,
    limiter: Arc<dyn Limiter>,
    /// The same limiter when it is the in-process one: the fast path checks it without awaiting.
    local: Option<Arc<InProcessLimiter>>,
    tiers: [TierLimits; 4],
    on_failure_create: FailurePolicy,
    on_failure_read: FailurePolicy,
    auth_failures_per_minute: u32,
    /// With the in-process limiter: when (its clock, µs) a failed authentication was last counted from
    /// any address. A failure budget is full again one window after its last failure, so while none was
    /// counted for a window no address can be throttled and the look at the budget is skipped.
    last_auth_failure: AtomicI64,
    exports_per_hour: u32,
    /// Decisions counted when `[metrics]` is on.
    metrics: Option<LimiterMetrics>,
}

/// What the headers of one answer say about the per-key request limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the limit is full again.
    pub reset_secs: u64,
}

/// `0` to `60` as ready header values: the reset of a per-minute limit is always one of them.
static SECONDS: [&str; 61] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18",
    "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32", "33", "34", "35",
    "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48", "49", "50", "51", "52",
    "53", "54", "55", "56", "57", "58", "59", "60",
];

impl RateInfo {
    /// The varying headers and their values: limit, remaining, reset (the window is always `60`).
    pub fn values(&self) -> [(&'static HeaderName, HeaderValue); 3] {
        let reset = match SECONDS.get(usize::try_from(self.reset_secs).unwrap_or(usize::MAX)) {
            Some(s) => HeaderValue::from_static(s),
            None => number_value(self.reset_secs),
        };
        [
            (&LIMIT_REQUESTS, number_value(u64::from(self.limit))),
            (&REMAINING_REQUESTS, number_value(u64::from(self.remaining))),
            (&RESET_REQUESTS, reset),
        ]
    }

    /// Sets the four headers, in place where `h` already has them (a prebuilt map: no growth).
    pub fn apply(&self, h: &mut HeaderMap) {
        use crate::middleware::set_header;
        for (name, value) in self.values() {
            set_header(h, name, value);
        }
        set_header(h, &WINDOW, HeaderValue::from_static("60"));
    }
}

/// What a run's token limit granted: the `x-ratelimit-*-tokens` headers' numbers, and what to correct
/// once the run has counted its tokens.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub info: RateInfo,
    /// The tokens taken from the limit up front (the estimate; 0 when the limiter was not reached).
    taken: u32,
    key: String,
    quota: Quota,
}

/// `limits.tiers.*.tokens_per_minute` when a tier leaves it unset (never: the config fills it in).
const DEFAULT_TOKENS_PER_MINUTE: u32 = 40_000;

/// Whole seconds, rounded up, of a non-negative microsecond count.
fn reset_secs(us: i64) -> u64 {
    u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1_000_000)
}

/// A check's outcome: the headers' numbers (none when limits are off) and the verdict.
pub type Checked = (Option<RateInfo>, Result<(), ApiError>);

/// Where the extractor leaves the decision for [`rate_headers`].
#[derive(Clone, Default)]
pub struct RateSlot(Arc<OnceLock<RateInfo>>);

impl RateSlot {
    pub fn set(&self, info: RateInfo) {
        let _ = self.0.set(info);
    }

    /// What the check left here, if it ran.
    pub fn get(&self) -> Option<RateInfo> {
        self.0.get().copied()
    }

    /// Leaves the headers' numbers in the request's slot (if it has one) and passes the verdict on.
    pub fn record(extensions: &axum::http::Extensions, checked: Checked) -> Result<(), ApiError> {
        Self::fill(extensions.get::<RateSlot>(), checked)
    }

    /// [`RateSlot::record`] with the slot already in hand.
    pub fn fill(slot: Option<&RateSlot>, (info, verdict): Checked) -> Result<(), ApiError> {
        if let (Some(slot), Some(info)) = (slot, info) {
            slot.set(info);
        }
        verdict
    }
}

/// Middleware: gives the request a [`RateSlot`] and copies what was put in it into the response.
pub async fn rate_headers(mut req: Request, next: Next) -> Response {
    let slot = RateSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut res = next.run(req).await;
    if let Some(info) = slot.0.get() {
        info.apply(res.headers_mut());
    }
    res
}

fn policy(mode: FailureMode) -> FailurePolicy {
    match mode {
        FailureMode::Closed => FailurePolicy::Closed,
        FailureMode::Open => FailurePolicy::Open,
    }
}

impl RateLimits {
    /// The in-process limiter, or Redis when `redis_url` is set (reached at start, or start fails).
    pub async fn new(config: &LimitsConfig) -> anyhow::Result<Self> {
        Self::counted(config, None).await
    }

    /// As [`RateLimits::new`], counting every decision into `metrics`.
    pub async fn counted(config: &LimitsConfig, metrics: Option<LimiterMetrics>) -> anyhow::Result<Self> {
        let mut limits = Self::connect(config).await?;
        limits.metrics = metrics;
        Ok(limits)
    }

    async fn connect(config: &LimitsConfig) -> anyhow::Result<Self> {
        match &config.redis_url {
            None => Ok(Self::in_process(config)),
            Some(url) => {
                let mut rc = skygate_limits::RedisConfig::new(url.clone());
                rc.timeout = config.redis_timeout;
                let redis = skygate_limits::RedisLimiter::connect(rc)
                    .await
                    .map_err(|e| anyhow::anyhow!("limits.redis_url: {e}"))?;
                Ok(Self::build(config, Arc::new(redis), None))
            }
        }
    }

    /// In-process limits (one node).
    pub fn in_process(config: &LimitsConfig) -> Self {
        let local = Arc::new(InProcessLimiter::new());
        Self::build(config, local.clone(), Some(local))
    }

    fn build(config: &LimitsConfig, limiter: Arc<dyn Limiter>, local: Option<Arc<InProcessLimiter>>) -> Self {
        RateLimits {
            enabled: config.enabled,
            limiter,
            local,
            tiers: Tier::ALL.map(|t| config.tier(t)),
            on_failure_create: policy(config.on_failure_create),
            on_failure_read: policy(config.on_failure_read),
            auth_failures_per_minute: config.auth_failures_per_minute,
            last_auth_failure: AtomicI64::new(i64::MIN),
            exports_per_hour: config.exports_per_hour,
            metrics: None,
        }
    }

    fn tier(&self, t: Tier) -> &TierLimits {
        let i = Tier::ALL.iter().position(|x| *x == t).unwrap_or(0);
        &self.tiers[i.min(3)]
    }

    fn requests(&self, auth: &ApiKeyAuth) -> Quota {
        Quota {
            limit: self.tier(auth.tier()).requests_per_minute,
            window: MINUTE,
        }
    }

    /// Every authenticated request but creates: the per-key request limit.
    pub async fn check_request(&self, auth: &ApiKeyAuth) -> Checked {
        if !self.enabled {
            return (None, Ok(()));
        }
        let requests = self.requests(auth);
        let limits = [Limit::new("requests", auth.credential(), requests)];
        let d = check_with_policy(self.limiter.as_ref(), &limits, 1, self.on_failure_read).await;
        self.decide(&d, auth.tier(), requests, &limits)
    }

    /// [`RateLimits::check_request`] without awaiting, when the limiter is in-process (`None` with
    /// Redis: take the routed path).
    pub fn check_request_now(&self, auth: &ApiKeyAuth) -> Option<Checked> {
        if !self.enabled {
            return Some((None, Ok(())));
        }
        let local = self.local.as_ref()?;
        let requests = self.requests(auth);
        let limits = [Limit::new("requests", auth.credential(), requests)];
        Some(self.decide(&local.check_sync(&limits, 1), auth.tier(), requests, &limits))
    }

    /// A prediction create: the key's request limit, the account's create limit for this model and the
    /// account's daily quota, all or nothing.
    pub async fn check_create(&self, auth: &ApiKeyAuth, model: &str) -> Checked {
        self.check_run(auth, model, None).await.0
    }

    /// A language-model or embedding run: the limits of [`RateLimits::check_create`] and the account's
    /// tokens per minute for this model, taking `estimate` tokens, all or nothing. The grant (`None`
    /// when limits are off) settles the difference once the real count is known
    /// ([`RateLimits::settle_tokens`]) and gives OpenAI's `x-ratelimit-*-tokens` headers.
    pub async fn check_tokens(
        &self,
        auth: &ApiKeyAuth,
        model: &str,
        estimate: u32,
    ) -> (Checked, Option<TokenGrant>) {
        self.check_run(auth, model, Some(estimate)).await
    }

    async fn check_run(
        &self,
        auth: &ApiKeyAuth,
        model: &str,
        tokens: Option<u32>,
    ) -> (Checked, Option<TokenGrant>) {
        if !self.enabled {
            return ((None, Ok(())), None);
        }
        let t = self.tier(auth.tier());
        let account = auth.account();
        let (creates, daily, token_key) = (
            format!("c:{account}:{model}"),
            format!("d:{account}"),
            format!("t:{account}:{model}"),
        );
        let requests = self.requests(auth);
        let token_quota = Quota {
            limit: t.tokens_per_minute.unwrap_or(DEFAULT_TOKENS_PER_MINUTE),
            window: MINUTE,
        };
        if let Some(estimate) = tokens.filter(|e| *e > token_quota.limit) {
            // It could never pass: refused at once, as OpenAI does, and nothing is consumed.
            let mut e = ApiError::new(
                ErrorId::RateLimitExceeded,
                "Rate limit exceeded",
                format!(
                    "Request too large for {model}: tokens per minute: limit {}, requested {estimate} \
                     (tier {}). Shorten the messages or lower max_tokens.",
                    token_quota.limit,
                    auth.tier()
                ),
            );
            e.retry_after = Some(60);
            return ((None, Err(e)), None);
        }
        let mut limits = vec![
            Limit::new("requests", auth.credential(), requests),
            Limit::new(
                "predictions",
                &creates,
                Quota {
                    limit: t.predictions_per_minute,
                    window: MINUTE,
                },
            ),
        ];
        if let Some(q) = t.daily_predictions {
            limits.push(Limit::new(
                "daily_predictions",
                &daily,
                Quota {
                    limit: q,
                    window: DAY,
                },
            ));
        }
        if let Some(estimate) = tokens {
            limits.push(Limit::new("tokens", &token_key, token_quota).weighted(estimate));
        }
        let d = check_with_policy(self.limiter.as_ref(), &limits, 1, self.on_failure_create).await;
        let grant = tokens.map(|estimate| TokenGrant {
            // Only what was counted is corrected: after a fail-open fallback nothing was taken.
            taken: if d.fallback.is_none() { estimate } else { 0 },
            info: match d.verdicts.last() {
                Some(v) if d.fallback.is_none() => RateInfo {
                    limit: token_quota.limit,
                    remaining: v.remaining,
                    reset_secs: reset_secs(v.reset_us),
                },
                _ => RateInfo {
                    limit: token_quota.limit,
                    remaining: 0,
                    reset_secs: 1,
                },
            },
            key: token_key.clone(),
            quota: token_quota,
        });
        (self.decide(&d, auth.tier(), requests, &limits), grant)
    }

    /// How many runs of real models one account of `tier` may have going at once on this node (its
    /// `concurrent_predictions`; unbounded when limits are off).
    pub fn concurrent_runs(&self, tier: Tier) -> usize {
        if !self.enabled {
            return usize::MAX;
        }
        usize::try_from(self.tier(tier).concurrent_predictions).unwrap_or(usize::MAX)
    }

    /// Corrects a run's token limit once it is known how many tokens it used: the unused part of the
    /// estimate is given back, tokens beyond it are charged (the account waits them off). Best effort:
    /// a limiter that cannot be reached leaves the estimate standing.
    pub async fn settle_tokens(&self, grant: &TokenGrant, used: u32) {
        let delta = i64::from(used) - i64::from(grant.taken);
        if delta == 0 {
            return;
        }
        let limit = Limit::new("tokens", &grant.key, grant.quota);
        if let Err(e) = self.limiter.adjust(&limit, delta).await {
            tracing::debug!(error = %e, "rate limiter: a token count could not be corrected");
        }
    }

    /// An account data export: `limits.exports_per_hour` per account (refused when the limiter cannot
    /// answer: an export is heavy and rare).
    pub async fn check_export(&self, account: &skygate_core::AccountId, tier: Tier) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let quota = Quota {
            limit: self.exports_per_hour,
            window: HOUR,
        };
        let key = format!("x:{account}");
        let limits = [Limit::new("exports", &key, quota)];
        let d = check_with_policy(self.limiter.as_ref(), &limits, 1, FailurePolicy::Closed).await;
        self.decide(&d, tier, quota, &limits).1
    }

    fn auth_limit<'a>(&self, key: &'a str) -> [Limit<'a>; 1] {
        [Limit::new(
            "failed_authentications",
            key,
            Quota {
                limit: self.auth_failures_per_minute,
                window: MINUTE,
            },
        )]
    }

    /// `client`'s failed-authentication budget after taking `cost` from it (none when limits are off).
    async fn auth_budget(&self, client: IpAddr, cost: u32) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        if cost > 0 {
            self.auth_failure_counted();
        } else if self.no_recent_auth_failure() {
            return None;
        }
        let key = AddrKey::new(client);
        let limits = self.auth_limit(key.as_str());
        Some(check_with_policy(self.limiter.as_ref(), &limits, cost, FailurePolicy::Open).await)
    }

    /// Before authenticating: `Some(429)` while `client` has used up its failed-authentication budget
    /// (`limits.auth_failures_per_minute`), whatever it presents now.
    pub async fn auth_throttled(&self, client: IpAddr) -> Option<ApiError> {
        throttled(&self.auth_budget(client, 0).await?, self.auth_failures_per_minute)
    }

    /// After a failed authentication from `client`: counts it; `Some(429)` when it was one too many.
    pub async fn auth_failed(&self, client: IpAddr) -> Option<ApiError> {
        let d = self.auth_budget(client, 1).await?;
        self.record(&d, &self.auth_limit(""));
        over_budget(&d)
    }

    /// [`RateLimits::auth_throttled`] then, if `failed`, [`RateLimits::auth_failed`], without awaiting
    /// (in-process limiter only; `None` with Redis).
    pub fn auth_now(&self, client: IpAddr, failed: bool) -> Option<Option<ApiError>> {
        if !self.enabled {
            return Some(None);
        }
        let local = self.local.as_ref()?;
        if !failed && self.no_recent_auth_failure() {
            return Some(None);
        }
        let key = AddrKey::new(client);
        let limits = self.auth_limit(key.as_str());
        if let Some(e) = throttled(&local.check_sync(&limits, 0), self.auth_failures_per_minute) {
            return Some(Some(e));
        }
        if !failed {
            return Some(None);
        }
        self.auth_failure_counted();
        let d = local.check_sync(&limits, 1);
        self.record(&d, &limits);
        Some(over_budget(&d))
    }

    /// Notes that a failed authentication is about to be counted (before it is, so a concurrent look
    /// never skips a budget that already holds it).
    fn auth_failure_counted(&self) {
        if let Some(local) = &self.local {
            self.last_auth_failure.fetch_max(local.now(), Ordering::SeqCst);
        }
    }

    /// With the in-process limiter: no failed authentication was counted from any address for a whole
    /// window, so every address's failure budget is full (`false` with Redis: other nodes count too).
    fn no_recent_auth_failure(&self) -> bool {
        let Some(local) = &self.local else {
            return false;
        };
        let window = i64::try_from(MINUTE.as_micros()).unwrap_or(i64::MAX);
        local
            .now()
            .saturating_sub(self.last_auth_failure.load(Ordering::SeqCst))
            > window
    }

    /// A failure budget of its own (`name`, per `key`, `quota`), such as the console's per-account login
    /// budget: with `cost` 0 a look (refused when nothing is left), with 1 a failure counted (refused
    /// when it was one too many). `Some(retry_after_secs)` when refused; `None` when allowed or when
    /// limits are off.
    pub async fn failure_budget(
        &self,
        name: &'static str,
        key: &str,
        quota: Quota,
        cost: u32,
    ) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let limits = [Limit::new(name, key, quota)];
        let d = check_with_policy(self.limiter.as_ref(), &limits, cost, FailurePolicy::Open).await;
        if cost == 0 {
            return throttled_secs(&d, quota);
        }
        self.record(&d, &limits);
        (!d.allowed).then(|| d.tripped().map_or(1, |t| t.retry_after_secs()).max(1))
    }

    /// Limiter calls that failed (Redis unreachable or slow).
    pub fn failures(&self) -> u64 {
        self.limiter.failures()
    }
}

/// A client address's bucket name: `a4:` or `a6:` + the address's bytes in hex, written on the stack (the
/// failed-authentication budget is looked at on every request: no allocation, no formatting machinery).
/// Per-key buckets are the key ids themselves (`key_…`), per-account ones start `c:`, `d:` or `x:`: no name
/// can collide. IPv4-mapped IPv6 addresses count as their IPv4 address.
struct AddrKey {
    buf: [u8; 3 + 32],
    len: usize,
}

impl AddrKey {
    fn new(ip: IpAddr) -> AddrKey {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let (tag, v4, v6);
        let bytes: &[u8] = match ip.to_canonical() {
            IpAddr::V4(a) => {
                (tag, v4) = (b'4', a.octets());
                &v4
            }
            IpAddr::V6(a) => {
                (tag, v6) = (b'6', a.octets());
                &v6
            }
        };
        let mut buf = [0u8; 35];
        let (head, hex) = buf.split_at_mut(3);
        head.copy_from_slice(&[b'a', tag, b':']);
        for (pair, b) in hex.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
        AddrKey {
            buf,
            len: 3 + 2 * bytes.len(),
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or("a:")
    }
}

/// A zero-cost look at a failed-authentication budget: `Some(429)` when nothing is left.
fn throttled(d: &Decision, limit: u32) -> Option<ApiError> {
    throttled_secs(
        d,
        Quota {
            limit,
            window: MINUTE,
        },
    )
    .map(too_many_failures)
}

/// A zero-cost look at a failure budget: the seconds until one failure is allowed again when nothing is
/// left.
fn throttled_secs(d: &Decision, quota: Quota) -> Option<u64> {
    let v = d.headline()?;
    if v.remaining > 0 {
        return None;
    }
    // One failure is allowed again once the bucket is a full interval below its tolerance.
    let interval = quota.window.as_micros() as i64 / i64::from(quota.limit.max(1));
    let wait_us = v.reset_us - interval * i64::from(quota.limit.saturating_sub(1));
    Some(u64::try_from(wait_us.max(1)).unwrap_or(1).div_ceil(1_000_000))
}

/// `Some(429)` when a failure was one too many.
fn over_budget(d: &Decision) -> Option<ApiError> {
    (!d.allowed).then(|| too_many_failures(d.tripped().map_or(1, |t| t.retry_after_secs())))
}

fn too_many_failures(retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        ErrorId::RateLimitExceeded,
        "Rate limit exceeded",
        "failed_authentications: too many failed authentications from this address",
    );
    e.retry_after = Some(retry_after.max(1));
    e
}

impl RateLimits {
    /// Counts a decision: each limit allowed, the one that tripped, or the backend unavailable.
    fn record(&self, d: &Decision, limits: &[Limit<'_>]) {
        let Some(m) = &self.metrics else { return };
        if d.fallback.is_some() {
            for l in limits {
                m.record(l.name, "unavailable");
            }
        } else if d.allowed {
            for l in limits {
                m.record(l.name, "allowed");
            }
        } else if let Some(t) = d.tripped() {
            m.record(t.name, "limited");
        }
    }

    /// [`decide`], counted.
    fn decide(&self, d: &Decision, tier: Tier, requests: Quota, limits: &[Limit<'_>]) -> Checked {
        self.record(d, limits);
        decide(d, tier, requests, limits)
    }
}

/// The headers' numbers from a decision, and the 429 naming what tripped.
fn decide(d: &Decision, tier: Tier, requests: Quota, limits: &[Limit<'_>]) -> Checked {
    let info = match d.headline() {
        Some(v) => RateInfo {
            limit: requests.limit,
            remaining: v.remaining,
            reset_secs: reset_secs(v.reset_us),
        },
        None => RateInfo {
            limit: requests.limit,
            remaining: 0,
            reset_secs: 1,
        },
    };
    if d.allowed {
        return (Some(info), Ok(()));
    }
    let Some(tripped) = d.tripped().filter(|_| d.fallback.is_none()) else {
        // The failure policy refused: the limiter could not be asked.
        let mut e = ApiError::new(
            ErrorId::RateLimitExceeded,
            "Rate limit exceeded",
            "the rate limiter is unavailable; retry shortly",
        );
        e.retry_after = Some(1);
        return (Some(info), Err(e));
    };
    let quota = limits
        .iter()
        .find(|l| l.name == tripped.name)
        .map(|l| l.quota)
        .unwrap_or(requests);
    let per = match quota.window {
        DAY => "day",
        HOUR => "hour",
        _ => "minute",
    };
    let scope = match tripped.name {
        "requests" => "per API key",
        "predictions" | "tokens" => "per account and model",
        _ => "per account",
    };
    let mut e = ApiError::new(
        ErrorId::RateLimitExceeded,
        "Rate limit exceeded",
        format!(
            "{}: {} per {per} {scope} (tier {tier}); retry after {} s",
            tripped.name,
            quota.limit,
            tripped.retry_after_secs()
        ),
    );
    e.retry_after = Some(tripped.retry_after_secs().max(1));
    (Some(info), Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_buckets_name_the_whole_address() {
        for (ip, key) in [
            ("127.0.0.1", "a4:7f000001"),
            ("255.255.255.255", "a4:ffffffff"),
            ("::ffff:10.0.0.1", "a4:0a000001"),
            ("::1", "a6:00000000000000000000000000000001"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "a6:fffffffffffffffffffffffffffffffe",
            ),
            ("2001:db8::ff00:42:8329", "a6:20010db8000000000000ff0000428329"),
        ] {
            let a: IpAddr = ip.parse().unwrap();
            assert_eq!(AddrKey::new(a).as_str(), key, "{ip}");
        }
    }

    #[tokio::test]
    async fn the_skipped_look_still_throttles_once_failures_are_counted() {
        let limits = RateLimits::in_process(&crate::config::LimitsConfig {
            auth_failures_per_minute: 3,
            ..Default::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
        assert!(limits.no_recent_auth_failure(), "nothing counted yet");
        assert!(matches!(limits.auth_now(a, false), Some(None)));
        for _ in 0..3 {
            assert!(
                matches!(limits.auth_now(a, true), Some(None)),
                "within the budget"
            );
        }
        assert!(!limits.no_recent_auth_failure());
        assert!(matches!(limits.auth_now(a, true), Some(Some(_))), "one too many");
        // The look is not skipped now: the address is refused whatever it presents, the other is not.
        assert!(matches!(limits.auth_now(a, false), Some(Some(_))));
        assert!(limits.auth_throttled(a).await.is_some());
        assert!(matches!(limits.auth_now(b, false), Some(None)));
        assert!(limits.auth_throttled(b).await.is_none());
        // The async counting path marks the time too.
        let fresh = RateLimits::in_process(&crate::config::LimitsConfig {
            auth_failures_per_minute: 1,
            ..Default::default()
        });
        assert!(fresh.auth_failed(a).await.is_none());
        assert!(fresh.auth_failed(a).await.is_some());
        assert!(fresh.auth_throttled(a).await.is_some());
    }
}

//! GCRA (generic cell rate algorithm) arithmetic, shared by every limiter backend (in-process and the
//! Redis script mirror it). Pure: the caller keeps each limit's state (its theoretical arrival time, TAT)
//! and passes the time in.
//!
//! A [`Quota`] of `limit` requests per `window` allows a burst of `limit` and then one request every
//! `window / limit` (the emission interval T). State is one number per key: the TAT, in microseconds. A
//! request of cost c at time `now` is allowed when `max(tat, now) + c·T − now ≤ limit·T`, and then moves
//! the TAT to `max(tat, now) + c·T`. [`check_all`] decides several limits at once, all or nothing: if any
//! would deny, none is consumed.

use std::time::Duration;

/// `limit` requests per `window`, with bursts of up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
}

impl Quota {
    /// The emission interval T in microseconds (at least 1).
    pub fn interval_us(&self) -> i64 {
        let w = i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX);
        (w / i64::from(self.limit.max(1))).max(1)
    }

    /// How far ahead of `now` the TAT may run: limit·T.
    fn tolerance_us(&self) -> i64 {
        self.interval_us().saturating_mul(i64::from(self.limit.max(1)))
    }
}

/// The outcome for one limit, with what the rate-limit headers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The TAT to store if the whole request is allowed (unchanged when denied).
    pub new_tat: i64,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// Microseconds until the limit is fully replenished.
    pub reset_us: i64,
    /// When denied: microseconds until a request of this cost would be allowed (≥ 1).
    pub retry_after_us: i64,
}

/// Decides one request of `cost` against `quota` with stored TAT `tat` (None: never used).
pub fn check(tat: Option<i64>, now: i64, quota: &Quota, cost: u32) -> Verdict {
    let t = quota.interval_us();
    let tolerance = quota.tolerance_us();
    let base = tat.map_or(now, |x| x.max(now));
    let new_tat = base.saturating_add(t.saturating_mul(i64::from(cost)));
    let ahead = new_tat - now;
    if ahead <= tolerance {
        let remaining = ((tolerance - ahead) / t).clamp(0, i64::from(u32::MAX)) as u32;
        Verdict {
            allowed: true,
            new_tat,
            remaining,
            reset_us: ahead,
            retry_after_us: 0,
        }
    } else {
        let current = base - now;
        Verdict {
            allowed: false,
            new_tat: tat.unwrap_or(now),
            remaining: ((tolerance - current).max(0) / t).clamp(0, i64::from(u32::MAX)) as u32,
            reset_us: current,
            retry_after_us: (ahead - tolerance).max(1),
        }
    }
}

/// Decides one request against several limits at once. Allowed only if every limit allows it; then the
/// caller stores every `new_tat`. Denied: nothing may be stored, and the verdicts say which limit(s)
/// tripped (`allowed == false`) and how long to wait (the largest `retry_after_us`).
pub fn check_all(states: &[(Option<i64>, Quota)], now: i64, cost: u32) -> (bool, Vec<Verdict>) {
    let verdicts: Vec<Verdict> = states.iter().map(|(tat, q)| check(*tat, now, q, cost)).collect();
    let ok = verdicts.iter().all(|v| v.allowed);
    (ok, verdicts)
}

/// Moves a limit's TAT by `delta` requests after the fact, outside any check: a positive `delta`
/// charges what a request used beyond what it was admitted for (even past the tolerance: later
/// requests wait until the debt has drained), a negative one gives back what it did not use (never
/// below `now`: a refund cannot bank capacity beyond the burst). `None` when the bucket ends up full,
/// which is the same as a bucket never used.
pub fn adjust(tat: Option<i64>, now: i64, quota: &Quota, delta: i64) -> Option<i64> {
    let base = tat.map_or(now, |x| x.max(now));
    let moved = base.saturating_add(quota.interval_us().saturating_mul(delta));
    (moved > now).then_some(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn q(limit: u32, secs: u64) -> Quota {
        Quota {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    /// Sends a request every `step` µs from 0 to `until` against one quota; returns how many passed.
    fn simulate(quota: &Quota, step: i64, until: i64) -> u64 {
        let mut tat = None;
        let mut allowed = 0;
        let mut now = 0;
        while now <= until {
            let v = check(tat, now, quota, 1);
            if v.allowed {
                tat = Some(v.new_tat);
                allowed += 1;
            }
            now += step;
        }
        allowed
    }

    #[test]
    fn a_fresh_key_gets_its_burst_then_the_rate() {
        let quota = q(10, 60); // 10/min: burst 10, then one every 6 s
        let mut tat = None;
        for i in 0..10 {
            let v = check(tat, 0, &quota, 1);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
            tat = Some(v.new_tat);
        }
        let denied = check(tat, 0, &quota, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after_us, 6 * SEC);
        assert_eq!(denied.new_tat, tat.unwrap_or(0), "a denial stores nothing new");
        assert!(!check(tat, 6 * SEC - 1, &quota, 1).allowed);
        assert!(check(tat, 6 * SEC, &quota, 1).allowed);
    }

    #[test]
    fn allowed_count_is_burst_plus_rate_times_time() {
        // A flood far above the rate for t seconds passes B + r·t (± 1).
        for (limit, secs, t) in [(25u32, 60u64, 30i64), (600, 60, 10), (5, 1, 7), (1, 1, 3)] {
            let quota = q(limit, secs);
            let got = simulate(&quota, 1_000, t * SEC) as f64;
            let want = f64::from(limit) + f64::from(limit) / secs as f64 * t as f64;
            assert!(
                (got - want).abs() <= 1.0,
                "{limit}/{secs}s over {t}s: {got} vs {want}"
            );
        }
    }

    #[test]
    fn an_idle_key_refills_to_its_burst_and_no_further() {
        let quota = q(4, 4);
        let mut tat = None;
        for _ in 0..4 {
            tat = Some(check(tat, 0, &quota, 1).new_tat);
        }
        // Long idle: a full burst again, not more.
        let later = 100 * SEC;
        let mut n = 0;
        while check(tat, later, &quota, 1).allowed {
            tat = Some(check(tat, later, &quota, 1).new_tat);
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn several_limits_are_all_or_nothing() {
        let loose = q(100, 60);
        let tight = q(1, 60);
        let (ok, v) = check_all(&[(None, loose), (None, tight)], 0, 1);
        assert!(ok);
        let stored = [(Some(v[0].new_tat), loose), (Some(v[1].new_tat), tight)];
        let (ok, v2) = check_all(&stored, 1, 1);
        assert!(!ok);
        assert!(
            v2[0].allowed && !v2[1].allowed,
            "the tight limit is the one that tripped"
        );
        // Nothing was consumed: the loose limit still has the same headroom as before the denial.
        assert_eq!(v2[0].new_tat, check(stored[0].0, 1, &loose, 1).new_tat);
        assert_eq!(check(stored[0].0, 1, &loose, 1).remaining, 98);
    }

    #[test]
    fn cost_and_degenerate_quotas() {
        let quota = q(10, 10);
        assert!(check(None, 0, &quota, 10).allowed);
        assert!(!check(None, 0, &quota, 11).allowed);
        // A zero limit behaves as one per window rather than dividing by zero.
        let zero = q(0, 1);
        assert!(check(None, 0, &zero, 1).allowed);
        // Huge windows and times saturate instead of overflowing.
        let huge = Quota {
            limit: 1,
            window: Duration::from_secs(u64::MAX),
        };
        let v = check(Some(i64::MAX - 1), i64::MAX - 2, &huge, 1);
        assert!(v.retry_after_us >= 0);
    }

    #[test]
    fn adjustments_charge_debt_and_refund_no_further_than_full() {
        let quota = q(10, 10); // T = 1 s
                               // Admitted for 6, used 2: 4 come back.
        let tat = Some(check(None, 0, &quota, 6).new_tat);
        let tat = adjust(tat, 0, &quota, -4);
        assert_eq!(check(tat, 0, &quota, 1).remaining, 7);
        // Admitted for 1, used 15: the bucket is in debt and refuses until it has drained.
        let tat = adjust(Some(check(None, 0, &quota, 1).new_tat), 0, &quota, 14);
        assert_eq!(tat, Some(15 * SEC));
        assert!(!check(tat, 0, &quota, 1).allowed);
        assert_eq!(check(tat, 0, &quota, 1).retry_after_us, 6 * SEC);
        assert!(check(tat, 6 * SEC, &quota, 1).allowed);
        // A refund larger than what was taken leaves a full bucket, not more.
        assert_eq!(adjust(Some(3 * SEC), 0, &quota, -100), None);
        assert_eq!(adjust(None, 5 * SEC, &quota, -1), None);
        let mut tat = None;
        let mut n = 0;
        while check(tat, 0, &quota, 1).allowed {
            tat = Some(check(tat, 0, &quota, 1).new_tat);
            n += 1;
        }
        assert_eq!(n, 10);
    }
}

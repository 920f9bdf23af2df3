//! Retry schedule: what to do after a delivery attempt.
//!
//! Pure arithmetic over the attempt count and the [`Outcome`]; the caller supplies the random
//! number for jitter, so every decision is reproducible in tests.

use std::time::Duration;

use crate::client::Outcome;

/// When to retry and when to give up.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Delay before attempt 1, 2, …; its length is the number of attempts.
    pub delays: Vec<Duration>,
    /// Relative jitter: 0.1 spreads each delay over ±10 %.
    pub jitter: f64,
    /// A receiver's `Retry-After` is honoured up to this long.
    pub retry_after_cap: Duration,
}

impl Default for Schedule {
    /// 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; ±10 % jitter; Retry-After up to 1 h.
    fn default() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 60 * MIN;
        Self {
            delays: [0, 5, 5 * MIN, 30 * MIN, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR]
                .map(Duration::from_secs)
                .to_vec(),
            jitter: 0.1,
            retry_after_cap: Duration::from_secs(HOUR),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again after this long, counted from now.
    Retry(Duration),
    /// Do not try again, for this reason.
    Stop(String),
}

impl Schedule {
    /// Decides after `attempts_made` attempts (counting the one that produced `outcome`).
    ///
    /// 2xx is delivered; 410 and guard refusals stop; anything else (3xx included) retries
    /// until the schedule runs out. `unit_random` in `[0, 1)` picks the jitter; a `Retry-After`
    /// sets a floor of `min(retry_after, retry_after_cap)`.
    pub fn decide(&self, attempts_made: u32, outcome: &Outcome, unit_random: f64) -> Decision {
        let retry_after = match outcome {
            Outcome::Status { code: 200..=299, .. } => return Decision::Delivered,
            Outcome::Status { code: 410, .. } => {
                return Decision::Stop("the receiver answered 410 Gone".to_owned())
            }
            Outcome::Refused(reason) => return Decision::Stop(reason.clone()),
            Outcome::Status { retry_after, .. } => *retry_after,
            Outcome::Error(_) => None,
        };
        let next = usize::try_from(attempts_made)
            .ok()
            .and_then(|i| self.delays.get(i));
        let Some(&base) = next else {
            return Decision::Stop(format!(
                "gave up after {attempts_made} attempts (last: {outcome})"
            ));
        };
        let spread = self.jitter.clamp(0.0, 1.0) * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        let jittered = Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + spread)).unwrap_or(base);
        let floor = retry_after.map_or(Duration::ZERO, |ra| ra.min(self.retry_after_cap));
        Decision::Retry(jittered.max(floor))
    }

    /// Total number of attempts the schedule allows.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const MID: f64 = 0.5; // no jitter

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn full_sequence_then_give_up() {
        let s = Schedule::default();
        assert_eq!(s.attempts(), 8);
        let failure = status(500);
        let waits: Vec<Decision> = (1..=8).map(|n| s.decide(n, &failure, MID)).collect();
        let expected = [5, 300, 1800, 7200, 18_000, 36_000, 36_000].map(|d| Decision::Retry(secs(d)));
        assert_eq!(waits[..7], expected);
        assert_eq!(
            waits[7],
            Decision::Stop("gave up after 8 attempts (last: HTTP 500)".to_owned())
        );
        let err = Outcome::Error("connection reset".to_owned());
        assert_eq!(
            s.decide(8, &err, MID),
            Decision::Stop("gave up after 8 attempts (last: connection reset)".to_owned())
        );
    }

    #[test]
    fn outcomes() {
        let s = Schedule::default();
        for code in [200, 201, 204, 299] {
            assert_eq!(s.decide(1, &status(code), MID), Decision::Delivered);
        }
        assert_eq!(
            s.decide(1, &status(410), MID),
            Decision::Stop("the receiver answered 410 Gone".to_owned())
        );
        let refused = Outcome::Refused("the host resolves to a loopback address".to_owned());
        assert_eq!(
            s.decide(1, &refused, MID),
            Decision::Stop("the host resolves to a loopback address".to_owned())
        );
        for code in [301, 302, 400, 404, 429, 500, 503] {
            assert_eq!(
                s.decide(1, &status(code), MID),
                Decision::Retry(secs(5)),
                "{code}"
            );
        }
        assert_eq!(
            s.decide(2, &Outcome::Error("timed out".to_owned()), MID),
            Decision::Retry(secs(300))
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = Schedule::default();
        let at = |u| match s.decide(2, &status(500), u) {
            Decision::Retry(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.0), secs(270));
        assert_eq!(at(0.5), secs(300));
        assert!(at(0.999_999) <= secs(330) && at(0.999_999) > secs(329));
        for i in 0..100 {
            let d = at(f64::from(i) / 100.0);
            assert!((secs(270)..=secs(330)).contains(&d), "{d:?}");
        }
        // Nonsense inputs are clamped rather than trusted.
        assert_eq!(at(f64::NAN), secs(300));
        assert_eq!(at(7.0), secs(330));
    }

    #[test]
    fn retry_after_is_a_capped_floor() {
        let s = Schedule::default();
        let with = |ra| Outcome::Status {
            code: 429,
            retry_after: Some(secs(ra)),
        };
        // Longer than the scheduled 5 s: honoured.
        assert_eq!(s.decide(1, &with(7), 0.0), Decision::Retry(secs(7)));
        // Shorter than the scheduled 5 min: the schedule wins.
        assert_eq!(s.decide(2, &with(7), MID), Decision::Retry(secs(300)));
        // A day is capped at 1 h.
        assert_eq!(s.decide(1, &with(86_400), MID), Decision::Retry(secs(3600)));
        // But never past the end of the schedule.
        assert!(matches!(s.decide(8, &with(7), MID), Decision::Stop(_)));
    }
}

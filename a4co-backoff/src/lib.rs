//! The one retry timing of a4co, shared by the bus's redeliveries
//! (`a4co_events::bus::RetryPolicy`) and the HTTP client's retries
//! (`a4co_http::retry::Config`): exponential backoff with equal jitter.
//!
//! ```
//! use std::time::Duration;
//! use a4co_backoff::Backoff;
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! // Without jitter: 100 ms, 200 ms, 400 ms, 800 ms, then the cap.
//! let plain: Vec<u128> = (1..=5).map(|n| backoff.without_jitter().delay(n).as_millis()).collect();
//! assert_eq!(plain, [100, 200, 400, 800, 1000]);
//! // With it (the default), each wait lies between half of that and all of it.
//! let third = backoff.delay(3);
//! assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
//! ```

use std::time::Duration;

/// How long to wait before each retry: `initial × 2^(n−1)` after failed attempt `n`, capped
/// at `max`; with `jitter`, a uniformly random wait between half of that and all of it
/// ("equal jitter"), so the retries of many callers spread out while none waits past the
/// cap or less than half the plain delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// The wait after the first failed attempt (before jitter).
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Whether to spread waits (see the type's documentation).
    pub jitter: bool,
}

/// 1 s doubling up to 30 s, with jitter: the design documents' retry ladder.
impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl Backoff {
    /// `initial` doubling up to `max`, with jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: true,
        }
    }

    /// The same waits, without jitter (exact, for tests and fixed schedules).
    #[must_use]
    pub fn without_jitter(self) -> Self {
        Backoff {
            jitter: false,
            ..self
        }
    }

    /// The plain delay after failed attempt `attempt` (from 1; 0 counts as 1), before
    /// jitter: `initial × 2^(attempt−1)`, capped at `max`.
    pub fn plain(&self, attempt: u64) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(30);
        self.initial.saturating_mul(1_u32 << exponent).min(self.max)
    }

    /// The wait after failed attempt `attempt` (from 1): [`Backoff::plain`], and with
    /// jitter a random point between its half and itself.
    pub fn delay(&self, attempt: u64) -> Duration {
        let plain = self.plain(attempt);
        if !self.jitter || plain.is_zero() {
            return plain;
        }
        let half = plain / 2;
        let spread = u64::try_from((plain - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }

    /// Why these settings cannot work, if they cannot: a start above the cap.
    pub fn problem(&self) -> Option<&'static str> {
        (self.initial > self.max).then_some("the initial backoff must not exceed the maximum")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_initial_delay_up_to_the_maximum() {
        let b = Backoff::default().without_jitter();
        let secs: Vec<u64> = (1..=7).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(u64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_the_delay_and_the_delay() {
        let b = Backoff::default();
        for attempt in 1..=8 {
            let plain = b.plain(attempt);
            let waits: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(
                waits
                    .iter()
                    .all(|d| *d >= plain / 2 && *d <= plain && *d <= b.max),
                "{waits:?} for {attempt}"
            );
            // It spreads: not every wait the same.
            assert!(waits.iter().any(|d| *d != waits[0]), "attempt {attempt}");
        }
    }

    #[test]
    fn zero_waits_stay_zero_and_a_start_above_the_cap_is_a_problem() {
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(3), Duration::ZERO);
        assert!(zero.problem().is_none());
        let inverted = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(inverted.problem().is_some());
    }
}

//! Retries: exponential backoff with jitter, under a budget that stops retry storms.
//!
//! Only idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) and requests carrying an
//! `Idempotency-Key` are retried, on connect errors, timeouts and 429/502/503/504; a
//! `Retry-After` from the target sets the wait. Other 4xx and 5xx are final.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use a4co_backoff::Backoff;

/// How to retry. `Config { max_attempts: 5, ..Default::default() }`, or [`never()`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Attempts in all, the first included (1 = no retry). Default 3 (the documents').
    pub max_attempts: u32,
    /// The wait between attempts without a `Retry-After`: [`Backoff`], the same timing as
    /// the bus's redeliveries (default 1 s doubling to 30 s, jittered between half and all
    /// of it, so clients do not retry in step).
    pub backoff: Backoff,
    /// Shared by every call of the client: retries allowed beyond the first attempts.
    pub budget: Budget,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_attempts: 3,
            backoff: Backoff::default(),
            budget: Budget::default(),
        }
    }
}

/// No retries.
pub fn never() -> Config {
    Config {
        max_attempts: 1,
        ..Config::default()
    }
}

impl Config {
    /// The wait before attempt `attempt + 1`, after `attempt` failed ones (from 1).
    pub(crate) fn wait(&self, attempt: u32) -> Duration {
        self.backoff.delay(u64::from(attempt))
    }
}

/// A retry budget (a token bucket): every first attempt deposits `ratio` of a retry, and
/// `min_per_second` retries are always allowed on top; a retry withdraws one. When a target
/// is down, retries stop at that rate instead of multiplying the load.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Retries earned per first attempt. Default 0.2 (at most 20 % extra load).
    pub ratio: f64,
    /// Retries always allowed per second, whatever the traffic. Default 10.
    pub min_per_second: f64,
    /// How long earned retries stay available. Default 10 s.
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            ratio: 0.2,
            min_per_second: 10.0,
            window: Duration::from_secs(10),
        }
    }
}

/// How many slots the budget's window is cut into: earned retries expire a slot at a time.
const SLOTS: usize = 10;

/// The budget's running state, shared by the clones of one client (it lives in the
/// client's shared state).
///
/// Two pools: the floor, refilled at `min_per_second` up to `min_per_second × window`;
/// and retries earned by first attempts, kept in [`SLOTS`] slots across the window, so
/// they expire `window` after they were earned (a slot at a time), and a retry spends the
/// oldest first. A first attempt only counts itself, with one atomic add: every call makes
/// one, and a lock there is one that all cores sending calls would take in turn. The count
/// is credited to the current slot when a retry asks for a token.
#[derive(Debug)]
pub(crate) struct Tokens {
    budget: Budget,
    /// First attempts not yet credited.
    firsts: AtomicU64,
    state: Mutex<Balance>,
}

#[derive(Debug)]
struct Balance {
    /// The floor's tokens, and when they were last refilled.
    floor: f64,
    refilled: Instant,
    /// Earned retries per slot; `current` is the newest, the one after it the oldest.
    earned: [f64; SLOTS],
    current: usize,
    /// When the current slot began.
    slot_start: Instant,
}

impl Tokens {
    pub(crate) fn new(budget: Budget) -> Self {
        let now = Instant::now();
        Tokens {
            state: Mutex::new(Balance {
                floor: budget.min_per_second * budget.window.as_secs_f64(),
                refilled: now,
                earned: [0.0; SLOTS],
                current: 0,
                slot_start: now,
            }),
            budget,
            firsts: AtomicU64::new(0),
        }
    }

    /// A first attempt: earns `ratio` of a retry.
    pub(crate) fn deposit(&self) {
        self.firsts.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry if the budget has it.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let b = &self.budget;
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &mut *guard;
        // Calls racing with a slightly older `now` than the last one refill nothing.
        let refill = now.saturating_duration_since(s.refilled).as_secs_f64() * b.min_per_second;
        s.floor = (s.floor + refill).min(b.min_per_second * b.window.as_secs_f64());
        s.refilled = s.refilled.max(now);
        // Expire the slots whose time is over.
        let slot = (b.window / SLOTS as u32).max(Duration::from_millis(1));
        let passed = now.saturating_duration_since(s.slot_start).as_nanos() / slot.as_nanos();
        if passed >= SLOTS as u128 {
            s.earned = [0.0; SLOTS];
            s.slot_start = now;
        } else {
            for _ in 0..passed {
                s.current = (s.current + 1) % SLOTS;
                s.earned[s.current] = 0.0;
                s.slot_start += slot;
            }
        }
        s.earned[s.current] += self.firsts.swap(0, Ordering::Relaxed) as f64 * b.ratio;
        if s.floor + s.earned.iter().sum::<f64>() < 1.0 {
            return false;
        }
        // The oldest earned retries first, then the floor.
        let mut owed = 1.0;
        for k in 1..=SLOTS {
            let slot = &mut s.earned[(s.current + k) % SLOTS];
            let take = slot.min(owed);
            *slot -= take;
            owed -= take;
        }
        s.floor -= owed;
        true
    }
}

/// Reads `Retry-After`: delay-seconds, or an HTTP date in any of RFC 9110's three formats
/// (IMF-fixdate, the obsolete RFC 850 and asctime forms), as a wait from now.
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_the_backoff_up_to_the_cap() {
        let plain = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let c = Config {
            backoff: plain.without_jitter(),
            ..Config::default()
        };
        let waits: Vec<u128> = (1..=4).map(|a| c.wait(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        let jittered = Config {
            backoff: plain,
            ..c
        };
        for _ in 0..100 {
            let w = jittered.wait(2);
            assert!(
                w >= Duration::from_millis(100) && w <= Duration::from_millis(200),
                "{w:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // 1994-11-06T08:49:37Z is 784111777.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        // RFC 850 and asctime, which RFC 9110 says a recipient must accept too.
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(
            retry_after("Sun, 06 Nov 99999999999999 08:49:37 GMT", now),
            None
        );
        assert_eq!(retry_after("Sun, 06 Nov 1994 99:49:37 GMT", now), None);
    }

    #[test]
    fn the_budget_runs_out_and_earns_retries_back() {
        let tokens = Tokens::new(Budget {
            ratio: 0.5,
            min_per_second: 0.0,
            window: Duration::from_secs(10),
        });
        assert!(!tokens.withdraw(), "starts empty without a floor");
        tokens.deposit();
        assert!(!tokens.withdraw(), "half a retry is not one");
        tokens.deposit();
        assert!(tokens.withdraw());
        assert!(!tokens.withdraw());
    }

    #[test]
    fn earned_retries_last_one_window_and_the_floor_refills() {
        let tokens = Tokens::new(Budget {
            ratio: 0.5,
            min_per_second: 1.0,
            window: Duration::from_secs(1),
        });
        let start = Instant::now();
        for _ in 0..1000 {
            tokens.deposit();
        }
        let granted = (0..1000).filter(|_| tokens.withdraw_at(start)).count();
        assert_eq!(granted, 500 + 1, "500 earned, 1 from the floor");

        for _ in 0..1000 {
            tokens.deposit();
        }
        // A window later the earned retries have expired; the floor is back to 1.
        let later = start + Duration::from_millis(1100);
        tokens.withdraw_at(start); // credits the deposits to the slot of `start`
        let granted = (0..1000).filter(|_| tokens.withdraw_at(later)).count();
        assert_eq!(granted, 1, "only the floor, refilled");
    }
}

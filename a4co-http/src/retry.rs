//! Retries: exponential backoff with jitter, under a budget that stops retry storms.
//!
//! Only idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) and requests carrying an
//! `Idempotency-Key` are retried, on connect errors, timeouts and 429/502/503/504; a
//! `Retry-After` from the target sets the wait. Other 4xx and 5xx are final.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to retry. `Config { max_attempts: 5, ..Default::default() }`, or [`never()`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Attempts in all, the first included (1 = no retry). Default 3 (the documents').
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles per retry. Default 1 s.
    pub initial_backoff: Duration,
    /// The longest wait between attempts (without a `Retry-After`). Default 30 s.
    pub max_backoff: Duration,
    /// Randomize each wait between half and all of it, so clients do not retry in step.
    pub jitter: bool,
    /// Shared by every call of the client: retries allowed beyond the first attempts.
    pub budget: Budget,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            jitter: true,
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
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .initial_backoff
            .saturating_mul(1_u32 << exp)
            .min(self.max_backoff);
        if self.jitter {
            full / 2 + full.mul_f64(fastrand::f64() / 2.0)
        } else {
            full
        }
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

/// The budget's running state, shared by the clones of one client (it lives in the
/// client's shared state).
///
/// A first attempt only counts itself, with one atomic add: every call makes one, and a
/// lock there is one that all cores sending calls would take in turn. The count becomes
/// tokens when a retry asks for one. That gives the balance that depositing at once would
/// have given: between two retries the balance only grows (first attempts and the refill
/// over time), and capping it once at the end is the same as capping after each step.
#[derive(Debug)]
pub(crate) struct Tokens {
    budget: Budget,
    /// First attempts not yet turned into tokens.
    firsts: AtomicU64,
    /// The balance and when it was last brought up to date.
    state: Mutex<(f64, Instant)>,
}

impl Tokens {
    pub(crate) fn new(budget: Budget) -> Self {
        let full = budget.min_per_second * budget.window.as_secs_f64();
        Tokens {
            budget,
            firsts: AtomicU64::new(0),
            state: Mutex::new((full, Instant::now())),
        }
    }

    /// A first attempt: earns `ratio` of a retry.
    pub(crate) fn deposit(&self) {
        self.firsts.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry if the budget has it.
    pub(crate) fn withdraw(&self) -> bool {
        let b = &self.budget;
        let cap = (b.min_per_second + b.ratio * 100.0) * b.window.as_secs_f64();
        let now = Instant::now();
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = &mut *guard;
        // Calls racing with a slightly older `now` than the last one refill nothing.
        let refill = now.saturating_duration_since(*last).as_secs_f64() * b.min_per_second;
        let earned = self.firsts.swap(0, Ordering::Relaxed) as f64 * b.ratio;
        *tokens = (*tokens + refill + earned).min(cap);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads `Retry-After`: seconds, or an HTTP date (IMF-fixdate), as a wait from now.
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` to a time.
fn httpdate(value: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Bounded so the arithmetic below cannot overflow on a hostile header.
    if !(1970..=9999).contains(&year)
        || !(1..=31).contains(&day)
        || !(0..24).contains(h)
        || !(0..60).contains(m)
        || !(0..=60).contains(s)
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = Config {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            jitter: false,
            ..Config::default()
        };
        let waits: Vec<u128> = (1..=4).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        let jittered = Config { jitter: true, ..c };
        for _ in 0..100 {
            let w = jittered.backoff(2);
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
    fn the_budget_is_capped_however_late_first_attempts_are_counted() {
        // Cap: (1 + 0.5 * 100) * 1 s = 51 retries.
        let tokens = Tokens::new(Budget {
            ratio: 0.5,
            min_per_second: 1.0,
            window: Duration::from_secs(1),
        });
        for _ in 0..1000 {
            tokens.deposit();
        }
        let granted = std::iter::repeat_with(|| tokens.withdraw())
            .take(1000)
            .filter(|&ok| ok)
            .count();
        // 51 from the cap, and at most one more from the refill (1 a second) while looping.
        assert!((51..=52).contains(&granted), "{granted} retries granted");
    }
}

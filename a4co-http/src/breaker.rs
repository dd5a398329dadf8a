//! The circuit breaker of one target: it opens after `failure_threshold` failures within
//! `window`, fails calls fast while open, lets one probe through after `open_for`
//! (half-open), and closes when the probe succeeds (or opens again when it fails).
//!
//! Defaults are the documents': 5 failures in 60 s, half-open after 30 s. What counts as a
//! failure is the client's choice ([`crate::ClientBuilder::breaker_failure_if`]); by default a
//! 5xx, a timeout or a failed connection. A 4xx is an answer, not a failure of the target.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Breaker settings. `Config { failure_threshold: 3, ..Default::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Failures within `window` that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How far back failures count. Default 60 s.
    pub window: Duration,
    /// How long it stays open before letting a probe through. Default 30 s.
    pub open_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            failure_threshold: 5,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast without reaching the target.
    Open,
    /// One probe call is let through to test the target.
    HalfOpen,
}

impl State {
    /// As a gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed(VecDeque<Instant>),
    Open(Instant),
    HalfOpen { probing: bool },
}

/// A breaker shared by the clones of one client.
#[derive(Clone, Debug)]
pub(crate) struct Breaker {
    config: Config,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Whether `state` is `Closed`, readable without the lock: a closed breaker (the usual
    /// case) lets attempts through without every caller taking the same lock.
    closed: AtomicBool,
    state: Mutex<Inner>,
}

/// Why a call may not go through: the breaker is open, and when a probe is next allowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rejected {
    pub(crate) retry_in: Duration,
}

impl Breaker {
    pub(crate) fn new(config: Config) -> Self {
        Breaker {
            config,
            shared: Arc::new(Shared {
                closed: AtomicBool::new(true),
                state: Mutex::new(Inner::Closed(VecDeque::new())),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves to `next` (the lock held), keeping `closed` in step.
    fn set(&self, inner: &mut Inner, next: Inner) {
        self.shared
            .closed
            .store(matches!(next, Inner::Closed(_)), Ordering::Release);
        *inner = next;
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub(crate) fn state(&self) -> State {
        match &*self.lock() {
            Inner::Closed(_) => State::Closed,
            Inner::Open(until) if Instant::now() < *until => State::Open,
            Inner::Open(_) | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Asks to send one attempt. `Ok(probe)` (whether it is the half-open probe) or why not.
    pub(crate) fn acquire(&self) -> Result<bool, Rejected> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed(_) => Ok(false),
            Inner::Open(until) => {
                // The clock is read only for an open breaker.
                let now = Instant::now();
                if now < *until {
                    return Err(Rejected {
                        retry_in: *until - now,
                    });
                }
                self.set(&mut inner, Inner::HalfOpen { probing: true });
                Ok(true)
            }
            Inner::HalfOpen { probing } if *probing => Err(Rejected {
                retry_in: Duration::ZERO,
            }),
            Inner::HalfOpen { probing } => {
                *probing = true;
                Ok(true)
            }
        }
    }

    /// The outcome of an attempt that went through: `failed` per the client's classifier.
    pub(crate) fn record(&self, probe: bool, failed: bool) {
        if !probe && !failed {
            // A success outside a probe changes nothing: no lock, no clock.
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match &mut *inner {
            Inner::HalfOpen { .. } if probe => {
                let next = if failed {
                    Inner::Open(now + self.config.open_for)
                } else {
                    Inner::Closed(VecDeque::new())
                };
                self.set(&mut inner, next);
            }
            Inner::Closed(failures) if failed => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.config.window)
                {
                    failures.pop_front();
                }
                if failures.len() >= self.config.failure_threshold as usize {
                    tracing::warn!(failures = failures.len(), "circuit breaker opens");
                    self.set(&mut inner, Inner::Open(now + self.config.open_for));
                }
            }
            _ => {}
        }
    }

    /// A probe that never finished (cancelled): let the next call probe instead.
    pub(crate) fn release_probe(&self) {
        if let Inner::HalfOpen { probing } = &mut *self.lock() {
            *probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_for_ms: u64) -> Breaker {
        Breaker::new(Config {
            failure_threshold: threshold,
            window: Duration::from_secs(60),
            open_for: Duration::from_millis(open_for_ms),
        })
    }

    #[test]
    fn opens_at_the_threshold_then_half_opens_and_closes_on_success() {
        let b = breaker(3, 50);
        for _ in 0..2 {
            assert!(!b.acquire().unwrap(), "closed: not a probe");
            b.record(false, true);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(false, true);
        assert_eq!(b.state(), State::Open);
        assert!(b.acquire().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            b.acquire().unwrap(),
            "the first call after open_for is the probe"
        );
        assert!(b.acquire().is_err(), "one probe at a time");
        b.record(true, false);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_successes_do_not_count() {
        let b = breaker(1, 30);
        b.record(false, false);
        assert_eq!(b.state(), State::Closed);
        b.record(false, true);
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.acquire().unwrap());
        b.record(true, true);
        assert_eq!(b.state(), State::Open);
        assert!(b.acquire().is_err());
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let b = Breaker::new(Config {
            failure_threshold: 2,
            window: Duration::from_millis(30),
            open_for: Duration::from_secs(30),
        });
        b.record(false, true);
        std::thread::sleep(Duration::from_millis(40));
        b.record(false, true);
        assert_eq!(b.state(), State::Closed);
        b.record(false, true);
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe() {
        let b = breaker(1, 10);
        b.record(false, true);
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.acquire().unwrap());
        b.release_probe();
        assert!(b.acquire().unwrap());
    }
}

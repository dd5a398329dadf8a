//! Whether a subscription's consumers are running, for a `/health` route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether a subscription's consumers are running: a cheap clone to hand to a health check.
#[derive(Clone, Debug)]
pub struct SubscriptionHealth {
    label: Arc<str>,
    /// Per consumer: its stream, and why it is not running (and since when), if it is not.
    consumers: Arc<std::sync::Mutex<Vec<ConsumerHealth>>>,
    /// Per consumer, when its loop last ran, in milliseconds since `origin` (written on
    /// every event, so an atomic rather than the lock).
    beats: Arc<[AtomicU64]>,
    origin: Instant,
    /// A loop that has not run for this long is stalled.
    stall_after: Duration,
    /// A handler's deadline: a deadline missed is reported for this long.
    deadline: Duration,
}

#[derive(Debug)]
struct ConsumerHealth {
    stream: String,
    /// Why it is not running, and since when.
    down: Option<(String, Instant)>,
    /// Handlers cancelled at their deadline so far, and when the last was.
    timed_out: Option<(u64, Instant)>,
}

impl SubscriptionHealth {
    pub(super) fn new(
        label: &str,
        streams: impl Iterator<Item = String>,
        stall_after: Duration,
        deadline: Duration,
    ) -> Self {
        let consumers: Vec<ConsumerHealth> = streams
            .map(|stream| ConsumerHealth {
                stream,
                down: None,
                timed_out: None,
            })
            .collect();
        SubscriptionHealth {
            label: Arc::from(label),
            beats: consumers.iter().map(|_| AtomicU64::new(0)).collect(),
            consumers: Arc::new(std::sync::Mutex::new(consumers)),
            origin: Instant::now(),
            stall_after,
            deadline,
        }
    }

    /// Consumer `consumer`'s loop runs.
    pub(super) fn beat(&self, consumer: usize) {
        if let Some(beat) = self.beats.get(consumer) {
            let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
            beat.store(now, Ordering::Relaxed);
        }
    }

    /// A handler of consumer `consumer` was cancelled at its deadline.
    pub(super) fn timed_out(&self, consumer: usize) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = consumers.get_mut(consumer) {
            let count = c.timed_out.map_or(0, |(n, _)| n);
            c.timed_out = Some((count + 1, Instant::now()));
        }
    }

    /// How long consumer `consumer`'s loop has not run.
    fn silent_for(&self, consumer: usize) -> Duration {
        let beat = self
            .beats
            .get(consumer)
            .map_or(0, |b| b.load(Ordering::Relaxed));
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(beat))
    }

    pub(super) fn set(&self, consumer: usize, down: Option<String>) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ConsumerHealth { down: state, .. }) = consumers.get_mut(consumer) {
            *state = match (down, state.take()) {
                (None, _) => None,
                // The first reason and its time stand until it runs again.
                (Some(_), Some(kept)) => Some(kept),
                (Some(reason), None) => Some((reason, std::time::Instant::now())),
            };
        }
    }

    /// `<service>/<subscription>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether every consumer of the subscription is taking messages (a consumer being
    /// re-created, or stopped, is not).
    pub fn is_running(&self) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .all(|c| c.down.is_none())
    }

    /// What is wrong, in one line naming the subscription, the stream and why; `None` when
    /// all is well:
    ///
    /// - a consumer not running (`inventory-service/orders on ORDERS: not running for 3 s:
    ///   the consumer was deleted; re-creating it`);
    /// - a consumer whose loop has not run for 10 ticks (at least 2 s): a handler blocks
    ///   its thread, and no deadline can cancel it;
    /// - a handler cancelled at its deadline ([`crate::bus::Subscription::handler_deadline`])
    ///   within the last deadline: a dependency hangs.
    pub fn problem(&self) -> Option<String> {
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let label = &self.label;
        let mut problems = Vec::new();
        for (index, c) in consumers.iter().enumerate() {
            let stream = &c.stream;
            if let Some((reason, since)) = &c.down {
                let secs = since.elapsed().as_secs();
                problems.push(format!(
                    "{label} on {stream}: not running for {secs} s: {reason}"
                ));
                continue;
            }
            let silent = self.silent_for(index);
            if silent >= self.stall_after {
                problems.push(format!(
                    "{label} on {stream}: its loop has not run for {} s: a handler blocks its thread",
                    silent.as_secs()
                ));
            }
            if let Some((count, last)) = c.timed_out
                && last.elapsed() < self.deadline
            {
                problems.push(format!(
                    "{label} on {stream}: a handler ran past its deadline of {:?} {} s ago and was cancelled ({count} so far)",
                    self.deadline,
                    last.elapsed().as_secs()
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

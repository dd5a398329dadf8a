//! Settings: the streams, the consumers, and the retry ladder.

use std::time::Duration;

pub use a4co_backoff::Backoff;

use super::error::{SubscribeError, SubscribeErrorKind};
use crate::message::BoundedContext;

const DAY: Duration = Duration::from_secs(86_400);

/// The stream that keeps dead letters: `DLQ`, capturing `dlq.>`.
pub const DLQ_STREAM: &str = "DLQ";
/// The subject prefix of dead letters: `dlq.<service>.<subscription>.<original subject>`.
pub const DLQ_PREFIX: &str = "dlq";

/// The priority group of pinned consumers ([`ConsumerSpec::pinned`]).
pub const PIN_GROUP: &str = "a4co";

/// How a stream is set up. Streams use file storage and limits retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// The name: `ORDERS`.
    pub name: String,
    /// The subjects it captures: `order.>`.
    pub subjects: Vec<String>,
    /// How long messages are kept.
    pub max_age: Duration,
    /// The window in which a repeated `Nats-Msg-Id` is recognised as a duplicate.
    pub duplicate_window: Duration,
    /// How many servers keep a copy (1 locally, 3 in production).
    pub replicas: usize,
}

impl StreamSpec {
    /// The stream of a bounded context, with the retention of the design documents:
    ///
    /// | stream | kept | why |
    /// |---|---|---|
    /// | ORDERS | 7 days | design-v2 |
    /// | INVENTORY | 30 days | design-v2 |
    /// | PAYMENTS | 365 days | design-v2 (compliance) |
    /// | USERS | 90 days | design-v2 |
    /// | ARTISANS | 180 days | design-v2 |
    /// | PRODUCTS | 180 days | ours: catalog history lives as long as the artisans' |
    /// | SHIPPING | 90 days | ours: covers delivery disputes and returns |
    /// | NOTIFICATIONS | 30 days | ours: an audit trail of what was sent, no longer needed |
    /// | CARTS | 30 days | ours: abandoned-cart campaigns look back a month at most |
    ///
    /// Every stream deduplicates over 2 minutes.
    pub fn for_context(context: BoundedContext, replicas: usize) -> Self {
        let days = match context {
            BoundedContext::Order => 7,
            BoundedContext::Inventory => 30,
            BoundedContext::Payment => 365,
            BoundedContext::User => 90,
            BoundedContext::Artisan => 180,
            BoundedContext::Product => 180,
            BoundedContext::Shipping => 90,
            BoundedContext::Notification => 30,
            BoundedContext::Cart => 30,
        };
        StreamSpec {
            name: context.stream().to_owned(),
            subjects: vec![context.subjects()],
            max_age: DAY * days,
            duplicate_window: Duration::from_secs(120),
            replicas,
        }
    }

    /// The dead-letter stream: `DLQ` on `dlq.>`, kept 365 days.
    pub fn dead_letters(replicas: usize) -> Self {
        StreamSpec {
            name: DLQ_STREAM.to_owned(),
            subjects: vec![format!("{DLQ_PREFIX}.>")],
            max_age: DAY * 365,
            duplicate_window: Duration::from_secs(120),
            replicas,
        }
    }

    /// Every stream the marketplace needs: one per context, and the dead letters.
    pub fn all(replicas: usize) -> Vec<StreamSpec> {
        BoundedContext::ALL
            .iter()
            .map(|c| StreamSpec::for_context(*c, replicas))
            .chain(std::iter::once(StreamSpec::dead_letters(replicas)))
            .collect()
    }
}

/// A durable consumer of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The stream it reads.
    pub stream: String,
    /// Its durable name, shared by every instance of the subscription.
    pub durable: String,
    /// The subjects it takes (empty: all of the stream).
    pub filter_subjects: Vec<String>,
    /// How long a delivery may stay unsettled before the broker redelivers it.
    pub ack_wait: Duration,
    /// How many deliveries the broker makes at most (the first included); `None`: no
    /// limit. The bus asks for none: it counts attempts itself and dead-letters by its own
    /// count, so no message is dropped by the broker (see `docs/bus.md`, "Failures").
    pub max_deliver: Option<u32>,
    /// Whether one instance at a time takes the consumer's messages (the others stand by
    /// and one of them takes over when it sends no pull request for
    /// [`ConsumerSpec::pin_timeout`]): what keeps the messages of one aggregate in order
    /// across instances. JetStream's pinned client (priority group [`PIN_GROUP`]).
    pub pinned: bool,
    /// Where a consumer that does not exist yet starts: this stream sequence, or the
    /// stream's first message (`None`). Used when a deleted consumer is re-created, so it
    /// goes on from where the old one stood instead of from the stream's start.
    pub start_sequence: Option<u64>,
    /// How many deliveries may be unsettled at once across all instances.
    pub max_ack_pending: u32,
    /// Whether messages of the stream may have been handled under this durable name
    /// before: the consumer is being re-created, or its subscription's inbox holds
    /// records. A consumer created with it records the stream's last sequence then
    /// ([`AckState::created_after`](super::transport::AckState::created_after)), and every
    /// instance asks the inbox before running a first delivery at or below it.
    pub handled_before: bool,
}

impl ConsumerSpec {
    /// For a pinned consumer, how long the active instance may go without a pull request
    /// before a standby takes over: the ack wait, at most 5 s (the active instance pulls at
    /// least three times as often, busy or not).
    pub fn pin_timeout(&self) -> Duration {
        self.ack_wait.min(Duration::from_secs(5))
    }

    /// The error for its consumer found with the other sharing (`existing_pinned`), which
    /// a transport returns instead of changing it: instances that disagree must not delete
    /// each other's consumer.
    pub fn conflict(&self, existing_pinned: bool) -> SubscribeError {
        let (is, asked) = if existing_pinned {
            (
                "taken by one pinned instance at a time",
                "shared by every instance at once",
            )
        } else {
            (
                "shared by every instance at once",
                "taken by one pinned instance at a time",
            )
        };
        SubscribeError::new(
            SubscribeErrorKind::Conflict,
            format!(
                "consumer {} on {} is {is}, and this instance asks for it {asked}: the \
                 instances of one subscription must agree (Subscription::exclusive), so it \
                 is left as it is. Run them all with the same setting; to change it, stop \
                 every instance and call EventBus::recreate_consumers once (docs/bus.md, \
                 \"Changing how instances share a consumer\")",
                self.durable, self.stream
            ),
        )
    }
}

/// The retry ladder of a subscription: how many deliveries, and how long to wait between
/// them ([`Backoff`], the same timing as the HTTP client's retries).
///
/// Defaults from the documents: 3 retries (4 deliveries in all), 1 s initial delay doubling
/// up to 30 s, with jitter. After the last try the message is dead-lettered. Failures that
/// are outages ([`HandlerError::unavailable`](crate::bus::HandlerError::unavailable)) are
/// retried along the same ladder for [`RetryPolicy::outage`] instead (default 5 minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included (at least 1).
    pub max_deliver: u32,
    /// The wait before each redelivery.
    pub backoff: Backoff,
    /// How long a message whose handler keeps failing because a dependency is down is
    /// retried: it is dead-lettered once the ladder's waits since its first delivery add up
    /// to this (the jitter makes the time between half of it and all of it).
    pub outage: Duration,
}

/// The default [`RetryPolicy::outage`]: longer than a JetStream leader election or a node
/// restart, shorter than the sagas' timeouts.
const DEFAULT_OUTAGE: Duration = Duration::from_secs(5 * 60);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_deliver: 4,
            backoff: Backoff::default(),
            outage: DEFAULT_OUTAGE,
        }
    }
}

impl RetryPolicy {
    /// `max_deliver` deliveries in all, the waits between them as `backoff` says.
    pub fn new(max_deliver: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_deliver,
            backoff,
            outage: DEFAULT_OUTAGE,
        }
    }

    /// `max_deliver` deliveries in all, the first retry `initial_delay` after the first
    /// failure, each further one twice as late (up to the default 30 s), with jitter.
    pub fn attempts(max_deliver: u32, initial_delay: Duration) -> Self {
        RetryPolicy {
            max_deliver,
            backoff: Backoff {
                initial: initial_delay,
                ..Backoff::default()
            },
            outage: DEFAULT_OUTAGE,
        }
    }

    /// No retries: a failure is dead-lettered at once.
    pub fn never() -> Self {
        RetryPolicy {
            max_deliver: 1,
            ..RetryPolicy::default()
        }
    }

    /// How long to wait before redelivering after failed attempt `attempt` (from 1): see
    /// [`Backoff::delay`].
    pub fn delay(&self, attempt: u64) -> Duration {
        self.backoff.delay(attempt)
    }

    /// Whether delivery number `attempt` was the last one allowed.
    pub fn exhausted(&self, attempt: u64) -> bool {
        attempt >= u64::from(self.max_deliver.max(1))
    }

    /// The same ladder, retrying outages for `outage`.
    pub fn outage(mut self, outage: Duration) -> Self {
        self.outage = outage;
        self
    }

    /// Whether a message delivered `delivered` times has been failing for an outage long
    /// enough to give up: the ladder's waits before those deliveries (without jitter) add
    /// up to [`RetryPolicy::outage`].
    pub fn outlasted(&self, delivered: u64) -> bool {
        if self.backoff.plain(1).is_zero() {
            // No waits to add up: count deliveries as for any other failure.
            return self.exhausted(delivered);
        }
        let mut waited = Duration::ZERO;
        for attempt in 1..delivered {
            waited = waited.saturating_add(self.backoff.plain(attempt));
            if waited >= self.outage {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_ends_after_max_deliver_deliveries() {
        let p = RetryPolicy::default();
        assert!(!p.exhausted(3));
        assert!(p.exhausted(4));
        assert!(RetryPolicy::never().exhausted(1));
    }

    #[test]
    fn every_context_has_a_stream_and_the_design_retention() {
        let all = StreamSpec::all(1);
        assert_eq!(all.len(), BoundedContext::ALL.len() + 1);
        let days = |name: &str| {
            all.iter()
                .find(|s| s.name == name)
                .map(|s| s.max_age.as_secs() / 86_400)
        };
        assert_eq!(days("ORDERS"), Some(7));
        assert_eq!(days("INVENTORY"), Some(30));
        assert_eq!(days("PAYMENTS"), Some(365));
        assert_eq!(days("USERS"), Some(90));
        assert_eq!(days("ARTISANS"), Some(180));
        assert!(
            all.iter()
                .all(|s| s.duplicate_window == Duration::from_secs(120))
        );
    }
}

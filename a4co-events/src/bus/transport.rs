//! The transport contract: what a broker must offer for the bus to run on it.
//!
//! Two transports implement it: [`super::memory`] and [`super::nats`] (JetStream). The
//! delivery guarantees (dedup, retries, dead letters, the inbox, ordering, draining) are
//! built once on top of it (the bus's consume engine), so both transports behave alike; one
//! conformance suite runs against both. Implement it only to bring the bus to another
//! broker.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use super::config::{ConsumerSpec, PIN_GROUP, StreamSpec};
use super::error::{
    AckError, ConsumeError, InboxError, ProvisionError, PublishError, SubscribeError,
};
use super::wire::{DeliveryInfo, PendingAck, Provisioned, PublishAck, RawMessage};

/// One delivery of a message to a consumer, to be settled exactly once.
pub trait Delivery: Send + Sync + 'static {
    /// The message as the broker delivered it (the same on every call).
    fn message(&self) -> &RawMessage;
    /// Where and how often it was delivered.
    fn info(&self) -> &DeliveryInfo;
    /// Done: never deliver it again.
    fn ack(&self) -> impl Future<Output = Result<(), AckError>> + Send;
    /// Not done: deliver it again after `delay`.
    fn nak(&self, delay: Duration) -> impl Future<Output = Result<(), AckError>> + Send;
    /// Given up on: never deliver it again (it was dead-lettered).
    fn term(&self) -> impl Future<Output = Result<(), AckError>> + Send;
    /// Still working: restart the ack-wait timer.
    fn progress(&self) -> impl Future<Output = Result<(), AckError>> + Send;
}

/// A durable pull consumer: the deliveries of one stream for one subscription, shared by
/// every instance that opens it (competing consumers).
pub trait Consumer: Send + 'static {
    /// The deliveries it yields.
    type Delivery: Delivery;
    /// The next delivery, waiting for one. `None` when the consumer is closed for good.
    ///
    /// `room` is how many more deliveries the caller can hold now. The consumer asks the
    /// broker for no more than that (a broker delivery starts its ack-wait clock; one
    /// waiting unseen in a client buffer would be redelivered elsewhere), yet still returns
    /// what arrives beyond it. With `room` 0 it only waits. The future must be safe to drop
    /// before it completes (the caller polls it beside other work).
    ///
    /// # Errors
    /// [`ConsumeErrorKind::ConsumerDeleted`](super::ConsumeErrorKind::ConsumerDeleted) when
    /// the consumer is gone on the broker (the caller re-creates it); anything else is
    /// passing and the caller asks again.
    fn next(
        &mut self,
        room: usize,
    ) -> impl Future<Output = Option<Result<Self::Delivery, ConsumeError>>> + Send;

    /// Where the broker's record of this consumer's acknowledgements stands, asked now
    /// (the returned future does not borrow the consumer, so it can run beside
    /// [`Consumer::next`]). `None` when the transport cannot tell or the broker does not
    /// answer.
    ///
    /// With it, the inbox keeps finished work in memory and writes to its bucket only what
    /// the broker may deliver again (see [`super::InboxCheck::Redeliveries`]); without it
    /// (the default), every finished message is written at once.
    fn ack_state(&self) -> impl Future<Output = Option<AckState>> + Send + 'static {
        std::future::ready(None)
    }

    /// Whether this instance took or lost the consumer's pin since the last call
    /// ([`ConsumerSpec::pinned`](super::ConsumerSpec::pinned)): `Some(true)` when the
    /// delivery just returned by [`Consumer::next`] is the first since it became the one
    /// instance taking messages, `Some(false)` when another took over. The default: never
    /// pinned.
    fn pin_changed(&mut self) -> Option<bool> {
        None
    }

    /// Lets another instance take over at once (the subscription is shutting down and
    /// holds nothing): for a pinned consumer, gives up the pin. The default does nothing.
    fn release(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// A consumer's acknowledgements as the broker records them: see [`Consumer::ack_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckState {
    /// Every delivery of this consumer at or below this stream sequence is settled: the
    /// broker will not deliver it again (JetStream's ack floor). While some are unsettled,
    /// it is just below the lowest of them.
    pub floor: u64,
    /// How many times the connection to the broker was lost so far. A change means the
    /// broker may have lost acknowledgements it had reported (a broker restart), or never
    /// got some that were sent.
    pub epoch: u64,
    /// How many deliveries are unsettled, across every instance.
    pub pending: u64,
    /// How many messages of the consumer's subjects wait to be delivered (its lag;
    /// JetStream's `num_pending`).
    pub waiting: u64,
    /// The stream's last sequence when this consumer was created, if it was created with
    /// [`ConsumerSpec::handled_before`] (else 0): a message at or below it may have been
    /// handled under the durable's name before, so every instance asks the inbox before
    /// running it, even on a first delivery.
    pub created_after: u64,
}

/// One failed attempt at handling a message, kept for the dead-letter record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Which delivery, from 1.
    pub attempt: u64,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// The error, with its chain.
    pub error: String,
    /// Set when this attempt was the last: the verdict, kept while its dead letter cannot be
    /// written, so a redelivery writes it without running the handler again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<super::fault::FaultKind>,
    /// Set when the handler failed because a dependency was down
    /// ([`HandlerError::unavailable`](crate::bus::HandlerError::unavailable)): such attempts
    /// do not count against [`RetryPolicy::max_deliver`](crate::bus::RetryPolicy::max_deliver).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unavailable: bool,
}

/// A key-value record of finished work and of failed attempts, with a time to live.
pub trait Inbox: Clone + Send + Sync + 'static {
    /// Whether work under `key` finished already.
    fn is_done(&self, key: &str) -> impl Future<Output = Result<bool, InboxError>> + Send;
    /// Records that work under `key` finished, returning once the record is stored.
    fn mark_done(&self, key: &str) -> impl Future<Output = Result<(), InboxError>> + Send;
    /// Records that work under `key` finished, returning once the record is on its way. Good
    /// enough when the record is only read for redeliveries, which come an ack wait later.
    /// The default waits, as [`Inbox::mark_done`].
    fn mark_done_pipelined(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(), InboxError>> + Send {
        self.mark_done(key)
    }
    /// Returns once the records sent with [`Inbox::mark_done_pipelined`] so far are on the
    /// wire. The default has nothing to wait for.
    fn flush(&self) -> impl Future<Output = Result<(), InboxError>> + Send {
        std::future::ready(Ok(()))
    }
    /// Adds a failed attempt to the history under `key`.
    fn record_attempt(
        &self,
        key: &str,
        attempt: Attempt,
    ) -> impl Future<Output = Result<(), InboxError>> + Send;
    /// The failed attempts recorded under `key`, oldest first.
    fn attempts(&self, key: &str) -> impl Future<Output = Result<Vec<Attempt>, InboxError>> + Send;
    /// Drops the history under `key`.
    fn forget(&self, key: &str) -> impl Future<Output = Result<(), InboxError>> + Send;
    /// Whether it holds any record (work was done under its name before). The default
    /// says yes, which only costs inbox reads.
    fn holds_records(&self) -> impl Future<Output = Result<bool, InboxError>> + Send {
        std::future::ready(Ok(true))
    }
}

/// A broker the bus can run on.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Its durable consumers.
    type Consumer: Consumer;
    /// Its inbox.
    type Inbox: Inbox;

    /// Stores a message, waiting for the broker's acknowledgement.
    fn publish(
        &self,
        message: RawMessage,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send;

    /// Sends a message and returns as soon as it is on its way; the [`PendingAck`] resolves
    /// with the acknowledgement. Many can be in flight at once.
    fn publish_pipelined(
        &self,
        message: RawMessage,
    ) -> impl Future<Output = Result<PendingAck, PublishError>> + Send;

    /// The largest message it stores, headers and body together, in bytes (NATS's default
    /// is 1 MiB). A dead letter above 7/8 of it stores a reference to the original.
    fn max_payload(&self) -> usize {
        1024 * 1024
    }

    /// How many copies of each stream and bucket it creates (1 unless it replicates).
    fn replicas(&self) -> usize {
        1
    }

    /// Creates the stream if it is missing; reports how an existing one differs.
    fn ensure_stream(
        &self,
        spec: &StreamSpec,
    ) -> impl Future<Output = Result<Provisioned, ProvisionError>> + Send;

    /// Opens a durable consumer, creating it if needed. One that exists keeps where it
    /// starts (another instance may have re-created it) and takes `spec`'s other settings.
    ///
    /// # Errors
    /// [`SubscribeErrorKind::Conflict`](super::SubscribeErrorKind::Conflict) when it
    /// exists with the other [`ConsumerSpec::pinned`] ([`ConsumerSpec::conflict`]): it is
    /// left as it is, never deleted (instances that disagree would delete each other's).
    fn consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> impl Future<Output = Result<Self::Consumer, SubscribeError>> + Send;

    /// Deletes the durable consumer of `spec`, if it exists, and creates it anew with
    /// `spec`'s settings from just above its ack floor, with
    /// [`ConsumerSpec::handled_before`] (what is delivered again is checked against the
    /// inbox). The one way to change [`ConsumerSpec::pinned`].
    fn recreate_consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> impl Future<Output = Result<(), SubscribeError>> + Send;

    /// Whether `stream` has the durable consumer `durable` (the dead-letter tools replay
    /// only for a consumer that is there to take the message).
    ///
    /// # Errors
    /// When the broker cannot say (it is away, or the stream cannot be read).
    fn consumer_exists(
        &self,
        stream: &str,
        durable: &str,
    ) -> impl Future<Output = Result<bool, ConsumeError>> + Send;

    /// Opens (creating if needed) the inbox bucket `name`, whose entries live for `ttl`.
    fn inbox(
        &self,
        name: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Self::Inbox, SubscribeError>> + Send;

    /// Reads stored messages of a stream from `from_sequence` on, at most `limit` of them
    /// (for the dead-letter tools).
    fn read_stream(
        &self,
        stream: &str,
        from_sequence: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u64, RawMessage, DateTime<Utc>)>, ConsumeError>> + Send;

    /// How many messages `stream` holds on subjects matching `filter` (for the dead-letter
    /// depth gauge); `None` when it cannot say (the stream missing, the broker away, or a
    /// transport that does not count).
    fn stored(&self, stream: &str, filter: &str) -> impl Future<Output = Option<u64>> + Send {
        let _ = (stream, filter);
        std::future::ready(None)
    }

    /// Deletes one stored message (for the dead-letter tools).
    fn delete_message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> impl Future<Output = Result<bool, ConsumeError>> + Send;
}

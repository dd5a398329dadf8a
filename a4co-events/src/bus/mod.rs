//! The event bus: publish envelopes, subscribe handlers, with at-least-once delivery.
//!
//! Services and sagas depend on two small traits, [`Publisher`] and [`Subscriber`]. Both are
//! implemented by [`EventBus`] over a transport: [`MemoryBus`] (in memory, for demos and
//! fast tests) and, with the `nats` feature, [`nats::NatsBus`] (JetStream). The guarantees
//! are built once, above the transport, so both behave the same (the contract a broker
//! implements is [`transport`]'s, for those who bring the bus to another one):
//!
//! - **publish** waits for the broker's acknowledgement; the broker stores a message once
//!   per event id (`Nats-Msg-Id`) within the 2-minute dedup window; a pipelined path keeps
//!   many acknowledgements in flight;
//! - **subscribe** opens one durable consumer per stream for a (service, subscription):
//!   instances of a service share it; at most `max_in_flight`
//!   handlers run at once, and messages of one aggregate are handled in order, across
//!   instances too: an ordered subscription is exclusive, one instance at a time takes its
//!   messages and a standby takes over when it dies ([`Subscription::exclusive`]; a
//!   retried message comes back after its successors); deliveries waiting for
//!   a handler are kept alive, so none is redelivered elsewhere while it waits; a consumer
//!   deleted on the broker is re-created ([`SubscriptionHandle::is_running`] says so
//!   meanwhile);
//! - **failures**: a [`HandlerError::retryable`] is redelivered after exponential backoff
//!   with jitter; a [`HandlerError::permanent`] error, undecodable input, or the last retry
//!   failing (the bus counts attempts; the broker has no delivery limit) sends the message
//!   to the dead-letter stream with the reason, the error chain, the attempt history, the
//!   consumer and the trace id, once; a dead letter that cannot be written keeps the
//!   message until it can; [`dlq`] lists, shows, replays (to the failed consumer only) and
//!   purges them;
//! - **idempotence**: an inbox (a KV bucket with a TTL) remembers finished event ids, so a
//!   redelivery of finished work is acknowledged without running the handler again
//!   ([`InboxCheck`] says when it is read);
//! - **shutdown** drains handlers in flight ([`SubscriptionHandle::shutdown`]).
//!
//! ```
//! use a4co_events::prelude::*;
//! use a4co_events::catalog::order::{OrderCancelled, OrderCreated};
//! use tokio::sync::mpsc::UnboundedSender;
//!
//! // One handler per message type, each a named async fn of its own `Envelope<M>`.
//! async fn created(seen: UnboundedSender<String>, order: Envelope<OrderCreated>, _: DeliveryInfo) -> Result<(), HandlerError> {
//!     seen.send(format!("created {}", order.aggregate_id)).map_err(HandlerError::permanent)
//! }
//!
//! async fn cancelled(seen: UnboundedSender<String>, order: Envelope<OrderCancelled>, _: DeliveryInfo) -> Result<(), HandlerError> {
//!     seen.send(format!("cancelled {}", order.aggregate_id)).map_err(HandlerError::permanent)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = MemoryBus::provisioned().await?;
//! let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! // One durable consumer takes both types: each `.on` adds its type's subject.
//! let handlers = Handlers::with_state(seen).on::<OrderCreated>(created).on::<OrderCancelled>(cancelled);
//! let handle = bus.subscribe(Subscription::new("inventory-service", "orders"), handlers).await?;
//! bus.publish(&Envelope::new("order-service", "ord-1", OrderCreated::example())).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("created ord-1"));
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use crate::catalog::AnyMessage;
use crate::decode::Decoder;
use crate::envelope::Envelope;
use crate::headers::TraceContext;
use crate::message::{BoundedContext, Message, Payload};
use memory::MemoryTransport;
use transport::{ConsumerSpec, StreamSpec, Transport};

mod config;
mod consume;
pub mod dlq;
mod error;
mod fault;
pub mod handlers;
pub mod memory;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
mod telemetry;
pub mod transport;
mod wire;

pub use config::{Backoff, DLQ_PREFIX, DLQ_STREAM, RetryPolicy};
pub use consume::{Stats, SubscriptionHandle, SubscriptionHealth};
pub use error::{
    AckError, AckErrorKind, BoxError, ConsumeError, ConsumeErrorKind, Error, InboxError,
    InboxErrorKind, ProvisionError, ProvisionErrorKind, PublishError, PublishErrorKind,
    SubscribeError, SubscribeErrorKind,
};
pub use handlers::{Handlers, Next, Route, TypedHandler};
#[cfg(feature = "server")]
pub(crate) use telemetry::SPAN_TARGET;
pub use telemetry::current_trace;
#[cfg(feature = "otel")]
pub use telemetry::otel_layer;
pub use wire::{DeliveryInfo, PendingAck, Provisioned, PublishAck, RawMessage};

/// Publishes envelopes. Implemented by [`EventBus`]; depend on this trait, not a transport.
pub trait Publisher: Clone + Send + Sync + 'static {
    /// Publishes and waits for the broker's acknowledgement. Publishing the same envelope
    /// again within 2 minutes stores it once ([`PublishAck::duplicate`]). The body is
    /// checked first as consumers check it ([`Envelope::to_checked_json`]): an envelope
    /// every consumer would dead-letter (an empty `aggregateId`, a payload that violates its
    /// schema) is refused and nothing is sent.
    ///
    /// # Errors
    /// [`PublishError`]: [`PublishErrorKind::InvalidMessage`] for such an envelope (the
    /// reason a consumer would give), no stream, timeout, connection lost, rejected,
    /// permission denied.
    fn publish<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send;

    /// Sends without waiting for the acknowledgement: await the returned [`PendingAck`]
    /// later. Keeps many messages in flight, for throughput. Checked as
    /// [`Publisher::publish`] checks.
    ///
    /// # Errors
    /// [`PublishError`] when the message could not even be sent, or was refused.
    fn publish_pipelined<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> impl Future<Output = Result<PendingAck, PublishError>> + Send;

    /// Publishes bytes as they are, unchecked: for bridges, dead-letter replays, saga
    /// outboxes and tests of bad input. Only the trace context is the bus's: the message
    /// goes out in a publish span continuing the current trace, or else its own
    /// `traceparent`'s, or else a new one, and carries that span's context.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    fn publish_raw(
        &self,
        message: RawMessage,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send;
}

/// Runs handlers for subscribed messages. Implemented by [`EventBus`].
pub trait Subscriber: Clone + Send + Sync + 'static {
    /// Starts consuming: the handler runs for every message the subscription takes, until
    /// the returned handle is shut down.
    ///
    /// # Errors
    /// [`SubscribeError`]: an invalid subscription, a missing stream, an unreachable broker.
    fn subscribe<H: Handler>(
        &self,
        subscription: Subscription,
        handler: H,
    ) -> impl Future<Output = Result<SubscriptionHandle, SubscribeError>> + Send;

    /// Starts consuming messages of one type `M`: the handler gets `Envelope<M>` (older
    /// versions upcast), and its parameter types are inferred. Everything else is as for
    /// [`Subscriber::subscribe`].
    ///
    /// ```
    /// # use a4co_events::bus::{HandlerError, MemoryBus, Publisher, Subscriber, Subscription};
    /// # use a4co_events::catalog::order::OrderCreated;
    /// # use a4co_events::{Envelope, Message};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bus = MemoryBus::provisioned().await?;
    /// let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let orders = Subscription::new("inventory-service", "orders").of::<OrderCreated>();
    /// let handle = bus
    ///     .on(orders, move |order, _| {
    ///         let sent = seen.send(order.data.items.len());
    ///         async move { sent.map_err(HandlerError::permanent) }
    ///     })
    ///     .await?;
    /// bus.publish(&Envelope::new("order-service", "ord-1", OrderCreated::example())).await?;
    /// assert_eq!(rx.recv().await, Some(OrderCreated::example().items.len()));
    /// # handle.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Subscriber::subscribe`].
    fn on<M, F, Fut>(
        &self,
        subscription: TypedSubscription<M>,
        handler: F,
    ) -> impl Future<Output = Result<SubscriptionHandle, SubscribeError>> + Send
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
        F: Fn(Envelope<M>, DeliveryInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.on_with(subscription, (), move |(), message, delivery| {
            handler(message, delivery)
        })
    }

    /// As [`Subscriber::on`], with `state` handed to every call: a clone of it each time
    /// (an `Arc`, a client, a records handle, a channel), so the handler needs no clone of
    /// its own before its `async move` block.
    ///
    /// ```
    /// # use a4co_events::bus::{HandlerError, MemoryBus, Publisher, Subscriber, Subscription};
    /// # use a4co_events::catalog::order::OrderCreated;
    /// # use a4co_events::{Envelope, Message};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bus = MemoryBus::provisioned().await?;
    /// let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let orders = Subscription::new("inventory-service", "orders").of::<OrderCreated>();
    /// let handle = bus
    ///     .on_with(orders, seen, |seen, order, _| async move {
    ///         seen.send(order.aggregate_id).map_err(HandlerError::permanent)
    ///     })
    ///     .await?;
    /// bus.publish(&Envelope::new("order-service", "ord-1", OrderCreated::example())).await?;
    /// assert_eq!(rx.recv().await.as_deref(), Some("ord-1"));
    /// # handle.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Subscriber::subscribe`].
    fn on_with<M, S, F, Fut>(
        &self,
        subscription: TypedSubscription<M>,
        state: S,
        handler: F,
    ) -> impl Future<Output = Result<SubscriptionHandle, SubscribeError>> + Send
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
        S: Clone + Send + Sync + 'static,
        F: Fn(S, Envelope<M>, DeliveryInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.subscribe(
            subscription.inner,
            Handlers::with_state(state).on::<M>(handler),
        )
    }
}

/// A subscription to one message type `M`, for [`Subscriber::on`]: made by
/// [`Subscription::of`].
#[derive(Debug)]
#[must_use]
pub struct TypedSubscription<M> {
    inner: Subscription,
    message: PhantomData<fn() -> M>,
}

impl<M> TypedSubscription<M> {
    /// The subscription it takes `M` with.
    pub fn subscription(&self) -> &Subscription {
        &self.inner
    }
}

/// Handles one message. [`Handlers`] routes each message type to its own typed handler;
/// any `Fn(Envelope<AnyMessage>, DeliveryInfo) -> impl Future<Output = Result<(),
/// HandlerError>>` closure is a handler too, of everything the subscription takes (a
/// fan-in that really takes every type).
///
/// Handlers must be idempotent: delivery is at least once. The inbox skips redeliveries of
/// finished work, but a crash between the handler's effect and the inbox record can still
/// repeat it.
pub trait Handler: Send + Sync + 'static {
    /// Handles the message. `Ok` acknowledges it; see [`HandlerError`] for failures.
    fn handle(
        &self,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The message types this handler routes by type ([`Handlers`]): the bus adds their
    /// subjects to the subscription it is subscribed with. Empty (the default) for a
    /// handler of whatever the subscription's own subjects take. A handler that wraps
    /// another returns the inner one's.
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Envelope<AnyMessage>, DeliveryInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message, delivery)
    }
}

/// A handler's failure: retryable (redeliver later), unavailable (a dependency is down:
/// redeliver later, for as long as the outage may last) or permanent (dead-letter now).
pub struct HandlerError {
    kind: FailureKind,
    source: BoxError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailureKind {
    Retryable,
    Unavailable,
    Permanent,
}

impl HandlerError {
    /// A failure that may pass (a race lost, a reply not there yet): the message is
    /// redelivered after a backoff, and dead-lettered when its [`RetryPolicy::max_deliver`]
    /// deliveries have failed.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: FailureKind::Retryable,
            source: error.into(),
        }
    }

    /// A failure because something the handler needs is down (the broker, a store, a
    /// service), not because of the message: redelivered along the same ladder, but these
    /// deliveries do not use up [`RetryPolicy::max_deliver`]. The message is dead-lettered
    /// once it has been failing so for [`RetryPolicy::outage`], so a leader election or a
    /// node loss dead-letters nothing. [`PublishError`]s and the records' errors convert to
    /// it (`?`) when they are of this sort.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: FailureKind::Unavailable,
            source: error.into(),
        }
    }

    /// A failure that will not pass (invalid data, a broken invariant): the message goes
    /// to the dead-letter stream at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: FailureKind::Permanent,
            source: error.into(),
        }
    }

    /// Whether it is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// Whether it is an outage ([`HandlerError::unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        self.kind == FailureKind::Unavailable
    }

    /// The error and its causes, outermost first.
    pub fn chain(&self) -> Vec<String> {
        crate::error::chain(&*self.source)
    }
}

impl From<PublishError> for HandlerError {
    /// The broker not answering, not reachable or without a stream leader (it answers "no
    /// stream" while a cluster elects one) is an outage; a conflict may pass on a retry; a
    /// refusal that sending again meets again (permissions, an invalid message) is permanent.
    fn from(error: PublishError) -> Self {
        match error.kind() {
            PublishErrorKind::NoStream
            | PublishErrorKind::Timeout
            | PublishErrorKind::ConnectionLost
            | PublishErrorKind::Other => HandlerError::unavailable(error),
            PublishErrorKind::PermissionDenied | PublishErrorKind::InvalidMessage => {
                HandlerError::permanent(error)
            }
            _ => HandlerError::retryable(error),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Retryable => "retryable",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Permanent => "permanent",
        };
        write!(f, "{kind}: {}", self.chain().join(": "))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

/// What a service consumes, and how. One subscription may read several streams (one durable
/// consumer each, named `<service>_<name>`).
#[derive(Clone, Debug)]
#[must_use]
pub struct Subscription {
    service: String,
    name: String,
    subjects: Vec<String>,
    retry: RetryPolicy,
    max_in_flight: usize,
    max_ack_pending: u32,
    ack_wait: Duration,
    inbox_ttl: Option<Duration>,
    inbox_check: InboxCheck,
    decoder: Decoder,
    ordered_by: OrderBy,
    exclusive: Option<bool>,
    handler_deadline: Duration,
}

/// Which messages a subscription handles one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrderBy {
    /// Messages of one aggregate (the `aggregate id` header), in order.
    #[default]
    Aggregate,
    /// Messages of one conversation (the `correlation id` header), in order: what a saga
    /// wants, whose replies come from different aggregates.
    Correlation,
    /// No order: any message may run beside any other (handlers must cope).
    Nothing,
}

/// When the inbox is consulted before running a handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InboxCheck {
    /// Only for redeliveries (the broker's delivery count above 1): the common first
    /// delivery costs no inbox read. The broker already drops re-published duplicates
    /// within its 2-minute dedup window.
    ///
    /// Finished work is then written to the inbox only when it may come back: it is kept
    /// in memory until the broker's ack floor passes it, and written if that takes half
    /// the ack wait, after a lost connection, or at shutdown (docs/bus.md, "Idempotence").
    /// A transport that cannot report its ack floor writes every message at once.
    #[default]
    Redeliveries,
    /// For every delivery: also catches the same event published again outside the dedup
    /// window (a producer without headers, an outbox re-sending after a long outage), at the
    /// cost of one inbox read and one write per message.
    Always,
}

impl Subscription {
    /// A subscription of `service` named `name` (instances with the same pair share the work).
    /// Defaults: the document's retry ladder, 16 handlers in flight, 30 s ack wait, an inbox
    /// remembering finished work for 24 h.
    pub fn new(service: impl Into<String>, name: impl Into<String>) -> Self {
        Subscription {
            service: service.into(),
            name: name.into(),
            subjects: Vec::new(),
            retry: RetryPolicy::default(),
            max_in_flight: 16,
            max_ack_pending: 1024,
            ack_wait: Duration::from_secs(30),
            inbox_ttl: Some(Duration::from_secs(24 * 3600)),
            inbox_check: InboxCheck::Redeliveries,
            decoder: Decoder::new(),
            ordered_by: OrderBy::Aggregate,
            exclusive: None,
            handler_deadline: Duration::from_secs(60),
        }
    }

    /// Which messages run one after another (default: those of one aggregate), across
    /// every instance of the subscription: see [`Subscription::exclusive`].
    pub fn ordered_by(mut self, key: OrderBy) -> Self {
        self.ordered_by = key;
        self
    }

    /// Whether one instance at a time takes the subscription's messages while the others
    /// stand by (default: yes when the subscription is ordered, no for
    /// [`OrderBy::Nothing`]). This is what keeps an aggregate's messages in order across
    /// instances; `false` lets every instance take messages at once (order then holds within
    /// each instance only). When the active instance stops pulling for the ack wait (it
    /// died), a standby takes over and first settles what the other left unsettled
    /// (docs/bus.md, "Order across instances").
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = Some(exclusive);
        self
    }

    /// Takes messages of type `M` only, for a handler of `Envelope<M>`
    /// ([`Subscriber::on`]). Subjects added before are replaced.
    pub fn of<M: Message>(mut self) -> TypedSubscription<M> {
        self.subjects = vec![M::SUBJECT.to_owned()];
        TypedSubscription {
            inner: self,
            message: PhantomData,
        }
    }

    /// Also takes messages of type `M` (the handler gets them as `Envelope<AnyMessage>`;
    /// for one type, [`Subscription::of`] hands it `Envelope<M>`).
    pub fn to<M: Message>(mut self) -> Self {
        self.subjects.push(M::SUBJECT.to_owned());
        self
    }

    /// Also takes a subject filter (`order.*` for every order event, `payment.>` for all).
    pub fn subject(mut self, filter: impl Into<String>) -> Self {
        self.subjects.push(filter.into());
        self
    }

    /// The retry ladder.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How many handlers may run at once (messages of one aggregate still run in order).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long a handler may run before the broker assumes it died and redelivers; the bus
    /// extends it while a handler works, so it only matters for crashed instances.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How long one run of the handler may take (default 60 s). A run past it is cancelled
    /// (its future dropped at its next await) and counted as a retryable failure: a hung
    /// dependency holds one lane for at most this long, not the subscription (or, on an
    /// exclusive one, every aggregate and the standby's turn). It shows in
    /// [`Stats::timed_out`], the counter `a4co_handler_timeouts_total{service,consumer}`
    /// and, for one deadline after it, in [`SubscriptionHealth::problem`]. A handler that
    /// blocks its thread cannot be cancelled: that shows as a stalled loop in the health.
    pub fn handler_deadline(mut self, deadline: Duration) -> Self {
        self.handler_deadline = deadline;
        self
    }

    /// How many deliveries may be unsettled at once, across all instances (default 1024).
    /// Higher keeps the pipeline from the broker full; lower bounds what an instance buffers.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// When the inbox is read (default: for redeliveries only).
    pub fn inbox_check(mut self, check: InboxCheck) -> Self {
        self.inbox_check = check;
        self
    }

    /// How long finished event ids are remembered; `None` turns the inbox off.
    pub fn inbox_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.inbox_ttl = ttl;
        self
    }

    /// The decoding policy (size limit, whether headers are required).
    pub fn decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// The durable consumer name: `<service>_<name>`.
    pub fn durable(&self) -> String {
        format!("{}_{}", self.service, self.name)
    }

    /// `<service>/<name>`, as dead letters name the consumer.
    pub fn label(&self) -> String {
        format!("{}/{}", self.service, self.name)
    }

    /// The consumers to open: one per stream, with its subject filters.
    ///
    /// # Errors
    /// [`SubscribeErrorKind::InvalidConfig`] saying what to fix.
    pub fn consumers(&self) -> Result<Vec<ConsumerSpec>, SubscribeError> {
        let invalid = |what: String| SubscribeError::new(SubscribeErrorKind::InvalidConfig, what);
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.service) || !name_ok(&self.name) {
            return Err(invalid(format!(
                "service {:?} and name {:?} must be non-empty and use only letters, digits, '-' and '_'",
                self.service, self.name
            )));
        }
        if self.subjects.is_empty() {
            return Err(invalid(format!(
                "{} takes no messages: add .to::<M>() or .subject(..)",
                self.label()
            )));
        }
        if self.max_in_flight == 0
            || self.retry.max_deliver == 0
            || self.ack_wait.is_zero()
            || self.handler_deadline.is_zero()
            || self.max_ack_pending == 0
        {
            return Err(invalid(format!(
                "{}: max_in_flight, max_ack_pending, retry.max_deliver, ack_wait and handler_deadline must be above zero",
                self.label()
            )));
        }
        if let Some(problem) = self.retry.backoff.problem() {
            return Err(invalid(format!("{}: retry: {problem}", self.label())));
        }
        let mut by_stream: Vec<(String, Vec<String>)> = Vec::new();
        for subject in &self.subjects {
            let first = subject.split('.').next().unwrap_or_default();
            let Some(context) = BoundedContext::ALL.iter().find(|c| c.name() == first) else {
                return Err(invalid(format!(
                    "subject {subject:?} belongs to no context stream (it must start with one of: {})",
                    BoundedContext::ALL
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let stream = context.stream().to_owned();
            match by_stream.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, filters)) if !filters.contains(subject) => filters.push(subject.clone()),
                Some(_) => {}
                None => by_stream.push((stream, vec![subject.clone()])),
            }
        }
        let in_flight = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        Ok(by_stream
            .into_iter()
            .map(|(stream, filter_subjects)| ConsumerSpec {
                stream,
                durable: self.durable(),
                filter_subjects,
                ack_wait: self.ack_wait,
                // No broker limit: the bus dead-letters by its own count, so a message
                // whose dead letter cannot be written yet is kept, never dropped.
                max_deliver: None,
                start_sequence: None,
                handled_before: false,
                pinned: self
                    .exclusive
                    .unwrap_or(self.ordered_by != OrderBy::Nothing),
                max_ack_pending: self.max_ack_pending.max(in_flight.saturating_mul(2)),
            })
            .collect())
    }
}

/// The bus over a transport: a cheap `Clone` handle implementing [`Publisher`] and
/// [`Subscriber`].
#[derive(Clone, Debug)]
pub struct EventBus<T> {
    transport: T,
    metrics: telemetry::Metrics,
}

/// The bus on the in-memory transport.
pub type MemoryBus = EventBus<MemoryTransport>;

impl<T: Transport> EventBus<T> {
    /// The bus over `transport`. Streams must exist before publishing: see
    /// [`EventBus::provision`]. Its metric instruments are created now, on the global meter
    /// provider: install the application's provider before creating the bus.
    pub fn new(transport: T) -> Self {
        EventBus {
            transport,
            metrics: telemetry::Metrics::new(),
        }
    }

    /// The message to send for `envelope`, and the producer span to send it in; refused
    /// (nothing sent) when every consumer would dead-letter it. The span is a child of the
    /// current span, or else of the envelope's own trace context; its context (or, when no
    /// OpenTelemetry layer records it, the envelope's, or a new trace) goes into the
    /// headers, so every message carries one and the consumer's span becomes its child.
    fn outgoing<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<(RawMessage, tracing::Span), PublishError> {
        let payload = envelope.to_checked_json().map_err(|e| {
            PublishError::new(
                PublishErrorKind::InvalidMessage,
                format!(
                    "{} {} not sent: every consumer would dead-letter it ({})",
                    envelope.event_type(),
                    envelope.event_id,
                    e.reason()
                ),
            )
        })?;
        let mut message = RawMessage {
            subject: envelope.subject().to_owned(),
            headers: envelope.headers(),
            payload: payload.into(),
        };
        let span = telemetry::send_span(&mut message, envelope.trace.as_ref());
        Ok((message, span))
    }

    /// The broker underneath, for what the bus does not wrap (the dead-letter tools, the
    /// JetStream context on NATS).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Creates every stream the marketplace needs (one per context, and `DLQ`) where
    /// missing, with the transport's replicas (on NATS, `nats::Config::replicas`), and
    /// reports how existing ones differ from the expected settings (replicas included).
    /// Buckets are created, with the same replicas, when they are first opened.
    ///
    /// # Errors
    /// [`ProvisionError`] when a stream cannot be created or inspected.
    pub async fn provision(&self) -> Result<Vec<Provisioned>, ProvisionError> {
        let mut out = Vec::new();
        for spec in StreamSpec::all(self.transport.replicas()) {
            let report = self.transport.ensure_stream(&spec).await?;
            for line in &report.drift {
                tracing::warn!(stream = %report.stream, drift = %line, "stream differs from the expected settings");
            }
            out.push(report);
        }
        Ok(out)
    }

    /// Re-creates the durable consumers of `subscription` with its settings, each from just
    /// above where its acknowledgements stand: the one way to change whether its instances
    /// share a consumer or take turns ([`Subscription::exclusive`]), which the broker cannot
    /// change in place. What the new consumer hands out again is checked against the
    /// subscription's inbox before it runs (see [`ConsumerSpec::handled_before`]).
    ///
    /// Stop every instance first: a running one finds its consumer changed under it and
    /// reports [`SubscribeErrorKind::Conflict`] until it is stopped (docs/bus.md, "Changing
    /// how instances share a consumer").
    ///
    /// # Errors
    /// [`SubscribeErrorKind::InvalidConfig`] for a subscription that cannot run,
    /// [`SubscribeErrorKind::NoStream`], or the broker's refusal.
    pub async fn recreate_consumers(
        &self,
        subscription: &Subscription,
    ) -> Result<(), SubscribeError> {
        for spec in subscription.consumers()? {
            self.transport.recreate_consumer(&spec).await?;
        }
        Ok(())
    }
}

impl MemoryBus {
    /// An in-memory bus with every stream provisioned.
    ///
    /// # Errors
    /// Never in practice; the signature matches the NATS bus.
    pub async fn provisioned() -> Result<Self, ProvisionError> {
        let bus = EventBus::new(MemoryTransport::new());
        bus.provision().await?;
        Ok(bus)
    }
}

impl<T: Transport> Publisher for EventBus<T> {
    async fn publish<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PublishAck, PublishError> {
        let (message, span) = self.outgoing(envelope)?;
        let ack = telemetry::sending(span, self.transport.publish(message)).await?;
        self.metrics
            .published(&envelope.source, envelope.event_type());
        Ok(ack)
    }

    async fn publish_pipelined<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PendingAck, PublishError> {
        let (message, span) = self.outgoing(envelope)?;
        let pending = telemetry::sending(span, self.transport.publish_pipelined(message)).await?;
        self.metrics
            .published(&envelope.source, envelope.event_type());
        Ok(pending)
    }

    async fn publish_raw(&self, mut message: RawMessage) -> Result<PublishAck, PublishError> {
        // A publish span as for an envelope, continuing the message's own trace context.
        let trace = TraceContext::extract(&message.headers);
        let span = telemetry::send_span(&mut message, trace.as_ref());
        telemetry::sending(span, self.transport.publish(message)).await
    }
}

impl<T: Transport> Subscriber for EventBus<T> {
    async fn subscribe<H: Handler>(
        &self,
        subscription: Subscription,
        handler: H,
    ) -> Result<SubscriptionHandle, SubscribeError> {
        let mut subscription = subscription;
        for route in handler.routes() {
            if !subscription.subjects.iter().any(|s| s == route.subject) {
                subscription.subjects.push(route.subject.to_owned());
            }
        }
        consume::start(self.clone(), subscription, handler).await
    }
}

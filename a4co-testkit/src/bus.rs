//! A recording bus for tests: the in-memory bus, plus a record of what was published,
//! consumed and dead-lettered, and assertions that wait for it (with a timeout) instead of
//! sleeping.
//!
//! ```
//! use std::time::Duration;
//!
//! use a4co_events::prelude::*;
//! use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
//! use a4co_testkit::bus::RecordingBus;
//!
//! // A service under test: confirms every order it sees.
//! async fn confirm(bus: RecordingBus, order: Envelope<OrderCreated>, _: DeliveryInfo) -> Result<(), HandlerError> {
//!     let reply = Envelope::caused_by(&order, "order-service", order.aggregate_id.clone(), OrderConfirmed::example());
//!     bus.publish(&reply).await.map_err(HandlerError::retryable)?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = RecordingBus::new().await;
//! let handlers = Handlers::with_state(bus.clone()).on::<OrderCreated>(confirm);
//! let _handle = bus.subscribe(Subscription::new("order-service", "confirm"), handlers).await.unwrap();
//! bus.publish(&Envelope::new("test", "ord-1", OrderCreated::example())).await.unwrap();
//! let confirmed = bus.published::<OrderConfirmed>().matching(|e| e.aggregate_id == "ord-1").await;
//! assert!(confirmed.data.artisan_notified);
//! bus.consumed::<OrderCreated>().within(Duration::from_secs(1)).await;
//! bus.assert_nothing_dead_lettered().await;
//! # }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use a4co_events::bus::dlq::{DeadLetter, DeadLetters, Filter};
use a4co_events::bus::{
    DeliveryInfo, Handler, HandlerError, MemoryBus, PendingAck, PublishAck, PublishError,
    Publisher, RawMessage, SubscribeError, Subscriber, Subscription, SubscriptionHandle,
};
use a4co_events::{AnyMessage, Envelope, Message, Payload};
use tokio::sync::Notify;

/// How long the waiting assertions wait by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// What a handler did with a consumed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Handled,
    /// It failed with this error (`retryable: ...` or `permanent: ...`).
    Failed(String),
}

#[derive(Default)]
struct Log {
    published: Vec<Envelope<AnyMessage>>,
    consumed: Vec<(Envelope<AnyMessage>, DeliveryInfo, Outcome)>,
}

#[derive(Default)]
struct Recorder {
    log: Mutex<Log>,
    changed: Notify,
}

impl Recorder {
    fn read<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        self.changed.notify_waiters();
    }
}

/// The in-memory bus with a record of everything that went through it. A cheap `Clone`;
/// clones share the bus and the record. A message the broker dropped as a duplicate (same
/// event id within the dedup window) is not recorded again: the record is what consumers see.
#[derive(Clone)]
pub struct RecordingBus {
    bus: MemoryBus,
    recorder: Arc<Recorder>,
}

impl fmt::Debug for RecordingBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingBus").finish_non_exhaustive()
    }
}

impl RecordingBus {
    /// A provisioned in-memory bus with an empty record.
    ///
    /// # Panics
    /// Never in practice: provisioning in memory cannot fail.
    pub async fn new() -> Self {
        let bus = MemoryBus::provisioned()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        RecordingBus {
            bus,
            recorder: Arc::default(),
        }
    }

    /// The underlying in-memory bus.
    pub fn inner(&self) -> &MemoryBus {
        &self.bus
    }

    /// Waits for a published message of type `M`; refine with
    /// [`Expectation::matching`] and [`Expectation::within`], then await it.
    pub fn published<M: Message + TryFrom<AnyMessage, Error = AnyMessage>>(
        &self,
    ) -> Expectation<M> {
        Expectation::new(self.clone(), Source::Published)
    }

    /// Waits for a consumed message of type `M` whose handler succeeded.
    pub fn consumed<M: Message + TryFrom<AnyMessage, Error = AnyMessage>>(&self) -> Expectation<M> {
        Expectation::new(self.clone(), Source::Consumed)
    }

    /// Everything published so far, in order.
    pub fn all_published(&self) -> Vec<Envelope<AnyMessage>> {
        self.recorder.read(|log| log.published.clone())
    }

    /// Every handler run so far, in order, with its outcome.
    pub fn all_consumed(&self) -> Vec<(Envelope<AnyMessage>, DeliveryInfo, Outcome)> {
        self.recorder.read(|log| log.consumed.clone())
    }

    /// Every dead letter so far.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        DeadLetters::new(self.bus.transport().clone())
            .list(&Filter::default())
            .await
            .map(|v| v.into_iter().map(|(_, l)| l).collect())
            .unwrap_or_default()
    }

    /// Waits until a dead letter satisfies `predicate`, and returns it. Dead letters are
    /// written by the bus, not through this recorder, so it checks every 10 ms.
    ///
    /// # Panics
    /// When none does within `wait`, listing what was dead-lettered.
    pub async fn dead_lettered(
        &self,
        wait: Duration,
        predicate: impl Fn(&DeadLetter) -> bool,
    ) -> DeadLetter {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let letters = self.dead_letters().await;
            if let Some(found) = letters.iter().find(|l| predicate(l)) {
                return found.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
                panic!("no matching dead letter within {wait:?}; dead letters: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fails the test if anything was dead-lettered.
    ///
    /// # Panics
    /// When the dead-letter stream is not empty, listing the reasons.
    pub async fn assert_nothing_dead_lettered(&self) {
        let letters = self.dead_letters().await;
        assert!(
            letters.is_empty(),
            "expected no dead letters, found: {:?}",
            letters.iter().map(|l| &l.reason).collect::<Vec<_>>()
        );
    }
}

impl Publisher for RecordingBus {
    async fn publish<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PublishAck, PublishError> {
        let ack = self.bus.publish(envelope).await?;
        if !ack.duplicate {
            self.record(&RawMessage::from_envelope(envelope));
        }
        Ok(ack)
    }

    async fn publish_pipelined<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PendingAck, PublishError> {
        let pending = self.bus.publish_pipelined(envelope).await?;
        self.record(&RawMessage::from_envelope(envelope));
        Ok(pending)
    }

    async fn publish_raw(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        let ack = self.bus.publish_raw(message.clone()).await?;
        if !ack.duplicate {
            self.record(&message);
        }
        Ok(ack)
    }
}

impl RecordingBus {
    /// Records a message as published, when it decodes.
    fn record(&self, raw: &RawMessage) {
        if let Ok(any) = a4co_events::decode(&raw.payload, &raw.headers) {
            self.recorder.write(|log| log.published.push(any));
        }
    }
}

impl Subscriber for RecordingBus {
    async fn subscribe<H: Handler>(
        &self,
        subscription: Subscription,
        handler: H,
    ) -> Result<SubscriptionHandle, SubscribeError> {
        let recording = Recording {
            inner: handler,
            recorder: Arc::clone(&self.recorder),
        };
        self.bus.subscribe(subscription, recording).await
    }
}

struct Recording<H> {
    inner: H,
    recorder: Arc<Recorder>,
}

impl<H: Handler> Handler for Recording<H> {
    async fn handle(
        &self,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<(), HandlerError> {
        let copy = (message.clone(), delivery.clone());
        let result = self.inner.handle(message, delivery).await;
        let outcome = match &result {
            Ok(()) => Outcome::Handled,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.recorder
            .write(|log| log.consumed.push((copy.0, copy.1, outcome)));
        result
    }

    fn routes(&self) -> Vec<a4co_events::bus::Route> {
        self.inner.routes()
    }
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Published,
    Consumed,
}

type Predicate<M> = Box<dyn Fn(&Envelope<M>) -> bool + Send + Sync>;

/// A wait for a message: await it to get the first match, or fail the test with what was
/// seen instead.
#[must_use = "an expectation does nothing until awaited"]
pub struct Expectation<M> {
    bus: RecordingBus,
    source: Source,
    predicate: Predicate<M>,
    wait: Duration,
    _type: PhantomData<fn() -> M>,
}

impl<M: Message + TryFrom<AnyMessage, Error = AnyMessage>> Expectation<M> {
    fn new(bus: RecordingBus, source: Source) -> Self {
        Expectation {
            bus,
            source,
            predicate: Box::new(|_| true),
            wait: DEFAULT_WAIT,
            _type: PhantomData,
        }
    }

    /// Only messages satisfying `predicate`.
    pub fn matching(
        mut self,
        predicate: impl Fn(&Envelope<M>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicate = Box::new(predicate);
        self
    }

    /// Waits at most `wait` (default 5 s).
    pub fn within(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    fn find(&self) -> Option<Envelope<M>> {
        self.bus.recorder.read(|log| {
            let candidates: Vec<&Envelope<AnyMessage>> = match self.source {
                Source::Published => log.published.iter().collect(),
                Source::Consumed => log
                    .consumed
                    .iter()
                    .filter(|(_, _, o)| *o == Outcome::Handled)
                    .map(|(e, _, _)| e)
                    .collect(),
            };
            candidates
                .into_iter()
                .filter_map(|e| e.clone().downcast::<M>().ok())
                .find(|e| (self.predicate)(e))
        })
    }

    async fn wait(self) -> Envelope<M> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.bus.recorder.changed.notified();
            if let Some(found) = self.find() {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && self.find().is_none() {
                let seen: Vec<String> = match self.source {
                    Source::Published => self
                        .bus
                        .all_published()
                        .iter()
                        .map(|e| e.event_type().to_owned())
                        .collect(),
                    Source::Consumed => self
                        .bus
                        .all_consumed()
                        .iter()
                        .map(|(e, _, o)| format!("{} ({o:?})", e.event_type()))
                        .collect(),
                };
                panic!(
                    "no matching {} {:?} within {:?}; seen: {seen:?}",
                    M::TYPE,
                    self.source,
                    self.wait
                );
            }
        }
    }
}

impl<M: Message + TryFrom<AnyMessage, Error = AnyMessage>> IntoFuture for Expectation<M> {
    type Output = Envelope<M>;
    type IntoFuture = Pin<Box<dyn Future<Output = Envelope<M>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

impl<M> fmt::Debug for Expectation<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expectation")
            .field("source", &self.source)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// What a subscription takes on any bus, NATS included: each event id once, in arrival
/// order. For tests of services running on a real broker, where [`RecordingBus`] cannot sit
/// in between.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use a4co_events::bus::{MemoryBus, Publisher, Subscription};
/// use a4co_events::catalog::order::OrderCreated;
/// use a4co_events::{Envelope, Message};
/// use a4co_testkit::bus::Collector;
///
/// let bus = MemoryBus::provisioned().await.unwrap();
/// let orders = Collector::start(&bus, Subscription::new("test", "orders").to::<OrderCreated>()).await;
/// let created = Envelope::new("order-service", "ord-1", OrderCreated::example());
/// bus.publish(&created).await.unwrap();
/// bus.publish(&created).await.unwrap(); // stored once
/// assert_eq!(orders.wait_for(1, Duration::from_secs(5)).await.len(), 1);
/// orders.stop().await;
/// # }
/// ```
pub struct Collector {
    seen: Arc<(Mutex<Vec<Envelope<AnyMessage>>>, Notify)>,
    handle: SubscriptionHandle,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("collected", &self.messages().len())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Subscribes to `bus` and starts collecting.
    ///
    /// # Panics
    /// Subscribing failed (a test cannot go on).
    pub async fn start<B: Subscriber>(bus: &B, subscription: Subscription) -> Self {
        let seen: Arc<(Mutex<Vec<Envelope<AnyMessage>>>, Notify)> = Arc::default();
        let record = Arc::clone(&seen);
        let label = subscription.label();
        let handle = bus
            .subscribe(subscription, move |message: Envelope<AnyMessage>, _| {
                let record = Arc::clone(&record);
                async move {
                    {
                        let mut list = record.0.lock().unwrap_or_else(PoisonError::into_inner);
                        if !list.iter().any(|e| e.event_id == message.event_id) {
                            list.push(message);
                        }
                    }
                    record.1.notify_waiters();
                    Ok(())
                }
            })
            .await
            .unwrap_or_else(|e| panic!("collecting {label}: {e}"));
        Collector { seen, handle }
    }

    /// Everything collected so far.
    pub fn messages(&self) -> Vec<Envelope<AnyMessage>> {
        self.seen
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` messages are collected, or `within` passed; returns what
    /// was collected either way (assert on it).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Envelope<AnyMessage>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.seen.1.notified();
            let now = self.messages();
            if now.len() >= n || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.messages();
            }
        }
    }

    /// Stops collecting.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

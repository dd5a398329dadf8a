//! Given/when/then for sagas: a [`Scenario`] runs a saga definition on a recording
//! in-memory bus, an in-memory store and a virtual clock, and feeds it messages directly
//! (no consumer in between), so every step is deterministic. It can replay duplicates, move
//! time, and crash the runtime between saving an instance and publishing its messages.
//!
//! ```
//! use std::time::Duration;
//! use a4co_events::catalog::order::{CancelOrder, CancellationReason, OrderConfirmed, OrderCreated};
//! use a4co_saga::{Definition, State};
//! use a4co_testkit::saga::Scenario;
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
//! enum Watch { Waiting, Done, GaveUp }
//! impl State for Watch {
//!     const ALL: &'static [Self] = &[Watch::Waiting, Watch::Done, Watch::GaveUp];
//!     fn name(self) -> &'static str { match self { Watch::Waiting => "waiting", Watch::Done => "done", Watch::GaveUp => "gave-up" } }
//!     fn is_final(self) -> bool { self != Watch::Waiting }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let definition = Definition::<(), Watch>::builder("confirmation-watch", "order-service")
//!     .starts_with::<OrderCreated>(&[Watch::Waiting], |step, _| {
//!         step.schedule("give-up", Duration::from_secs(3600));
//!         Watch::Waiting
//!     })
//!     .on::<OrderConfirmed>(Watch::Waiting, &[Watch::Done], |_, _| Watch::Done)
//!     .on_timeout(Watch::Waiting, "give-up", &[Watch::GaveUp], |step| {
//!         let cancel = CancelOrder { reason: CancellationReason::PaymentTimeout, refund_required: false, detail: None };
//!         step.send("cancel", "ord-1", cancel);
//!         Watch::GaveUp
//!     })
//!     .build()
//!     .unwrap();
//! let scenario = Scenario::new(definition).await;
//! let order = a4co_testkit::example_envelope::<OrderCreated>("ord-1").into_any();
//! scenario.when(&order).await;
//! assert_eq!(scenario.state("confirmation-watch/ord-1").await, Some(Watch::Waiting));
//!
//! // Nobody confirms: after an hour the saga cancels the order.
//! scenario.when_time_passes(Duration::from_secs(3601)).await;
//! assert_eq!(scenario.take_sent_of::<CancelOrder>().len(), 1);
//! assert_eq!(scenario.state("confirmation-watch/ord-1").await, Some(Watch::GaveUp));
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use a4co_events::{AnyMessage, Envelope, Message};
use a4co_saga::{Applied, Data, Definition, Instance, MemoryStore, Runtime, State, VirtualClock};
use chrono::{DateTime, Utc};

use crate::bus::RecordingBus;

/// When a scenario's virtual clock starts: 2026-01-15 10:00:00 UTC, as the catalog examples.
pub fn scenario_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// A saga under test. See the [module docs](self).
pub struct Scenario<D, S> {
    runtime: Mutex<Runtime<D, S, RecordingBus, MemoryStore>>,
    definition: Definition<D, S>,
    bus: RecordingBus,
    store: MemoryStore,
    clock: VirtualClock,
    seen: Arc<Mutex<usize>>,
}

impl<D, S> std::fmt::Debug for Scenario<D, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").finish_non_exhaustive()
    }
}

impl<D: Data, S: State> Scenario<D, S> {
    /// `definition` on a fresh recording bus, store and virtual clock.
    pub async fn new(definition: Definition<D, S>) -> Self {
        let bus = RecordingBus::new().await;
        let store = MemoryStore::new();
        let clock = VirtualClock::at(scenario_start());
        let runtime =
            Runtime::new(definition.clone(), bus.clone(), store.clone()).clock(clock.clone());
        Scenario {
            runtime: Mutex::new(runtime),
            definition,
            bus,
            store,
            clock,
            seen: Arc::default(),
        }
    }

    fn runtime(&self) -> Runtime<D, S, RecordingBus, MemoryStore> {
        self.runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The runtime under test.
    pub fn current_runtime(&self) -> Runtime<D, S, RecordingBus, MemoryStore> {
        self.runtime()
    }

    /// The recording bus (what was published, and a bus to subscribe to).
    pub fn bus(&self) -> &RecordingBus {
        &self.bus
    }

    /// The in-memory store holding the scenario's instances, to inspect them.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Applies each message in order, as history.
    ///
    /// # Panics
    /// When the runtime fails on one (the panic names it).
    pub async fn given<'m>(&self, messages: impl IntoIterator<Item = &'m Envelope<AnyMessage>>) {
        for m in messages {
            self.when(m).await;
        }
    }

    /// Applies one message and says what the runtime did with it.
    ///
    /// # Panics
    /// When the runtime fails on it (the panic names the message and the error).
    pub async fn when(&self, message: &Envelope<AnyMessage>) -> Applied {
        self.runtime()
            .handle(message)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", message.event_type(), message.event_id))
    }

    /// Applies one message and returns the runtime's error, if any.
    ///
    /// # Errors
    /// The runtime's.
    pub async fn try_when(
        &self,
        message: &Envelope<AnyMessage>,
    ) -> Result<Applied, a4co_saga::RuntimeError> {
        self.runtime().handle(message).await
    }

    /// Moves the clock by `by` and fires the timers then due; returns how many instances
    /// they changed.
    ///
    /// # Panics
    /// When the runtime fails.
    pub async fn when_time_passes(&self, by: Duration) -> usize {
        self.clock.advance(by);
        self.runtime()
            .fire_due_timers()
            .await
            .unwrap_or_else(|e| panic!("firing timers: {e}"))
    }

    /// The next instance saved does not publish its messages, as if the process died right
    /// after the save. [`Scenario::restart`] brings them out.
    pub fn crash_after_next_save(&self) {
        self.runtime().lose_next_publishes(1);
    }

    /// A new runtime on the same store, bus and clock, which re-sends what was saved but not
    /// published (as a restarted service does). Returns how many instances had some.
    ///
    /// # Panics
    /// When re-sending fails.
    pub async fn restart(&self) -> usize {
        let fresh = Runtime::new(
            self.definition.clone(),
            self.bus.clone(),
            self.store.clone(),
        )
        .clock(self.clock.clone());
        *self.runtime.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        fresh
            .resend_pending()
            .await
            .unwrap_or_else(|e| panic!("re-sending after restart: {e}"))
    }

    /// The instance `saga_id`, as stored.
    ///
    /// # Panics
    /// When the store cannot read it.
    pub async fn instance(&self, saga_id: &str) -> Option<Instance<D, S>> {
        self.runtime()
            .instance(saga_id)
            .await
            .unwrap_or_else(|e| panic!("{saga_id}: {e}"))
    }

    /// The state of instance `saga_id`.
    pub async fn state(&self, saga_id: &str) -> Option<S> {
        self.instance(saga_id).await.map(|i| i.state)
    }

    /// Every message published (and stored by the broker) so far.
    pub fn sent(&self) -> Vec<Envelope<AnyMessage>> {
        self.bus.all_published()
    }

    /// The messages published since the last `take_sent*` call.
    pub fn take_sent(&self) -> Vec<Envelope<AnyMessage>> {
        let all = self.bus.all_published();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let new = all.get(*seen..).map(<[_]>::to_vec).unwrap_or_default();
        *seen = all.len();
        new
    }

    /// The messages of type `M` published since the last `take_sent*` call (others taken
    /// too are dropped).
    pub fn take_sent_of<M>(&self) -> Vec<Envelope<M>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.take_sent()
            .into_iter()
            .filter_map(|m| m.downcast::<M>().ok())
            .collect()
    }

    /// Every message of type `M` published so far.
    pub fn sent_of<M>(&self) -> Vec<Envelope<M>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.sent()
            .into_iter()
            .filter_map(|m| m.downcast::<M>().ok())
            .collect()
    }
}

/// What a stand-in answers to one message: the replies to publish (none: stay silent).
type Answer = Arc<dyn Fn(&Envelope<AnyMessage>) -> Vec<Envelope<AnyMessage>> + Send + Sync>;

/// Stand-ins for the services a saga talks to, on a real bus: each answers the message
/// types it takes with a closure (typically through a shared ledger the test reads), once
/// per message id, as an idempotent service would (a redelivery is answered with the same
/// replies, not run again). Build one per test:
///
/// ```
/// use a4co_events::catalog::order::{ConfirmOrder, OrderConfirmed};
/// use a4co_events::{Envelope, Message};
/// use a4co_testkit::saga::Responders;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = a4co_events::bus::MemoryBus::provisioned().await?;
/// let responders = Responders::new().on::<ConfirmOrder>("order-sim", |command| {
///     let confirmed = OrderConfirmed::example();
///     vec![Envelope::caused_by(command, "order-service", &command.aggregate_id, confirmed).into_any()]
/// });
/// let handles = responders.start(&bus).await?;
/// # drop(handles);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Responders {
    /// By service: the message types it takes, with their answers.
    services: Vec<(String, Vec<(&'static str, Answer)>)>,
}

impl std::fmt::Debug for Responders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<&str> = self.services.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("Responders")
            .field("services", &services)
            .finish()
    }
}

impl Responders {
    /// No stand-ins yet.
    pub fn new() -> Self {
        Responders::default()
    }

    /// The stand-in `service` (its consumer's name) answers each message of type `M` with
    /// what `answer` returns.
    #[must_use]
    pub fn on<M>(
        mut self,
        service: &str,
        answer: impl Fn(&Envelope<M>) -> Vec<Envelope<AnyMessage>> + Send + Sync + 'static,
    ) -> Self
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        let typed: Answer =
            Arc::new(
                move |message: &Envelope<AnyMessage>| match message.clone().downcast::<M>() {
                    Ok(message) => answer(&message),
                    Err(_) => Vec::new(),
                },
            );
        match self.services.iter_mut().find(|(s, _)| s == service) {
            Some((_, answers)) => answers.push((M::TYPE, typed)),
            None => self
                .services
                .push((service.to_owned(), vec![(M::TYPE, typed)])),
        }
        self
    }

    /// Subscribes every stand-in to `bus` (one durable consumer `<service>_commands` each,
    /// 64 messages at once) and publishes their answers.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start<B>(
        &self,
        bus: &B,
    ) -> Result<Vec<a4co_events::bus::SubscriptionHandle>, a4co_events::bus::SubscribeError>
    where
        B: a4co_events::bus::Publisher + a4co_events::bus::Subscriber,
    {
        use a4co_events::bus::{HandlerError, Subscription};

        let mut handles = Vec::new();
        for (service, answers) in &self.services {
            let mut subscription = Subscription::new(service, "commands").max_in_flight(64);
            for (event_type, _) in answers {
                subscription = subscription.subject(*event_type);
            }
            let answers = Arc::new(answers.clone());
            // Each message id answered once; a redelivery gets the same replies again
            // (same ids: the broker drops what it stored already).
            let answered: Arc<Mutex<std::collections::HashMap<_, Vec<Envelope<AnyMessage>>>>> =
                Arc::default();
            let publisher = bus.clone();
            let handle = bus
                .subscribe(subscription, move |message: Envelope<AnyMessage>, _| {
                    let answers = Arc::clone(&answers);
                    let answered = Arc::clone(&answered);
                    let publisher = publisher.clone();
                    async move {
                        let replies = answered
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(message.event_id)
                            .or_insert_with(|| {
                                answers
                                    .iter()
                                    .find(|(t, _)| *t == message.event_type())
                                    .map(|(_, answer)| answer(&message))
                                    .unwrap_or_default()
                            })
                            .clone();
                        for reply in &replies {
                            publisher
                                .publish(reply)
                                .await
                                .map_err(HandlerError::retryable)?;
                        }
                        Ok(())
                    }
                })
                .await?;
            handles.push(handle);
        }
        Ok(handles)
    }
}

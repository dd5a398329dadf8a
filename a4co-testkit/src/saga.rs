//! Given/when/then for sagas: a [`Scenario`] runs a saga definition on a recording
//! in-memory bus, an in-memory store and a virtual clock, and feeds it messages directly
//! (no consumer in between), so every step is deterministic. It can replay duplicates, move
//! time, and crash the runtime between saving an instance and publishing its messages.
//!
//! ```
//! use std::time::Duration;
//! use a4co_events::catalog::inventory::ReserveStock;
//! use a4co_events::catalog::order::{CancelOrder, OrderCreated};
//! use a4co_saga::fulfillment::{self, Phase};
//! use a4co_testkit::saga::Scenario;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let scenario = Scenario::new(fulfillment::definition(Default::default()).unwrap()).await;
//! let order = a4co_testkit::example_envelope::<OrderCreated>("ord-1").into_any();
//! scenario.when(&order).await;
//! assert_eq!(scenario.take_sent_of::<ReserveStock>().len(), 2);
//! assert_eq!(scenario.state("order-fulfillment/ord-1").await, Some(Phase::Reserving));
//!
//! // Inventory never answers: the stock timer cancels the order.
//! scenario.when_time_passes(Duration::from_secs(121)).await;
//! assert_eq!(scenario.take_sent_of::<CancelOrder>().len(), 1);
//! assert_eq!(scenario.state("order-fulfillment/ord-1").await, Some(Phase::Cancelled));
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

    /// The store.
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

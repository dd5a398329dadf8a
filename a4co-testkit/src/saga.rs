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

/// How the simulated participants of the fulfillment saga behave.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Units on hand per product; a product not listed has none.
    pub stock: std::collections::HashMap<String, u32>,
    /// Orders whose payment is declined.
    pub declined: std::collections::HashSet<String>,
    /// Orders whose payment is never answered.
    pub silent_payments: std::collections::HashSet<String>,
    /// Orders whose confirm command is never answered.
    pub silent_confirms: std::collections::HashSet<String>,
    /// Products whose reservations are never answered.
    pub silent_stock: std::collections::HashSet<String>,
}

/// What the simulated participants did, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Reservations made: (order, product) -> units.
    pub reserved: std::collections::BTreeMap<(String, String), u32>,
    /// Reservations released, by reservation id, with how many times a release came.
    pub released: std::collections::BTreeMap<String, u32>,
    /// Orders charged, with how many times.
    pub charged: std::collections::BTreeMap<String, u32>,
    /// Orders refunded, with how many times.
    pub refunded: std::collections::BTreeMap<String, u32>,
    /// Orders confirmed, with how many times.
    pub confirmed: std::collections::BTreeMap<String, u32>,
    /// Orders cancelled, with the reason of each cancel command.
    pub cancelled: std::collections::BTreeMap<String, Vec<String>>,
    /// Units on hand now, per product.
    pub stock: std::collections::HashMap<String, u32>,
}

/// Inventory, payment and the order service's command side, simulated in process on a
/// bus: they answer the fulfillment saga's commands as the real services would (stock that
/// runs out, declined and unanswered payments) and keep a [`Ledger`]. Each command id is
/// handled once.
#[derive(Clone, Debug)]
pub struct Participants {
    state: Arc<
        Mutex<(
            Behaviour,
            Ledger,
            std::collections::HashSet<a4co_events::EventId>,
        )>,
    >,
}

impl Participants {
    /// Participants that behave as `behaviour` says.
    pub fn new(behaviour: Behaviour) -> Self {
        let ledger = Ledger {
            stock: behaviour.stock.clone(),
            ..Ledger::default()
        };
        Participants {
            state: Arc::new(Mutex::new((behaviour, ledger, Default::default()))),
        }
    }

    /// What they did so far.
    pub fn ledger(&self) -> Ledger {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Subscribes them to `bus` (as `inventory-sim`, `payment-sim`, `order-sim`).
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
        use a4co_events::catalog::inventory::{ReleaseStock, ReserveStock};
        use a4co_events::catalog::order::{CancelOrder, ConfirmOrder};
        use a4co_events::catalog::payment::{ProcessPayment, RefundPayment};

        let mut handles = Vec::new();
        let subscriptions = [
            Subscription::new("inventory-sim", "commands")
                .to::<ReserveStock>()
                .to::<ReleaseStock>(),
            Subscription::new("payment-sim", "commands")
                .to::<ProcessPayment>()
                .to::<RefundPayment>(),
            Subscription::new("order-sim", "commands")
                .to::<ConfirmOrder>()
                .to::<CancelOrder>(),
        ];
        for subscription in subscriptions {
            let me = self.clone();
            let publisher = bus.clone();
            let handle = bus
                .subscribe(
                    subscription.max_in_flight(64),
                    move |message: Envelope<AnyMessage>, _| {
                        let me = me.clone();
                        let publisher = publisher.clone();
                        async move {
                            if let Some(reply) = me.answer(&message) {
                                publisher
                                    .publish(&reply)
                                    .await
                                    .map_err(HandlerError::retryable)?;
                            }
                            Ok(())
                        }
                    },
                )
                .await?;
            handles.push(handle);
        }
        Ok(handles)
    }

    /// The reply to one command, after updating the ledger (`None`: no reply, or a
    /// command seen before).
    fn answer(&self, command: &Envelope<AnyMessage>) -> Option<Envelope<AnyMessage>> {
        use a4co_events::catalog::inventory::{
            FailedItem, ReleaseReason, StockReleased, StockReservationFailed, StockReserved,
        };
        use a4co_events::catalog::order::{OrderCancelled, OrderConfirmed};
        use a4co_events::catalog::payment::{PaymentFailed, PaymentSucceeded};

        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (behaviour, ledger, seen) = &mut *guard;
        if !seen.insert(command.event_id) {
            return None;
        }
        let now = command.occurred_at;
        let reply = |source: &str, aggregate: &str, data: AnyMessage| {
            Some(Envelope::caused_by(command, source, aggregate, data))
        };
        match &command.data {
            AnyMessage::ReserveStock(_)
                if behaviour.silent_stock.contains(&command.aggregate_id) =>
            {
                None
            }
            AnyMessage::ReserveStock(c) => {
                let product = command.aggregate_id.clone();
                let on_hand = ledger.stock.get(&product).copied().unwrap_or(0);
                if on_hand >= c.quantity {
                    ledger.stock.insert(product.clone(), on_hand - c.quantity);
                    *ledger
                        .reserved
                        .entry((c.order_id.clone(), product.clone()))
                        .or_default() += c.quantity;
                    let data = StockReserved {
                        order_id: c.order_id.clone(),
                        artisan_id: "art-sim".to_owned(),
                        quantity_reserved: c.quantity,
                        remaining_stock: on_hand - c.quantity,
                        reservation_expiry: c.expires_at,
                        reservation_id: format!("res-{}-{product}", c.order_id),
                        unit_price: a4co_events::Money::eur(100),
                    };
                    reply("inventory-service", &product, data.into())
                } else {
                    let data = StockReservationFailed {
                        order_id: c.order_id.clone(),
                        reason: "insufficient stock".to_owned(),
                        failed_items: vec![FailedItem {
                            product_id: product.clone(),
                            requested_quantity: c.quantity,
                            available_quantity: on_hand,
                        }],
                    };
                    reply("inventory-service", &product, data.into())
                }
            }
            AnyMessage::ReleaseStock(c) => {
                let product = command.aggregate_id.clone();
                *ledger.released.entry(c.reservation_id.clone()).or_default() += 1;
                let units = ledger
                    .reserved
                    .get(&(c.order_id.clone(), product.clone()))
                    .copied()
                    .unwrap_or(0);
                let on_hand = ledger.stock.entry(product.clone()).or_default();
                *on_hand += units;
                let data = StockReleased {
                    order_id: c.order_id.clone(),
                    reservation_id: c.reservation_id.clone(),
                    quantity_released: units.max(1),
                    reason: ReleaseReason::OrderCancelled,
                    new_available_stock: *on_hand,
                    released_at: now,
                };
                reply("inventory-service", &product, data.into())
            }
            AnyMessage::ProcessPayment(c) => {
                if behaviour.silent_payments.contains(&c.order_id) {
                    return None;
                }
                let payment = format!("pay-{}", c.order_id);
                if behaviour.declined.contains(&c.order_id) {
                    let data = PaymentFailed {
                        order_id: c.order_id.clone(),
                        error_code: "card-declined".to_owned(),
                        error_message: "declined by the simulated gateway".to_owned(),
                        gateway_error_code: None,
                        retryable: false,
                        failed_at: now,
                        attempt_number: 1,
                        max_attempts: 1,
                    };
                    return reply("payment-service", &payment, data.into());
                }
                *ledger.charged.entry(c.order_id.clone()).or_default() += 1;
                let zero = a4co_events::Money::eur(0);
                let data = PaymentSucceeded {
                    order_id: c.order_id.clone(),
                    transaction_id: format!("txn-{}", c.order_id),
                    gateway_transaction_id: format!("sim-{}", c.order_id),
                    amount: c.amount,
                    processed_at: now,
                    payment_gateway: "sim".to_owned(),
                    gateway_fee: zero,
                    marketplace_fee: zero,
                    artisan_amount: c.amount,
                };
                reply("payment-service", &payment, data.into())
            }
            AnyMessage::RefundPayment(c) => {
                *ledger.refunded.entry(c.order_id.clone()).or_default() += 1;
                None
            }
            AnyMessage::ConfirmOrder(_)
                if behaviour.silent_confirms.contains(&command.aggregate_id) =>
            {
                None
            }
            AnyMessage::ConfirmOrder(_) => {
                *ledger
                    .confirmed
                    .entry(command.aggregate_id.clone())
                    .or_default() += 1;
                let data = OrderConfirmed {
                    confirmed_at: now,
                    estimated_delivery_date: now,
                    payment_reference: "sim".to_owned(),
                    payment_id: None,
                    tracking_number: None,
                    artisan_notified: false,
                };
                reply("order-service", &command.aggregate_id, data.into())
            }
            AnyMessage::CancelOrder(c) => {
                let reason = serde_json::to_value(c.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                ledger
                    .cancelled
                    .entry(command.aggregate_id.clone())
                    .or_default()
                    .push(reason);
                let data = OrderCancelled {
                    reason: c.reason,
                    cancelled_at: now,
                    refund_required: c.refund_required,
                    refund_amount: None,
                    cancelled_by: "system".to_owned(),
                    compensation_actions: Vec::new(),
                };
                reply("order-service", &command.aggregate_id, data.into())
            }
            _ => None,
        }
    }
}

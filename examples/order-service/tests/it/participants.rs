//! Inventory, payment and the order service's command side, simulated on a bus with the
//! testkit's [`Responders`]: they answer the fulfillment saga's commands as the real services
//! would (stock that runs out, declined and unanswered payments) and keep a [`Ledger`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use a4co_events::bus::{Publisher, SubscribeError, Subscriber, SubscriptionHandle};
use a4co_events::catalog::inventory::{
    FailedItem, ReleaseReason, ReleaseStock, ReserveStock, StockReleased, StockReservationFailed,
    StockReserved,
};
use a4co_events::catalog::order::{CancelOrder, ConfirmOrder, OrderCancelled, OrderConfirmed};
use a4co_events::catalog::payment::{
    PaymentFailed, PaymentSucceeded, ProcessPayment, RefundPayment,
};
use a4co_events::{AnyMessage, Envelope, Money};
use a4co_testkit::saga::Responders;

/// How the simulated participants behave.
#[derive(Clone, Debug, Default)]
pub(crate) struct Behaviour {
    /// Units on hand per product; a product not listed has none.
    pub(crate) stock: HashMap<String, u32>,
    /// Orders whose payment is declined.
    pub(crate) declined: HashSet<String>,
    /// Orders whose payment is never answered.
    pub(crate) silent_payments: HashSet<String>,
    /// Orders whose confirm command is never answered.
    pub(crate) silent_confirms: HashSet<String>,
    /// Products whose reservations are never answered.
    pub(crate) silent_stock: HashSet<String>,
}

/// What the simulated participants did, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// Reservations made: (order, product) -> units.
    pub(crate) reserved: BTreeMap<(String, String), u32>,
    /// Reservations released, by reservation id, with how many times a release came.
    pub(crate) released: BTreeMap<String, u32>,
    /// Orders charged, with how many times.
    pub(crate) charged: BTreeMap<String, u32>,
    /// Orders refunded, with how many times.
    pub(crate) refunded: BTreeMap<String, u32>,
    /// Orders confirmed, with how many times.
    pub(crate) confirmed: BTreeMap<String, u32>,
    /// Orders cancelled, with the reason of each cancel command.
    pub(crate) cancelled: BTreeMap<String, Vec<String>>,
    /// Units on hand now, per product.
    pub(crate) stock: HashMap<String, u32>,
}

/// The three simulated participants, sharing one ledger.
#[derive(Clone, Debug)]
pub(crate) struct Participants {
    state: Arc<Mutex<(Behaviour, Ledger)>>,
}

/// What one simulated handler does with a command of type `M`.
type Handler<M> = fn(&mut Behaviour, &mut Ledger, &Envelope<M>) -> Vec<Envelope<AnyMessage>>;

fn reply<M>(
    command: &Envelope<M>,
    source: &str,
    aggregate: &str,
    data: impl Into<AnyMessage>,
) -> Vec<Envelope<AnyMessage>> {
    vec![Envelope::caused_by(command, source, aggregate, data.into())]
}

impl Participants {
    /// Participants that behave as `behaviour` says.
    pub(crate) fn new(behaviour: Behaviour) -> Self {
        let ledger = Ledger {
            stock: behaviour.stock.clone(),
            ..Ledger::default()
        };
        Participants {
            state: Arc::new(Mutex::new((behaviour, ledger))),
        }
    }

    /// What they did so far.
    pub(crate) fn ledger(&self) -> Ledger {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Subscribes them to `bus` (as `inventory-sim`, `payment-sim`, `order-sim`).
    pub(crate) async fn start<B: Publisher + Subscriber>(
        &self,
        bus: &B,
    ) -> Result<Vec<SubscriptionHandle>, SubscribeError> {
        Responders::new()
            .on("inventory-sim", self.handler(reserve))
            .on("inventory-sim", self.handler(release))
            .on("payment-sim", self.handler(pay))
            .on("payment-sim", self.handler(refund))
            .on("order-sim", self.handler(confirm))
            .on("order-sim", self.handler(cancel))
            .start(bus)
            .await
    }

    /// `f`, run on the shared behaviour and ledger.
    fn handler<M: 'static>(
        &self,
        f: Handler<M>,
    ) -> impl Fn(&Envelope<M>) -> Vec<Envelope<AnyMessage>> + Send + Sync + 'static {
        let state = Arc::clone(&self.state);
        move |command| {
            let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
            let (behaviour, ledger) = &mut *guard;
            f(behaviour, ledger, command)
        }
    }
}

fn reserve(
    behaviour: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<ReserveStock>,
) -> Vec<Envelope<AnyMessage>> {
    let c = &command.data;
    let product = command.aggregate_id.clone();
    if behaviour.silent_stock.contains(&product) {
        return Vec::new();
    }
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
            unit_price: Money::eur(100),
        };
        reply(command, "inventory-service", &product, data)
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
        reply(command, "inventory-service", &product, data)
    }
}

fn release(
    _: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<ReleaseStock>,
) -> Vec<Envelope<AnyMessage>> {
    let c = &command.data;
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
        released_at: command.occurred_at,
    };
    reply(command, "inventory-service", &product, data)
}

fn pay(
    behaviour: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<ProcessPayment>,
) -> Vec<Envelope<AnyMessage>> {
    let c = &command.data;
    if behaviour.silent_payments.contains(&c.order_id) {
        return Vec::new();
    }
    let now = command.occurred_at;
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
        return reply(command, "payment-service", &payment, data);
    }
    *ledger.charged.entry(c.order_id.clone()).or_default() += 1;
    let zero = Money::eur(0);
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
    reply(command, "payment-service", &payment, data)
}

fn refund(
    _: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<RefundPayment>,
) -> Vec<Envelope<AnyMessage>> {
    let order = command.data.order_id.clone();
    *ledger.refunded.entry(order).or_default() += 1;
    Vec::new()
}

fn confirm(
    behaviour: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<ConfirmOrder>,
) -> Vec<Envelope<AnyMessage>> {
    if behaviour.silent_confirms.contains(&command.aggregate_id) {
        return Vec::new();
    }
    *ledger
        .confirmed
        .entry(command.aggregate_id.clone())
        .or_default() += 1;
    let now = command.occurred_at;
    let data = OrderConfirmed {
        confirmed_at: now,
        estimated_delivery_date: now,
        payment_reference: "sim".to_owned(),
        payment_id: None,
        tracking_number: None,
        artisan_notified: false,
    };
    reply(command, "order-service", &command.aggregate_id, data)
}

fn cancel(
    _: &mut Behaviour,
    ledger: &mut Ledger,
    command: &Envelope<CancelOrder>,
) -> Vec<Envelope<AnyMessage>> {
    let c = &command.data;
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
        cancelled_at: command.occurred_at,
        refund_required: c.refund_required,
        refund_amount: None,
        cancelled_by: "system".to_owned(),
        compensation_actions: Vec::new(),
    };
    reply(command, "order-service", &command.aggregate_id, data)
}

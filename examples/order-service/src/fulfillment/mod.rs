//! The order fulfillment saga of design-v2: reserve stock for every item, charge the
//! payment, confirm the order; on the way out, release what was reserved and refund what
//! was charged.
//!
//! ```text
//! order.created ─► reserving ─(all reserved)─► paying ─(payment.succeeded)─► confirming ─(order.confirmed)─► confirmed
//! ```
//!
//! - A line that cannot be reserved cancels the order (`inventory-unavailable`); the lines
//!   already reserved are released, and so are reservations that arrive late (state
//!   `releasing`, until every line answered or the stock timer runs out).
//! - A failed payment releases the reservations and cancels the order (`payment-failed`).
//! - A payment not answered in time releases them and cancels the order
//!   (`payment-timeout`); a payment that still succeeds afterwards is refunded (state
//!   `awaiting-late-payment`).
//! - A cancellation by the order service while paying or confirming releases the stock and
//!   refunds a payment already taken.
//! - A paid order the order service does not confirm within `confirm_timeout` (its
//!   `order.cmd.confirm` dead-lettered, or lost) is asked again, [`CONFIRM_SENDS`] times in
//!   all; then the saga refunds the payment, releases the stock and cancels the order
//!   (reason `payment-failed`, the detail saying why: the catalog has no better reason).
//!   Every state but the final ones has a timer.
//! - Reservations ask to be held for 30 minutes by default; the payment timer must run out
//!   before they lapse, and the payment command expires with it (`expiresAt`: the payment
//!   service charges nothing after). Inventory keeps a paid order's holds until the order
//!   is confirmed; a hold that lapsed all the same (`inventory.stock_released`,
//!   `reservation-expired`) cancels the order, paid or even confirmed, refunding the
//!   payment.
//! - A payment success that reaches a cancelled saga, at any age, or a second payment a
//!   paid one did not ask for, is refunded (the finished saga answers it and stays
//!   finished).
//!
//! It sends catalog commands only: `inventory.cmd.reserve_stock`,
//! `inventory.cmd.release_stock`, `payment.cmd.process`, `payment.cmd.refund`,
//! `order.cmd.confirm`, `order.cmd.cancel`.

use std::time::Duration;

use a4co_events::Money;
use a4co_events::catalog::inventory::{
    ReleaseReason, ReleaseStock, StockReleased, StockReservationFailed, StockReserved,
};
use a4co_events::catalog::order::{CancelOrder, CancellationReason};
use a4co_events::catalog::payment::{PaymentFailed, PaymentSucceeded};
use serde::{Deserialize, Serialize};

use a4co_saga::{Definition, DefinitionError, State, Step};

mod confirmation;
mod late;
mod payment;
mod stock;

/// The saga's name: instances are `order-fulfillment/<order id>`.
pub const NAME: &str = "order-fulfillment";

/// The definition's version. Version 2 answers late messages (`late.rs`, the payment
/// command's expiry); it has the states and data of version 1, whose instances move onto it
/// as they are ([`migrate_from_1`]).
pub const VERSION: u32 = 2;

/// Moves a version-1 instance onto version 2: the same state and data (version 2 only
/// adds reactions and an optional field).
pub fn migrate_from_1(state: Phase, data: Fulfillment) -> (Phase, Fulfillment) {
    (state, data)
}

/// Where the fulfillment saga stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, State)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for inventory's answer on every line.
    Reserving,
    /// Cancelling for lack of stock: releasing reservations that still come in.
    Releasing,
    /// Waiting for the payment.
    Paying,
    /// Cancelled before the payment answered: a late success is refunded.
    AwaitingLatePayment,
    /// Paid; waiting for the order service to confirm.
    Confirming,
    /// Done: the order is confirmed.
    #[state(final)]
    Confirmed,
    /// Done: the order is cancelled, everything taken given back. A saga that failed:
    /// compensated when it had holds or a payment to undo.
    #[state(final, outcome = "failed")]
    Cancelled,
}

/// Where one line of the order stands with inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum LineStatus {
    /// Asked; no answer yet.
    #[default]
    Asked,
    /// Held under this reservation.
    Reserved {
        /// The reservation.
        reservation_id: String,
    },
    /// Could not be held.
    Failed,
    /// Was held, and released.
    Released {
        /// The reservation.
        reservation_id: String,
    },
}

/// One product of the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// The product.
    pub product_id: String,
    /// Units of it in the order (lines of one product are added up).
    pub quantity: u32,
    /// Where it stands.
    pub status: LineStatus,
}

/// A payment taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    /// Our transaction id (what a refund names).
    pub payment_id: String,
    /// The gateway's reference.
    pub reference: String,
    /// How much.
    pub amount: Money,
}

/// What the fulfillment saga keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fulfillment {
    /// The order.
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// How much.
    pub total: Option<Money>,
    /// The customer's stored payment method, if chosen.
    pub payment_method_id: Option<String>,
    /// One line per product.
    pub lines: Vec<Line>,
    /// The payment, once taken.
    pub charge: Option<Charge>,
    /// Why the saga is cancelling, once it is.
    pub cancellation: Option<CancellationReason>,
    /// Whether the order service cancelled the order itself (then the saga sends no
    /// `order.cmd.cancel`).
    pub cancelled_by_order: bool,
    /// What went wrong, for people.
    pub detail: Option<String>,
    /// A refund sent for a payment that arrived after the cancellation.
    pub refunded_late_payment: bool,
    /// The payments refunded because the saga did not keep them (late, or a second one).
    #[serde(default)]
    pub refunded: Vec<String>,
    /// How many times `order.cmd.confirm` was sent (it is sent again when the order service
    /// does not answer within `confirm_timeout`).
    #[serde(default)]
    pub confirm_sends: u32,
}

impl Fulfillment {
    pub(crate) fn line(&mut self, product_id: &str) -> Option<&mut Line> {
        self.lines.iter_mut().find(|l| l.product_id == product_id)
    }

    pub(crate) fn waiting_for_stock(&self) -> bool {
        self.lines.iter().any(|l| l.status == LineStatus::Asked)
    }
}

/// The saga's timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long inventory holds reserved units unless the order is confirmed (design-v2:
    /// 30 minutes).
    pub reservation_ttl: Duration,
    /// How long to wait for inventory to answer every line (default 2 minutes).
    pub stock_timeout: Duration,
    /// How long to wait for the payment (default 5 minutes; under the reservation TTL).
    pub payment_timeout: Duration,
    /// How long after a payment timeout a late success is still refunded (default 1 hour).
    pub late_payment_window: Duration,
    /// How long to wait for the order service to confirm a paid order before sending the
    /// confirmation again (default 1 minute); after [`CONFIRM_SENDS`] sends unanswered,
    /// the saga refunds the payment, releases the stock and cancels the order.
    pub confirm_timeout: Duration,
    /// How long a finished instance is kept in the store before it leaves (default 7
    /// days): a message reaching it meanwhile is still recognised.
    pub finished_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reservation_ttl: Duration::from_secs(30 * 60),
            stock_timeout: Duration::from_secs(2 * 60),
            payment_timeout: Duration::from_secs(5 * 60),
            late_payment_window: Duration::from_secs(3600),
            confirm_timeout: Duration::from_secs(60),
            finished_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub(crate) const STOCK_TIMER: &str = "stock";
pub(crate) const PAYMENT_TIMER: &str = "payment";
pub(crate) const LATE_PAYMENT_TIMER: &str = "late-payment";
pub(crate) const CONFIRM_TIMER: &str = "confirm";

/// How many times a paid saga sends `order.cmd.confirm` before it gives up and compensates
/// (a confirmation dead-lettered by the order service, or lost with an outbox).
pub const CONFIRM_SENDS: u32 = 3;

pub(crate) fn cancel_order(step: &mut Step<Fulfillment>) -> Phase {
    let data = &step.data;
    if !data.cancelled_by_order {
        let cancel = CancelOrder {
            reason: data
                .cancellation
                .unwrap_or(CancellationReason::InventoryUnavailable),
            refund_required: data.charge.is_some(),
            detail: data.detail.clone(),
        };
        let order = data.order_id.clone();
        step.send("cancel", order, cancel);
    }
    Phase::Cancelled
}

/// Releases what is reserved (the compensations, last first); waits in `releasing` while
/// lines are unanswered, else cancels.
pub(crate) fn give_up_on_stock(
    step: &mut Step<Fulfillment>,
    reason: CancellationReason,
    stock_timeout: Duration,
) -> Phase {
    step.data.cancellation.get_or_insert(reason);
    step.cancel(STOCK_TIMER);
    release_all(step);
    if step.data.waiting_for_stock() {
        step.schedule(STOCK_TIMER, stock_timeout);
        Phase::Releasing
    } else {
        cancel_order(step)
    }
}

/// The order fulfillment saga, run by `order-service`: its reactions live one file per
/// group (stock, payment, confirmation).
///
/// # Errors
/// A [`DefinitionError`] when the payment timeout does not end before reservations lapse,
/// or a timing is zero.
pub fn definition(settings: Settings) -> Result<Definition<Fulfillment, Phase>, DefinitionError> {
    let reject = |problem: &str| Err(DefinitionError::settings(NAME, problem));
    if settings.payment_timeout >= settings.reservation_ttl {
        return reject(
            "payment_timeout must be shorter than reservation_ttl: a payment must not outlive the stock held for it",
        );
    }
    if [
        settings.reservation_ttl,
        settings.stock_timeout,
        settings.payment_timeout,
        settings.late_payment_window,
        settings.confirm_timeout,
    ]
    .iter()
    .any(Duration::is_zero)
    {
        return reject("every timing must be above zero");
    }
    let builder = Definition::<Fulfillment, Phase>::builder(NAME, crate::NAME)
        .version(VERSION)
        .correlate::<StockReserved>(|m| m.order_id.clone())
        .correlate::<StockReservationFailed>(|m| m.order_id.clone())
        .correlate::<StockReleased>(|m| m.order_id.clone())
        .correlate::<PaymentSucceeded>(|m| m.order_id.clone())
        .correlate::<PaymentFailed>(|m| m.order_id.clone());
    let builder = stock::reactions(builder, &settings);
    let builder = payment::reactions(builder, &settings);
    let builder = confirmation::reactions(builder, &settings);
    late::reactions(builder).build()
}

/// The command that releases `reserved`.
pub(crate) fn release(reserved: &StockReserved) -> ReleaseStock {
    ReleaseStock {
        order_id: reserved.order_id.clone(),
        reservation_id: reserved.reservation_id.clone(),
        reason: ReleaseReason::OrderCancelled,
    }
}

/// Lines inventory never answered: given up on (their holds, if any, lapse at inventory).
pub(crate) fn give_up_unanswered(data: &mut Fulfillment) {
    for line in &mut data.lines {
        if line.status == LineStatus::Asked {
            line.status = LineStatus::Failed;
        }
    }
}

/// Undoes every completed step (the releases, and the refund once paid: last completed
/// first) and marks the reserved lines released.
pub(crate) fn release_all(step: &mut Step<Fulfillment>) {
    step.compensate();
    for line in &mut step.data.lines {
        if let LineStatus::Reserved { reservation_id } = &line.status {
            line.status = LineStatus::Released {
                reservation_id: reservation_id.clone(),
            };
        }
    }
}

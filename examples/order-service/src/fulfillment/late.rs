//! Late messages: what reaches the saga after it moved on. A hold that lapsed at inventory
//! (`inventory.stock_released`, `reservation-expired`) cancels an order not yet confirmed,
//! or one confirmed whose commit found no hold, giving back what was taken; a payment
//! success that reaches a cancelled saga, or a second one a confirmed saga did not ask
//! for, is refunded, however late it comes.

use a4co_events::Envelope;
use a4co_events::catalog::inventory::{ReleaseReason, StockReleased};
use a4co_events::catalog::order::CancellationReason;
use a4co_events::catalog::payment::{PaymentSucceeded, RefundPayment};
use a4co_saga::{Builder, Step};

use super::{Fulfillment, LineStatus, PAYMENT_TIMER, Phase, cancel_order, release_all};

/// The reactions to late messages, in `paying`, `confirming` and the final states.
pub(super) fn reactions(builder: Builder<Fulfillment, Phase>) -> Builder<Fulfillment, Phase> {
    use Phase::{Cancelled, Confirmed, Confirming, Paying};
    builder
        .on::<StockReleased>(Paying)
        .choose([Paying, Cancelled], |step, released| {
            hold_lapsed(step, &released, Paying)
        })
        .on::<StockReleased>(Confirming)
        .choose([Confirming, Cancelled], |step, released| {
            hold_lapsed(step, &released, Confirming)
        })
        .on::<StockReleased>(Confirmed)
        .choose([Confirmed, Cancelled], |step, released| {
            hold_lapsed(step, &released, Confirmed)
        })
        .on::<PaymentSucceeded>(Confirming)
        .to(Confirming, |step, paid| {
            refund_unasked(step, &paid, "a second payment for an order already paid");
        })
        .on::<PaymentSucceeded>(Cancelled)
        .to(Cancelled, |step, paid| {
            refund_unasked(step, &paid, "payment arrived after the order was cancelled");
        })
        .on::<PaymentSucceeded>(Confirmed)
        .to(Confirmed, |step, paid| {
            refund_unasked(step, &paid, "a second payment for an order already paid");
        })
}

/// A hold of this order lapsed at inventory: the order cannot be fulfilled. Releases what
/// is still held, refunds a payment taken, cancels the order (the customer is told by
/// `order.cancelled`). Any other release (the saga's own, another order's) changes
/// nothing.
fn hold_lapsed(
    step: &mut Step<Fulfillment>,
    released: &Envelope<StockReleased>,
    now: Phase,
) -> Phase {
    let product = &released.aggregate_id;
    let ours = step.data.line(product).is_some_and(|line| {
        matches!(&line.status, LineStatus::Reserved { reservation_id } if *reservation_id == released.data.reservation_id)
    });
    if released.data.reason != ReleaseReason::ReservationExpired || !ours {
        return now;
    }
    tracing::warn!(order = %step.data.order_id, product = %product, "a hold lapsed before the order was fulfilled; cancelling it");
    step.cancel(PAYMENT_TIMER);
    step.data.cancellation = Some(CancellationReason::InventoryUnavailable);
    step.data.detail = Some(format!(
        "the stock held for {product} was released before the order was fulfilled"
    ));
    release_all(step);
    cancel_order(step)
}

/// Refunds a payment the saga does not keep: neither the order's charge nor one already
/// refunded (each payment is refunded once, under its own step).
pub(super) fn refund_unasked(
    step: &mut Step<Fulfillment>,
    paid: &Envelope<PaymentSucceeded>,
    reason: &str,
) {
    let payment_id = &paid.data.transaction_id;
    let kept = step
        .data
        .charge
        .as_ref()
        .is_some_and(|c| c.payment_id == *payment_id);
    if kept || step.data.refunded.contains(payment_id) {
        return;
    }
    let order = step.data.order_id.clone();
    let refund = RefundPayment {
        payment_id: payment_id.clone(),
        order_id: order.clone(),
        amount: paid.data.amount,
        reason: reason.to_owned(),
    };
    step.send(&format!("refund/{payment_id}"), order, refund);
    step.data.refunded.push(payment_id.clone());
    step.data.refunded_late_payment = true;
}

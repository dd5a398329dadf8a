//! Confirming: paid, waiting for the order service to confirm the order. Unanswered, the
//! confirmation is sent again every `confirm_timeout`; after [`CONFIRM_SENDS`] sends the
//! saga gives up: it refunds the payment, releases the stock and cancels the order, so no
//! customer stays charged for an order left pending.

use a4co_events::catalog::order::{
    CancellationReason, ConfirmOrder, OrderCancelled, OrderConfirmed,
};
use a4co_saga::{Builder, Step};

use super::{
    CONFIRM_SENDS, CONFIRM_TIMER, Fulfillment, Phase, Settings, cancel_order, release_all,
};

/// The reactions of `confirming`.
pub(super) fn reactions(
    builder: Builder<Fulfillment, Phase>,
    settings: &Settings,
) -> Builder<Fulfillment, Phase> {
    use Phase::{Cancelled, Confirmed, Confirming};
    let confirm_timeout = settings.confirm_timeout;
    builder
        .on::<OrderConfirmed>(Confirming)
        .to(Confirmed, |step, _| step.cancel(CONFIRM_TIMER))
        .on::<OrderCancelled>(Confirming)
        .to(Cancelled, |step, cancelled| {
            step.cancel(CONFIRM_TIMER);
            step.data.cancelled_by_order = true;
            step.data.cancellation = Some(cancelled.data.reason);
            release_all(step);
        })
        .on_timeout(Confirming, CONFIRM_TIMER)
        .choose([Confirming, Cancelled], move |step| {
            if step.data.confirm_sends < CONFIRM_SENDS {
                confirm_again(step);
                step.schedule(CONFIRM_TIMER, confirm_timeout);
                return Confirming;
            }
            // The catalog has no reason for an order that could not be confirmed; the
            // detail says what happened.
            step.data.cancellation = Some(CancellationReason::PaymentFailed);
            step.data.detail = Some(format!(
                "the order service did not confirm the paid order after {CONFIRM_SENDS} requests; the payment is refunded"
            ));
            release_all(step);
            cancel_order(step)
        })
}

/// Sends `order.cmd.confirm` again, as a step of its own (its id differs from the first).
fn confirm_again(step: &mut Step<Fulfillment>) {
    let Some(charge) = step.data.charge.clone() else {
        return;
    };
    step.data.confirm_sends += 1;
    let confirm = ConfirmOrder {
        payment_id: charge.payment_id,
        payment_reference: charge.reference,
    };
    let order = step.data.order_id.clone();
    let name = format!("confirm-{}", step.data.confirm_sends);
    step.send(&name, order, confirm);
}

//! Paying: `paying` (the charge asked of payment) and `awaiting-late-payment` (cancelled
//! before payment answered: a late success is refunded).

use a4co_events::catalog::order::{ConfirmOrder, OrderCancelled};
use a4co_events::catalog::payment::{PaymentFailed, PaymentSucceeded, RefundPayment};
use a4co_saga::Builder;

use super::late::refund_unasked;
use super::{
    CONFIRM_TIMER, Charge, Fulfillment, LATE_PAYMENT_TIMER, PAYMENT_TIMER, Phase, Settings,
    cancel_order, release_all,
};
use a4co_events::catalog::order::CancellationReason;

/// The reactions of `paying` and `awaiting-late-payment`.
pub(super) fn reactions(
    builder: Builder<Fulfillment, Phase>,
    settings: &Settings,
) -> Builder<Fulfillment, Phase> {
    use Phase::{AwaitingLatePayment, Cancelled, Confirming, Paying};
    let late_payment_window = settings.late_payment_window;
    let confirm_timeout = settings.confirm_timeout;
    builder
        .on::<PaymentSucceeded>(Paying)
        .to(Confirming, move |step, paid| {
            step.cancel(PAYMENT_TIMER);
            let charge = Charge {
                payment_id: paid.data.transaction_id.clone(),
                reference: paid.data.gateway_transaction_id.clone(),
                amount: paid.data.amount,
            };
            let order = step.data.order_id.clone();
            let refund = RefundPayment {
                payment_id: charge.payment_id.clone(),
                order_id: order.clone(),
                amount: charge.amount,
                reason: "order cancelled after payment".to_owned(),
            };
            step.completed("pay", order.clone(), refund);
            let confirm = ConfirmOrder {
                payment_id: charge.payment_id.clone(),
                payment_reference: charge.reference.clone(),
            };
            step.data.charge = Some(charge);
            step.send("confirm", order, confirm);
            step.data.confirm_sends = 1;
            step.schedule(CONFIRM_TIMER, confirm_timeout);
        })
        .on::<PaymentFailed>(Paying)
        .to(Cancelled, |step, failed| {
            step.cancel(PAYMENT_TIMER);
            step.data.cancellation = Some(CancellationReason::PaymentFailed);
            step.data.detail = Some(format!(
                "{}: {}",
                failed.data.error_code, failed.data.error_message
            ));
            release_all(step);
            cancel_order(step);
        })
        .on_timeout(Paying, PAYMENT_TIMER)
        .to(AwaitingLatePayment, move |step| {
            step.data.cancellation = Some(CancellationReason::PaymentTimeout);
            step.data.detail = Some("the payment was not answered in time".to_owned());
            release_all(step);
            cancel_order(step);
            step.schedule(LATE_PAYMENT_TIMER, late_payment_window);
        })
        .on::<OrderCancelled>(Paying)
        .to(AwaitingLatePayment, move |step, cancelled| {
            step.cancel(PAYMENT_TIMER);
            step.data.cancelled_by_order = true;
            step.data.cancellation = Some(cancelled.data.reason);
            release_all(step);
            step.schedule(LATE_PAYMENT_TIMER, late_payment_window);
        })
        .on::<PaymentSucceeded>(AwaitingLatePayment)
        .to(Cancelled, |step, paid| {
            step.cancel(LATE_PAYMENT_TIMER);
            refund_unasked(step, &paid, "payment arrived after the order was cancelled");
        })
        .on::<PaymentFailed>(AwaitingLatePayment)
        .to(Cancelled, |step, _| {
            step.cancel(LATE_PAYMENT_TIMER);
        })
        .on_timeout(AwaitingLatePayment, LATE_PAYMENT_TIMER)
        .to(Cancelled, |_| {})
}

//! Confirming: paid, waiting for the order service to confirm the order.

use a4co_events::catalog::order::{OrderCancelled, OrderConfirmed};
use a4co_saga::Builder;

use super::{Fulfillment, Phase, release_all};

/// The reactions of `confirming`.
pub(super) fn reactions(builder: Builder<Fulfillment, Phase>) -> Builder<Fulfillment, Phase> {
    use Phase::{Cancelled, Confirmed, Confirming};
    builder
        .on::<OrderConfirmed>(Confirming)
        .to(Confirmed, |_, _| {})
        .on::<OrderCancelled>(Confirming)
        .to(Cancelled, |step, cancelled| {
            step.data.cancelled_by_order = true;
            step.data.cancellation = Some(cancelled.data.reason);
            release_all(step);
        })
}

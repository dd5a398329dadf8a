//! Messages the tests' sagas start on and react to.

use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_events::{AnyMessage, Envelope, Message};

pub(crate) const ORDER: &str = "ord-1";

pub(crate) fn order_created(order: &str) -> Envelope<AnyMessage> {
    Envelope::new("order-service", order, OrderCreated::example()).into_any()
}

pub(crate) fn confirmed(order: &str) -> Envelope<AnyMessage> {
    Envelope::new("order-service", order, OrderConfirmed::example()).into_any()
}

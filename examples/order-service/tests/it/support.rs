//! Messages the participants of the fulfillment saga answer with.

use a4co_events::catalog::inventory::{
    FailedItem, ReleaseReason, StockReleased, StockReservationFailed, StockReserved,
};
use a4co_events::catalog::order::{
    CancellationReason, OrderCancelled, OrderConfirmed, OrderCreated,
};
use a4co_events::catalog::payment::{PaymentFailed, PaymentSucceeded};
use a4co_events::{AnyMessage, Envelope, Message, Money};

pub(crate) const ORDER: &str = "ord-1";
pub(crate) const SAGA: &str = "order-fulfillment/ord-1";
pub(crate) const OIL: &str = "prod-olive-oil-500";
pub(crate) const BOWL: &str = "prod-ceramic-bowl";

pub(crate) fn order_created(order: &str) -> Envelope<AnyMessage> {
    Envelope::new("order-service", order, OrderCreated::example()).into_any()
}

pub(crate) fn reserved(order: &str, product: &str) -> Envelope<AnyMessage> {
    let data = StockReserved {
        order_id: order.to_owned(),
        reservation_id: format!("res-{order}-{product}"),
        ..StockReserved::example()
    };
    Envelope::new("inventory-service", product, data).into_any()
}

pub(crate) fn reservation_failed(order: &str, product: &str) -> Envelope<AnyMessage> {
    let data = StockReservationFailed {
        order_id: order.to_owned(),
        reason: "insufficient stock".to_owned(),
        failed_items: vec![FailedItem {
            product_id: product.to_owned(),
            requested_quantity: 2,
            available_quantity: 0,
        }],
    };
    Envelope::new("inventory-service", product, data).into_any()
}

pub(crate) fn paid(order: &str) -> Envelope<AnyMessage> {
    let data = PaymentSucceeded {
        order_id: order.to_owned(),
        transaction_id: format!("txn-{order}"),
        amount: Money::eur(5900),
        ..PaymentSucceeded::example()
    };
    Envelope::new("payment-service", format!("pay-{order}"), data).into_any()
}

pub(crate) fn payment_failed(order: &str) -> Envelope<AnyMessage> {
    let data = PaymentFailed {
        order_id: order.to_owned(),
        ..PaymentFailed::example()
    };
    Envelope::new("payment-service", format!("pay-{order}"), data).into_any()
}

pub(crate) fn confirmed(order: &str) -> Envelope<AnyMessage> {
    Envelope::new("order-service", order, OrderConfirmed::example()).into_any()
}

pub(crate) fn cancelled_by_customer(order: &str) -> Envelope<AnyMessage> {
    let data = OrderCancelled {
        reason: CancellationReason::CustomerRequest,
        cancelled_by: "user-4711".to_owned(),
        ..OrderCancelled::example()
    };
    Envelope::new("order-service", order, data).into_any()
}

/// Inventory's announcement that the order's hold on `product` lapsed.
pub(crate) fn hold_lapsed(order: &str, product: &str) -> Envelope<AnyMessage> {
    let data = StockReleased {
        order_id: order.to_owned(),
        reservation_id: format!("res-{order}-{product}"),
        reason: ReleaseReason::ReservationExpired,
        ..StockReleased::example()
    };
    Envelope::new("inventory-service", product, data).into_any()
}

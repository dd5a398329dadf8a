//! `payment.succeeded`: a paid order's holds are pinned, so they no longer lapse (the
//! order's confirmation commits them, its cancellation releases them).

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::payment::PaymentSucceeded;
use service_kit::is_valid_id;

use super::order_key;
use crate::domain::{OrderHolds, Product};
use crate::{Inventory, product_key};

/// Pins the holds of the paid order.
pub(crate) async fn payment_succeeded<B: Publisher + Subscriber>(
    inventory: Inventory<B>,
    message: Envelope<PaymentSucceeded>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let order_id = message.data.order_id.as_str();
    if !is_valid_id(order_id) {
        return Err(HandlerError::permanent(format!(
            "order {order_id:?} is not a valid id"
        )));
    }
    let Some(holds) = inventory
        .records
        .get::<OrderHolds>(&order_key(order_id))
        .await?
    else {
        return Ok(());
    };
    let holds = holds.value;
    for product_id in holds.products.iter().filter(|p| !holds.is_closed(p)) {
        inventory
            .records
            .modify(&product_key(product_id), |current: Option<&Product>| {
                let Some(current) = current else {
                    return (None, ());
                };
                let mut next = current.clone();
                (next.pin(order_id).then_some(next), ())
            })
            .await?;
    }
    Ok(())
}

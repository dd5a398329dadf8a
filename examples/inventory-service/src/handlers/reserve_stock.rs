//! `inventory.cmd.reserve_stock`: holds stock for an order, at most once per (order,
//! product), and answers `inventory.stock_reserved` or `inventory.stock_reservation_failed`
//! under an id derived from the command's.

use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::inventory::{FailedItem, ReserveStock, StockReservationFailed};
use a4co_events::{AnyMessage, Envelope};
use service_kit::is_valid_id;

use super::{order_key, reserved};
use crate::domain::{OrderHolds, Product, Reserved};
use crate::{Inventory, NAME, product_key};

/// Reserves the command's quantity of its product (the envelope's aggregate) for its order.
pub(crate) async fn reserve_stock<B: Publisher + Subscriber>(
    inventory: Inventory<B>,
    message: Envelope<ReserveStock>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let command = &message.data;
    let product_id = &message.aggregate_id;
    let order_id = &command.order_id;
    if !is_valid_id(product_id) || !is_valid_id(order_id) {
        return Err(HandlerError::permanent(format!(
            "product {product_id:?} or order {order_id:?} is not a valid id"
        )));
    }
    // The order's holds first: a confirmation must find every product it holds, and a
    // hold already over (released, committed) must not be made again.
    let open = inventory
        .records
        .modify(&order_key(order_id), |current: Option<&OrderHolds>| {
            let mut holds = current.cloned().unwrap_or_default();
            if holds.is_closed(product_id) {
                return (None, false);
            }
            if holds.products.contains(product_id) {
                return (None, true);
            }
            holds.products.push(product_id.clone());
            (Some(holds), true)
        })
        .await?;
    if !open {
        tracing::info!(order = %order_id, "a reserve command for a hold already over; ignored");
        return Ok(());
    }
    let (before, outcome, product) = inventory
        .records
        .modify(&product_key(product_id), |current: Option<&Product>| {
            let Some(current) = current else {
                return (None, (0, Reserved::Insufficient { available: 0 }, None));
            };
            let mut next = current.clone();
            let outcome = next.reserve(order_id, command.quantity, command.expires_at);
            let before = current.available();
            match outcome {
                Reserved::New(_) => (Some(next.clone()), (before, outcome, Some(next))),
                _ => (None, (before, outcome, Some(current.clone()))),
            }
        })
        .await?;
    let answer: AnyMessage = match (&outcome, &product) {
        (Reserved::New(held) | Reserved::Again(held), Some(product)) => {
            reserved(order_id, product, held).into()
        }
        (Reserved::Insufficient { available }, _) => StockReservationFailed {
            order_id: order_id.clone(),
            reason: if product.is_some() {
                "insufficient stock".to_owned()
            } else {
                "unknown product".to_owned()
            },
            failed_items: vec![FailedItem {
                product_id: product_id.clone(),
                requested_quantity: command.quantity,
                available_quantity: *available,
            }],
        }
        .into(),
        (Reserved::New(_) | Reserved::Again(_), None) => {
            return Err(HandlerError::retryable(
                "the product vanished while reserving",
            ));
        }
    };
    inventory
        .bus
        .publish(&Envelope::reply_to(
            &message, NAME, product_id, answer, "answer",
        ))
        .await
        .map_err(HandlerError::from)?;
    if let (Reserved::New(_), Some(product)) = (&outcome, &product) {
        inventory
            .warn_if_low(before, product, Some(&message))
            .await
            .map_err(HandlerError::from)?;
    }
    Ok(())
}

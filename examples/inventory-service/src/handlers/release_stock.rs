//! `inventory.cmd.release_stock`: gives a reservation's stock back (the saga's
//! compensation) and answers `inventory.stock_released`; a reservation released already,
//! or never made, releases nothing.

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::inventory::ReleaseStock;
use chrono::Utc;
use service_kit::is_valid_id;

use super::released_event;
use crate::domain::Product;
use crate::{Inventory, NAME, product_key};

/// Releases the command's reservation of its product (the envelope's aggregate).
pub(crate) async fn release_stock<B: Publisher + Subscriber>(
    inventory: Inventory<B>,
    message: Envelope<ReleaseStock>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let command = &message.data;
    let product_id = &message.aggregate_id;
    if !is_valid_id(product_id) || !is_valid_id(&command.order_id) {
        return Err(HandlerError::permanent(format!(
            "product {product_id:?} or order {:?} is not a valid id",
            command.order_id
        )));
    }
    inventory.close(&command.order_id, product_id).await?;
    let released = inventory
        .records
        .modify(&product_key(product_id), |current: Option<&Product>| {
            let Some(current) = current else {
                return (None, None);
            };
            let held = current
                .reservations
                .iter()
                .find(|(_, r)| r.reservation_id == command.reservation_id)
                .map(|(order, _)| order.clone());
            let mut next = current.clone();
            match held.and_then(|order| next.release(&order)) {
                Some(r) => (Some(next.clone()), Some((r, next.available()))),
                None => (None, None),
            }
        })
        .await?;
    let Some((reservation, available)) = released else {
        tracing::info!(reservation = %command.reservation_id, "nothing held under this reservation (released already, or never made)");
        return Ok(());
    };
    let data = released_event(
        &command.order_id,
        &reservation,
        command.reason,
        available,
        Utc::now(),
    );
    inventory
        .bus
        .publish(&Envelope::reply_to(
            &message, NAME, product_id, data, "answer",
        ))
        .await
        .map_err(HandlerError::from)?;
    Ok(())
}

//! `order.confirmed`: what the order holds becomes sold.

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::order::OrderConfirmed;
use service_kit::is_valid_id;

use super::order_key;
use crate::domain::{OrderHolds, Product};
use crate::{Inventory, product_key};

/// Commits every hold of the confirmed order (the envelope's aggregate), and announces
/// again a hold that had lapsed before the confirmation.
pub(crate) async fn order_confirmed<B: Publisher + Subscriber>(
    inventory: Inventory<B>,
    message: Envelope<OrderConfirmed>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let order_id = message.aggregate_id.as_str();
    if !is_valid_id(order_id) {
        return Err(HandlerError::permanent(format!(
            "order {order_id:?} is not a valid id"
        )));
    }
    // Every hold of the order is over, in one write, before the products change.
    let (products, lapsed) = inventory
        .records
        .modify(&order_key(order_id), |current: Option<&OrderHolds>| {
            let Some(current) = current else {
                return (None, (Vec::new(), std::collections::BTreeMap::new()));
            };
            let mut holds = current.clone();
            for product in &current.products {
                if !holds.is_closed(product) {
                    holds.closed.push(product.clone());
                }
            }
            let changed = holds.closed.len() != current.closed.len();
            (
                changed.then_some(holds),
                (current.products.clone(), current.lapsed.clone()),
            )
        })
        .await?;
    for product_id in products {
        let committed = inventory
            .records
            .modify(&product_key(&product_id), |current: Option<&Product>| {
                let Some(current) = current else {
                    return (None, None);
                };
                let mut next = current.clone();
                match next.commit(order_id) {
                    Some(_) => (Some(next.clone()), Some((current.available(), next))),
                    None => (None, None),
                }
            })
            .await?;
        if let Some((before, product)) = committed {
            inventory
                .warn_if_low(before, &product, None)
                .await
                .map_err(HandlerError::from)?;
        }
    }
    // A hold that lapsed before the confirmation committed nothing: the lapse is
    // announced again, so the saga gives the order up and refunds it even if the first
    // announcement never reached it (its reaction is idempotent).
    for (product_id, reservation) in &lapsed {
        let available = inventory
            .product(product_id)
            .await?
            .map_or(0, |p| p.available());
        tracing::warn!(order = %order_id, product = %product_id, "a confirmed order's hold had lapsed; announcing the lapse again");
        inventory
            .announce_lapse(
                order_id,
                product_id,
                reservation,
                available,
                "lapse-at-commit",
            )
            .await?;
    }
    Ok(())
}

//! Reserving stock: the start, `reserving` (every line asked of inventory) and
//! `releasing` (cancelling for lack of stock while answers still come in).

use a4co_events::Money;
use a4co_events::catalog::inventory::{ReserveStock, StockReservationFailed, StockReserved};
use a4co_events::catalog::order::{CancellationReason, OrderCancelled, OrderCreated};
use a4co_events::catalog::payment::{PaymentMethod, ProcessPayment};
use a4co_saga::Builder;

use super::{
    Fulfillment, Line, LineStatus, PAYMENT_TIMER, Phase, STOCK_TIMER, Settings, cancel_order,
    give_up_on_stock, give_up_unanswered, release,
};

/// The start and the reactions of `reserving` and `releasing`.
pub(super) fn reactions(
    builder: Builder<Fulfillment, Phase>,
    settings: &Settings,
) -> Builder<Fulfillment, Phase> {
    use Phase::{Cancelled, Paying, Releasing, Reserving};
    let Settings {
        reservation_ttl,
        stock_timeout,
        payment_timeout,
        ..
    } = *settings;
    let ttl = chrono::Duration::from_std(reservation_ttl).unwrap_or(chrono::Duration::MAX);
    let payment_wait = chrono::Duration::from_std(payment_timeout).unwrap_or(chrono::Duration::MAX);
    builder
        .starts_with::<OrderCreated>().choose([Reserving, Cancelled], move |step, order| {
            let data = &mut step.data;
            data.order_id.clone_from(&order.aggregate_id);
            data.customer_id.clone_from(&order.data.customer_id);
            data.total = Some(order.data.total_amount);
            data.payment_method_id.clone_from(&order.data.payment_method_id);
            for item in &order.data.items {
                match data.line(&item.product_id) {
                    Some(line) => line.quantity = line.quantity.saturating_add(item.quantity),
                    None => data.lines.push(Line {
                        product_id: item.product_id.clone(),
                        quantity: item.quantity,
                        status: LineStatus::Asked,
                    }),
                }
            }
            if data.lines.is_empty() {
                data.cancellation = Some(CancellationReason::InventoryUnavailable);
                data.detail = Some("the order has no items".to_owned());
                return cancel_order(step);
            }
            let expires_at = step.now().checked_add_signed(ttl).unwrap_or(step.now());
            let order_id = step.data.order_id.clone();
            for line in step.data.lines.clone() {
                let reserve = ReserveStock {
                    order_id: order_id.clone(),
                    quantity: line.quantity,
                    expires_at,
                };
                step.send(&format!("reserve/{}", line.product_id), &line.product_id, reserve);
            }
            step.schedule(STOCK_TIMER, stock_timeout);
            Reserving
        })
        .on::<StockReserved>(Reserving).choose([Reserving, Paying], move |step, reserved| {
            let product = reserved.aggregate_id.clone();
            let Some(line) = step.data.line(&product) else {
                tracing::warn!(product = %product, "a reservation for a product not in the order; releasing it");
                let undo = release(&reserved.data);
                step.send(&format!("release-stray/{}", reserved.data.reservation_id), &product, undo);
                return Reserving;
            };
            if line.status != LineStatus::Asked {
                return Reserving;
            }
            line.status = LineStatus::Reserved {
                reservation_id: reserved.data.reservation_id.clone(),
            };
            let undo = release(&reserved.data);
            step.completed(&format!("reserve/{product}"), &product, undo);
            if step.data.waiting_for_stock() {
                return Reserving;
            }
            step.cancel(STOCK_TIMER);
            let data = &step.data;
            let pay = ProcessPayment {
                order_id: data.order_id.clone(),
                customer_id: data.customer_id.clone(),
                amount: data.total.unwrap_or_else(|| Money::eur(0)),
                payment_method: PaymentMethod::Card,
                payment_method_id: data.payment_method_id.clone(),
                expires_at: step.now().checked_add_signed(payment_wait),
            };
            let order = data.order_id.clone();
            step.send("pay", order, pay);
            step.schedule(PAYMENT_TIMER, payment_timeout);
            Paying
        })
        .on::<StockReservationFailed>(Reserving).choose([Releasing, Cancelled], move |step, failed| {
            let product = failed.aggregate_id.clone();
            if let Some(line) = step.data.line(&product) {
                line.status = LineStatus::Failed;
            }
            step.data.detail = Some(
                failed
                    .data
                    .failed_items
                    .iter()
                    .map(|i| format!("{}: {} requested, {} available", i.product_id, i.requested_quantity, i.available_quantity))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            give_up_on_stock(step, CancellationReason::InventoryUnavailable, stock_timeout)
        })
        .on_timeout(Reserving, STOCK_TIMER).choose([Releasing, Cancelled], move |step| {
            step.data.detail = Some("inventory did not answer in time".to_owned());
            // Lines still unanswered get no more waiting: their holds lapse at inventory.
            give_up_unanswered(&mut step.data);
            give_up_on_stock(step, CancellationReason::InventoryUnavailable, stock_timeout)
        })
        .on::<OrderCancelled>(Reserving).choose([Releasing, Cancelled], move |step, cancelled| {
            step.data.cancelled_by_order = true;
            give_up_on_stock(step, cancelled.data.reason, stock_timeout)
        })
        .on::<StockReserved>(Releasing).choose([Releasing, Cancelled], |step, reserved| {
            let product = reserved.aggregate_id.clone();
            let undo = release(&reserved.data);
            let asked = step.data.line(&product).is_some_and(|l| l.status == LineStatus::Asked);
            if !asked {
                return Releasing;
            }
            step.send(&format!("release/{product}"), &product, undo);
            if let Some(line) = step.data.line(&product) {
                line.status = LineStatus::Released {
                    reservation_id: reserved.data.reservation_id,
                };
            }
            if step.data.waiting_for_stock() { Releasing } else { cancel_order(step) }
        })
        .on::<StockReservationFailed>(Releasing).choose([Releasing, Cancelled], |step, failed| {
            if let Some(line) = step.data.line(&failed.aggregate_id)
                && line.status == LineStatus::Asked
            {
                line.status = LineStatus::Failed;
            }
            if step.data.waiting_for_stock() { Releasing } else { cancel_order(step) }
        })
        .on_timeout(Releasing, STOCK_TIMER).to(Cancelled, |step| {
            give_up_unanswered(&mut step.data);
            cancel_order(step);
        })
}

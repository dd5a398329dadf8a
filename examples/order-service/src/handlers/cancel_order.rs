//! `order.cmd.cancel_order`: the saga gives the order up (no stock, a declined payment, a
//! timeout); the order becomes cancelled and `order.cancelled` goes out, saying what is
//! compensated. A confirmed order is cancelled too when its stock turns out gone (a hold
//! that lapsed before the commit).

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::order::{CancelOrder, CancellationReason, OrderCancelled, OrderStatus};
use chrono::Utc;

use crate::{Cancellation, Orders, fulfillment};

/// Cancels the command's order (the envelope's aggregate) and announces it.
pub(crate) async fn cancel_order<B: Publisher + Subscriber>(
    orders: Orders<B>,
    command: Envelope<CancelOrder>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let cancel = &command.data;
    let stock_gone = cancel.reason == CancellationReason::InventoryUnavailable;
    let moved = orders
        .move_order(&command, OrderStatus::Cancelled, stock_gone, |order| {
            order.cancellation = Some(Cancellation {
                reason: cancel.reason,
                detail: cancel.detail.clone(),
            });
        })
        .await?;
    let Some(total) = moved else {
        return Ok(());
    };
    let mut actions = vec!["release-stock".to_owned()];
    if cancel.refund_required {
        actions.push("refund-payment".to_owned());
    }
    let cancelled = OrderCancelled {
        reason: cancel.reason,
        cancelled_at: Utc::now(),
        refund_required: cancel.refund_required,
        refund_amount: total.filter(|_| cancel.refund_required),
        cancelled_by: fulfillment::NAME.to_owned(),
        compensation_actions: actions,
    };
    orders.answer(&command, cancelled).await
}

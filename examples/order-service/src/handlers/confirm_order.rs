//! `order.cmd.confirm_order`: the saga has the stock and the payment; the pending order
//! becomes confirmed and `order.confirmed` goes out.

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::order::{ConfirmOrder, OrderConfirmed, OrderStatus};
use chrono::Utc;

use crate::Orders;

/// Confirms the command's order (the envelope's aggregate) and announces it.
pub(crate) async fn confirm_order<B: Publisher + Subscriber>(
    orders: Orders<B>,
    command: Envelope<ConfirmOrder>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let confirm = &command.data;
    let moved = orders
        .move_order(&command, OrderStatus::Confirmed, false, |order| {
            order.payment_id = Some(confirm.payment_id.clone());
        })
        .await?;
    if moved.is_none() {
        return Ok(());
    }
    let now = Utc::now();
    let confirmed = OrderConfirmed {
        confirmed_at: now,
        estimated_delivery_date: now + chrono::Duration::days(3),
        payment_reference: confirm.payment_reference.clone(),
        payment_id: Some(confirm.payment_id.clone()),
        tracking_number: None,
        artisan_notified: false,
    };
    orders.answer(&command, confirmed).await
}

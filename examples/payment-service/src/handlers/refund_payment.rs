//! `payment.cmd.refund_payment`: gives a taken payment back once (the saga's
//! compensation), and answers `payment.refund_processed`; a payment never taken refunds
//! nothing.

use a4co_events::Envelope;
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::payment::{RefundMethod, RefundPayment, RefundProcessed};
use chrono::Utc;
use service_kit::is_valid_id;

use crate::{Payment, Payments, Refund, Status, payment_key};

/// Refunds the command's order.
pub(crate) async fn refund_payment<B: Publisher + Subscriber>(
    payments: Payments<B>,
    message: Envelope<RefundPayment>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let command = &message.data;
    if !is_valid_id(&command.order_id) {
        return Err(HandlerError::permanent(format!(
            "order {:?} is not a valid id",
            command.order_id
        )));
    }
    let now = Utc::now();
    let refunded = payments
        .records
        .modify(
            &payment_key(&command.order_id),
            |current: Option<&Payment>| {
                let Some(current) = current else {
                    return (None, None);
                };
                if !matches!(current.status, Status::Succeeded { .. }) {
                    return (None, None);
                }
                if let Some(refund) = &current.refund {
                    return (None, Some(refund.clone()));
                }
                let mut next = current.clone();
                let refund = Refund {
                    refund_id: format!("rf-{}", current.order_id),
                    amount: command.amount,
                    reason: command.reason.clone(),
                    at: now,
                };
                next.refund = Some(refund.clone());
                (Some(next), Some(refund))
            },
        )
        .await?;
    let Some(refund) = refunded else {
        tracing::warn!(order = %command.order_id, "a refund for a payment that was never taken; nothing to give back");
        return Ok(());
    };
    let data = RefundProcessed {
        original_payment_id: command.payment_id.clone(),
        order_id: command.order_id.clone(),
        refund_amount: refund.amount,
        refund_reason: refund.reason,
        processed_at: refund.at,
        gateway_refund_id: refund.refund_id.clone(),
        refund_method: RefundMethod::Original,
        processing_time: 3,
    };
    payments
        .reply(&message, &refund.refund_id, data, "refunded")
        .await
}

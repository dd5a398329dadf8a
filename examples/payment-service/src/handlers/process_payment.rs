//! `payment.cmd.process_payment`: charges the order once. The charge is recorded before
//! and after the gateway call, and the call itself is idempotent by order, so a redelivery,
//! a crash between the call and the record, or two instances handling the same command
//! charge once. A command past its `expiresAt` charges nothing: it is answered
//! `payment.failed` (`payment-expired`).

use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber};
use a4co_events::catalog::payment::{
    PaymentFailed, PaymentInitiated, PaymentSucceeded, ProcessPayment,
};
use a4co_events::{AnyMessage, Envelope, Money};
use chrono::Utc;
use service_kit::is_valid_id;

use super::EXPIRED;
use crate::{Charge, Payment, Payments, Status, payment_key};

/// Charges the command's amount for its order, and answers `payment.initiated`, then
/// `payment.succeeded` or `payment.failed`.
pub(crate) async fn process_payment<B: Publisher + Subscriber>(
    payments: Payments<B>,
    message: Envelope<ProcessPayment>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    let command = &message.data;
    let order_id = &command.order_id;
    if !is_valid_id(order_id) {
        return Err(HandlerError::permanent(format!(
            "order {order_id:?} is not a valid id"
        )));
    }
    let now = Utc::now();
    let expired = || command.expires_at.is_some_and(|at| Utc::now() >= at);
    let payment = payments
        .records
        .modify(
            &payment_key(order_id),
            |current: Option<&Payment>| match current {
                Some(existing) => (None, existing.clone()),
                None => {
                    // A command that arrives after its expiry charges nothing.
                    let status = if expired() {
                        Status::Failed {
                            code: EXPIRED.to_owned(),
                            message: "the payment command expired before it was charged".to_owned(),
                        }
                    } else {
                        Status::Initiated
                    };
                    let fresh = Payment {
                        payment_id: format!("txn-{order_id}"),
                        order_id: order_id.clone(),
                        customer_id: command.customer_id.clone(),
                        amount: command.amount,
                        payment_method_id: command.payment_method_id.clone(),
                        status,
                        refund: None,
                        initiated_at: now,
                    };
                    (Some(fresh.clone()), fresh)
                }
            },
        )
        .await?;
    let payment = if payment.status == Status::Initiated {
        let initiated = PaymentInitiated {
            order_id: order_id.clone(),
            customer_id: payment.customer_id.clone(),
            amount: payment.amount,
            payment_method: command.payment_method,
            payment_gateway: "a4co-sim".to_owned(),
            merchant_reference: format!("a4co-{order_id}"),
            initiated_at: payment.initiated_at,
        };
        payments
            .reply(&message, &payment.payment_id, initiated, "initiated")
            .await?;
        let charge = payments.charge(&payment, command.expires_at).await?;
        payments
            .records
            .modify(&payment_key(order_id), |current: Option<&Payment>| {
                let Some(current) = current else {
                    return (None, None);
                };
                if current.status != Status::Initiated {
                    return (None, Some(current.clone()));
                }
                let mut done = current.clone();
                done.status = match &charge {
                    Charge::Approved {
                        gateway_transaction_id,
                    } => Status::Succeeded {
                        gateway_transaction_id: gateway_transaction_id.clone(),
                    },
                    Charge::Declined { code, message } => Status::Failed {
                        code: code.clone(),
                        message: message.clone(),
                    },
                };
                (Some(done.clone()), Some(done))
            })
            .await?
            .ok_or_else(|| HandlerError::retryable("the payment record vanished"))?
    } else {
        payment
    };
    let outcome: AnyMessage = match &payment.status {
        Status::Succeeded {
            gateway_transaction_id,
        } => {
            // The marketplace keeps 10 %; the simulated gateway charges nothing.
            let fee = Money::new(payment.amount.amount_minor / 10, payment.amount.currency);
            let artisan = Money::new(
                payment.amount.amount_minor - fee.amount_minor,
                payment.amount.currency,
            );
            PaymentSucceeded {
                order_id: order_id.clone(),
                transaction_id: payment.payment_id.clone(),
                gateway_transaction_id: gateway_transaction_id.clone(),
                amount: payment.amount,
                processed_at: now,
                payment_gateway: "a4co-sim".to_owned(),
                gateway_fee: Money::new(0, payment.amount.currency),
                marketplace_fee: fee,
                artisan_amount: artisan,
            }
            .into()
        }
        Status::Failed {
            code,
            message: text,
        } => PaymentFailed {
            order_id: order_id.clone(),
            error_code: code.clone(),
            error_message: text.clone(),
            gateway_error_code: None,
            retryable: false,
            failed_at: now,
            attempt_number: 1,
            max_attempts: 1,
        }
        .into(),
        Status::Initiated => {
            return Err(HandlerError::retryable("the charge is not recorded yet"));
        }
    };
    payments
        .reply(&message, &payment.payment_id, outcome, "outcome")
        .await
}

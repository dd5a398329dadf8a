//! The saga's payment commands. A charge is recorded before and after the gateway call;
//! the gateway call itself is idempotent by order, so a redelivery, a crash between the
//! call and the record, or two instances handling the same command charge once. A command
//! past its `expiresAt` charges nothing: it is answered `payment.failed` (`payment-expired`).

use a4co_events::bus::{HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::payment::{
    PaymentFailed, PaymentInitiated, PaymentSucceeded, ProcessPayment, RefundMethod, RefundPayment,
    RefundProcessed,
};
use a4co_events::service::Workers;
use a4co_events::{AnyMessage, Envelope, Money};
use chrono::{DateTime, Utc};
use service_kit::bus::reply_to;
use service_kit::is_valid_id;
use tracing::Instrument as _;

use crate::{Charge, NAME, Payment, Payments, Refund, Status, payment_key};

/// The `payment.failed` code of a command that expired before it was charged.
pub const EXPIRED: &str = "payment-expired";

impl<B: Publisher + Subscriber> Payments<B> {
    /// Subscribes to the saga's payment commands.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start(&self) -> Result<Workers, a4co_events::bus::SubscribeError> {
        let me = self.clone();
        let handle = self
            .bus
            .subscribe(
                Subscription::new(NAME, "commands")
                    .to::<ProcessPayment>()
                    .to::<RefundPayment>(),
                move |message: Envelope<AnyMessage>, _| {
                    let me = me.clone();
                    async move {
                        let span = service_kit::ops::message_span(&message);
                        match &message.data {
                            AnyMessage::ProcessPayment(c) => {
                                me.process(&message, c).instrument(span).await
                            }
                            AnyMessage::RefundPayment(c) => {
                                me.refund(&message, c).instrument(span).await
                            }
                            _ => Ok(()),
                        }
                    }
                },
            )
            .await?;
        let mut workers = Workers::new();
        workers.subscription(handle);
        Ok(workers)
    }

    async fn process(
        &self,
        message: &Envelope<AnyMessage>,
        command: &ProcessPayment,
    ) -> Result<(), HandlerError> {
        let order_id = &command.order_id;
        if !is_valid_id(order_id) {
            return Err(HandlerError::permanent(format!(
                "order {order_id:?} is not a valid id"
            )));
        }
        let now = Utc::now();
        let expired = || command.expires_at.is_some_and(|at| Utc::now() >= at);
        let payment = self
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
                                message: "the payment command expired before it was charged"
                                    .to_owned(),
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
            self.publish(message, &payment.payment_id, initiated.into(), "initiated")
                .await?;
            let charge = self.charge(&payment, command.expires_at).await?;
            self.records
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
        self.publish(message, &payment.payment_id, outcome, "outcome")
            .await
    }

    /// Charges through the gateway under the order's key: a second charge of the same key
    /// returns the first answer. Past `expires_at`, a charge not yet made is declined
    /// (`payment-expired`) without reaching the gateway.
    async fn charge(
        &self,
        payment: &Payment,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Charge, HandlerError> {
        let key = format!("gateway.a4co-{}", payment.order_id);
        if let Some(done) = self.records.get::<Charge>(&key).await? {
            return Ok(done.value);
        }
        let answer = if expires_at.is_some_and(|at| Utc::now() >= at) {
            Charge::Declined {
                code: EXPIRED.to_owned(),
                message: "the payment command expired before it was charged".to_owned(),
            }
        } else {
            tokio::time::sleep(self.gateway.latency).await;
            self.gateway.decide(
                &payment.order_id,
                payment.amount.amount_minor,
                payment.payment_method_id.as_deref(),
            )
        };
        let charge = self
            .records
            .modify(&key, |current: Option<&Charge>| match current {
                Some(first) => (None, first.clone()),
                None => (Some(answer.clone()), answer.clone()),
            })
            .await?;
        Ok(charge)
    }

    async fn refund(
        &self,
        message: &Envelope<AnyMessage>,
        command: &RefundPayment,
    ) -> Result<(), HandlerError> {
        if !is_valid_id(&command.order_id) {
            return Err(HandlerError::permanent(format!(
                "order {:?} is not a valid id",
                command.order_id
            )));
        }
        let now = Utc::now();
        let refunded = self
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
        self.publish(message, &refund.refund_id, data.into(), "refunded")
            .await
    }

    async fn publish(
        &self,
        cause: &Envelope<AnyMessage>,
        aggregate: &str,
        data: AnyMessage,
        step: &str,
    ) -> Result<(), HandlerError> {
        self.bus
            .publish(&reply_to(cause, NAME, aggregate, data, step))
            .await
            .map(drop)
            .map_err(HandlerError::retryable)
    }
}

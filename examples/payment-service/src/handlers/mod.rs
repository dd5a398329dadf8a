//! The saga's payment commands, one handler per file.

mod process_payment;
mod refund_payment;

use a4co_events::bus::{HandlerError, Handlers, Publisher, Subscriber, Subscription};
use a4co_events::catalog::payment::{ProcessPayment, RefundPayment};
use a4co_events::service::Workers;
use a4co_events::{Envelope, Payload};
use chrono::{DateTime, Utc};

use crate::{Charge, NAME, Payment, Payments};

/// The `payment.failed` code of a command that expired before it was charged.
pub const EXPIRED: &str = "payment-expired";

impl<B: Publisher + Subscriber> Payments<B> {
    /// Subscribes to the saga's payment commands.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start(&self) -> Result<Workers, a4co_events::bus::SubscribeError> {
        let handlers = Handlers::with_state(self.clone())
            .on::<ProcessPayment>(process_payment::process_payment)
            .on::<RefundPayment>(refund_payment::refund_payment);
        let handle = self
            .bus
            .subscribe(Subscription::new(NAME, "commands"), handlers)
            .await?;
        let mut workers = Workers::new();
        workers.subscription(handle);
        Ok(workers)
    }

    /// Charges through the gateway under the order's key: a second charge of the same key
    /// returns the first answer. Past `expires_at`, a charge not yet made is declined
    /// (`payment-expired`) without reaching the gateway.
    pub(crate) async fn charge(
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

    /// Publishes the answer to `cause` (its id derived from the cause's and `step`).
    pub(crate) async fn reply<P>(
        &self,
        cause: &Envelope<P>,
        aggregate: &str,
        data: impl Payload,
        step: &str,
    ) -> Result<(), HandlerError> {
        self.bus
            .publish(&Envelope::reply_to(cause, NAME, aggregate, data, step))
            .await
            .map(drop)
            .map_err(HandlerError::from)
    }
}

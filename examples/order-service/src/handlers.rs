//! What runs beside the REST API: the fulfillment saga, the handler of its confirm and
//! cancel commands (which move the order and announce it), and the outbox of orders not
//! yet announced.

use std::time::Duration;

use crate::fulfillment::{self, Settings};
use a4co_events::bus::{HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::{
    CancelOrder, ConfirmOrder, OrderCancelled, OrderConfirmed, OrderStatus,
};
use a4co_events::service::{AnyBus, Workers};
use a4co_events::{AnyMessage, Envelope};
use a4co_saga::{Runtime, Store};
use chrono::Utc;
use service_kit::ConfigError;
use service_kit::bus::reply_to;
use tracing::Instrument as _;

use crate::{Cancellation, NAME, Order, Orders, order_key};

/// How often orders saved but not announced are published again.
const OUTBOX_EVERY: Duration = Duration::from_secs(10);

impl<B: Publisher + Subscriber> Orders<B> {
    /// Starts the fulfillment saga (instances in `store`), the command handler and the
    /// outbox.
    ///
    /// # Errors
    /// Bad saga settings, or subscribing failed.
    pub async fn start_with<St: Store>(
        &self,
        store: St,
        settings: Settings,
    ) -> Result<Workers, ConfigError> {
        let definition = fulfillment::definition(settings)
            .map_err(|e| ConfigError::new(format!("the fulfillment saga: {e}")))?;
        let saga = Runtime::new(definition, self.bus.clone(), store)
            .start()
            .await
            .map_err(|e| ConfigError::new(format!("starting the fulfillment saga: {e}")))?;
        let mut workers = Workers::new();
        workers.other(move |graceful| async move {
            if graceful {
                saga.shutdown().await;
            } else {
                saga.abort();
            }
        });
        let me = self.clone();
        let handle = self
            .bus
            .subscribe(
                Subscription::new(NAME, "commands")
                    .to::<ConfirmOrder>()
                    .to::<CancelOrder>(),
                move |message: Envelope<AnyMessage>, _| {
                    let me = me.clone();
                    async move {
                        let span = service_kit::ops::message_span(&message);
                        me.on_command(&message).instrument(span).await
                    }
                },
            )
            .await
            .map_err(|e| ConfigError::new(format!("subscribing: {e}")))?;
        workers.subscription(handle);
        let me = self.clone();
        workers.every(OUTBOX_EVERY, move || {
            let me = me.clone();
            async move { me.announce_pending().await }
        });
        Ok(workers)
    }

    async fn on_command(&self, message: &Envelope<AnyMessage>) -> Result<(), HandlerError> {
        let order_id = &message.aggregate_id;
        let now = Utc::now();
        let status = match &message.data {
            AnyMessage::ConfirmOrder(_) => OrderStatus::Confirmed,
            AnyMessage::CancelOrder(_) => OrderStatus::Cancelled,
            _ => return Ok(()),
        };
        let (moved, total) = self
            .records
            .modify(&order_key(order_id), |current: Option<&Order>| {
                let Some(current) = current else {
                    return (None, (false, None));
                };
                if current.status != OrderStatus::Pending {
                    return (None, (false, Some(current.total)));
                }
                let mut next = current.clone();
                next.status = status;
                next.updated_at = now;
                match &message.data {
                    AnyMessage::ConfirmOrder(c) => next.payment_id = Some(c.payment_id.clone()),
                    AnyMessage::CancelOrder(c) => {
                        next.cancellation = Some(Cancellation {
                            reason: c.reason,
                            detail: c.detail.clone(),
                        });
                    }
                    _ => {}
                }
                (Some(next), (true, Some(current.total)))
            })
            .await?;
        if moved {
            tracing::info!(order = %order_id, status = ?status, "order moved");
        }
        let answer: AnyMessage = match &message.data {
            AnyMessage::ConfirmOrder(c) => OrderConfirmed {
                confirmed_at: now,
                estimated_delivery_date: now + chrono::Duration::days(3),
                payment_reference: c.payment_reference.clone(),
                payment_id: Some(c.payment_id.clone()),
                tracking_number: None,
                artisan_notified: false,
            }
            .into(),
            AnyMessage::CancelOrder(c) => {
                let mut actions = vec!["release-stock".to_owned()];
                if c.refund_required {
                    actions.push("refund-payment".to_owned());
                }
                OrderCancelled {
                    reason: c.reason,
                    cancelled_at: now,
                    refund_required: c.refund_required,
                    refund_amount: total.filter(|_| c.refund_required),
                    cancelled_by: fulfillment::NAME.to_owned(),
                    compensation_actions: actions,
                }
                .into()
            }
            _ => return Ok(()),
        };
        // Published again on a redelivery (same id: stored once), so the saga always hears.
        self.bus
            .publish(&reply_to(message, NAME, order_id, answer, "answer"))
            .await
            .map_err(HandlerError::retryable)?;
        Ok(())
    }

    /// Publishes `order.created` for orders saved but not announced (a publish that failed).
    async fn announce_pending(&self) {
        let orders = match self.all().await {
            Ok(orders) => orders,
            Err(e) => {
                tracing::warn!(error = %e, "the outbox cannot list orders; next time");
                return;
            }
        };
        let settled = Utc::now() - chrono::Duration::seconds(2);
        for order in orders
            .iter()
            .filter(|o| !o.announced && o.created_at < settled)
        {
            let _announced = self.announce(order).await;
        }
    }
}

impl Orders<AnyBus> {
    /// [`Orders::start_with`] the store that goes with the bus: the KV bucket `a4co-sagas`
    /// on NATS, memory otherwise.
    ///
    /// # Errors
    /// As [`Orders::start_with`], or the KV bucket cannot be opened.
    pub async fn start(&self, bus: &AnyBus, settings: Settings) -> Result<Workers, ConfigError> {
        match bus {
            AnyBus::Memory(_) => {
                let store =
                    a4co_saga::MemoryStore::new().retain_finished(settings.finished_retention);
                self.start_with(store, settings).await
            }
            AnyBus::Nats(nats) => {
                let store = a4co_saga::nats::KvStore::open(nats.transport())
                    .await
                    .and_then(|store| store.retain_finished(settings.finished_retention))
                    .map_err(|e| ConfigError::new(format!("saga store: {e}")))?;
                self.start_with(store, settings).await
            }
        }
    }
}

//! What runs beside the REST API: the fulfillment saga, the handlers of its confirm and
//! cancel commands (one per file: they move the order and announce it), and the outbox of
//! orders not yet announced.

mod cancel_order;
mod confirm_order;

use std::time::Duration;

use crate::fulfillment::{self, Settings};
use a4co_events::bus::{HandlerError, Handlers, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::{CancelOrder, ConfirmOrder, OrderStatus};
use a4co_events::service::StartError;
use a4co_events::service::{AnyBus, Workers};
use a4co_events::{Envelope, Money, Payload};
use a4co_saga::{Runtime, Store};
use chrono::Utc;

use crate::{NAME, Order, Orders, order_key, outbox_key};

/// How often orders saved but not announced are published again.
const OUTBOX_EVERY: Duration = Duration::from_secs(10);
/// How old an unannounced order must be before the outbox announces it (younger ones are
/// being placed).
const ANNOUNCE_AFTER: chrono::Duration = chrono::Duration::seconds(2);
/// How old the marker of an order never saved must be before the outbox drops it (older
/// than any placement, retries included, can take).
const ORPHAN_AFTER: chrono::Duration = chrono::Duration::minutes(10);

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
    ) -> Result<Workers, StartError> {
        let definition = fulfillment::definition(settings)
            .map_err(|e| StartError::invalid_config(format!("the fulfillment saga: {e}")))?;
        let saga = Runtime::builder(definition, self.bus.clone(), store)
            .migrate(1, fulfillment::migrate_from_1)
            .build()
            .map_err(|e| StartError::invalid_config(format!("the fulfillment saga: {e}")))?
            .start()
            .await
            .map_err(|e| {
                StartError::invalid_config(format!("starting the fulfillment saga: {e}"))
            })?;
        let mut workers = Workers::new();
        // The saga runs its own subscription: /health reports it with the others.
        workers.watch(saga.health());
        workers.other(move |graceful| async move {
            if graceful {
                saga.shutdown().await;
            } else {
                saga.abort();
            }
        });
        let handlers = Handlers::with_state(self.clone())
            .on::<ConfirmOrder>(confirm_order::confirm_order)
            .on::<CancelOrder>(cancel_order::cancel_order);
        let handle = self
            .bus
            .subscribe(Subscription::new(NAME, "commands"), handlers)
            .await
            .map_err(|e| StartError::invalid_config(format!("subscribing: {e}")))?;
        workers.subscription(handle);
        let me = self.clone();
        workers.every(OUTBOX_EVERY, move || {
            let me = me.clone();
            async move {
                me.announce_pending().await;
            }
        });
        Ok(workers)
    }

    /// Moves the order named by `command`'s aggregate to `status`, with `apply`'s changes,
    /// unless it has moved on. A pending order moves; a confirmed one only when
    /// `from_confirmed` (a cancellation because its stock is gone: a hold that lapsed
    /// before the commit). Returns the order's total when the command is to be answered
    /// (`Some(None)` for an order this instance never saw: the saga's decision is
    /// answered all the same, so its participants hear it), `None` when the order moved
    /// elsewhere meanwhile (that move was announced; answering would contradict it).
    pub(crate) async fn move_order<P: Payload>(
        &self,
        command: &Envelope<P>,
        status: OrderStatus,
        from_confirmed: bool,
        apply: impl Fn(&mut Order),
    ) -> Result<Option<Option<Money>>, HandlerError> {
        let order_id = &command.aggregate_id;
        let now = Utc::now();
        let (moved, total, now_status) = self
            .records
            .modify(&order_key(order_id), |current: Option<&Order>| {
                let Some(current) = current else {
                    return (None, (false, None, None));
                };
                let movable = current.status == OrderStatus::Pending
                    || (from_confirmed && current.status == OrderStatus::Confirmed);
                if !movable {
                    return (None, (false, Some(current.total), Some(current.status)));
                }
                let mut next = current.clone();
                next.status = status;
                next.updated_at = now;
                apply(&mut next);
                (Some(next), (true, Some(current.total), Some(status)))
            })
            .await?;
        match now_status {
            None => {
                tracing::info!(order = %order_id, command = command.event_type(), "no such order here; answering for the saga");
            }
            // Moved by an earlier delivery: answered again, so the saga hears.
            Some(s) if s == status => {
                if moved {
                    tracing::info!(order = %order_id, status = ?status, "order moved");
                }
            }
            Some(other) => {
                tracing::warn!(order = %order_id, status = ?other, command = command.event_type(), "the order has moved on; the command changes nothing");
                return Ok(None);
            }
        }
        Ok(Some(total))
    }

    /// Publishes `answer` to `command` (published again on a redelivery, under the same
    /// id: stored once, so the saga always hears).
    pub(crate) async fn answer<P, T: Payload>(
        &self,
        command: &Envelope<P>,
        answer: T,
    ) -> Result<(), HandlerError> {
        let reply = Envelope::reply_to(command, NAME, &command.aggregate_id, answer, "answer");
        self.bus
            .publish(&reply)
            .await
            .map(drop)
            .map_err(HandlerError::from)
    }

    /// One round of the outbox (it runs every 10 s once started): publishes `order.created`
    /// for orders saved but not announced (a publish that failed) and returns how many it
    /// announced. It reads the outbox markers only, so its cost follows the orders waiting,
    /// not the orders ever placed.
    pub async fn announce_pending(&self) -> usize {
        let keys = match self.records.keys("outbox.").await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "the outbox cannot list its markers; next time");
                return 0;
            }
        };
        let now = Utc::now();
        let mut announced = 0;
        for key in keys {
            let order_id = &key["outbox.".len()..];
            match self.order(order_id).await {
                Ok(Some(order)) if order.announced => self.forget_outbox(order_id).await,
                // A placement under way announces its order itself.
                Ok(Some(order)) if order.created_at < now - ANNOUNCE_AFTER => {
                    if self.announce(&order).await {
                        announced += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => self.drop_orphan(&key, now).await,
                Err(e) => {
                    tracing::warn!(order = %order_id, error = %e, "the outbox cannot read the order; next time");
                }
            }
        }
        announced
    }

    /// Drops the marker of an order never saved (a placement that failed before the save
    /// and was not retried) once no retry can be under way.
    async fn drop_orphan(&self, key: &str, now: chrono::DateTime<Utc>) {
        let marked = self.records.get::<chrono::DateTime<Utc>>(key).await;
        if let Ok(Some(at)) = marked
            && at.value < now - ORPHAN_AFTER
        {
            let _ = self.records.remove(key).await;
        }
    }

    /// Drops the outbox marker of an announced order (a failure leaves it for the next
    /// outbox round, which drops it then).
    pub(crate) async fn forget_outbox(&self, order_id: &str) {
        if let Err(e) = self.records.remove(&outbox_key(order_id)).await {
            tracing::debug!(order = %order_id, error = %e, "outbox marker left for the next round");
        }
    }
}

impl Orders<AnyBus> {
    /// [`Orders::start_with`] the store that goes with the bus ([`a4co_saga::AnyStore`]:
    /// the KV buckets on NATS, memory otherwise).
    ///
    /// # Errors
    /// As [`Orders::start_with`], or the KV buckets cannot be opened.
    pub async fn start(&self, bus: &AnyBus, settings: Settings) -> Result<Workers, StartError> {
        let store = a4co_saga::AnyStore::for_bus(bus, settings.finished_retention)
            .await
            .map_err(|e| StartError::unavailable("the saga store").with_source(e))?;
        self.start_with(store, settings).await
    }
}

//! What the service does with messages: the saga's reserve and release commands, confirmed
//! orders, and lapsed reservations. Each handler changes one product's record with
//! compare-and-swap, then publishes its answer under an id derived from the command's, so
//! a redelivery publishes the same answer and changes nothing.

use a4co_events::bus::{HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::inventory::{
    FailedItem, ReleaseReason, ReleaseStock, ReserveStock, StockReleased, StockReservationFailed,
    StockReserved,
};
use a4co_events::catalog::order::OrderConfirmed;
use a4co_events::catalog::payment::PaymentSucceeded;
use a4co_events::service::{RecordsError, Workers};
use a4co_events::{AnyMessage, Envelope, EventId};
use chrono::{DateTime, Utc};
use service_kit::bus::reply_to;
use service_kit::is_valid_id;
use tracing::Instrument as _;

use crate::domain::{OrderHolds, Product, Reservation, Reserved};
use crate::{Inventory, NAME, product_key};

fn order_key(order_id: &str) -> String {
    format!("order.{order_id}")
}

impl<B: Publisher + Subscriber> Inventory<B> {
    /// Subscribes to the saga's commands, to confirmed orders and to payments (a paid
    /// order's holds are pinned: they no longer lapse), and starts looking for lapsed
    /// reservations every [`crate::Settings::sweep_interval`].
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start(&self) -> Result<Workers, a4co_events::bus::SubscribeError> {
        let mut workers = Workers::new();
        let commands = Subscription::new(NAME, "commands")
            .to::<ReserveStock>()
            .to::<ReleaseStock>()
            .ack_wait(self.settings.ack_wait);
        let orders = Subscription::new(NAME, "orders")
            .to::<OrderConfirmed>()
            .ack_wait(self.settings.ack_wait);
        let payments = Subscription::new(NAME, "payments")
            .to::<PaymentSucceeded>()
            .ack_wait(self.settings.ack_wait);
        for subscription in [commands, orders, payments] {
            let me = self.clone();
            let handle = self
                .bus
                .subscribe(subscription, move |message: Envelope<AnyMessage>, _| {
                    let me = me.clone();
                    async move {
                        let span = service_kit::ops::message_span(&message);
                        me.handle(&message).instrument(span).await
                    }
                })
                .await?;
            workers.subscription(handle);
        }
        let me = self.clone();
        workers.every(self.settings.sweep_interval, move || {
            let me = me.clone();
            async move {
                if let Err(e) = me.release_lapsed(Utc::now()).await {
                    tracing::warn!(error = %e, "releasing lapsed reservations failed; trying again next sweep");
                }
            }
        });
        Ok(workers)
    }

    async fn handle(&self, message: &Envelope<AnyMessage>) -> Result<(), HandlerError> {
        match &message.data {
            AnyMessage::ReserveStock(command) => self.reserve(message, command).await,
            AnyMessage::ReleaseStock(command) => self.release(message, command).await,
            AnyMessage::OrderConfirmed(_) => self.commit(&message.aggregate_id).await,
            AnyMessage::PaymentSucceeded(paid) => self.pin(&paid.order_id).await,
            _ => {
                tracing::debug!(r#type = message.event_type(), "not for inventory");
                Ok(())
            }
        }
    }

    async fn reserve(
        &self,
        message: &Envelope<AnyMessage>,
        command: &ReserveStock,
    ) -> Result<(), HandlerError> {
        let product_id = &message.aggregate_id;
        let order_id = &command.order_id;
        if !is_valid_id(product_id) || !is_valid_id(order_id) {
            return Err(HandlerError::permanent(format!(
                "product {product_id:?} or order {order_id:?} is not a valid id"
            )));
        }
        // The order's holds first: a confirmation must find every product it holds, and a
        // hold already over (released, committed) must not be made again.
        let open = self
            .records
            .modify(&order_key(order_id), |current: Option<&OrderHolds>| {
                let mut holds = current.cloned().unwrap_or_default();
                if holds.is_closed(product_id) {
                    return (None, false);
                }
                if holds.products.contains(product_id) {
                    return (None, true);
                }
                holds.products.push(product_id.clone());
                (Some(holds), true)
            })
            .await?;
        if !open {
            tracing::info!(order = %order_id, "a reserve command for a hold already over; ignored");
            return Ok(());
        }
        let (before, outcome, product) = self
            .records
            .modify(&product_key(product_id), |current: Option<&Product>| {
                let Some(current) = current else {
                    return (None, (0, Reserved::Insufficient { available: 0 }, None));
                };
                let mut next = current.clone();
                let outcome = next.reserve(order_id, command.quantity, command.expires_at);
                let before = current.available();
                match outcome {
                    Reserved::New(_) => (Some(next.clone()), (before, outcome, Some(next))),
                    _ => (None, (before, outcome, Some(current.clone()))),
                }
            })
            .await?;
        let answer: AnyMessage = match (&outcome, &product) {
            (Reserved::New(held) | Reserved::Again(held), Some(product)) => {
                reserved(order_id, product, held).into()
            }
            (Reserved::Insufficient { available }, _) => StockReservationFailed {
                order_id: order_id.clone(),
                reason: if product.is_some() {
                    "insufficient stock".to_owned()
                } else {
                    "unknown product".to_owned()
                },
                failed_items: vec![FailedItem {
                    product_id: product_id.clone(),
                    requested_quantity: command.quantity,
                    available_quantity: *available,
                }],
            }
            .into(),
            (Reserved::New(_) | Reserved::Again(_), None) => {
                return Err(HandlerError::retryable(
                    "the product vanished while reserving",
                ));
            }
        };
        self.bus
            .publish(&reply_to(message, NAME, product_id, answer, "answer"))
            .await
            .map_err(HandlerError::retryable)?;
        if let (Reserved::New(_), Some(product)) = (&outcome, &product) {
            self.warn_if_low(before, product, Some(message))
                .await
                .map_err(HandlerError::retryable)?;
        }
        Ok(())
    }

    async fn release(
        &self,
        message: &Envelope<AnyMessage>,
        command: &ReleaseStock,
    ) -> Result<(), HandlerError> {
        let product_id = &message.aggregate_id;
        if !is_valid_id(product_id) || !is_valid_id(&command.order_id) {
            return Err(HandlerError::permanent(format!(
                "product {product_id:?} or order {:?} is not a valid id",
                command.order_id
            )));
        }
        self.close(&command.order_id, product_id).await?;
        let released = self
            .records
            .modify(&product_key(product_id), |current: Option<&Product>| {
                let Some(current) = current else {
                    return (None, None);
                };
                let held = current
                    .reservations
                    .iter()
                    .find(|(_, r)| r.reservation_id == command.reservation_id)
                    .map(|(order, _)| order.clone());
                let mut next = current.clone();
                match held.and_then(|order| next.release(&order)) {
                    Some(r) => (Some(next.clone()), Some((r, next.available()))),
                    None => (None, None),
                }
            })
            .await?;
        let Some((reservation, available)) = released else {
            tracing::info!(reservation = %command.reservation_id, "nothing held under this reservation (released already, or never made)");
            return Ok(());
        };
        let data = released_event(
            &command.order_id,
            &reservation,
            command.reason,
            available,
            Utc::now(),
        );
        self.bus
            .publish(&reply_to(message, NAME, product_id, data, "answer"))
            .await
            .map_err(HandlerError::retryable)?;
        Ok(())
    }

    /// The order is confirmed: what it holds becomes sold.
    async fn commit(&self, order_id: &str) -> Result<(), HandlerError> {
        if !is_valid_id(order_id) {
            return Err(HandlerError::permanent(format!(
                "order {order_id:?} is not a valid id"
            )));
        }
        // Every hold of the order is over, in one write, before the products change.
        let (products, lapsed) = self
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
            let committed = self
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
                self.warn_if_low(before, &product, None)
                    .await
                    .map_err(HandlerError::retryable)?;
            }
        }
        // A hold that lapsed before the confirmation committed nothing: the lapse is
        // announced again, so the saga gives the order up and refunds it even if the first
        // announcement never reached it (its reaction is idempotent).
        for (product_id, reservation) in &lapsed {
            let available = self.product(product_id).await?.map_or(0, |p| p.available());
            tracing::warn!(order = %order_id, product = %product_id, "a confirmed order's hold had lapsed; announcing the lapse again");
            self.announce_lapse(
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

    /// Pins the holds of a paid order: they no longer lapse (the order's confirmation
    /// commits them, its cancellation releases them).
    async fn pin(&self, order_id: &str) -> Result<(), HandlerError> {
        if !is_valid_id(order_id) {
            return Err(HandlerError::permanent(format!(
                "order {order_id:?} is not a valid id"
            )));
        }
        let Some(holds) = self.records.get::<OrderHolds>(&order_key(order_id)).await? else {
            return Ok(());
        };
        let holds = holds.value;
        for product_id in holds.products.iter().filter(|p| !holds.is_closed(p)) {
            self.records
                .modify(&product_key(product_id), |current: Option<&Product>| {
                    let Some(current) = current else {
                        return (None, ());
                    };
                    let mut next = current.clone();
                    (next.pin(order_id).then_some(next), ())
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes `inventory.stock_released` (`reservation-expired`) for a lapsed hold,
    /// under an id derived from the reservation and `occasion` (`expired` by the sweep,
    /// `lapse-at-commit` by a confirmation): a repeat of one occasion is dropped by the
    /// broker within its duplicate window, and recognised by the saga after it.
    async fn announce_lapse(
        &self,
        order_id: &str,
        product_id: &str,
        reservation: &Reservation,
        available: u32,
        occasion: &str,
    ) -> Result<(), HandlerError> {
        let data = released_event(
            order_id,
            reservation,
            ReleaseReason::ReservationExpired,
            available,
            Utc::now(),
        );
        let envelope = Envelope::new(NAME, product_id, data).with_event_id(EventId::deterministic(
            &reservation.reservation_id,
            occasion,
        ));
        self.bus
            .publish(&envelope)
            .await
            .map(|_| ())
            .map_err(HandlerError::retryable)
    }

    /// Releases every reservation lapsed at `now` and publishes `inventory.stock_released`
    /// (`reservation-expired`) for each. Returns how many were released.
    ///
    /// # Errors
    /// The store or the bus failed; what was released stays released.
    pub async fn release_lapsed(&self, now: DateTime<Utc>) -> Result<usize, HandlerError> {
        let mut count = 0;
        for product in self.products().await? {
            let lapsed = product.expired(now);
            if lapsed.is_empty() {
                continue;
            }
            for order in &lapsed {
                self.close(order, &product.product_id).await?;
            }
            let released = self
                .records
                .modify(
                    &product_key(&product.product_id),
                    |current: Option<&Product>| {
                        let Some(current) = current else {
                            return (None, Vec::new());
                        };
                        let mut next = current.clone();
                        // Pinned meanwhile (the order got paid): kept.
                        let released: Vec<_> = lapsed
                            .iter()
                            .filter(|order| {
                                next.reservations.get(*order).is_some_and(|r| r.lapsed(now))
                            })
                            .cloned()
                            .collect::<Vec<_>>()
                            .into_iter()
                            .filter_map(|order| next.release(&order).map(|r| (order, r)))
                            .collect();
                        let available = next.available();
                        let out = released
                            .into_iter()
                            .map(|(o, r)| (o, r, available))
                            .collect::<Vec<_>>();
                        (if out.is_empty() { None } else { Some(next) }, out)
                    },
                )
                .await?;
            for (order, reservation, available) in released {
                self.records
                    .modify(&order_key(&order), |current: Option<&OrderHolds>| {
                        let mut holds = current.cloned().unwrap_or_default();
                        let known = holds.lapsed.contains_key(&product.product_id);
                        if !known {
                            holds
                                .lapsed
                                .insert(product.product_id.clone(), reservation.clone());
                        }
                        ((!known).then_some(holds), ())
                    })
                    .await?;
                self.announce_lapse(
                    &order,
                    &product.product_id,
                    &reservation,
                    available,
                    "expired",
                )
                .await?;
                tracing::info!(order = %order, product = %product.product_id, "a reservation lapsed; released");
                count += 1;
            }
        }
        Ok(count)
    }
}

impl<B> Inventory<B> {
    /// Marks the order's hold on the product over, before the product's record changes: a
    /// crash in between leaves a hold that a redelivery releases, never one made twice.
    async fn close(&self, order_id: &str, product_id: &str) -> Result<(), RecordsError> {
        self.records
            .modify(&order_key(order_id), |current: Option<&OrderHolds>| {
                let mut holds = current.cloned().unwrap_or_default();
                if holds.is_closed(product_id) {
                    return (None, ());
                }
                if !holds.products.iter().any(|p| p == product_id) {
                    holds.products.push(product_id.to_owned());
                }
                holds.closed.push(product_id.to_owned());
                (Some(holds), ())
            })
            .await
    }
}

fn reserved(order_id: &str, product: &Product, held: &Reservation) -> StockReserved {
    StockReserved {
        order_id: order_id.to_owned(),
        artisan_id: product.artisan_id.clone(),
        quantity_reserved: held.quantity,
        remaining_stock: product.available(),
        reservation_expiry: held.expires_at,
        reservation_id: held.reservation_id.clone(),
        unit_price: product.unit_price,
    }
}

fn released_event(
    order_id: &str,
    reservation: &Reservation,
    reason: ReleaseReason,
    available: u32,
    at: DateTime<Utc>,
) -> StockReleased {
    StockReleased {
        order_id: order_id.to_owned(),
        reservation_id: reservation.reservation_id.clone(),
        quantity_released: reservation.quantity,
        reason,
        new_available_stock: available,
        released_at: at,
    }
}

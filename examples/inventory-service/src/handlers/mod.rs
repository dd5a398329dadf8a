//! What the service does with messages, one handler per file: the saga's reserve and
//! release commands, confirmed orders and payments, and (every sweep) lapsed reservations.
//! Each handler changes one product's record with compare-and-swap, then publishes its
//! answer under an id derived from the command's, so a redelivery publishes the same answer
//! and changes nothing.

mod order_confirmed;
mod payment_succeeded;
mod release_stock;
mod reserve_stock;

use a4co_events::bus::{HandlerError, Handlers, Publisher, Subscriber, Subscription};
use a4co_events::catalog::inventory::{
    ReleaseReason, ReleaseStock, ReserveStock, StockReleased, StockReserved,
};
use a4co_events::catalog::order::OrderConfirmed;
use a4co_events::catalog::payment::PaymentSucceeded;
use a4co_events::service::{RecordsError, Workers};
use a4co_events::{Envelope, EventId};
use chrono::{DateTime, Utc};

use crate::domain::{OrderHolds, Product, Reservation};
use crate::{Inventory, NAME, product_key};

pub(crate) fn order_key(order_id: &str) -> String {
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
        let ack_wait = self.settings.ack_wait;
        let state = || Handlers::with_state(self.clone());
        let commands = self
            .bus
            .subscribe(
                Subscription::new(NAME, "commands").ack_wait(ack_wait),
                state()
                    .on::<ReserveStock>(reserve_stock::reserve_stock)
                    .on::<ReleaseStock>(release_stock::release_stock),
            )
            .await?;
        let orders = self
            .bus
            .subscribe(
                Subscription::new(NAME, "orders").ack_wait(ack_wait),
                state().on::<OrderConfirmed>(order_confirmed::order_confirmed),
            )
            .await?;
        let payments = self
            .bus
            .subscribe(
                Subscription::new(NAME, "payments").ack_wait(ack_wait),
                state().on::<PaymentSucceeded>(payment_succeeded::payment_succeeded),
            )
            .await?;
        let mut workers = Workers::new();
        for handle in [commands, orders, payments] {
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

    /// Publishes `inventory.stock_released` (`reservation-expired`) for a lapsed hold,
    /// under an id derived from the reservation and `occasion` (`expired` by the sweep,
    /// `lapse-at-commit` by a confirmation): a repeat of one occasion is dropped by the
    /// broker within its duplicate window, and recognised by the saga after it.
    pub(crate) async fn announce_lapse(
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
            .map_err(HandlerError::from)
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
    pub(crate) async fn close(&self, order_id: &str, product_id: &str) -> Result<(), RecordsError> {
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

pub(crate) fn reserved(order_id: &str, product: &Product, held: &Reservation) -> StockReserved {
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

pub(crate) fn released_event(
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

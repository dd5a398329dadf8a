//! Placing an order: validate the request, price and check it with inventory, pre-validate
//! the payment method with payment, save it, announce it (`order.created`).

use std::collections::BTreeMap;

use a4co_events::bus::{Publisher, Subscriber};
use a4co_events::catalog::order::{Fulfillment, OrderCreated, OrderItem, OrderStatus};
use a4co_events::catalog::payment::PaymentMethod;
use a4co_events::service::RecordsError;
use a4co_events::{Envelope, EventId, Money};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use service_kit::is_valid_id;

use crate::{NAME, Order, Orders, customer_key, order_key, outbox_key};

/// The most lines one order may have.
pub const MAX_ITEMS: usize = 50;
/// The most units of one product in one order.
pub const MAX_QUANTITY: u32 = 100;

/// One line of a new order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestedItem {
    /// The product.
    pub product_id: String,
    /// Units, 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
}

/// The body of `POST /api/v1/orders`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: String,
    /// What, 1 to [`MAX_ITEMS`] lines.
    pub items: Vec<RequestedItem>,
    /// How they pay.
    pub payment_method: PaymentMethod,
    /// The stored method (cards need one).
    #[serde(default)]
    pub payment_method_id: Option<String>,
    /// Delivery (with an address) or pickup.
    pub fulfillment: Fulfillment,
}

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The request breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// A product inventory does not know (422).
    #[error("product {0:?} does not exist")]
    UnknownProduct(String),
    /// Not enough stock right now (409).
    #[error("product {product:?}: {requested} requested, {available} available")]
    OutOfStock {
        /// The product.
        product: String,
        /// Units asked for.
        requested: u32,
        /// Units available.
        available: u32,
    },
    /// Payment refused the method (422), with its code.
    #[error("{message}")]
    PaymentRefused {
        /// Payment's code (`payment-method-expired`, ...).
        code: String,
        /// Payment's words.
        message: String,
    },
    /// A dependency did not answer (503): try again later. Retried with the same
    /// idempotency key, the request completes the order if this one got as far as
    /// claiming the key. `detail` is for the log, never for the customer.
    #[error("{dependency}: {detail}")]
    Unavailable {
        /// Which one: `inventory`, `payment`, `the order store`.
        dependency: &'static str,
        /// What it said.
        detail: String,
    },
}

impl PlaceError {
    fn unavailable(dependency: &'static str, detail: impl std::fmt::Display) -> Self {
        PlaceError::Unavailable {
            dependency,
            detail: detail.to_string(),
        }
    }
}

impl From<RecordsError> for PlaceError {
    fn from(error: RecordsError) -> Self {
        PlaceError::unavailable("the order store", error)
    }
}

/// Inventory's availability answer: the fields this service reads (a tolerant reader).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Availability {
    name: String,
    artisan_id: String,
    unit_price: Money,
    available: u32,
}

impl PlaceOrder {
    fn check(&self) -> Result<BTreeMap<String, u32>, PlaceError> {
        let invalid = |m: String| Err(PlaceError::Invalid(m));
        if !is_valid_id(&self.customer_id) {
            return invalid("customerId must be an id (1 to 64 letters, digits, - or _)".into());
        }
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return invalid(format!("items: an order has 1 to {MAX_ITEMS} lines"));
        }
        if let Some(id) = &self.payment_method_id
            && !is_valid_id(id)
        {
            return invalid("paymentMethodId must be an id".into());
        }
        if self.payment_method == PaymentMethod::Card && self.payment_method_id.is_none() {
            return invalid("a card payment needs paymentMethodId".into());
        }
        if let Fulfillment::Delivery { address, .. } = &self.fulfillment
            && [&address.street, &address.city, &address.postal_code]
                .iter()
                .any(|f| f.trim().is_empty())
        {
            return invalid("fulfillment.address needs street, city and postalCode".into());
        }
        let mut wanted = BTreeMap::new();
        for item in &self.items {
            if !is_valid_id(&item.product_id) {
                return invalid(format!("{:?} is not a product id", item.product_id));
            }
            let units = wanted.entry(item.product_id.clone()).or_insert(0_u32);
            *units = units.saturating_add(item.quantity);
            if item.quantity == 0 || *units > MAX_QUANTITY {
                return invalid(format!(
                    "{}: quantity must be 1 to {MAX_QUANTITY}",
                    item.product_id
                ));
            }
        }
        Ok(wanted)
    }
}

impl<B: Publisher + Subscriber> Orders<B> {
    /// Places an order: checks it, prices it with inventory's answers, pre-validates the
    /// payment method, saves it and publishes `order.created`. With an `idempotency_key`,
    /// repeating the call returns the first order (`false`: not new), and completes it
    /// when the first call failed after claiming the key (the claim holds the whole
    /// order), so no retry ever waits on a request that is gone.
    ///
    /// # Errors
    /// [`PlaceError`], one variant per answer a caller needs.
    pub async fn place(
        &self,
        request: PlaceOrder,
        idempotency_key: Option<&str>,
    ) -> Result<(Order, bool), PlaceError> {
        let wanted = request.check()?;
        let order_id = format!("ord-{}", EventId::new());
        let key = idempotency_key.map(|k| format!("idem.{k}"));
        if let Some(key) = &key {
            if !idempotency_key.is_some_and(is_valid_id) {
                return Err(PlaceError::Invalid(
                    "Idempotency-Key must be 1 to 64 letters, digits, - or _".into(),
                ));
            }
            if let Some(first) = self.records.get::<Order>(key).await? {
                return self.placed_before(first.value).await;
            }
        }

        let mut items = Vec::with_capacity(wanted.len());
        for (product_id, quantity) in &wanted {
            let path = format!("/api/v1/inventory/availability/{product_id}");
            let found: Availability = match self.clients.inventory.get_json(&path).await {
                Ok(found) => found,
                Err(e) if e.status() == Some(404) => {
                    return Err(PlaceError::UnknownProduct(product_id.clone()));
                }
                Err(e) => return Err(PlaceError::unavailable("inventory", e)),
            };
            if found.available < *quantity {
                return Err(PlaceError::OutOfStock {
                    product: product_id.clone(),
                    requested: *quantity,
                    available: found.available,
                });
            }
            items.push(OrderItem {
                product_id: product_id.clone(),
                artisan_id: found.artisan_id,
                quantity: *quantity,
                unit_price: found.unit_price,
                product_name: found.name,
            });
        }
        let total = items
            .iter()
            .try_fold(None::<Money>, |sum, item| {
                let line = item.unit_price.checked_mul(item.quantity)?;
                match sum {
                    None => Some(Some(line)),
                    Some(sum) => sum.checked_add(line).map(Some),
                }
            })
            .flatten()
            .ok_or_else(|| {
                PlaceError::Invalid(
                    "the lines' prices cannot be added up (mixed currencies?)".into(),
                )
            })?;

        self.validate_payment(&request, total).await?;

        let now = Utc::now();
        let order = Order {
            order_id: order_id.clone(),
            customer_id: request.customer_id.clone(),
            items,
            total,
            fulfillment: request.fulfillment,
            payment_method_id: request.payment_method_id,
            status: OrderStatus::Pending,
            cancellation: None,
            payment_id: None,
            created_at: now,
            updated_at: now,
            announced: false,
        };
        // The key is claimed once the order is sure to be taken (a refused request leaves
        // it free for a corrected retry), with the whole order: a retry finishes it.
        if let Some(key) = &key {
            let claimed = self
                .records
                .modify(key, |first: Option<&Order>| match first {
                    Some(first) => (None, first.clone()),
                    None => (Some(order.clone()), order.clone()),
                })
                .await?;
            if claimed.order_id != order_id {
                return self.placed_before(claimed).await;
            }
        }
        self.save(&order).await?;
        let mut order = order;
        order.announced = self.announce(&order).await;
        Ok((order, true))
    }

    /// Writes a new order: its customer-index entry and outbox marker first, then the order
    /// itself, the write that places it. A failure before that last write leaves no order
    /// (the caller answers 503 truthfully); one after it cannot happen. Each write keeps
    /// what is there, so repeating `save` (a retry with the idempotency key) is safe.
    async fn save(&self, order: &Order) -> Result<(), RecordsError> {
        let (index, outbox) = (
            customer_key(&order.customer_id, &order.order_id),
            outbox_key(&order.order_id),
        );
        tokio::try_join!(
            self.create(&index, &order.created_at),
            self.create(&outbox, &order.created_at)
        )?;
        self.create(&order_key(&order.order_id), order).await
    }

    /// Writes `value` under `key` unless a record is there already.
    async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<(), RecordsError> {
        match self.records.put(key, value, None).await {
            Ok(_) | Err(RecordsError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The order a repeated request placed first: as stored, or saved now when the first
    /// request stopped short of it; announced if it is not yet.
    async fn placed_before(&self, first: Order) -> Result<(Order, bool), PlaceError> {
        let mut order = match self.order(&first.order_id).await? {
            Some(order) => order,
            None => {
                self.save(&first).await?;
                first
            }
        };
        order.announced = self.announce(&order).await;
        Ok((order, false))
    }

    async fn validate_payment(&self, request: &PlaceOrder, total: Money) -> Result<(), PlaceError> {
        let body = serde_json::json!({
            "customerId": request.customer_id,
            "amount": total,
            "paymentMethod": request.payment_method,
            "paymentMethodId": request.payment_method_id,
        });
        match self
            .clients
            .payment
            .post("/api/v1/payments/validate")
            .json(&body)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(400 | 422)) => {
                let answer: serde_json::Value = e
                    .body()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .unwrap_or_default();
                Err(PlaceError::PaymentRefused {
                    code: answer["error"]
                        .as_str()
                        .unwrap_or("payment-refused")
                        .to_owned(),
                    message: answer["message"]
                        .as_str()
                        .unwrap_or("payment refused the method")
                        .to_owned(),
                })
            }
            Err(e) => Err(PlaceError::unavailable("payment", e)),
        }
    }

    /// Publishes `order.created` for an order not yet announced, records that it is and
    /// drops its outbox marker; returns whether it is. Its id is derived from the order's, so announcing twice stores
    /// one event. A failure is logged; the outbox tries again.
    pub(crate) async fn announce(&self, order: &Order) -> bool {
        if order.announced {
            return true;
        }
        let created = OrderCreated {
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            total_amount: order.total,
            fulfillment: order.fulfillment.clone(),
            payment_method_id: order.payment_method_id.clone(),
            created_at: order.created_at,
        };
        let envelope = Envelope::new(NAME, &order.order_id, created)
            .with_event_id(EventId::deterministic(&order.order_id, "created"))
            .with_user_id(&order.customer_id)
            .with_occurred_at(order.created_at);
        if let Err(e) = self.bus.publish(&envelope).await {
            tracing::warn!(order = %order.order_id, error = %e, "order.created not published; the outbox will retry");
            return false;
        }
        let marked = self
            .records
            .modify(
                &order_key(&order.order_id),
                |current: Option<&Order>| match current {
                    Some(o) if !o.announced => {
                        let mut o = o.clone();
                        o.announced = true;
                        (Some(o), ())
                    }
                    _ => (None, ()),
                },
            )
            .await;
        match marked {
            Ok(()) => self.forget_outbox(&order.order_id).await,
            Err(e) => {
                tracing::warn!(order = %order.order_id, error = %e, "order.created published, not yet marked");
            }
        }
        true
    }
}

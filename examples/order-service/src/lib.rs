//! **order-service**, the a4co reference service for orders: it takes orders over REST,
//! checks them synchronously with inventory and payment (a4co-http, design-v2 timeouts,
//! service JWT), publishes `order.created`, runs the order fulfillment saga
//! ([`fulfillment`]), and keeps each order's state in step with the saga's
//! commands.
//!
//! Run it with `cargo run -p example-order-service` (in memory), or with
//! `NATS_URL=nats://127.0.0.1:4222` (orders in the KV bucket `orders`, saga instances in
//! `a4co-sagas`). It needs `SERVICE_JWT_SECRET`, and inventory and payment at
//! `INVENTORY_URL` and `PAYMENT_URL`.
//!
//! | REST | answers |
//! |---|---|
//! | `POST /api/v1/orders` (optional `Idempotency-Key`) | 201 with the order; 400 bad input, 409 out of stock, 422 unknown product or refused payment method, 503 a dependency down |
//! | `GET /api/v1/orders/{orderId}` | 200, 404 |
//! | `GET /api/v1/orders/customer/{customerId}` | 200 with the customer's orders, newest first |
//!
//! | consumes | publishes |
//! |---|---|
//! | (REST) | `order.created` |
//! | `order.cmd.confirm` | `order.confirmed` |
//! | `order.cmd.cancel` | `order.cancelled` |
//! | the saga's replies (`inventory.*`, `payment.*`, its own events) | the saga's commands |
//!
//! ```
//! use a4co_events::catalog::order::OrderStatus;
//! use order_service::{Clients, Orders};
//! use a4co_events::service::{AnyBus, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = AnyBus::connect(None, "order-service", 1).await?;
//! let clients = Clients::new("http://127.0.0.1:8082", "http://127.0.0.1:8083", None)?;
//! let orders = Orders::new(bus, Records::memory(), clients);
//! assert!(orders.order("ord-1").await?.is_none());
//! # let _ = OrderStatus::Pending;
//! # Ok(())
//! # }
//! ```

mod config;
pub mod fulfillment;
mod handlers;
pub mod http;
mod place;

use a4co_events::Money;
use a4co_events::catalog::order::{CancellationReason, Fulfillment, OrderItem, OrderStatus};
use a4co_events::service::{Env, Service, StartError};
use a4co_events::service::{Records, RecordsError};
use a4co_http::Client;
use a4co_http::auth::Issuer;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use config::Config;
pub use place::{MAX_ITEMS, MAX_QUANTITY, PlaceError, PlaceOrder, RequestedItem};

/// The service's name on the bus and in tokens.
pub const NAME: &str = "order-service";

/// Why an order was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancellation {
    /// The reason.
    pub reason: CancellationReason,
    /// What went wrong, for people.
    pub detail: Option<String>,
}

/// An order, as stored and as served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The lines, priced when the order was placed.
    pub items: Vec<OrderItem>,
    /// The sum of the lines.
    pub total: Money,
    /// Delivery or pickup.
    pub fulfillment: Fulfillment,
    /// The payment method chosen.
    pub payment_method_id: Option<String>,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it was cancelled, once it is.
    pub cancellation: Option<Cancellation>,
    /// The payment, once taken.
    pub payment_id: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Whether `order.created` is published (an order not yet announced is published again
    /// by the outbox).
    pub announced: bool,
}

/// The clients for the synchronous calls, one per target.
#[derive(Clone, Debug)]
pub struct Clients {
    /// inventory-service (availability, 3 s).
    pub inventory: Client,
    /// payment-service (validation, 5 s).
    pub payment: Client,
}

impl Clients {
    /// Clients for inventory and payment at these base URLs, sending `issuer`'s tokens
    /// (none: no token, for services that do not check them), with design-v2's timeouts.
    ///
    /// # Errors
    /// A URL that is not one.
    pub fn new(inventory: &str, payment: &str, issuer: Option<Issuer>) -> Result<Self, StartError> {
        let build = |target: &str, url: &str, route: &str| {
            let mut builder = Client::builder(target, url)
                .source(NAME)
                .timeout(service_kit::timeouts::design_timeout(target, route));
            if let Some(issuer) = &issuer {
                builder = builder.service_auth(issuer.clone());
            }
            builder
                .build()
                .map_err(|e| StartError::invalid_config(format!("{target} at {url:?}: {e}")))
        };
        Ok(Clients {
            inventory: build(
                "inventory-service",
                inventory,
                "/api/v1/inventory/availability/{productId}",
            )?,
            payment: build("payment-service", payment, "/api/v1/payments/validate")?,
        })
    }

    /// The permissions order-service's tokens carry.
    pub const PERMISSIONS: [&'static str; 2] = ["inventory:read", "payment:validate"];
}

/// The order service over a bus and its records; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Orders<B> {
    bus: B,
    records: Records,
    clients: Clients,
}

fn order_key(order_id: &str) -> String {
    format!("order.{order_id}")
}

/// The customer-index entry of one order: one small record per order, so no record grows
/// with a customer's history, and a listing reads only that customer's keys.
fn customer_key(customer_id: &str, order_id: &str) -> String {
    format!("customer.{customer_id}.{order_id}")
}

/// The outbox marker of an order saved but not yet announced.
fn outbox_key(order_id: &str) -> String {
    format!("outbox.{order_id}")
}

/// How long an idempotency key is remembered: a request repeated within it returns the
/// first order; after it, the key places a new one.
pub const IDEMPOTENCY_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl<B> Orders<B> {
    /// The service on `bus`, keeping orders in `records` (idempotency keys for
    /// [`IDEMPOTENCY_KEPT`], orders for good), calling others through `clients`.
    pub fn new(bus: B, records: Records, clients: Clients) -> Self {
        Orders {
            bus,
            records: records.expire("idem.", IDEMPOTENCY_KEPT),
            clients,
        }
    }

    /// The order, if any.
    ///
    /// # Errors
    /// The store failed.
    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, RecordsError> {
        Ok(self
            .records
            .get::<Order>(&order_key(order_id))
            .await?
            .map(|v| v.value))
    }

    /// The customer's orders, newest first (an index entry whose order was never saved,
    /// a placement cut short, is skipped).
    ///
    /// # Errors
    /// The store failed.
    pub async fn orders_of(&self, customer_id: &str) -> Result<Vec<Order>, RecordsError> {
        let prefix = customer_key(customer_id, "");
        let keys = self.records.keys(&prefix).await?;
        let mut orders = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(order) = self.order(&key[prefix.len()..]).await? {
                orders.push(order);
            }
        }
        orders.sort_by_key(|o| std::cmp::Reverse(o.created_at));
        Ok(orders)
    }

    /// Every order (for the demo's summary).
    ///
    /// # Errors
    /// The store failed.
    pub async fn all(&self) -> Result<Vec<Order>, RecordsError> {
        Ok(self
            .records
            .all::<Order>("order.")
            .await?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }
}

/// Runs the service until Ctrl-C or SIGTERM.
///
/// # Errors
/// A bad setting, an unreachable NATS, an address in use: the message says what to fix.
pub async fn run(env: Env) -> Result<(), StartError> {
    let config = Config::from_env(&env)?;
    let service = Service::start(NAME, &env).await?;
    let records = service.records("orders").await?;
    let issuer = Issuer::new(config.secret.clone(), NAME, Clients::PERMISSIONS);
    let clients = Clients::new(&config.inventory_url, &config.payment_url, Some(issuer))?;
    let orders = Orders::new(service.bus().clone(), records, clients);
    let workers = orders.start(service.bus(), config.saga).await?;
    let router = orders.router();
    service
        .serve_until_signal(config.http_addr, router, workers)
        .await
}

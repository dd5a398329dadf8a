//! **inventory-service**, the a4co reference service for stock: it answers availability
//! over REST, holds stock for the order fulfillment saga (reservations that expire), and
//! tells the marketplace what changed. Stock is never negative and never reserved twice for
//! an order, whatever the redeliveries: every change is a compare-and-swap on the product's
//! record, and a reservation is keyed by its order.
//!
//! Run it with `cargo run -p example-inventory-service` (in memory), or with
//! `NATS_URL=nats://127.0.0.1:4222` (state in the KV bucket `inventory`). It needs
//! `SERVICE_JWT_SECRET` (shared by every service, at least 32 bytes).
//!
//! | REST (service JWT) | permission |
//! |---|---|
//! | `GET /api/v1/inventory/availability/{productId}` | `inventory:read` |
//! | `POST /api/v1/inventory/check-availability` | `inventory:read` |
//! | `GET /api/v1/inventory/{productId}` | `inventory:read` |
//! | `PUT /api/v1/inventory/{productId}` (create or describe a product) | `inventory:write` |
//! | `POST /api/v1/inventory/{productId}/adjust` (restock, damage, ...) | `inventory:write` |
//!
//! | consumes | publishes |
//! |---|---|
//! | `inventory.cmd.reserve_stock` | `inventory.stock_reserved` or `inventory.stock_reservation_failed` |
//! | `inventory.cmd.release_stock` | `inventory.stock_released` |
//! | `order.confirmed` (the order's holds become sales) | `inventory.low_stock_warning` (crossing the threshold) |
//! | (a lapsed hold, found every `INVENTORY_SWEEP_INTERVAL_MS`) | `inventory.stock_released` (`reservation-expired`) |
//! | (the adjust endpoint) | `inventory.adjusted` |
//!
//! ```
//! use a4co_events::Money;
//! use inventory_service::{Inventory, ProductDetails, Settings};
//! use a4co_events::service::{AnyBus, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = AnyBus::connect(None, "inventory-service", 1).await?;
//! let inventory = Inventory::new(bus, Records::memory(), Settings::default());
//! inventory
//!     .put_product(ProductDetails::new("prod-oil", "Aceite 500 ml", "art-1", "food", Money::eur(1250)))
//!     .await?;
//! let oil = inventory.restock("prod-oil", 40, "seed").await?;
//! assert_eq!(oil.available(), 40);
//! # Ok(())
//! # }
//! ```

mod config;
pub mod domain;
mod handlers;
pub mod http;

use std::time::Duration;

use a4co_events::bus::{PublishError, Publisher, Subscriber};
use a4co_events::catalog::inventory::{AdjustmentReason, InventoryAdjusted, LowStockWarning};
use a4co_events::service::{Env, Service, StartError};
use a4co_events::service::{Records, RecordsError};
use a4co_events::{Envelope, Money};
use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use config::Config;
pub use domain::{OrderHolds, Product, Reservation};

/// The service's name on the bus and in tokens.
pub const NAME: &str = "inventory-service";

/// How the service behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The low-stock threshold given to new products (default 5).
    pub low_stock_threshold: u32,
    /// How often lapsed reservations are looked for (default 5 s).
    pub sweep_interval: Duration,
    /// How long a command taken by an instance that died waits before it is delivered
    /// again (default 30 s).
    pub ack_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            low_stock_threshold: 5,
            sweep_interval: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// What describes a product (everything but its stock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductDetails {
    /// The product (taken from the URL over REST).
    #[serde(default)]
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// The artisan who makes it.
    pub artisan_id: String,
    /// Its category.
    pub category: String,
    /// The price of one unit.
    pub unit_price: Money,
    /// Under this many available units, a warning goes out (the service's default if unset).
    #[serde(default)]
    pub low_stock_threshold: Option<u32>,
}

impl ProductDetails {
    /// A product's details, with the service's default threshold.
    pub fn new(
        product_id: impl Into<String>,
        name: impl Into<String>,
        artisan_id: impl Into<String>,
        category: impl Into<String>,
        unit_price: Money,
    ) -> Self {
        ProductDetails {
            product_id: product_id.into(),
            name: name.into(),
            artisan_id: artisan_id.into(),
            category: category.into(),
            unit_price,
            low_stock_threshold: None,
        }
    }
}

/// Why a stock adjustment was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    /// No such product.
    #[error("no product {0:?}")]
    NotFound(String),
    /// Removing more than the units not reserved.
    #[error("only {removable} units can be removed (the rest is reserved or absent)")]
    Insufficient {
        /// Units that could be removed.
        removable: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The change is saved, but its event could not be published (the message says why).
    #[error("stock changed, but the event could not be published: {0}")]
    Publish(#[from] PublishError),
}

/// The inventory service over a bus and its records; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Inventory<B> {
    bus: B,
    records: Records,
    settings: Settings,
}

fn product_key(product_id: &str) -> String {
    format!("product.{product_id}")
}

impl<B: Publisher + Subscriber> Inventory<B> {
    /// The service on `bus`, keeping stock in `records`.
    pub fn new(bus: B, records: Records, settings: Settings) -> Self {
        Inventory {
            bus,
            records,
            settings,
        }
    }

    /// The product, if known.
    ///
    /// # Errors
    /// The store failed.
    pub async fn product(&self, product_id: &str) -> Result<Option<Product>, RecordsError> {
        Ok(self
            .records
            .get::<Product>(&product_key(product_id))
            .await?
            .map(|v| v.value))
    }

    /// Every product.
    ///
    /// # Errors
    /// The store failed.
    pub async fn products(&self) -> Result<Vec<Product>, RecordsError> {
        Ok(self
            .records
            .all::<Product>("product.")
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Creates a product (no stock) or updates its description, keeping its stock.
    ///
    /// # Errors
    /// The store failed.
    pub async fn put_product(&self, details: ProductDetails) -> Result<Product, RecordsError> {
        let threshold = details
            .low_stock_threshold
            .unwrap_or(self.settings.low_stock_threshold);
        let now = Utc::now();
        self.records
            .modify(
                &product_key(&details.product_id),
                |current: Option<&Product>| {
                    let mut product = current.cloned().unwrap_or_else(|| {
                        Product::new(&details.product_id, details.unit_price, now)
                    });
                    product.name.clone_from(&details.name);
                    product.artisan_id.clone_from(&details.artisan_id);
                    product.category.clone_from(&details.category);
                    product.unit_price = details.unit_price;
                    product.low_stock_threshold = threshold;
                    (Some(product.clone()), product)
                },
            )
            .await
    }

    /// Adds `units` to the product's stock (reason `restock`), as `by`.
    ///
    /// # Errors
    /// As [`Inventory::adjust`].
    pub async fn restock(
        &self,
        product_id: &str,
        units: u32,
        by: &str,
    ) -> Result<Product, AdjustError> {
        self.adjust(
            product_id,
            i64::from(units),
            AdjustmentReason::Restock,
            by,
            None,
        )
        .await
    }

    /// Changes the units on hand by `delta` and publishes `inventory.adjusted` (and a
    /// low-stock warning when it crosses the threshold).
    ///
    /// # Errors
    /// [`AdjustError`]: an unknown product, a removal of reserved units, a failed store.
    pub async fn adjust(
        &self,
        product_id: &str,
        delta: i64,
        reason: AdjustmentReason,
        by: &str,
        notes: Option<String>,
    ) -> Result<Product, AdjustError> {
        let now = Utc::now();
        let outcome = self
            .records
            .modify(&product_key(product_id), |current: Option<&Product>| {
                let Some(current) = current else {
                    return (None, Err(AdjustError::NotFound(product_id.to_owned())));
                };
                let mut product = current.clone();
                match product.adjust(delta, now) {
                    Ok(previous) => (
                        Some(product.clone()),
                        Ok((current.available(), previous, product)),
                    ),
                    Err(e) => (
                        None,
                        Err(AdjustError::Insufficient {
                            removable: e.removable,
                        }),
                    ),
                }
            })
            .await?;
        let (available_before, previous, product) = outcome?;
        let adjusted = InventoryAdjusted {
            previous_stock: previous,
            new_stock: product.on_hand,
            adjustment_quantity: delta,
            adjustment_reason: reason,
            adjusted_by: by.to_owned(),
            adjusted_at: now,
            notes,
            batch_number: None,
        };
        self.bus
            .publish(&Envelope::new(NAME, product_id, adjusted))
            .await?;
        self.warn_if_low(available_before, &product, None).await?;
        Ok(product)
    }

    /// Publishes a `LowStockWarning` when the product's availability fell under its
    /// threshold with this change.
    async fn warn_if_low(
        &self,
        available_before: u32,
        product: &Product,
        cause: Option<&Envelope<a4co_events::catalog::inventory::ReserveStock>>,
    ) -> Result<(), PublishError> {
        let threshold = product.low_stock_threshold;
        let now = Utc::now();
        let available = product.available();
        if available_before < threshold || available >= threshold {
            return Ok(());
        }
        let daily = product.daily_sales(now);
        let days_left = if daily > 0.0 {
            f64::from(available) / daily
        } else {
            365.0
        };
        let warning = LowStockWarning {
            current_stock: available,
            warning_threshold: threshold,
            critical_threshold: threshold / 2,
            artisan_id: product.artisan_id.clone(),
            product_name: product.name.clone(),
            category: product.category.clone(),
            last_restock_date: product.last_restock,
            average_daily_sales: daily,
            estimated_stockout_date: now
                + chrono::Duration::seconds((days_left.min(3650.0) * 86_400.0) as i64),
        };
        let envelope = match cause {
            Some(cause) => {
                Envelope::reply_to(cause, NAME, &product.product_id, warning, "low-stock")
            }
            None => Envelope::new(NAME, &product.product_id, warning),
        };
        self.bus.publish(&envelope).await.map(drop)
    }
}

/// Runs the service until Ctrl-C or SIGTERM: configuration from `env`, the bus and the
/// records on NATS when `NATS_URL` is set.
///
/// # Errors
/// A bad setting, an unreachable NATS, an address in use: the message says what to fix.
pub async fn run(env: Env) -> Result<(), StartError> {
    let config = Config::from_env(&env)?;
    let service = Service::start(NAME, &env).await?;
    let stock = service.records("inventory").await?;
    let inventory = Inventory::new(service.bus().clone(), stock, config.settings);
    let workers = inventory.start().await?;
    let router = inventory.router(&a4co_http::auth::Verifier::new(&config.secret));
    service
        .serve_until_signal(config.http_addr, router, workers)
        .await
}

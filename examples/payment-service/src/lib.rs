//! **payment-service**, the a4co reference service for payments: it pre-validates payment
//! methods over REST and charges orders for the fulfillment saga through a simulated
//! gateway ([`Gateway`]) whose declines and latency are deterministic and configurable.
//! Each order is charged at most once, whatever the redeliveries or the instances: the
//! charge goes to the gateway under the order's idempotency key, and the payment's record
//! changes only by compare-and-swap.
//!
//! Run it with `cargo run -p example-payment-service` (in memory), or with
//! `NATS_URL=nats://127.0.0.1:4222` (state in the KV bucket `payments`). It needs
//! `SERVICE_JWT_SECRET`.
//!
//! | REST (service JWT) | permission |
//! |---|---|
//! | `POST /api/v1/payments/validate` | `payment:validate` |
//! | `GET /api/v1/payments/{orderId}` | `payment:read` |
//!
//! | consumes | publishes |
//! |---|---|
//! | `payment.cmd.process` | `payment.initiated`, then `payment.succeeded` or `payment.failed` |
//! | `payment.cmd.refund` | `payment.refund_processed` |
//!
//! ```
//! use a4co_events::Money;
//! use payment_service::{Gateway, Payments};
//! use a4co_events::service::{AnyBus, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = AnyBus::connect(None, "payment-service", 1).await?;
//! let gateway = Gateway { decline_over_minor: Some(50_000), ..Gateway::default() };
//! let payments = Payments::new(bus, Records::memory(), gateway);
//! assert!(payments.validate("pm-card-1", Money::eur(1200)).is_ok());
//! assert!(payments.validate("pm-expired-1", Money::eur(1200)).is_err());
//! # Ok(())
//! # }
//! ```

mod config;
mod gateway;
mod handlers;
pub mod http;

pub use handlers::EXPIRED;

use a4co_events::Money;
use a4co_events::service::{Env, Service};
use a4co_events::service::{Records, RecordsError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use config::Config;
pub use gateway::{Charge, Gateway};

/// The service's name on the bus and in tokens.
pub const NAME: &str = "payment-service";

/// Where an order's payment stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum Status {
    /// Sent to the gateway; no answer recorded yet.
    Initiated,
    /// Charged.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        /// The gateway's transaction id.
        gateway_transaction_id: String,
    },
    /// Declined.
    Failed {
        /// Why, as a code.
        code: String,
        /// Why, in words.
        message: String,
    },
}

/// A refund given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    /// The gateway's refund id.
    pub refund_id: String,
    /// How much.
    pub amount: Money,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An order's payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// Our transaction id (`txn-<order>`), what a refund names.
    pub payment_id: String,
    /// The order.
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// How much.
    pub amount: Money,
    /// The stored payment method, if any.
    pub payment_method_id: Option<String>,
    /// Where it stands.
    #[serde(flatten)]
    pub status: Status,
    /// The refund, once given.
    pub refund: Option<Refund>,
    /// When it started.
    pub initiated_at: DateTime<Utc>,
}

/// Why a payment method is refused before any order is placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// A stable code (`payment-method-invalid`, `payment-method-expired`, `amount-over-limit`).
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

/// The payment service over a bus and its records; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Payments<B> {
    bus: B,
    records: Records,
    gateway: Gateway,
}

fn payment_key(order_id: &str) -> String {
    format!("payment.{order_id}")
}

impl<B> Payments<B> {
    /// The service on `bus`, keeping payments in `records`, charging through `gateway`.
    pub fn new(bus: B, records: Records, gateway: Gateway) -> Self {
        Payments {
            bus,
            records,
            gateway,
        }
    }

    /// The payment of `order_id`, if any.
    ///
    /// # Errors
    /// The store failed.
    pub async fn payment(&self, order_id: &str) -> Result<Option<Payment>, RecordsError> {
        Ok(self
            .records
            .get::<Payment>(&payment_key(order_id))
            .await?
            .map(|v| v.value))
    }

    /// How many charges the gateway took (approved or declined), one per order at most.
    ///
    /// # Errors
    /// The store failed.
    pub async fn gateway_charges(&self) -> Result<Vec<(String, Charge)>, RecordsError> {
        self.records.all::<Charge>("gateway.").await
    }

    /// Checks a payment method before an order is placed: `pm-invalid*` and `pm-expired*`
    /// ids are refused, and so are amounts the gateway would refuse.
    ///
    /// # Errors
    /// [`Invalid`], saying why.
    pub fn validate(&self, payment_method_id: &str, amount: Money) -> Result<(), Invalid> {
        if payment_method_id.starts_with("pm-invalid") {
            return Err(Invalid {
                code: "payment-method-invalid",
                message: format!("payment method {payment_method_id} does not exist"),
            });
        }
        if payment_method_id.starts_with("pm-expired") {
            return Err(Invalid {
                code: "payment-method-expired",
                message: format!("payment method {payment_method_id} has expired"),
            });
        }
        if let Some(limit) = self.gateway.decline_over_minor
            && amount.amount_minor > limit
        {
            return Err(Invalid {
                code: "amount-over-limit",
                message: format!(
                    "{} minor units is over the limit of {limit}",
                    amount.amount_minor
                ),
            });
        }
        Ok(())
    }
}

/// Runs the service until Ctrl-C or SIGTERM.
///
/// # Errors
/// A bad setting, an unreachable NATS, an address in use: the message says what to fix.
pub async fn run(env: Env) -> Result<(), a4co_events::service::StartError> {
    let config = Config::from_env(&env)?;
    let service = Service::start(NAME, &env).await?;
    let records = service.records("payments").await?;
    let payments = Payments::new(service.bus().clone(), records, config.gateway);
    let workers = payments.start().await?;
    let router = payments.router(&a4co_http::auth::Verifier::new(&config.secret));
    service
        .serve_until_signal(config.http_addr, router, workers)
        .await
}

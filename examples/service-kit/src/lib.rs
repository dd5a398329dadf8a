//! What every a4co reference service shares, in one small crate a team copies along with a
//! service: configuration from the environment, the bus and the service's state on NATS
//! JetStream or in memory (one switch: `NATS_URL`), `/health` and `/metrics`, JSON logs
//! with trace ids, REST errors, and graceful shutdown.
//!
//! ```
//! use service_kit::{Bus, Env, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // No NATS_URL: the in-memory bus, every stream provisioned.
//! let env = Env::from_pairs([("INVENTORY_LOW_STOCK", "5")]);
//! let bus = Bus::connect(env.optional("NATS_URL").as_deref(), "inventory-service").await?;
//! assert_eq!(bus.kind(), "memory");
//! assert_eq!(env.var("INVENTORY_LOW_STOCK", 10_u32, "a whole number of units")?, 5);
//!
//! // State with compare-and-swap: in memory here, a JetStream KV bucket on NATS.
//! let records = Records::open(&bus, "inventory-stock").await?;
//! let stock = records
//!     .modify("prod-1", |current: Option<&u32>| (Some(current.copied().unwrap_or(0) + 3), ()))
//!     .await?;
//! assert_eq!(records.get::<u32>("prod-1").await?.map(|v| v.value), Some(3));
//! # let () = stock;
//! # Ok(())
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`Env`]: typed variables with defaults, an error that names the variable and what it expects |
//! | [`bus`] | [`Bus`]: the in-memory bus or NATS, as one `Publisher + Subscriber` |
//! | [`records`] | [`Records`]: JSON records with compare-and-swap, in a KV bucket or in memory |
//! | [`ops`] | logs, the Prometheus registry, `/health`, `/metrics`, serving with graceful shutdown |
//! | [`workers`] | [`Workers`]: subscriptions and periodic tasks, stopped together |
//! | [`api`] | [`ApiError`] and [`Body`]: REST errors as JSON with a status that says who must act |

pub mod api;
pub mod bus;
pub mod config;
pub mod ops;
pub mod records;
pub mod workers;

pub use api::{ApiError, Body};
pub use bus::Bus;
pub use config::{ConfigError, Env};
pub use records::{Records, RecordsError, Versioned};
pub use workers::Workers;

/// Whether `id` is usable as an identifier in URLs, subjects and record keys: 1 to 64
/// ASCII letters, digits, `-` or `_`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::is_valid_id;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(is_valid_id("prod-olive-oil_500"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("ünï"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}

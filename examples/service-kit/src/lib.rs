//! What the reference services share beyond the SDK: configuration from the environment
//! with errors that name the variable, `/health` and `/metrics`, JSON logs with trace ids,
//! REST errors, serving until a signal, and replies with deterministic ids. The bus switch,
//! records and workers are the SDK's ([`a4co_events::service`]).
//!
//! ```
//! use service_kit::Env;
//!
//! let env = Env::from_pairs([("INVENTORY_LOW_STOCK", "5")]);
//! assert_eq!(env.var("INVENTORY_LOW_STOCK", 10_u32, "a whole number of units")?, 5);
//! # Ok::<(), service_kit::ConfigError>(())
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`Env`]: typed variables with defaults, an error that names the variable and what it expects |
//! | [`bus`] | [`bus::reply_to`]: the answer to a message, with an id derived from it |
//! | [`ops`] | logs, the Prometheus registry, `/health`, `/metrics`, serving with graceful shutdown |
//! | [`api`] | [`ApiError`] and [`Body`]: REST errors as JSON with a status that says who must act |
//! | [`timeouts`] | design-v2's per-call timeouts of the synchronous call matrix |

pub mod api;
pub mod bus;
pub mod config;
pub mod ops;
pub mod timeouts;

pub use api::{ApiError, Body};
pub use config::{ConfigError, Env};

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

//! What the reference services share beyond the SDK: the service-to-service JWT secret,
//! REST errors, design-v2's call timeouts and what an id may look like. Running a service
//! (settings from the environment, logs, `/health`, `/metrics`, serving until SIGTERM) is
//! the SDK's: [`a4co_events::service::Service`].
//!
//! ```
//! use a4co_events::service::Env;
//!
//! let env = Env::from_pairs([("SERVICE_JWT_SECRET", "k".repeat(32))]);
//! assert!(service_kit::jwt_secret(&env).is_ok());
//! assert!(service_kit::is_valid_id("prod-olive-oil_500"));
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`jwt_secret`]: `SERVICE_JWT_SECRET`, with no fallback |
//! | [`api`] | [`ApiError`] and [`Body`]: REST errors as JSON with a status that says who must act |
//! | [`timeouts`] | design-v2's per-call timeouts of the synchronous call matrix |

pub mod api;
pub mod config;
pub mod timeouts;

pub use api::{ApiError, Body};
pub use config::jwt_secret;

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

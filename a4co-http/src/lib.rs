//! The resilient service-to-service HTTP client of a4co.
//!
//! One [`Client`] per target service, built from a [`ClientBuilder`] that rejects bad
//! settings. Every call goes through one pipeline, in this order: a concurrency limit, the
//! total timeout (or the caller's deadline, if sooner), retries with exponential backoff
//! and jitter under a retry budget ([`retry`]), a circuit breaker per target ([`breaker`]),
//! and a per-attempt timeout. A failed call is one [`Error`] with predicates (`is_timeout`,
//! `is_circuit_open`, `status`, ...) and the body the target sent; a call may carry a
//! fallback that answers when the target is unavailable.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use a4co_http::{Client, retry};
//! use a4co_testkit::http::{FaultServer, Reply};
//!
//! let inventory = FaultServer::start().await;
//! inventory.script("GET /api/v1/inventory/p-1", [
//!     Reply::status(503),                       // a blip...
//!     Reply::json(200, r#"{"available":3}"#),   // ...then the answer
//! ]);
//!
//! let client = Client::builder("inventory-service", inventory.base_url())
//!     .timeout(Duration::from_secs(3))
//!     .retry(retry::Config { initial_backoff: Duration::from_millis(10), ..Default::default() })
//!     .build()?;
//! let stock: serde_json::Value = client.get_json("/api/v1/inventory/p-1").await?;
//! assert_eq!(stock["available"], 3);
//! assert_eq!(inventory.hits("GET /api/v1/inventory/p-1"), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Service-to-service JWTs are in [`auth`]: an [`auth::Issuer`] the client sends tokens
//! from ([`ClientBuilder::service_auth`]) and an axum layer ([`auth::require`]) that checks
//! them per route.
//!
//! Every call is a span (each attempt a child span whose W3C trace context goes out in
//! `traceparent`) and counts in the design-v2 metrics `microservices_sync_requests_total`
//! and `microservices_sync_request_duration_seconds`; the breaker's state is the gauge
//! `microservices_circuit_breaker_state`.
//!
//! Design-v2's timeouts of the synchronous call matrix, the examples' defaults:
//!
//! ```
//! use std::time::Duration;
//!
//! let timeout = a4co_http::design_timeout("inventory-service", "/api/v1/inventory/availability/{productId}");
//! assert_eq!(timeout, Some(Duration::from_secs(3)));
//! ```

pub mod auth;
pub mod breaker;
mod client;
mod error;
mod limit;
pub mod retry;
mod telemetry;

use std::time::Duration;

pub use client::{
    Call, Client, ClientBuilder, DEADLINE_HEADER, IDEMPOTENCY_KEY_HEADER, Response,
    deadline_from_headers,
};
pub use error::{ConfigError, Error};

/// The per-call timeout design-v2 sets for a synchronous call, by target service and route.
pub fn design_timeout(target: &str, route: &str) -> Option<Duration> {
    let seconds = match (target, route) {
        ("inventory-service", "/api/v1/inventory/availability/{productId}") => 3,
        ("payment-service", "/api/v1/payments/validate") => 5,
        ("user-service", "/api/v1/users/{userId}/payment-methods") => 3,
        ("product-service", "/api/v1/products/search") => 5,
        ("user-service", "/api/v1/users/profile") => 2,
        ("artisan-service", "/api/v1/artisans/nearby") => 4,
        ("analytics-service", "/api/v1/analytics/dashboard") => 6,
        ("user-service", "/api/v1/users/validate-token") => 2,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_routes_have_no_design_timeout() {
        assert_eq!(super::design_timeout("inventory-service", "/nope"), None);
        assert_eq!(
            super::design_timeout("analytics-service", "/api/v1/analytics/dashboard"),
            Some(std::time::Duration::from_secs(6))
        );
    }
}

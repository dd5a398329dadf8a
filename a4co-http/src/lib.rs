#![doc = include_str!("../README.md")]

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

/// The guide in docs/ for this crate, compiled as a doctest so its examples keep building.
#[cfg(doctest)]
#[doc = include_str!("../../docs/http.md")]
struct HttpGuide;

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

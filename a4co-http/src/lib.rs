//! The resilient service-to-service HTTP client of a4co (work in progress).
//!
//! This crate will hold the client one service uses to call another synchronously, with the
//! design-v2 resilience policies in one pipeline: a concurrency limit, a total timeout (or
//! the caller's deadline), retry with exponential backoff and jitter under a budget, a
//! circuit breaker and a per-attempt timeout; plus service JWTs (issuing, and an axum layer
//! that checks them) and the `microservices_sync_*` metrics.
//!
//! Until then it exposes the timeouts of design-v2's synchronous call matrix, which the
//! clients will use as their defaults:
//!
//! ```
//! use std::time::Duration;
//!
//! let timeout = a4co_http::design_timeout("inventory-service", "/api/v1/inventory/availability/{productId}");
//! assert_eq!(timeout, Some(Duration::from_secs(3)));
//! ```

use std::time::Duration;

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

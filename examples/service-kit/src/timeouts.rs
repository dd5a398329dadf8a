//! Design-v2's synchronous call matrix: the per-call timeout of each route a service calls
//! on another, the reference services' defaults for their a4co-http clients.
//!
//! ```
//! use std::time::Duration;
//!
//! let timeout = service_kit::timeouts::design_timeout(
//!     "inventory-service",
//!     "/api/v1/inventory/availability/{productId}",
//! );
//! assert_eq!(timeout, Some(Duration::from_secs(3)));
//! ```

use std::time::Duration;

/// The per-call timeout design-v2 sets for a call to `target` on `route` (the route as the
/// matrix writes it, with `{placeholders}`); `None` for a route the matrix does not list.
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
    use std::time::Duration;

    use super::design_timeout;

    #[test]
    fn unknown_routes_have_no_design_timeout() {
        assert_eq!(design_timeout("inventory-service", "/nope"), None);
        assert_eq!(
            design_timeout("analytics-service", "/api/v1/analytics/dashboard"),
            Some(Duration::from_secs(6))
        );
    }
}

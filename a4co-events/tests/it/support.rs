//! Helpers shared by the test modules.

use a4co_events::catalog::order::OrderCreated;
use a4co_events::{Envelope, Headers, Message};
use serde_json::Value;

/// A valid `order.created` v2 envelope: its body as JSON and its headers.
pub(crate) fn order_created() -> (Value, Headers) {
    let env = Envelope::new("order-service", "ord-1001", OrderCreated::example())
        .with_user_id("user-4711");
    (
        serde_json::from_slice(&env.to_json()).expect("the body is JSON"),
        env.headers(),
    )
}

/// Serializes a JSON value.
pub(crate) fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

//! Saga state machines for a4co (work in progress).
//!
//! This crate will hold typed saga definitions (states, the messages they react to,
//! transitions, commands, timeouts and compensations run in reverse), a runtime on the bus
//! traits of [`a4co_events`], stores on JetStream (optimistic concurrency) and in memory,
//! and the order fulfillment saga of design-v2 as the reference.
//!
//! What it builds on today: the deterministic message ids a saga step gives its commands,
//! so a command re-sent after a crash is deduplicated by the broker.
//!
//! ```
//! let first = a4co_saga::step_message_id("order-fulfillment/ord-1", "reserve-stock/prod-1");
//! let again = a4co_saga::step_message_id("order-fulfillment/ord-1", "reserve-stock/prod-1");
//! assert_eq!(first, again);
//! ```

use a4co_events::EventId;

/// The id of the message a saga instance sends at a step: the same on every attempt.
pub fn step_message_id(saga_id: &str, step: &str) -> EventId {
    EventId::deterministic(saga_id, step)
}

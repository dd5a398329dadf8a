//! order-service's tests: its REST contract against the real inventory and payment
//! services (in process), and the order fulfillment saga: every path in memory, properties
//! under duplicates and crashes, and over a real nats-server with simulated participants.

// A failing unwrap is a failing test, with its location; helpers outside #[test] use it too.
#![allow(clippy::unwrap_used)]

mod acceptance;
mod definition;
mod fulfillment;
mod histories;
mod nats;
mod participants;
mod placing;
mod properties;
mod support;

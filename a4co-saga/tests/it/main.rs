//! Integration tests of a4co-saga: definitions, the fulfillment saga's paths through the
//! testkit's scenarios (in memory), exactness under duplicates and crashes.

// A failing unwrap is a failing test, with its location; helpers outside #[test] use it too.
#![allow(clippy::unwrap_used)]

mod definition;
mod fulfillment;
mod http;
mod nats;
mod properties;
mod support;

//! Integration tests of a4co-saga: definitions and their checks, steps' HTTP calls, the
//! runtime over a real nats-server under failures, definitions that evolve. The
//! order fulfillment saga's tests live with it, in examples/order-service.

// A failing unwrap is a failing test, with its location; helpers outside #[test] use it too.
#![allow(clippy::unwrap_used)]

mod definition;
mod http;
mod runtime;
mod support;
mod versions;

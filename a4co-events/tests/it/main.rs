//! Integration tests of a4co-events: one binary, one module per area.

// A failing unwrap is a failing test, with its location; helpers outside #[test] use it too.
#![allow(clippy::unwrap_used)]

mod bus;
mod bus_nats;
mod catalog;
mod cli;
mod cloudevents;
mod connect;
mod decode;
mod envelope;
mod evolution;
mod failure;
mod properties;
mod runtime;
mod service;
mod support;
mod telemetry;
mod upcast;

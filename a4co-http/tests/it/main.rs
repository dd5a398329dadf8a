//! Integration tests of a4co-http against real local servers: the testkit's FaultServer and
//! an axum server guarded by the service JWT layer.

// A failing unwrap is a failing test, with its location; helpers outside #[test] use it too.
#![allow(clippy::unwrap_used)]

mod async_send_sync;
mod auth;
mod client;
mod in_process;
mod telemetry;

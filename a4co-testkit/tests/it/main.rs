//! Integration tests of a4co-testkit.

#![allow(clippy::unwrap_used)]

mod bus;
mod nats;

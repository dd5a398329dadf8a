#![doc = include_str!("../README.md")]

use a4co_events::{Envelope, Message};

pub mod bus;
pub mod cpu;
pub mod http;
pub mod nats;
pub mod otlp;
pub mod prometheus;
pub mod saga;
pub mod telemetry;

/// The catalog example of `M`, in a fresh envelope from its first publisher.
pub fn example_envelope<M: Message>(aggregate_id: &str) -> Envelope<M> {
    let source = M::PUBLISHERS.first().copied().unwrap_or("a4co-testkit");
    Envelope::new(source, aggregate_id, M::example())
}

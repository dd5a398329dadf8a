//! Test fixtures for services built on a4co.
//!
//! It holds a real nats-server fixture ([`nats::NatsServer`]: free loopback port, temporary
//! store, restart on the same store; [`nats::NatsCluster`]: three routed nodes) and a
//! recording in-memory bus with assertions that wait instead of sleeping
//! ([`bus::RecordingBus`]), and a scripted HTTP server on a loopback port
//! ([`http::FaultServer`]: status sequences, latency, hangs, resets, `Retry-After`; it
//! records what it received), and in-memory OpenTelemetry to assert on spans and metrics
//! ([`telemetry::Telemetry`]), and given/when/then saga scenarios with simulated
//! participants ([`saga::Scenario`], [`saga::Participants`]), and the CPU time of processes
//! for benchmarks ([`cpu`]). Add it as a dev-dependency.
//!
//! It also wraps catalog examples in envelopes, for tests that need a valid message:
//!
//! ```
//! use a4co_events::catalog::order::OrderCreated;
//!
//! let envelope = a4co_testkit::example_envelope::<OrderCreated>("ord-1");
//! assert_eq!(envelope.aggregate_id, "ord-1");
//! assert_eq!(envelope.source, "order-service");
//! ```

use a4co_events::{Envelope, Message};

pub mod bus;
pub mod cpu;
pub mod http;
pub mod nats;
pub mod saga;
pub mod telemetry;

/// The catalog example of `M`, in a fresh envelope from its first publisher.
pub fn example_envelope<M: Message>(aggregate_id: &str) -> Envelope<M> {
    let source = M::PUBLISHERS.first().copied().unwrap_or("a4co-testkit");
    Envelope::new(source, aggregate_id, M::example())
}

#![doc = include_str!("../README.md")]

// Layers, each importing only those above it: errors; the record (state and data traits,
// what an instance keeps); the `Step` API reactions use; definitions and their builder;
// the engine (pure: applies a message or a timer to a record); stores; the runtime
// (the bus and a store around the engine); the NATS store.
#[cfg(feature = "nats")]
mod any_store;
mod clock;
mod definition;
mod engine;
mod error;
mod metrics;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod record;
mod runtime;
mod step;
pub mod store;

/// `#[derive(State)]`: the [`State`] of an enum of unit variants, each named as serde names
/// it, `#[state(final)]` on those the saga ends in (`#[state(final, outcome = "failed")]`
/// for an end that is a failure).
pub use a4co_saga_derive::State;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use any_store::AnyStore;
pub use clock::{Clock, SystemClock, VirtualClock};
pub use definition::{Builder, Definition, On, OnTimeout, Trigger};
pub use engine::Applied;
pub use error::{
    DefinitionError, DefinitionErrorKind, ReactionError, ReactionErrorKind, RuntimeError,
    StoreError,
};
pub use record::{Compensation, Data, Instance, Outcome, State};
pub use runtime::{Running, Runtime, RuntimeBuilder};
pub use step::Step;
pub use store::{MemoryStore, SetAside, Store};

use a4co_events::EventId;

/// The id of the message a saga instance sends at a step: the same on every attempt.
pub fn step_message_id(saga_id: &str, step: &str) -> EventId {
    EventId::deterministic(saga_id, step)
}

/// The guide in docs/ for this crate, compiled as a doctest so its examples keep building.
#[cfg(all(doctest, feature = "nats"))]
#[doc = include_str!("../../docs/saga.md")]
struct SagaGuide;

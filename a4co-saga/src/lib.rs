#![doc = include_str!("../README.md")]

// The layers, from the bottom; a module imports only from its own layer and the ones listed
// before it, with no circle (scripts/lib/layers.py checks it).
// 1. errors and the clock
mod clock;
mod error;
// 2. the record: the state and data traits, what an instance keeps
pub mod record;
// 3. the `Step` API reactions use
mod step;
// 4. definitions and their builder
mod definition;
// 5. the engine: applies a message or a timer to a record, pure
mod engine;
// 6. stores
pub mod store;
// 7. the runtime: the bus and a store around the engine, and its metrics
mod metrics;
mod runtime;
// 8. the NATS store, and the store that goes with a service's bus
#[cfg(feature = "nats")]
mod any_store;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

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

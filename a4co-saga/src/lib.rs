//! Saga state machines for a4co: orchestration with compensation and timeouts, saved with
//! optimistic concurrency, exact under crashes and redeliveries.
//!
//! A saga is a [`Definition`]: its [`State`]s and [`Data`], the message that starts an
//! instance, the reactions of each state to messages and timers, and the compensations of
//! completed steps, sent last-first when the saga fails. [`Builder::build`] rejects a
//! definition that reacts twice to one trigger in a state or can get stuck short of a final
//! state; [`Definition::mermaid`] draws it.
//!
//! A [`Runtime`] runs a definition on the bus (any [`a4co_events::bus::Publisher`] +
//! [`a4co_events::bus::Subscriber`]) and a [`Store`]: each message is applied to its
//! instance, the new state and the messages it sends are saved together (compare-and-swap),
//! then published with ids fixed by saga id + step, so a crash between save and publish
//! neither loses nor doubles a command ([`Runtime::resend_pending`] runs at start).
//! Instances remember the messages they processed; timers live in the record and fire once.
//! Stores: [`MemoryStore`], and `nats::KvStore` on JetStream KV (feature `nats`, on by
//! default). A reaction that calls another service is declared with [`Builder::on_async`]
//! and makes its calls through `Step::http` (feature `http`): the call carries an
//! idempotency key of saga id + step and never outlives the step's deadline. The order
//! fulfillment saga of design-v2 is [`fulfillment`]; docs/saga.md tells the whole story.
//!
//! ```
//! use std::time::Duration;
//! use a4co_events::catalog::order::{CancelOrder, CancellationReason, OrderConfirmed, OrderCreated};
//! use a4co_events::{AnyMessage, Envelope, Message};
//! use a4co_saga::{Definition, MemoryStore, Runtime, State, Applied};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
//! enum Phase { Waiting, Done, Gave }
//! impl State for Phase {
//!     const ALL: &'static [Self] = &[Phase::Waiting, Phase::Done, Phase::Gave];
//!     fn name(self) -> &'static str { match self { Phase::Waiting => "waiting", Phase::Done => "done", Phase::Gave => "gave-up" } }
//!     fn is_final(self) -> bool { self != Phase::Waiting }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Wait for the order's confirmation; give up (cancel it) after an hour.
//! let definition = Definition::<(), Phase>::builder("confirmation-watch", "order-service")
//!     .starts_with::<OrderCreated>(&[Phase::Waiting], |step, _| {
//!         step.schedule("give-up", Duration::from_secs(3600));
//!         Phase::Waiting
//!     })
//!     .on::<OrderConfirmed>(Phase::Waiting, &[Phase::Done], |_, _| Phase::Done)
//!     .on_timeout(Phase::Waiting, "give-up", &[Phase::Gave], |step| {
//!         let order = step.saga_id().rsplit('/').next().unwrap_or_default().to_owned();
//!         let cancel = CancelOrder { reason: CancellationReason::PaymentTimeout, refund_required: false, detail: None };
//!         step.send("cancel", order, cancel);
//!         Phase::Gave
//!     })
//!     .build()?;
//! println!("{}", definition.mermaid());
//!
//! let bus = a4co_events::bus::MemoryBus::provisioned().await?;
//! let runtime = Runtime::new(definition, bus, MemoryStore::new());
//! let created = Envelope::new("order-service", "ord-1", OrderCreated::example()).into_any();
//! assert_eq!(runtime.handle(&created).await?, Applied::Changed);
//! assert_eq!(runtime.handle(&created).await?, Applied::Duplicate);
//! let instance = runtime.instance("confirmation-watch/ord-1").await?.unwrap();
//! assert_eq!(instance.state, Phase::Waiting);
//! # Ok(())
//! # }
//! ```

// Layers, each importing only those above it: errors; the record (state and data traits,
// what an instance keeps); the `Step` API reactions use; definitions and their builder;
// the engine (pure: applies a message or a timer to a record); stores; the runtime
// (the bus and a store around the engine); the fulfillment saga and the NATS store.
mod clock;
mod definition;
mod engine;
mod error;
pub mod fulfillment;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod record;
mod runtime;
mod step;
pub mod store;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use definition::{Builder, Definition, Trigger};
pub use engine::Applied;
pub use error::{DefinitionError, ReactionError, RuntimeError, StoreError};
pub use record::{Data, Instance, State};
pub use runtime::{Running, Runtime};
pub use step::Step;
pub use store::{MemoryStore, Store};

use a4co_events::EventId;

/// The id of the message a saga instance sends at a step: the same on every attempt.
pub fn step_message_id(saga_id: &str, step: &str) -> EventId {
    EventId::deterministic(saga_id, step)
}

//! The names a service uses in nearly every file, for a glob import:
//! `use a4co_events::prelude::*;`.
//!
//! The catalog's own types (`catalog::order::OrderCreated`, ...) are imported by name.
//!
//! ```
//! use a4co_events::prelude::*;
//! use a4co_events::catalog::order::OrderCreated;
//!
//! async fn created(_: (), order: Envelope<OrderCreated>, _: DeliveryInfo) -> Result<(), HandlerError> {
//!     assert!(!order.data.items.is_empty());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = MemoryBus::provisioned().await?;
//! let handlers = Handlers::with_state(()).on::<OrderCreated>(created);
//! let handle = bus.subscribe(Subscription::new("billing", "orders"), handlers).await?;
//! bus.publish(&Envelope::new("order-service", "ord-1", OrderCreated::example())).await?;
//! # handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub use crate::catalog::AnyMessage;
pub use crate::envelope::Envelope;
pub use crate::id::EventId;
pub use crate::message::Message;
pub use crate::money::Money;

#[cfg(feature = "bus")]
pub use crate::bus::{
    DeliveryInfo, HandlerError, Handlers, MemoryBus, Publisher, Subscriber, Subscription,
};
#[cfg(feature = "nats")]
pub use crate::service::AnyBus;

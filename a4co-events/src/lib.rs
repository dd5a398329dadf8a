#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

// The layers, from the bottom; a module imports only from its own layer and the ones listed
// before it, with no circle (scripts/lib/layers.py checks it).
// 1. identifiers, time, money, errors
mod error;
mod id;
mod money;
pub mod time;
// 2. messages and headers
pub mod headers;
mod message;
// 3. the catalog and the envelope
pub mod catalog;
pub mod envelope;
// 4. the JSON Schemas
pub mod schema;
// 5. decoding at the boundary and the checked encoding, CloudEvents
pub mod cloudevents;
pub mod decode;
// 6. the bus
#[cfg(feature = "bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "bus")))]
pub mod bus;
#[cfg(feature = "bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "bus")))]
pub mod service;
// what a service imports first
pub mod prelude;
// 7. the tooling: the published contract (the `a4co` CLI is src/bin/a4co.rs)
#[cfg(feature = "contract")]
#[cfg_attr(docsrs, doc(cfg(feature = "contract")))]
pub mod contract;

pub use catalog::AnyMessage;
pub use decode::{Decoder, decode, decode_as};
pub use envelope::{Envelope, Metadata};
pub use error::{DecodeError, DecodeErrorKind, Violation};
pub use headers::{Headers, TraceContext};
pub use id::EventId;
pub use message::{BoundedContext, DataError, Message, MessageKind, Payload, Upcast};
pub use money::{Currency, InvalidCurrency, Money};

/// The guides in docs/ that show this crate, compiled and run as doctests so their
/// examples keep building.
#[cfg(all(doctest, feature = "nats"))]
mod guides {
    #[doc = include_str!("../../docs/bus.md")]
    struct Bus;
    #[doc = include_str!("../../docs/events.md")]
    struct Events;
}

#[cfg(test)]
fn _assert_impls() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<Envelope<AnyMessage>>();
    send_sync::<DecodeError>();
    clone::<Envelope<AnyMessage>>();
    clone::<Headers>();
}

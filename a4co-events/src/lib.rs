#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

pub mod bus;
pub mod catalog;
pub mod cloudevents;
pub mod decode;
pub mod envelope;
pub mod headers;
mod message;
mod money;
pub mod schema;
mod schema_check;
pub mod time;

pub use catalog::AnyMessage;
pub use decode::{DecodeError, DecodeErrorKind, Decoder, Violation, decode, decode_as};
pub use envelope::{Envelope, EventId, Metadata};
pub use headers::{Headers, TraceContext};
pub use message::{Context, DataError, Kind, Message, Payload, Upcast};
pub use money::{Currency, InvalidCurrency, Money};

#[cfg(test)]
fn _assert_impls() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<Envelope<AnyMessage>>();
    send_sync::<DecodeError>();
    clone::<Envelope<AnyMessage>>();
    clone::<Headers>();
}

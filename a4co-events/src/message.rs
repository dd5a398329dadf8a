//! What every message of the catalog knows about itself.

use std::fmt;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

/// Whether a message states a fact or asks for an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// A fact that happened (`OrderCreated`): past tense, any number of subscribers.
    Event,
    /// A request for one service to act (`ReserveStock`): imperative, one handler.
    Command,
}

impl MessageKind {
    /// `"event"` or `"command"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageKind::Event => "event",
            MessageKind::Command => "command",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bounded contexts of the marketplace. Each owns one JetStream stream that captures
/// `<context>.>`: its events (`order.created`) and the commands sent to it (`order.cmd.confirm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BoundedContext {
    /// Orders: placement, confirmation, cancellation, delivery.
    Order,
    /// Stock levels and reservations.
    Inventory,
    /// Charges and refunds.
    Payment,
    /// Customers (the "Customer Service" of the DDD document is the user service).
    User,
    /// Artisans (producers) and the products they list.
    Artisan,
    /// The product catalog after listing: updates, prices, removal.
    Product,
    /// Shopping carts and checkout.
    Cart,
    /// Shipments and their tracking.
    Shipping,
    /// Messages sent to people (email, SMS, push).
    Notification,
}

impl BoundedContext {
    /// Every context, in catalog order.
    pub const ALL: [BoundedContext; 9] = [
        BoundedContext::Order,
        BoundedContext::Inventory,
        BoundedContext::Payment,
        BoundedContext::User,
        BoundedContext::Artisan,
        BoundedContext::Product,
        BoundedContext::Cart,
        BoundedContext::Shipping,
        BoundedContext::Notification,
    ];

    /// The first subject token of the context's messages: `order`, `inventory`, ...
    pub const fn name(self) -> &'static str {
        match self {
            BoundedContext::Order => "order",
            BoundedContext::Inventory => "inventory",
            BoundedContext::Payment => "payment",
            BoundedContext::User => "user",
            BoundedContext::Artisan => "artisan",
            BoundedContext::Product => "product",
            BoundedContext::Cart => "cart",
            BoundedContext::Shipping => "shipping",
            BoundedContext::Notification => "notification",
        }
    }

    /// The JetStream stream holding the context's messages: `ORDERS`, `INVENTORY`, ...
    pub const fn stream(self) -> &'static str {
        match self {
            BoundedContext::Order => "ORDERS",
            BoundedContext::Inventory => "INVENTORY",
            BoundedContext::Payment => "PAYMENTS",
            BoundedContext::User => "USERS",
            BoundedContext::Artisan => "ARTISANS",
            BoundedContext::Product => "PRODUCTS",
            BoundedContext::Cart => "CARTS",
            BoundedContext::Shipping => "SHIPPING",
            BoundedContext::Notification => "NOTIFICATIONS",
        }
    }

    /// The subject filter of the context's stream: `order.>`.
    pub fn subjects(self) -> String {
        format!("{}.>", self.name())
    }

    /// The service that owns the context and publishes its events.
    pub const fn owner(self) -> &'static str {
        match self {
            BoundedContext::Order => "order-service",
            BoundedContext::Inventory => "inventory-service",
            BoundedContext::Payment => "payment-service",
            BoundedContext::User => "user-service",
            BoundedContext::Artisan => "artisan-service",
            BoundedContext::Product => "product-service",
            BoundedContext::Cart => "cart-service",
            BoundedContext::Shipping => "shipping-service",
            BoundedContext::Notification => "notification-service",
        }
    }

    /// The context's guide: its messages, and every naming choice made between the design
    /// documents. The same text is the rustdoc of the context's module and the
    /// introduction of its page in the generated catalog.
    pub const fn notes(self) -> &'static str {
        match self {
            BoundedContext::Order => include_str!("catalog/docs/order.md"),
            BoundedContext::Inventory => include_str!("catalog/docs/inventory.md"),
            BoundedContext::Payment => include_str!("catalog/docs/payment.md"),
            BoundedContext::User => include_str!("catalog/docs/user.md"),
            BoundedContext::Artisan => include_str!("catalog/docs/artisan.md"),
            BoundedContext::Product => include_str!("catalog/docs/product.md"),
            BoundedContext::Cart => include_str!("catalog/docs/cart.md"),
            BoundedContext::Shipping => include_str!("catalog/docs/shipping.md"),
            BoundedContext::Notification => include_str!("catalog/docs/notification.md"),
        }
    }
}

impl fmt::Display for BoundedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message of the catalog: a payload type with a stable name, a version, and a home.
///
/// Implemented by every payload struct of [`crate::catalog`], including superseded versions
/// (which also implement [`Upcast`]). The wire name is the subject: events are
/// `<context>.<event>` (`order.created`), commands `<context>.cmd.<command>`
/// (`inventory.cmd.reserve_stock`), so `order.*` selects a context's events and
/// `order.cmd.*` the commands it handles.
pub trait Message:
    Serialize + DeserializeOwned + JsonSchema + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The stable type name, which is also the NATS subject: `order.created`.
    const TYPE: &'static str;
    /// The schema version of this payload type, from 1.
    const VERSION: u32;
    /// Event or command.
    const KIND: MessageKind;
    /// The bounded context that owns the message.
    const CONTEXT: BoundedContext;
    /// What kind of aggregate the envelope's `aggregateId` names (`order`, `product`, ...).
    const AGGREGATE: &'static str;
    /// The services that publish the message.
    const PUBLISHERS: &'static [&'static str];
    /// The services that subscribe to it, from the design documents' subscriber tables.
    const SUBSCRIBERS: &'static [&'static str];
    /// The subject the message is published on.
    const SUBJECT: &'static str = Self::TYPE;
    /// The stream that stores it.
    const STREAM: &'static str = Self::CONTEXT.stream();

    /// A realistic, deterministic instance: shown in the catalog and checked against the schema.
    fn example() -> Self;

    /// Decodes `data` written as `version` of this type. Older versions are upcast through
    /// the chain of [`Upcast`] impls; versions this build does not know are rejected.
    ///
    /// # Errors
    /// [`DataError::UnknownVersion`] for a version with no decoder, [`DataError::Invalid`]
    /// when the JSON does not fit the type.
    fn decode_data(version: u32, data: serde_json::Value) -> Result<Self, DataError> {
        if version == Self::VERSION {
            serde_json::from_value(data).map_err(DataError::Invalid)
        } else if version < Self::VERSION {
            Self::decode_older(version, data)
        } else {
            Err(DataError::UnknownVersion)
        }
    }

    /// As [`Message::decode_data`], from the JSON text of `data` (no tree is built for the
    /// current version; older versions go through [`Message::decode_data`]).
    ///
    /// # Errors
    /// As [`Message::decode_data`].
    fn decode_data_json(version: u32, data: &str) -> Result<Self, DataError> {
        if version == Self::VERSION {
            serde_json::from_str(data).map_err(DataError::Invalid)
        } else {
            let tree = serde_json::from_str(data).map_err(DataError::Invalid)?;
            Self::decode_data(version, tree)
        }
    }

    /// Decodes a version older than [`Message::VERSION`]. The default knows none; types with
    /// a predecessor delegate to it and upcast.
    ///
    /// # Errors
    /// As [`Message::decode_data`].
    fn decode_older(version: u32, data: serde_json::Value) -> Result<Self, DataError> {
        let _ = (version, data);
        Err(DataError::UnknownVersion)
    }
}

/// A superseded version that converts into its successor.
///
/// Both versions stay in the catalog: producers that still emit the old version keep
/// working, and consumers always receive the newest type.
pub trait Upcast: Message {
    /// The next version of the same type name.
    type Next: Message;
    /// Converts the payload, filling what the old version lacked.
    fn upcast(self) -> Self::Next;
}

/// Why a payload's `data` could not become a typed message.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// No decoder exists for the requested version.
    UnknownVersion,
    /// The JSON does not fit the Rust type.
    Invalid(serde_json::Error),
}

/// What a value placed in an [`crate::Envelope`] can say about itself: implemented by every
/// [`Message`] and by [`crate::AnyMessage`].
pub trait Payload: Serialize + fmt::Debug + Clone + Send + Sync + 'static {
    /// The type name (`order.created`).
    fn event_type(&self) -> &'static str;
    /// The schema version.
    fn event_version(&self) -> u32;
}

impl<M: Message> Payload for M {
    fn event_type(&self) -> &'static str {
        M::TYPE
    }
    fn event_version(&self) -> u32 {
        M::VERSION
    }
}

/// Declares a catalog message: its metadata, example and (optionally) its predecessor.
macro_rules! message {
    (
        $ty:ty {
            type_name: $tn:literal,
            version: $v:literal,
            kind: $kind:ident,
            context: $ctx:ident,
            aggregate: $agg:literal,
            publishers: [$($p:literal),* $(,)?],
            subscribers: $subscribers:expr,
            $(previous: $prev:ty,)?
            example: $ex:expr $(,)?
        }
    ) => {
        impl $crate::message::Message for $ty {
            const TYPE: &'static str = $tn;
            const VERSION: u32 = $v;
            const KIND: $crate::message::MessageKind = $crate::message::MessageKind::$kind;
            const CONTEXT: $crate::message::BoundedContext = $crate::message::BoundedContext::$ctx;
            const AGGREGATE: &'static str = $agg;
            const PUBLISHERS: &'static [&'static str] = &[$($p),*];
            const SUBSCRIBERS: &'static [&'static str] = $subscribers;
            fn example() -> Self {
                $ex
            }
            $(
                fn decode_older(
                    version: u32,
                    data: serde_json::Value,
                ) -> Result<Self, $crate::message::DataError> {
                    <$prev as $crate::message::Message>::decode_data(version, data)
                        .map(<$prev as $crate::message::Upcast>::upcast)
                }
            )?
        }
    };
}
pub(crate) use message;

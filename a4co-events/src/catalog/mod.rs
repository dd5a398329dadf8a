//! The typed catalog: every message of the marketplace's design documents.
//!
//! One module per bounded context. Each payload type implements [`Message`]: its type name
//! (which is also its subject), version, kind, stream, aggregate, publishers and subscribers.
//! [`AnyMessage`] holds the newest version of any of them; [`MESSAGES`] lists every version,
//! superseded ones included, for the schema generator and the decoder.
//!
//! Payloads are tolerant readers: unknown fields are ignored, so adding an optional field
//! is a compatible change (see the `contract::evolution` module). Money is [`crate::Money`]
//! (integer minor units), instants are RFC 3339 UTC, closed sets are enums in kebab-case
//! as the documents write them.

use schemars::generate::SchemaSettings;
use serde::Serialize;

use crate::message::{BoundedContext, DataError, Message, MessageKind, Payload};

pub mod artisan;
pub mod cart;
pub mod common;
pub mod inventory;
pub mod notification;
pub mod order;
pub mod payment;
pub mod product;
pub mod shipping;
pub mod user;

/// A description of one version of one message, for tooling: the schema generator, the
/// decoder, the AsyncAPI document.
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo {
    /// The type name, also the subject: `order.created`.
    pub type_name: &'static str,
    /// The schema version of this shape (from 1; a breaking change is a new version).
    pub version: u32,
    /// Whether this is the newest version of the type.
    pub latest: bool,
    /// Event or command.
    pub kind: MessageKind,
    /// The owning context.
    pub context: BoundedContext,
    /// What the envelope's `aggregateId` names.
    pub aggregate: &'static str,
    /// The services that publish it.
    pub publishers: &'static [&'static str],
    /// The services that subscribe to it.
    pub subscribers: &'static [&'static str],
    /// The Rust type's name (`OrderCreatedV1`).
    pub rust_name: &'static str,
    schema: fn() -> serde_json::Value,
    example: fn() -> serde_json::Value,
}

impl MessageInfo {
    const fn of<M: Message>(rust_name: &'static str, latest: bool) -> Self {
        MessageInfo {
            type_name: M::TYPE,
            version: M::VERSION,
            latest,
            kind: M::KIND,
            context: M::CONTEXT,
            aggregate: M::AGGREGATE,
            publishers: M::PUBLISHERS,
            subscribers: M::SUBSCRIBERS,
            rust_name,
            schema: raw_schema::<M>,
            example: example_json::<M>,
        }
    }

    /// The subject it is published on (its type name).
    pub fn subject(&self) -> &'static str {
        self.type_name
    }

    /// The stream that stores it.
    pub fn stream(&self) -> &'static str {
        self.context.stream()
    }

    /// The payload's JSON Schema (draft 2020-12) as the Rust type derives it, before the
    /// catalog adds `$id` and examples (see [`crate::schema::message_schema`]).
    pub fn raw_schema(&self) -> serde_json::Value {
        (self.schema)()
    }

    /// The payload of the type's example.
    pub fn example(&self) -> serde_json::Value {
        (self.example)()
    }
}

fn raw_schema<M: Message>() -> serde_json::Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<M>()
        .to_value()
}

fn example_json<M: Message>() -> serde_json::Value {
    // Serializing plain data structs with string keys cannot fail.
    serde_json::to_value(M::example()).unwrap_or_default()
}

/// Looks up one version of one message type.
pub fn find(type_name: &str, version: u32) -> Option<&'static MessageInfo> {
    MESSAGES
        .iter()
        .find(|m| m.type_name == type_name && m.version == version)
}

/// The versions the catalog knows for a type name, oldest first; empty for an unknown type.
pub fn versions(type_name: &str) -> impl Iterator<Item = u32> + '_ {
    MESSAGES
        .iter()
        .filter(move |m| m.type_name == type_name)
        .map(|m| m.version)
}

/// Why [`AnyMessage::from_data`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyDataError {
    /// No message has this type name.
    UnknownType,
    /// The type exists, the version does not.
    UnknownVersion,
    /// The JSON does not fit the type.
    Invalid(serde_json::Error),
}

/// `no message has this type`, `no such version of the type`, or why the JSON does not fit.
impl std::fmt::Display for AnyDataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyDataError::UnknownType => f.write_str("no message has this type"),
            AnyDataError::UnknownVersion => f.write_str("no such version of the type"),
            AnyDataError::Invalid(e) => write!(f, "the data does not fit the type: {e}"),
        }
    }
}

impl std::error::Error for AnyDataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AnyDataError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DataError> for AnyDataError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::UnknownVersion => AnyDataError::UnknownVersion,
            DataError::Invalid(e) => AnyDataError::Invalid(e),
        }
    }
}

macro_rules! catalog {
    (
        latest: [$($ty:ident => $path:path),* $(,)?],
        superseded: [$($old:ident => $old_path:path),* $(,)?] $(,)?
    ) => {
        /// The newest version of any message of the catalog.
        ///
        /// What [`crate::decode()`] returns: match on it to handle the types you care about.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum AnyMessage {
            $(
                #[doc = concat!("[`", stringify!($path), "`]")]
                $ty($path),
            )*
        }

        impl AnyMessage {
            /// Decodes `data` of the given type name and version into the newest version of
            /// that type, upcasting older versions.
            ///
            /// # Errors
            /// [`AnyDataError`] says whether the type, the version or the data was wrong.
            pub fn from_data(
                type_name: &str,
                version: u32,
                data: serde_json::Value,
            ) -> Result<AnyMessage, AnyDataError> {
                $(
                    if type_name == <$path as Message>::TYPE {
                        return <$path as Message>::decode_data(version, data)
                            .map(AnyMessage::$ty)
                            .map_err(AnyDataError::from);
                    }
                )*
                Err(AnyDataError::UnknownType)
            }

            /// As [`AnyMessage::from_data`], from the JSON text of `data`.
            ///
            /// # Errors
            /// As [`AnyMessage::from_data`].
            pub fn from_data_json(
                type_name: &str,
                version: u32,
                data: &str,
            ) -> Result<AnyMessage, AnyDataError> {
                $(
                    if type_name == <$path as Message>::TYPE {
                        return <$path as Message>::decode_data_json(version, data)
                            .map(AnyMessage::$ty)
                            .map_err(AnyDataError::from);
                    }
                )*
                Err(AnyDataError::UnknownType)
            }

            /// The context that owns the message.
            pub fn context(&self) -> BoundedContext {
                match self {
                    $(AnyMessage::$ty(_) => <$path as Message>::CONTEXT,)*
                }
            }

            /// Event or command.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(AnyMessage::$ty(_) => <$path as Message>::KIND,)*
                }
            }
        }

        impl Payload for AnyMessage {
            fn event_type(&self) -> &'static str {
                match self {
                    $(AnyMessage::$ty(_) => <$path as Message>::TYPE,)*
                }
            }
            fn event_version(&self) -> u32 {
                match self {
                    $(AnyMessage::$ty(_) => <$path as Message>::VERSION,)*
                }
            }
        }

        impl Serialize for AnyMessage {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(AnyMessage::$ty(m) => m.serialize(serializer),)*
                }
            }
        }

        $(
            impl From<$path> for AnyMessage {
                fn from(message: $path) -> Self {
                    AnyMessage::$ty(message)
                }
            }

            impl TryFrom<AnyMessage> for $path {
                type Error = AnyMessage;
                fn try_from(message: AnyMessage) -> Result<Self, AnyMessage> {
                    match message {
                        AnyMessage::$ty(m) => Ok(m),
                        #[allow(unreachable_patterns)]
                        other => Err(other),
                    }
                }
            }

            /// The payload, borrowed, when it is this type.
            impl<'a> TryFrom<&'a AnyMessage> for &'a $path {
                type Error = ();
                fn try_from(message: &'a AnyMessage) -> Result<Self, ()> {
                    match message {
                        AnyMessage::$ty(m) => Ok(m),
                        #[allow(unreachable_patterns)]
                        _ => Err(()),
                    }
                }
            }
        )*

        /// Every version of every message type, superseded versions included.
        pub static MESSAGES: &[MessageInfo] = &[
            $(MessageInfo::of::<$path>(stringify!($ty), true),)*
            $(MessageInfo::of::<$old_path>(stringify!($old), false),)*
        ];
    };
}

catalog! {
    latest: [
        OrderCreated => order::OrderCreated,
        OrderConfirmed => order::OrderConfirmed,
        OrderCancelled => order::OrderCancelled,
        OrderDelivered => order::OrderDelivered,
        OrderShipped => order::OrderShipped,
        OrderStatusChanged => order::OrderStatusChanged,
        ConfirmOrder => order::ConfirmOrder,
        CancelOrder => order::CancelOrder,
        StockReserved => inventory::StockReserved,
        StockReservationFailed => inventory::StockReservationFailed,
        StockReleased => inventory::StockReleased,
        LowStockWarning => inventory::LowStockWarning,
        InventoryAdjusted => inventory::InventoryAdjusted,
        ReserveStock => inventory::ReserveStock,
        ReleaseStock => inventory::ReleaseStock,
        PaymentInitiated => payment::PaymentInitiated,
        PaymentSucceeded => payment::PaymentSucceeded,
        PaymentFailed => payment::PaymentFailed,
        RefundProcessed => payment::RefundProcessed,
        ProcessPayment => payment::ProcessPayment,
        RefundPayment => payment::RefundPayment,
        UserRegistered => user::UserRegistered,
        UserProfileUpdated => user::UserProfileUpdated,
        UserPreferencesChanged => user::UserPreferencesChanged,
        EmailVerified => user::EmailVerified,
        UserAddressAdded => user::UserAddressAdded,
        ArtisanVerified => artisan::ArtisanVerified,
        ArtisanStatusChanged => artisan::ArtisanStatusChanged,
        NewProductListed => artisan::NewProductListed,
        ProductUpdated => product::ProductUpdated,
        ProductDeleted => product::ProductDeleted,
        PriceChanged => product::PriceChanged,
        CartAbandoned => cart::CartAbandoned,
        CheckoutInitiated => cart::CheckoutInitiated,
        ShipmentCreated => shipping::ShipmentCreated,
        ShipmentDispatched => shipping::ShipmentDispatched,
        ShipmentStatusUpdated => shipping::ShipmentStatusUpdated,
        ShipmentDelivered => shipping::ShipmentDelivered,
        NotificationSent => notification::NotificationSent,
    ],
    superseded: [
        OrderCreatedV1 => order::OrderCreatedV1,
    ],
}

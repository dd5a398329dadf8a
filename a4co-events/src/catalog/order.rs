#![doc = include_str!("docs/order.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Address, example_address, example_time};
use crate::message::{Upcast, message};
use crate::money::Money;

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product ordered.
    pub product_id: String,
    /// The artisan who makes it.
    pub artisan_id: String,
    /// How many units, at least one.
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// The price of one unit when the order was placed.
    pub unit_price: Money,
    /// The product's name when the order was placed.
    pub product_name: String,
}

/// How a version-1 order reaches the customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OrderType {
    /// Sent to the delivery address.
    Delivery,
    /// Collected by the customer.
    Pickup,
}

/// How an order reaches the customer (version 2): the address exists only for deliveries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Fulfillment {
    /// Sent to an address.
    Delivery {
        /// Where to deliver.
        address: Address,
        /// The delivery date the customer asked for, if any.
        #[serde(
            rename = "requestedDate",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        #[serde(
            serialize_with = "crate::time::opt_utc",
            deserialize_with = "crate::time::de_opt_utc"
        )]
        requested_date: Option<DateTime<Utc>>,
    },
    /// Collected by the customer at the artisan's workshop.
    Pickup {
        /// The pickup date the customer asked for, if any.
        #[serde(
            rename = "requestedDate",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        #[serde(
            serialize_with = "crate::time::opt_utc",
            deserialize_with = "crate::time::de_opt_utc"
        )]
        requested_date: Option<DateTime<Utc>>,
    },
}

/// `order.created` version 1, as design-v2 defines it: superseded by [`OrderCreated`].
///
/// Version 1 required a delivery address even for pickups. Producers that still emit it are
/// accepted; consumers receive it upcast to [`OrderCreated`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreatedV1 {
    /// The customer (user) who placed the order.
    pub customer_id: String,
    /// The lines of the order, at least one.
    #[schemars(length(min = 1))]
    pub items: Vec<OrderItem>,
    /// The total to charge, in the currency of the order.
    pub total_amount: Money,
    /// Where to deliver (also required, and meaningless, for pickups).
    pub delivery_address: Address,
    /// Delivery or pickup.
    pub order_type: OrderType,
    /// The delivery date the customer asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(
        serialize_with = "crate::time::opt_utc",
        deserialize_with = "crate::time::de_opt_utc"
    )]
    pub requested_delivery_date: Option<DateTime<Utc>>,
    /// When the order was placed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub created_at: DateTime<Utc>,
}

/// `order.created`: a customer placed an order. Starts the order fulfillment saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// The customer (user) who placed the order.
    pub customer_id: String,
    /// The lines of the order, at least one.
    #[schemars(length(min = 1))]
    pub items: Vec<OrderItem>,
    /// The total to charge, in the currency of the order.
    pub total_amount: Money,
    /// Delivery to an address, or pickup.
    pub fulfillment: Fulfillment,
    /// The customer's chosen payment method (an id of the user service), if chosen at checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method_id: Option<String>,
    /// When the order was placed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub created_at: DateTime<Utc>,
}

impl Upcast for OrderCreatedV1 {
    type Next = OrderCreated;

    /// Delivery orders keep their address and date; pickup orders drop the placeholder
    /// address version 1 forced on them. Version 1 had no payment method.
    fn upcast(self) -> OrderCreated {
        let fulfillment = match self.order_type {
            OrderType::Delivery => Fulfillment::Delivery {
                address: self.delivery_address,
                requested_date: self.requested_delivery_date,
            },
            OrderType::Pickup => Fulfillment::Pickup {
                requested_date: self.requested_delivery_date,
            },
        };
        OrderCreated {
            customer_id: self.customer_id,
            items: self.items,
            total_amount: self.total_amount,
            fulfillment,
            payment_method_id: None,
            created_at: self.created_at,
        }
    }
}

/// Who consumes `order.created`, whatever its version.
const CREATED_SUBSCRIBERS: &[&str] = &[
    "inventory-service",
    "payment-service",
    "notification-service",
    "analytics-service",
    "artisan-service",
    "user-service",
];

fn example_items() -> Vec<OrderItem> {
    vec![
        OrderItem {
            product_id: "prod-olive-oil-500".into(),
            artisan_id: "art-almazara-ubeda".into(),
            quantity: 2,
            unit_price: Money::eur(1250),
            product_name: "Aceite de oliva virgen extra 500 ml".into(),
        },
        OrderItem {
            product_id: "prod-ceramic-bowl".into(),
            artisan_id: "art-ceramica-tito".into(),
            quantity: 1,
            unit_price: Money::eur(3400),
            product_name: "Cuenco de cerámica verde".into(),
        },
    ]
}

message!(OrderCreatedV1 {
    type_name: "order.created",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: CREATED_SUBSCRIBERS,
    example: OrderCreatedV1 {
        customer_id: "user-4711".into(),
        items: example_items(),
        total_amount: Money::eur(5900),
        delivery_address: example_address(),
        order_type: OrderType::Delivery,
        requested_delivery_date: Some(example_time(3 * 86_400)),
        created_at: example_time(0),
    },
});

message!(OrderCreated {
    type_name: "order.created",
    version: 2,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: CREATED_SUBSCRIBERS,
    previous: OrderCreatedV1,
    example: OrderCreated {
        customer_id: "user-4711".into(),
        items: example_items(),
        total_amount: Money::eur(5900),
        fulfillment: Fulfillment::Delivery {
            address: example_address(),
            requested_date: Some(example_time(3 * 86_400)),
        },
        payment_method_id: Some("pm-card-0042".into()),
        created_at: example_time(0),
    },
});

/// `order.confirmed`: stock is reserved and payment succeeded; the order will be fulfilled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    /// When the order was confirmed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub confirmed_at: DateTime<Utc>,
    /// When the customer can expect the order.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub estimated_delivery_date: DateTime<Utc>,
    /// The payment's transaction reference.
    pub payment_reference: String,
    /// The payment that paid the order (from the DDD document's `paymentId`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The carrier's tracking number, if already known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Whether the artisans were told to prepare the order.
    pub artisan_notified: bool,
}

message!(OrderConfirmed {
    type_name: "order.confirmed",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &[
        "notification-service",
        "loyalty-service",
        "artisan-service",
        "shipping-service",
        "inventory-service"
    ],
    example: OrderConfirmed {
        confirmed_at: example_time(90),
        estimated_delivery_date: example_time(3 * 86_400),
        payment_reference: "txn-20260115-0001".into(),
        payment_id: Some("pay-9f2c".into()),
        tracking_number: None,
        artisan_notified: true,
    },
});

/// Why an order was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CancellationReason {
    /// The customer asked for it.
    CustomerRequest,
    /// The payment was declined or failed.
    PaymentFailed,
    /// Not enough stock for some item.
    InventoryUnavailable,
    /// An artisan cannot fulfil the order.
    ArtisanUnavailable,
    /// The payment service did not answer within the saga's deadline.
    PaymentTimeout,
}

/// `order.cancelled`: the order will not be fulfilled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// Why.
    pub reason: CancellationReason,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub cancelled_at: DateTime<Utc>,
    /// Whether money was taken and must be returned.
    pub refund_required: bool,
    /// How much to refund, when a refund is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_amount: Option<Money>,
    /// Who cancelled: a user id, or `system`.
    pub cancelled_by: String,
    /// The compensations run or requested (`release-stock`, `refund-payment`, ...).
    pub compensation_actions: Vec<String>,
}

message!(OrderCancelled {
    type_name: "order.cancelled",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &[
        "inventory-service",
        "payment-service",
        "notification-service",
        "analytics-service",
        "shipping-service"
    ],
    example: OrderCancelled {
        reason: CancellationReason::PaymentFailed,
        cancelled_at: example_time(120),
        refund_required: false,
        refund_amount: None,
        cancelled_by: "system".into(),
        compensation_actions: vec!["release-stock".into()],
    },
});

/// How an order was handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMethod {
    /// By a courier company.
    Courier,
    /// Collected by the customer.
    Pickup,
    /// Brought by the artisan.
    Direct,
}

/// `order.delivered`: the customer has the order. Also stands for the DDD document's
/// `OrderCompleted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderDelivered {
    /// When it was handed over.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub delivered_at: DateTime<Utc>,
    /// How.
    pub delivery_method: DeliveryMethod,
    /// Who received it.
    pub recipient_name: String,
    /// The recipient's signature (a reference to the stored image), if taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_signature: Option<String>,
    /// References to photos taken at delivery, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_photos: Option<Vec<String>>,
    /// Free-text notes of the courier, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_notes: Option<String>,
    /// The customer's rating of the delivery, 1 to 5, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub quality_rating: Option<u8>,
}

message!(OrderDelivered {
    type_name: "order.delivered",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &[
        "loyalty-service",
        "analytics-service",
        "notification-service",
        "review-service",
        "user-service"
    ],
    example: OrderDelivered {
        delivered_at: example_time(2 * 86_400),
        delivery_method: DeliveryMethod::Courier,
        recipient_name: "María López".into(),
        recipient_signature: None,
        delivery_photos: Some(vec!["photos/ord-1001/door.jpg".into()]),
        delivery_notes: None,
        quality_rating: Some(5),
    },
});

/// `order.shipped`: the order left the artisan with a carrier (DDD document and integration
/// summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderShipped {
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier.
    pub carrier: String,
}

message!(OrderShipped {
    type_name: "order.shipped",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &["inventory-service", "notification-service"],
    example: OrderShipped {
        tracking_number: "SEUR-123456789".into(),
        carrier: "SEUR".into()
    },
});

/// The life-cycle states of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OrderStatus {
    /// Placed, being fulfilled.
    Pending,
    /// Stock reserved and paid.
    Confirmed,
    /// Will not be fulfilled.
    Cancelled,
    /// With a carrier.
    Shipped,
    /// With the customer.
    Delivered,
}

/// `order.status_changed`: the order moved between life-cycle states (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusChanged {
    /// The state before.
    pub previous_status: OrderStatus,
    /// The state now.
    pub new_status: OrderStatus,
    /// When it changed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub changed_at: DateTime<Utc>,
    /// Why, in words, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

message!(OrderStatusChanged {
    type_name: "order.status_changed",
    version: 1,
    kind: Event,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &["notification-service", "analytics-service"],
    example: OrderStatusChanged {
        previous_status: OrderStatus::Pending,
        new_status: OrderStatus::Confirmed,
        changed_at: example_time(90),
        reason: None,
    },
});

/// `order.cmd.confirm`: the fulfillment saga tells the order service to confirm an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmOrder {
    /// The payment that paid the order.
    pub payment_id: String,
    /// The payment's transaction reference.
    pub payment_reference: String,
}

message!(ConfirmOrder {
    type_name: "order.cmd.confirm",
    version: 1,
    kind: Command,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &["order-service"],
    example: ConfirmOrder {
        payment_id: "pay-9f2c".into(),
        payment_reference: "txn-20260115-0001".into(),
    },
});

/// `order.cmd.cancel`: the fulfillment saga tells the order service to cancel an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelOrder {
    /// Why.
    pub reason: CancellationReason,
    /// Whether the customer was charged and must be refunded.
    pub refund_required: bool,
    /// Details for people (logs, support), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

message!(CancelOrder {
    type_name: "order.cmd.cancel",
    version: 1,
    kind: Command,
    context: Order,
    aggregate: "order",
    publishers: ["order-service"],
    subscribers: &["order-service"],
    example: CancelOrder {
        reason: CancellationReason::InventoryUnavailable,
        refund_required: false,
        detail: Some("prod-ceramic-bowl: 1 requested, 0 available".into()),
    },
});

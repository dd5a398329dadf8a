#![doc = include_str!("docs/shipping.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::example_time;
use crate::message::message;

/// `shipping.shipment_created`: a shipment was booked with a carrier for an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentCreated {
    /// The order shipped.
    pub order_id: String,
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier.
    pub carrier: String,
    /// When the carrier expects to deliver.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub estimated_delivery: DateTime<Utc>,
}

message!(ShipmentCreated {
    type_name: "shipping.shipment_created",
    version: 1,
    kind: Event,
    context: Shipping,
    aggregate: "shipment",
    publishers: ["shipping-service"],
    subscribers: &["order-service", "notification-service"],
    example: ShipmentCreated {
        order_id: "ord-1001".into(),
        tracking_number: "SEUR-123456789".into(),
        carrier: "SEUR".into(),
        estimated_delivery: example_time(2 * 86_400),
    },
});

/// `shipping.shipment_dispatched`: the carrier collected the parcel (integration summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentDispatched {
    /// The order shipped.
    pub order_id: String,
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier.
    pub carrier: String,
    /// When the carrier collected it.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub dispatched_at: DateTime<Utc>,
}

message!(ShipmentDispatched {
    type_name: "shipping.shipment_dispatched",
    version: 1,
    kind: Event,
    context: Shipping,
    aggregate: "shipment",
    publishers: ["shipping-service"],
    subscribers: &["order-service", "notification-service"],
    example: ShipmentDispatched {
        order_id: "ord-1001".into(),
        tracking_number: "SEUR-123456789".into(),
        carrier: "SEUR".into(),
        dispatched_at: example_time(86_400),
    },
});

/// `shipping.shipment_status_updated`: the carrier reported progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentStatusUpdated {
    /// The carrier's status, as the carrier words it (`in-transit`, `out-for-delivery`, ...).
    pub status: String,
    /// Where the parcel is.
    pub location: String,
}

message!(ShipmentStatusUpdated {
    type_name: "shipping.shipment_status_updated",
    version: 1,
    kind: Event,
    context: Shipping,
    aggregate: "shipment",
    publishers: ["shipping-service"],
    subscribers: &["order-service", "notification-service"],
    example: ShipmentStatusUpdated {
        status: "in-transit".into(),
        location: "Jaén hub".into()
    },
});

/// `shipping.shipment_delivered`: the carrier delivered the parcel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentDelivered {
    /// The order delivered.
    pub order_id: String,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub delivered_at: DateTime<Utc>,
}

message!(ShipmentDelivered {
    type_name: "shipping.shipment_delivered",
    version: 1,
    kind: Event,
    context: Shipping,
    aggregate: "shipment",
    publishers: ["shipping-service"],
    subscribers: &["order-service", "notification-service"],
    example: ShipmentDelivered {
        order_id: "ord-1001".into(),
        delivered_at: example_time(2 * 86_400)
    },
});

#![doc = include_str!("docs/inventory.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::example_time;
use crate::message::message;
use crate::money::Money;

/// `inventory.stock_reserved`: units of one product are held for an order until the
/// reservation expires or is released.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    /// The order the units are held for.
    pub order_id: String,
    /// The artisan who makes the product.
    pub artisan_id: String,
    /// How many units are held.
    #[schemars(range(min = 1))]
    pub quantity_reserved: u32,
    /// Units still available to others after this reservation.
    pub remaining_stock: u32,
    /// When the hold lapses unless the order is confirmed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub reservation_expiry: DateTime<Utc>,
    /// The reservation, for releasing it later.
    pub reservation_id: String,
    /// The unit price at reservation time.
    pub unit_price: Money,
}

message!(StockReserved {
    type_name: "inventory.stock_reserved",
    version: 1,
    kind: Event,
    context: Inventory,
    aggregate: "product",
    publishers: ["inventory-service"],
    subscribers: &["order-service", "notification-service", "analytics-service"],
    example: StockReserved {
        order_id: "ord-1001".into(),
        artisan_id: "art-almazara-ubeda".into(),
        quantity_reserved: 2,
        remaining_stock: 38,
        reservation_expiry: example_time(30 * 60),
        reservation_id: "res-7c1e".into(),
        unit_price: Money::eur(1250),
    },
});

/// A line that could not be reserved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedItem {
    /// The product.
    pub product_id: String,
    /// Units asked for.
    pub requested_quantity: u32,
    /// Units that were available.
    pub available_quantity: u32,
}

/// `inventory.stock_reservation_failed`: a reservation for an order could not be made
/// (DDD document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReservationFailed {
    /// The order that asked.
    pub order_id: String,
    /// Why, in words.
    pub reason: String,
    /// The lines that could not be reserved, at least one.
    #[schemars(length(min = 1))]
    pub failed_items: Vec<FailedItem>,
}

message!(StockReservationFailed {
    type_name: "inventory.stock_reservation_failed",
    version: 1,
    kind: Event,
    context: Inventory,
    aggregate: "product",
    publishers: ["inventory-service"],
    subscribers: &["order-service", "analytics-service"],
    example: StockReservationFailed {
        order_id: "ord-1002".into(),
        reason: "insufficient stock".into(),
        failed_items: vec![FailedItem {
            product_id: "prod-ceramic-bowl".into(),
            requested_quantity: 3,
            available_quantity: 1,
        }],
    },
});

/// Why reserved units went back to available stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseReason {
    /// The order was cancelled.
    OrderCancelled,
    /// The reservation lapsed before the order was confirmed.
    ReservationExpired,
    /// The payment failed.
    PaymentFailed,
    /// Someone released it by hand.
    ManualRelease,
}

/// `inventory.stock_released`: reserved units are available again. Also stands for the
/// architecture document's `StockCompensated`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    /// The order the units were held for.
    pub order_id: String,
    /// The reservation released.
    pub reservation_id: String,
    /// How many units went back.
    pub quantity_released: u32,
    /// Why.
    pub reason: ReleaseReason,
    /// Units available after the release.
    pub new_available_stock: u32,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub released_at: DateTime<Utc>,
}

message!(StockReleased {
    type_name: "inventory.stock_released",
    version: 1,
    kind: Event,
    context: Inventory,
    aggregate: "product",
    publishers: ["inventory-service"],
    subscribers: &["order-service", "product-service", "analytics-service"],
    example: StockReleased {
        order_id: "ord-1001".into(),
        reservation_id: "res-7c1e".into(),
        quantity_released: 2,
        reason: ReleaseReason::PaymentFailed,
        new_available_stock: 40,
        released_at: example_time(150),
    },
});

/// `inventory.low_stock_warning`: a product fell under its warning threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LowStockWarning {
    /// Units available now.
    pub current_stock: u32,
    /// The level that raises this warning.
    pub warning_threshold: u32,
    /// The level considered critical.
    pub critical_threshold: u32,
    /// The artisan who makes the product.
    pub artisan_id: String,
    /// The product's name.
    pub product_name: String,
    /// The product's category.
    pub category: String,
    /// When stock was last replenished, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(
        serialize_with = "crate::time::opt_utc",
        deserialize_with = "crate::time::de_opt_utc"
    )]
    pub last_restock_date: Option<DateTime<Utc>>,
    /// Units sold per day, averaged (a rate, not money).
    #[schemars(range(min = 0.0))]
    pub average_daily_sales: f64,
    /// When stock runs out at that rate.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub estimated_stockout_date: DateTime<Utc>,
}

message!(LowStockWarning {
    type_name: "inventory.low_stock_warning",
    version: 1,
    kind: Event,
    context: Inventory,
    aggregate: "product",
    publishers: ["inventory-service"],
    subscribers: &[
        "artisan-service",
        "notification-service",
        "procurement-service"
    ],
    example: LowStockWarning {
        current_stock: 4,
        warning_threshold: 5,
        critical_threshold: 2,
        artisan_id: "art-ceramica-tito".into(),
        product_name: "Cuenco de cerámica verde".into(),
        category: "ceramics".into(),
        last_restock_date: Some(example_time(-20 * 86_400)),
        average_daily_sales: 1.5,
        estimated_stockout_date: example_time(2 * 86_400),
    },
});

/// Why stock was adjusted by hand or by a process other than an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AdjustmentReason {
    /// New units arrived.
    Restock,
    /// Units were damaged.
    Damage,
    /// Units were lost.
    Loss,
    /// A count corrected the books.
    Correction,
    /// A customer returned units.
    Return,
}

/// `inventory.adjusted`: stock changed outside an order. Also stands for `StockUpdated` (DDD
/// document, integration summary) and `StockAdjusted` (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryAdjusted {
    /// Units before.
    pub previous_stock: u32,
    /// Units after.
    pub new_stock: u32,
    /// The change, negative for removals.
    pub adjustment_quantity: i64,
    /// Why.
    pub adjustment_reason: AdjustmentReason,
    /// Who adjusted (a user id, or `system`).
    pub adjusted_by: String,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub adjusted_at: DateTime<Utc>,
    /// Free-text notes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// The batch the units belong to, if tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_number: Option<String>,
}

message!(InventoryAdjusted {
    type_name: "inventory.adjusted",
    version: 1,
    kind: Event,
    context: Inventory,
    aggregate: "product",
    publishers: ["inventory-service"],
    subscribers: &[
        "product-service",
        "analytics-service",
        "audit-service",
        "order-service",
        "cart-service"
    ],
    example: InventoryAdjusted {
        previous_stock: 4,
        new_stock: 24,
        adjustment_quantity: 20,
        adjustment_reason: AdjustmentReason::Restock,
        adjusted_by: "user-artisan-17".into(),
        adjusted_at: example_time(4 * 3600),
        notes: None,
        batch_number: Some("LOT-2026-003".into()),
    },
});

/// `inventory.cmd.reserve_stock`: the fulfillment saga asks for units of one product to be
/// held for an order. Answered by `inventory.stock_reserved` or
/// `inventory.stock_reservation_failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveStock {
    /// The order to hold units for.
    pub order_id: String,
    /// How many units, at least one.
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// When the hold lapses unless the order is confirmed (30 minutes by default).
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub expires_at: DateTime<Utc>,
}

message!(ReserveStock {
    type_name: "inventory.cmd.reserve_stock",
    version: 1,
    kind: Command,
    context: Inventory,
    aggregate: "product",
    publishers: ["order-service"],
    subscribers: &["inventory-service"],
    example: ReserveStock {
        order_id: "ord-1001".into(),
        quantity: 2,
        expires_at: example_time(30 * 60),
    },
});

/// `inventory.cmd.release_stock`: the fulfillment saga asks for a reservation to be
/// released (its compensation for `reserve_stock`). Answered by `inventory.stock_released`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStock {
    /// The order the units were held for.
    pub order_id: String,
    /// The reservation to release.
    pub reservation_id: String,
    /// Why.
    pub reason: ReleaseReason,
}

message!(ReleaseStock {
    type_name: "inventory.cmd.release_stock",
    version: 1,
    kind: Command,
    context: Inventory,
    aggregate: "product",
    publishers: ["order-service"],
    subscribers: &["inventory-service"],
    example: ReleaseStock {
        order_id: "ord-1001".into(),
        reservation_id: "res-7c1e".into(),
        reason: ReleaseReason::PaymentFailed,
    },
});

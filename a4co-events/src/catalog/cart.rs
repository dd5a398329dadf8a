#![doc = include_str!("docs/cart.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::example_time;
use crate::message::message;
use crate::money::Money;

/// One line of a cart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartItem {
    /// The product.
    pub product_id: String,
    /// How many units, at least one.
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// The unit price shown to the customer.
    pub unit_price: Money,
}

/// `cart.abandoned`: a customer left a cart with items and went quiet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartAbandoned {
    /// The customer.
    pub customer_id: String,
    /// What was in the cart.
    pub items: Vec<CartItem>,
    /// The cart's total.
    pub cart_total: Money,
    /// When the customer last touched it.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub last_activity_at: DateTime<Utc>,
}

fn example_cart() -> Vec<CartItem> {
    vec![CartItem {
        product_id: "prod-olive-oil-500".into(),
        quantity: 2,
        unit_price: Money::eur(1250),
    }]
}

message!(CartAbandoned {
    type_name: "cart.abandoned",
    version: 1,
    kind: Event,
    context: Cart,
    aggregate: "cart",
    publishers: ["cart-service"],
    subscribers: &["notification-service", "order-service"],
    example: CartAbandoned {
        customer_id: "user-4711".into(),
        items: example_cart(),
        cart_total: Money::eur(2500),
        last_activity_at: example_time(-2 * 3600),
    },
});

/// `cart.checkout_initiated`: a customer started checking out a cart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutInitiated {
    /// The customer.
    pub customer_id: String,
    /// What is being bought, at least one line.
    #[schemars(length(min = 1))]
    pub items: Vec<CartItem>,
    /// The cart's total.
    pub cart_total: Money,
}

message!(CheckoutInitiated {
    type_name: "cart.checkout_initiated",
    version: 1,
    kind: Event,
    context: Cart,
    aggregate: "cart",
    publishers: ["cart-service"],
    subscribers: &["notification-service", "order-service"],
    example: CheckoutInitiated {
        customer_id: "user-4711".into(),
        items: example_cart(),
        cart_total: Money::eur(2500),
    },
});

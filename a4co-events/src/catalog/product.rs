#![doc = include_str!("docs/product.md")]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::artisan::Dimensions;
use crate::message::message;
use crate::money::Money;

/// The product fields that changed, with their new values; absent fields did not change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductChanges {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// New category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// New subcategory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcategory: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New materials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materials: Option<Vec<String>>,
    /// New size and weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<Dimensions>,
    /// Whether it can now be made to order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customizable: Option<bool>,
}

/// `product.updated`: a product's description changed (price changes are
/// `product.price_changed`, stock changes `inventory.adjusted`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductUpdated {
    /// What changed.
    pub changes: ProductChanges,
}

message!(ProductUpdated {
    type_name: "product.updated",
    version: 1,
    kind: Event,
    context: Product,
    aggregate: "product",
    publishers: ["product-service"],
    subscribers: &["order-service", "cart-service"],
    example: ProductUpdated {
        changes: ProductChanges {
            description: Some("Hand-thrown bowl, green glaze, dishwasher safe".into()),
            ..ProductChanges::default()
        },
    },
});

/// `product.deleted`: a product was withdrawn from the catalog. The envelope's aggregate id
/// names it; the payload is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDeleted {}

message!(ProductDeleted {
    type_name: "product.deleted",
    version: 1,
    kind: Event,
    context: Product,
    aggregate: "product",
    publishers: ["product-service"],
    subscribers: &["order-service", "cart-service"],
    example: ProductDeleted {},
});

/// `product.price_changed`: a product's unit price changed (integration summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceChanged {
    /// The price before.
    pub previous_price: Money,
    /// The price now.
    pub new_price: Money,
}

message!(PriceChanged {
    type_name: "product.price_changed",
    version: 1,
    kind: Event,
    context: Product,
    aggregate: "product",
    publishers: ["product-service"],
    subscribers: &["order-service", "cart-service"],
    example: PriceChanged {
        previous_price: Money::eur(3400),
        new_price: Money::eur(3200)
    },
});

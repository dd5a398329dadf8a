//! The REST API. Every route needs a service token (`inventory:read` to look,
//! `inventory:write` to change); bad ids and bodies are 400s that say what is wrong.

use a4co_events::Money;
use a4co_events::bus::{Publisher, Subscriber};
use a4co_events::catalog::inventory::AdjustmentReason;
use a4co_http::auth::{Claims, Verifier, require};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, Body, is_valid_id};

use crate::{AdjustError, Inventory, Product, ProductDetails};

/// The most products one availability check may name.
const MAX_CHECK_ITEMS: usize = 100;

/// `GET /api/v1/inventory/availability/{productId}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    /// The product.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// The artisan who makes it.
    pub artisan_id: String,
    /// The price of one unit.
    pub unit_price: Money,
    /// Units that can be reserved now.
    pub available: u32,
    /// Whether any can.
    pub in_stock: bool,
}

/// One line of `POST /api/v1/inventory/check-availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckItem {
    /// The product.
    pub product_id: String,
    /// Units wanted, at least one.
    pub quantity: u32,
}

/// The body of `POST /api/v1/inventory/check-availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    /// The products and units wanted.
    pub items: Vec<CheckItem>,
}

/// The answer for one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedItem {
    /// The product.
    pub product_id: String,
    /// Units wanted.
    pub requested: u32,
    /// Units available (0 for an unknown product).
    pub available: u32,
    /// Whether the product exists.
    pub known: bool,
    /// Whether the units wanted are available.
    pub sufficient: bool,
}

/// The answer of `POST /api/v1/inventory/check-availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResponse {
    /// Whether every line is available.
    pub all_available: bool,
    /// Line by line.
    pub items: Vec<CheckedItem>,
}

/// `GET /api/v1/inventory/{productId}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockView {
    /// The product.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// The artisan who makes it.
    pub artisan_id: String,
    /// Its category.
    pub category: String,
    /// The price of one unit.
    pub unit_price: Money,
    /// Units in the workshop.
    pub on_hand: u32,
    /// Units held for orders.
    pub reserved: u32,
    /// Units that can be reserved.
    pub available: u32,
    /// Open reservations.
    pub reservations: usize,
    /// The low-stock threshold.
    pub low_stock_threshold: u32,
    /// The last restock.
    pub last_restock: Option<DateTime<Utc>>,
}

impl From<&Product> for StockView {
    fn from(p: &Product) -> Self {
        StockView {
            product_id: p.product_id.clone(),
            name: p.name.clone(),
            artisan_id: p.artisan_id.clone(),
            category: p.category.clone(),
            unit_price: p.unit_price,
            on_hand: p.on_hand,
            reserved: p.reserved(),
            available: p.available(),
            reservations: p.reservations.len(),
            low_stock_threshold: p.low_stock_threshold,
            last_restock: p.last_restock,
        }
    }
}

/// The body of `POST /api/v1/inventory/{productId}/adjust`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdjustRequest {
    /// Units to add (or, negative, remove); not zero.
    pub quantity: i64,
    /// Why.
    pub reason: AdjustmentReason,
    /// Notes, if any.
    #[serde(default)]
    pub notes: Option<String>,
}

fn product_id(id: String) -> Result<String, ApiError> {
    if is_valid_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!(
            "{id:?} is not a product id (1 to 64 letters, digits, - or _)"
        )))
    }
}

impl<B: Publisher + Subscriber> Inventory<B> {
    /// The REST routes, checking service tokens with `verifier`.
    pub fn router(&self, verifier: &Verifier) -> Router {
        let read = Router::new()
            .route(
                "/api/v1/inventory/availability/{product_id}",
                get(availability::<B>),
            )
            .route("/api/v1/inventory/check-availability", post(check::<B>))
            .route_layer(require(verifier, "inventory:read"));
        let write = Router::new()
            .route("/api/v1/inventory/{product_id}/adjust", post(adjust::<B>))
            .route_layer(require(verifier, "inventory:write"));
        // One path, two methods, two permissions.
        let one = Router::new()
            .route("/api/v1/inventory/{product_id}", get(stock::<B>))
            .route_layer(require(verifier, "inventory:read"))
            .merge(
                Router::new()
                    .route(
                        "/api/v1/inventory/{product_id}",
                        axum::routing::put(put_product::<B>),
                    )
                    .route_layer(require(verifier, "inventory:write")),
            );
        read.merge(write).merge(one).with_state(self.clone())
    }

    async fn known(&self, id: &str) -> Result<Product, ApiError> {
        self.product(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no product {id:?}")))
    }
}

async fn availability<B: Publisher + Subscriber>(
    State(inventory): State<Inventory<B>>,
    Path(id): Path<String>,
) -> Result<Json<Availability>, ApiError> {
    let product = inventory.known(&product_id(id)?).await?;
    Ok(Json(Availability {
        product_id: product.product_id.clone(),
        name: product.name.clone(),
        artisan_id: product.artisan_id.clone(),
        unit_price: product.unit_price,
        available: product.available(),
        in_stock: product.available() > 0,
    }))
}

async fn check<B: Publisher + Subscriber>(
    State(inventory): State<Inventory<B>>,
    Body(request): Body<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    if request.items.is_empty() || request.items.len() > MAX_CHECK_ITEMS {
        return Err(ApiError::bad_request(format!(
            "items: name 1 to {MAX_CHECK_ITEMS} products"
        )));
    }
    let mut items = Vec::with_capacity(request.items.len());
    for item in request.items {
        let id = product_id(item.product_id)?;
        if item.quantity == 0 {
            return Err(ApiError::bad_request(format!(
                "{id}: quantity must be at least 1"
            )));
        }
        let product = inventory.product(&id).await?;
        let available = product.as_ref().map_or(0, Product::available);
        items.push(CheckedItem {
            product_id: id,
            requested: item.quantity,
            available,
            known: product.is_some(),
            sufficient: product.is_some() && available >= item.quantity,
        });
    }
    Ok(Json(CheckResponse {
        all_available: items.iter().all(|i| i.sufficient),
        items,
    }))
}

async fn stock<B: Publisher + Subscriber>(
    State(inventory): State<Inventory<B>>,
    Path(id): Path<String>,
) -> Result<Json<StockView>, ApiError> {
    let product = inventory.known(&product_id(id)?).await?;
    Ok(Json(StockView::from(&product)))
}

async fn put_product<B: Publisher + Subscriber>(
    State(inventory): State<Inventory<B>>,
    Path(id): Path<String>,
    Body(mut details): Body<ProductDetails>,
) -> Result<Json<StockView>, ApiError> {
    details.product_id = product_id(id)?;
    if details.name.trim().is_empty() || !is_valid_id(&details.artisan_id) {
        return Err(ApiError::bad_request(
            "name must not be blank and artisanId must be an id",
        ));
    }
    if details.unit_price.amount_minor <= 0 {
        return Err(ApiError::bad_request("unitPrice must be above zero"));
    }
    let product = inventory.put_product(details).await?;
    Ok(Json(StockView::from(&product)))
}

async fn adjust<B: Publisher + Subscriber>(
    State(inventory): State<Inventory<B>>,
    Extension(claims): Extension<Claims>,
    Path(id): Path<String>,
    Body(request): Body<AdjustRequest>,
) -> Result<Json<StockView>, ApiError> {
    let id = product_id(id)?;
    if request.quantity == 0 || request.quantity.unsigned_abs() > 1_000_000 {
        return Err(ApiError::bad_request(
            "quantity must be non-zero and at most 1000000 units either way",
        ));
    }
    match inventory
        .adjust(
            &id,
            request.quantity,
            request.reason,
            &claims.service_id,
            request.notes,
        )
        .await
    {
        Ok(product) => Ok(Json(StockView::from(&product))),
        Err(AdjustError::NotFound(_)) => Err(ApiError::not_found(format!("no product {id:?}"))),
        Err(e @ AdjustError::Insufficient { .. }) => {
            Err(ApiError::conflict("insufficient-stock", e.to_string()))
        }
        Err(AdjustError::Records(e)) => Err(e.into()),
        Err(AdjustError::Publish(e)) => Err(e.into()),
    }
}

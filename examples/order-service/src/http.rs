//! The REST API, for customers' clients behind the API gateway (which authenticates users;
//! these routes take no service token).

use a4co_events::bus::{Publisher, Subscriber};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use service_kit::{ApiError, Body, is_valid_id};

use crate::{Order, Orders, PlaceError, PlaceOrder};

impl From<PlaceError> for ApiError {
    fn from(error: PlaceError) -> Self {
        let message = error.to_string();
        match error {
            PlaceError::Invalid(_) => ApiError::bad_request(message),
            PlaceError::UnknownProduct(_) => ApiError::unprocessable("unknown-product", message),
            PlaceError::OutOfStock { .. } => ApiError::conflict("out-of-stock", message),
            PlaceError::PaymentRefused { code, .. } => {
                let code: &'static str = match code.as_str() {
                    "payment-method-expired" => "payment-method-expired",
                    "amount-over-limit" => "amount-over-limit",
                    _ => "payment-method-invalid",
                };
                ApiError::unprocessable(code, message)
            }
            PlaceError::Unavailable { dependency, detail } => {
                ApiError::unavailable(dependency, detail)
            }
        }
    }
}

impl<B: Publisher + Subscriber> Orders<B> {
    /// The REST routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/orders", post(place::<B>))
            .route("/api/v1/orders/{order_id}", get(order::<B>))
            .route(
                "/api/v1/orders/customer/{customer_id}",
                get(of_customer::<B>),
            )
            .with_state(self.clone())
    }
}

async fn place<B: Publisher + Subscriber>(
    State(orders): State<Orders<B>>,
    headers: HeaderMap,
    Body(request): Body<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = headers
        .get(a4co_http::IDEMPOTENCY_KEY_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be text"))
        })
        .transpose()?;
    let (order, new) = orders.place(request, key).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/orders/{}", order.order_id);
    Ok((status, [(header::LOCATION, location)], Json(order)).into_response())
}

async fn order<B: Publisher + Subscriber>(
    State(orders): State<Orders<B>>,
    Path(order_id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    if !is_valid_id(&order_id) {
        return Err(ApiError::bad_request(format!(
            "{order_id:?} is not an order id"
        )));
    }
    orders
        .order(&order_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id:?}")))
}

async fn of_customer<B: Publisher + Subscriber>(
    State(orders): State<Orders<B>>,
    Path(customer_id): Path<String>,
) -> Result<Json<Vec<Order>>, ApiError> {
    if !is_valid_id(&customer_id) {
        return Err(ApiError::bad_request(format!(
            "{customer_id:?} is not a customer id"
        )));
    }
    Ok(Json(orders.orders_of(&customer_id).await?))
}

//! The REST API: payment-method pre-validation and a payment's state. Every route needs a
//! service token.

use a4co_events::Money;
use a4co_events::catalog::payment::PaymentMethod;
use a4co_http::auth::{Verifier, require};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, Body, is_valid_id};

use crate::{Payment, Payments};

/// The body of `POST /api/v1/payments/validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateRequest {
    /// Who will pay.
    pub customer_id: String,
    /// How much.
    pub amount: Money,
    /// How.
    pub payment_method: PaymentMethod,
    /// The stored method (required for cards).
    #[serde(default)]
    pub payment_method_id: Option<String>,
}

/// The answer of `POST /api/v1/payments/validate` when the method is usable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validated {
    /// Always true (a refusal is a 422).
    pub valid: bool,
}

impl<B: Clone + Send + Sync + 'static> Payments<B> {
    /// The REST routes, checking service tokens with `verifier`.
    pub fn router(&self, verifier: &Verifier) -> Router {
        Router::new()
            .route("/api/v1/payments/validate", post(validate::<B>))
            .route_layer(require(verifier, "payment:validate"))
            .merge(
                Router::new()
                    .route("/api/v1/payments/{order_id}", get(payment::<B>))
                    .route_layer(require(verifier, "payment:read")),
            )
            .with_state(self.clone())
    }
}

async fn validate<B: Clone + Send + Sync + 'static>(
    State(payments): State<Payments<B>>,
    Body(request): Body<ValidateRequest>,
) -> Result<Json<Validated>, ApiError> {
    if !is_valid_id(&request.customer_id) {
        return Err(ApiError::bad_request(
            "customerId must be an id (1 to 64 letters, digits, - or _)",
        ));
    }
    if request.amount.amount_minor <= 0 {
        return Err(ApiError::bad_request("amount must be above zero"));
    }
    let method_id = match (request.payment_method, request.payment_method_id.as_deref()) {
        (_, Some(id)) if !is_valid_id(id) => {
            return Err(ApiError::bad_request("paymentMethodId must be an id"));
        }
        (PaymentMethod::Card, None) => {
            return Err(ApiError::unprocessable(
                "payment-method-invalid",
                "a card payment needs paymentMethodId",
            ));
        }
        (_, id) => id.unwrap_or_default(),
    };
    payments
        .validate(method_id, request.amount)
        .map_err(|e| ApiError::unprocessable(e.code, e.message))?;
    Ok(Json(Validated { valid: true }))
}

async fn payment<B: Clone + Send + Sync + 'static>(
    State(payments): State<Payments<B>>,
    Path(order_id): Path<String>,
) -> Result<Json<Payment>, ApiError> {
    if !is_valid_id(&order_id) {
        return Err(ApiError::bad_request(format!(
            "{order_id:?} is not an order id"
        )));
    }
    payments
        .payment(&order_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no payment for order {order_id:?}")))
}

//! REST errors: one JSON shape, `{"error": "<code>", "message": "<what to fix>"}`, with the
//! status that says who must act (4xx: the caller, 5xx: us or a dependency).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use a4co_events::service::RecordsError;

/// A failed request, answered as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status it is answered with (4xx for the caller's mistakes, 5xx for ours).
    pub status: StatusCode,
    /// A stable code for programs (`invalid-request`, `not-found`, ...).
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed or breaks a rule; `message` says which.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid-request",
            message: message.into(),
        }
    }

    /// 404: nothing under that id.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not-found",
            message: message.into(),
        }
    }

    /// 409: the request is valid but the state of things refuses it.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
        }
    }

    /// 422: understood, and refused by a business rule (a declined payment method).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
        }
    }

    /// 503: a dependency is down; the caller may retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RecordsError> for ApiError {
    fn from(error: RecordsError) -> Self {
        tracing::warn!(error = %error, "state store");
        ApiError::unavailable(error.to_string())
    }
}

impl From<a4co_events::bus::PublishError> for ApiError {
    fn from(error: a4co_events::bus::PublishError) -> Self {
        tracing::warn!(error = %error, "publishing");
        ApiError::unavailable(format!("the event bus refused the message: {error}"))
    }
}

/// A JSON request body; a body that is not JSON, or not this shape, is a 400 whose message
/// names the field and the problem (axum's own rejection answers in plain text).
#[derive(Clone, Copy, Debug, Default)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::bad_request("send the body as JSON (Content-Type: application/json)")
                }
                _ => ApiError::bad_request(rejection.body_text()),
            }),
        }
    }
}

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
    /// For a failure of ours or a dependency's: the id its details are logged under
    /// (answered as `reference`, for the caller to quote to support).
    pub reference: Option<String>,
}

impl ApiError {
    /// 400: the request is malformed or breaks a rule; `message` says which.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid-request",
            message: message.into(),
            reference: None,
        }
    }

    /// 404: nothing under that id.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not-found",
            message: message.into(),
            reference: None,
        }
    }

    /// 409: the request is valid but the state of things refuses it.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
            reference: None,
        }
    }

    /// 422: understood, and refused by a business rule (a declined payment method).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
            reference: None,
        }
    }

    /// 503: `dependency` (`inventory`, `the state store`) is down; the caller may retry
    /// later. The caller learns which dependency and a reference, nothing of `detail` (an
    /// upstream's URL or error body): that is logged at warn level under the reference,
    /// user info in URLs blanked.
    pub fn unavailable(dependency: &str, detail: impl std::fmt::Display) -> Self {
        let reference = a4co_events::EventId::new().to_string();
        let detail = blank_userinfo(&detail.to_string());
        tracing::warn!(%reference, %detail, "answering 503: {dependency} is unavailable");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: format!("{dependency} is unavailable; retry later"),
            reference: Some(reference),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.code, "message": self.message});
        if let Some(reference) = self.reference {
            body["reference"] = serde_json::Value::String(reference);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RecordsError> for ApiError {
    fn from(error: RecordsError) -> Self {
        ApiError::unavailable("the state store", error)
    }
}

impl From<a4co_events::bus::PublishError> for ApiError {
    fn from(error: a4co_events::bus::PublishError) -> Self {
        ApiError::unavailable("the event bus", error)
    }
}

/// `text` with the user info of every URL in it (`scheme://user:password@`) blanked to
/// `scheme://***@`.
fn blank_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority runs to the next space, quote or slash; user info to its last '@'.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '/' | '>'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::blank_userinfo;

    #[test]
    fn user_info_is_blanked_wherever_a_url_appears() {
        assert_eq!(
            blank_userinfo("GET http://ops:hunter2@inv:8080/a failed; see nats://t0k@n:4222"),
            "GET http://***@inv:8080/a failed; see nats://***@n:4222"
        );
        assert_eq!(blank_userinfo("http://inv:8080/a@b"), "http://inv:8080/a@b");
        assert_eq!(blank_userinfo("no url here"), "no url here");
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

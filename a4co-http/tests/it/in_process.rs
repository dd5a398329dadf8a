//! The client against an axum `Router` in this process: the same pipeline, no socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use a4co_http::auth::{self, Claims, Issuer, Secret, Verifier};
use a4co_http::{Client, DEADLINE_HEADER, IDEMPOTENCY_KEY_HEADER, retry};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};

const SECRET: &str = "an-in-process-test-secret-of-32-bytes-or-more";

fn fast_retry() -> retry::Config {
    retry::Config {
        backoff: retry::Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
            .without_jitter(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_pipeline_runs_against_a_router_with_its_auth_layer() {
    let verifier = Verifier::new(&Secret::new(SECRET).unwrap());
    let app = Router::new().route(
        "/api/v1/inventory/adjust",
        post(
            |Extension(caller): Extension<Claims>, headers: HeaderMap, body: String| async move {
                let key = headers
                    .get(IDEMPOTENCY_KEY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let deadline = headers.contains_key(DEADLINE_HEADER);
                format!("{} {key} {deadline} {body}", caller.service_id)
            },
        )
        .route_layer(auth::require(&verifier, "inventory:adjust")),
    );
    let issuer = |perms: &[&str]| {
        Issuer::new(
            Secret::new(SECRET).unwrap(),
            "order-service",
            perms.iter().map(|p| (*p).to_owned()),
        )
    };
    let allowed = Client::builder("inventory-service", "http://inventory")
        .in_process(app.clone())
        .service_auth(issuer(&["inventory:adjust"]))
        .build()
        .unwrap();
    let response = allowed
        .post("/api/v1/inventory/adjust")
        .json(&serde_json::json!({"delta": 3}))
        .idempotency_key("adjust-1")
        .deadline(std::time::Instant::now() + Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&response.body).unwrap(),
        r#"order-service adjust-1 true {"delta":3}"#
    );

    let denied = Client::builder("inventory-service", "http://inventory")
        .in_process(app)
        .service_auth(issuer(&["inventory:read"]))
        .build()
        .unwrap();
    let err = denied
        .post("/api/v1/inventory/adjust")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert_eq!(err.attempts(), 1, "a 403 is an answer, never retried");
}

#[tokio::test]
async fn retries_and_the_breaker_work_in_process() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let app = Router::new().route(
        "/flaky",
        get(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "warming up")
                } else {
                    (StatusCode::OK, "ready")
                }
            }
        }),
    );
    let client = Client::builder("flaky-service", "http://flaky")
        .in_process(app.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let response = client.get("/flaky").send().await.unwrap();
    assert_eq!(&response.body[..], b"ready");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let broken = Router::new().route("/down", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
    let client = Client::builder("down-service", "http://down")
        .in_process(broken)
        .retry(retry::never())
        .breaker(a4co_http::breaker::Config {
            failure_threshold: 2,
            ..Default::default()
        })
        .build()
        .unwrap();
    for _ in 0..2 {
        let err = client.get("/down").send().await.unwrap_err();
        assert_eq!(err.status(), Some(500));
    }
    let err = client.get("/down").send().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
}

#[tokio::test]
async fn a_hanging_handler_times_out_and_an_unknown_route_is_a_404() {
    let app = Router::new().route(
        "/hang",
        get(|| async {
            std::future::pending::<()>().await;
            "never"
        }),
    );
    let client = Client::builder("slow-service", "http://slow")
        .in_process(app)
        .timeout(Duration::from_millis(100))
        .retry(retry::never())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.get("/hang").send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = client.get("/nowhere").send().await.unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn an_idempotency_key_that_cannot_be_a_header_is_refused_before_sending() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let app = Router::new().route(
        "/orders",
        post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { "created" }
        }),
    );
    let client = Client::builder("order-service", "http://orders")
        .in_process(app)
        .build()
        .unwrap();
    for key in ["line\nbreak", ""] {
        let err = client
            .post("/orders")
            .idempotency_key(key)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_request(), "{err}");
        assert!(err.to_string().contains("idempotency key"), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

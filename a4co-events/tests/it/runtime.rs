//! The service runtime from the outside: trace context through a request, `/health`
//! and `/metrics`.

use a4co_events::bus::{MemoryBus, Publisher as _};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::service as ops;
use a4co_events::service::AnyBus;
use a4co_events::{Envelope, Message as _};
use a4co_testkit::http::in_process;
use a4co_testkit::telemetry::Telemetry;
use axum::routing::get;

#[tokio::test(flavor = "current_thread")]
async fn a_request_stays_in_its_callers_trace_and_says_which() {
    let (_telemetry, _guard) = Telemetry::install();
    let router = axum::Router::new()
        .route(
            "/echo",
            get(|| async {
                // What a handler's log lines and outgoing messages would carry.
                let span = tracing::info_span!("inside");
                let _entered = span.enter();
                use opentelemetry::trace::TraceContextExt as _;
                use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                span.context().span().span_context().trace_id().to_string()
            }),
        )
        .layer(axum::middleware::from_fn(ops::request_span));
    // Called directly: an a4co-http client would send its own span's traceparent.
    let call = |traceparent: Option<String>| {
        let mut router = router.clone();
        async move {
            let mut request = axum::http::Request::builder().uri("/echo");
            if let Some(value) = traceparent {
                request = request.header("traceparent", value);
            }
            let request = request
                .body(axum::body::Body::empty())
                .unwrap_or_else(|e| panic!("{e}"));
            let response = tower_service::Service::call(&mut router, request)
                .await
                .unwrap_or_else(|e| match e {});
            let header = response
                .headers()
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            (String::from_utf8_lossy(&body).into_owned(), header)
        }
    };

    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (inside, header) = call(Some(format!("00-{caller}-00f067aa0ba902b7-01"))).await;
    assert_eq!(inside, caller, "the handler runs in the caller's trace");
    assert_eq!(header.as_deref(), Some(caller));

    // What W3C Trace Context forbids starts a new trace: version ff, upper-case hex, an
    // all-zero span id.
    for bad in [
        format!("ff-{caller}-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", caller.to_uppercase()),
        format!("00-{caller}-0000000000000000-01"),
    ] {
        let (inside, _) = call(Some(bad.clone())).await;
        assert_ne!(inside, caller, "{bad} was taken as a parent");
    }

    let (inside, header) = call(None).await;
    assert_eq!(inside.len(), 32);
    assert_ne!(inside, caller);
    assert_eq!(header, Some(inside), "a new trace, named in the answer");
}

#[tokio::test]
async fn health_and_metrics() {
    ops::init("svc", "warn", ops::LogFormat::Text).unwrap_or_else(|e| panic!("{e}"));
    let bus = AnyBus::from(
        MemoryBus::provisioned()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    bus.publish(&Envelope::new("test", "ord-1", OrderCreated::example()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = in_process("svc", ops::routes(bus, Vec::new()), "test", &[]);
    let health: serde_json::Value = client
        .get_json("/health")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (health["status"].as_str(), health["bus"].as_str()),
        (Some("ok"), Some("memory"))
    );
    let scrape = client
        .get("/metrics")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&scrape.body);
    // Whole metric names, as design-v2's queries use them: no suffix doubled.
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(
        names.contains("microservices_events_published_total"),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("_total_total") || n.contains("_seconds_seconds")),
        "{names:?}"
    );
    let published = text
        .lines()
        .find(|l| l.starts_with("microservices_events_published_total{"))
        .unwrap_or_default();
    assert!(
        published.contains(&format!("event_type=\"{}\"", OrderCreated::TYPE)),
        "{published}"
    );
    let target = text
        .lines()
        .find(|l| l.starts_with("target_info{"))
        .unwrap_or_default();
    assert!(target.contains("service_name=\"svc\""), "{target}");
    assert!(
        target.contains(&format!(
            "service_version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{target}"
    );
}

/// A subscription whose consumer is deleted on the server: `/health` answers 503 naming it
/// while it is re-created, then 200, and the messages published after it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_subscription_while_its_consumer_is_recreated() {
    use a4co_events::bus::{HandlerError, Subscriber as _, Subscription};
    use a4co_events::service::Workers;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    ops::init("svc", "warn", ops::LogFormat::Text).unwrap_or_else(|e| panic!("{e}"));
    let server = a4co_testkit::nats::NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "svc", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let handled = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&handled);
    let subscription = Subscription::new("svc", "orders").of::<OrderCreated>();
    let durable = subscription.subscription().durable();
    let handle = bus
        .on(subscription, move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut workers = Workers::new();
    workers.subscription(handle);
    let router = ops::routes(bus.clone(), workers.health());
    let publish = |n: usize| {
        let bus = bus.clone();
        async move {
            for i in 0..n {
                let order = Envelope::new("test", format!("ord-{i}"), OrderCreated::example());
                bus.publish(&order).await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
    };
    // Asked straight, every 10 ms: a client with a breaker would stop asking.
    let wait_for = |what: &'static str, expected: u16| {
        let mut router = router.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let request = axum::http::Request::builder()
                    .uri("/health")
                    .body(axum::body::Body::empty())
                    .unwrap_or_else(|e| panic!("{e}"));
                let answer = tower_service::Service::call(&mut router, request)
                    .await
                    .unwrap_or_else(|e| match e {});
                let status = answer.status().as_u16();
                let body = axum::body::to_bytes(answer.into_body(), 64 * 1024)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if status == expected {
                    return String::from_utf8_lossy(&body).into_owned();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: not within 10 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    publish(10).await;
    let settled = |n: u64| {
        let handled = Arc::clone(&handled);
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while handled.load(Ordering::SeqCst) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n} handled: not within 10 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    settled(10).await;
    let ok = wait_for("healthy", 200).await;
    assert!(ok.contains(r#""running":true"#), "{ok}");

    let AnyBus::Nats(nats) = &bus else {
        panic!("a NATS bus")
    };
    let stream = nats
        .transport()
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .delete_consumer(&durable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let down = wait_for("503 while re-created", 503).await;
    assert!(
        down.contains("svc/orders on ORDERS: not running for"),
        "the answer names the subscription: {down}"
    );
    wait_for("healthy again", 200).await;
    publish(10).await;
    settled(20).await;
    assert_eq!(handled.load(Ordering::SeqCst), 20, "none ran twice");
    workers.shutdown().await;
}

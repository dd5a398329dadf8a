//! Trace context reaches the server; the design-v2 metrics count each call.

use std::time::Duration;

use a4co_http::{Client, retry};
use a4co_testkit::http::{FaultServer, Reply};
use a4co_testkit::telemetry::Telemetry;
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[tokio::test]
async fn trace_context_arrives_and_calls_are_counted() {
    let (t, _guard) = Telemetry::install();

    let server = FaultServer::start().await;
    server.script(
        "GET /api/v1/inventory/p-7",
        [Reply::status(503), Reply::json(200, "{}")],
    );
    let client = Client::builder("inventory-service", server.base_url())
        .source("order-service")
        .retry(retry::Config {
            backoff: retry::Backoff::new(Duration::from_millis(5), Duration::from_secs(30))
                .without_jitter(),
            ..Default::default()
        })
        .build()
        .unwrap();

    let parent = tracing::info_span!("place order");
    let trace_id = parent.context().span().span_context().trace_id();
    client
        .get("/api/v1/inventory/p-7")
        .send()
        .instrument(parent.clone())
        .await
        .unwrap();
    drop(parent);

    let received = server.received("GET /api/v1/inventory/p-7");
    assert_eq!(received.len(), 2);
    let span_ids: Vec<String> = received
        .iter()
        .map(|r| {
            let parts: Vec<&str> = r
                .header("traceparent")
                .expect("traceparent")
                .split('-')
                .collect();
            assert_eq!(parts[1], trace_id.to_string(), "the caller's trace");
            parts[2].to_owned()
        })
        .collect();
    assert_ne!(span_ids[0], span_ids[1], "each attempt is its own span");

    // The call's span, and one HTTP client span per attempt with the semantic
    // conventions' attributes: the status as a number, `error.type` on the failed one.
    t.tracer_provider.force_flush().unwrap();
    let spans = t.spans.get_finished_spans().unwrap();
    let call = spans
        .iter()
        .find(|s| s.name == "GET /api/v1/inventory/{id}")
        .unwrap_or_else(|| panic!("no call span in {:?}", t.span_names()));
    let mut attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == call.span_context.span_id())
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2, "{:?}", t.span_names());
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let url = server.url("/api/v1/inventory/p-7");
    let port = i64::from(
        server
            .base_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap(),
    );
    for (span, status) in [(attempts[0], 503), (attempts[1], 200), (call, 200)] {
        assert_eq!(
            span.name,
            if span == call {
                call.name.clone()
            } else {
                "GET".into()
            }
        );
        assert_eq!(attribute(span, "http.request.method"), Some("GET".into()));
        assert_eq!(attribute(span, "server.address"), Some("127.0.0.1".into()));
        assert_eq!(attribute(span, "server.port"), Some(port.into()));
        // The full URL on each request; the call names its route.
        let (key, value) = if span == call {
            ("url.template", "/api/v1/inventory/{id}".to_owned())
        } else {
            ("url.full", url.clone())
        };
        assert_eq!(attribute(span, key), Some(value.into()));
        assert_eq!(
            attribute(span, "http.response.status_code"),
            Some(opentelemetry::Value::I64(status)),
            "a number, not a string"
        );
    }
    assert_eq!(attribute(attempts[0], "error.type"), Some("503".into()));
    assert_eq!(attribute(attempts[1], "error.type"), None);
    assert_eq!(
        attribute(attempts[1], "http.request.resend_count"),
        Some(1_i64.into())
    );
    assert_eq!(attribute(call, "error.type"), None);

    let exported = t.exported_metrics();
    let all: Vec<_> = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .collect();
    let requests = all
        .iter()
        .find(|m| m.name() == "microservices_sync_requests")
        .expect("the requests counter");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = requests.data() else {
        panic!("not a u64 sum")
    };
    let point = sum.data_points().next().expect("a data point");
    assert_eq!(point.value(), 1, "one call, however many attempts");
    let attrs: Vec<&KeyValue> = point.attributes().collect();
    for (k, v) in [
        ("source_service", "order-service"),
        ("target_service", "inventory-service"),
        ("endpoint", "/api/v1/inventory/{id}"),
        ("status", "200"),
    ] {
        assert!(
            attrs
                .iter()
                .any(|kv| kv.key.as_str() == k && kv.value.as_str() == v),
            "{k}={v} missing in {attrs:?}"
        );
    }
    assert!(
        all.iter()
            .any(|m| m.name() == "microservices_sync_request_duration")
    );
    let gauge = all
        .iter()
        .find(|m| m.name() == "microservices_circuit_breaker_state")
        .expect("the breaker gauge");
    let AggregatedMetrics::U64(MetricData::Gauge(g)) = gauge.data() else {
        panic!("not a u64 gauge")
    };
    let point = g.data_points().next().expect("a point");
    assert_eq!(point.value(), 0, "closed");
    let labels: Vec<(String, String)> = point
        .attributes()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    assert_eq!(
        labels,
        [("target_service".to_owned(), "inventory-service".to_owned())]
    );
}

/// Guards against: paths carrying input the `{id}` rule misses (ids without digits) give
/// one `endpoint` series each, until the exporter's series cap pushes the real ones out.
#[tokio::test]
async fn paths_carrying_input_cannot_fill_the_endpoint_series() {
    let (t, _guard) = Telemetry::install();
    let server = FaultServer::start().await;
    let client = Client::builder("product-service", server.base_url())
        .source("order-service")
        .build()
        .unwrap();
    // Any status will do: each call is counted under its endpoint.
    let call = |path: String| {
        let client = client.clone();
        async move {
            let _ = client.get(&path).send().await;
        }
    };
    call("/api/v1/health".to_owned()).await;
    let letters = |i: usize| -> String {
        let (a, b) = (b'a' + (i / 26) as u8, b'a' + (i % 26) as u8);
        String::from_utf8(vec![a, b]).unwrap()
    };
    for i in 0..40 {
        call(format!("/api/v1/products/vase-{}/stock", letters(i))).await;
    }
    call("/api/v1/health".to_owned()).await;
    client
        .get("/api/v1/products/vase-zz/stock")
        .endpoint("/api/v1/products/{id}/stock")
        .send()
        .await
        .ok();

    let exported = t.exported_metrics();
    let requests = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == "microservices_sync_requests")
        .expect("the requests counter");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = requests.data() else {
        panic!("not a u64 sum")
    };
    let mut by_endpoint = std::collections::BTreeMap::<String, u64>::new();
    for point in sum.data_points() {
        let endpoint = point
            .attributes()
            .find(|kv| kv.key.as_str() == "endpoint")
            .map(|kv| kv.value.to_string())
            .unwrap_or_default();
        *by_endpoint.entry(endpoint).or_default() += point.value();
    }
    assert_eq!(
        by_endpoint.get("/api/v1/health"),
        Some(&2),
        "{by_endpoint:?}"
    );
    // The health path and the first 31 products take the 32 derived labels.
    assert_eq!(by_endpoint.get("{other}"), Some(&9), "{by_endpoint:?}");
    assert_eq!(
        by_endpoint.get("/api/v1/products/{id}/stock"),
        Some(&1),
        "a named template is always its own series"
    );
    assert_eq!(by_endpoint.len(), 32 + 2, "{by_endpoint:?}");
}

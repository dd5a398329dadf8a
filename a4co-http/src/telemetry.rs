//! Traces and metrics of the client, through OpenTelemetry.
//!
//! - Each call is a `client` span (`<METHOD> <endpoint>`), each attempt a child span; the
//!   attempt's W3C trace context goes out in `traceparent`/`tracestate` (when a tracing
//!   OpenTelemetry layer is installed and the trace is valid).
//! - The design-v2 metrics on the global meter provider, recorded once per call:
//!   `microservices_sync_requests_total{source, target, endpoint, status}` and
//!   `microservices_sync_request_duration_seconds{source, target, endpoint, status}`;
//!   `status` is the final HTTP status, or `timeout`, `deadline`, `connect_error`,
//!   `circuit_open`, `rejected`, `error`. Plus `microservices_circuit_breaker_state{target}`
//!   (0 closed, 1 open, 2 half-open). Install the meter provider before building clients.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{KeyValue, global};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::breaker::Breaker;
use crate::error::Error;

/// The client's instruments and constant labels.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    requests: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    source: Arc<str>,
    target: Arc<str>,
    /// Keeps the breaker gauge registered as long as the client lives.
    _gauge: Option<opentelemetry::metrics::ObservableGauge<u64>>,
}

impl Metrics {
    pub(crate) fn new(source: &str, target: &str, breaker: Option<&Breaker>) -> Self {
        let meter = global::meter("a4co-http");
        let gauge = breaker.map(|b| {
            let b = b.clone();
            let labels = [KeyValue::new("target", target.to_owned())];
            meter
                .u64_observable_gauge("microservices_circuit_breaker_state")
                .with_description("Circuit breaker state per target: 0 closed, 1 open, 2 half-open")
                .with_callback(move |o| o.observe(b.state().as_gauge(), &labels))
                .build()
        });
        Metrics {
            requests: meter
                .u64_counter("microservices_sync_requests_total")
                .with_description("Total number of synchronous requests")
                .build(),
            duration: meter
                .f64_histogram("microservices_sync_request_duration_seconds")
                .with_description("Duration of synchronous requests")
                .with_unit("s")
                .with_boundaries(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0])
                .build(),
            source: Arc::from(source),
            target: Arc::from(target),
            _gauge: gauge,
        }
    }

    pub(crate) fn record(&self, endpoint: String, status: String, took: Duration) {
        let labels = [
            KeyValue::new("source", Arc::clone(&self.source)),
            KeyValue::new("target", Arc::clone(&self.target)),
            KeyValue::new("endpoint", endpoint),
            KeyValue::new("status", status),
        ];
        self.requests.add(1, &labels);
        self.duration.record(took.as_secs_f64(), &labels);
    }
}

/// The metric's `status` for a call's outcome.
pub(crate) fn status_label(result: Result<u16, &Error>) -> String {
    match result {
        Ok(status) => status.to_string(),
        Err(e) => match e.status() {
            Some(status) => status.to_string(),
            None if e.is_circuit_open() => "circuit_open".to_owned(),
            None if e.is_deadline() => "deadline".to_owned(),
            None if e.is_timeout() => "timeout".to_owned(),
            None if e.is_connect() => "connect_error".to_owned(),
            None if e.is_rejected() => "rejected".to_owned(),
            None => "error".to_owned(),
        },
    }
}

/// A path as a low-cardinality endpoint label: segments holding a digit become `{id}`
/// (but for version segments such as `v1`).
/// Calls name their route template with [`crate::Call::endpoint`] to be exact.
pub(crate) fn endpoint_of(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len());
    for (i, s) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let version =
            s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit());
        if !version && s.bytes().any(|b| b.is_ascii_digit()) {
            out.push_str("{id}");
        } else {
            out.push_str(s);
        }
    }
    out
}

/// The `traceparent` (and `tracestate`) of a span, when it has a valid trace.
pub(crate) fn trace_headers(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some((
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ),
        sc.trace_state().header(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_keep_their_shape_without_ids() {
        assert_eq!(
            super::endpoint_of("/api/v1/inventory/p-42?x=1"),
            "/api/v1/inventory/{id}"
        );
        assert_eq!(
            super::endpoint_of("/api/v1/orders/customer/c9f1/history"),
            "/api/v1/orders/customer/{id}/history"
        );
    }
}

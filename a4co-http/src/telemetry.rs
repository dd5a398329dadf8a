//! Traces and metrics of the client, through OpenTelemetry.
//!
//! - Each call is a `client` span (`<METHOD> <endpoint>`), each attempt a child span; the
//!   attempt's W3C trace context goes out in `traceparent`/`tracestate`: the attempt
//!   span's when a tracing OpenTelemetry layer records it, else a new trace, so every call
//!   carries one.
//! - The design-v2 metrics on the global meter provider, recorded once per call, named the
//!   OpenTelemetry way, with design-v2's labels: the counter
//!   `microservices_sync_requests{source_service, target_service, endpoint, status}` and
//!   the histogram `microservices_sync_request_duration{...}` in seconds (unit `s`), which a
//!   Prometheus exporter shows as design-v2's `microservices_sync_requests_total` and
//!   `microservices_sync_request_duration_seconds`; `status` is the final HTTP status, or
//!   `timeout`, `deadline`, `connect_error`, `circuit_open`, `rejected`, `error`. Plus the
//!   gauge `microservices_circuit_breaker_state{target_service}` (0 closed, 1 open, 2
//!   half-open). Install the meter provider before building clients.

use std::borrow::Cow;
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
    /// The endpoint labels derived from paths so far (at most [`MAX_DERIVED_ENDPOINTS`]).
    derived: Arc<std::sync::RwLock<std::collections::HashSet<Box<str>>>>,
}

/// How many endpoint labels a client derives from paths ([`endpoint_of`]); beyond, a path
/// not seen before is labelled `{other}`. A path can carry input the digit rule misses
/// (`/products/ceramic-vase/stock`): without a bound, such values would fill the exporter's
/// series cap and push the real series out. [`crate::Call::endpoint`] names are not counted.
pub(crate) const MAX_DERIVED_ENDPOINTS: usize = 32;

impl Metrics {
    pub(crate) fn new(source: &str, target: &str, breaker: Option<&Breaker>) -> Self {
        let meter = global::meter("a4co-http");
        let gauge = breaker.map(|b| {
            let b = b.clone();
            let labels = [KeyValue::new("target_service", target.to_owned())];
            meter
                .u64_observable_gauge("microservices_circuit_breaker_state")
                .with_description("Circuit breaker state per target: 0 closed, 1 open, 2 half-open")
                .with_callback(move |o| o.observe(b.state().as_gauge(), &labels))
                .build()
        });
        Metrics {
            requests: meter
                .u64_counter("microservices_sync_requests")
                .with_description("Total number of synchronous requests")
                .build(),
            duration: meter
                .f64_histogram("microservices_sync_request_duration")
                .with_description("Duration of synchronous requests")
                .with_unit("s")
                .with_boundaries(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0])
                .build(),
            source: Arc::from(source),
            target: Arc::from(target),
            _gauge: gauge,
            derived: Arc::default(),
        }
    }

    /// Records one call. `named`: the endpoint is the call's own template, not one derived
    /// from its path (which is bounded: see [`MAX_DERIVED_ENDPOINTS`]).
    pub(crate) fn record(
        &self,
        endpoint: String,
        named: bool,
        status: Cow<'static, str>,
        took: Duration,
    ) {
        let endpoint = if named {
            endpoint
        } else {
            self.bounded(endpoint)
        };
        let labels = [
            KeyValue::new("source_service", Arc::clone(&self.source)),
            KeyValue::new("target_service", Arc::clone(&self.target)),
            KeyValue::new("endpoint", endpoint),
            KeyValue::new("status", status),
        ];
        self.requests.add(1, &labels);
        self.duration.record(took.as_secs_f64(), &labels);
    }
}

impl Metrics {
    /// `endpoint` if it is among the first [`MAX_DERIVED_ENDPOINTS`] derived, else `{other}`.
    fn bounded(&self, endpoint: String) -> String {
        let known = |set: &std::collections::HashSet<Box<str>>| set.contains(endpoint.as_str());
        let derived = self
            .derived
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known(&derived) {
            return endpoint;
        }
        drop(derived);
        let mut derived = self
            .derived
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known(&derived) {
            return endpoint;
        }
        if derived.len() < MAX_DERIVED_ENDPOINTS {
            derived.insert(endpoint.clone().into_boxed_str());
            return endpoint;
        }
        if derived.insert("{other}".into()) {
            tracing::warn!(target_service = %self.target, "more than {MAX_DERIVED_ENDPOINTS} endpoint labels derived from paths; further ones are `{{other}}`: name the route with Call::endpoint");
        }
        "{other}".to_owned()
    }
}

/// The metric's `status` for a call's outcome (the usual statuses without an allocation).
pub(crate) fn status_label(result: Result<u16, &Error>) -> Cow<'static, str> {
    const USUAL: [(u16, &str); 16] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (409, "409"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    let status = match result {
        Ok(status) => status,
        Err(e) => match e.status() {
            Some(status) => status,
            None if e.is_circuit_open() => return "circuit_open".into(),
            None if e.is_deadline() => return "deadline".into(),
            None if e.is_timeout() => return "timeout".into(),
            None if e.is_connect() => return "connect_error".into(),
            None if e.is_rejected() => return "rejected".into(),
            None => return "error".into(),
        },
    };
    USUAL
        .iter()
        .find(|(code, _)| *code == status)
        .map_or_else(|| status.to_string().into(), |(_, text)| (*text).into())
}

/// A path as a low-cardinality endpoint label: segments holding a digit become `{id}`
/// (but for version segments such as `v1`).
/// Calls name their route template with [`crate::Call::endpoint`] to be exact.
pub(crate) fn endpoint_of(path: &str) -> String {
    // One pass over the bytes (this runs on every call); the text between replaced
    // segments is copied in one piece. Every index used to slice is at an ASCII byte.
    let bytes = path.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    let mut out = String::with_capacity(end);
    let (mut copied, mut start, mut digits) = (0, 0, false);
    for i in 0..=end {
        if i < end && bytes[i] != b'/' {
            digits |= bytes[i].is_ascii_digit();
            continue;
        }
        let segment = &bytes[start..i];
        // A digit was seen, so the segment has a first byte.
        if digits && !(segment[0] == b'v' && segment[1..].iter().all(u8::is_ascii_digit)) {
            out.push_str(&path[copied..start]);
            out.push_str("{id}");
            copied = i;
        }
        (start, digits) = (i + 1, false);
    }
    out.push_str(&path[copied..end]);
    out
}

/// A URL with its user name and password replaced by `REDACTED`, as the semantic
/// conventions ask of `url.full`.
pub(crate) struct Redacted<'a>(pub &'a reqwest::Url);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.0;
        if url.username().is_empty() && url.password().is_none() {
            return f.write_str(url.as_str());
        }
        let mut redacted = url.clone();
        let _ = redacted.set_username("REDACTED");
        if url.password().is_some() {
            let _ = redacted.set_password(Some("REDACTED"));
        }
        f.write_str(redacted.as_str())
    }
}

/// Records a call's or attempt's outcome on its span: the numeric
/// `http.response.status_code` when an HTTP status came back, and on failure `error.type`
/// (the status, or what went wrong: `timeout`, `connect_error`, ...) with an error status.
pub(crate) fn record_outcome(span: &tracing::Span, result: Result<u16, &Error>, label: &str) {
    let status = match result {
        Ok(status) => Some(status),
        Err(e) => e.status(),
    };
    if let Some(status) = status {
        span.record("http.response.status_code", i64::from(status));
    }
    if result.is_err() {
        span.record("error.type", label);
        span.record("otel.status_code", "ERROR");
    }
}

/// The `traceparent` and `tracestate` of a span when an OpenTelemetry layer records it;
/// otherwise a new trace (random ids, sampled, no state), so every call carries one.
pub(crate) fn trace_headers(span: &tracing::Span) -> (String, String) {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return (
            format!(
                "00-{:032x}-{:016x}-01",
                fastrand::u128(1..),
                fastrand::u64(1..)
            ),
            String::new(),
        );
    }
    (
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ),
        sc.trace_state().header(),
    )
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
        // A version segment stays; a lone `v`, `v2x` or a fragment's digits do not count.
        assert_eq!(super::endpoint_of("/v/v2x/v10#frag9"), "/v/{id}/v10");
        assert_eq!(super::endpoint_of("relative/42/"), "relative/{id}/");
        assert_eq!(super::endpoint_of("/é/ü7"), "/é/{id}");
        assert_eq!(super::endpoint_of(""), "");
        assert_eq!(super::endpoint_of("?q=1"), "");
        assert_eq!(super::endpoint_of("/a//7/"), "/a//{id}/");
        assert_eq!(super::endpoint_of("/v1/x/2/y/3"), "/v1/x/{id}/y/{id}");
        assert_eq!(super::endpoint_of("/p-1?q=2#f"), "/{id}");
    }

    #[test]
    fn status_labels_are_the_status_or_what_went_wrong() {
        assert_eq!(super::status_label(Ok(200)), "200");
        assert_eq!(super::status_label(Ok(418)), "418");
        let timeout = crate::error::Error::new(crate::error::Kind::Timeout, "t", "GET /x");
        assert_eq!(super::status_label(Err(&timeout)), "timeout");
    }
}

//! An OTLP/HTTP receiver on a loopback port: services export to it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.endpoint()>`), and the test reads back the spans
//! and metric names, decoded from the protobuf requests as a collector would decode them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let receiver = a4co_testkit::otlp::Receiver::start().await;
//! // ... a process runs with OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint() ...
//! assert!(receiver.spans().is_empty());
//! # }
//! ```

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::http::{FaultServer, Reply};

const TRACES: &str = "POST /v1/traces";
const METRICS: &str = "POST /v1/metrics";

/// One span as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// Its attributes, values as text (numbers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// Whether its status is an error.
    pub error: bool,
}

impl Span {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The receiver. Dropping it stops it.
#[derive(Debug)]
pub struct Receiver {
    server: FaultServer,
}

impl Receiver {
    /// Starts on a free loopback port, answering every export with 200.
    pub async fn start() -> Self {
        let server = FaultServer::start().await;
        for route in [TRACES, METRICS] {
            server.script(route, [Reply::status(200)]);
        }
        Receiver { server }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.base_url()
    }

    /// Every span received so far.
    ///
    /// # Panics
    /// On a request that is not `application/x-protobuf` or does not decode as an
    /// `ExportTraceServiceRequest`: the exporter sent something a collector would refuse.
    pub fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for request in self.server.received(TRACES) {
            check_content_type(request.header("content-type"));
            let decoded = ExportTraceServiceRequest::decode(request.body.as_slice())
                .unwrap_or_else(|e| panic!("not an OTLP trace export: {e}"));
            for resource in decoded.resource_spans {
                let service = service_name(resource.resource.as_ref());
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        out.push(Span {
                            service: service.clone(),
                            kind: kind(span.kind),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                                .collect(),
                            // STATUS_CODE_ERROR is 2.
                            error: span.status.is_some_and(|s| s.code == 2),
                            name: span.name,
                        });
                    }
                }
            }
        }
        out
    }

    /// The names of the metrics received so far, with the `service.name` that sent them.
    ///
    /// # Panics
    /// As [`Receiver::spans`], for `ExportMetricsServiceRequest`.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for request in self.server.received(METRICS) {
            check_content_type(request.header("content-type"));
            let decoded = ExportMetricsServiceRequest::decode(request.body.as_slice())
                .unwrap_or_else(|e| panic!("not an OTLP metrics export: {e}"));
            for resource in decoded.resource_metrics {
                let service = service_name(resource.resource.as_ref());
                for scope in resource.scope_metrics {
                    for metric in scope.metrics {
                        out.push((service.clone(), metric.name));
                    }
                }
            }
        }
        out
    }
}

fn check_content_type(value: Option<&str>) {
    assert_eq!(
        value,
        Some("application/x-protobuf"),
        "OTLP/HTTP protobuf exports say so"
    );
}

/// The `service.name` of an exporting process (empty when it sent none).
fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .map(|kv| text(kv.value.as_ref()))
        .unwrap_or_default()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

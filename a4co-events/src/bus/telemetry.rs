//! Traces and metrics of the bus, through OpenTelemetry.
//!
//! - Every publish is a `producer` span and every handling a `consumer` span (tracing
//!   spans, exported by `tracing-opentelemetry` when the application installs it). The
//!   publish span's W3C context travels in `traceparent`/`tracestate`, and the handling span
//!   is its child, so a trace follows a message across services. Without an OpenTelemetry
//!   layer the envelope's own trace context is passed through unchanged.
//! - The design-v2 metrics, on the global meter provider, named the OpenTelemetry way (no
//!   unit or `_total` in the name): the counters `microservices_events_published{service,
//!   event_type, subject}` and `microservices_events_processed{service, event_type, subject,
//!   status}` (status: `success`, `retry`, `dead_letter`, `duplicate`), and the histogram
//!   `microservices_event_processing_duration{service, event_type, subject}` in seconds
//!   (unit `s`). A Prometheus exporter with its default suffixes shows them under
//!   design-v2's names: `microservices_events_published_total`,
//!   `microservices_events_processed_total`, `microservices_event_processing_duration_seconds`.
//!   Instruments are created with the bus: install the meter provider first.
//!
//! Without the `otel` feature the spans are plain `tracing` spans, the envelope's trace
//! context is passed through unchanged, and no metric is recorded.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "otel")]
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
#[cfg(feature = "otel")]
use opentelemetry::{Context, KeyValue, Value, global};
#[cfg(feature = "otel")]
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers::TraceContext;

/// The bus's instruments (none without the `otel` feature).
#[derive(Clone, Debug)]
#[cfg(not(feature = "otel"))]
pub(crate) struct Metrics;

#[cfg(not(feature = "otel"))]
impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics
    }

    pub(crate) fn published(&self, _: &str, _: &'static str) {}

    pub(crate) fn processed(
        &self,
        _: &Arc<str>,
        _: Option<&'static str>,
        _: &str,
        _: &'static str,
        _: Duration,
    ) {
    }

    pub(crate) fn dead_letter_failed(&self, _: &Arc<str>, _: &str) {}
}

/// The bus's instruments.
#[derive(Clone, Debug)]
#[cfg(feature = "otel")]
pub(crate) struct Metrics {
    published: opentelemetry::metrics::Counter<u64>,
    processed: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    dead_letter_failures: opentelemetry::metrics::Counter<u64>,
}

#[cfg(feature = "otel")]
impl Metrics {
    /// Instruments on the global meter provider as it is now.
    pub(crate) fn new() -> Self {
        let meter = global::meter("a4co-events");
        Metrics {
            published: meter
                .u64_counter("microservices_events_published")
                .with_description("Total number of domain events published")
                .build(),
            processed: meter
                .u64_counter("microservices_events_processed")
                .with_description("Total number of domain events processed")
                .build(),
            duration: meter
                .f64_histogram("microservices_event_processing_duration")
                .with_description("Duration of event processing")
                .with_unit("s")
                .with_boundaries(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0])
                .build(),
            // Prometheus exporters show it as `a4co_dead_letter_write_failures_total`.
            dead_letter_failures: meter
                .u64_counter("a4co_dead_letter_write_failures")
                .with_description(
                    "Dead letters that could not be written; each message was kept and retried",
                )
                .build(),
        }
    }

    pub(crate) fn dead_letter_failed(&self, service: &Arc<str>, consumer: &str) {
        self.dead_letter_failures.add(
            1,
            &[
                KeyValue::new("service", Arc::clone(service)),
                KeyValue::new("consumer", consumer.to_owned()),
            ],
        );
    }

    /// One publish. `event_type` is also the subject, as for every envelope.
    pub(crate) fn published(&self, service: &str, event_type: &'static str) {
        self.published.add(
            1,
            &[
                KeyValue::new("service", service.to_owned()),
                KeyValue::new("event_type", event_type),
                KeyValue::new("subject", event_type),
            ],
        );
    }

    /// One handling. Labels come from statics and the shared service name; only a message
    /// that could not be decoded, or whose subject is not its type, costs a copy.
    pub(crate) fn processed(
        &self,
        service: &Arc<str>,
        event_type: Option<&'static str>,
        subject: &str,
        status: &'static str,
        took: Duration,
    ) {
        let subject: Value = match event_type {
            Some(t) if t == subject => t.into(),
            _ => subject.to_owned().into(),
        };
        let attributes = [
            KeyValue::new("service", Arc::clone(service)),
            KeyValue::new("event_type", event_type.unwrap_or("unknown")),
            KeyValue::new("subject", subject),
            KeyValue::new("status", status),
        ];
        // The histogram has no status label.
        self.duration.record(took.as_secs_f64(), &attributes[..3]);
        self.processed.add(1, &attributes);
    }
}

/// The span of one publish.
pub(crate) fn publish_span(subject: &str, event_id: &crate::EventId) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("{subject} publish"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
    )
}

/// The span of one handling.
pub(crate) fn consume_span(
    subject: &str,
    consumer: &str,
    sequence: u64,
    attempt: u64,
) -> tracing::Span {
    tracing::info_span!(
        "handle",
        otel.name = %format_args!("{subject} process"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = %consumer,
        stream_sequence = sequence,
        attempt = attempt,
    )
}

/// Whether the current span carries an OpenTelemetry trace (then a publish joins it rather
/// than the envelope's own trace context).
#[cfg(feature = "otel")]
pub(crate) fn in_trace() -> bool {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .is_valid()
}

#[cfg(not(feature = "otel"))]
pub(crate) fn in_trace() -> bool {
    false
}

#[cfg(not(feature = "otel"))]
pub(crate) fn set_remote_parent(_: &tracing::Span, _: &TraceContext) {}

#[cfg(not(feature = "otel"))]
pub(crate) fn outgoing(_: &tracing::Span, fallback: Option<&TraceContext>) -> Option<TraceContext> {
    fallback.cloned()
}

/// Makes the span a child of the remote context in `trace` (before it is first entered).
#[cfg(feature = "otel")]
pub(crate) fn set_remote_parent(span: &tracing::Span, trace: &TraceContext) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(trace.trace_id()),
        SpanId::from_hex(trace.parent_span_id()),
    ) else {
        return;
    };
    let flags = if trace.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = trace
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let remote = SpanContext::new(trace_id, span_id, flags, true, state);
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// The trace context to send: the span's own, when OpenTelemetry records it; otherwise
/// `fallback` (the envelope's), unchanged.
#[cfg(feature = "otel")]
pub(crate) fn outgoing(
    span: &tracing::Span,
    fallback: Option<&TraceContext>,
) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return fallback.cloned();
    }
    let parent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let state = sc.trace_state().header();
    TraceContext::parse(&parent, Some(state.as_str()))
}

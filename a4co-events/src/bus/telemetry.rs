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

use super::fault::FaultKind;
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

    pub(crate) fn timed_out(&self, _: &Arc<str>, _: &str) {}

    pub(crate) fn dead_lettered(&self, _: &Arc<str>, _: &str, _: FaultKind) {}

    pub(crate) fn backlog(&self, _: &Arc<str>, _: &str, _: &str, _: u64, _: u64) {}

    pub(crate) fn dead_letters_kept(&self, _: &Arc<str>, _: &str, _: u64) {}
}

/// The bus's instruments.
#[derive(Clone, Debug)]
#[cfg(feature = "otel")]
pub(crate) struct Metrics {
    published: opentelemetry::metrics::Counter<u64>,
    processed: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    dead_letter_failures: opentelemetry::metrics::Counter<u64>,
    dead_letters: opentelemetry::metrics::Counter<u64>,
    timeouts: opentelemetry::metrics::Counter<u64>,
    /// Per consumer (service, `<service>/<subscription>`, stream): messages waiting to be
    /// delivered and deliveries unsettled, as last looked up; read by the gauges.
    backlog: Arc<std::sync::Mutex<Backlog>>,
    /// Per consumer (service, `<service>/<subscription>`): its letters in `DLQ`.
    kept: Arc<std::sync::Mutex<Kept>>,
    _gauges: Arc<[opentelemetry::metrics::ObservableGauge<u64>; 3]>,
}

#[cfg(feature = "otel")]
type Backlog = std::collections::BTreeMap<(Arc<str>, String, String), (u64, u64)>;

#[cfg(feature = "otel")]
type Kept = std::collections::BTreeMap<(Arc<str>, String), u64>;

#[cfg(feature = "otel")]
impl Metrics {
    /// Instruments on the global meter provider as it is now.
    pub(crate) fn new() -> Self {
        let meter = global::meter("a4co-events");
        let backlog: Arc<std::sync::Mutex<Backlog>> = Arc::default();
        let gauge =
            |name: &'static str, description: &'static str, pick: fn(&(u64, u64)) -> u64| {
                let backlog = Arc::clone(&backlog);
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(move |observer| {
                        let backlog = backlog
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        for ((service, consumer, stream), counts) in backlog.iter() {
                            observer.observe(
                                pick(counts),
                                &[
                                    KeyValue::new("service", Arc::clone(service)),
                                    KeyValue::new("consumer", consumer.clone()),
                                    KeyValue::new("stream", stream.clone()),
                                ],
                            );
                        }
                    })
                    .build()
            };
        let kept: Arc<std::sync::Mutex<Kept>> = Arc::default();
        let depth = {
            let kept = Arc::clone(&kept);
            meter
                .u64_observable_gauge("a4co_dlq_depth")
                .with_description("Dead letters of a subscription kept in the DLQ stream")
                .with_callback(move |observer| {
                    let kept = kept
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for ((service, consumer), n) in kept.iter() {
                        observer.observe(
                            *n,
                            &[
                                KeyValue::new("service", Arc::clone(service)),
                                KeyValue::new("consumer", consumer.clone()),
                            ],
                        );
                    }
                })
                .build()
        };
        let gauges = Arc::new([
            depth,
            gauge(
                "a4co_consumer_pending",
                "Messages waiting to be delivered to a subscription's consumer (its lag)",
                |c| c.0,
            ),
            gauge(
                "a4co_consumer_ack_pending",
                "Deliveries of a subscription's consumer not yet settled, across instances",
                |c| c.1,
            ),
        ]);
        Metrics {
            backlog,
            kept,
            _gauges: gauges,
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
            // `a4co_dead_letters_total` on Prometheus.
            dead_letters: meter
                .u64_counter("a4co_dead_letters")
                .with_description("Dead letters written, by consumer and reason (the fault kind)")
                .build(),
            // `a4co_handler_timeouts_total` on Prometheus.
            timeouts: meter
                .u64_counter("a4co_handler_timeouts")
                .with_description("Handler runs cancelled at their deadline, by consumer")
                .build(),
        }
    }

    /// What the broker said of a consumer's backlog: `waiting` undelivered, `unsettled`
    /// delivered but not settled.
    pub(crate) fn backlog(
        &self,
        service: &Arc<str>,
        consumer: &str,
        stream: &str,
        waiting: u64,
        unsettled: u64,
    ) {
        self.backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                (Arc::clone(service), consumer.to_owned(), stream.to_owned()),
                (waiting, unsettled),
            );
    }

    /// How many dead letters of `consumer` the `DLQ` stream holds.
    pub(crate) fn dead_letters_kept(&self, service: &Arc<str>, consumer: &str, n: u64) {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((Arc::clone(service), consumer.to_owned()), n);
    }

    /// One dead letter written by `consumer`, for `reason`.
    pub(crate) fn dead_lettered(&self, service: &Arc<str>, consumer: &str, reason: FaultKind) {
        self.dead_letters.add(
            1,
            &[
                KeyValue::new("service", Arc::clone(service)),
                KeyValue::new("consumer", consumer.to_owned()),
                KeyValue::new("reason", reason.as_str()),
            ],
        );
    }

    /// A handler of `consumer` cancelled at its deadline.
    pub(crate) fn timed_out(&self, service: &Arc<str>, consumer: &str) {
        self.timeouts.add(
            1,
            &[
                KeyValue::new("service", Arc::clone(service)),
                KeyValue::new("consumer", consumer.to_owned()),
            ],
        );
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

    /// One handling. Labels come from statics and the shared service name.
    pub(crate) fn processed(
        &self,
        service: &Arc<str>,
        event_type: Option<&'static str>,
        subject: &str,
        status: &'static str,
        took: Duration,
    ) {
        // The subject comes from input when the message did not decode: only a catalog
        // subject is a label value (any other is `unknown`), so junk cannot fill the
        // series cap and push the real series out.
        let subject: Value = match event_type {
            Some(t) if t == subject => t.into(),
            _ => crate::catalog::versions(subject)
                .next()
                .and_then(|v| crate::catalog::find(subject, v))
                .map_or("unknown", |m| m.type_name)
                .into(),
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

/// The span of one publish, with the messaging attributes of OpenTelemetry's semantic
/// conventions: `messaging.operation.type` `send`, `messaging.operation.name` `publish`,
/// the subject as `messaging.destination.name`, and `error.type` when it fails.
pub(crate) fn publish_span(subject: &str, event_id: impl std::fmt::Display) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {subject}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
        error.type = tracing::field::Empty,
    )
}

/// The publish span of `message`, a child of the current span or else of `trace` (the
/// message's own context); its context (or `trace`, or a new trace) goes into the message's
/// headers, so the consumer's span becomes its child.
pub(crate) fn send_span(
    message: &mut super::RawMessage,
    trace: Option<&TraceContext>,
) -> tracing::Span {
    let span = publish_span(&message.subject, message.message_id().unwrap_or_default());
    if let Some(trace) = trace
        && !in_trace()
    {
        set_remote_parent(&span, trace);
    }
    outgoing(&span, trace).inject(&mut message.headers);
    span
}

/// Runs `send` in its publish `span`, marked failed (with the error's kind) when it fails.
pub(crate) async fn sending<T>(
    span: tracing::Span,
    send: impl std::future::Future<Output = Result<T, super::PublishError>>,
) -> Result<T, super::PublishError> {
    use tracing::Instrument as _;
    send.instrument(span.clone())
        .await
        .inspect_err(|e| failed(&span, &e.kind().to_string()))
}

/// The span of one handling (`messaging.operation.type` and `.name` `process`, the
/// subject, the consumer group); [`described`] adds the message's aggregate, correlation
/// and trace ids, so every log line written while handling names them, and [`failed`]
/// adds `error.type`.
/// The target of the bus's spans, which a log filter lets through at any level so that
/// lines written while handling name the message (`service::init` does).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) const SPAN_TARGET: &str = module_path!();

pub(crate) fn consume_span(
    subject: &str,
    consumer: &str,
    sequence: u64,
    attempt: u64,
) -> tracing::Span {
    tracing::info_span!(
        "handle",
        otel.name = %format_args!("process {subject}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = %consumer,
        messaging.nats.stream_sequence = sequence,
        messaging.nats.delivered = attempt,
        messaging.message.id = tracing::field::Empty,
        aggregate_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records on a [`consume_span`] what identifies the handled message: its trace, and when
/// it decoded, its event, aggregate and correlation ids.
pub(crate) fn described(
    span: &tracing::Span,
    trace: Option<&TraceContext>,
    envelope: Option<&crate::envelope::Envelope<crate::catalog::AnyMessage>>,
) {
    if let Some(trace) = trace {
        span.record("trace_id", trace.trace_id());
    }
    if let Some(envelope) = envelope {
        span.record(
            "messaging.message.id",
            tracing::field::display(envelope.event_id),
        );
        span.record("aggregate_id", envelope.aggregate_id.as_str());
        span.record("correlation_id", envelope.metadata.correlation_id.as_str());
    }
}

/// Marks `span` (a publish or handling span) failed, with `error_type` (a low-cardinality
/// class: a fault kind, `transient`, a publish error kind) as `error.type`.
pub(crate) fn failed(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
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

/// The trace context to send: `fallback` (the envelope's) unchanged, or a new trace.
#[cfg(not(feature = "otel"))]
pub(crate) fn outgoing(_: &tracing::Span, fallback: Option<&TraceContext>) -> TraceContext {
    fallback.cloned().unwrap_or_else(TraceContext::new_root)
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
/// `fallback` (the envelope's) unchanged, or a new trace.
#[cfg(feature = "otel")]
pub(crate) fn outgoing(span: &tracing::Span, fallback: Option<&TraceContext>) -> TraceContext {
    trace_of(span)
        .or_else(|| fallback.cloned())
        .unwrap_or_else(TraceContext::new_root)
}

/// The W3C context of `span`, when OpenTelemetry records it.
#[cfg(feature = "otel")]
fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| {
        TraceContext::of_span(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8(),
            sc.trace_state().header(),
        )
    })
}

/// The `tracing` layer that records the SDK's spans (and the application's) into
/// OpenTelemetry through `tracer`, as the reference services install it: every span at
/// `INFO` or above whatever the log filter says (install it beside the log layer, each
/// with its own filter, so `RUST_LOG` never turns trace context off), warnings and errors
/// as span events, and no per-span source location, thread or busy-time attributes (a
/// clock read on every poll and allocations the bus's hot path would pay).
///
/// ```
/// use opentelemetry::trace::TracerProvider as _;
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let subscriber = tracing_subscriber::registry()
///     .with(a4co_events::bus::otel_layer(provider.tracer("inventory-service")));
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
#[cfg(feature = "otel")]
pub fn otel_layer<S, T>(tracer: T) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    T: opentelemetry::trace::Tracer + Send + Sync + 'static,
    T::Span: Send + Sync,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            if meta.is_span() {
                *meta.level() <= tracing::Level::INFO
            } else {
                *meta.level() <= tracing::Level::WARN
            }
        }))
}

/// The W3C trace context of the current `tracing` span, when an OpenTelemetry layer
/// records it (a handler's span, a request's): what a message sent from here should carry
/// to continue this trace. `None` without the `otel` feature or outside a recorded span.
#[cfg(feature = "otel")]
pub fn current_trace() -> Option<TraceContext> {
    trace_of(&tracing::Span::current())
}

/// The W3C trace context of the current `tracing` span, when an OpenTelemetry layer
/// records it: always `None` without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn current_trace() -> Option<TraceContext> {
    None
}

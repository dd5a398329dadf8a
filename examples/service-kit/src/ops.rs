//! Operating a service: logs, metrics, `/health`, `/metrics`, serving and shutting down.
//!
//! - **Logs**: `tracing` events as JSON lines (`A4CO_LOG_FORMAT=text` for people), filtered
//!   by `RUST_LOG` (default `info`). Handlers log inside [`message_span`] and HTTP requests
//!   inside [`request_span`]'s span, so every line carries the trace id.
//! - **Metrics**: the SDK's OpenTelemetry instruments (the design-v2 names) on a meter
//!   provider whose reader is a Prometheus registry, served as text at `/metrics`.
//! - **Health**: `/health` answers 200 while the bus is connected and every subscription runs,
//!   503 (with what is wrong: the connection, or a subscription being re-created) when not.

use std::sync::{Arc, OnceLock};

use a4co_events::{AnyMessage, Envelope};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use a4co_events::bus::SubscriptionHealth;
use a4co_events::service::{AnyBus, Records, Workers, shutdown_signal};

/// The process's logging, tracing and metrics, set up once by [`init`].
#[derive(Debug)]
pub struct Telemetry {
    registry: prometheus::Registry,
    _meters: opentelemetry_sdk::metrics::SdkMeterProvider,
    _tracer: opentelemetry_sdk::trace::SdkTracerProvider,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors (services).
    Json,
    /// Plain text, for people (the demo).
    Text,
}

/// Sets up logs (`default_filter` unless `RUST_LOG` says otherwise; `format` unless
/// `A4CO_LOG_FORMAT` is `json` or `text`) and the global meter provider behind `/metrics`,
/// its resource naming `service` (`service.name`, and `service.version`: the kit's
/// version). Call it first, before creating the bus (the bus creates its instruments on the
/// global provider). Later calls return the first setup: several services in one process
/// (the demo) share it.
pub fn init(service: &str, default_filter: &str, format: LogFormat) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
        let text = match std::env::var("A4CO_LOG_FORMAT").as_deref() {
            Ok("text") => true,
            Ok("json") => false,
            _ => format == LogFormat::Text,
        };
        // Spans get OpenTelemetry trace ids (no exporter here: add one to ship traces), so
        // the bus and the HTTP client carry W3C trace context and logs can name the trace.
        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .build();
        let otel = {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer().with_tracer(tracer.tracer("a4co-service"))
        };
        opentelemetry::global::set_tracer_provider(tracer.clone());
        let registry = tracing_subscriber::registry().with(filter).with(otel);
        // Another subscriber may be installed already (tests): then logs go there.
        let _ = if text {
            registry
                .with(tracing_subscriber::fmt::layer().with_target(false))
                .try_init()
        } else {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false),
                )
                .try_init()
        };
        let registry = prometheus::Registry::new();
        let provider = match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
        {
            Ok(exporter) => opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(exporter)
                .build(),
            Err(e) => {
                tracing::error!(error = %e, "the Prometheus exporter failed; /metrics stays empty");
                opentelemetry_sdk::metrics::SdkMeterProvider::builder().build()
            }
        };
        opentelemetry::global::set_meter_provider(provider.clone());
        Telemetry {
            registry,
            _meters: provider,
            _tracer: tracer,
        }
    })
}

impl Telemetry {
    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The span to handle `message` in (inside the bus's consumer span, so in the publisher's
/// trace): its type, aggregate, correlation id and trace id show on every log line written
/// inside.
pub fn message_span(message: &Envelope<AnyMessage>) -> tracing::Span {
    let span = tracing::info_span!(
        "message",
        r#type = message.event_type(),
        aggregate = %message.aggregate_id,
        correlation_id = %message.metadata.correlation_id,
        trace_id = tracing::field::Empty,
    );
    let trace_id =
        trace_id_of(&span).or_else(|| message.trace.as_ref().map(|t| t.trace_id().to_owned()));
    if let Some(trace_id) = trace_id {
        span.record("trace_id", trace_id);
    }
    span
}

/// The OpenTelemetry trace id of `span`, when tracing is on and the span is enabled.
fn trace_id_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The caller's span, from the W3C `traceparent` and `tracestate` headers as
/// OpenTelemetry's propagator reads them (versions, flags, vendor state, malformed
/// values); `None` when there is no valid one.
fn remote_parent(headers: &axum::http::HeaderMap) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
    use opentelemetry::trace::TraceContextExt as _;
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(axum::http::HeaderName::as_str).collect()
        }
    }
    let context =
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    let valid = context.span().span_context().is_valid();
    valid.then_some(context)
}

/// Middleware: each request runs in a span with its method, path and trace id (the
/// caller's, from `traceparent`, or a new one), a child of the caller's span, so the events
/// and calls it makes stay in that trace; the answer carries the trace id in `x-trace-id`.
pub async fn request_span(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = remote_parent(request.headers());
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    let trace_id = trace_id_of(&span).unwrap_or_else(new_trace_id);
    span.record("trace_id", trace_id.as_str());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

fn new_trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// `/health` and `/metrics`, to merge into a service's router. `/health` answers 200 while
/// the bus is connected and every one of `subscriptions` runs, else 503 saying what is
/// wrong (the subscription, its stream, for how long, why).
pub fn routes(bus: AnyBus, subscriptions: Vec<SubscriptionHealth>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(Health {
            bus,
            subscriptions: Arc::from(subscriptions),
        })
}

#[derive(Clone)]
struct Health {
    bus: AnyBus,
    subscriptions: Arc<[SubscriptionHealth]>,
}

async fn health(State(Health { bus, subscriptions }): State<Health>) -> Response {
    let kind = bus.kind();
    let mut problems: Vec<String> = bus.check().err().into_iter().collect();
    problems.extend(subscriptions.iter().filter_map(SubscriptionHealth::problem));
    let listed: Vec<serde_json::Value> = subscriptions
        .iter()
        .map(|s| serde_json::json!({"name": s.label(), "running": s.is_running()}))
        .collect();
    if problems.is_empty() {
        return axum::Json(
            serde_json::json!({"status": "ok", "bus": kind, "subscriptions": listed}),
        )
        .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "status": "unavailable",
            "bus": kind,
            "detail": problems.join("; "),
            "subscriptions": listed,
        })),
    )
        .into_response()
}

async fn metrics() -> Response {
    let body = TELEMETRY.get().map(Telemetry::render).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

/// A service's start: logs and metrics ([`init`], JSON), the bus (NATS as `nats` says,
/// named `service`, or in memory), and the service's records in `bucket`.
///
/// # Errors
/// NATS unreachable or too old, the bucket not opened: the message says which.
pub async fn connect(
    service: &str,
    nats: Option<a4co_events::bus::nats::Config>,
    bucket: &str,
) -> Result<(AnyBus, Records), crate::ConfigError> {
    init(service, "info", LogFormat::Json);
    let bus = AnyBus::open(nats.map(|c| c.name(service))).await?;
    let records = Records::open(&bus, bucket).await?;
    Ok((bus, records))
}

/// Binds `addr`, serves `router` with `/health`, `/metrics` and request spans added, until
/// Ctrl-C or SIGTERM; then stops `workers` gracefully.
///
/// # Errors
/// The address cannot be bound (the message names it), or serving failed.
pub async fn serve_until_signal(
    service: &str,
    addr: std::net::SocketAddr,
    bus: AnyBus,
    router: Router,
    workers: Workers,
) -> Result<(), crate::ConfigError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::ConfigError::new(format!(
            "{service} cannot listen on {addr}: {e} (set another address)"
        ))
    })?;
    let kind = bus.kind();
    let router = router
        .merge(routes(bus, workers.health()))
        .layer(axum::middleware::from_fn(request_span));
    tracing::info!(%addr, bus = kind, "{service} listening");
    // Requests in flight finish before the workers stop.
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        })
        .await;
    workers.shutdown().await;
    served.map_err(|e| crate::ConfigError::new(format!("{service} stopped serving: {e}")))
}

//! Operating a service: logs, metrics, `/health`, `/metrics`, serving and shutting down.
//!
//! - **Logs**: `tracing` events as JSON lines (`A4CO_LOG_FORMAT=text` for people), filtered
//!   by `RUST_LOG` (default `info`). Handlers log inside the bus's handling span and HTTP
//!   requests inside [`request_span`]'s span, whatever `RUST_LOG` says of spans, so every
//!   line carries the trace id (and, while handling a message, its aggregate and
//!   correlation ids).
//! - **Traces**: every span at `INFO` or above goes to OpenTelemetry whatever `RUST_LOG`
//!   says, so W3C trace context always flows; over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`Otlp`]), flushed by [`shutdown`].
//! - **Metrics**: the SDK's OpenTelemetry instruments (the design-v2 names) on a meter
//!   provider whose reader is a Prometheus registry, served as text at `/metrics` (and
//!   exported over OTLP with the traces).
//! - **Health**: `/health` answers 200 while the bus is connected and every subscription runs,
//!   503 (with what is wrong: the connection, or a subscription being re-created) when not.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::{AnyBus, Env, StartError, Workers, shutdown_signal};
use crate::bus::SubscriptionHealth;

/// The process's logging, tracing and metrics, set up once by [`init`].
#[derive(Debug)]
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: opentelemetry_sdk::metrics::SdkMeterProvider,
    tracer: opentelemetry_sdk::trace::SdkTracerProvider,
    /// What goes out over OTLP (nothing when no endpoint is set).
    otlp: Otlp,
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

/// Which signals go out over OTLP, from OpenTelemetry's standard variables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Otlp {
    /// Spans, batched to `<endpoint>/v1/traces`.
    pub traces: bool,
    /// Metrics, every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) to `<endpoint>/v1/metrics`.
    pub metrics: bool,
}

impl Otlp {
    /// What the variables in `env` ask for: a signal is exported when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the signal's own `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// / `..._METRICS_ENDPOINT`) is set, unless `OTEL_TRACES_EXPORTER` /
    /// `OTEL_METRICS_EXPORTER` is `none` or `OTEL_SDK_DISABLED` is `true`. The exporter reads
    /// the other `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, compression) itself.
    ///
    /// # Errors
    /// A protocol other than `http/protobuf`, or an exporter other than `otlp` or `none`:
    /// the message names the variable and what to set.
    pub fn from_env(env: &Env) -> Result<Otlp, StartError> {
        let set = |name: &str| env.optional(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Otlp::default());
        }
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(protocol) = set(name).filter(|p| p.trim() != "http/protobuf") {
                return Err(StartError::invalid_config(format!(
                    "{name}={protocol} is not supported: the services export OTLP over HTTP \
                     with protobuf (set it to http/protobuf, or unset it)"
                )));
            }
        }
        let wanted = |signal: &str| -> Result<bool, StartError> {
            let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some();
            let exporter = format!("OTEL_{signal}_EXPORTER");
            match set(&exporter).as_deref().map(str::trim) {
                None | Some("otlp") => Ok(endpoint),
                Some("none") => Ok(false),
                Some(other) => Err(StartError::invalid_config(format!(
                    "{exporter}={other} is not supported: set it to otlp or none"
                ))),
            }
        };
        Ok(Otlp {
            traces: wanted("TRACES")?,
            metrics: wanted("METRICS")?,
        })
    }
}

/// Sets up logs (`default_filter` unless `RUST_LOG` says otherwise; `format` unless
/// `A4CO_LOG_FORMAT` is `json` or `text`), traces and the global meter provider behind
/// `/metrics`, their resource naming `service` (`service.name`, and `service.version`: the
/// SDK's version).
///
/// - Trace context never depends on the log filter: every span at `INFO` or above reaches
///   OpenTelemetry (so the bus and the HTTP client carry W3C context) whatever `RUST_LOG`
///   hides from the logs; warnings and errors become span events.
/// - With `OTEL_EXPORTER_OTLP_ENDPOINT` set ([`Otlp::from_env`]), spans and metrics are also
///   exported over OTLP/HTTP (protobuf), from the SDK's own threads; [`shutdown`] flushes
///   them. Without it nothing is exported and nothing is added to the hot path.
///
/// Call it first, before creating the bus (the bus creates its instruments on the global
/// provider). Later calls return the first setup: several services in one process (the
/// demo) share it.
///
/// # Errors
/// An OTLP variable that cannot work (an unsupported protocol, an endpoint that is not a
/// URL): the message names it.
pub fn init(
    service: &str,
    default_filter: &str,
    format: LogFormat,
) -> Result<&'static Telemetry, StartError> {
    if let Some(telemetry) = TELEMETRY.get() {
        return Ok(telemetry);
    }
    let env = Env::from_process();
    let otlp = Otlp::from_env(&env)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut tracer =
        opentelemetry_sdk::trace::SdkTracerProvider::builder().with_resource(resource.clone());
    if otlp.traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| otlp_error("traces", &e, &env))?;
        tracer = tracer.with_batch_exporter(exporter);
    }
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| {
            StartError::invalid_config(format!("the Prometheus exporter behind /metrics: {e}"))
        })?;
    let mut meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(prometheus);
    if otlp.metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| otlp_error("metrics", &e, &env))?;
        meters = meters
            .with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build());
    }
    let telemetry = TELEMETRY.get_or_init(|| Telemetry {
        registry,
        meters: meters.build(),
        tracer: tracer.build(),
        otlp,
    });
    install(telemetry, default_filter, format);
    Ok(telemetry)
}

/// The exporter's refusal, without the values of the variables it read: an endpoint may
/// hold a user and password, and headers an API key. Their names stay, to say what to fix.
fn otlp_error(signal: &str, e: &dyn std::fmt::Display, env: &Env) -> StartError {
    let mut text = e.to_string();
    for suffix in ["ENDPOINT", "HEADERS"] {
        for which in ["", "TRACES_", "METRICS_"] {
            let Some(value) = env.optional(&format!("OTEL_EXPORTER_OTLP_{which}{suffix}")) else {
                continue;
            };
            // The whole value, and each `key=value` of a header list, longest first.
            let mut parts: Vec<&str> = std::iter::once(value.as_str())
                .chain(value.split([',', '=']))
                .map(str::trim)
                .filter(|p| p.len() >= 3)
                .collect();
            parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for part in parts {
                text = text.replace(part, "***");
            }
        }
    }
    StartError::invalid_config(format!(
        "OTLP export of {signal} cannot start: {text} (check OTEL_EXPORTER_OTLP_ENDPOINT, e.g. \
         http://127.0.0.1:4318)"
    ))
}

/// Installs `telemetry`'s providers globally and the tracing subscriber.
fn install(telemetry: &Telemetry, default_filter: &str, format: LogFormat) {
    use opentelemetry::trace::TracerProvider as _;
    opentelemetry::global::set_tracer_provider(telemetry.tracer.clone());
    opentelemetry::global::set_meter_provider(telemetry.meters.clone());
    // The log filter, plus the bus's handling spans and [`request_span`]'s whatever it says:
    // a warning written while handling a message names the trace at `RUST_LOG=warn` too.
    let filter = {
        use tracing_subscriber::filter::FilterExt as _;
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter))
            .or(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && (meta.target() == module_path!() || meta.target() == crate::bus::SPAN_TARGET)
            }))
    };
    let text = match std::env::var("A4CO_LOG_FORMAT").as_deref() {
        Ok("text") => true,
        Ok("json") => false,
        _ => format == LogFormat::Text,
    };
    // The log filter applies to log lines only: spans reach OpenTelemetry whatever
    // `RUST_LOG` says (the SDK's layer has its own filter).
    let otel = crate::bus::otel_layer(telemetry.tracer.tracer("a4co-service"));
    let registry = tracing_subscriber::registry().with(otel);
    // Another subscriber may be installed already (tests): then logs go there.
    let _ = if text {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init()
    };
}

/// Flushes what [`init`] set up to export (the spans not yet sent, the metrics' last
/// values) and stops its exporters; call it last, when the service stops. Nothing to do
/// when nothing is exported over OTLP. Waits for the export (up to the exporter's
/// timeout, `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
pub async fn shutdown() {
    let Some(telemetry) = TELEMETRY.get() else {
        return;
    };
    if telemetry.otlp == Otlp::default() {
        return;
    }
    let (tracer, meters) = (telemetry.tracer.clone(), telemetry.meters.clone());
    // The SDK's shutdown blocks until its export threads are done.
    let flushed = tokio::task::spawn_blocking(move || {
        if let Err(e) = tracer.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
        if let Err(e) = meters.force_flush() {
            tracing::warn!(error = %e, "the last metrics could not be exported");
        }
    })
    .await;
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "flushing telemetry failed");
    }
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

/// Binds `addr`, serves `router` with `/health`, `/metrics` and request spans added, until
/// Ctrl-C or SIGTERM; then stops `workers` gracefully.
///
/// # Errors
/// The address cannot be bound (the message names it), or serving failed.
pub(super) async fn serve_until_signal(
    service: &str,
    addr: std::net::SocketAddr,
    bus: AnyBus,
    router: Router,
    workers: Workers,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        StartError::invalid_config(format!(
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
    shutdown().await;
    served.map_err(|e| StartError::unavailable(format!("{service} stopped serving")).with_source(e))
}

#[cfg(test)]
mod tests {
    use super::Otlp;
    use crate::service::Env;

    fn otlp(pairs: &[(&str, &str)]) -> Result<Otlp, String> {
        Otlp::from_env(&Env::from_pairs(pairs.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn otlp_follows_the_standard_variables() {
        let none = Otlp::default();
        let both = Otlp {
            traces: true,
            metrics: true,
        };
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(otlp(&[]), Ok(none));
        assert_eq!(otlp(&[endpoint]), Ok(both));
        assert_eq!(
            otlp(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            Ok(both)
        );
        assert_eq!(
            otlp(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            Ok(Otlp {
                traces: true,
                metrics: false
            })
        );
        assert_eq!(
            otlp(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]),
            Ok(Otlp {
                traces: true,
                metrics: false
            })
        );
        assert_eq!(otlp(&[endpoint, ("OTEL_SDK_DISABLED", "true")]), Ok(none));
        let grpc = otlp(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(grpc.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{grpc}");
        assert!(grpc.contains("http/protobuf"), "{grpc}");
        let zipkin = otlp(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(zipkin.contains("OTEL_TRACES_EXPORTER=zipkin"), "{zipkin}");
    }
}

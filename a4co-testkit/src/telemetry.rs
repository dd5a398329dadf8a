//! In-memory OpenTelemetry for tests: install it, run the code, then read the spans and
//! metrics it recorded.
//!
//! ```
//! let (telemetry, _guard) = a4co_testkit::telemetry::Telemetry::install();
//! tracing::info_span!("checkout").in_scope(|| {});
//! assert!(telemetry.span_names().contains(&"checkout".to_owned()));
//! ```
//!
//! The tracing subscriber is set for the current thread only (use a current-thread
//! runtime); the meter provider is global, so each test needs its own process (nextest's
//! default).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

/// The exporters and providers of an installed in-memory telemetry.
#[derive(Debug)]
pub struct Telemetry {
    /// Finished spans.
    pub spans: InMemorySpanExporter,
    /// The tracer provider (flush it before reading `spans`).
    pub tracer_provider: SdkTracerProvider,
    /// Exported metrics.
    pub metrics: InMemoryMetricExporter,
    /// The global meter provider (flush it before reading `metrics`).
    pub meter_provider: SdkMeterProvider,
}

impl Telemetry {
    /// Installs a tracing subscriber with an OpenTelemetry layer (this thread) and a global
    /// meter provider, both exporting into memory. Keep the guard alive for the test.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("a4co-testkit")),
        );
        let guard = tracing::subscriber::set_default(subscriber);
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        (
            Telemetry {
                spans,
                tracer_provider,
                metrics,
                meter_provider,
            },
            guard,
        )
    }

    /// The names of the spans finished so far.
    pub fn span_names(&self) -> Vec<String> {
        let _ = self.tracer_provider.force_flush();
        self.spans
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// The metrics exported so far (flushes first).
    pub fn exported_metrics(&self) -> Vec<ResourceMetrics> {
        let _ = self.meter_provider.force_flush();
        self.metrics.get_finished_metrics().unwrap_or_default()
    }
}

/// A process-wide tracing subscriber that benchmarks turn on and off between runs, to
/// measure what tracing costs. Off, no span is created (the level filter disables every
/// callsite). On, as a reference service's telemetry: spans at `INFO` and above, and
/// warnings, recorded by OpenTelemetry's SDK (sampled, with valid contexts that go out as
/// W3C trace context), exported nowhere.
///
/// ```no_run
/// let switch = a4co_testkit::telemetry::TracingSwitch::install();
/// switch.set(true);
/// // ... measure with tracing ...
/// switch.set(false);
/// ```
#[derive(Debug)]
pub struct TracingSwitch {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::filter::LevelFilter,
        tracing_subscriber::Registry,
    >,
    _provider: SdkTracerProvider,
}

impl TracingSwitch {
    /// Installs the subscriber for the whole process, off.
    ///
    /// # Panics
    /// When a global subscriber is installed already.
    pub fn install() -> Self {
        let provider = SdkTracerProvider::builder().build();
        let (filter, handle) =
            tracing_subscriber::reload::Layer::new(tracing_subscriber::filter::LevelFilter::OFF);
        let otel = a4co_events::bus::otel_layer(provider.tracer("a4co-bench"));
        let subscriber = tracing_subscriber::registry().with(filter).with(otel);
        tracing::subscriber::set_global_default(subscriber)
            .unwrap_or_else(|e| panic!("a global subscriber is installed already: {e}"));
        TracingSwitch {
            handle,
            _provider: provider,
        }
    }

    /// Turns tracing on or off for what runs next.
    pub fn set(&self, on: bool) {
        let level = if on {
            tracing_subscriber::filter::LevelFilter::INFO
        } else {
            tracing_subscriber::filter::LevelFilter::OFF
        };
        if let Err(e) = self.handle.reload(level) {
            panic!("switching tracing: {e}");
        }
    }
}

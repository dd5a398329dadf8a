//! The client's own cost per call, without a network, measured with criterion: the same
//! axum `Router` called directly as a tower service, and through the client's pipeline
//! ([`a4co_http::ClientBuilder::in_process`]: every policy runs, only the socket is skipped),
//! sequential calls on one thread. Pipeline overhead = client minus direct, from
//! criterion's estimates (the slope of time over iterations; the range printed is the
//! widest the two 95 % confidence intervals allow).
//!
//! Run with `cargo bench -p a4co-http --bench pipeline` (criterion's own options after
//! `--`: `-- --measurement-time 10`, or a filter such as `-- telemetry_off`). It prints
//! numbers; nothing is asserted.

#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use a4co_http::auth::{Issuer, Secret};
use a4co_http::{Client, breaker, retry};
use axum::body::Body;
use axum::http::Request;
use axum::{Router, routing::get};
use criterion::Criterion;
use tower_service::Service as _;

/// The three ways a call is made (criterion's ids, which are also its directory names).
const DIRECT: &str = "router_called_directly";
const NO_POLICIES: &str = "client_no_policies";
const EVERY_POLICY: &str = "client_every_policy_and_jwt";

fn app() -> Router {
    Router::new().route(
        "/api/v1/inventory/{id}",
        get(|| async { r#"{"productId":"p-1","available":12}"# }),
    )
}

/// Benchmarks the three ways in group `group`. The clients are built here, so they pick
/// up whatever meter provider is installed when this runs.
fn group(c: &mut Criterion, runtime: &tokio::runtime::Runtime, group: &str) {
    let app = app();
    let secret = Secret::new("a-benchmark-secret-of-at-least-32-bytes").unwrap();
    let full = Client::builder("inventory-service", "http://inventory")
        .in_process(app.clone())
        .source("order-service")
        .timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(2))
        .retry(retry::Config::default())
        .breaker(breaker::Config::default())
        .max_in_flight(64)
        .service_auth(Issuer::new(secret, "order-service", ["inventory:read"]))
        .build()
        .unwrap();
    let bare = Client::builder("inventory-service", "http://inventory")
        .in_process(app.clone())
        .timeout(None)
        .retry(retry::never())
        .breaker(None)
        .max_in_flight(None)
        .build()
        .unwrap();
    // Calls cycle through 1024 paths, so the endpoint label and the URL vary as in a service.
    let paths: Vec<String> = (0..1024)
        .map(|i| format!("/api/v1/inventory/p-{i}"))
        .collect();
    let next = Cell::new(0_usize);
    let path = || {
        let i = next.get();
        next.set(i.wrapping_add(1));
        paths[i % paths.len()].as_str()
    };

    let mut g = c.benchmark_group(group);
    g.bench_function(DIRECT, |b| {
        b.to_async(runtime).iter(|| {
            let mut app = app.clone();
            let uri = format!("http://inventory{}", path());
            async move {
                let request = Request::get(uri).body(Body::empty()).unwrap();
                let response = app.call(request).await.unwrap();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX);
                assert!(!body.await.unwrap().is_empty());
            }
        });
    });
    for (name, client) in [(NO_POLICIES, &bare), (EVERY_POLICY, &full)] {
        g.bench_function(name, |b| {
            b.to_async(runtime).iter(|| {
                let call = client.get(path());
                async move {
                    assert!(!call.send().await.unwrap().body.is_empty());
                }
            });
        });
    }
    g.finish();
}

/// Time per call and its 95 % confidence interval, in nanoseconds.
struct Estimate {
    time: f64,
    low: f64,
    high: f64,
}

/// Criterion's estimate of `group/function`, if this run measured it (an older file from an
/// earlier, filtered run is ignored).
fn estimate(dir: &Path, group: &str, function: &str, since: SystemTime) -> Option<Estimate> {
    let file = dir.join(group).join(function).join("new/estimates.json");
    if std::fs::metadata(&file).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    // The slope of time over iterations, criterion's headline figure (the mean when the
    // sampling mode has no slope).
    let best = if json["slope"].is_object() {
        &json["slope"]
    } else {
        &json["mean"]
    };
    let interval = &best["confidence_interval"];
    Some(Estimate {
        time: best["point_estimate"].as_f64()?,
        low: interval["lower_bound"].as_f64()?,
        high: interval["upper_bound"].as_f64()?,
    })
}

/// Prints client minus direct for each client variant of `group`.
fn overheads(dir: &Path, group: &str, since: SystemTime) {
    let Some(direct) = estimate(dir, group, DIRECT, since) else {
        return;
    };
    for variant in [NO_POLICIES, EVERY_POLICY] {
        if let Some(client) = estimate(dir, group, variant, since) {
            println!(
                "{group}: pipeline overhead, {variant}: {:.2} us per call ({:.2} to {:.2})",
                (client.time - direct.time) / 1e3,
                (client.low - direct.high) / 1e3,
                (client.high - direct.low) / 1e3,
            );
        }
    }
}

fn main() {
    let started = SystemTime::now();
    // Where criterion writes its estimates: the workspace's target directory, as for
    // `cargo bench` (unless CRITERION_HOME or CARGO_TARGET_DIR say otherwise).
    let dir = std::env::var_os("CRITERION_HOME").map_or_else(
        || {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(
                    || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                    PathBuf::from,
                )
                .join("criterion")
        },
        PathBuf::from,
    );
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // No tracing subscriber, no meter provider: the pipeline alone.
    group(&mut c, &runtime, "telemetry_off");

    // Spans recorded by an OpenTelemetry layer (sampled, not exported) and metrics into an
    // SDK meter provider, as in a service: installed before the clients are built.
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("bench")));
    let guard = tracing::subscriber::set_default(subscriber);
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_sdk::metrics::PeriodicReader::builder(
                opentelemetry_sdk::metrics::InMemoryMetricExporter::default(),
            )
            .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(meters);
    group(&mut c, &runtime, "telemetry_on");
    drop(guard);

    c.final_summary();
    overheads(&dir, "telemetry_off", started);
    overheads(&dir, "telemetry_on", started);
}

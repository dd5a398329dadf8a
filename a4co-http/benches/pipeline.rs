//! The client's own cost per call, without a network: the same axum `Router` called
//! directly as a tower service, and through the client's pipeline
//! ([`a4co_http::ClientBuilder::service`]), on one thread. Pipeline overhead = client minus
//! direct, wall time per call (median of rounds).
//!
//! Run with `cargo bench -p a4co-http --bench pipeline` (`A4CO_BENCH_N` calls per round,
//! `A4CO_BENCH_ROUNDS` rounds). It prints numbers; nothing is asserted.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::time::{Duration, Instant};

use a4co_http::auth::{Issuer, Secret};
use a4co_http::{Client, breaker, retry};
use axum::body::Body;
use axum::http::Request;
use axum::{Router, routing::get};
use tower_service::Service as _;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `n` sequential calls.
async fn per_call<F, Fut>(n: usize, mut call: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        call(i).await;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("A4CO_BENCH_N", 200_000);
    let rounds = env("A4CO_BENCH_ROUNDS", 5).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("-- telemetry off (no tracing subscriber, no meter provider)");
    runtime.block_on(run(n, rounds));
    // Spans recorded by an OpenTelemetry layer (sampled, not exported) and metrics into an
    // SDK meter provider, as in a service: the clients are built after installing them.
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("bench")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_sdk::metrics::PeriodicReader::builder(
                opentelemetry_sdk::metrics::InMemoryMetricExporter::default(),
            )
            .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(meters);
    println!("-- telemetry on (OpenTelemetry spans sampled, SDK metrics)");
    runtime.block_on(run(n, rounds));
}

async fn run(n: usize, rounds: usize) {
    let app = Router::new().route(
        "/api/v1/inventory/{id}",
        get(|| async { r#"{"productId":"p-1","available":12}"# }),
    );
    let secret = Secret::new("a-benchmark-secret-of-at-least-32-bytes").unwrap();
    let full = Client::builder("inventory-service", "http://inventory")
        .service(app.clone())
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
        .service(app.clone())
        .timeout(None)
        .retry(retry::never())
        .breaker(None)
        .max_in_flight(None)
        .build()
        .unwrap();
    let paths: Vec<String> = (0..1024)
        .map(|i| format!("/api/v1/inventory/p-{i}"))
        .collect();
    println!("{n} sequential GETs per round, one thread, in process | {rounds} rounds, medians");

    let (mut direct, mut no_policies, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(
            per_call(n, |i| {
                let mut app = app.clone();
                let uri = format!("http://inventory{}", paths[i % paths.len()]);
                async move {
                    let request = Request::get(uri).body(Body::empty()).unwrap();
                    let response = app.call(request).await.unwrap();
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX);
                    assert!(!body.await.unwrap().is_empty());
                }
            })
            .await,
        );
        for (client, out) in [(&bare, &mut no_policies), (&full, &mut all)] {
            out.push(
                per_call(n, |i| {
                    let call = client.get(&paths[i % paths.len()]);
                    async move {
                        assert!(!call.send().await.unwrap().body.is_empty());
                    }
                })
                .await,
            );
        }
    }
    let d = median(direct);
    let b = median(no_policies);
    let a = median(all);
    println!(
        "{:<44} {:>8.2} us per call",
        "router called directly",
        d / 1e3
    );
    println!("{:<44} {:>8.2} us per call", "client, no policies", b / 1e3);
    println!(
        "{:<44} {:>8.2} us per call",
        "client, every policy + JWT",
        a / 1e3
    );
    println!(
        "pipeline overhead, no policies: {:.2} us per call",
        (b - d) / 1e3
    );
    println!(
        "pipeline overhead, every policy + JWT: {:.2} us per call",
        (a - d) / 1e3
    );
}

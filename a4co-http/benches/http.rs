//! Raw reqwest against the a4co-http client with every policy on, in one run, against one
//! local axum server on a loopback port: requests/s and latency at 64 concurrent callers
//! with keep-alive, and the client's own cost per call (sequential calls, CPU time of this
//! process per call, client minus raw).
//!
//! "Every policy" is the pipeline of the issue and of DESIGN.md: bulkhead, total timeout,
//! retry under a budget, circuit breaker, per-attempt timeout. The service JWT is not a
//! policy but a header on the wire: the client with it is compared with raw reqwest
//! sending the same header.
//!
//! Tracing: every variant runs with tracing off (no span created) but "every policy,
//! tracing on", which runs the client with every policy under the subscriber a reference
//! service installs (OpenTelemetry records the spans, no exporter): what tracing costs.
//!
//! Run with `cargo bench -p a4co-http --bench http` (`A4CO_BENCH_N` requests per run,
//! `A4CO_BENCH_ROUNDS` rounds, `A4CO_BENCH_ONLY=<0-6>` for one variant under a profiler).
//! It prints numbers; nothing is asserted.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use a4co_http::auth::{Issuer, Secret};
use a4co_http::{Client, breaker, retry};
use axum::{Router, routing::get};

const CONCURRENCY: usize = 64;
/// Connections each pool gets beyond CONCURRENCY before the runs.
const WARM_SPARES: usize = 16;

/// Runs the futures concurrently (on tasks of their own) and waits for all.
async fn futures_join<F>(futures: impl Iterator<Item = F>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of this process (client, runtime and server) per request, microseconds.
    cpu_us: f64,
}

/// `n` calls from `CONCURRENCY` tasks; `call(i)` makes call `i`.
async fn concurrent<F, Fut>(n: usize, call: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let cpu0 = cpu_ns();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n / CONCURRENCY + 1);
                let mut i = t;
                while i < n {
                    let s = Instant::now();
                    call(i).await;
                    lat.push(s.elapsed());
                    i += CONCURRENCY;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu_us = (cpu_ns() - cpu0) as f64 / 1e3 / n as f64;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Run {
        rate,
        p50: pct(0.5),
        p99: pct(0.99),
        cpu_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let tracing = a4co_testkit::telemetry::TracingSwitch::install();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("A4CO_BENCH_N", 10_000);
    // Many short rounds: the machine's speed drifts over seconds (see docs/benchmarks.md).
    let rounds = env("A4CO_BENCH_ROUNDS", 50).max(1);
    // One variant only (0 no policies, 1 every policy + JWT, 2 every policy, 3 raw, 4 raw +
    // JWT, 5 raw tuned, 6 every policy with tracing on), for profiling.
    let only = std::env::var("A4CO_BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());

    let app = Router::new().route(
        "/api/v1/inventory/{id}",
        get(|| async { r#"{"productId":"p-1","available":12}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let raw = reqwest::Client::builder().build().unwrap();
    // Raw reqwest with the settings the client gives its own reqwest: what they cost.
    let raw_tuned = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .build()
        .unwrap();
    let secret = Secret::new("a-benchmark-secret-of-at-least-32-bytes").unwrap();
    let bearer = Issuer::new(secret.clone(), "order-service", ["inventory:read"])
        .authorization()
        .unwrap();
    // Every policy, set explicitly (the defaults, but for a bulkhead above the callers).
    let policies = || {
        Client::builder("inventory-service", &base)
            .source("order-service")
            .timeout(Duration::from_secs(5))
            .attempt_timeout(Duration::from_secs(2))
            .retry(retry::Config::default())
            .breaker(breaker::Config::default())
            .max_in_flight(CONCURRENCY * 2)
    };
    let client = policies().build().unwrap();
    let with_jwt = policies()
        .service_auth(Issuer::new(secret, "order-service", ["inventory:read"]))
        .build()
        .unwrap();
    // The same client without policies: what the client itself costs.
    let bare = Client::builder("inventory-service", &base)
        .timeout(None)
        .retry(retry::never())
        .breaker(None)
        .max_in_flight(None)
        .build()
        .unwrap();
    println!(
        "axum on {base} | {n} GETs per run, {CONCURRENCY} concurrent, keep-alive | {rounds} rounds, medians"
    );
    println!(
        "every policy: bulkhead, total + attempt timeouts, retry with budget, breaker (+ spans, metrics)"
    );

    // Every connection pool starts with spare connections. Otherwise how many a pool holds
    // is a matter of timing: with exactly CONCURRENCY, each checkout empties the pool's idle
    // list and each return re-creates it (hashing, allocating), about 1k instructions per
    // request that land on one variant or another by chance.
    let path_of = |i: usize| format!("/api/v1/inventory/w-{i}");
    futures_join((0..CONCURRENCY + WARM_SPARES).map(|i| {
        let (raw, tuned, url) = (
            raw.clone(),
            raw_tuned.clone(),
            format!("{base}{}", path_of(i)),
        );
        async move {
            raw.get(&url).send().await.unwrap().bytes().await.unwrap();
            tuned.get(&url).send().await.unwrap().bytes().await.unwrap();
        }
    }))
    .await;
    for c in [&client, &bare, &with_jwt] {
        futures_join((0..CONCURRENCY + WARM_SPARES).map(|i| {
            let (c, path) = (c.clone(), path_of(i));
            async move {
                c.get(&path).send().await.unwrap();
            }
        }))
        .await;
    }

    let (mut raw_runs, mut jwt_runs, mut sdk_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut tuned_runs = Vec::new();
    let (mut bare_runs, mut sdk_jwt_runs) = (Vec::new(), Vec::new());
    let mut traced_runs = Vec::new();
    // Each round runs every variant, starting one further along each time, so neither order
    // nor drift of the machine favours one of them.
    for round in 0..rounds {
        for k in 0..7 {
            let variant = (round + k) % 7;
            if only.is_some_and(|o| o != variant) {
                continue;
            }
            match variant {
                v @ (0..3 | 6) => {
                    let (c, runs) = match v {
                        0 => (&bare, &mut bare_runs),
                        1 => (&with_jwt, &mut sdk_jwt_runs),
                        2 => (&client, &mut sdk_runs),
                        _ => (&client, &mut traced_runs),
                    };
                    tracing.set(v == 6);
                    let c = c.clone();
                    runs.push(
                        concurrent(n, move |i| {
                            // Made outside the future, as the raw variants make their
                            // request builders: one clone of the client's handle each.
                            let call = c.get(&format!("/api/v1/inventory/p-{i}"));
                            async move {
                                call.send().await.unwrap();
                            }
                        })
                        .await,
                    );
                    tracing.set(false);
                }
                v => {
                    let (client, auth, runs) = match v {
                        3 => (&raw, None, &mut raw_runs),
                        4 => (&raw, Some(bearer.clone()), &mut jwt_runs),
                        _ => (&raw_tuned, None, &mut tuned_runs),
                    };
                    let (r, b) = (client.clone(), base.clone());
                    runs.push(
                        concurrent(n, move |i| {
                            let mut request = r.get(format!("{b}/api/v1/inventory/p-{i}"));
                            if let Some(auth) = &auth {
                                request =
                                    request.header(reqwest::header::AUTHORIZATION, auth.clone());
                            }
                            async move {
                                let resp = request.send().await.unwrap();
                                assert!(resp.status().is_success());
                                resp.bytes().await.unwrap();
                            }
                        })
                        .await,
                    );
                }
            }
        }
    }
    let row = |name: &str, runs: &[Run]| {
        if runs.is_empty() {
            return (f64::NAN, f64::NAN, f64::NAN);
        }
        let rate = median(runs.iter().map(|r| r.rate).collect());
        let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e6).collect());
        let p99 = median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e6).collect());
        let cpu = median(runs.iter().map(|r| r.cpu_us).collect());
        println!(
            "{name:<32} {rate:>9.0} req/s   p50 {p50:>7.0} us   p99 {p99:>7.0} us   CPU {cpu:>5.1} us/req"
        );
        (rate, p50, p99)
    };
    let (rr, r50, r99) = row("raw reqwest", &raw_runs);
    let (jr, j50, j99) = row("raw reqwest + the same JWT", &jwt_runs);
    row("raw reqwest, client's settings", &tuned_runs);
    row("client, no policies", &bare_runs);
    let (sr, s50, s99) = row("client, every policy", &sdk_runs);
    let (tr, t50, t99) = row("client, every policy + JWT", &sdk_jwt_runs);
    let traced = row("client, every policy, tracing on", &traced_runs);
    if only.is_some() {
        return;
    }
    // Two ways to compare: the ratio of the medians, and the median of each round's own
    // ratio (the two runs of one round are seconds apart, so a slow spell of the machine
    // hits both), with the middle half of the rounds' ratios to show the spread.
    let ratio = |label: &str,
                 (a, a50, a99): (f64, f64, f64),
                 (b, b50, b99): (f64, f64, f64),
                 (ours, theirs): (&[Run], &[Run])| {
        let mut paired: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(o, t)| o.rate / t.rate)
            .collect();
        paired.sort_by(f64::total_cmp);
        let q = |p: f64| paired[((paired.len() - 1) as f64 * p).round() as usize];
        println!(
            "{label:<44} throughput {:.3} (per round {:.3}, middle half {:.3}-{:.3}), p50 {:.2}, p99 {:.2}",
            a / b,
            q(0.5),
            q(0.25),
            q(0.75),
            a50 / b50,
            a99 / b99
        );
    };
    let raw_row = (rr, r50, r99);
    ratio(
        "every policy / raw:",
        (sr, s50, s99),
        raw_row,
        (&sdk_runs, &raw_runs),
    );
    ratio(
        "every policy + JWT / raw with the same JWT:",
        (tr, t50, t99),
        (jr, j50, j99),
        (&sdk_jwt_runs, &jwt_runs),
    );
    ratio(
        "every policy + JWT / raw:",
        (tr, t50, t99),
        raw_row,
        (&sdk_jwt_runs, &raw_runs),
    );
    ratio(
        "every policy, tracing on / off:",
        traced,
        (sr, s50, s99),
        (&traced_runs, &sdk_runs),
    );

    // The client's own cost: sequential calls, CPU time of this whole process per call
    // (client, runtime and the server alike), client minus raw. Short runs of each, many
    // rounds, and the median of each round's difference: the machine's speed drifts over
    // seconds, by more than the difference measured.
    let seq = (n / 50).max(100);
    let seq_rounds = rounds * 5;
    let mut raw_cpu = Vec::new();
    let mut timed_cpu = Vec::new();
    let mut sdk_cpu = Vec::new();
    for round in 0..seq_rounds {
        for k in 0..3 {
            let c0 = cpu_ns();
            for i in 0..seq {
                let path = format!("/api/v1/inventory/p-{i}");
                match (round + k) % 3 {
                    0 => raw_get(&raw, &base, &path, None).await,
                    // Raw reqwest with a per-request timeout, as the client's attempt
                    // timeout: on a runtime with no other timer, arming one wakes tokio's
                    // driver (a syscall or two).
                    1 => raw_get(&raw, &base, &path, Some(Duration::from_secs(2))).await,
                    _ => drop(client.get(&path).send().await.unwrap()),
                }
            }
            let per_call = (cpu_ns() - c0) as f64 / 1e3 / seq as f64;
            match (round + k) % 3 {
                0 => raw_cpu.push(per_call),
                1 => timed_cpu.push(per_call),
                _ => sdk_cpu.push(per_call),
            }
        }
    }
    let per_call = |label: &str, cpu: f64| println!("{label:<28} {cpu:>7.2} us CPU per call");
    let diff = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(a, b)| a - b).collect());
    per_call("raw reqwest, sequential", median(raw_cpu.clone()));
    per_call("raw reqwest with a timeout", median(timed_cpu.clone()));
    per_call("a4co-http, sequential", median(sdk_cpu.clone()));
    println!(
        "pipeline overhead: {:.2} us CPU per call ({:.2} us over raw reqwest with a timeout), medians of {seq_rounds} rounds' differences",
        diff(&sdk_cpu, &raw_cpu),
        diff(&sdk_cpu, &timed_cpu)
    );
}

/// One GET with raw reqwest, the body read.
async fn raw_get(raw: &reqwest::Client, base: &str, path: &str, timeout: Option<Duration>) {
    let mut request = raw.get(format!("{base}{path}"));
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let resp = request.send().await.unwrap();
    assert!(resp.status().is_success());
    resp.bytes().await.unwrap();
}

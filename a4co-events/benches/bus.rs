//! Bus throughput and latency: raw async-nats against the SDK, in one run, against one
//! nats-server started by the testkit, with the same ~512-byte messages.
//!
//! Run with `cargo bench -p a4co-events --bench bus` (set `A4CO_BENCH_N` for more or fewer
//! messages, `A4CO_BENCH_ROUNDS` for more rounds,
//! `A4CO_BENCH_ONLY=publish|latency|consume|tracing` for one part, e.g. under a profiler). It
//! prints numbers and ratios; nothing is asserted.
//!
//! Every part runs with tracing off (no span created) but `tracing`, which publishes and
//! consumes with tracing off and on in alternating runs: on is the subscriber a reference
//! service installs (OpenTelemetry records the spans, no exporter).

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::OrderConfirmed;
use a4co_events::{AnyMessage, Envelope, Message};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

const WINDOW: usize = 4096;

fn event(i: usize) -> Envelope<OrderConfirmed> {
    let mut data = OrderConfirmed::example();
    data.payment_reference = format!("txn-{i:012}");
    Envelope::new("order-service", format!("ord-{i:08}"), data).with_user_id("user-4711")
}

/// Sends `$n` messages with `$send` (an expression of `$i` that sends one and yields its
/// acknowledgement future), keeping at most `WINDOW` acknowledgements in flight. Every pipelined measurement uses this same loop.
macro_rules! pipelined {
    ($n:expr, |$i:ident| $send:expr) => {{
        let mut pending = Vec::with_capacity(WINDOW);
        for $i in 0..$n {
            pending.push($send);
            if pending.len() == WINDOW {
                for ack in futures::future::join_all(pending.drain(..)).await {
                    ack.unwrap();
                }
            }
        }
        for ack in futures::future::join_all(pending).await {
            ack.unwrap();
        }
    }};
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One measured run: messages per second and CPU microseconds per message, in this
/// process (the client) and in nats-server.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    client_us: f64,
    server_us: f64,
}

/// Measures `work`, which handles `n` messages.
async fn measure<F: Future<Output = ()>>(server_pid: u32, n: usize, work: F) -> Run {
    use a4co_testkit::cpu;
    let (c0, s0, t0) = (cpu::own(), cpu::of(server_pid), Instant::now());
    work.await;
    let elapsed = t0.elapsed().as_secs_f64();
    let per_msg = |spent: Duration| spent.as_secs_f64() * 1e6 / n as f64;
    Run {
        rate: n as f64 / elapsed,
        client_us: per_msg(cpu::own() - c0),
        server_us: per_msg(cpu::of(server_pid) - s0),
    }
}

fn median(runs: &[Run], field: fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(field).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints one row: median rate (range), CPU per message, and the ratio to `baseline`.
fn row(name: &str, runs: &[Run], baseline: Option<&[Run]>) {
    let rate = median(runs, |r| r.rate);
    let lo = runs.iter().map(|r| r.rate).fold(f64::INFINITY, f64::min);
    let hi = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let ratio = baseline.map_or(String::new(), |b| {
        let per_round: Vec<String> = runs
            .iter()
            .zip(b)
            .map(|(r, b)| format!("{:.2}", r.rate / b.rate))
            .collect();
        format!(
            "{:.2} (rounds {})",
            rate / median(b, |r| r.rate),
            per_round.join(" ")
        )
    });
    println!(
        "{name:<40} {rate:>9.0} msg/s [{lo:>7.0}-{hi:>7.0}]  client {:>5.2} us  server {:>5.2} us  {ratio}",
        median(runs, |r| r.client_us),
        median(runs, |r| r.server_us),
    );
}

/// Drains `n` messages of a raw durable pull consumer on `subject` (`raw.pub`: the SDK's
/// envelope bytes with a message id), running `work` on each body and acking each message.
async fn raw_consume(
    js: &jetstream::Context,
    (subject, durable): (&str, &str),
    n: usize,
    work: impl Fn(&[u8]),
) {
    let consumer = js
        .get_stream("RAW")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: subject.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .unwrap();
    for _ in 0..n {
        let m = messages.next().await.unwrap().unwrap();
        work(&m.payload);
        m.ack().await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let env_num = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let tracing = a4co_testkit::telemetry::TracingSwitch::install();
    let n = env_num("A4CO_BENCH_N", 50_000);
    let only = std::env::var("A4CO_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let rounds = env_num("A4CO_BENCH_ROUNDS", 3).max(1);
    let server = a4co_testkit::nats::NatsServer::start();
    let pid = server.pid().unwrap();
    let bus = NatsBus::connect(Config::new(server.url())).await.unwrap();
    bus.provision().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(86_400),
        ..Default::default()
    })
    .await
    .unwrap();
    // The raw side sends the very bytes of an SDK envelope, so parsing it means something.
    let body = bytes::Bytes::from(event(0).to_json());
    println!(
        "nats-server {} | {n} messages of {} bytes | {WINDOW} acks in flight at most | \
         {rounds} rounds, medians; CPU is per message",
        server.url(),
        body.len()
    );

    // 1. Pipelined publish, all with a message id (dedup on). Each round runs every
    // variant once, so drift of the machine hits them alike. Consuming reads what the first
    // round published, so that round runs (unreported) even when only consuming is measured.
    let (mut raw, mut raw_enc, mut sdk) = (vec![], vec![], vec![]);
    let publish_rounds = if part("publish") {
        rounds
    } else if part("consume") {
        1
    } else {
        0
    };
    for round in 0..publish_rounds {
        raw.push(
            measure(pid, n, async {
                pipelined!(n, |i| {
                    let msg = jetstream::message::PublishMessage::build()
                        .payload(body.clone())
                        .message_id(format!("raw-{round}-{i}"));
                    js.send_publish("raw.pub", msg).await.unwrap().into_future()
                });
            })
            .await,
        );
        // What a team writes without the SDK: encode each envelope, send it with its id.
        let events: Vec<_> = (0..n).map(|i| event(round * n + i)).collect();
        raw_enc.push(
            measure(pid, n, async {
                pipelined!(n, |i| {
                    let msg = jetstream::message::PublishMessage::build()
                        .payload(events[i].to_json().into())
                        .message_id(events[i].event_id.to_string());
                    js.send_publish("raw.enc", msg).await.unwrap().into_future()
                });
            })
            .await,
        );
        sdk.push(
            measure(pid, n, async {
                pipelined!(n, |i| bus.publish_pipelined(&events[i]).await.unwrap());
            })
            .await,
        );
    }
    if part("publish") {
        println!("\npipelined publish");
        row("raw, one body, message id", &raw, None);
        row("raw, encoding each envelope + id", &raw_enc, Some(&raw));
        row("SDK publish_pipelined", &sdk, Some(&raw));
        row("  SDK vs raw encoding each envelope", &sdk, Some(&raw_enc));
        body_check();
    }
    if part("latency") {
        latency(&js, &bus, &body, n, rounds).await;
    }
    if part("consume") {
        consume(&js, &bus, pid, n, rounds).await;
    }
    if part("tracing") {
        tracing_cost(&js, &bus, pid, n, rounds, &tracing).await;
    }
}

/// The SDK's pipelined publish and its consume + ack (inbox on), with tracing off and on,
/// in alternating order round by round.
async fn tracing_cost(
    js: &jetstream::Context,
    bus: &NatsBus,
    pid: u32,
    n: usize,
    rounds: usize,
    tracing: &a4co_testkit::telemetry::TracingSwitch,
) {
    let (mut publish, mut consume): ([Vec<Run>; 2], [Vec<Run>; 2]) = Default::default();
    for round in 0..rounds.max(2) * 2 {
        let on = round % 2 == 1;
        let events: Vec<_> = (0..n).map(|i| event(1_000_000 + round * n + i)).collect();
        // Only this run's messages in the stream, for the consumer to drain.
        js.get_stream("ORDERS")
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
        tracing.set(on);
        publish[usize::from(on)].push(
            measure(pid, n, async {
                pipelined!(n, |i| bus.publish_pipelined(&events[i]).await.unwrap());
            })
            .await,
        );
        consume[usize::from(on)].push(
            measure(pid, n, async {
                let handler = |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                    std::future::ready(Ok::<(), HandlerError>(()))
                };
                let sub = Subscription::new("bench", format!("tracing-{round}"))
                    .to::<OrderConfirmed>()
                    .max_in_flight(64);
                let handle = bus.subscribe(sub, handler).await.unwrap();
                while (handle.stats().handled as usize) < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                handle.shutdown().await;
            })
            .await,
        );
        tracing.set(false);
    }
    println!(
        "
tracing (OpenTelemetry layer, no exporter) off and on, alternating runs"
    );
    row("SDK publish_pipelined, tracing off", &publish[0], None);
    row(
        "SDK publish_pipelined, tracing on",
        &publish[1],
        Some(&publish[0]),
    );
    row("SDK consume + ack, tracing off", &consume[0], None);
    row(
        "SDK consume + ack, tracing on",
        &consume[1],
        Some(&consume[0]),
    );
}

/// What the publish-side check ([`Envelope::to_checked_json`]: what every consumer
/// checks) costs per message: encoding checked against encoding alone, the same envelope.
fn body_check() {
    let n = 20_000;
    let env = event(0);
    let time = |f: &dyn Fn() -> usize| {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(f());
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..5 {
        best.0 = best.0.min(time(&|| env.to_json().len()));
        best.1 = best.1.min(time(&|| env.to_checked_json().unwrap().len()));
    }
    println!(
        "{:<40} {:>9.2} us per message (encoding {:.2} us, checked {:.2} us; CPU, best of 5)",
        "  of which the publish check",
        best.1 - best.0,
        best.0,
        best.1
    );
}

/// Publish and wait for each ack (part 2).
async fn latency(
    js: &jetstream::Context,
    bus: &NatsBus,
    body: &bytes::Bytes,
    n: usize,
    rounds: usize,
) {
    let samples = 2_000.min(n);
    let mut raw_lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let msg = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(format!("lat-{i}"));
        js.send_publish("raw.lat", msg)
            .await
            .unwrap()
            .await
            .unwrap();
        raw_lat.push(t.elapsed());
    }
    let mut sdk_lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let env = event(rounds * n + i);
        let t = Instant::now();
        bus.publish(&env).await.unwrap();
        sdk_lat.push(t.elapsed());
    }
    raw_lat.sort();
    sdk_lat.sort();
    println!();
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (r, s) = (percentile(&raw_lat, p), percentile(&sdk_lat, p));
        println!(
            "{:<40} raw {:>7.1} us   sdk {:>7.1} us   sdk/raw {:.2}",
            format!("publish-and-wait latency {label}"),
            r.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            s.as_secs_f64() / r.as_secs_f64()
        );
    }
}

/// Consume with ack (part 3): a raw pull consumer vs an SDK subscription (no-op handler),
/// each round on fresh durables reading the first n messages.
async fn consume(js: &jetstream::Context, bus: &NatsBus, pid: u32, n: usize, rounds: usize) {
    // The raw baselines: the body ignored, or deserialized into the typed envelope with
    // serde (what a team writes without the SDK); both ack each message.
    let raw_kinds = [("raw", false), ("typed", true)];
    let mut raw_runs: [Vec<Run>; 2] = Default::default();
    let (mut off, mut on) = (vec![], vec![]);
    let (mut shared1, mut exclusive3, mut shared3) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        for (runs, (name, typed)) in raw_runs.iter_mut().zip(raw_kinds) {
            let durable = format!("{name}-{round}");
            let work = |b: &[u8]| {
                if typed {
                    std::hint::black_box(
                        serde_json::from_slice::<a4co_events::envelope::WireEnvelope<OrderConfirmed>>(b)
                            .unwrap(),
                    );
                }
            };
            runs.push(measure(pid, n, raw_consume(js, ("raw.pub", &durable), n, work)).await);
        }
        let mut variants = [
            (&mut off, "off", None, 1, true),
            (&mut on, "on", Some(Duration::from_secs(3600)), 1, true),
            (
                &mut shared1,
                "shared1",
                Some(Duration::from_secs(3600)),
                1,
                false,
            ),
            (
                &mut exclusive3,
                "exclusive3",
                Some(Duration::from_secs(3600)),
                3,
                true,
            ),
            (
                &mut shared3,
                "shared3",
                Some(Duration::from_secs(3600)),
                3,
                false,
            ),
        ];
        // Which goes first alternates, so neither always runs on a warmer or a busier server.
        if round % 2 == 1 {
            variants.reverse();
        }
        for (runs, label, inbox, instances, exclusive) in variants {
            runs.push(
                measure(pid, n, async {
                    let handler = |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                        std::future::ready(Ok::<(), HandlerError>(()))
                    };
                    // Instances of one service: the same subscription, opened `instances`
                    // times (an exclusive one is taken by one of them at a time).
                    let sub = Subscription::new("bench", format!("inbox-{label}-{round}"))
                        .to::<OrderConfirmed>()
                        .max_in_flight(64)
                        .exclusive(exclusive)
                        .inbox_ttl(inbox);
                    let mut handles = Vec::new();
                    for _ in 0..instances {
                        handles.push(bus.subscribe(sub.clone(), handler).await.unwrap());
                    }
                    while (handles.iter().map(|h| h.stats().handled).sum::<u64>() as usize) < n {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    for handle in handles {
                        handle.shutdown().await;
                    }
                })
                .await,
            );
        }
    }
    println!("\nconsume + ack");
    let [raw, raw_typed] = &raw_runs;
    row("raw", raw, None);
    row("raw, into the typed envelope (serde)", raw_typed, Some(raw));
    row("SDK, inbox off", &off, Some(raw));
    row("SDK, inbox on (default)", &on, Some(raw));
    row("  SDK (inbox on) vs raw typed", &on, Some(raw_typed));
    row("  SDK (inbox off) vs raw typed", &off, Some(raw_typed));
    println!("\nconsume + ack: instances (inbox on; the default is exclusive, one at a time)");
    row("SDK, 1 instance, exclusive (default)", &on, None);
    row("SDK, 1 instance, not exclusive", &shared1, Some(&on));
    row("SDK, 3 instances, exclusive", &exclusive3, Some(&on));
    row("SDK, 3 instances, not exclusive", &shared3, Some(&on));
}

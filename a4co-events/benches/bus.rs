//! Bus throughput and latency: raw async-nats against the SDK, in one run, against one
//! nats-server started by the testkit, with the same ~512-byte messages.
//!
//! Run with `cargo bench -p a4co-events --bench bus` (set `A4CO_BENCH_N` for more or fewer
//! messages). It prints numbers and ratios; nothing is asserted.

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
/// acknowledgement future), keeping at most `WINDOW` acknowledgements in flight; returns
/// messages per second. Every pipelined measurement uses this same loop.
macro_rules! pipelined {
    ($n:expr, |$i:ident| $send:expr) => {{
        let start = Instant::now();
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
        $n as f64 / start.elapsed().as_secs_f64()
    }};
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, raw: f64, sdk: f64, unit: &str) {
    println!(
        "{name:<44} raw {raw:>10.0} {unit}   sdk {sdk:>10.0} {unit}   sdk/raw {:.2}",
        sdk / raw
    );
}

/// Messages per second of a raw durable pull consumer on `raw.pub` that runs `work` and
/// acks each message.
async fn raw_consume_with(
    js: &jetstream::Context,
    durable: &str,
    n: usize,
    mut work: impl FnMut(),
) -> f64 {
    let consumer = js
        .get_stream("RAW")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: "raw.pub".into(),
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
    let start = Instant::now();
    for _ in 0..n {
        let m = messages.next().await.unwrap().unwrap();
        work();
        m.ack().await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("A4CO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let server = a4co_testkit::nats::NatsServer::start();
    let bus = NatsBus::connect(Config::new(server.url())).await.unwrap();
    bus.provision(1).await.unwrap();
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
    let body_len = event(0).to_json().len();
    let payload = bytes::Bytes::from(vec![b'x'; body_len]);
    println!(
        "nats-server {} | {n} messages of {body_len} bytes | {WINDOW} acks in flight at most",
        server.url()
    );

    // 1. Pipelined publish (both with a message id: dedup on).
    let raw_rate = pipelined!(n, |i| {
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("raw-{i}"));
        js.send_publish("raw.pub", msg).await.unwrap().into_future()
    });
    let events: Vec<_> = (0..n).map(event).collect();
    let sdk_rate = pipelined!(n, |i| bus.publish_pipelined(&events[i]).await.unwrap());
    report("pipelined publish", raw_rate, sdk_rate, "msg/s");
    // The same, raw, but carrying the SDK's headers: what the headers cost the broker.
    let headers = event(0).headers();
    let raw_headers_rate = pipelined!(n, |i| {
        let mut msg = jetstream::message::PublishMessage::build().payload(payload.clone());
        for (k, v) in headers.iter().filter(|(k, _)| *k != "Nats-Msg-Id") {
            msg = msg.header(k, v);
        }
        let msg = msg.message_id(format!("rawh-{i}"));
        js.send_publish("raw.hdr", msg).await.unwrap().into_future()
    });
    report(
        "pipelined publish, raw with the SDK's headers",
        raw_headers_rate,
        sdk_rate,
        "msg/s",
    );

    // 2. Publish and wait for each ack.
    let samples = 2_000.min(n);
    let mut raw_lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
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
        let env = event(n + i);
        let t = Instant::now();
        bus.publish(&env).await.unwrap();
        sdk_lat.push(t.elapsed());
    }
    raw_lat.sort();
    sdk_lat.sort();
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (r, s) = (percentile(&raw_lat, p), percentile(&sdk_lat, p));
        println!(
            "{:<44} raw {:>10.1} us      sdk {:>10.1} us      sdk/raw {:.2}",
            format!("publish-and-wait latency {label}"),
            r.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            s.as_secs_f64() / r.as_secs_f64()
        );
    }

    // 3. Consume with ack: raw pull consumer vs SDK subscription (no-op handler). The
    // second raw run also parses each body as JSON: what reading the payload at all costs,
    // before the SDK's envelope, schema and typed decoding. (The raw payload is filler, so
    // it parses a real envelope of the same size.)
    let body = event(0).to_json();
    let raw_consume = raw_consume_with(&js, "bench", n, || ()).await;
    let raw_parse_consume = raw_consume_with(&js, "bench-parse", n, || {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
    })
    .await;
    let mut sdk_consume = Vec::new();
    for (label, inbox) in [
        ("inbox off", None),
        ("inbox on", Some(Duration::from_secs(3600))),
    ] {
        let start = Instant::now();
        let handler = |_: Envelope<AnyMessage>, _: DeliveryInfo| {
            std::future::ready(Ok::<(), HandlerError>(()))
        };
        let sub = Subscription::new("bench", format!("consume-{}", label.replace(' ', "-")))
            .to::<OrderConfirmed>()
            .max_in_flight(64)
            .inbox_ttl(inbox);
        let handle = bus.subscribe(sub, handler).await.unwrap();
        while (handle.stats().handled as usize) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sdk_consume.push((label, n as f64 / start.elapsed().as_secs_f64()));
        handle.shutdown().await;
    }
    for (label, rate) in sdk_consume {
        report(
            &format!("consume + ack ({label})"),
            raw_consume,
            rate,
            "msg/s",
        );
        let like = format!("consume + ack ({label}), raw parsing JSON too");
        report(&like, raw_parse_consume, rate, "msg/s");
    }
}

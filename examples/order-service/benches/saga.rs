//! Saga throughput and latency: steps/s in memory; and, against one nats-server started by
//! the testkit, fulfillment sagas/s with end-to-end latency, next to a hand-written raw
//! async-nats version of the same message flow, in the same run.
//!
//! The flow per order (two items): order.created -> 2 reserve_stock -> 2 stock_reserved ->
//! process payment -> payment.succeeded -> confirm order. Raw: 8 publishes, 4 KV
//! compare-and-swap updates, 8 acks per order. The participants (inventory, payment, the
//! order service's command side) are simulated in process for both. Latency: from
//! publishing order.created to the confirm command reaching the order service. A third
//! hand-written flow keeps each saga's state as the last message of its own subject and
//! saves it together with its commands in one JetStream atomic batch (the store design the
//! issue asked to measure).
//!
//! Run with `cargo bench -p example-order-service --bench saga` (`A4CO_BENCH_N` orders per run,
//! default 2000; `A4CO_BENCH_IN_FLIGHT`, default 64; `A4CO_BENCH_ROUNDS`, default 3;
//! `A4CO_BENCH_NATS=0` for the in-memory part only). Rounds rotate which flow goes first;
//! peaks are medians. Two rows run one order at a time (the raw flow, then the saga): the
//! latency of an order alone. Each run also reports the CPU per order of this process and
//! of nats-server. It prints numbers; nothing is asserted.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::bus::{HandlerError, MemoryBus, Publisher, Subscriber, Subscription};
use a4co_events::catalog::inventory::{ReserveStock, StockReserved};
use a4co_events::catalog::order::{ConfirmOrder, OrderConfirmed, OrderCreated, OrderItem};
use a4co_events::catalog::payment::{PaymentSucceeded, ProcessPayment};
use a4co_events::{AnyMessage, Envelope, Message, Money};
use a4co_saga::{MemoryStore, Runtime};
use async_nats::jetstream::{self, consumer::pull, kv, stream};
use futures::StreamExt as _;
use order_service::fulfillment::{self, Fulfillment, Phase};
use tokio::sync::Semaphore;

fn order(i: usize) -> Envelope<OrderCreated> {
    let item = |p: &str| OrderItem {
        product_id: p.to_owned(),
        artisan_id: "art-1".to_owned(),
        quantity: 1,
        unit_price: Money::eur(1000),
        product_name: p.to_owned(),
    };
    let data = OrderCreated {
        items: vec![item("prod-a"), item("prod-b")],
        total_amount: Money::eur(2000),
        ..OrderCreated::example()
    };
    Envelope::new("order-service", format!("ord-{i:07}"), data)
}

fn reserved_reply(cmd: &Envelope<AnyMessage>, order_id: &str) -> Envelope<AnyMessage> {
    let data = StockReserved {
        order_id: order_id.to_owned(),
        reservation_id: format!("res-{order_id}-{}", cmd.aggregate_id),
        ..StockReserved::example()
    };
    Envelope::caused_by(cmd, "inventory-service", cmd.aggregate_id.clone(), data).into_any()
}

fn paid_reply(cmd: &Envelope<AnyMessage>, order_id: &str) -> Envelope<AnyMessage> {
    let data = PaymentSucceeded {
        order_id: order_id.to_owned(),
        transaction_id: format!("txn-{order_id}"),
        ..PaymentSucceeded::example()
    };
    Envelope::caused_by(cmd, "payment-service", format!("pay-{order_id}"), data).into_any()
}

/// When each order started, and the latencies of those finished.
#[derive(Default)]
struct Clock {
    started: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Clock {
    fn start(&self, order: &str) {
        self.started
            .lock()
            .unwrap()
            .insert(order.to_owned(), Instant::now());
    }

    /// Records the end of `order`; false if it was seen before.
    fn end(&self, order: &str) -> bool {
        let Some(t) = self.started.lock().unwrap().remove(order) else {
            return false;
        };
        self.latencies.lock().unwrap().push(t.elapsed());
        true
    }

    fn finished(&self) -> usize {
        self.latencies.lock().unwrap().len()
    }
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU per order, in this process and in nats-server.
    client: Duration,
    server: Duration,
}

/// nats-server's process id, whose CPU time each run reads (0 before it starts).
static SERVER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Publishes `n` orders (ids from `first`) with `publish`, keeping at most `in_flight`
/// unfinished (or pacing them at `rate` orders/s when given), and waits until all are
/// confirmed. The confirm handler gives a slot back through `slots`.
async fn drive<F, Fut>(
    n: usize,
    first: usize,
    in_flight: usize,
    rate: Option<f64>,
    clock: &Clock,
    slots: &Arc<Semaphore>,
    publish: F,
) -> Run
where
    F: Fn(Envelope<OrderCreated>) -> Fut,
    Fut: Future<Output = ()>,
{
    clock.latencies.lock().unwrap().clear();
    // Reset the window: `in_flight` slots.
    while let Ok(p) = slots.try_acquire() {
        p.forget();
    }
    slots.add_permits(in_flight);
    let server_pid = SERVER_PID.load(std::sync::atomic::Ordering::Relaxed);
    let (client0, server0) = (a4co_testkit::cpu::own(), a4co_testkit::cpu::of(server_pid));
    let start = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        slots.acquire().await.unwrap().forget();
        let o = order(first + i);
        clock.start(&o.aggregate_id);
        publish(o).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while clock.finished() < n {
        assert!(
            Instant::now() < deadline,
            "orders stopped finishing: {} of {n}",
            clock.finished()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let per_order = |spent: Duration| spent / u32::try_from(n).unwrap();
    let client = per_order(a4co_testkit::cpu::own() - client0);
    let server = per_order(a4co_testkit::cpu::of(server_pid) - server0);
    let mut lat = clock.latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        client,
        server,
    }
}

/// The run of median rate (its latencies with it).
fn median(runs: &[Run]) -> Run {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let m = sorted[sorted.len() / 2];
    Run {
        rate: m.rate,
        p50: m.p50,
        p99: m.p99,
        client: m.client,
        server: m.server,
    }
}

fn finished(clock: &Clock, slots: &Semaphore, order: &str) {
    if clock.end(order) {
        slots.add_permits(1);
    }
}

// ---------------------------------------------------------------- SDK

/// The SDK's consumer for one command type: unordered, no inbox, 64 in flight.
fn commands_of<M: a4co_events::Message>(service: &str) -> Subscription {
    Subscription::new(service, "cmd")
        .to::<M>()
        .max_in_flight(64)
        .inbox_ttl(None)
        .ordered_by(a4co_events::bus::OrderBy::Nothing)
}

/// Answers every command of the subscription with `reply(command, order id)`.
async fn answer(
    bus: &NatsBus,
    subscription: Subscription,
    reply: fn(&Envelope<AnyMessage>, &str) -> Envelope<AnyMessage>,
) -> a4co_events::bus::SubscriptionHandle {
    let p = bus.clone();
    bus.subscribe(subscription, move |m: Envelope<AnyMessage>, _| {
        let p = p.clone();
        async move {
            let order_id = match &m.data {
                AnyMessage::ReserveStock(c) => c.order_id.clone(),
                AnyMessage::ProcessPayment(c) => c.order_id.clone(),
                _ => return Ok(()),
            };
            p.publish(&reply(&m, &order_id))
                .await
                .map_err(HandlerError::retryable)?;
            Ok(())
        }
    })
    .await
    .unwrap()
}

async fn sdk_participants(
    bus: &NatsBus,
    clock: Arc<Clock>,
    slots: Arc<Semaphore>,
) -> Vec<a4co_events::bus::SubscriptionHandle> {
    let orders = commands_of::<ConfirmOrder>("bench-order");
    let confirmed = bus
        .subscribe(orders, move |m: Envelope<AnyMessage>, _| {
            finished(&clock, &slots, &m.aggregate_id);
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .await
        .unwrap();
    vec![
        answer(
            bus,
            commands_of::<ReserveStock>("bench-inventory"),
            reserved_reply,
        )
        .await,
        answer(
            bus,
            commands_of::<ProcessPayment>("bench-payment"),
            paid_reply,
        )
        .await,
        confirmed,
    ]
}

// ---------------------------------------------------------------- raw

/// Where a hand-written flow keeps its sagas: the issue asks to measure JetStream's atomic
/// batch publish (state and commands in one round trip) against KV compare-and-swap with
/// the commands published after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawStore {
    /// State in a KV bucket (compare-and-swap on the revision), then each command
    /// published and acknowledged: the flow the issue describes.
    Kv,
    /// State as the last message of `bat.saga.<order>`, saved with its commands in one
    /// atomic batch (server 2.12+) whose commit carries the expected last sequence of that
    /// subject: all or nothing, one acknowledgement. Measured about 10x slower than `Kv`
    /// on a file-stored stream: nats-server stages every batch in a temporary file store
    /// (created, synced and deleted per batch) and syncs at commit (docs/benchmarks.md).
    Batch,
}

impl RawStore {
    fn prefix(self) -> &'static str {
        match self {
            RawStore::Kv => "raw",
            RawStore::Batch => "bat",
        }
    }
    fn stream(self) -> &'static str {
        match self {
            RawStore::Kv => "RAWSAGA",
            RawStore::Batch => "BATSAGA",
        }
    }
}

async fn raw_consume<F, Fut>(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    subject: &str,
    handle: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: subject.to_owned(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 1024,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        let messages = consumer.messages().await.unwrap();
        messages
            .for_each_concurrent(64, move |m| {
                let handle = Arc::clone(&handle);
                async move {
                    if let Ok(m) = m {
                        handle(m).await;
                    }
                }
            })
            .await;
    });
}

async fn raw_publish(js: &jetstream::Context, subject: &str, envelope: &Envelope<AnyMessage>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.event_id.to_string().as_str());
    js.publish_with_headers(subject.to_owned(), headers, envelope.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn command<M: Message>(order: &str, step: &str, aggregate: &str, data: M) -> Envelope<AnyMessage>
where
    AnyMessage: From<M>,
{
    Envelope::new("order-service", aggregate, data)
        .with_event_id(a4co_saga::step_message_id(order, step))
        .into_any()
}

/// Commands to send: (subject, envelope).
type Commands = Vec<(String, Envelope<AnyMessage>)>;

/// The raw flows' saga store.
#[derive(Clone)]
enum Sagas {
    Kv(jetstream::Context, kv::Store),
    Batch(jetstream::Context, jetstream::stream::Stream),
}

impl Sagas {
    /// Creates the saga of `order` unless it exists, then sends `commands`.
    async fn create(&self, order: &str, state: serde_json::Value, commands: Commands) {
        match self {
            Sagas::Kv(js, kv) => {
                if kv
                    .create(order, serde_json::to_vec(&state).unwrap().into())
                    .await
                    .is_ok()
                {
                    for (subject, env) in &commands {
                        raw_publish(js, subject, env).await;
                    }
                }
            }
            Sagas::Batch(js, _) => {
                // Expected last sequence 0: only if no state exists yet.
                let _ = batch_save(js, order, &state, 0, &commands).await;
            }
        }
    }

    /// Applies `change` to the saga of `order` and sends the commands it returns,
    /// re-reading and applying again on a conflict.
    async fn update(&self, order: &str, change: impl Fn(&mut serde_json::Value) -> Commands) {
        match self {
            Sagas::Kv(js, kv) => loop {
                let entry = kv.entry(order).await.unwrap().unwrap();
                let mut state: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
                let commands = change(&mut state);
                let bytes = serde_json::to_vec(&state).unwrap();
                if kv.update(order, bytes.into(), entry.revision).await.is_ok() {
                    for (subject, env) in &commands {
                        raw_publish(js, subject, env).await;
                    }
                    return;
                }
            },
            Sagas::Batch(js, stream) => loop {
                let last = stream
                    .direct_get_last_for_subject(format!("bat.saga.{order}"))
                    .await
                    .unwrap();
                let mut state: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
                let commands = change(&mut state);
                if batch_save(js, order, &state, last.sequence, &commands).await {
                    return;
                }
            },
        }
    }
}

/// Saves `state` as the last message of `bat.saga.<order>` and sends `commands` in one
/// atomic batch: the commands as plain publishes, the state last with the commit marker
/// and the sequence its subject must still have (`expected`). The server stores all of it
/// or nothing and acknowledges the commit. False on a conflict.
async fn batch_save(
    js: &jetstream::Context,
    order: &str,
    state: &serde_json::Value,
    expected: u64,
    commands: &[(String, Envelope<AnyMessage>)],
) -> bool {
    use async_nats::HeaderMap;
    let batch = a4co_events::EventId::new().to_string();
    let client = js.client();
    for (i, (subject, env)) in commands.iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", env.event_id.to_string().as_str());
        h.insert("Nats-Batch-Id", batch.as_str());
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        client
            .publish_with_headers(subject.clone(), h, env.to_json().into())
            .await
            .unwrap();
    }
    let mut h = HeaderMap::new();
    if !commands.is_empty() {
        h.insert("Nats-Batch-Id", batch.as_str());
        h.insert(
            "Nats-Batch-Sequence",
            (commands.len() + 1).to_string().as_str(),
        );
        h.insert("Nats-Batch-Commit", "1");
    }
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    let body = serde_json::to_vec(state).unwrap();
    let ack = js
        .publish_with_headers(format!("bat.saga.{order}"), h, body.into())
        .await
        .unwrap()
        .await;
    match ack {
        Ok(_) => true,
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => false,
        Err(e) => panic!("atomic batch for {order} failed: {e}"),
    }
}

/// A saga's reaction to a reply: (subject prefix, order id, state) -> commands to send.
type Reaction = fn(&str, &str, &mut serde_json::Value) -> Commands;

/// Applies `react` to the saga of each reply on `reply` (the order id in its data).
async fn on_reply(
    js: &jetstream::Context,
    store: RawStore,
    name: &str,
    reply: &str,
    sagas: &Sagas,
    react: Reaction,
) {
    let (p, sagas) = (store.prefix(), sagas.clone());
    let (name, subject) = (format!("{p}-{name}"), format!("{p}.{reply}"));
    raw_consume(js, store.stream(), &name, &subject, move |m| {
        let sagas = sagas.clone();
        async move {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let order = body["data"]["orderId"].as_str().unwrap().to_owned();
            sagas.update(&order, |state| react(p, &order, state)).await;
            m.ack().await.unwrap();
        }
    })
    .await;
}

/// One stock reservation more; with both, the payment.
fn reserved(p: &str, order: &str, state: &mut serde_json::Value) -> Commands {
    let n = state["reserved"].as_u64().unwrap_or(0) + 1;
    state["reserved"] = n.into();
    if n < 2 {
        return Vec::new();
    }
    state["state"] = "paying".into();
    let cmd = ProcessPayment {
        order_id: order.to_owned(),
        ..ProcessPayment::example()
    };
    vec![(
        format!("{p}.payment.cmd.process"),
        command(order, "pay", order, cmd),
    )]
}

/// Paid: confirm the order.
fn paid(p: &str, order: &str, state: &mut serde_json::Value) -> Commands {
    state["state"] = "confirming".into();
    let cmd = ConfirmOrder {
        payment_id: format!("txn-{order}"),
        payment_reference: "ref".to_owned(),
    };
    vec![(
        format!("{p}.order.cmd.confirm"),
        command(order, "confirm", order, cmd),
    )]
}

/// The same flow by hand: the saga's state in `store`, its commands sent after (KV) or with
/// (batch) each save.
#[allow(clippy::too_many_lines)]
async fn raw_flow(
    js: jetstream::Context,
    store: RawStore,
    clock: Arc<Clock>,
    slots: Arc<Semaphore>,
) {
    let (p, stream_name) = (store.prefix(), store.stream());
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.to_owned(),
            subjects: vec![format!("{p}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            allow_atomic_publish: store == RawStore::Batch,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let sagas = match store {
        RawStore::Kv => Sagas::Kv(
            js.clone(),
            js.create_key_value(kv::Config {
                bucket: "raw-sagas".to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap(),
        ),
        RawStore::Batch => Sagas::Batch(js.clone(), stream),
    };
    let subject = move |s: &str| format!("{p}.{s}");
    // Durable name and filter subject of each consumer.
    let names = |name: &str, s: &str| (format!("{p}-{name}"), subject(s));

    let (name, s) = names("saga-created", "order.created");
    let st = sagas.clone();
    raw_consume(&js, stream_name, &name, &s, move |m| {
        let st = st.clone();
        async move {
            let created: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let order = created["aggregateId"].as_str().unwrap().to_owned();
            let state = serde_json::json!({"state": "reserving", "reserved": 0, "items": 2});
            let commands = ["prod-a", "prod-b"]
                .into_iter()
                .map(|product| {
                    let cmd = ReserveStock {
                        order_id: order.clone(),
                        quantity: 1,
                        expires_at: chrono::Utc::now(),
                    };
                    (
                        subject("inventory.cmd.reserve_stock"),
                        command(&order, product, product, cmd),
                    )
                })
                .collect();
            st.create(&order, state, commands).await;
            m.ack().await.unwrap();
        }
    })
    .await;
    on_reply(
        &js,
        store,
        "saga-reserved",
        "inventory.stock_reserved",
        &sagas,
        reserved,
    )
    .await;
    on_reply(&js, store, "saga-paid", "payment.succeeded", &sagas, paid).await;
    // The participants.
    let (name, s) = names("inventory", "inventory.cmd.reserve_stock");
    let js2 = js.clone();
    raw_consume(&js, stream_name, &name, &s, move |m| {
        let js = js2.clone();
        async move {
            let cmd: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let order = cmd["data"]["orderId"].as_str().unwrap();
            let product = cmd["aggregateId"].as_str().unwrap();
            let data = StockReserved {
                order_id: order.to_owned(),
                reservation_id: format!("res-{order}-{product}"),
                ..StockReserved::example()
            };
            let reply = Envelope::new("inventory-service", product, data).into_any();
            raw_publish(&js, &subject("inventory.stock_reserved"), &reply).await;
            m.ack().await.unwrap();
        }
    })
    .await;
    let (name, s) = names("payment", "payment.cmd.process");
    let js2 = js.clone();
    raw_consume(&js, stream_name, &name, &s, move |m| {
        let js = js2.clone();
        async move {
            let cmd: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let order = cmd["data"]["orderId"].as_str().unwrap();
            let data = PaymentSucceeded {
                order_id: order.to_owned(),
                transaction_id: format!("txn-{order}"),
                ..PaymentSucceeded::example()
            };
            let reply = Envelope::new("payment-service", format!("pay-{order}"), data).into_any();
            raw_publish(&js, &subject("payment.succeeded"), &reply).await;
            m.ack().await.unwrap();
        }
    })
    .await;
    let (name, s) = names("order", "order.cmd.confirm");
    raw_consume(&js, stream_name, &name, &s, move |m| {
        let (clock, slots) = (Arc::clone(&clock), Arc::clone(&slots));
        async move {
            let cmd: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            finished(&clock, &slots, cmd["aggregateId"].as_str().unwrap());
            m.ack().await.unwrap();
        }
    })
    .await;
}

// ---------------------------------------------------------------- main

fn row(name: &str, r: &Run) {
    println!(
        "{name:<44} {:>8.0} orders/s   p50 {:>7.1} ms   p99 {:>7.1} ms   CPU/order: client {:>4.0} us, server {:>4.0} us",
        r.rate,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.client.as_secs_f64() * 1e6,
        r.server.as_secs_f64() * 1e6,
    );
}

async fn in_memory(n: usize) {
    let definition = fulfillment::definition(fulfillment::Settings::default()).unwrap();
    let bus = MemoryBus::provisioned().await.unwrap();
    let runtime = Runtime::new(definition, bus, MemoryStore::new());
    let steps = n * 5;
    let started = Instant::now();
    for i in 0..n {
        let created = order(i).into_any();
        let id = created.aggregate_id.clone();
        runtime.handle(&created).await.unwrap();
        for p in ["prod-a", "prod-b"] {
            let data = StockReserved {
                order_id: id.clone(),
                reservation_id: format!("res-{id}-{p}"),
                ..StockReserved::example()
            };
            let reserved = Envelope::new("inventory-service", p, data).into_any();
            runtime.handle(&reserved).await.unwrap();
        }
        let data = PaymentSucceeded {
            order_id: id.clone(),
            ..PaymentSucceeded::example()
        };
        let paid = Envelope::new("payment-service", "pay", data).into_any();
        runtime.handle(&paid).await.unwrap();
        let confirmed = Envelope::new("order-service", id.as_str(), OrderConfirmed::example());
        runtime.handle(&confirmed.into_any()).await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "in memory: {steps} saga steps in {elapsed:.2?}: {:.0} steps/s ({:.1} us per step, publishing included)",
        steps as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / steps as f64
    );
}

/// The first order id of the one-order-at-a-time runs, clear of the others' ids.
const ALONE_IDS: usize = 9_000_000;

#[tokio::main]
async fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("A4CO_BENCH_N", 2000);
    let in_flight = env("A4CO_BENCH_IN_FLIGHT", 64);
    let rounds = env("A4CO_BENCH_ROUNDS", 3).max(1);
    in_memory(n).await;
    if std::env::var("A4CO_BENCH_NATS").is_ok_and(|v| v == "0") {
        return;
    }

    let server = a4co_testkit::nats::NatsServer::start();
    SERVER_PID.store(server.pid().unwrap(), std::sync::atomic::Ordering::Relaxed);
    println!(
        "nats-server on {} | {n} orders per run, {in_flight} in flight, {rounds} rounds",
        server.url()
    );

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    // The hand-written flows: each with its clock and window, and how to start an order.
    let start_raw = async |store: RawStore| {
        let (clock, slots) = (Arc::new(Clock::default()), Arc::new(Semaphore::new(0)));
        raw_flow(js.clone(), store, Arc::clone(&clock), Arc::clone(&slots)).await;
        (clock, slots)
    };
    let publish_to = |store: RawStore| {
        let (js, subject) = (&js, format!("{}.order.created", store.prefix()));
        move |o: Envelope<OrderCreated>| {
            let (js, subject) = (js.clone(), subject.clone());
            async move { raw_publish(&js, &subject, &o.into_any()).await }
        }
    };
    let (raw_clock, raw_slots) = start_raw(RawStore::Kv).await;
    let (batch_clock, batch_slots) = start_raw(RawStore::Batch).await;
    let publish_raw = publish_to(RawStore::Kv);
    let publish_batch = publish_to(RawStore::Batch);

    let bus = NatsBus::connect(Config::new(server.url())).await.unwrap();
    bus.provision().await.unwrap();
    let store = a4co_saga::nats::KvStore::open(bus.transport())
        .await
        .unwrap();
    let sdk_clock = Arc::new(Clock::default());
    let sdk_slots = Arc::new(Semaphore::new(0));
    let _participants =
        sdk_participants(&bus, Arc::clone(&sdk_clock), Arc::clone(&sdk_slots)).await;
    let definition = fulfillment::definition(fulfillment::Settings::default()).unwrap();
    let runtime: Runtime<Fulfillment, Phase, NatsBus, _> =
        Runtime::new(definition, bus.clone(), store);
    let _running = runtime.start().await.unwrap();
    let publish_sdk = |o: Envelope<OrderCreated>| {
        let bus = bus.clone();
        async move {
            bus.publish(&o).await.unwrap();
        }
    };

    // Rounds alternate which flow goes first, so drift of the machine hits both alike;
    // the peak figures are medians over the rounds.
    let mut next = 0;
    let (mut raw_runs, mut sdk_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for flow in [round % 2, 1 - round % 2] {
            let first = next;
            next += n;
            if flow == 0 {
                raw_runs.push(
                    drive(
                        n,
                        first,
                        in_flight,
                        None,
                        &raw_clock,
                        &raw_slots,
                        &publish_raw,
                    )
                    .await,
                );
            } else {
                sdk_runs.push(
                    drive(
                        n,
                        first,
                        in_flight,
                        None,
                        &sdk_clock,
                        &sdk_slots,
                        publish_sdk,
                    )
                    .await,
                );
            }
        }
    }
    let raw_peak = median(&raw_runs);
    let sdk_peak = median(&sdk_runs);
    row("raw async-nats, peak (median)", &raw_peak);
    row("a4co-saga, peak (median)", &sdk_peak);
    let per_round: Vec<String> = raw_runs
        .iter()
        .zip(&sdk_runs)
        .map(|(r, s)| format!("{:.2}", s.rate / r.rate))
        .collect();
    println!(
        "a4co-saga / raw: {:.2} orders/s (rounds {})",
        sdk_peak.rate / raw_peak.rate,
        per_round.join(" ")
    );
    let half = sdk_peak.rate / 2.0;
    let sdk_half = drive(
        n / 2,
        next,
        4096,
        Some(half),
        &sdk_clock,
        &sdk_slots,
        publish_sdk,
    )
    .await;
    row(
        &format!("a4co-saga at {half:.0} orders/s (half its peak)"),
        &sdk_half,
    );
    let raw_rate = raw_peak.rate / 2.0;
    let raw_half = drive(
        n / 2,
        next + n,
        4096,
        Some(raw_rate),
        &raw_clock,
        &raw_slots,
        &publish_raw,
    )
    .await;
    row(
        &format!("raw at {raw_rate:.0} orders/s (half its peak)"),
        &raw_half,
    );

    // One order alone: one in flight, so its latency is the flow's own, not time queued
    // behind others. The raw flow and the saga in turn, 200 orders each.
    let alone = n.min(200);
    let raw_one = drive(
        alone,
        ALONE_IDS,
        1,
        None,
        &raw_clock,
        &raw_slots,
        &publish_raw,
    )
    .await;
    let sdk_one = drive(
        alone,
        ALONE_IDS + alone,
        1,
        None,
        &sdk_clock,
        &sdk_slots,
        publish_sdk,
    )
    .await;
    row("raw, one order at a time", &raw_one);
    row("a4co-saga, one order at a time", &sdk_one);

    // Last, as it leaves the server busy syncing files: the atomic batch store, a quarter
    // of the orders per round (it is that much slower).
    let mut batch_runs = Vec::new();
    for _ in 0..rounds {
        let first = next + 2 * n;
        next += n;
        batch_runs.push(
            drive(
                n / 4,
                first,
                in_flight,
                None,
                &batch_clock,
                &batch_slots,
                &publish_batch,
            )
            .await,
        );
    }
    let batch_peak = median(&batch_runs);
    row("raw, atomic batch store, peak (median)", &batch_peak);
    println!(
        "atomic batch / raw (KV store): {:.2} orders/s",
        batch_peak.rate / raw_peak.rate
    );
}

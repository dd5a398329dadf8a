//! The runtime over a real nats-server (`KvStore`): timers fire per instance whatever one of
//! them does, a record that cannot be read is set aside while the rest runs, and outboxes
//! the broker refused go out once it is back.

use std::time::Duration;

use a4co_events::bus::Subscription;
use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::catalog::order::{
    CancelOrder, CancellationReason, ConfirmOrder, OrderConfirmed, OrderCreated,
};
use a4co_events::{Envelope, Message};
use a4co_saga::nats::KvStore;
use a4co_saga::store::Index;
use a4co_saga::{Definition, Runtime, RuntimeError, State, Store as _, StoreError, VirtualClock};
use a4co_testkit::bus::Collector;
use a4co_testkit::nats::NatsServer;
use a4co_testkit::saga::scenario_start;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "lowercase")]
enum Watch {
    Waiting,
    #[state(final)]
    Done,
}

const GIVE_UP: Duration = Duration::from_secs(60);

/// Waits for an order's confirmation; gives up after a minute and cancels it. An order
/// whose id says `bad` breaks the definition when its timer fires (a cancel with no
/// aggregate, which every consumer would dead-letter).
fn watch() -> Definition<(), Watch> {
    Definition::<(), Watch>::builder("watch", "order-service")
        .starts_with::<OrderCreated>()
        .to(Watch::Waiting, |step, _| {
            step.schedule("give-up", GIVE_UP);
        })
        .on::<OrderConfirmed>(Watch::Waiting)
        .to(Watch::Done, |_, _| {})
        .on_timeout(Watch::Waiting, "give-up")
        .to(Watch::Done, |step| {
            let order = step.correlation_id().to_owned();
            let aggregate = if order.contains("bad") {
                String::new()
            } else {
                order
            };
            let cancel = CancelOrder {
                reason: CancellationReason::PaymentTimeout,
                refund_required: false,
                detail: None,
            };
            step.send("cancel", aggregate, cancel);
        })
        .build()
        .unwrap()
}

/// Sends a command as soon as an order is created: a cancel, or for an order whose id says
/// `denied`, `order.cmd.confirm` (which a broker may deny).
fn announce() -> Definition<(), Watch> {
    Definition::<(), Watch>::builder("announce", "order-service")
        .starts_with::<OrderCreated>()
        .to(Watch::Waiting, |step, _| {
            step.schedule("give-up", GIVE_UP);
            let order = step.correlation_id().to_owned();
            if order.contains("denied") {
                let confirm = ConfirmOrder {
                    payment_id: "pay-1".to_owned(),
                    payment_reference: "ref-1".to_owned(),
                };
                return step.send("confirm", order, confirm);
            }
            let cancel = CancelOrder {
                reason: CancellationReason::PaymentTimeout,
                refund_required: false,
                detail: None,
            };
            step.send("cancel", order, cancel);
        })
        .on_timeout(Watch::Waiting, "give-up")
        .to(Watch::Done, |_| {})
        .build()
        .unwrap()
}

async fn connect(url: &str) -> NatsBus {
    let config = Config::new(url).ack_timeout(Duration::from_secs(2));
    let bus = NatsBus::connect(config).await.unwrap();
    bus.provision().await.unwrap();
    bus
}

fn created(order: &str) -> Envelope<a4co_events::AnyMessage> {
    Envelope::new("order-service", order, OrderCreated::example()).into_any()
}

type Watcher = Runtime<(), Watch, NatsBus, KvStore>;

async fn state(runtime: &Watcher, order: &str) -> Option<Watch> {
    runtime
        .instance(&format!("watch/{order}"))
        .await
        .unwrap()
        .map(|i| i.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_does_not_keep_the_others_from_firing() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let store = KvStore::open(bus.transport()).await.unwrap();
    let runtime = Runtime::builder(watch(), bus.clone(), store)
        .clock(clock.clone())
        .build()
        .unwrap();
    for order in ["ord-a", "ord-bad", "ord-c"] {
        runtime.handle(&created(order)).await.unwrap();
    }
    clock.advance(GIVE_UP + Duration::from_secs(1));
    // ord-bad fails; ord-a before it and ord-c after it fire all the same.
    assert_eq!(runtime.fire_due_timers().await.unwrap(), 2);
    assert_eq!(state(&runtime, "ord-a").await, Some(Watch::Done));
    assert_eq!(state(&runtime, "ord-c").await, Some(Watch::Done));
    assert_eq!(state(&runtime, "ord-bad").await, Some(Watch::Waiting));

    // The listing moved on past ord-bad's second: a timer due later still fires, and
    // ord-bad is tried again (and fails again) each tick.
    runtime.handle(&created("ord-d")).await.unwrap();
    clock.advance(GIVE_UP + Duration::from_secs(1));
    assert_eq!(runtime.fire_due_timers().await.unwrap(), 1);
    assert_eq!(state(&runtime, "ord-d").await, Some(Watch::Done));
    assert_eq!(state(&runtime, "ord-bad").await, Some(Watch::Waiting));
    assert_eq!(runtime.fire_due_timers().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_be_read_is_set_aside_and_the_rest_runs() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let store = KvStore::open(bus.transport()).await.unwrap();
    let runtime = Runtime::builder(watch(), bus.clone(), store.clone())
        .clock(clock.clone())
        .tick(Duration::from_millis(20))
        .build()
        .unwrap();
    for order in ["ord-a", "ord-b", "ord-c"] {
        runtime.handle(&created(order)).await.unwrap();
    }
    // ord-b's record is overwritten with bytes that are no instance; its timer entry stays.
    let stored = store.load("watch/ord-b").await.unwrap().unwrap();
    store
        .save(
            "watch/ord-b",
            bytes::Bytes::from_static(b"{\"state\": 7"),
            Some(stored.revision),
            Index::default(),
        )
        .await
        .unwrap();

    // Start reads no instance up front: the corrupt one does not stop it.
    let cancels = Collector::start(
        &bus,
        Subscription::new("test", "cancels").to::<CancelOrder>(),
    )
    .await;
    let running = runtime.start().await.unwrap();
    clock.advance(GIVE_UP + Duration::from_secs(1));
    let sent = cancels.wait_for(2, Duration::from_secs(10)).await;
    let mut orders: Vec<&str> = sent.iter().map(|m| m.aggregate_id.as_str()).collect();
    orders.sort_unstable();
    assert_eq!(orders, ["ord-a", "ord-c"]);

    let aside = runtime.set_aside().await.unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(aside[0].key, "watch/ord-b");
    assert!(aside[0].reason.contains("line 1"), "{}", aside[0].reason);
    // A message for it is refused with the reason (a started runtime dead-letters it); the
    // record stays as it was, for repair.
    let confirmed = Envelope::new("order-service", "ord-b", OrderConfirmed::example()).into_any();
    let refused = runtime.handle(&confirmed).await.unwrap_err();
    assert!(
        matches!(refused, RuntimeError::Store(StoreError::Corrupt { ref key, .. }) if key == "watch/ord-b"),
        "{refused}"
    );
    assert_eq!(
        store
            .load("watch/ord-b")
            .await
            .unwrap()
            .unwrap()
            .record
            .as_ref(),
        b"{\"state\": 7"
    );
    assert_eq!(runtime.set_aside().await.unwrap().len(), 1, "noted once");

    // The operator's view: `a4co saga aside` lists it, `a4co saga show` prints a record.
    let tool = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_a4co-saga"))
            .args(args)
            .args(["--url", &server.url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = tool(&["aside", "--json"]);
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["sagaId"], "watch/ord-b");
    assert!(lines[0]["reason"].as_str().unwrap().contains("line 1"));
    let shown: serde_json::Value =
        serde_json::from_str(&tool(&["show", "watch/ord-a", "--json"])).unwrap();
    assert_eq!(
        shown["record"]["state"], "done",
        "stored under its State name"
    );
    assert_eq!(shown["record"]["book"]["version"], 1);
    running.shutdown().await;
    cancels.stop().await;
}

/// The broker the bus talks to goes away while a timer fires: the instance is saved with
/// its command (the store is on another server), the publish fails. Once the broker is
/// back the runtime sends it by itself: no message, no timer, no restart needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_stranded_by_an_outage_is_sent_once_the_broker_is_back() {
    let mut broker = NatsServer::start();
    let records = NatsServer::start();
    let bus = connect(&broker.url()).await;
    let store = KvStore::open(connect(&records.url()).await.transport())
        .await
        .unwrap();
    let clock = VirtualClock::at(scenario_start());
    let runtime = Runtime::builder(watch(), bus.clone(), store)
        .clock(clock.clone())
        .tick(Duration::from_millis(20))
        .build()
        .unwrap();
    runtime.handle(&created("ord-1")).await.unwrap();
    let running = runtime.start().await.unwrap();

    broker.kill();
    clock.advance(GIVE_UP + Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runtime.waiting_outboxes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the publish never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let instance = runtime.instance("watch/ord-1").await.unwrap().unwrap();
    assert_eq!(instance.state, Watch::Done);
    assert_eq!(instance.outbox().len(), 1, "saved, not sent");

    broker.resume();
    let cancels = Collector::start(
        &bus,
        Subscription::new("test", "cancels").to::<CancelOrder>(),
    )
    .await;
    let sent = cancels.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(sent.len(), 1, "the stranded command was never sent");
    assert_eq!(sent[0].aggregate_id, "ord-1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runtime.waiting_outboxes() > 0
        || !runtime
            .instance("watch/ord-1")
            .await
            .unwrap()
            .unwrap()
            .outbox()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox was never emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await;
    cancels.stop().await;
}

/// Guards against: an outbox the broker refuses for good (here a command the service's
/// user may not publish) stops every round of re-sends, so the outboxes sorted after it
/// are never sent, and it is only logged at debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_refused_for_good_does_not_block_the_others() {
    const PASSWORD: &str = "s3cret-saga";
    let mut broker = NatsServer::builder()
        .user_denied("saga", PASSWORD, "order.cmd.confirm")
        .start();
    let records = NatsServer::start();
    let config = Config::new(broker.url())
        .user_and_password("saga", PASSWORD)
        .ack_timeout(Duration::from_secs(2));
    let bus = NatsBus::connect(config).await.unwrap();
    bus.provision().await.unwrap();
    let store = KvStore::open(connect(&records.url()).await.transport())
        .await
        .unwrap();
    let runtime = Runtime::builder(announce(), bus.clone(), store)
        .clock(VirtualClock::at(scenario_start()))
        .tick(Duration::from_millis(20))
        .build()
        .unwrap();
    let running = runtime.start().await.unwrap();
    // Started while the broker is away: each is saved with its command, which nothing but
    // the runtime's re-sends will send (no delivery of the message comes back).
    broker.kill();
    // `announce/ord-0-denied` sorts first among them.
    let orders = ["ord-0-denied", "ord-1", "ord-2", "ord-3", "ord-4"];
    for order in orders {
        let failed = runtime.handle(&created(order)).await.unwrap_err();
        assert!(matches!(failed, RuntimeError::Publish(_)), "{failed}");
    }
    assert_eq!(runtime.waiting_outboxes(), orders.len());

    broker.resume();
    let cancels = Collector::start(
        &bus,
        Subscription::new("test", "cancels").to::<CancelOrder>(),
    )
    .await;
    let sent = cancels.wait_for(4, Duration::from_secs(20)).await;
    let mut to: Vec<_> = sent.iter().map(|e| e.aggregate_id.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        ["ord-1", "ord-2", "ord-3", "ord-4"],
        "sent past the refused one"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The refused one is kept, and known as refused.
    while (runtime.waiting_outboxes(), runtime.refused_outboxes()) != (1, 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "waiting {}, refused {}",
            runtime.waiting_outboxes(),
            runtime.refused_outboxes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = runtime
        .instance("announce/ord-0-denied")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad.outbox().len(), 1, "its message is kept, not dropped");
    for order in &orders[1..] {
        let sent = runtime
            .instance(&format!("announce/{order}"))
            .await
            .unwrap();
        assert!(
            sent.unwrap().outbox().is_empty(),
            "{order}'s outbox emptied"
        );
    }
    running.shutdown().await;
    cancels.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instances_leave_after_their_retention_and_the_others_stay() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let store = KvStore::open(bus.transport())
        .await
        .unwrap()
        .retain_finished(Duration::from_secs(1))
        .unwrap();
    let runtime = Runtime::new(watch(), bus.clone(), store.clone());
    for order in ["ord-open", "ord-done"] {
        runtime.handle(&created(order)).await.unwrap();
    }
    let confirmed = Envelope::new("order-service", "ord-done", OrderConfirmed::example());
    runtime.handle(&confirmed.into_any()).await.unwrap();
    assert_eq!(state(&runtime, "ord-done").await, Some(Watch::Done));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.load("watch/ord-done").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still kept after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(&runtime, "ord-open").await, Some(Watch::Waiting));
    let err = store
        .clone()
        .retain_finished(Duration::from_millis(200))
        .unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
}

/// The runtime's metrics: each start and each finish counted once, by definition, version
/// and outcome, the instances waiting by state, and how late timers fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_finishes_and_timer_lag_are_measured() {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    let (telemetry, _guard) = a4co_testkit::telemetry::Telemetry::install();
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let store = KvStore::open(bus.transport()).await.unwrap();
    let runtime = Runtime::builder(watch(), bus.clone(), store)
        .clock(clock.clone())
        .tick(Duration::from_millis(10))
        .census_every(Duration::from_millis(20))
        .build()
        .unwrap();
    for order in ["ord-1", "ord-2", "ord-3"] {
        runtime.handle(&created(order)).await.unwrap();
    }
    // A redelivered start is not a second start.
    runtime.handle(&created("ord-1")).await.unwrap();
    let confirmed = Envelope::new("order-service", "ord-1", OrderConfirmed::example()).into_any();
    runtime.handle(&confirmed).await.unwrap();
    // Two wait, counted from the store; a started runtime puts the count on the gauge.
    assert_eq!(
        runtime.census().await.unwrap(),
        std::collections::BTreeMap::from([("waiting", 2)])
    );
    let running = runtime.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let exported = telemetry.exported_metrics();
        let waiting = exported
            .iter()
            .flat_map(|r| r.scope_metrics())
            .flat_map(|s| s.metrics())
            .filter(|m| m.name() == "a4co_saga_instances_waiting")
            .find_map(|m| match m.data() {
                AggregatedMetrics::U64(MetricData::Gauge(g)) => g
                    .data_points()
                    .find(|p| p.attributes().any(|kv| kv.value.as_str() == "waiting"))
                    .map(|p| p.value()),
                _ => None,
            });
        if waiting == Some(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
    // What follows reads the metrics as exported after the timers fired.
    telemetry.metrics.reset();
    clock.advance(GIVE_UP + Duration::from_secs(5));
    assert_eq!(runtime.fire_due_timers().await.unwrap(), 2);
    assert_eq!(
        runtime.census().await.unwrap(),
        std::collections::BTreeMap::from([("waiting", 0)])
    );

    let exported = telemetry.exported_metrics();
    let metrics: Vec<_> = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .collect();
    let counter = |name: &str| -> Vec<(Vec<String>, u64)> {
        let metric = metrics
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("{name} is not a u64 sum")
        };
        sum.data_points()
            .map(|p| {
                let mut labels: Vec<String> = p
                    .attributes()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                labels.sort();
                (labels, p.value())
            })
            .collect()
    };
    assert_eq!(
        counter("a4co_saga_started"),
        [(vec!["saga=watch".to_owned(), "version=1".to_owned()], 3)]
    );
    assert_eq!(
        counter("a4co_saga_finished"),
        [(
            vec![
                "outcome=completed".to_owned(),
                "saga=watch".to_owned(),
                "version=1".to_owned()
            ],
            3
        )]
    );
    let lag = metrics
        .iter()
        .find(|m| m.name() == "a4co_saga_timer_lag")
        .expect("the timer lag histogram");
    assert_eq!(lag.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = lag.data() else {
        panic!("not an f64 histogram")
    };
    let point = histogram.data_points().next().expect("a data point");
    assert_eq!(point.count(), 2, "two timers fired");
    assert!(
        (point.sum() - 10.0).abs() < 0.01,
        "5 s late each: {}",
        point.sum()
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "lowercase")]
enum Stage {
    Open,
    Confirmed,
    #[state(final)]
    Done,
}

/// Open, then confirmed, then done when its minute is up (whichever state it is in).
fn stages() -> Definition<(), Stage> {
    Definition::<(), Stage>::builder("stages", "order-service")
        .starts_with::<OrderCreated>()
        .to(Stage::Open, |step, _| step.schedule("give-up", GIVE_UP))
        .on::<OrderConfirmed>(Stage::Open)
        .to(Stage::Confirmed, |_, _| {})
        .on_timeout(Stage::Open, "give-up")
        .to(Stage::Done, |_| {})
        .on_timeout(Stage::Confirmed, "give-up")
        .to(Stage::Done, |_| {})
        .build()
        .unwrap()
}

/// A [`KvStore`] that counts the records it hands out whole and one by one, and can hide
/// its index of waiting instances.
#[derive(Clone)]
struct Counting {
    inner: KvStore,
    indexed: bool,
    read_whole: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    loaded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counting {
    fn reads(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.read_whole.load(SeqCst), self.loaded.load(SeqCst))
    }
}

impl a4co_saga::Store for Counting {
    async fn load(&self, key: &str) -> Result<Option<a4co_saga::store::Stored>, StoreError> {
        self.loaded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load(key).await
    }
    async fn save(
        &self,
        key: &str,
        record: bytes::Bytes,
        expected: Option<u64>,
        index: Index,
    ) -> Result<u64, StoreError> {
        self.inner.save(key, record, expected, index).await
    }
    async fn due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<a4co_saga::store::Due>, StoreError> {
        self.inner.due(now).await
    }
    async fn fired(
        &self,
        due: &a4co_saga::store::Due,
        next: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        self.inner.fired(due, next).await
    }
    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.inner.pending().await
    }
    async fn put_aside(&self, aside: a4co_saga::store::SetAside) -> Result<bool, StoreError> {
        self.inner.put_aside(aside).await
    }
    async fn set_aside(&self) -> Result<Vec<a4co_saga::store::SetAside>, StoreError> {
        self.inner.set_aside().await
    }
    async fn records(&self) -> Result<Vec<bytes::Bytes>, StoreError> {
        let records = self.inner.records().await?;
        self.read_whole
            .fetch_add(records.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(records)
    }
    async fn waiting(&self, saga: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        if self.indexed {
            self.inner.waiting(saga).await
        } else {
            Ok(None)
        }
    }
}

/// Guards against: the census loaded every record of the store, finished ones included, on
/// every replica every minute: its cost followed the history, not the work. It now reads
/// the index of waiting instances only, and loads a record only when that index lists an
/// instance under two states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_reads_the_waiting_instances_only() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let store = Counting {
        inner: KvStore::open(bus.transport()).await.unwrap(),
        indexed: true,
        read_whole: std::sync::Arc::default(),
        loaded: std::sync::Arc::default(),
    };
    let runtime = Runtime::builder(stages(), bus.clone(), store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let confirmed =
        |order: &str| Envelope::new("order-service", order, OrderConfirmed::example()).into_any();
    for n in 0..30 {
        let order = format!("ord-old-{n}");
        runtime.handle(&created(&order)).await.unwrap();
        if n % 3 == 0 {
            runtime.handle(&confirmed(&order)).await.unwrap();
        }
    }
    let census = |open: u64, confirmed: u64| {
        std::collections::BTreeMap::from([("confirmed", confirmed), ("open", open)])
    };
    assert_eq!(runtime.census().await.unwrap(), census(20, 10));
    // All 30 finish; three more start, two of them confirmed.
    clock.advance(GIVE_UP + Duration::from_secs(1));
    assert_eq!(runtime.fire_due_timers().await.unwrap(), 30);
    for order in ["ord-new-0", "ord-new-1", "ord-new-2"] {
        runtime.handle(&created(order)).await.unwrap();
    }
    for order in ["ord-new-1", "ord-new-2"] {
        runtime.handle(&confirmed(order)).await.unwrap();
    }
    let loaded_before = store.reads().1;
    assert_eq!(runtime.census().await.unwrap(), census(1, 2));
    assert_eq!(
        store.reads(),
        (0, loaded_before),
        "(records read whole, records loaded): the census read none"
    );

    // An instance listed under two states (a save that lost its race after indexing its
    // new state) is decided by its record: one load.
    let key = "stages/ord-new-1";
    let stored = store.inner.load(key).await.unwrap().unwrap();
    let stale = Index {
        waiting: Some("open"),
        ..Index::default()
    };
    store
        .inner
        .save(key, stored.record, Some(stored.revision), stale)
        .await
        .unwrap();
    assert_eq!(runtime.census().await.unwrap(), census(1, 2));
    assert_eq!(store.reads(), (0, loaded_before + 1));

    // A store without the index is read whole, to the same count.
    let unindexed = Counting {
        indexed: false,
        ..store.clone()
    };
    let runtime = Runtime::builder(stages(), bus.clone(), unindexed.clone())
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(runtime.census().await.unwrap(), census(1, 2));
    assert_eq!(
        unindexed.reads().0,
        33,
        "every record, finished ones included"
    );
}

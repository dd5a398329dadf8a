//! The marketplace on a 3-node JetStream cluster with every stream and bucket at three
//! replicas: a node is SIGKILLed in the middle of a load of orders and restarted, first the
//! leader of the ORDERS stream, then a node that leads nothing of it. Every order must end
//! in exactly one final state, with stock and charges adding up in the services' own
//! records (not in the demo's counters).

// A failing unwrap is a failing test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use a4co_events::Money;
use a4co_events::bus::nats::Config;
use a4co_events::bus::transport::Transport as _;
use a4co_events::catalog::order::OrderStatus;
use a4co_events::service::AnyBus;
use a4co_http::auth::Secret;
use a4co_testkit::nats::NatsCluster;
use futures::{StreamExt as _, TryStreamExt as _};
use inventory_service::ProductDetails;
use marketplace_demo::{Marketplace, Settings};
use payment_service::{Charge, Status};
use serde_json::json;

const PRODUCTS: [&str; 3] = ["vase", "bowl", "jug"];
const SHELF: u32 = 200;
/// Orders per phase; each phase loses a node a third of the way in.
const PER_PHASE: usize = 60;

async fn nats_bus(cluster: &NatsCluster) -> AnyBus {
    // Right after start the cluster may still be electing its meta leader.
    let mut last = None;
    for _ in 0..100 {
        let config = Config::new(cluster.url()).name("cluster-e2e").replicas(3);
        match AnyBus::open(Some(config)).await {
            Ok(bus) => return bus,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the cluster never took the streams: {last:?}");
}

/// Every stream of the account (the KV buckets are streams `KV_<bucket>`), with its replicas.
async fn replicas(bus: &AnyBus) -> BTreeMap<String, usize> {
    let AnyBus::Nats(nats) = bus else {
        panic!("not on NATS")
    };
    let js = nats.transport().jetstream();
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        out.insert(name, info.config.num_replicas);
    }
    out
}

fn body(customer: &str, product: &str, units: u32, method: &str) -> serde_json::Value {
    json!({
        "customerId": customer,
        "items": [{"productId": product, "quantity": units}],
        "paymentMethod": "card",
        "paymentMethodId": method,
        "fulfillment": {"method": "pickup"},
    })
}

/// An outside client of order-service as a careful caller builds one for this: no circuit
/// breaker of its own (the demo's `api` has one, which a node loss opens for 30 s and which
/// then fails fast whatever the service could do), and room for a slow answer while
/// JetStream elects new leaders.
fn customer(market: &Marketplace) -> a4co_http::Client {
    a4co_http::Client::builder("order-service", "http://order-service")
        .in_process(market.orders.router())
        .retry(a4co_http::retry::never())
        .breaker(None)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Places order `n` as a careful client does: the same Idempotency-Key on every try,
/// tried again while the service answers 503 or does not answer.
async fn place(api: &a4co_http::Client, n: usize) -> (String, &'static str, u32) {
    let product = PRODUCTS[n % PRODUCTS.len()];
    let units = 1 + u32::try_from(n % 2).unwrap_or(0);
    let method = if n % 7 == 3 {
        "pm-declined-1"
    } else {
        "pm-card-1"
    };
    let key = format!("cluster-{n}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = api
            .post("/api/v1/orders")
            .header("Idempotency-Key", &key)
            .json(&body(&format!("cust-{n}"), product, units, method))
            .send()
            .await;
        match answer {
            Ok(response) => {
                let order: serde_json::Value = response.json().unwrap_or_default();
                let id = order["orderId"].as_str().unwrap_or_default().to_owned();
                assert!(!id.is_empty(), "order {n}: {order}");
                return (id, product, units);
            }
            Err(e) if matches!(e.status(), Some(503 | 409) | None) => {
                // 409: the first try with this key is still under way.
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "order {n} never placed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("order {n} refused: {e}"),
        }
    }
}

type Cluster = Arc<std::sync::Mutex<NatsCluster>>;

/// Runs `f` on the cluster off the async threads (killing and restarting block).
async fn on_cluster<T: Send + 'static>(
    cluster: &Cluster,
    f: impl FnOnce(&mut NatsCluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || f(&mut cluster.lock().unwrap()))
        .await
        .unwrap()
}

/// Places `range`, 6 at once; node `victim` is SIGKILLed once a third are placed and
/// restarted once two thirds are.
async fn load(
    market: &Marketplace,
    range: std::ops::Range<usize>,
    cluster: &Cluster,
    victim: usize,
) -> Vec<(String, &'static str, u32)> {
    let total = range.len();
    let api = customer(market);
    let placed = Arc::new(AtomicUsize::new(0));
    let (third, two_thirds) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let orders = futures::stream::iter(range)
        .map(|n| {
            let placed = placed.clone();
            let (third, two_thirds, api) = (&third, &two_thirds, &api);
            async move {
                let order = place(api, n).await;
                let count = placed.fetch_add(1, Ordering::SeqCst) + 1;
                if count == total / 3 {
                    third.notify_one();
                }
                if count == 2 * total / 3 {
                    two_thirds.notify_one();
                }
                order
            }
        })
        .buffer_unordered(6)
        .collect::<Vec<_>>();
    let started = std::time::Instant::now();
    let crash = async {
        third.notified().await;
        on_cluster(cluster, move |c| c.kill(victim)).await;
        eprintln!("  {:>6.1?}: n{} killed", started.elapsed(), victim + 1);
        two_thirds.notified().await;
        on_cluster(cluster, move |c| c.resume(victim)).await;
        eprintln!("  {:>6.1?}: n{} back", started.elapsed(), victim + 1);
    };
    let (orders, ()) = tokio::join!(orders, crash);
    eprintln!("  {:>6.1?}: all {total} placed", started.elapsed());
    orders
}

/// Waits until `id` is confirmed or cancelled in the order service's records.
async fn final_status(market: &Marketplace, id: &str) -> OrderStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(order)) = market.orders.order(id).await
            && order.status != OrderStatus::Pending
        {
            return order.status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{id} never finished; {}", dead_letters(market).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the dead-letter stream holds, one line per letter: why an order may have stalled.
async fn dead_letters(market: &Marketplace) -> String {
    let AnyBus::Nats(nats) = &market.bus else {
        panic!("not on NATS")
    };
    let letters = a4co_events::bus::dlq::DeadLetters::new(nats.transport().clone())
        .list(&a4co_events::bus::dlq::Filter::default())
        .await;
    match letters {
        Ok(letters) => {
            let lines: Vec<String> = letters
                .iter()
                .map(|(seq, l)| {
                    format!(
                        "\n  {seq}: {} {} after {} deliveries: {}",
                        l.consumer, l.subject, l.delivered, l.reason
                    )
                })
                .collect();
            format!("{} dead letters:{}", lines.len(), lines.concat())
        }
        Err(e) => format!("the dead letters could not be read: {e}"),
    }
}

/// The final events (`order.confirmed`, `order.cancelled`) stored per order, counted by
/// distinct event id.
async fn final_events(bus: &AnyBus) -> HashMap<String, Vec<String>> {
    let AnyBus::Nats(nats) = bus else {
        panic!("not on NATS")
    };
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut from = 1;
    loop {
        let batch = nats
            .transport()
            .read_stream("ORDERS", from, 500)
            .await
            .unwrap();
        let Some((last, _, _)) = batch.last() else {
            break;
        };
        from = last + 1;
        for (_, message, _) in batch {
            if message.subject != "order.confirmed" && message.subject != "order.cancelled" {
                continue;
            }
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let id = body["eventId"].as_str().unwrap_or_default().to_owned();
            if seen.insert(id) {
                out.entry(body["aggregateId"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(message.subject);
            }
        }
    }
    out
}

/// The books of every order placed: one final state each, stock and money adding up.
async fn check_books(market: &Marketplace, placed: &[(String, &'static str, u32)]) {
    let mut sold: BTreeMap<&str, u32> = BTreeMap::new();
    let (mut confirmed, mut cancelled) = (0, 0);
    let mut statuses = Vec::new();
    for (id, _, _) in placed {
        statuses.push(final_status(market, id).await);
    }
    // The final event is published after the record is saved: wait for each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = final_events(&market.bus).await;
        if placed.iter().all(|(id, _, _)| events.contains_key(id))
            || tokio::time::Instant::now() > deadline
        {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut refunded = 0;
    for ((id, product, units), status) in placed.iter().zip(statuses) {
        assert_eq!(
            events.get(id).map(Vec::len),
            Some(1),
            "{id} must have exactly one final event: {:?}",
            events.get(id)
        );
        let payment = market.payments.payment(id).await.unwrap();
        let charged = payment
            .as_ref()
            .is_some_and(|p| matches!(p.status, Status::Succeeded { .. }));
        let refund = payment.as_ref().and_then(|p| p.refund.as_ref());
        refunded += usize::from(refund.is_some());
        match status {
            OrderStatus::Confirmed => {
                confirmed += 1;
                *sold.entry(product).or_default() += units;
                assert!(charged && refund.is_none(), "{id} confirmed: {payment:?}");
                assert_eq!(events[id], ["order.confirmed"], "{id}");
            }
            OrderStatus::Cancelled => {
                cancelled += 1;
                assert!(
                    !charged || refund.is_some(),
                    "{id} cancelled but charged: {payment:?}"
                );
                assert_eq!(events[id], ["order.cancelled"], "{id}");
            }
            other => panic!("{id} ended {other:?}"),
        }
    }
    // The gateway keeps one answer per order: approvals are the confirmed orders and the
    // refunded ones, nothing else.
    let approved = market
        .payments
        .gateway_charges()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, c)| matches!(c, Charge::Approved { .. }))
        .count();
    assert_eq!(approved, confirmed + refunded, "gateway approvals");
    for product in PRODUCTS {
        let expected = SHELF - sold.get(product).copied().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let p = market.inventory.product(product).await.unwrap().unwrap();
            if (p.on_hand, p.reserved()) == (expected, 0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{product}: on hand {} (expected {expected}), reserved {}",
                p.on_hand,
                p.reserved()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(confirmed > 0 && cancelled > 0, "both paths ran");
    eprintln!(
        "{} orders: {confirmed} confirmed, {cancelled} cancelled ({refunded} refunded); sold {sold:?}",
        placed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_add_up_when_a_node_of_a_three_node_cluster_is_killed() {
    a4co_events::service::init("cluster-e2e", "warn", a4co_events::service::LogFormat::Text)
        .unwrap();
    let cluster = NatsCluster::start();
    let bus = nats_bus(&cluster).await;
    let mut settings = Settings::new(Secret::new("cluster-secret-cluster-secret-cluster").unwrap());
    settings.inventory.ack_wait = Duration::from_secs(5);
    let market = Marketplace::start(bus.clone(), settings).await.unwrap();
    for product in PRODUCTS {
        let details = ProductDetails::new(product, product, "art-1", "crafts", Money::eur(1000));
        market.inventory.put_product(details).await.unwrap();
        market
            .inventory
            .restock(product, SHELF, "cluster-e2e")
            .await
            .unwrap();
    }

    let streams = replicas(&bus).await;
    let buckets = streams.keys().filter(|s| s.starts_with("KV_")).count();
    assert!(
        buckets >= 7,
        "records, inboxes and saga buckets: {streams:?}"
    );
    assert!(
        streams.values().all(|r| *r == 3),
        "every stream and bucket at R3: {streams:?}"
    );

    // Phase 1: the leader of ORDERS dies a third of the way in, comes back at two thirds.
    let leader = cluster
        .stream_leader("ORDERS")
        .expect("ORDERS has a leader");
    let cluster: Cluster = Arc::new(std::sync::Mutex::new(cluster));
    let started = std::time::Instant::now();
    let mut placed = load(&market, 0..PER_PHASE, &cluster, leader).await;
    check_books(&market, &placed).await;
    eprintln!(
        "phase 1: killed n{} (leader of ORDERS); placed and settled in {:?}",
        leader + 1,
        started.elapsed()
    );

    // Phase 2: a node that does not lead ORDERS now.
    let leading = on_cluster(&cluster, |c| c.stream_leader("ORDERS")).await;
    let other = (0..3).find(|i| Some(*i) != leading).unwrap();
    let started = std::time::Instant::now();
    placed.extend(load(&market, PER_PHASE..2 * PER_PHASE, &cluster, other).await);
    check_books(&market, &placed).await;
    eprintln!(
        "phase 2: killed n{} (not leading ORDERS); placed and settled in {:?}",
        other + 1,
        started.elapsed()
    );
    market.stop().await;
}

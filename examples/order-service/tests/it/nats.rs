//! The fulfillment saga over a real nats-server: its paths with simulated participants,
//! two replicas on one stream, a timer across a restart, a crash between save and publish.

use std::collections::HashMap;
use std::time::Duration;

use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::bus::{Publisher, SubscriptionHandle};
use a4co_events::catalog::order::{OrderCreated, OrderItem};
use a4co_events::{Envelope, Message, Money};
use a4co_saga::nats::KvStore;
use a4co_saga::{Running, Runtime, VirtualClock};
use a4co_testkit::nats::NatsServer;
use a4co_testkit::saga::scenario_start;
use order_service::fulfillment::{self, Fulfillment, Phase};

use crate::participants::{Behaviour, Participants};

type Fr = Runtime<Fulfillment, Phase, NatsBus, KvStore>;

async fn connect(server: &NatsServer) -> NatsBus {
    let bus = NatsBus::connect(Config::new(server.url()).ack_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    bus.provision().await.unwrap();
    bus
}

async fn runtime(bus: &NatsBus, clock: &VirtualClock) -> Fr {
    runtime_ticking(bus, clock, Duration::from_millis(20)).await
}

async fn runtime_ticking(bus: &NatsBus, clock: &VirtualClock, tick: Duration) -> Fr {
    let store = KvStore::open(bus.transport()).await.unwrap();
    Runtime::builder(
        fulfillment::definition(fulfillment::Settings::default()).unwrap(),
        bus.clone(),
        store,
    )
    .clock(clock.clone())
    .tick(tick)
    .build()
    .unwrap()
}

fn order(id: &str, products: &[&str]) -> Envelope<OrderCreated> {
    let items = products
        .iter()
        .map(|p| OrderItem {
            product_id: (*p).to_owned(),
            artisan_id: "art-1".to_owned(),
            quantity: 2,
            unit_price: Money::eur(1000),
            product_name: (*p).to_owned(),
        })
        .collect();
    let data = OrderCreated {
        items,
        total_amount: Money::eur(2000 * i64::try_from(products.len()).unwrap()),
        ..OrderCreated::example()
    };
    Envelope::new("order-service", id, data)
}

fn stock(products: &[(&str, u32)]) -> HashMap<String, u32> {
    products
        .iter()
        .map(|(p, n)| ((*p).to_owned(), *n))
        .collect()
}

/// Waits until every saga of `orders` is in a final state, or fails naming the others.
async fn until_final(runtime: &Fr, orders: &[&str], what: &str) -> HashMap<String, Phase> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut states = HashMap::new();
        for o in orders {
            let id = format!("{}/{o}", fulfillment::NAME);
            if let Some(i) = runtime.instance(&id).await.unwrap() {
                states.insert((*o).to_owned(), i.state);
            }
        }
        let done = states.len() == orders.len()
            && states
                .values()
                .all(|s| matches!(s, Phase::Confirmed | Phase::Cancelled));
        if done {
            return states;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not all final after 30 s: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_state(runtime: &Fr, order: &str, state: Phase) {
    let id = format!("{}/{order}", fulfillment::NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = runtime.instance(&id).await.unwrap().map(|i| i.state);
        if now == Some(state) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{order} never reached {state:?} (last: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(handles: Vec<SubscriptionHandle>, running: Vec<Running>) {
    for r in running {
        r.shutdown().await;
    }
    for h in handles {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_over_nats() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let participants = Participants::new(Behaviour {
        stock: stock(&[("oil", 100), ("bowl", 100), ("rare", 1)]),
        declined: ["ord-declined".to_owned()].into(),
        silent_payments: ["ord-silent".to_owned()].into(),
        ..Behaviour::default()
    });
    let handles = participants.start(&bus).await.unwrap();
    let saga = runtime(&bus, &clock).await;
    let running = saga.start().await.unwrap();

    let happy = order("ord-ok", &["oil", "bowl"]);
    for o in [
        happy.clone(),
        order("ord-out", &["oil", "rare"]), // rare: 2 wanted, 1 on hand
        order("ord-declined", &["oil", "bowl"]),
    ] {
        bus.publish(&o).await.unwrap();
    }
    // The same order again: stored once by the broker; and under a new id: one saga still.
    assert!(bus.publish(&happy).await.unwrap().duplicate);
    bus.publish(&order("ord-ok", &["oil", "bowl"]))
        .await
        .unwrap();
    let states = until_final(&saga, &["ord-ok", "ord-out", "ord-declined"], "paths").await;
    assert_eq!(states["ord-ok"], Phase::Confirmed);
    assert_eq!(states["ord-out"], Phase::Cancelled);
    assert_eq!(states["ord-declined"], Phase::Cancelled);

    // A payment never answered (the virtual clock moves for every saga: the others are done).
    bus.publish(&order("ord-silent", &["bowl"])).await.unwrap();
    until_state(&saga, "ord-silent", Phase::Paying).await;
    // In two moves, so the timer index is listed second by second (a gap over five minutes
    // lists it whole).
    clock.advance(Duration::from_secs(200));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 0, "nothing due yet");
    clock.advance(Duration::from_secs(101));
    until_state(&saga, "ord-silent", Phase::AwaitingLatePayment).await;

    // Give late duplicates a moment to show up, then read the ledger.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = participants.ledger();
    assert_eq!(ledger.confirmed.get("ord-ok"), Some(&1));
    assert_eq!(ledger.charged.get("ord-ok"), Some(&1));
    assert_eq!(
        ledger.reserved.get(&("ord-ok".into(), "oil".into())),
        Some(&2),
        "one saga for the order published twice"
    );
    assert_eq!(
        ledger.cancelled.get("ord-out"),
        Some(&vec!["inventory-unavailable".to_owned()])
    );
    assert_eq!(ledger.released.get("res-ord-out-oil"), Some(&1));
    assert_eq!(
        ledger.cancelled.get("ord-declined"),
        Some(&vec!["payment-failed".to_owned()])
    );
    assert_eq!(ledger.released.get("res-ord-declined-oil"), Some(&1));
    assert_eq!(ledger.released.get("res-ord-declined-bowl"), Some(&1));
    assert_eq!(ledger.charged.get("ord-declined"), None);
    assert_eq!(
        ledger.cancelled.get("ord-silent"),
        Some(&vec!["payment-timeout".to_owned()])
    );
    assert_eq!(ledger.released.get("res-ord-silent-bowl"), Some(&1));
    assert!(ledger.refunded.is_empty());
    // Stock: only the confirmed order keeps its units.
    assert_eq!(ledger.stock["oil"], 98);
    assert_eq!(ledger.stock["bowl"], 98);
    assert_eq!(ledger.stock["rare"], 1);
    stop(handles, vec![running]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compensating_paths_over_nats() {
    use a4co_events::catalog::order::{CancellationReason, OrderCancelled};
    use a4co_events::catalog::payment::PaymentSucceeded;

    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let participants = Participants::new(Behaviour {
        stock: stock(&[("oil", 100), ("bowl", 100)]),
        silent_payments: ["ord-late".to_owned(), "ord-very-late".to_owned()].into(),
        silent_confirms: ["ord-regret".to_owned()].into(),
        silent_stock: ["slow".to_owned()].into(),
        ..Behaviour::default()
    });
    let handles = participants.start(&bus).await.unwrap();
    let saga = runtime(&bus, &clock).await;
    let running = saga.start().await.unwrap();

    // The customer cancels after paying: refund, then release.
    bus.publish(&order("ord-regret", &["oil", "bowl"]))
        .await
        .unwrap();
    until_state(&saga, "ord-regret", Phase::Confirming).await;
    let regret = OrderCancelled {
        reason: CancellationReason::CustomerRequest,
        cancelled_by: "user-4711".to_owned(),
        ..OrderCancelled::example()
    };
    bus.publish(&Envelope::new("order-service", "ord-regret", regret))
        .await
        .unwrap();
    until_state(&saga, "ord-regret", Phase::Cancelled).await;

    // A payment that answers after its timeout is refunded.
    bus.publish(&order("ord-late", &["oil"])).await.unwrap();
    until_state(&saga, "ord-late", Phase::Paying).await;
    clock.advance(Duration::from_secs(301));
    until_state(&saga, "ord-late", Phase::AwaitingLatePayment).await;
    let late = PaymentSucceeded {
        order_id: "ord-late".to_owned(),
        transaction_id: "txn-ord-late".to_owned(),
        ..PaymentSucceeded::example()
    };
    bus.publish(&Envelope::new("payment-service", "pay-ord-late", late))
        .await
        .unwrap();
    until_state(&saga, "ord-late", Phase::Cancelled).await;

    // One that answers days after the late-payment window closed: refunded all the same,
    // once, by the finished saga.
    bus.publish(&order("ord-very-late", &["bowl"]))
        .await
        .unwrap();
    until_state(&saga, "ord-very-late", Phase::Paying).await;
    clock.advance(Duration::from_secs(301));
    until_state(&saga, "ord-very-late", Phase::AwaitingLatePayment).await;
    clock.advance(Duration::from_secs(3601));
    until_state(&saga, "ord-very-late", Phase::Cancelled).await;
    clock.advance(Duration::from_secs(3 * 24 * 3600));
    let very_late = PaymentSucceeded {
        order_id: "ord-very-late".to_owned(),
        transaction_id: "txn-ord-very-late".to_owned(),
        ..PaymentSucceeded::example()
    };
    for _ in 0..2 {
        bus.publish(&Envelope::new(
            "payment-service",
            "pay-ord-very-late",
            very_late.clone(),
        ))
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !participants.ledger().refunded.contains_key("ord-very-late") {
        assert!(std::time::Instant::now() < deadline, "never refunded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Inventory never answers one line: the stock timer cancels, the other line is released.
    bus.publish(&order("ord-slow", &["oil", "slow"]))
        .await
        .unwrap();
    let id = format!("{}/ord-slow", fulfillment::NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !participants
        .ledger()
        .reserved
        .contains_key(&("ord-slow".into(), "oil".into()))
        || saga
            .instance(&id)
            .await
            .unwrap()
            .is_none_or(|i| i.compensations().is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the oil line was never reserved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clock.advance(Duration::from_secs(121));
    until_state(&saga, "ord-slow", Phase::Cancelled).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = participants.ledger();
    assert_eq!(ledger.refunded.get("ord-regret"), Some(&1));
    assert_eq!(ledger.released.get("res-ord-regret-oil"), Some(&1));
    assert_eq!(ledger.released.get("res-ord-regret-bowl"), Some(&1));
    assert_eq!(
        ledger.cancelled.get("ord-regret"),
        None,
        "the order service cancelled it"
    );
    assert_eq!(ledger.refunded.get("ord-late"), Some(&1));
    assert_eq!(
        ledger.refunded.get("ord-very-late"),
        Some(&1),
        "announced twice, refunded once"
    );
    assert_eq!(
        ledger.cancelled.get("ord-late"),
        Some(&vec!["payment-timeout".to_owned()])
    );
    assert_eq!(ledger.released.get("res-ord-slow-oil"), Some(&1));
    assert_eq!(
        ledger.cancelled.get("ord-slow"),
        Some(&vec!["inventory-unavailable".to_owned()])
    );
    assert_eq!(ledger.stock["oil"], 100, "every unit came back");
    assert_eq!(ledger.stock["bowl"], 100, "every unit came back");
    stop(handles, vec![running]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_without_double_commands() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let participants = Participants::new(Behaviour {
        stock: stock(&[("p1", 10_000), ("p2", 10_000), ("p3", 10_000)]),
        ..Behaviour::default()
    });
    let handles = participants.start(&bus).await.unwrap();
    let (one, two) = (connect(&server).await, connect(&server).await);
    let (a, b) = (runtime(&one, &clock).await, runtime(&two, &clock).await);
    let running = vec![a.start().await.unwrap(), b.start().await.unwrap()];

    const N: usize = 40;
    let ids: Vec<String> = (0..N).map(|n| format!("ord-{n}")).collect();
    for id in &ids {
        bus.publish(&order(id, &["p1", "p2", "p3"])).await.unwrap();
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let states = until_final(&a, &refs, "replicas").await;
    assert!(
        states.values().all(|s| *s == Phase::Confirmed),
        "{states:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = participants.ledger();
    for id in &ids {
        assert_eq!(ledger.charged.get(id), Some(&1), "{id} charged once");
        assert_eq!(ledger.confirmed.get(id), Some(&1), "{id} confirmed once");
        for p in ["p1", "p2", "p3"] {
            assert_eq!(
                ledger.reserved.get(&(id.clone(), p.to_owned())),
                Some(&2),
                "{id}/{p}"
            );
        }
    }
    assert!(
        ledger.released.is_empty() && ledger.cancelled.is_empty() && ledger.refunded.is_empty()
    );
    stop(handles, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_survives_a_restart_and_fires_once() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let participants = Participants::new(Behaviour {
        stock: stock(&[("p1", 10)]),
        silent_payments: ["ord-t".to_owned()].into(),
        ..Behaviour::default()
    });
    let handles = participants.start(&bus).await.unwrap();
    let first = runtime(&bus, &clock).await;
    let crashed = first.start().await.unwrap();
    bus.publish(&order("ord-t", &["p1"])).await.unwrap();
    until_state(&first, "ord-t", Phase::Paying).await;
    crashed.abort();

    // The payment timer runs out while no runtime is up; two come back.
    clock.advance(Duration::from_secs(600));
    let (one, two) = (connect(&server).await, connect(&server).await);
    let (a, b) = (runtime(&one, &clock).await, runtime(&two, &clock).await);
    let running = vec![a.start().await.unwrap(), b.start().await.unwrap()];
    until_state(&a, "ord-t", Phase::AwaitingLatePayment).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = participants.ledger();
    assert_eq!(
        ledger.cancelled.get("ord-t"),
        Some(&vec!["payment-timeout".to_owned()]),
        "fired once"
    );
    assert_eq!(ledger.released.get("res-ord-t-p1"), Some(&1));
    stop(handles, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_save_and_publish_is_recovered_on_restart() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let participants = Participants::new(Behaviour {
        stock: stock(&[("p1", 10), ("p2", 10)]),
        ..Behaviour::default()
    });
    let handles = participants.start(&bus).await.unwrap();
    let first = runtime(&bus, &clock).await;
    // It dies before publishing anything, however often the message comes back.
    first.lose_next_publishes(u32::MAX);
    let crashed = first.start().await.unwrap();
    bus.publish(&order("ord-c", &["p1", "p2"])).await.unwrap();
    let id = format!("{}/ord-c", fulfillment::NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while first
        .instance(&id)
        .await
        .unwrap()
        .is_none_or(|i| i.outbox().len() != 2)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance was never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crashed.abort();
    assert!(
        participants.ledger().reserved.is_empty(),
        "nothing was published before the crash"
    );

    let second = runtime(&bus, &clock).await;
    let running = second.start().await.unwrap();
    let states = until_final(&second, &["ord-c"], "after the restart").await;
    assert_eq!(states["ord-c"], Phase::Confirmed);
    let ledger = participants.ledger();
    assert_eq!(ledger.reserved.len(), 2);
    assert_eq!(ledger.charged.get("ord-c"), Some(&1));
    stop(handles, vec![running]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instances_age_out_after_the_retention() {
    use a4co_saga::Store as _;
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let store = KvStore::open_with(bus.transport(), Duration::from_secs(1))
        .await
        .unwrap();
    let index = a4co_saga::store::Index::default();
    store
        .save("s/old", bytes::Bytes::from_static(b"{}"), None, index)
        .await
        .unwrap();
    assert!(store.load("s/old").await.unwrap().is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.load("s/old").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still there after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = KvStore::open_with(bus.transport(), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
}

/// Two replicas take turns on one saga: each acts on what it saved last, a guess the
/// store's compare-and-swap checks. A stale guess is reloaded, never acted on: a save
/// against it conflicts, and a message it does not expect is looked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_taking_turns_never_act_on_a_stale_copy() {
    use crate::support::{BOWL, OIL, ORDER, SAGA, order_created, paid, reserved};
    use a4co_saga::Applied;

    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    let (a, b) = (runtime(&bus, &clock).await, runtime(&bus, &clock).await);

    let (oil, payment) = (reserved(ORDER, OIL), paid(ORDER));
    assert_eq!(
        a.handle(&order_created(ORDER)).await.unwrap(),
        Applied::Changed
    );
    assert_eq!(b.handle(&oil).await.unwrap(), Applied::Changed);
    // `a` last saved the saga before the oil was reserved: its save conflicts, it reloads.
    assert_eq!(
        a.handle(&reserved(ORDER, BOWL)).await.unwrap(),
        Applied::Changed
    );
    let paying = a.instance(SAGA).await.unwrap().unwrap();
    assert_eq!(paying.state, Phase::Paying);
    assert!(
        paying
            .data
            .lines
            .iter()
            .all(|l| matches!(l.status, fulfillment::LineStatus::Reserved { .. })),
        "both lines reserved: {paying:?}"
    );
    // `b` last saw the saga reserving, where a payment is unexpected: it looks again.
    assert_eq!(b.handle(&payment).await.unwrap(), Applied::Changed);
    assert_eq!(
        b.instance(SAGA).await.unwrap().unwrap().state,
        Phase::Confirming
    );
    // Redeliveries on either replica change nothing.
    assert_eq!(a.handle(&payment).await.unwrap(), Applied::Duplicate);
    assert_eq!(b.handle(&oil).await.unwrap(), Applied::Duplicate);
}

/// A started runtime publishes at once but leaves the published messages in the record
/// for the instance's next save; what no save took is emptied by its timer task, at the
/// latest when it shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_runtime_empties_published_outboxes_later() {
    use a4co_events::bus::Subscription;
    use a4co_events::catalog::inventory::ReserveStock;
    use a4co_testkit::bus::Collector;

    let server = NatsServer::start();
    let bus = connect(&server).await;
    let clock = VirtualClock::at(scenario_start());
    // No tick during the test: only the shutdown empties the outbox.
    let saga = runtime_ticking(&bus, &clock, Duration::from_secs(3600)).await;
    let commands = Collector::start(
        &bus,
        Subscription::new("test-inventory", "reserve").to::<ReserveStock>(),
    )
    .await;
    let running = saga.start().await.unwrap();
    bus.publish(&order("ord-d", &["p1", "p2"])).await.unwrap();
    assert_eq!(
        commands.wait_for(2, Duration::from_secs(10)).await.len(),
        2,
        "both reservations were published"
    );
    let id = format!("{}/ord-d", fulfillment::NAME);
    let saved = saga.instance(&id).await.unwrap().unwrap();
    assert_eq!(
        saved.outbox().len(),
        2,
        "published, still listed until a save of the instance takes them out"
    );
    running.shutdown().await;
    let flushed = saga.instance(&id).await.unwrap().unwrap();
    assert!(flushed.outbox().is_empty(), "{flushed:?}");
    assert_eq!(flushed.state, Phase::Reserving);

    // Running, with ticks: emptied about a second after publishing, without a next save.
    let saga = runtime_ticking(&bus, &clock, Duration::from_millis(50)).await;
    let running = saga.start().await.unwrap();
    bus.publish(&order("ord-e", &["p1"])).await.unwrap();
    let id = format!("{}/ord-e", fulfillment::NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saved = saga.instance(&id).await.unwrap();
        if saved.as_ref().is_some_and(|i| i.outbox().is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never emptied: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(commands.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    running.shutdown().await;
    commands.stop().await;
}

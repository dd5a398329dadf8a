//! inventory-service from the outside: its REST contract, and its answers to the saga's
//! commands in memory and over a real nats-server.

use std::time::Duration;

use a4co_events::bus::Subscription;
use a4co_events::bus::{Publisher, Subscriber};
use a4co_events::catalog::inventory::{
    InventoryAdjusted, LowStockWarning, ReleaseReason, ReleaseStock, ReserveStock, StockReleased,
    StockReservationFailed, StockReserved,
};
use a4co_events::catalog::order::OrderConfirmed;
use a4co_events::catalog::payment::PaymentSucceeded;
use a4co_events::service::{AnyBus, Records};
use a4co_events::{AnyMessage, Envelope, Message, Money};
use a4co_http::Client;
use a4co_http::auth::Verifier;
use a4co_testkit::bus::{Collector, RecordingBus};
use a4co_testkit::http::{in_process, test_secret};
use a4co_testkit::nats::NatsServer;
use chrono::Utc;
use inventory_service::http::{Availability, CheckResponse, StockView};
use inventory_service::{Inventory, Product, ProductDetails, Settings};
use serde_json::json;

fn client(
    inventory: &Inventory<impl Publisher + a4co_events::bus::Subscriber>,
    permissions: &[&str],
) -> Client {
    let router = inventory.router(&Verifier::new(&test_secret()));
    in_process("inventory-service", router, "order-service", permissions)
}

async fn seeded(bus: RecordingBus, units: u32) -> Inventory<RecordingBus> {
    let inventory = Inventory::new(bus, Records::memory(), Settings::default());
    shelve_bowls(&inventory, units).await;
    inventory
}

/// Puts the bowl in the catalog with `units` in stock.
async fn shelve_bowls<B: Publisher + Subscriber>(inventory: &Inventory<B>, units: u32) {
    inventory
        .put_product(ProductDetails::new(
            "bowl",
            "Cuenco verde",
            "art-tito",
            "ceramics",
            Money::eur(3400),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if units > 0 {
        inventory
            .restock("bowl", units, "test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn reserve(order: &str, units: u32) -> Envelope<ReserveStock> {
    let command = ReserveStock {
        order_id: order.to_owned(),
        quantity: units,
        expires_at: Utc::now() + chrono::Duration::minutes(30),
    };
    Envelope::new("order-service", "bowl", command)
}

/// The seeded product's record, as the service keeps it.
async fn bowl<B: Publisher + Subscriber>(inventory: &Inventory<B>) -> Product {
    inventory
        .product("bowl")
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no bowl"))
}

fn count<M: Message>(bus: &RecordingBus, pred: impl Fn(&Envelope<AnyMessage>) -> bool) -> usize {
    bus.all_published()
        .iter()
        .filter(|e| e.event_type() == M::TYPE && pred(e))
        .count()
}

#[tokio::test]
async fn rest_contract() {
    let bus = RecordingBus::new().await;
    let inventory = seeded(bus.clone(), 12).await;
    let reader = client(&inventory, &["inventory:read"]);
    let writer = client(&inventory, &["inventory:read", "inventory:write"]);

    let found: Availability = reader
        .get_json("/api/v1/inventory/availability/bowl")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (found.available, found.in_stock, found.unit_price),
        (12, true, Money::eur(3400))
    );

    let status =
        |r: Result<a4co_http::Response, a4co_http::Error>| r.err().and_then(|e| e.status());
    assert_eq!(
        status(
            reader
                .get("/api/v1/inventory/availability/nope")
                .send()
                .await
        ),
        Some(404)
    );
    assert_eq!(
        status(
            reader
                .get("/api/v1/inventory/availability/a.b")
                .send()
                .await
        ),
        Some(400)
    );
    assert_eq!(
        status(
            client(&inventory, &[])
                .get("/api/v1/inventory/bowl")
                .send()
                .await
        ),
        Some(401)
    );
    let forbidden = reader
        .post("/api/v1/inventory/bowl/adjust")
        .json(&json!({"quantity": 1, "reason": "restock"}))
        .send()
        .await;
    assert_eq!(status(forbidden), Some(403));

    let checked: CheckResponse = reader
        .post_json(
            "/api/v1/inventory/check-availability",
            &json!({"items": [{"productId": "bowl", "quantity": 12}, {"productId": "ghost", "quantity": 1}]}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!checked.all_available);
    assert!(checked.items[0].sufficient && !checked.items[1].known);
    for bad in [
        json!({"items": []}),
        json!({"items": [{"productId": "bowl", "quantity": 0}]}),
        json!({"items": "x"}),
    ] {
        let err = reader
            .post("/api/v1/inventory/check-availability")
            .json(&bad)
            .send()
            .await
            .err();
        assert_eq!(
            err.as_ref().and_then(a4co_http::Error::status),
            Some(400),
            "{bad}"
        );
        assert!(
            err.and_then(|e| e.body().map(str::to_owned))
                .is_some_and(|b| b.contains("invalid-request"))
        );
    }

    let removed_too_much = writer
        .post("/api/v1/inventory/bowl/adjust")
        .json(&json!({"quantity": -13, "reason": "damage"}))
        .send()
        .await;
    assert_eq!(status(removed_too_much), Some(409));
    let after: StockView = writer
        .post_json(
            "/api/v1/inventory/bowl/adjust",
            &json!({"quantity": -8, "reason": "damage", "notes": "kiln"}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((after.on_hand, after.available), (4, 4));
    let adjusted = bus
        .published::<InventoryAdjusted>()
        .matching(|e| e.data.adjustment_quantity == -8)
        .await;
    assert_eq!(
        adjusted.data.adjusted_by, "order-service",
        "who adjusted comes from the token"
    );
    let warning = bus.published::<LowStockWarning>().await;
    assert_eq!(
        (warning.data.current_stock, warning.data.warning_threshold),
        (4, 5)
    );

    let created: StockView = writer
        .put_json(
            "/api/v1/inventory/jar",
            &json!({"name": "Tarro", "artisanId": "art-tito", "category": "ceramics", "unitPrice": {"amountMinor": 900, "currency": "EUR"}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((created.product_id.as_str(), created.on_hand), ("jar", 0));
    let no_price = writer
        .put("/api/v1/inventory/jar")
        .json(&json!({"name": "Tarro", "artisanId": "art-tito", "category": "c", "unitPrice": {"amountMinor": 0, "currency": "EUR"}}))
        .send()
        .await;
    assert_eq!(status(no_price), Some(400));
}

#[tokio::test]
async fn reservations_are_made_once_whatever_the_redeliveries() {
    let bus = RecordingBus::new().await;
    let inventory = seeded(bus.clone(), 3).await;
    let workers = inventory.start().await.unwrap_or_else(|e| panic!("{e}"));

    let first = reserve("o-1", 2);
    bus.publish(&first).await.ok();
    let reserved = bus.published::<StockReserved>().await;
    assert_eq!(reserved.data.remaining_stock, 1);
    // The same command again (a redelivery past the dedup window has a new delivery, same
    // content) and a second command for the same order: still one hold.
    let again = reserve("o-1", 2);
    bus.publish(&again).await.ok();
    bus.published::<StockReserved>()
        .matching(move |e| e.metadata.causation_id == again.event_id.to_string())
        .await;
    let failed = reserve("o-2", 2);
    bus.publish(&failed).await.ok();
    let refused = bus.published::<StockReservationFailed>().await;
    assert_eq!(refused.data.failed_items[0].available_quantity, 1);
    let product = bowl(&inventory).await;
    assert_eq!((product.reserved(), product.available()), (2, 1));

    let release = ReleaseStock {
        order_id: "o-1".into(),
        reservation_id: reserved.data.reservation_id.clone(),
        reason: ReleaseReason::PaymentFailed,
    };
    bus.publish(&Envelope::new("order-service", "bowl", release.clone()))
        .await
        .ok();
    let released = bus.published::<StockReleased>().await;
    assert_eq!(
        (
            released.data.quantity_released,
            released.data.new_available_stock
        ),
        (2, 3)
    );
    // A release and a reserve arriving again after the release change nothing.
    bus.publish(&Envelope::new("order-service", "bowl", release))
        .await
        .ok();
    let late = reserve("o-1", 2);
    let late_id = late.event_id;
    bus.publish(&late).await.ok();
    // One consumer, in order per product: once the last is handled, so are the others.
    bus.consumed::<ReserveStock>()
        .matching(move |e| e.event_id == late_id)
        .await;
    assert_eq!(count::<StockReleased>(&bus, |_| true), 1);
    assert_eq!(
        count::<StockReserved>(&bus, |_| true),
        2,
        "the first answer and its repeat only"
    );
    let product = bowl(&inventory).await;
    assert_eq!((product.on_hand, product.available()), (3, 3));
    bus.assert_nothing_dead_lettered().await;
    workers.shutdown().await;
}

#[tokio::test]
async fn a_confirmed_order_keeps_its_units_and_a_lapsed_hold_comes_back() {
    let bus = RecordingBus::new().await;
    let inventory = seeded(bus.clone(), 10).await;
    let workers = inventory.start().await.unwrap_or_else(|e| panic!("{e}"));

    bus.publish(&reserve("o-kept", 4)).await.ok();
    let mut lapsing = reserve("o-lapsed", 3);
    lapsing.data.expires_at = Utc::now() - chrono::Duration::seconds(1);
    bus.publish(&lapsing).await.ok();
    bus.published::<StockReserved>()
        .matching(|e| e.data.order_id == "o-lapsed")
        .await;
    bus.published::<StockReserved>()
        .matching(|e| e.data.order_id == "o-kept")
        .await;

    let released = inventory
        .release_lapsed(Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(released, 1);
    let expired = bus.published::<StockReleased>().await;
    assert_eq!(
        (expired.data.order_id.as_str(), expired.data.reason),
        ("o-lapsed", ReleaseReason::ReservationExpired)
    );
    assert_eq!(inventory.release_lapsed(Utc::now()).await.ok(), Some(0));

    let confirmed = OrderConfirmed::example();
    bus.publish(&Envelope::new("order-service", "o-kept", confirmed))
        .await
        .ok();
    bus.consumed::<OrderConfirmed>().await;
    let product = bowl(&inventory).await;
    assert_eq!(
        (product.on_hand, product.reserved(), product.sold),
        (6, 0, 4)
    );
    // A confirmation of the order whose hold lapsed commits nothing and announces the
    // lapse again, so its saga can give the order up; a redelivery of it, not again.
    let late = Envelope::new("order-service", "o-lapsed", OrderConfirmed::example());
    bus.publish(&late).await.ok();
    let again = late.clone().with_event_id(a4co_events::EventId::new());
    let again_id = again.event_id;
    bus.publish(&again).await.ok();
    bus.consumed::<OrderConfirmed>()
        .matching(move |e| e.event_id == again_id)
        .await;
    let lapses: Vec<_> = bus
        .all_published()
        .into_iter()
        .filter_map(|e| e.downcast::<StockReleased>().ok())
        .map(|e| (e.data.order_id, e.data.reason))
        .collect();
    let lapse = ("o-lapsed".to_owned(), ReleaseReason::ReservationExpired);
    assert_eq!(lapses, [lapse.clone(), lapse]);
    let product = bowl(&inventory).await;
    assert_eq!((product.on_hand, product.sold), (6, 4), "nothing committed");
    workers.shutdown().await;
}

/// A server, the bus on it, the service's records, and the service with 10 bowls.
async fn on_nats() -> (NatsServer, AnyBus, Records, Inventory<AnyBus>) {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "inventory-test", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let records = Records::open(&bus, "inventory")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let inventory = Inventory::new(bus.clone(), records.clone(), Settings::default());
    shelve_bowls(&inventory, 10).await;
    (server, bus, records, inventory)
}

#[tokio::test]
async fn a_paid_orders_hold_outlives_its_ttl_and_a_late_confirmation_commits_it_over_nats() {
    let (_server, bus, _, inventory) = on_nats().await;
    let answers = Collector::start(
        &bus,
        Subscription::new("test", "answers")
            .to::<StockReserved>()
            .to::<StockReleased>(),
    )
    .await;
    let workers = inventory.start().await.unwrap_or_else(|e| panic!("{e}"));
    for (order, units) in [("o-paid", 4), ("o-unpaid", 3)] {
        bus.publish(&reserve(order, units))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(answers.wait_for(2, Duration::from_secs(20)).await.len(), 2);
    let paid = PaymentSucceeded {
        order_id: "o-paid".into(),
        ..PaymentSucceeded::example()
    };
    bus.publish(&Envelope::new("payment-service", "txn-o-paid", paid))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !bowl(&inventory).await.reservations["o-paid"].pinned {
        assert!(
            std::time::Instant::now() < deadline,
            "the paid hold was never pinned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both holds are past their 30 minutes: only the unpaid one lapses.
    let later = Utc::now() + chrono::Duration::minutes(31);
    assert_eq!(inventory.release_lapsed(later).await.ok(), Some(1));
    let seen = answers.wait_for(3, Duration::from_secs(20)).await;
    let lapsed: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.data {
            AnyMessage::StockReleased(r) => Some((r.order_id.as_str(), r.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(lapsed, [("o-unpaid", ReleaseReason::ReservationExpired)]);
    assert_eq!(inventory.release_lapsed(later).await.ok(), Some(0));

    // The paid order's confirmation comes late: its units are still there to commit.
    let confirmed = Envelope::new("order-service", "o-paid", OrderConfirmed::example());
    bus.publish(&confirmed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let product = bowl(&inventory).await;
        if product.sold == 4 {
            assert_eq!(
                (product.on_hand, product.reserved(), product.available()),
                (6, 0, 6),
                "the paid units left the stock; the lapsed ones came back"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never committed: {product:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.shutdown().await;
    answers.stop().await;
}

#[tokio::test]
async fn two_instances_on_nats_never_oversell_and_a_restart_loses_nothing() {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "inventory-test", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let open = || async {
        let records = Records::open(&bus, "inventory")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Inventory::new(bus.clone(), records, Settings::default())
    };
    let (one, two) = (open().await, open().await);
    one.put_product(ProductDetails::new(
        "bowl",
        "Cuenco",
        "art-tito",
        "ceramics",
        Money::eur(3400),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    one.restock("bowl", 10, "test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answers = Collector::start(
        &bus,
        Subscription::new("test", "answers")
            .to::<StockReserved>()
            .to::<StockReservationFailed>(),
    )
    .await;
    let tally = |answers: &[Envelope<AnyMessage>]| {
        let reserved = answers
            .iter()
            .filter(|e| e.event_type() == StockReserved::TYPE)
            .count();
        (reserved, answers.len() - reserved)
    };
    let (w1, w2) = (
        one.start().await.unwrap_or_else(|e| panic!("{e}")),
        two.start().await.unwrap_or_else(|e| panic!("{e}")),
    );

    let commands: Vec<_> = (0..20).map(|i| reserve(&format!("o-{i}"), 1)).collect();
    for command in &commands {
        bus.publish(command).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Every command answered once, across the two instances.
    let first = answers.wait_for(20, Duration::from_secs(20)).await;
    assert_eq!(tally(&first), (10, 10), "(reserved, failed)");
    let product = bowl(&one).await;
    assert_eq!((product.reserved(), product.available()), (10, 0));

    // A crash, then redeliveries of every command to a fresh instance: nothing changes.
    w1.abort().await;
    w2.abort().await;
    let three = open().await;
    let w3 = three.start().await.unwrap_or_else(|e| panic!("{e}"));
    for command in &commands {
        let again = command.clone().with_event_id(a4co_events::EventId::new());
        bus.publish(&again).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Every command is answered again, the same way.
    let all = answers.wait_for(40, Duration::from_secs(20)).await;
    assert_eq!(tally(&all), (20, 20), "answered the same way again");
    let product = bowl(&three).await;
    assert_eq!(
        (product.on_hand, product.reserved()),
        (10, 10),
        "no hold made or lost"
    );
    w3.shutdown().await;
    answers.stop().await;
}

#[tokio::test]
async fn the_sweep_reads_the_products_not_every_order_ever_held_over_nats() {
    const FINISHED: usize = 2000;
    let (server, bus, records, inventory) = on_nats().await;
    // The holds of many orders long finished: one record each, as the service leaves them.
    for i in 0..FINISHED {
        let holds = inventory_service::OrderHolds {
            products: vec!["bowl".into()],
            closed: vec!["bowl".into()],
            ..Default::default()
        };
        records
            .put(&format!("order.o-old-{i}"), &holds, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let workers = inventory.start().await.unwrap_or_else(|e| panic!("{e}"));
    let mut lapsing = reserve("o-lapsing", 2);
    lapsing.data.expires_at = Utc::now() - chrono::Duration::seconds(1);
    bus.publish(&lapsing)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bowl(&inventory).await.reserved() != 2 {
        assert!(std::time::Instant::now() < deadline, "never reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = server.messages_sent();
    assert_eq!(inventory.release_lapsed(Utc::now()).await.ok(), Some(1));
    let cost = server.messages_sent() - before;
    assert!(
        cost < 50,
        "one sweep sent {cost} messages for 1 product among {FINISHED} finished orders"
    );
    assert_eq!(bowl(&inventory).await.available(), 10);
    workers.shutdown().await;
}

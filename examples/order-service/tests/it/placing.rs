//! Placing orders over a real nats-server: a placement cut short after it claimed its
//! idempotency key is finished by the retry (never a 409 or 503 for ever), the customer
//! index grows by one small record per order, and the outbox reads only the orders
//! waiting to be announced.

use std::time::Duration;

use a4co_events::bus::Subscription;
use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::catalog::order::{OrderCreated, OrderStatus};
use a4co_events::service::{AnyBus, Records};
use a4co_testkit::bus::{Collector, RecordingBus};
use a4co_testkit::nats::NatsServer;
use chrono::Utc;
use order_service::{Order, Orders, PlaceError, PlaceOrder};

use crate::acceptance::{order_body, participants};

async fn bus(server: &NatsServer, user: &str) -> AnyBus {
    let bus = NatsBus::connect(
        Config::new(server.url())
            .user_and_password(user, format!("pw-{user}"))
            .ack_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    bus.provision().await.unwrap();
    AnyBus::Nats(Box::new(bus))
}

async fn orders(bus: &AnyBus) -> (Orders<AnyBus>, Records) {
    let records = Records::open(bus, "orders").await.unwrap();
    let (_, _, clients) = participants(&RecordingBus::new().await).await;
    (Orders::new(bus.clone(), records.clone(), clients), records)
}

fn request() -> PlaceOrder {
    serde_json::from_value(order_body("oil", 2, "pm-card-1")).unwrap()
}

#[tokio::test]
async fn a_placement_cut_short_after_claiming_its_key_is_finished_by_the_retry() {
    // Instance A may not write orders (its last write fails, as in a broker failover);
    // instance B may.
    let server = NatsServer::builder()
        .user("full", "pw-full")
        .user_denied("nosave", "pw-nosave", "$KV.orders.order.>")
        .start();
    let (a, b) = (bus(&server, "nosave").await, bus(&server, "full").await);
    let ((first, _), (second, records)) = (orders(&a).await, orders(&b).await);
    let created = Collector::start(
        &b,
        Subscription::new("test", "created").to::<OrderCreated>(),
    )
    .await;

    let failed = first.place(request(), Some("key-1")).await;
    assert!(
        matches!(failed, Err(PlaceError::Unavailable { .. })),
        "{failed:?}"
    );
    assert!(
        second.orders_of("cust-7").await.unwrap().is_empty(),
        "the index entry of an order never saved is skipped"
    );

    // The client retries with its key and reaches B: the order A claimed is placed.
    let (placed, new) = second.place(request(), Some("key-1")).await.unwrap();
    let claimed: Order = records.get("idem.key-1").await.unwrap().unwrap().value;
    assert_eq!(
        (placed.order_id.as_str(), new),
        (claimed.order_id.as_str(), false)
    );
    assert!(placed.announced);
    let stored = second.order(&placed.order_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.announced),
        (OrderStatus::Pending, true)
    );
    let listed: Vec<String> = second
        .orders_of("cust-7")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(listed, [placed.order_id.as_str()]);
    assert!(records.keys("outbox.").await.unwrap().is_empty());

    // Once more: the same order, announced once.
    let (again, new) = second.place(request(), Some("key-1")).await.unwrap();
    assert_eq!(
        (again.order_id.as_str(), new),
        (placed.order_id.as_str(), false)
    );
    let seen = created.wait_for(2, Duration::from_secs(2)).await;
    assert_eq!(
        seen.iter()
            .map(|e| e.aggregate_id.as_str())
            .collect::<Vec<_>>(),
        [placed.order_id.as_str()]
    );
    // The customer index holds one small record per order, never a growing list.
    let (third, _) = second.place(request(), None).await.unwrap();
    let index = records.keys("customer.cust-7.").await.unwrap();
    assert_eq!(index.len(), 2);
    assert!(index.iter().any(|k| k.ends_with(&third.order_id)));
    created.stop().await;
}

#[tokio::test]
async fn the_outbox_reads_only_the_orders_waiting_not_every_order_placed() {
    const PLACED: usize = 3000;
    let server = NatsServer::builder().user("full", "pw-full").start();
    let bus = bus(&server, "full").await;
    let (orders, records) = orders(&bus).await;
    let created = Collector::start(
        &bus,
        Subscription::new("test", "created").to::<OrderCreated>(),
    )
    .await;
    // Many orders placed and announced long ago, two whose announcement failed: what a
    // placement leaves when the publish of `order.created` does not go through.
    let (template, _) = orders.place(request(), None).await.unwrap();
    for i in 0..PLACED {
        let order = Order {
            order_id: format!("ord-old-{i}"),
            ..template.clone()
        };
        records
            .put(&format!("order.{}", order.order_id), &order, None)
            .await
            .unwrap();
    }
    let minute_ago = Utc::now() - chrono::Duration::minutes(1);
    for id in ["ord-waiting-1", "ord-waiting-2"] {
        let order = Order {
            order_id: id.to_owned(),
            announced: false,
            created_at: minute_ago,
            ..template.clone()
        };
        records
            .put(&format!("outbox.{id}"), &minute_ago, None)
            .await
            .unwrap();
        records
            .put(&format!("order.{id}"), &order, None)
            .await
            .unwrap();
    }
    // The measure can see a scan: listing every order moves thousands of messages.
    let before = server.messages_sent();
    assert!(records.keys("order.").await.unwrap().len() > PLACED);
    let scan = server.messages_sent() - before;
    assert!(scan > PLACED as u64, "a full listing sent {scan} messages");

    let before = server.messages_sent();
    assert_eq!(orders.announce_pending().await, 2);
    let round = server.messages_sent() - before;
    assert!(
        round < 50,
        "one outbox round sent {round} messages for 2 orders waiting among {PLACED}"
    );
    assert_eq!(orders.announce_pending().await, 0);
    assert!(records.keys("outbox.").await.unwrap().is_empty());
    let seen = created.wait_for(3, Duration::from_secs(10)).await;
    let mut announced: Vec<&str> = seen.iter().map(|e| e.aggregate_id.as_str()).collect();
    announced.sort_unstable();
    assert_eq!(announced[1..], ["ord-waiting-1", "ord-waiting-2"]);
    for id in ["ord-waiting-1", "ord-waiting-2"] {
        assert!(orders.order(id).await.unwrap().unwrap().announced);
    }
    created.stop().await;
}

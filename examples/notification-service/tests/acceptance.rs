//! notification-service from the outside: one notification per event, to the right
//! person, queryable over REST.

use std::time::Duration;

use a4co_events::bus::Publisher;
use a4co_events::catalog::notification::NotificationSent;
use a4co_events::catalog::order::{OrderConfirmed, OrderCreated, OrderStatusChanged};
use a4co_events::catalog::payment::PaymentFailed;
use a4co_events::service::{Records, Workers};
use a4co_events::{Envelope, EventId, Message};
use a4co_http::auth::Verifier;
use a4co_testkit::bus::RecordingBus;
use a4co_testkit::http::{in_process, test_secret};
use notification_service::{Filter, Notification, Notifications};

/// The service on `bus` with in-memory records, its workers running.
async fn started(bus: &RecordingBus) -> (Notifications<RecordingBus>, Workers) {
    let notifications = Notifications::new(bus.clone(), Records::memory());
    let workers = notifications
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (notifications, workers)
}

#[tokio::test]
async fn every_event_is_told_once_to_its_customer() {
    let bus = RecordingBus::new().await;
    let (notifications, workers) = started(&bus).await;

    let created = Envelope::new("order-service", "ord-9", OrderCreated::example());
    bus.publish(&created).await.ok();
    bus.published::<NotificationSent>()
        .matching(|e| e.data.notification_type == "order-received")
        .await;
    let confirmed = Envelope::new("order-service", "ord-9", OrderConfirmed::example());
    bus.publish(&confirmed).await.ok();
    // A redelivery of the same event under a new delivery (same event id: the broker
    // dedups it; a new id is a new event and is told again).
    bus.publish(&confirmed).await.ok();
    let mut failed = PaymentFailed::example();
    failed.order_id = "ord-9".into();
    bus.publish(&Envelope::new("payment-service", "txn-ord-9", failed))
        .await
        .ok();
    bus.publish(&Envelope::new(
        "order-service",
        "ord-9",
        OrderStatusChanged::example(),
    ))
    .await
    .ok();
    let sms = bus
        .published::<NotificationSent>()
        .matching(|e| e.data.notification_type == "payment-failed")
        .await;
    assert_eq!(
        sms.data.recipient, "user-4711",
        "the customer of ord-9, from its order.created"
    );
    bus.published::<NotificationSent>()
        .matching(|e| e.data.notification_type == "order-confirmed")
        .await;

    let sent = notifications
        .list(&Filter::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut templates: Vec<_> = sent.iter().map(|n| n.template.as_str()).collect();
    templates.sort_unstable();
    assert_eq!(
        templates,
        ["order-confirmed", "order-received", "payment-failed"],
        "nothing for a status change"
    );
    assert!(
        sent.iter()
            .all(|n| n.recipient == "user-4711" && n.order_id.as_deref() == Some("ord-9"))
    );

    let client = |permissions: &[&str]| {
        let router = notifications.router(&Verifier::new(&test_secret()));
        in_process("notification-service", router, "ops", permissions)
    };
    let reader = client(&["notification:read"]);
    let found: Vec<Notification> = reader
        .get_json("/api/v1/notifications?orderId=ord-9&type=payment-failed")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.len(), 1);
    assert!(
        found[0].body.contains("Revisa tu método de pago"),
        "{}",
        found[0].body
    );
    let bad = reader
        .get("/api/v1/notifications?limit=lots")
        .send()
        .await
        .err()
        .and_then(|e| e.status());
    assert_eq!(bad, Some(400));
    let anonymous = client(&[])
        .get("/api/v1/notifications")
        .send()
        .await
        .err()
        .and_then(|e| e.status());
    assert_eq!(anonymous, Some(401));
    workers.shutdown().await;
}

#[tokio::test]
async fn an_event_whose_customer_never_shows_goes_to_the_order() {
    let bus = RecordingBus::new().await;
    let (_, workers) = started(&bus).await;
    let mut confirmed = Envelope::new("order-service", "ord-orphan", OrderConfirmed::example());
    confirmed.event_id = EventId::new();
    bus.publish(&confirmed).await.ok();
    let told = bus
        .published::<NotificationSent>()
        .within(Duration::from_secs(15))
        .await;
    assert_eq!(told.data.recipient, "order:ord-orphan");
    bus.assert_nothing_dead_lettered().await;
    assert_eq!(
        bus.all_published()
            .iter()
            .filter(|e| e.event_type() == NotificationSent::TYPE)
            .count(),
        1
    );
    workers.shutdown().await;
}

#[tokio::test]
async fn a_recipients_listing_reads_that_recipients_notifications_only_over_nats() {
    const OTHERS: usize = 300;
    let server = a4co_testkit::nats::NatsServer::start();
    let bus = a4co_events::service::AnyBus::connect(Some(&server.url()), "notification-test", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let records = Records::open(&bus, "notifications")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let notifications = Notifications::new(bus.clone(), records);
    let workers = notifications
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    for i in 0..OTHERS + 3 {
        let customer = if i % 100 == 7 {
            "cust-x".to_owned()
        } else {
            format!("cust-{i}")
        };
        let created = OrderCreated {
            customer_id: customer,
            ..OrderCreated::example()
        };
        let event = Envelope::new("order-service", format!("ord-{i}"), created)
            .with_occurred_at(start + chrono::Duration::seconds(i64::try_from(i).unwrap_or(0)));
        bus.publish(&event).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = notifications
            .list(&Filter {
                limit: Some(1000),
                ..Filter::default()
            })
            .await
            .unwrap_or_default();
        if all.len() == OTHERS + 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} notifications",
            all.len(),
            OTHERS + 3
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = server.messages_sent();
    let mine = notifications
        .list(&Filter {
            recipient: Some("cust-x".into()),
            ..Filter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cost = server.messages_sent() - before;
    let orders: Vec<_> = mine.iter().filter_map(|n| n.order_id.as_deref()).collect();
    assert_eq!(orders, ["ord-207", "ord-107", "ord-7"], "newest first");
    assert!(
        cost < 30,
        "listing 3 notifications among {OTHERS} others sent {cost} messages"
    );
    // Unfiltered, with a limit: the newest, by when their event occurred.
    let newest = notifications
        .list(&Filter {
            limit: Some(2),
            ..Filter::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let orders: Vec<_> = newest
        .iter()
        .filter_map(|n| n.order_id.as_deref())
        .collect();
    assert_eq!(orders, ["ord-302", "ord-301"]);
    workers.shutdown().await;
}

//! The recording bus and its waiting assertions.

use std::time::{Duration, Instant};

use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_events::{AnyMessage, Envelope, Message};
use a4co_testkit::bus::{Outcome, RecordingBus};

#[tokio::test]
async fn published_messages_are_found_by_type_and_predicate() {
    let bus = RecordingBus::new().await;
    for id in ["ord-1", "ord-2"] {
        bus.publish(&Envelope::new("order-service", id, OrderCreated::example()))
            .await
            .unwrap();
    }
    let second = bus
        .published::<OrderCreated>()
        .matching(|e| e.aggregate_id == "ord-2")
        .await;
    assert_eq!(second.aggregate_id, "ord-2");
    assert_eq!(bus.all_published().len(), 2);
}

#[tokio::test]
async fn a_waiting_assertion_returns_as_soon_as_the_message_arrives() {
    let bus = RecordingBus::new().await;
    let later = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        later
            .publish(&Envelope::new(
                "order-service",
                "ord-9",
                OrderConfirmed::example(),
            ))
            .await
            .unwrap();
    });
    let started = Instant::now();
    let got = bus
        .published::<OrderConfirmed>()
        .within(Duration::from_secs(5))
        .await;
    assert_eq!(got.aggregate_id, "ord-9");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited for the deadline: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
#[should_panic(expected = "no matching order.confirmed Published within")]
async fn a_missing_message_fails_with_what_was_seen() {
    let bus = RecordingBus::new().await;
    bus.publish(&Envelope::new(
        "order-service",
        "ord-1",
        OrderCreated::example(),
    ))
    .await
    .unwrap();
    let _ = bus
        .published::<OrderConfirmed>()
        .within(Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn consumed_messages_and_their_outcomes_are_recorded() {
    let bus = RecordingBus::new().await;
    let handler = |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        std::future::ready(if m.aggregate_id == "bad" {
            Err(HandlerError::permanent("no such order"))
        } else {
            Ok(())
        })
    };
    let handle = bus
        .subscribe(Subscription::new("t", "rec").to::<OrderCreated>(), handler)
        .await
        .unwrap();
    for id in ["good", "bad"] {
        bus.publish(&Envelope::new("order-service", id, OrderCreated::example()))
            .await
            .unwrap();
    }
    let ok = bus
        .consumed::<OrderCreated>()
        .matching(|e| e.aggregate_id == "good")
        .await;
    assert_eq!(ok.aggregate_id, "good");
    let letter = bus
        .dead_lettered(Duration::from_secs(5), |l| {
            l.reason.contains("no such order")
        })
        .await;
    assert_eq!(letter.consumer, "t/rec");
    let outcomes: Vec<(String, Outcome)> = bus
        .all_consumed()
        .into_iter()
        .map(|(e, _, o)| (e.aggregate_id, o))
        .collect();
    assert!(
        outcomes.contains(&(
            "bad".into(),
            Outcome::Failed("permanent: no such order".into())
        )),
        "{outcomes:?}"
    );
    handle.shutdown().await;
}

#[tokio::test]
#[should_panic(expected = "expected no dead letters")]
async fn assert_nothing_dead_lettered_fails_when_something_was() {
    let bus = RecordingBus::new().await;
    let handle = bus
        .subscribe(
            Subscription::new("t", "x").to::<OrderCreated>(),
            |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                std::future::ready(Err::<(), _>(HandlerError::permanent("boom")))
            },
        )
        .await
        .unwrap();
    bus.publish(&Envelope::new(
        "order-service",
        "o",
        OrderCreated::example(),
    ))
    .await
    .unwrap();
    bus.dead_lettered(Duration::from_secs(5), |_| true).await;
    handle.shutdown().await;
    bus.assert_nothing_dead_lettered().await;
}

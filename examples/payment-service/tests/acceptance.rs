//! payment-service from the outside: pre-validation over REST, and charging for the saga
//! in memory and over a real nats-server, at most once per order.

use a4co_events::bus::{Publisher, Subscription};
use a4co_events::catalog::payment::{
    PaymentFailed, PaymentInitiated, PaymentMethod, PaymentSucceeded, ProcessPayment,
    RefundPayment, RefundProcessed,
};
use a4co_events::service::{AnyBus, Records};
use a4co_events::{AnyMessage, Envelope, EventId, Message, Money};
use a4co_http::auth::Verifier;
use a4co_testkit::bus::{Collector, RecordingBus};
use a4co_testkit::http::{in_process, test_secret};
use a4co_testkit::nats::NatsServer;
use payment_service::{Gateway, Payments, Status};
use serde_json::json;

fn gateway() -> Gateway {
    Gateway {
        decline_over_minor: Some(100_000),
        latency: std::time::Duration::from_millis(5),
        ..Gateway::default()
    }
}

fn pay(order: &str, method_id: &str) -> Envelope<ProcessPayment> {
    let command = ProcessPayment {
        order_id: order.to_owned(),
        customer_id: "cust-1".to_owned(),
        amount: Money::eur(5900),
        payment_method: PaymentMethod::Card,
        payment_method_id: Some(method_id.to_owned()),
        expires_at: None,
    };
    Envelope::new("order-service", order, command)
}

fn count<M: Message>(bus: &RecordingBus) -> usize {
    bus.all_published()
        .iter()
        .filter(|e| e.event_type() == M::TYPE)
        .count()
}

#[tokio::test]
async fn validation_contract() {
    let payments = Payments::new(RecordingBus::new().await, Records::memory(), gateway());
    let client = |permissions: &[&str]| {
        let router = payments.router(&Verifier::new(&test_secret()));
        in_process("payment-service", router, "order-service", permissions)
    };
    let caller = client(&["payment:validate"]);
    let body = |method_id: &str, cents: i64| json!({"customerId": "cust-1", "amount": {"amountMinor": cents, "currency": "EUR"}, "paymentMethod": "card", "paymentMethodId": method_id});
    let ok: serde_json::Value = caller
        .post_json("/api/v1/payments/validate", &body("pm-card-1", 5900))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok["valid"], true);

    let refused = |method_id: &'static str, cents: i64| {
        let caller = caller.clone();
        let request = body(method_id, cents);
        async move {
            let err = caller
                .post("/api/v1/payments/validate")
                .json(&request)
                .send()
                .await
                .err();
            (
                err.as_ref().and_then(a4co_http::Error::status),
                err.and_then(|e| e.body().map(str::to_owned))
                    .unwrap_or_default(),
            )
        }
    };
    let (status, text) = refused("pm-expired-9", 5900).await;
    assert_eq!(status, Some(422));
    assert!(text.contains("payment-method-expired"), "{text}");
    let (status, text) = refused("pm-card-1", 100_001).await;
    assert_eq!(
        (status, text.contains("amount-over-limit")),
        (Some(422), true)
    );
    assert_eq!(refused("pm-card-1", 0).await.0, Some(400));
    assert_eq!(refused("pm card", 100).await.0, Some(400));
    let no_card = caller
        .post("/api/v1/payments/validate")
        .json(&json!({"customerId": "cust-1", "amount": {"amountMinor": 100, "currency": "EUR"}, "paymentMethod": "card"}))
        .send()
        .await;
    assert_eq!(no_card.err().and_then(|e| e.status()), Some(422));
    let not_json = caller
        .post("/api/v1/payments/validate")
        .header("content-type", "application/json")
        .send()
        .await;
    assert_eq!(not_json.err().and_then(|e| e.status()), Some(400));
    let unauthorised = client(&[])
        .post("/api/v1/payments/validate")
        .json(&body("pm-card-1", 100))
        .send()
        .await;
    assert_eq!(unauthorised.err().and_then(|e| e.status()), Some(401));
    let forbidden = client(&["payment:read"])
        .post("/api/v1/payments/validate")
        .json(&body("pm-card-1", 100))
        .send()
        .await;
    assert_eq!(forbidden.err().and_then(|e| e.status()), Some(403));
}

#[tokio::test]
async fn an_order_is_charged_once_and_refunded_once() {
    let bus = RecordingBus::new().await;
    let payments = Payments::new(bus.clone(), Records::memory(), gateway());
    let workers = payments.start().await.unwrap_or_else(|e| panic!("{e}"));

    let command = pay("ord-1", "pm-card-1");
    bus.publish(&command).await.ok();
    let paid = bus.published::<PaymentSucceeded>().await;
    assert_eq!(
        (paid.data.amount, paid.data.transaction_id.as_str()),
        (Money::eur(5900), "txn-ord-1")
    );
    assert_eq!(
        paid.data.marketplace_fee.amount_minor + paid.data.artisan_amount.amount_minor,
        5900
    );
    // The same command redelivered, and another for the same order: one charge.
    for again in [
        command.clone().with_event_id(EventId::new()),
        pay("ord-1", "pm-card-1"),
    ] {
        let id = again.event_id;
        bus.publish(&again).await.ok();
        bus.consumed::<ProcessPayment>()
            .matching(move |e| e.event_id == id)
            .await;
    }
    assert_eq!(
        payments.gateway_charges().await.map(|c| c.len()).ok(),
        Some(1)
    );
    assert_eq!(
        count::<PaymentInitiated>(&bus),
        1,
        "initiated once: the payment was done when the others came"
    );

    let refund = RefundPayment {
        payment_id: "txn-ord-1".into(),
        order_id: "ord-1".into(),
        amount: Money::eur(5900),
        reason: "order cancelled after payment".into(),
    };
    for _ in 0..2 {
        let command = Envelope::new("order-service", "ord-1", refund.clone());
        let id = command.event_id;
        bus.publish(&command).await.ok();
        bus.consumed::<RefundPayment>()
            .matching(move |e| e.event_id == id)
            .await;
    }
    let refunded = bus.published::<RefundProcessed>().await;
    assert_eq!(refunded.data.refund_amount, Money::eur(5900));
    let payment = payments.payment("ord-1").await.ok().flatten();
    assert!(payment.is_some_and(|p| p.refund.is_some()));
    let gateway_refunds = bus
        .all_published()
        .iter()
        .filter_map(|e| match &e.data {
            AnyMessage::RefundProcessed(r) => Some(r.gateway_refund_id.clone()),
            _ => None,
        })
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(
        gateway_refunds.len(),
        1,
        "one refund, announced under one id"
    );

    bus.publish(&pay("ord-2", "pm-declined-7")).await.ok();
    let declined = bus.published::<PaymentFailed>().await;
    assert_eq!(
        (
            declined.data.order_id.as_str(),
            declined.data.error_code.as_str()
        ),
        ("ord-2", "card-declined")
    );
    assert!(matches!(
        payments
            .payment("ord-2")
            .await
            .ok()
            .flatten()
            .map(|p| p.status),
        Some(Status::Failed { .. })
    ));
    bus.assert_nothing_dead_lettered().await;
    workers.shutdown().await;
}

/// Collects every payment outcome published on `bus`.
async fn outcomes(bus: &AnyBus) -> Collector {
    Collector::start(
        bus,
        Subscription::new("test", "outcomes")
            .to::<PaymentSucceeded>()
            .to::<PaymentFailed>(),
    )
    .await
}

#[tokio::test]
async fn two_instances_on_nats_charge_each_order_once() {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "payment-test", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut workers = Vec::new();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let records = Records::open(&bus, "payments")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let payments = Payments::new(bus.clone(), records, gateway());
        workers.push(payments.start().await.unwrap_or_else(|e| panic!("{e}")));
        instances.push(payments);
    }
    let outcomes = outcomes(&bus).await;
    // Every order's command three times over, under different ids.
    for round in 0..3 {
        for i in 0..10 {
            let method = if i % 4 == 0 {
                "pm-declined-x"
            } else {
                "pm-card-1"
            };
            let command = pay(&format!("ord-{i}"), method);
            let command = if round == 0 {
                command
            } else {
                command.with_event_id(EventId::new())
            };
            bus.publish(&command)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let seen = outcomes
        .wait_for(30, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(seen.len(), 30, "every command answered");
    let charges = instances[0]
        .gateway_charges()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(charges.len(), 10, "one gateway charge per order");
    let mut per_order = std::collections::HashMap::<String, std::collections::HashSet<bool>>::new();
    for outcome in &seen {
        let (order, ok) = match &outcome.data {
            AnyMessage::PaymentSucceeded(p) => (p.order_id.clone(), true),
            AnyMessage::PaymentFailed(p) => (p.order_id.clone(), false),
            other => panic!("{other:?}"),
        };
        per_order.entry(order).or_default().insert(ok);
    }
    assert!(
        per_order.values().all(|answers| answers.len() == 1),
        "every answer of an order agrees: {per_order:?}"
    );
    assert_eq!(
        per_order.values().filter(|a| a.contains(&false)).count(),
        3,
        "ord-0, ord-4, ord-8 declined"
    );
    for w in workers {
        w.shutdown().await;
    }
    outcomes.stop().await;
}

#[tokio::test]
async fn a_command_past_its_expiry_charges_nothing_over_nats() {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "payment-test", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let records = Records::open(&bus, "payments")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let payments = Payments::new(bus.clone(), records, gateway());
    let workers = payments.start().await.unwrap_or_else(|e| panic!("{e}"));
    let outcomes = outcomes(&bus).await;
    let now = chrono::Utc::now();
    for (order, expires_at) in [
        ("ord-late", Some(now - chrono::Duration::seconds(1))),
        ("ord-in-time", Some(now + chrono::Duration::minutes(5))),
    ] {
        let mut command = pay(order, "pm-card-1");
        command.data.expires_at = expires_at;
        bus.publish(&command)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let seen = outcomes
        .wait_for(2, std::time::Duration::from_secs(20))
        .await;
    let answers: std::collections::BTreeMap<String, String> = seen
        .iter()
        .map(|e| match &e.data {
            AnyMessage::PaymentSucceeded(p) => (p.order_id.clone(), "succeeded".to_owned()),
            AnyMessage::PaymentFailed(p) => (p.order_id.clone(), p.error_code.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("ord-in-time".to_owned(), "succeeded".to_owned()),
            ("ord-late".to_owned(), payment_service::EXPIRED.to_owned()),
        ]
        .into_iter()
        .collect()
    );
    let charged: Vec<String> = payments
        .gateway_charges()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        charged,
        ["gateway.a4co-ord-in-time"],
        "the expired command reached no gateway"
    );
    workers.shutdown().await;
    outcomes.stop().await;
}

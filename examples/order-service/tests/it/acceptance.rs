//! order-service from the outside: its REST contract against the real inventory and
//! payment services (in process), and the order following the saga.

use std::time::Duration;

use a4co_events::Money;
use a4co_events::bus::Publisher;
use a4co_events::catalog::order::{
    CancelOrder, CancellationReason, OrderCancelled, OrderCreated, OrderStatus,
};
use a4co_events::service::{Records, Workers};
use a4co_events::{Envelope, Message};
use a4co_http::Client;
use a4co_http::auth::Verifier;
use a4co_saga::MemoryStore;
use a4co_testkit::bus::RecordingBus;
use a4co_testkit::http::{FaultServer, Reply, in_process, test_secret};
use inventory_service::{Inventory, ProductDetails};
use order_service::fulfillment::Settings;
use order_service::{Clients, Order, Orders};
use payment_service::{Gateway, Payments};
use serde_json::json;

/// Order, inventory and payment on one recording bus, the HTTP calls in process.
struct Shop {
    bus: RecordingBus,
    orders: Orders<RecordingBus>,
    inventory: Inventory<RecordingBus>,
    payments: Payments<RecordingBus>,
    api: Client,
}

async fn shop() -> Shop {
    let bus = RecordingBus::new().await;
    let (inventory, payments, clients) = participants(&bus).await;
    let orders = Orders::new(bus.clone(), Records::memory(), clients);
    let api = in_process("order-service", orders.router(), "customer", &[]);
    Shop {
        bus,
        orders,
        inventory,
        payments,
        api,
    }
}

/// Inventory (oil: 50 units, bowl: 2, at 12.50 €) and payment on `bus`, and order-service's
/// clients calling them in process.
pub(crate) async fn participants(
    bus: &RecordingBus,
) -> (Inventory<RecordingBus>, Payments<RecordingBus>, Clients) {
    let verifier = Verifier::new(&test_secret());
    let inventory = Inventory::new(
        bus.clone(),
        Records::memory(),
        inventory_service::Settings::default(),
    );
    for (id, units) in [("oil", 50), ("bowl", 2)] {
        inventory
            .put_product(ProductDetails::new(
                id,
                id,
                "art-1",
                "crafts",
                Money::eur(1250),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        inventory
            .restock(id, units, "test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let payments = Payments::new(
        bus.clone(),
        Records::memory(),
        Gateway {
            latency: Duration::ZERO,
            ..Gateway::default()
        },
    );
    let as_order_service = |target: &str, router: axum::Router| {
        in_process(target, router, "order-service", &Clients::PERMISSIONS)
    };
    let clients = Clients {
        inventory: as_order_service("inventory-service", inventory.router(&verifier)),
        payment: as_order_service("payment-service", payments.router(&verifier)),
    };
    (inventory, payments, clients)
}

pub(crate) fn order_body(product: &str, quantity: u32, method_id: &str) -> serde_json::Value {
    json!({
        "customerId": "cust-7",
        "items": [{"productId": product, "quantity": quantity}],
        "paymentMethod": "card",
        "paymentMethodId": method_id,
        "fulfillment": {"method": "delivery", "address": {"street": "Calle Real 1", "city": "Úbeda", "postalCode": "23400"}}
    })
}

async fn error_of(api: &Client, body: serde_json::Value) -> (Option<u16>, String) {
    let err = api.post("/api/v1/orders").json(&body).send().await.err();
    (
        err.as_ref().and_then(a4co_http::Error::status),
        err.and_then(|e| e.body().map(str::to_owned))
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn rest_contract() {
    let Shop {
        bus, orders, api, ..
    } = shop().await;

    let placed = api
        .post("/api/v1/orders")
        .json(&order_body("oil", 3, "pm-card-1"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(placed.status, 201);
    let order: Order = placed.json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (order.status, order.total),
        (OrderStatus::Pending, Money::eur(3750))
    );
    let created = bus.published::<OrderCreated>().await;
    assert_eq!(
        (
            created.aggregate_id.as_str(),
            created.data.items[0].quantity
        ),
        (order.order_id.as_str(), 3)
    );
    let fetched: Order = api
        .get_json(&format!("/api/v1/orders/{}", order.order_id))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched.order_id, order.order_id);
    let listed: Vec<Order> = api
        .get_json("/api/v1/orders/customer/cust-7")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);

    let cases = [
        (json!({"customerId": "cust-7"}), 400, "invalid-request"),
        (order_body("oil", 0, "pm-card-1"), 400, "quantity"),
        (order_body("oil", 101, "pm-card-1"), 400, "quantity"),
        (order_body("a b", 1, "pm-card-1"), 400, "product id"),
        (order_body("ghost", 1, "pm-card-1"), 422, "unknown-product"),
        (order_body("bowl", 3, "pm-card-1"), 409, "out-of-stock"),
        (
            order_body("oil", 1, "pm-expired-2"),
            422,
            "payment-method-expired",
        ),
    ];
    for (body, status, says) in cases {
        let (got, text) = error_of(&api, body.clone()).await;
        assert_eq!(got, Some(status), "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let mut card_without_method = order_body("oil", 1, "x");
    card_without_method["paymentMethodId"] = serde_json::Value::Null;
    assert_eq!(error_of(&api, card_without_method).await.0, Some(400));
    let missing = api
        .get("/api/v1/orders/ord-nope")
        .send()
        .await
        .err()
        .and_then(|e| e.status());
    assert_eq!(missing, Some(404));

    // The same Idempotency-Key: the first order back, one event.
    let again = || {
        api.post("/api/v1/orders")
            .idempotency_key("checkout-42")
            .json(&order_body("oil", 1, "pm-card-1"))
            .send()
    };
    let first = again().await.unwrap_or_else(|e| panic!("{e}"));
    let second = again().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((first.status, second.status), (201, 200));
    let (a, b): (Order, Order) = (
        first.json().unwrap_or_else(|e| panic!("{e}")),
        second.json().unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(a.order_id, b.order_id);
    let events = bus
        .all_published()
        .iter()
        .filter(|e| e.event_type() == OrderCreated::TYPE)
        .count();
    assert_eq!(events, 2, "one per order");
    assert_eq!(orders.all().await.map(|o| o.len()).ok(), Some(2));

    // A refused request does not use up its key: the corrected retry is placed.
    let with_key = |quantity| {
        api.post("/api/v1/orders")
            .idempotency_key("checkout-43")
            .json(&order_body("bowl", quantity, "pm-card-1"))
            .send()
    };
    assert_eq!(with_key(3).await.err().and_then(|e| e.status()), Some(409));
    let corrected = with_key(1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(corrected.status, 201);
}

#[tokio::test]
async fn a_dependency_down_is_a_503_and_nothing_is_placed() {
    let inventory = FaultServer::start().await;
    inventory.script(
        "GET /api/v1/inventory/availability/oil",
        [Reply::status(503)],
    );
    let clients = Clients::new(&inventory.base_url(), "http://127.0.0.1:9", None)
        .unwrap_or_else(|e| panic!("{e}"));
    let bus = RecordingBus::new().await;
    let orders = Orders::new(bus.clone(), Records::memory(), clients);
    let api = in_process("order-service", orders.router(), "customer", &[]);
    let (status, text) = error_of(&api, order_body("oil", 1, "pm-card-1")).await;
    assert_eq!(status, Some(503), "{text}");
    assert!(text.contains("inventory"), "{text}");
    assert!(orders.all().await.is_ok_and(|o| o.is_empty()));
    assert!(bus.all_published().is_empty());
}

/// Guards against: a 503 carried the upstream's URL (its user info too) and the
/// upstream's error body to the customer. The customer sees the error shape, which
/// dependency, and a reference; the details go to the log under that reference.
#[tokio::test]
async fn a_503_shows_the_customer_a_reference_not_the_upstream() {
    let inventory = FaultServer::start().await;
    inventory.script(
        "GET /api/v1/inventory/availability/oil",
        [Reply::json(
            503,
            r#"{"detail":"db at 10.9.8.7 refused user inv, password xyzzy"}"#,
        )],
    );
    let base = inventory
        .base_url()
        .replacen("http://", "http://ops:hunter2@", 1);
    let clients = Clients::new(&base, "http://127.0.0.1:9", None).unwrap_or_else(|e| panic!("{e}"));
    let bus = RecordingBus::new().await;
    let orders = Orders::new(bus.clone(), Records::memory(), clients);
    let api = in_process("order-service", orders.router(), "customer", &[]);
    let (status, text) = error_of(&api, order_body("oil", 1, "pm-card-1")).await;
    assert_eq!(status, Some(503), "{text}");
    for leak in [
        "hunter2",
        "ops:",
        "127.0.0.1",
        "10.9.8.7",
        "xyzzy",
        "availability",
    ] {
        assert!(!text.contains(leak), "the 503 body shows {leak:?}: {text}");
    }
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["error"], "unavailable", "{text}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("inventory")),
        "{text}"
    );
    assert!(
        body["reference"].as_str().is_some_and(|r| r.len() >= 8),
        "{text}"
    );
    assert!(orders.all().await.is_ok_and(|o| o.is_empty()));
}

#[tokio::test]
async fn orders_follow_the_saga() {
    let Shop {
        bus,
        orders,
        inventory,
        payments,
        api,
    } = shop().await;
    let inventory_workers = inventory.start().await.unwrap_or_else(|e| panic!("{e}"));
    let payment_workers = payments.start().await.unwrap_or_else(|e| panic!("{e}"));
    let workers = orders
        .start_with(MemoryStore::new(), Settings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let place = |body: serde_json::Value| {
        let api = api.clone();
        async move {
            let order: Order = api
                .post_json("/api/v1/orders", &body)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            order.order_id
        }
    };
    let paid = place(order_body("oil", 2, "pm-card-1")).await;
    let declined = place(order_body("oil", 1, "pm-declined-1")).await;
    let settled = |id: String, status: OrderStatus| {
        let orders = orders.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let order = orders.order(&id).await.ok().flatten();
                if order.as_ref().is_some_and(|o| o.status == status)
                    || tokio::time::Instant::now() > deadline
                {
                    return order;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let confirmed = settled(paid, OrderStatus::Confirmed).await;
    assert!(
        confirmed.as_ref().is_some_and(|o| o.payment_id.is_some()),
        "{confirmed:?}"
    );
    let cancelled = settled(declined.clone(), OrderStatus::Cancelled).await;
    assert_eq!(
        cancelled.and_then(|o| o.cancellation).map(|c| c.reason),
        Some(CancellationReason::PaymentFailed)
    );
    let event = bus
        .published::<OrderCancelled>()
        .matching(move |e| e.aggregate_id == declined)
        .await;
    assert!(!event.data.refund_required);
    // The confirmed order's units are sold; the declined one's are back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut oil = None;
    while tokio::time::Instant::now() < deadline {
        oil = inventory.product("oil").await.ok().flatten();
        if oil.as_ref().is_some_and(|p| p.reserved() == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        oil.map(|p| (p.on_hand, p.available(), p.sold)),
        Some((48, 48, 2))
    );

    // A cancel command for a confirmed order does not move it back.
    let id = confirmed.map(|o| o.order_id).unwrap_or_default();
    let cancel = CancelOrder {
        reason: CancellationReason::CustomerRequest,
        refund_required: true,
        detail: None,
    };
    let command = Envelope::new("order-service", &id, cancel);
    let command_id = command.event_id;
    bus.publish(&command).await.ok();
    bus.consumed::<CancelOrder>()
        .matching(move |e| e.event_id == command_id)
        .await;
    assert_eq!(
        orders.order(&id).await.ok().flatten().map(|o| o.status),
        Some(OrderStatus::Confirmed)
    );
    // Unless the saga found its stock gone after all (a hold that lapsed before the
    // commit): then it is cancelled, and the customer told by `order.cancelled`.
    let gone = CancelOrder {
        reason: CancellationReason::InventoryUnavailable,
        refund_required: true,
        detail: Some("the stock held was released".to_owned()),
    };
    bus.publish(&Envelope::new("order-service", &id, gone))
        .await
        .ok();
    let told = bus
        .published::<OrderCancelled>()
        .matching({
            let id = id.clone();
            move |e| e.aggregate_id == id
        })
        .await;
    assert!(told.data.refund_required);
    assert_eq!(
        orders.order(&id).await.ok().flatten().map(|o| o.status),
        Some(OrderStatus::Cancelled)
    );
    bus.assert_nothing_dead_lettered().await;
    for w in [workers, inventory_workers, payment_workers] {
        Workers::shutdown(w).await;
    }
}

/// Guards against: `/health` listed the command subscription but not the saga runtime's,
/// so a saga whose consumer was gone looked healthy.
#[tokio::test]
async fn health_sees_the_saga_runtime_and_the_command_handler() {
    let clients = Clients::new("http://127.0.0.1:9", "http://127.0.0.1:9", None)
        .unwrap_or_else(|e| panic!("{e}"));
    let bus = RecordingBus::new().await;
    let orders = Orders::new(bus.clone(), Records::memory(), clients);
    let workers = orders
        .start_with(MemoryStore::new(), Settings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let labels: Vec<String> = workers
        .health()
        .iter()
        .map(|h| h.label().to_owned())
        .collect();
    assert!(
        labels
            .iter()
            .any(|l| l == "order-service/order-fulfillment"),
        "{labels:?}"
    );
    assert!(
        labels
            .iter()
            .any(|l| l != "order-service/order-fulfillment"),
        "the command handler too: {labels:?}"
    );
    assert!(workers.health().iter().all(|h| h.is_running()));
    workers.shutdown().await;
}

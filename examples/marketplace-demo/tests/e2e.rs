//! The marketplace end to end over a real nats-server: the fulfillment paths, a duplicate
//! `order.created`, inventory crashing mid-flow, and the four services as separate
//! processes talking HTTP and NATS.

use std::collections::BTreeMap;
use std::time::Duration;

use a4co_events::bus::{Publisher, Subscription};
use a4co_events::catalog::inventory::ReserveStock;
use a4co_events::catalog::order::{
    CancellationReason, Fulfillment, OrderConfirmed, OrderCreated, OrderItem, OrderStatus,
};
use a4co_events::service::AnyBus;
use a4co_events::{AnyMessage, Envelope, EventId, Money};
use a4co_http::Client;
use a4co_http::auth::{Issuer, Secret};
use a4co_testkit::bus::Collector;
use a4co_testkit::nats::NatsServer;
use inventory_service::ProductDetails;
use marketplace_demo::{Marketplace, Settings};
use notification_service::Filter;
use order_service::Order;
use serde_json::json;

fn secret() -> Secret {
    Secret::new("e2e-secret-e2e-secret-e2e-secret-e2e").unwrap_or_else(|e| panic!("{e}"))
}

async fn market(server: &NatsServer, settings: Settings) -> Marketplace {
    let bus = AnyBus::connect(Some(&server.url()), "e2e", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Marketplace::start(bus, settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn stock(market: &Marketplace, id: &str, units: u32) {
    market
        .inventory
        .put_product(ProductDetails::new(
            id,
            id,
            "art-1",
            "crafts",
            Money::eur(1000),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    market
        .inventory
        .restock(id, units, "e2e")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn order_body(customer: &str, lines: &[(&str, u32)], method_id: &str) -> serde_json::Value {
    json!({
        "customerId": customer,
        "items": lines.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>(),
        "paymentMethod": "card",
        "paymentMethodId": method_id,
        "fulfillment": {"method": "pickup"},
    })
}

async fn place(api: &Client, customer: &str, lines: &[(&str, u32)], method_id: &str) -> String {
    let order: Order = api
        .post_json("/api/v1/orders", &order_body(customer, lines, method_id))
        .await
        .unwrap_or_else(|e| panic!("placing an order: {e}"));
    order.order_id
}

/// Waits (at most `within`) until `check` holds, then returns its last value.
async fn eventually<T, F, Fut>(within: Duration, mut probe: F, check: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = probe().await;
        if check(&value) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn settled(market: &Marketplace, id: &str) -> Option<Order> {
    eventually(
        Duration::from_secs(20),
        || async { market.orders.order(id).await.ok().flatten() },
        |o| o.as_ref().is_some_and(|o| o.status != OrderStatus::Pending),
    )
    .await
}

async fn templates_for(market: &Marketplace, customer: &str, at_least: usize) -> Vec<String> {
    let filter = Filter {
        recipient: Some(customer.to_owned()),
        ..Filter::default()
    };
    let mut told: Vec<String> = eventually(
        Duration::from_secs(20),
        || async {
            market
                .notifications
                .list(&filter)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.template)
                .collect::<Vec<_>>()
        },
        |t| t.len() >= at_least,
    )
    .await;
    told.sort_unstable();
    told
}

#[tokio::test]
async fn the_fulfillment_paths_over_nats() {
    let server = NatsServer::start();
    let market = market(&server, Settings::new(secret())).await;
    stock(&market, "olive-oil", 10).await;
    stock(&market, "lantern", 0).await;

    // Happy path: confirmed, units sold, the customer told three times.
    let happy = place(&market.api, "cust-happy", &[("olive-oil", 3)], "pm-card-1").await;
    let order = settled(&market, &happy).await;
    assert_eq!(order.map(|o| o.status), Some(OrderStatus::Confirmed));
    let oil = eventually(
        Duration::from_secs(10),
        || async { market.inventory.product("olive-oil").await.ok().flatten() },
        |p| p.as_ref().is_some_and(|p| p.reserved() == 0),
    )
    .await;
    assert_eq!(oil.map(|p| (p.on_hand, p.available())), Some((7, 7)));
    assert_eq!(
        templates_for(&market, "cust-happy", 3).await,
        ["order-confirmed", "order-received", "payment-received"]
    );

    // Declined payment: stock released, order cancelled, customer told.
    let declined = place(
        &market.api,
        "cust-declined",
        &[("olive-oil", 2)],
        "pm-declined-1",
    )
    .await;
    let order = settled(&market, &declined).await;
    assert_eq!(
        order.and_then(|o| o.cancellation).map(|c| c.reason),
        Some(CancellationReason::PaymentFailed)
    );
    let oil = eventually(
        Duration::from_secs(10),
        || async { market.inventory.product("olive-oil").await.ok().flatten() },
        |p| p.as_ref().is_some_and(|p| p.reserved() == 0),
    )
    .await;
    assert_eq!(
        oil.map(|p| (p.on_hand, p.available())),
        Some((7, 7)),
        "the held units came back"
    );
    assert_eq!(
        templates_for(&market, "cust-declined", 3).await,
        ["order-cancelled", "order-received", "payment-failed"]
    );

    // Out of stock: an order.created that inventory cannot serve (as after a race past
    // the checkout's check) is cancelled as inventory-unavailable; nothing is charged.
    let created = OrderCreated {
        customer_id: "cust-late".into(),
        items: vec![OrderItem {
            product_id: "lantern".into(),
            artisan_id: "art-1".into(),
            quantity: 1,
            unit_price: Money::eur(1000),
            product_name: "lantern".into(),
        }],
        total_amount: Money::eur(1000),
        fulfillment: Fulfillment::Pickup {
            requested_date: None,
        },
        payment_method_id: Some("pm-card-9".into()),
        created_at: chrono::Utc::now(),
    };
    market
        .bus
        .publish(&Envelope::new("order-service", "ord-raced", created))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let told = templates_for(&market, "cust-late", 2).await;
    assert_eq!(told, ["order-cancelled", "order-received"]);
    let cancelled = market
        .notifications
        .list(&Filter {
            recipient: Some("cust-late".into()),
            template: Some("order-cancelled".into()),
            ..Filter::default()
        })
        .await
        .unwrap_or_default();
    assert!(
        cancelled[0].body.contains("no queda stock"),
        "{}",
        cancelled[0].body
    );
    assert!(
        market
            .payments
            .payment("ord-raced")
            .await
            .ok()
            .flatten()
            .is_none(),
        "never charged"
    );
    market.stop().await;
}

/// The messages about `order` (a reserve command names it in its payload).
fn about(collected: &Collector, order: &str) -> Vec<Envelope<AnyMessage>> {
    collected
        .messages()
        .into_iter()
        .filter(|e| match &e.data {
            AnyMessage::ReserveStock(r) => r.order_id == order,
            _ => e.aggregate_id == order,
        })
        .collect()
}

#[tokio::test]
async fn a_duplicate_order_created_runs_one_saga() {
    let server = NatsServer::start();
    let market = market(&server, Settings::new(secret())).await;
    stock(&market, "honey", 10).await;
    stock(&market, "soap", 10).await;
    let tally = Collector::start(
        &market.bus,
        Subscription::new("e2e", "tally")
            .to::<ReserveStock>()
            .to::<OrderConfirmed>(),
    )
    .await;
    let created = OrderCreated {
        customer_id: "cust-dup".into(),
        items: ["honey", "soap"]
            .iter()
            .map(|p| OrderItem {
                product_id: (*p).into(),
                artisan_id: "art-1".into(),
                quantity: 2,
                unit_price: Money::eur(1000),
                product_name: (*p).into(),
            })
            .collect(),
        total_amount: Money::eur(4000),
        fulfillment: Fulfillment::Pickup {
            requested_date: None,
        },
        payment_method_id: Some("pm-card-1".into()),
        created_at: chrono::Utc::now(),
    };
    let first = Envelope::new("order-service", "ord-dup", created);
    // The same event twice (broker dedup), and the same order announced again under a
    // new id (as a retrying producer past the dedup window would).
    market
        .bus
        .publish(&first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    market
        .bus
        .publish(&first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    market
        .bus
        .publish(&first.clone().with_event_id(EventId::new()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let confirmed = eventually(
        Duration::from_secs(20),
        || async { about(&tally, "ord-dup") },
        |seen| {
            seen.iter()
                .any(|e| matches!(e.data, AnyMessage::OrderConfirmed(_)))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = about(&tally, "ord-dup");
    let reserves = seen
        .iter()
        .filter(|e| matches!(e.data, AnyMessage::ReserveStock(_)))
        .count();
    let confirms = seen
        .iter()
        .filter(|e| matches!(e.data, AnyMessage::OrderConfirmed(_)))
        .count();
    assert!(!confirmed.is_empty());
    assert_eq!(
        (reserves, confirms),
        (2, 1),
        "one reservation per product, one confirmation"
    );
    assert_eq!(
        market
            .payments
            .gateway_charges()
            .await
            .map(|c| c.len())
            .ok(),
        Some(1),
        "charged once"
    );
    for product in ["honey", "soap"] {
        let p = market.inventory.product(product).await.ok().flatten();
        assert_eq!(
            p.map(|p| (p.on_hand, p.reserved())),
            Some((8, 0)),
            "{product}"
        );
    }
    tally.stop().await;
    market.stop().await;
}

#[tokio::test]
async fn inventory_crashing_mid_flow_loses_no_stock() {
    let server = NatsServer::start();
    let mut settings = Settings::new(secret());
    settings.inventory.ack_wait = Duration::from_secs(2);
    let mut market = market(&server, settings).await;
    for product in ["a", "b", "c"] {
        stock(&market, product, 30).await;
    }
    let mut placed = Vec::new();
    for i in 0..24_u32 {
        let product = ["a", "b", "c"][i as usize % 3];
        let method = if i % 6 == 5 {
            "pm-declined-1"
        } else {
            "pm-card-1"
        };
        placed.push((
            place(
                &market.api,
                &format!("cust-{i}"),
                &[(product, 1 + i % 2)],
                method,
            )
            .await,
            product,
            1 + i % 2,
        ));
        if i == 11 {
            market
                .restart_inventory(true)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut sold: BTreeMap<&str, u32> = BTreeMap::new();
    for (id, product, units) in &placed {
        let order = settled(&market, id)
            .await
            .unwrap_or_else(|| panic!("{id} unknown"));
        match order.status {
            OrderStatus::Confirmed => *sold.entry(product).or_default() += units,
            OrderStatus::Cancelled => {}
            other => panic!("{id} still {other:?}"),
        }
    }
    for product in ["a", "b", "c"] {
        let expected = 30 - sold.get(product).copied().unwrap_or(0);
        let p = eventually(
            Duration::from_secs(20),
            || async { market.inventory.product(product).await.ok().flatten() },
            |p| {
                p.as_ref()
                    .is_some_and(|p| p.reserved() == 0 && p.on_hand == expected)
            },
        )
        .await;
        assert_eq!(
            p.map(|p| (p.on_hand, p.available())),
            Some((expected, expected)),
            "{product}"
        );
    }
    assert!(sold.values().sum::<u32>() > 0);
    market.stop().await;
}

/// A service binary (`marketplace-demo serve <name>`) on a free loopback port.
struct Process {
    child: tokio::process::Child,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn spawn(name: &str, env: &[(String, String)]) -> Process {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace-demo"))
        .args(["serve", name])
        .envs(env.iter().cloned())
        .env(
            format!("{}_HTTP_ADDR", name.to_uppercase()),
            format!("127.0.0.1:{port}"),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    Process { child, url }
}

async fn healthy(process: &mut Process, name: &str) {
    let client = Client::builder(name, &process.url)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(answer) = client.get_json::<serde_json::Value>("/health").await {
            assert_eq!(answer["bus"], "nats");
            assert!(!answer.to_string().contains(NATS_PASSWORD), "{answer}");
            return;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("{name} exited: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The password of the NATS user the services run as.
const NATS_PASSWORD: &str = "nats-pw-e2e-4d7a";

#[tokio::test]
async fn the_four_services_as_separate_processes() {
    let server = NatsServer::builder()
        .user("services", NATS_PASSWORD)
        .start();
    let secret_text = "e2e-secret-e2e-secret-e2e-secret-e2e";
    // Every process exports its spans and metrics to one OTLP receiver.
    let otlp = a4co_testkit::otlp::Receiver::start().await;
    let mut env = vec![
        ("NATS_URL".to_owned(), server.url()),
        ("NATS_USER".to_owned(), "services".to_owned()),
        ("NATS_PASSWORD".to_owned(), NATS_PASSWORD.to_owned()),
        ("SERVICE_JWT_SECRET".to_owned(), secret_text.to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    let mut inventory = spawn("inventory", &env).await;
    let mut payment = spawn("payment", &env).await;
    let mut notification = spawn("notification", &env).await;
    env.push(("INVENTORY_URL".to_owned(), inventory.url.clone()));
    env.push(("PAYMENT_URL".to_owned(), payment.url.clone()));
    let mut order = spawn("order", &env).await;
    for (p, name) in [
        (&mut inventory, "inventory-service"),
        (&mut payment, "payment-service"),
        (&mut notification, "notification-service"),
        (&mut order, "order-service"),
    ] {
        healthy(p, name).await;
    }
    // A real Prometheus scrapes the four from now on, with the operator's alert rules.
    let prometheus = prometheus_scraping([&order, &inventory, &payment, &notification]).await;

    let operator = Issuer::new(
        secret(),
        "e2e-operator",
        ["inventory:read", "inventory:write", "notification:read"],
    );
    let as_operator = |url: &str| {
        Client::builder("service", url)
            .service_auth(operator.clone())
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (stock_api, notification_api) =
        (as_operator(&inventory.url), as_operator(&notification.url));
    let _: serde_json::Value = stock_api
        .put_json(
            "/api/v1/inventory/vase",
            &json!({"name": "Jarrón", "artisanId": "art-1", "category": "ceramics", "unitPrice": {"amountMinor": 2500, "currency": "EUR"}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _: serde_json::Value = stock_api
        .post_json(
            "/api/v1/inventory/vase/adjust",
            &json!({"quantity": 10, "reason": "restock"}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let orders = Client::builder("order-service", &order.url)
        .retry(a4co_http::retry::never())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let good = place(&orders, "cust-proc", &[("vase", 4)], "pm-card-1").await;
    let bad = place(&orders, "cust-proc", &[("vase", 1)], "pm-declined-1").await;
    let refused = orders
        .post("/api/v1/orders")
        .json(&order_body("cust-proc", &[("vase", 11)], "pm-card-1"))
        .send()
        .await;
    assert_eq!(
        refused.err().and_then(|e| e.status()),
        Some(409),
        "more than in stock"
    );

    let status_of = |id: String| {
        let orders = orders.clone();
        async move {
            eventually(
                Duration::from_secs(20),
                || async {
                    orders
                        .get_json::<Order>(&format!("/api/v1/orders/{id}"))
                        .await
                        .ok()
                },
                |o| o.as_ref().is_some_and(|o| o.status != OrderStatus::Pending),
            )
            .await
            .map(|o| o.status)
        }
    };
    assert_eq!(status_of(good).await, Some(OrderStatus::Confirmed));
    assert_eq!(status_of(bad).await, Some(OrderStatus::Cancelled));
    let vase: serde_json::Value = eventually(
        Duration::from_secs(20),
        || async {
            stock_api
                .get_json::<serde_json::Value>("/api/v1/inventory/vase")
                .await
                .unwrap_or_default()
        },
        |v| v["reserved"] == 0 && v["onHand"] == 6,
    )
    .await;
    assert_eq!(
        (vase["onHand"].as_u64(), vase["available"].as_u64()),
        (Some(6), Some(6))
    );
    let told: Vec<serde_json::Value> = eventually(
        Duration::from_secs(20),
        || async {
            notification_api
                .get_json::<Vec<serde_json::Value>>("/api/v1/notifications?recipient=cust-proc")
                .await
                .unwrap_or_default()
        },
        |n| n.len() >= 6,
    )
    .await;
    let mut templates: Vec<&str> = told.iter().filter_map(|n| n["template"].as_str()).collect();
    templates.sort_unstable();
    assert_eq!(
        templates,
        [
            "order-cancelled",
            "order-confirmed",
            "order-received",
            "order-received",
            "payment-failed",
            "payment-received"
        ]
    );
    let metrics = Client::builder("order-service", &order.url)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let scrape = metrics
        .get("/metrics")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    // Whole names, as design-v2's queries use them.
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in [
        "microservices_events_published_total",
        "microservices_events_processed_total",
        "microservices_event_processing_duration_seconds_bucket",
        "microservices_sync_requests_total",
        "microservices_sync_request_duration_seconds_bucket",
        "microservices_circuit_breaker_state",
    ] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("target_info{") && l.contains("service_name=\"order-service\"")),
        "{text}"
    );
    prometheus_reads_the_services(&prometheus, &orders).await;
    // SIGTERM: each drains its work and exits cleanly.
    for (mut p, name) in [
        (order, "order"),
        (inventory, "inventory"),
        (payment, "payment"),
        (notification, "notification"),
    ] {
        let pid = p.child.id().unwrap_or_else(|| panic!("{name} has no pid"));
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(sent.success());
        let exited = tokio::time::timeout(Duration::from_secs(15), p.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} did not stop on SIGTERM"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(exited.success(), "{name} exited with {exited}");
    }
    // Stopping flushed what each exported: the traces cross the processes.
    traces_cross_processes(&otlp);
}

/// A file of docs/operations/.
fn operations_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/operations")
        .join(name)
}

/// A real Prometheus scraping `processes`, with docs/operations' alert rules (which pass
/// `promtool check rules`), once it has scraped each of them.
async fn prometheus_scraping(processes: [&Process; 4]) -> a4co_testkit::prometheus::Prometheus {
    use a4co_testkit::prometheus::{Prometheus, check_rules};
    let rules = operations_file("alerts.yml");
    let checked = check_rules(&rules).unwrap_or_else(|e| panic!("promtool check rules: {e}"));
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let targets = processes.map(|p| p.url.trim_start_matches("http://").to_owned());
    let prometheus = Prometheus::start(&targets, std::slice::from_ref(&rules)).await;
    prometheus
        .eventually("sum(up)", Duration::from_secs(30), |r| {
            r.first().is_some_and(|s| s.value == 4.0)
        })
        .await;
    prometheus
}

/// What Prometheus scraped while the orders ran: it answers design-v2's own expressions
/// and every query of the dashboard, and evaluates every rule without error (none firing).
async fn prometheus_reads_the_services(
    prometheus: &a4co_testkit::prometheus::Prometheus,
    orders: &Client,
) {
    use a4co_testkit::prometheus::Sample;
    let within = Duration::from_secs(30);
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    // A rate needs a counter seen rising between scrapes (one a second): an order now and
    // then until it is.
    let deadline = tokio::time::Instant::now() + within;
    loop {
        place(orders, "cust-prom", &[("vase", 1)], "pm-card-1").await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let rising = prometheus
            .query("sum(rate(microservices_sync_requests_total[5m])) > 0 and sum(rate(microservices_events_processed_total[5m])) > 0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !rising.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rate after 30 s of orders"
        );
    }

    // design-v2's dashboard: request rate, publish rate, processing latency buckets.
    let rate = prometheus
        .eventually("rate(microservices_sync_requests_total[5m])", within, |r| {
            r.iter().any(|s| s.value > 0.0)
        })
        .await;
    assert!(
        rate.iter()
            .any(|s| label(s, "source_service") == "order-service"
                && label(s, "target_service") == "inventory-service"),
        "{rate:?}"
    );
    for expr in [
        "rate(microservices_events_published_total[5m])",
        "rate(microservices_event_processing_duration_seconds_bucket[5m])",
    ] {
        prometheus
            .eventually(expr, within, |r| r.iter().any(|s| s.value > 0.0))
            .await;
    }
    // p99 from the histogram, and events processed by status.
    let p99 = prometheus
        .eventually(
            "histogram_quantile(0.99, sum by (le) (rate(microservices_sync_request_duration_seconds_bucket[5m])))",
            within,
            |r| r.first().is_some_and(|s| s.value.is_finite() && s.value > 0.0),
        )
        .await;
    assert!(p99[0].value <= 10.0, "{p99:?}");
    let by_status = prometheus
        .eventually(
            "sum by (status) (microservices_events_processed_total)",
            within,
            |r| {
                r.iter()
                    .any(|s| label(s, "status") == "success" && s.value >= 10.0)
            },
        )
        .await;
    assert!(
        by_status
            .iter()
            .all(|s| label(s, "status") != "dead_letter"),
        "{by_status:?}"
    );

    // Every query of the dashboard runs; those of what this run did have data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(operations_file("dashboard.json"))
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("dashboard.json: {e}"));
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 14, "{exprs:?}");
    // No dead letter, no timer and no failed call in this run.
    let quiet = [
        "a4co_dead_letters_total",
        "a4co_saga_timer_lag_seconds",
        r#"status!~"2..""#,
    ];
    for expr in &exprs {
        let answer = prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("the dashboard's query fails: {e}"));
        // A rate or an increase needs two scrapes of a series: a series that has just
        // appeared gets its data within a second or two.
        if answer.is_empty() && !quiet.iter().any(|q| expr.contains(q)) {
            prometheus.eventually(expr, within, |r| !r.is_empty()).await;
        }
    }

    // The alert rules are evaluated without error, and none fires.
    let deadline = tokio::time::Instant::now() + within;
    let evaluated = loop {
        let rules = prometheus.rules().await.unwrap_or_else(|e| panic!("{e}"));
        if rules.len() == 7 && rules.iter().all(|(_, health, _)| health != "unknown") {
            break rules;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rules:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        evaluated.iter().all(|(_, health, _)| health == "ok"),
        "{evaluated:?}"
    );
    let alerts = prometheus.alerts().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        alerts.iter().all(|(_, state)| state != "firing"),
        "{alerts:?}"
    );
}

/// What the four processes exported over OTLP (at `RUST_LOG=warn`): every handling span is
/// the child of its publish span, across processes too, and every HTTP request served is
/// the child of the calling attempt's span; the metrics name their service.
fn traces_cross_processes(otlp: &a4co_testkit::otlp::Receiver) {
    let spans = otlp.spans();
    let by_id: BTreeMap<&str, &a4co_testkit::otlp::Span> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let consumers: Vec<_> = spans.iter().filter(|s| s.kind == "consumer").collect();
    assert!(consumers.len() >= 10, "{} consumer spans", consumers.len());
    let mut crossing = 0;
    for consumer in &consumers {
        let destination = consumer.attribute("messaging.destination.name");
        let producer = by_id
            .get(consumer.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("the parent of {consumer:?} was not exported"));
        assert_eq!(producer.kind, "producer", "{consumer:?} under {producer:?}");
        assert_eq!(producer.trace_id, consumer.trace_id);
        assert_eq!(
            producer.attribute("messaging.destination.name"),
            destination
        );
        assert_eq!(producer.attribute("messaging.operation.type"), Some("send"));
        assert_eq!(
            consumer.attribute("messaging.operation.type"),
            Some("process")
        );
        crossing += usize::from(producer.service != consumer.service);
    }
    assert!(
        crossing >= 5,
        "only {crossing} handlings in another process than the publish"
    );
    let served: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == "server")
        .filter(|s| {
            s.attribute("path").is_some_and(|p| {
                p.starts_with("/api/v1/inventory/availability/") || p == "/api/v1/payments/validate"
            })
        })
        .collect();
    assert!(served.len() >= 2, "{served:?}");
    for request in &served {
        let attempt = by_id
            .get(request.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("the caller of {request:?} was not exported"));
        assert_eq!(
            (attempt.kind, attempt.service.as_str()),
            ("client", "order-service")
        );
        assert_eq!(attempt.attribute("server.address"), Some("127.0.0.1"));
        assert!(
            attempt
                .attribute("url.full")
                .is_some_and(|u| u.starts_with("http://127.0.0.1:"))
        );
        assert!(
            attempt
                .attribute("http.response.status_code")
                .is_some_and(|c| c.parse::<u16>().is_ok())
        );
    }
    let metrics = otlp.metric_names();
    for name in [
        "microservices_events_published",
        "microservices_events_processed",
        "microservices_sync_requests",
    ] {
        assert!(
            metrics
                .iter()
                .any(|(service, n)| service == "order-service" && n == name),
            "{name} from order-service missing in {metrics:?}"
        );
    }
}

#[tokio::test]
async fn a_service_with_bad_settings_refuses_to_start_and_says_why() {
    let cases = [
        (vec![], "SERVICE_JWT_SECRET is not set"),
        (
            vec![
                ("SERVICE_JWT_SECRET", "e2e-secret-e2e-secret-e2e-secret-e2e"),
                ("PAYMENT_DECLINE_RATE", "often"),
            ],
            "PAYMENT_DECLINE_RATE=\"often\"",
        ),
        (
            vec![
                ("SERVICE_JWT_SECRET", "e2e-secret-e2e-secret-e2e-secret-e2e"),
                ("NATS_URL", "nats://127.0.0.1:1"),
            ],
            "no NATS server answered at nats://127.0.0.1:1 (NATS_URL)",
        ),
        (
            vec![
                ("SERVICE_JWT_SECRET", "e2e-secret-e2e-secret-e2e-secret-e2e"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported",
        ),
        (
            vec![
                ("SERVICE_JWT_SECRET", "e2e-secret-e2e-secret-e2e-secret-e2e"),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://collector:otlp-token-5e1d@[::1:4318",
                ),
            ],
            "OTEL_EXPORTER_OTLP_ENDPOINT: invalid endpoint '***'",
        ),
    ];
    for (env, says) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace-demo"))
            .args(["serve", "payment"])
            .env_clear()
            .envs(env)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{says}: it started");
        assert!(stderr.contains(says), "expected {says:?} in {stderr}");
        assert!(
            !stderr.contains("otlp-token-5e1d"),
            "the credential is shown: {stderr}"
        );
    }
}

/// Runs the demo binary with `args` and `env` (nothing else), at `RUST_LOG=trace`: whether
/// it succeeded, and everything it printed.
async fn demo_output(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace-demo"))
        .args(args)
        .env_clear()
        .env("RUST_LOG", "trace")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_demo_runs_on_a_server_that_requires_a_password_and_never_prints_it() {
    let server = NatsServer::builder().user("demo", NATS_PASSWORD).start();
    let jwt = (
        "SERVICE_JWT_SECRET",
        "e2e-secret-e2e-secret-e2e-secret-e2e".to_owned(),
    );
    let (ok, out) = demo_output(
        &["--orders", "12", "--quiet"],
        &[
            ("NATS_URL", server.url()),
            ("NATS_USER", "demo".into()),
            ("NATS_PASSWORD", NATS_PASSWORD.into()),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("orders: 12 placed of 12 sent"), "{out}");
    assert!(!out.contains(NATS_PASSWORD), "{out}");

    let port = server.port();
    let wrong = "wrong-pw-e2e-91b2";
    let cases = [
        (
            vec![("NATS_URL", format!("nats://demo:{wrong}@127.0.0.1:{port}"))],
            format!("NATS_URL nats://demo:***@127.0.0.1:{port}"),
        ),
        (
            vec![
                ("NATS_URL", server.url()),
                ("NATS_USER", "demo".into()),
                ("NATS_PASSWORD", wrong.into()),
            ],
            "the server refused the credentials of NATS_USER/NATS_PASSWORD".to_owned(),
        ),
        (
            vec![("NATS_URL", server.url())],
            "the server requires credentials: set NATS_USER/NATS_PASSWORD".to_owned(),
        ),
        (
            vec![
                ("NATS_URL", server.url()),
                ("NATS_TOKEN", wrong.into()),
                ("NATS_PASSWORD", wrong.into()),
            ],
            "NATS_PASSWORD is set without NATS_USER".to_owned(),
        ),
    ];
    for (mut env, says) in cases {
        env.push(jwt.clone());
        let (ok, out) = demo_output(&["serve", "payment"], &env).await;
        assert!(!ok, "it started with {env:?}");
        assert!(out.contains(&says), "expected {says:?} in {out}");
        assert!(!out.contains(wrong), "the password is shown: {out}");
    }
}

#[tokio::test]
async fn the_showcase_over_nats_adds_up() {
    let server = NatsServer::start();
    let market = market(&server, Settings::new(secret())).await;
    let plan = marketplace_demo::Plan {
        progress: false,
        ..marketplace_demo::Plan::default()
    };
    let summary = marketplace_demo::run(&market, &plan, "test".into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cancelled: usize = summary.cancelled.values().sum();
    let refused: usize = summary.rejected.values().sum();
    assert_eq!(summary.attempted, 40);
    assert_eq!(summary.placed + refused, 40);
    assert_eq!(
        (summary.unfinished, summary.confirmed + cancelled),
        (0, summary.placed),
        "{summary}"
    );
    assert!(summary.confirmed > 0 && cancelled > 0, "{summary}");
    assert!(
        summary.cancelled.contains_key("payment-failed"),
        "{summary}"
    );
    // Nothing still held, nothing sold twice.
    for (product, before, after, available) in &summary.stock {
        assert!(
            after <= before && available == after,
            "{product}: {summary}"
        );
    }
    let scarce = summary.stock.iter().find(|s| s.0 == "farol-forja");
    assert_eq!(
        scarce.map(|s| (s.1, s.2)),
        Some((4, 0)),
        "the four lanterns sold, no more"
    );
    assert_eq!(
        summary.notifications.get("order-received"),
        Some(&summary.placed)
    );
    assert_eq!(
        summary.notifications.get("order-confirmed"),
        Some(&summary.confirmed)
    );
    assert!(summary.latency.0 <= summary.latency.1);
    market.stop().await;
}

/// Every message the one-process demo puts on NATS, in every stream, read back with its raw
/// headers: each carries a valid W3C trace context although `RUST_LOG=warn` turns the
/// spans' log lines off, and the messages of one order stay in one trace.
#[tokio::test]
async fn every_message_of_the_demo_carries_trace_context_at_rust_log_warn() {
    use a4co_events::TraceContext;
    use a4co_events::bus::transport::{StreamSpec, Transport as _};
    let server = NatsServer::start();
    let (ok, out) = demo_output(
        &["--orders", "20", "--quiet"],
        &[("NATS_URL", server.url()), ("RUST_LOG", "warn".into())],
    )
    .await;
    assert!(ok, "{out}");
    let bus = AnyBus::connect(Some(&server.url()), "trace-reader", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let AnyBus::Nats(bus) = &bus else {
        panic!("not on NATS")
    };
    let mut read = 0;
    let mut traces: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for spec in StreamSpec::all(1) {
        let mut from = 1;
        loop {
            let batch = bus
                .transport()
                .read_stream(&spec.name, from, 500)
                .await
                .unwrap_or_else(|e| panic!("reading {}: {e}", spec.name));
            let Some((last, _, _)) = batch.last() else {
                break;
            };
            from = last + 1;
            for (sequence, message, _) in &batch {
                read += 1;
                let trace = TraceContext::extract(&message.headers).unwrap_or_else(|| {
                    panic!(
                        "{} #{sequence} ({}) has no valid traceparent: {:?}",
                        spec.name, message.subject, message.headers
                    )
                });
                let body: serde_json::Value =
                    serde_json::from_slice(&message.payload).unwrap_or_default();
                if let Some(correlation) = body["metadata"]["correlationId"].as_str() {
                    traces
                        .entry(correlation.to_owned())
                        .or_default()
                        .insert(trace.trace_id().to_owned());
                }
            }
        }
    }
    // 20 orders: each is created, reserved, paid or declined, confirmed or cancelled.
    assert!(read >= 20 * 5, "only {read} messages on the streams");
    let split: Vec<_> = traces.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "correlations spread over several traces: {split:?}"
    );
    assert!(traces.len() >= 20, "{traces:?}");
}

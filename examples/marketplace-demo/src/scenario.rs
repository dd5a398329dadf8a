//! The demo's run: seed a catalog of Jaén's artisans, place orders over the order API,
//! follow them to the end, and sum up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use a4co_events::bus::{Subscriber, Subscription};
use a4co_events::catalog::inventory::AdjustmentReason;
use a4co_events::catalog::order::{OrderCancelled, OrderConfirmed};
use a4co_events::service::StartError;
use a4co_events::{AnyMessage, Envelope, Money};
use futures::StreamExt as _;
use inventory_service::ProductDetails;
use order_service::Order;
use serde_json::json;

use crate::marketplace::Marketplace;

/// A product of the demo's catalog.
#[derive(Clone, Copy, Debug)]
pub struct Seed {
    /// Its id.
    pub id: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Its artisan.
    pub artisan: &'static str,
    /// Its category.
    pub category: &'static str,
    /// Its price in euro cents.
    pub cents: i64,
    /// Units on hand at the start.
    pub stock: u32,
}

/// The catalog: five products in good supply, and one scarce (`farol-forja`, 4 units)
/// that some orders will not get.
pub const CATALOG: [Seed; 6] = [
    Seed {
        id: "aceite-picual-500",
        name: "Aceite de oliva virgen extra picual 500 ml",
        artisan: "art-almazara-ubeda",
        category: "food",
        cents: 1250,
        stock: 60,
    },
    Seed {
        id: "cuenco-verde",
        name: "Cuenco de cerámica verde de Úbeda",
        artisan: "art-ceramica-tito",
        category: "ceramics",
        cents: 3400,
        stock: 25,
    },
    Seed {
        id: "cesta-esparto",
        name: "Cesta de esparto",
        artisan: "art-esparto-cazorla",
        category: "crafts",
        cents: 2800,
        stock: 20,
    },
    Seed {
        id: "miel-romero",
        name: "Miel de romero 500 g",
        artisan: "art-colmenar-segura",
        category: "food",
        cents: 950,
        stock: 40,
    },
    Seed {
        id: "jabon-aceite",
        name: "Jabón de aceite de oliva",
        artisan: "art-almazara-ubeda",
        category: "cosmetics",
        cents: 450,
        stock: 80,
    },
    Seed {
        id: "farol-forja",
        name: "Farol de forja",
        artisan: "art-forja-baeza",
        category: "ironwork",
        cents: 7500,
        stock: 4,
    },
];

/// The scarce product.
pub const SCARCE: &str = "farol-forja";

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `None`: the showcase mix (40 orders: some succeed, some find no stock, some have
    /// their payment declined). `Some(n)`: a load run of `n` ordinary orders.
    pub orders: Option<usize>,
    /// Orders placed at once.
    pub concurrency: usize,
    /// Each placer waits until its order is confirmed or cancelled before it places the
    /// next (a closed loop): with `concurrency` 1, the latency of one order alone rather
    /// than of orders queued behind each other.
    pub settle: bool,
    /// Print progress every second.
    pub progress: bool,
    /// How long to wait for the last orders to finish.
    pub patience: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            orders: None,
            concurrency: 8,
            settle: false,
            progress: true,
            patience: Duration::from_secs(30),
        }
    }
}

/// The demo's summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// `in-memory bus` or `NATS at <url>`.
    pub mode: String,
    /// Orders sent to the API.
    pub attempted: usize,
    /// Orders the API took (201).
    pub placed: usize,
    /// Orders the API refused, by error code (`out-of-stock`, ...).
    pub rejected: BTreeMap<String, usize>,
    /// Orders confirmed.
    pub confirmed: usize,
    /// Orders cancelled, by reason.
    pub cancelled: BTreeMap<String, usize>,
    /// Orders neither confirmed nor cancelled when the run ended.
    pub unfinished: usize,
    /// Per product: (id, on hand before, on hand after, available after).
    pub stock: Vec<(String, u32, u32, u32)>,
    /// Notifications sent, by template.
    pub notifications: BTreeMap<String, usize>,
    /// From placing an order to its confirmation or cancellation: p50 and p99.
    pub latency: (Duration, Duration),
    /// From the first order placed to the last one finished.
    pub elapsed: Duration,
}

impl Summary {
    /// Finished orders per second over the run.
    pub fn orders_per_second(&self) -> f64 {
        let finished = self.confirmed + self.cancelled.values().sum::<usize>();
        finished as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(f, "a4co marketplace demo: {}", self.mode)?;
        writeln!(
            f,
            "orders: {} placed of {} sent, finished in {:.1} s ({:.1} orders/s)",
            self.placed,
            self.attempted,
            self.elapsed.as_secs_f64(),
            self.orders_per_second()
        )?;
        writeln!(f, "  confirmed                  {:>5}", self.confirmed)?;
        writeln!(
            f,
            "  cancelled                  {:>5}",
            self.cancelled.values().sum::<usize>()
        )?;
        for (reason, n) in &self.cancelled {
            writeln!(f, "    {reason:<24} {n:>5}")?;
        }
        if !self.rejected.is_empty() {
            writeln!(
                f,
                "  refused at checkout        {:>5}",
                self.rejected.values().sum::<usize>()
            )?;
            for (code, n) in &self.rejected {
                writeln!(f, "    {code:<24} {n:>5}")?;
            }
        }
        if self.unfinished > 0 {
            writeln!(f, "  still running              {:>5}", self.unfinished)?;
        }
        writeln!(f, "stock                        before  after  available")?;
        for (id, before, after, available) in &self.stock {
            writeln!(f, "  {id:<26} {before:>6} {after:>6} {available:>10}")?;
        }
        let sent: usize = self.notifications.values().sum();
        writeln!(f, "notifications sent: {sent}")?;
        for (template, n) in &self.notifications {
            writeln!(f, "  {template:<26} {n:>5}")?;
        }
        write!(
            f,
            "latency, order placed to confirmed or cancelled: p50 {:.1} ms, p99 {:.1} ms",
            ms(self.latency.0),
            ms(self.latency.1)
        )
    }
}

/// One order to place.
#[derive(Clone, Debug)]
struct Planned {
    customer: String,
    lines: Vec<(&'static str, u32)>,
    payment_method_id: String,
}

fn showcase() -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(2026);
    let ordinary: Vec<&Seed> = CATALOG.iter().filter(|s| s.id != SCARCE).collect();
    let mut plan = Vec::new();
    // Eight customers want the four lanterns at once.
    for i in 0..8 {
        plan.push(Planned {
            customer: format!("cust-{i:03}"),
            lines: vec![(SCARCE, 1)],
            payment_method_id: format!("pm-card-{i}"),
        });
    }
    for i in 8..40 {
        let lines = (0..rng.usize(1..=3))
            .map(|_| (ordinary[rng.usize(..ordinary.len())].id, rng.u32(1..=2)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        // Every eighth customer's card is declined.
        let method = if i % 8 == 3 { "pm-declined" } else { "pm-card" };
        plan.push(Planned {
            customer: format!("cust-{i:03}"),
            lines,
            payment_method_id: format!("{method}-{i}"),
        });
    }
    plan
}

fn load(n: usize) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(7);
    let ordinary: Vec<&Seed> = CATALOG.iter().filter(|s| s.id != SCARCE).collect();
    (0..n)
        .map(|i| Planned {
            customer: format!("cust-{:05}", i % 500),
            lines: vec![(ordinary[rng.usize(..ordinary.len())].id, 1)],
            payment_method_id: format!("pm-card-{i}"),
        })
        .collect()
}

/// Sets every product of the catalog to its seed stock (or `at_least`, if more): a re-run
/// on the same NATS starts from the same shelves.
async fn seed(market: &Marketplace, at_least: u32) -> Result<(), StartError> {
    let failed =
        |e: &dyn fmt::Display| StartError::invalid_config(format!("seeding the catalog: {e}"));
    for s in CATALOG {
        let details = ProductDetails::new(s.id, s.name, s.artisan, s.category, Money::eur(s.cents));
        let product = market
            .inventory
            .put_product(details)
            .await
            .map_err(|e| failed(&e))?;
        let target = if s.id == SCARCE {
            s.stock
        } else {
            s.stock.max(at_least)
        };
        let delta = i64::from(target) - i64::from(product.on_hand);
        if delta != 0 {
            let adjusted = market
                .inventory
                .adjust(
                    s.id,
                    delta,
                    AdjustmentReason::Correction,
                    "marketplace-demo",
                    Some("demo seed".into()),
                )
                .await;
            match adjusted {
                Ok(_) => {}
                // Units still held by an earlier run's orders: start from what is left.
                Err(e @ inventory_service::AdjustError::Insufficient { .. }) => {
                    tracing::warn!(product = s.id, error = %e, "the seed stock could not be fully set");
                }
                Err(e) => return Err(failed(&e)),
            }
        }
    }
    Ok(())
}

/// When each order finished, and how.
type Finished = Arc<Mutex<HashMap<String, (Instant, Option<String>)>>>;

/// Seeds the catalog, places the plan's orders over the order API, follows them until
/// they finish (or `plan.patience` runs out), and sums up.
///
/// # Errors
/// Seeding or subscribing failed.
pub async fn run(market: &Marketplace, plan: &Plan, mode: String) -> Result<Summary, StartError> {
    let orders = match plan.orders {
        None => showcase(),
        Some(n) => load(n),
    };
    // A load run needs shelves deep enough for every order.
    let shelves = plan.orders.map_or(0, |n| {
        u32::try_from(n).unwrap_or(u32::MAX).saturating_mul(2)
    });
    seed(market, shelves).await?;
    let before = stock(market).await;
    // On NATS, earlier runs' notifications are still there: count this run's.
    let told_before = market.notifications.counts().await.unwrap_or_default();

    let finished: Finished = Arc::default();
    let settled = Arc::new(tokio::sync::Notify::new());
    let record = finished.clone();
    let tell = settled.clone();
    let outcomes = market
        .bus
        .subscribe(
            Subscription::new("marketplace-demo", "outcomes")
                .to::<OrderConfirmed>()
                .to::<OrderCancelled>()
                .max_in_flight(256),
            move |e: Envelope<AnyMessage>, _| {
                let (record, tell) = (record.clone(), tell.clone());
                async move {
                    let reason = match &e.data {
                        AnyMessage::OrderCancelled(c) => Some(kebab(&c.reason)),
                        _ => None,
                    };
                    record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(e.aggregate_id)
                        .or_insert((Instant::now(), reason));
                    tell.notify_waiters();
                    Ok(())
                }
            },
        )
        .await
        .map_err(|e| StartError::invalid_config(format!("subscribing: {e}")))?;

    let started = Instant::now();
    let mut summary = Summary {
        mode,
        attempted: orders.len(),
        ..Summary::default()
    };
    let placed: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let rejected: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let total = orders.len();
    let report = {
        let (finished, placed) = (finished.clone(), placed.clone());
        move |last: &mut (usize, usize, usize)| {
            let placed = placed.lock().unwrap_or_else(PoisonError::into_inner);
            let done = finished.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut confirmed, mut cancelled) = (0, 0);
            for (id, _) in placed.iter() {
                match done.get(id) {
                    Some((_, None)) => confirmed += 1,
                    Some((_, Some(_))) => cancelled += 1,
                    None => {}
                }
            }
            let now = (placed.len(), confirmed, cancelled);
            if now != *last {
                *last = now;
                eprintln!(
                    "  [{:>5.2}s] placed {}/{total} · confirmed {confirmed} · cancelled {cancelled}",
                    started.elapsed().as_secs_f64(),
                    now.0,
                );
            }
        }
    };
    // The showcase takes well under a second: report it finely; a load run, each second.
    let every = Duration::from_millis(if plan.orders.is_some() { 1000 } else { 50 });
    let progress = plan.progress.then(|| {
        let report = report.clone();
        tokio::spawn(async move {
            let mut last = (0, 0, 0);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                report(&mut last);
            }
        })
    });

    futures::stream::iter(orders)
        .for_each_concurrent(plan.concurrency.max(1), |planned| {
            let (placed, rejected) = (placed.clone(), rejected.clone());
            let (finished, settled) = (finished.clone(), settled.clone());
            async move {
                let at = Instant::now();
                match place(market, &planned).await {
                    Ok(order) => {
                        placed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((order.order_id.clone(), at));
                        if plan.settle {
                            let deadline = tokio::time::Instant::now() + plan.patience;
                            loop {
                                let told = settled.notified();
                                let done = finished
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .contains_key(&order.order_id);
                                if done || tokio::time::timeout_at(deadline, told).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    Err(code) => {
                        *rejected
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(code)
                            .or_default() += 1;
                    }
                }
            }
        })
        .await;

    // A copy: the progress lines keep reading the shared list.
    let placed = placed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let deadline = Instant::now() + plan.patience;
    loop {
        let all_done = {
            let done = finished.lock().unwrap_or_else(PoisonError::into_inner);
            placed.iter().all(|(id, _)| done.contains_key(id))
        };
        if all_done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(progress) = progress {
        progress.abort();
        report(&mut (0, 0, 0));
    }
    outcomes.shutdown().await;

    let done = finished
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut latencies = Vec::new();
    let mut last = started;
    for (id, at) in &placed {
        match done.get(id) {
            Some((when, reason)) => {
                latencies.push(when.duration_since(*at));
                last = last.max(*when);
                match reason {
                    Some(reason) => *summary.cancelled.entry(reason.clone()).or_default() += 1,
                    None => summary.confirmed += 1,
                }
            }
            None => summary.unfinished += 1,
        }
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    summary.latency = (pick(0.50), pick(0.99));
    summary.elapsed = last.duration_since(started);
    summary.placed = placed.len();
    summary.rejected =
        std::mem::take(&mut *rejected.lock().unwrap_or_else(PoisonError::into_inner));
    summary.notifications = settled_notifications(market)
        .await
        .into_iter()
        .map(|(template, n)| {
            let earlier = told_before.get(&template).copied().unwrap_or(0);
            (template, n.saturating_sub(earlier))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let after = stock(market).await;
    summary.stock = before
        .into_iter()
        .map(|(id, (on_hand, _))| {
            let (now, available) = after.get(&id).copied().unwrap_or_default();
            (id, on_hand, now, available)
        })
        .collect();
    Ok(summary)
}

fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Places one order; a refusal comes back as its error code.
async fn place(market: &Marketplace, planned: &Planned) -> Result<Order, String> {
    let body = json!({
        "customerId": planned.customer,
        "items": planned.lines.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>(),
        "paymentMethod": "card",
        "paymentMethodId": planned.payment_method_id,
        "fulfillment": {"method": "delivery", "address": {"street": "Calle Maestra 5", "city": "Jaén", "postalCode": "23002"}},
    });
    market
        .api
        .post_json("/api/v1/orders", &body)
        .await
        .map_err(|e| {
            e.body()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| e.to_string())
        })
}

/// (on hand, available) per catalog product, by id.
async fn stock(market: &Marketplace) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    for s in CATALOG {
        if let Ok(Some(p)) = market.inventory.product(s.id).await {
            out.insert(s.id.to_owned(), (p.on_hand, p.available()));
        }
    }
    out
}

/// Notifications by template, once their count stops moving (they trail the orders).
async fn settled_notifications(market: &Marketplace) -> BTreeMap<String, usize> {
    let mut last = BTreeMap::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = market.notifications.counts().await.unwrap_or_default();
        if now == last && !now.is_empty() {
            break;
        }
        last = now;
    }
    last
}

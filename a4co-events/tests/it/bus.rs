//! The bus conformance suite: every test runs against the in-memory transport and against
//! a real nats-server, so the two cannot drift apart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a4co_events::bus::dlq::{DeadLetters, FaultKind, Filter, ReplayOptions};
use a4co_events::bus::transport::Transport;
use a4co_events::bus::{
    Backoff, DLQ_STREAM, DeliveryInfo, EventBus, HandlerError, Handlers, InboxCheck, Next,
    PublishErrorKind, Publisher, RawMessage, RetryPolicy, Subscriber, Subscription,
};
use a4co_events::catalog::inventory::InventoryAdjusted;
use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_events::{AnyMessage, Decoder, Envelope, Headers, Message, TraceContext};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::{Fixture, eventually, in_inbox, recv};

type Seen = mpsc::UnboundedSender<(Envelope<AnyMessage>, DeliveryInfo)>;

/// A handler that reports every message it gets and succeeds.
fn reporting(
    tx: Seen,
) -> impl Fn(Envelope<AnyMessage>, DeliveryInfo) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    move |message, info| {
        let _ = tx.send((message, info));
        std::future::ready(Ok(()))
    }
}

/// A handler that counts its calls in `calls` and succeeds.
fn counting(
    calls: &Arc<AtomicU64>,
) -> impl Fn(Envelope<AnyMessage>, DeliveryInfo) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    let calls = Arc::clone(calls);
    move |_, _| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

fn fast_retry(max_deliver: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_deliver,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).without_jitter(),
    )
}

fn order(aggregate: &str) -> Envelope<OrderCreated> {
    Envelope::new("order-service", aggregate, OrderCreated::example()).with_user_id("user-4711")
}

async fn dead_letters<T: Transport>(bus: &EventBus<T>) -> Vec<a4co_events::bus::dlq::DeadLetter> {
    DeadLetters::new(bus.transport().clone())
        .list(&Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect()
}

async fn dedup<T: Transport>(f: Fixture<T>) {
    let env = order("ord-1");
    let first = f.bus.publish(&env).await.unwrap();
    let second = f.bus.publish(&env).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "the same event id is stored once");
    assert_eq!(
        (first.stream.as_str(), first.sequence),
        ("ORDERS", second.sequence)
    );
    let third = f.bus.publish(&order("ord-1")).await.unwrap();
    assert_eq!(
        third.sequence,
        first.sequence + 1,
        "a new event id is a new message"
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "dedup").to::<OrderCreated>(),
            reporting(tx),
        )
        .await
        .unwrap();
    let (a, _) = recv(&mut rx, 5, "first").await;
    let (b, _) = recv(&mut rx, 5, "second").await;
    assert_eq!(a.event_id, env.event_id);
    assert_ne!(b.event_id, env.event_id);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a third delivery"
    );
    handle.shutdown().await;
}

async fn publish_errors_by_kind<T: Transport>(f: Fixture<T>) {
    let raw = RawMessage {
        subject: "nowhere.at_all".into(),
        headers: Headers::new(),
        payload: Bytes::from_static(b"{}"),
    };
    let err = f.bus.publish_raw(raw).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::NoStream, "{err}");
    assert!(err.to_string().contains("nowhere.at_all"), "{err}");

    // What every consumer would dead-letter is refused with its reason, nothing sent.
    let err = f.bus.publish(&order("")).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::InvalidMessage, "{err}");
    assert!(err.to_string().contains("aggregateId"), "{err}");
    let mut bad = order("ord-1");
    bad.data.items.clear(); // the schema asks for at least one line
    let err = f.bus.publish(&bad).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::InvalidMessage, "{err}");
    assert!(err.to_string().contains("schema violation"), "{err}");
    let err = f.bus.publish_pipelined(&bad).await.err().unwrap();
    assert_eq!(err.kind(), PublishErrorKind::InvalidMessage, "{err}");
    // An aggregate id with a line break goes in the body, which carries it: no header
    // holds it any more.
    f.bus.publish(&order("ord-1\r\nX-Evil: 1")).await.unwrap();
    // What the wire cannot carry is refused with a reason, never sent broken (or panicked on).
    let mut headers = order("ord-1").headers();
    headers.insert("bad name".to_owned(), "x");
    let raw = RawMessage {
        subject: "order.created".into(),
        headers,
        payload: Bytes::from(order("ord-1").to_json()),
    };
    let err = f.bus.publish_raw(raw).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::InvalidMessage, "{err}");
    assert!(err.to_string().contains("\"bad name\""), "{err}");
    assert!(dead_letters(&f.bus).await.is_empty());
    let stored = f
        .bus
        .transport()
        .read_stream("ORDERS", 1, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "only the valid envelope was stored");
}

async fn a_multi_line_failure_reason_is_dead_lettered<T: Transport>(f: Fixture<T>) {
    let handler = |env: Envelope<AnyMessage>, _: DeliveryInfo| {
        std::future::ready(if env.aggregate_id == "ord-bad" {
            Err(HandlerError::permanent("line one\r\nline two"))
        } else {
            Ok(())
        })
    };
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory", "orders").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-bad")).await.unwrap();
    f.bus.publish(&order("ord-good")).await.unwrap();
    eventually(10, "one dead letter, one handled", || async {
        let s = handle.stats();
        s.dead_lettered == 1 && s.handled == 1
    })
    .await;
    let letters = dead_letters(&f.bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].reason, "permanent: line one\r\nline two",
        "the record keeps it whole"
    );
    handle.shutdown().await;
}

async fn pipelined_publish<T: Transport>(f: Fixture<T>) {
    let envelopes: Vec<_> = (0..500).map(|i| order(&format!("ord-{i}"))).collect();
    let mut pending = Vec::new();
    for env in &envelopes {
        pending.push(f.bus.publish_pipelined(env).await.unwrap());
    }
    let acks = futures::future::join_all(pending).await;
    let sequences: HashSet<u64> = acks.into_iter().map(|a| a.unwrap().sequence).collect();
    assert_eq!(sequences.len(), 500, "every message stored once");
}

async fn typed_delivery<T: Transport>(f: Fixture<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "typed").to::<OrderConfirmed>(),
            reporting(tx),
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap(); // not subscribed
    let sent = Envelope::new("order-service", "ord-2", OrderConfirmed::example());
    f.bus.publish(&sent).await.unwrap();
    let (got, info) = recv(&mut rx, 5, "confirmed").await;
    assert_eq!(
        got.clone().downcast::<OrderConfirmed>().unwrap().data,
        OrderConfirmed::example()
    );
    assert_eq!(
        (got.event_id, info.attempt, &*info.stream),
        (sent.event_id, 1, "ORDERS")
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "order.created is not subscribed"
    );
    handle.shutdown().await;
}

async fn typed_handlers_get_their_message_type<T: Transport>(f: Fixture<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = Subscription::new("t", "typed-on")
        .retry(fast_retry(3))
        .of::<OrderConfirmed>();
    // No parameter type spelled out: the closure gets a clone of `tx` and an
    // `Envelope<OrderConfirmed>`.
    let handle = f
        .bus
        .on_with(sub, tx, |tx, confirmed, info| async move {
            match confirmed.aggregate_id.as_str() {
                "ord-bad" => return Err(HandlerError::permanent("no such order")),
                "ord-slow" if info.attempt == 1 => return Err(HandlerError::retryable("busy")),
                _ => {}
            }
            let _ = tx.send((confirmed.aggregate_id, confirmed.data, info.attempt));
            Ok(())
        })
        .await
        .unwrap();
    f.bus.publish(&order("ord-created")).await.unwrap(); // another type: not delivered
    for id in ["ord-1", "ord-slow", "ord-bad"] {
        let confirmed = Envelope::new("order-service", id, OrderConfirmed::example());
        f.bus.publish(&confirmed).await.unwrap();
    }
    eventually(10, "two handled, one dead-lettered", || async {
        let s = handle.stats();
        s.handled == 2 && s.dead_lettered == 1
    })
    .await;
    let mut got = vec![
        recv(&mut rx, 5, "first").await,
        recv(&mut rx, 5, "second").await,
    ];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("ord-1".to_owned(), OrderConfirmed::example(), 1),
            ("ord-slow".to_owned(), OrderConfirmed::example(), 2),
        ]
    );
    assert!(rx.try_recv().is_err(), "order.created is not subscribed");
    let stats = handle.shutdown().await;
    assert_eq!(
        (stats.handled, stats.retried, stats.dead_lettered),
        (2, 1, 1)
    );
    let letters = dead_letters(&f.bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "permanent: no such order");
    assert_eq!(letters[0].event_type.as_deref(), Some("order.confirmed"));
}

/// What [`routed_handlers_take_only_their_types`] counts.
#[derive(Clone, Default)]
struct Tally {
    confirmed: Arc<Mutex<Vec<String>>>,
    adjusted: Arc<AtomicU64>,
    layered: Arc<AtomicU64>,
}

async fn confirmed(
    tally: Tally,
    message: Envelope<OrderConfirmed>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    tally.confirmed.lock().unwrap().push(message.aggregate_id);
    Ok(())
}

async fn adjusted(
    tally: Tally,
    _: Envelope<InventoryAdjusted>,
    _: DeliveryInfo,
) -> Result<(), HandlerError> {
    tally.adjusted.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn routed_handlers_take_only_their_types<T: Transport>(f: Fixture<T>) {
    let tally = Tally::default();
    let layered = Arc::clone(&tally.layered);
    let handlers = Handlers::with_state(tally.clone())
        .on::<OrderConfirmed>(confirmed)
        .on::<InventoryAdjusted>(adjusted)
        .layer(move |message: Envelope<AnyMessage>, delivery, next: Next| {
            layered.fetch_add(1, Ordering::SeqCst);
            next.run(message, delivery)
        });
    // Two types on two streams: one durable consumer on each. `order.created` is taken
    // beyond the handlers' subjects, so it has no route.
    let sub = Subscription::new("t", "routed").subject(OrderCreated::SUBJECT);
    let handle = f.bus.subscribe(sub, handlers).await.unwrap();
    for id in ["ord-1", "ord-2"] {
        let message = Envelope::new("order-service", id, OrderConfirmed::example());
        f.bus.publish(&message).await.unwrap();
    }
    let adjustment = Envelope::new("inventory-service", "prod-1", InventoryAdjusted::example());
    f.bus.publish(&adjustment).await.unwrap();
    f.bus.publish(&order("ord-3")).await.unwrap();
    eventually(10, "three handled, one dead-lettered", || async {
        let s = handle.stats();
        s.handled == 3 && s.dead_lettered == 1
    })
    .await;
    let stats = handle.shutdown().await;
    assert_eq!(
        (stats.handled, stats.dead_lettered, stats.retried),
        (3, 1, 0)
    );
    let mut confirmed = tally.confirmed.lock().unwrap().clone();
    confirmed.sort();
    assert_eq!(confirmed, ["ord-1", "ord-2"]);
    assert_eq!(tally.adjusted.load(Ordering::SeqCst), 1);
    assert_eq!(
        tally.layered.load(Ordering::SeqCst),
        4,
        "the layer sees every message"
    );
    let letters = dead_letters(&f.bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_type.as_deref(), Some("order.created"));
    assert_eq!(
        letters[0].reason,
        format!(
            "permanent: no handler for order.created v{} (this subscription handles order.confirmed, inventory.adjusted)",
            OrderCreated::VERSION
        )
    );
}

async fn redelivery_with_growing_delays<T: Transport>(f: Fixture<T>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = Arc::clone(&times);
    let handler = move |_: Envelope<AnyMessage>, info: DeliveryInfo| {
        t.lock().unwrap().push((info.attempt, Instant::now()));
        std::future::ready(if info.attempt < 3 {
            Err(HandlerError::retryable("flaky dependency"))
        } else {
            Ok(())
        })
    };
    let sub = Subscription::new("t", "retry")
        .to::<OrderCreated>()
        .retry(fast_retry(4));
    let handle = f.bus.subscribe(sub, handler).await.unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    eventually(10, "handled on the third try", || async {
        handle.stats().handled == 1
    })
    .await;
    let times = times.lock().unwrap().clone();
    assert_eq!(times.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [1, 2, 3]);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(200),
        "the delay doubles: {gaps:?}"
    );
    assert_eq!(handle.stats().retried, 2);
    assert!(dead_letters(&f.bus).await.is_empty());
    handle.shutdown().await;
}

async fn permanent_error_dead_letters_at_once<T: Transport>(f: Fixture<T>) {
    #[derive(Debug, thiserror::Error)]
    #[error("order total does not match its lines")]
    struct Inner;
    #[derive(Debug, thiserror::Error)]
    #[error("cannot reserve stock")]
    struct Outer(#[source] Inner);

    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let handler = move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(HandlerError::permanent(Outer(Inner))))
    };
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory", "orders").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    let trace = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        None,
    )
    .unwrap();
    let env = order("ord-9").with_trace(trace);
    let ack = f.bus.publish(&env).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    let letters = dead_letters(&f.bus).await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.fault, FaultKind::Permanent);
    assert_eq!(l.reason, "permanent: cannot reserve stock");
    assert_eq!(
        l.error_chain,
        [
            "cannot reserve stock",
            "order total does not match its lines"
        ]
    );
    assert_eq!(l.consumer, "inventory/orders");
    assert_eq!(
        (l.stream.as_str(), l.stream_sequence, l.delivered),
        ("ORDERS", ack.sequence, 1)
    );
    assert_eq!(l.subject, "order.created");
    assert_eq!(l.event_type.as_deref(), Some("order.created"));
    assert_eq!(l.event_id, Some(env.event_id.to_string()));
    assert_eq!(
        l.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        l.headers.get("Nats-Msg-Id"),
        Some(&env.event_id.to_string())
    );
    assert_eq!(l.original().unwrap().payload, Bytes::from(env.to_json()));
    assert!(l.attempts.is_empty());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry after a permanent error"
    );
    handle.shutdown().await;
}

async fn exhausted_retries_dead_letter_once_with_history<T: Transport>(f: Fixture<T>) {
    let handler = |_: Envelope<AnyMessage>, info: DeliveryInfo| {
        std::future::ready(Err(HandlerError::retryable(format!(
            "timeout on try {}",
            info.attempt
        ))))
    };
    let sub = Subscription::new("t", "exhaust")
        .to::<OrderCreated>()
        .retry(fast_retry(3));
    let handle = f.bus.subscribe(sub, handler).await.unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong extra fault
    let letters = dead_letters(&f.bus).await;
    assert_eq!(letters.len(), 1, "exactly one final fault");
    let l = &letters[0];
    assert_eq!(l.fault, FaultKind::RetriesExhausted);
    assert_eq!(l.delivered, 3);
    assert_eq!(l.error_chain, ["timeout on try 3"]);
    let history: Vec<(u64, &str)> = l
        .attempts
        .iter()
        .map(|a| (a.attempt, a.error.as_str()))
        .collect();
    assert_eq!(history, [(1, "timeout on try 1"), (2, "timeout on try 2")]);
    assert_eq!(
        handle.stats(),
        a4co_events::bus::Stats {
            handled: 0,
            duplicates: 0,
            retried: 2,
            dead_lettered: 1,
            ..Default::default()
        }
    );
    handle.shutdown().await;
}

async fn competing_consumers_share_the_work<T: Transport>(f: Fixture<T>) {
    const N: usize = 200;
    // Not exclusive, both instances take messages; exclusive (the default of an ordered
    // subscription), one takes them all and the other stands by.
    // The second subscription also reads the first one's messages (from the stream's start).
    for (round, (name, exclusive)) in [("shared", false), ("exclusive", true)]
        .into_iter()
        .enumerate()
    {
        let expected = N * (round + 1);
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
        let mut handles = Vec::new();
        for instance in 0..2 {
            let tx = tx.clone();
            let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
                let tx = tx.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let _ = tx.send((instance, m.event_id.to_string()));
                    Ok(())
                }
            };
            let mut sub = Subscription::new("inventory", name)
                .to::<OrderCreated>()
                .max_in_flight(4);
            if !exclusive {
                sub = sub.exclusive(false);
            }
            handles.push(f.bus.subscribe(sub, handler).await.unwrap());
        }
        for i in 0..N {
            f.bus.publish(&order(&format!("{name}-{i}"))).await.unwrap();
        }
        let mut by_instance = [0usize; 2];
        let mut ids = HashSet::new();
        for _ in 0..expected {
            let (instance, id) = recv(&mut rx, 20, "a handled message").await;
            by_instance[instance] += 1;
            assert!(ids.insert(id), "a message was handled twice");
        }
        if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            panic!("{name}: an extra delivery {extra:?} after {by_instance:?}");
        }
        if exclusive {
            assert!(
                by_instance.contains(&0) && by_instance.contains(&expected),
                "one instance worked: {by_instance:?}"
            );
        } else {
            assert!(
                by_instance.iter().all(|n| *n > 0),
                "both instances worked: {by_instance:?}"
            );
        }
        for h in handles {
            h.shutdown().await;
        }
    }
}

/// A handler that reports each inventory adjustment's key (by `key`) and new stock, after a
/// random short pause.
fn adjustments(
    tx: mpsc::UnboundedSender<(String, u32)>,
    key: fn(&Envelope<AnyMessage>) -> String,
) -> impl a4co_events::bus::Handler {
    move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let tx = tx.clone();
        async move {
            let AnyMessage::InventoryAdjusted(adj) = &m.data else {
                return Err(HandlerError::permanent("unexpected"));
            };
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
            let _ = tx.send((key(&m), adj.new_stock));
            Ok(())
        }
    }
}

async fn one_aggregate_is_handled_in_order<T: Transport>(f: Fixture<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
    let handler = adjustments(tx, |m| m.aggregate_id.clone());
    let sub = Subscription::new("t", "ordered")
        .to::<InventoryAdjusted>()
        .max_in_flight(8);
    let handle = f.bus.subscribe(sub, handler).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..30u32 {
        for product in 0..5 {
            let data = InventoryAdjusted {
                new_stock: i,
                ..InventoryAdjusted::example()
            };
            let env = Envelope::new("inventory-service", format!("prod-{product}"), data);
            pending.push(f.bus.publish_pipelined(&env).await.unwrap());
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..150 {
        let (product, n) = recv(&mut rx, 20, "an adjustment").await;
        if let Some(prev) = last.insert(product.clone(), n) {
            assert!(n > prev, "{product}: {n} after {prev}");
        }
    }
    assert!(last.values().all(|n| *n == 29));
    handle.shutdown().await;
}

async fn ordering_by_correlation_or_none<T: Transport>(f: Fixture<T>) {
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    // By correlation: one conversation in order, whatever the aggregates.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
    let handler = adjustments(tx, |m| m.metadata.correlation_id.clone());
    let sub = Subscription::new("t", "by-correlation")
        .to::<InventoryAdjusted>()
        .max_in_flight(8)
        .ordered_by(a4co_events::bus::OrderBy::Correlation);
    let handle = f.bus.subscribe(sub, handler).await.unwrap();
    for i in 0..20u32 {
        for conversation in 0..3 {
            let data = InventoryAdjusted {
                new_stock: i,
                ..InventoryAdjusted::example()
            };
            let env = Envelope::new("inventory-service", format!("prod-{i}"), data)
                .with_correlation_id(format!("conv-{conversation}"));
            f.bus.publish(&env).await.unwrap();
        }
    }
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        let (conversation, n) = recv(&mut rx, 20, "an adjustment").await;
        if let Some(prev) = last.insert(conversation.clone(), n) {
            assert!(n > prev, "{conversation}: {n} after {prev}");
        }
    }
    handle.shutdown().await;

    // Unordered: messages of one aggregate overlap.
    let running = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    let (done, mut finished) = mpsc::unbounded_channel::<()>();
    let (r, m) = (running.clone(), most.clone());
    let handler = move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
        let (r, m, done) = (r.clone(), m.clone(), done.clone());
        async move {
            let now = r.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            m.fetch_max(now, AtomicOrdering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            r.fetch_sub(1, AtomicOrdering::SeqCst);
            let _ = done.send(());
            Ok::<(), HandlerError>(())
        }
    };
    let sub = Subscription::new("t", "unordered")
        .to::<OrderCreated>()
        .max_in_flight(8)
        .ordered_by(a4co_events::bus::OrderBy::Nothing);
    let handle = f.bus.subscribe(sub, handler).await.unwrap();
    for _ in 0..8 {
        f.bus.publish(&order("ord-same")).await.unwrap();
    }
    for _ in 0..8 {
        recv(&mut finished, 20, "a handled message").await;
    }
    assert!(
        most.load(AtomicOrdering::SeqCst) > 1,
        "one aggregate's messages never overlapped"
    );
    handle.shutdown().await;
}

async fn a_crashed_handler_is_redelivered<T: Transport>(f: Fixture<T>) {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let hang = move |_: Envelope<AnyMessage>, info: DeliveryInfo| {
        let _ = started_tx.send(info.attempt);
        std::future::pending::<Result<(), HandlerError>>()
    };
    let sub = || {
        Subscription::new("t", "crash")
            .to::<OrderCreated>()
            .ack_wait(Duration::from_secs(1))
    };
    let crashed = f.bus.subscribe(sub(), hang).await.unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    assert_eq!(recv(&mut started, 5, "first delivery").await, 1);
    crashed.abort();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let restarted = f.bus.subscribe(sub(), reporting(tx)).await.unwrap();
    let (m, info) = recv(&mut rx, 10, "redelivery after the crash").await;
    assert_eq!(m.aggregate_id, "ord-1");
    // The broker delivered it twice; the crash recorded no failure, so the bus's attempt
    // count (failures recorded, plus one) is still at the first.
    assert_eq!((info.delivered, info.attempt), (2, 1));
    restarted.shutdown().await;
}

async fn poison_input_is_dead_lettered_and_the_consumer_goes_on<T: Transport>(f: Fixture<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = Subscription::new("t", "poison")
        .subject("order.>")
        .decoder(Decoder::new().max_bytes(64 * 1024));
    let handle = f.bus.subscribe(sub, reporting(tx)).await.unwrap();
    let good = order("ord-ok");
    let body: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
    // Each poison message has its own broker id, or the broker would drop it as a duplicate.
    let fresh_headers = || {
        let mut h = good.headers();
        h.insert("Nats-Msg-Id", a4co_events::EventId::new().to_string());
        h
    };
    let raw = |subject: &str, headers: Headers, payload: Vec<u8>| RawMessage {
        subject: subject.into(),
        headers,
        payload: Bytes::from(payload),
    };
    let with = |edit: &dyn Fn(&mut serde_json::Value, &mut Headers)| {
        let mut b = body.clone();
        let mut h = good.headers();
        h.insert("Nats-Msg-Id", a4co_events::EventId::new().to_string());
        edit(&mut b, &mut h);
        if let Some(id) = h.get("Nats-Msg-Id").map(str::to_owned) {
            b["eventId"] = json!(id);
        }
        raw("order.created", h, serde_json::to_vec(&b).unwrap())
    };
    let cases: Vec<(&str, RawMessage)> = vec![
        (
            "malformed_json",
            raw("order.created", fresh_headers(), b"{\"eventId\": ".to_vec()),
        ),
        (
            "unknown_type",
            with(&|b, h| {
                b["eventType"] = json!("order.teleported");
                h.insert("a4co-event-type", "order.teleported");
            }),
        ),
        (
            "unknown_version",
            with(&|b, h| {
                b["eventVersion"] = json!(9);
                h.insert("a4co-event-version", "9");
            }),
        ),
        (
            "schema_violation",
            with(&|b, _| b["data"]["items"] = json!([])),
        ),
        (
            "too_large",
            raw(
                "order.created",
                fresh_headers(),
                vec![b' '; 100_000].into_iter().chain(*b"{}").collect(),
            ),
        ),
        (
            "missing_header",
            raw("order.created", Headers::new(), good.to_json()),
        ),
        (
            "header_mismatch",
            with(&|_, h| h.insert("a4co-aggregate-id", "ord-other")),
        ),
        (
            "header_mismatch",
            RawMessage {
                subject: "order.confirmed".into(),
                ..with(&|_, _| {})
            },
        ),
    ];
    let expected = cases.len();
    for (_, message) in cases.iter().cloned() {
        f.bus.publish_raw(message).await.unwrap();
    }
    f.bus.publish(&good).await.unwrap();
    let (m, _) = recv(&mut rx, 10, "the good message after the poison").await;
    assert_eq!(m.event_id, good.event_id);
    // An older publisher's message, with the four legacy headers agreeing: handled.
    let legacy = with(&|b, h| {
        h.insert("a4co-event-type", "order.created");
        h.insert("a4co-event-version", "2");
        h.insert("a4co-aggregate-id", "ord-ok");
        h.insert(
            "a4co-correlation-id",
            b["metadata"]["correlationId"].as_str().unwrap(),
        );
    });
    let legacy_id = legacy.headers.get("Nats-Msg-Id").unwrap().to_owned();
    f.bus.publish_raw(legacy).await.unwrap();
    let (m, _) = recv(&mut rx, 10, "the message with legacy headers").await;
    assert_eq!(m.event_id.to_string(), legacy_id);
    eventually(10, "every poison dead-lettered", || async {
        handle.stats().dead_lettered as usize == expected
    })
    .await;
    let reasons: Vec<String> = dead_letters(&f.bus)
        .await
        .into_iter()
        .map(|l| {
            assert_eq!(l.fault, FaultKind::Undecodable);
            l.reason
        })
        .collect();
    for (kind, _) in &cases {
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(&format!("undecodable: {kind}: "))),
            "no {kind} in {reasons:#?}"
        );
    }
    handle.shutdown().await;
}

async fn finished_work_is_not_redone<T: Transport>(f: Fixture<T>) {
    // A producer that sets no headers (a bridge, say) gets no broker dedup: the same event
    // stored twice reaches the consumer twice, and only the inbox can tell.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = Subscription::new("t", "inbox")
        .to::<OrderCreated>()
        .decoder(Decoder::new().headers_optional())
        .inbox_check(InboxCheck::Always);
    let handle = f.bus.subscribe(sub, reporting(tx)).await.unwrap();
    let env = order("ord-1");
    let bare = RawMessage {
        subject: "order.created".into(),
        headers: Headers::new(),
        payload: Bytes::from(env.to_json()),
    };
    let first = f.bus.publish_raw(bare.clone()).await.unwrap();
    let second = f.bus.publish_raw(bare).await.unwrap();
    assert!(
        !second.duplicate && second.sequence == first.sequence + 1,
        "stored twice"
    );
    let (m, _) = recv(&mut rx, 5, "first").await;
    assert_eq!(m.event_id, env.event_id);
    eventually(10, "the repeat skipped", || async {
        handle.stats().duplicates == 1
    })
    .await;
    assert_eq!(handle.stats().handled, 1);
    assert!(rx.try_recv().is_err(), "the handler ran twice");
    handle.shutdown().await;
}

async fn a_redelivery_after_a_lost_ack_is_not_redone<T: Transport>(f: Fixture<T>) {
    // The handler finishes, the ack never reaches the broker, the broker redelivers.
    let lossy = EventBus::new(crate::support::LosingAcks(f.bus.transport().clone()));
    let calls = Arc::new(AtomicU64::new(0));
    let handler = counting(&calls);
    let sub = Subscription::new("t", "lost-ack")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(1));
    let handle = lossy.subscribe(sub, handler).await.unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    eventually(10, "a redelivery skipped", || async {
        handle.stats().duplicates >= 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran again");
    assert_eq!(handle.stats().handled, 1);
    handle.shutdown().await;
}

async fn acknowledged_work_is_never_written_to_the_inbox<T: Transport>(f: Fixture<T>) {
    // By default the inbox is read for redeliveries only, and the broker redelivers
    // finished work only if its ack was lost: work the broker has settled is not written.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = Subscription::new("t", "settled")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(1));
    let handle = f.bus.subscribe(sub.clone(), reporting(tx)).await.unwrap();
    let orders: Vec<_> = (0..3).map(|i| order(&format!("ord-{i}"))).collect();
    for o in &orders {
        f.bus.publish(o).await.unwrap();
    }
    for _ in &orders {
        recv(&mut rx, 5, "handled").await;
    }
    // Past the time after which unsettled work would be written (half the ack wait), and
    // past the ack wait itself: nothing came back, nothing was written.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for o in &orders {
        let id = o.event_id.to_string();
        assert!(!in_inbox(&f, &sub, &id).await.unwrap(), "{id} was written");
    }
    let stats = handle.shutdown().await;
    assert_eq!((stats.handled, stats.duplicates), (3, 0));
}

async fn unacknowledged_work_reaches_the_inbox_before_another_instance_gets_it<T: Transport>(
    f: Fixture<T>,
) {
    // Instance A's acks are lost. Its finished work is written to the inbox before the
    // broker redelivers it (half the ack wait in), so B, taking over after A crashed,
    // skips it.
    let lossy = EventBus::new(crate::support::LosingAcks(f.bus.transport().clone()));
    let sub = Subscription::new("t", "takeover")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(2));
    let calls_a = Arc::new(AtomicU64::new(0));
    let a = lossy
        .subscribe(sub.clone(), counting(&calls_a))
        .await
        .unwrap();
    let env = order("ord-1");
    f.bus.publish(&env).await.unwrap();
    let id = env.event_id.to_string();
    eventually(5, "handled by A", || async { a.stats().handled == 1 }).await;
    eventually(2, "A's unsettled work written", || async {
        in_inbox(&f, &sub, &id).await.unwrap()
    })
    .await;
    a.abort();
    let calls_b = Arc::new(AtomicU64::new(0));
    let b = f
        .bus
        .subscribe(sub.clone(), counting(&calls_b))
        .await
        .unwrap();
    eventually(10, "B skips the redelivery", || async {
        b.stats().duplicates == 1
    })
    .await;
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        0,
        "B ran finished work again"
    );
    b.shutdown().await;
}

async fn shutdown_writes_unsettled_work_to_the_inbox<T: Transport>(f: Fixture<T>) {
    // A stops cleanly before its unsettled work is due (ack wait 10 s: due after 5 s);
    // shutdown writes it, so B skips the redelivery.
    let lossy = EventBus::new(crate::support::LosingAcks(f.bus.transport().clone()));
    let sub = Subscription::new("t", "handover")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(10));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = lossy.subscribe(sub.clone(), reporting(tx)).await.unwrap();
    let env = order("ord-1");
    f.bus.publish(&env).await.unwrap();
    recv(&mut rx, 5, "handled by A").await;
    let id = env.event_id.to_string();
    assert!(
        !in_inbox(&f, &sub, &id).await.unwrap(),
        "written before it was due"
    );
    a.shutdown().await;
    assert!(
        in_inbox(&f, &sub, &id).await.unwrap(),
        "shutdown did not write it"
    );
}

async fn the_dead_letter_tools_list_show_replay_and_purge<T: Transport>(f: Fixture<T>) {
    let fail_first = Arc::new(AtomicU64::new(0));
    let ff = Arc::clone(&fail_first);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let first = ff.fetch_add(1, Ordering::SeqCst) == 0;
        let _ = tx.send(m.aggregate_id);
        std::future::ready(if first {
            Err(HandlerError::permanent("bad data"))
        } else {
            Ok(())
        })
    };
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory", "dlq").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-7")).await.unwrap();
    recv(&mut rx, 5, "first try").await;
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;

    let tools = DeadLetters::new(f.bus.transport().clone());
    let by_consumer = Filter {
        consumer: Some("inventory/dlq".into()),
        ..Filter::default()
    };
    let listed = tools.list(&by_consumer).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        tools
            .list(&Filter {
                consumer: Some("other/x".into()),
                ..Filter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        tools
            .list(&Filter {
                event_type: Some("payment.failed".into()),
                ..Filter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    let future = Filter {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Filter::default()
    };
    assert!(tools.list(&future).await.unwrap().is_empty());
    let (seq, letter) = &listed[0];
    assert_eq!(tools.show(*seq).await.unwrap().as_ref(), Some(letter));

    tools.replay(*seq, ReplayOptions::default()).await.unwrap();
    assert_eq!(recv(&mut rx, 10, "the replay").await, "ord-7");
    eventually(10, "the replay handled", || async {
        handle.stats().handled == 1
    })
    .await;
    assert!(
        tools.list(&Filter::default()).await.unwrap().is_empty(),
        "a replayed letter leaves the DLQ"
    );

    // Purge removes what the filter matches.
    f.bus
        .publish_raw(RawMessage {
            subject: "order.created".into(),
            headers: Headers::new(),
            payload: Bytes::from_static(b"junk"),
        })
        .await
        .unwrap();
    eventually(10, "the junk dead-lettered", || async {
        handle.stats().dead_lettered == 2
    })
    .await;
    assert_eq!(tools.purge(&by_consumer, false).await.unwrap().len(), 1);
    assert!(tools.list(&Filter::default()).await.unwrap().is_empty());
    assert!(
        f.bus
            .transport()
            .read_stream(DLQ_STREAM, 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    handle.shutdown().await;
}

async fn trace_context_arrives<T: Transport>(f: Fixture<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "trace").to::<OrderCreated>(),
            reporting(tx),
        )
        .await
        .unwrap();
    let trace = TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        Some("a4co=1"),
    )
    .unwrap();
    f.bus
        .publish(&order("ord-1").with_trace(trace.clone()))
        .await
        .unwrap();
    let (m, _) = recv(&mut rx, 5, "traced").await;
    assert_eq!(m.trace, Some(trace));
    handle.shutdown().await;
}

async fn shutdown_drains_handlers_in_flight<T: Transport>(f: Fixture<T>) {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let finished = Arc::new(AtomicU64::new(0));
    let done = Arc::clone(&finished);
    let slow = move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
        let started_tx = started_tx.clone();
        let done = Arc::clone(&done);
        async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    // A short ack wait, so an unacknowledged message would come back within the check below.
    let sub = || {
        Subscription::new("t", "drain")
            .to::<OrderCreated>()
            .ack_wait(Duration::from_secs(1))
            // Without the inbox, which would (rightly) skip a redelivery and hide a lost ack.
            .inbox_ttl(None)
    };
    let handle = f.bus.subscribe(sub(), slow).await.unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    recv(&mut started, 5, "started").await;
    let before = Instant::now();
    let stats = handle.shutdown().await;
    assert!(
        before.elapsed() >= Duration::from_millis(200),
        "shutdown waited for the handler"
    );
    assert_eq!(stats.handled, 1, "the drained handler was settled");
    assert_eq!(finished.load(Ordering::SeqCst), 1, "the handler finished");
    // It was acknowledged: a new instance does not get it again.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let again = f.bus.subscribe(sub(), reporting(tx)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), rx.recv())
            .await
            .is_err(),
        "redelivered after a drained shutdown"
    );
    again.shutdown().await;
}

async fn provisioning_is_idempotent<T: Transport>(f: Fixture<T>) {
    let again = f.bus.provision().await.unwrap();
    assert_eq!(again.len(), 10);
    assert!(
        again.iter().all(|r| !r.created && r.drift.is_empty()),
        "{again:#?}"
    );
    let names: BTreeMap<&str, bool> = again
        .iter()
        .map(|r| (r.stream.as_str(), r.created))
        .collect();
    for stream in [
        "ORDERS",
        "INVENTORY",
        "PAYMENTS",
        "USERS",
        "ARTISANS",
        "PRODUCTS",
        "CARTS",
        "SHIPPING",
        "NOTIFICATIONS",
        "DLQ",
    ] {
        assert!(names.contains_key(stream), "{stream}");
    }
}

async fn invalid_subscriptions_are_refused<T: Transport>(f: Fixture<T>) {
    use a4co_events::bus::SubscribeErrorKind;
    let h = |_: Envelope<AnyMessage>, _: DeliveryInfo| std::future::ready(Ok(()));
    let cases = [
        Subscription::new("t", "empty"),
        Subscription::new("t", "bad name").to::<OrderCreated>(),
        Subscription::new("t", "x").subject("nowhere.>"),
        Subscription::new("t", "x")
            .to::<OrderCreated>()
            .max_in_flight(0),
    ];
    for sub in cases {
        let err = f.bus.subscribe(sub, h).await.unwrap_err();
        assert_eq!(err.kind(), SubscribeErrorKind::InvalidConfig, "{err}");
    }
}

use crate::support::conformance;

conformance!(
    dedup,
    publish_errors_by_kind,
    a_multi_line_failure_reason_is_dead_lettered,
    pipelined_publish,
    typed_delivery,
    typed_handlers_get_their_message_type,
    routed_handlers_take_only_their_types,
    redelivery_with_growing_delays,
    permanent_error_dead_letters_at_once,
    exhausted_retries_dead_letter_once_with_history,
    competing_consumers_share_the_work,
    one_aggregate_is_handled_in_order,
    ordering_by_correlation_or_none,
    a_crashed_handler_is_redelivered,
    poison_input_is_dead_lettered_and_the_consumer_goes_on,
    finished_work_is_not_redone,
    a_redelivery_after_a_lost_ack_is_not_redone,
    acknowledged_work_is_never_written_to_the_inbox,
    unacknowledged_work_reaches_the_inbox_before_another_instance_gets_it,
    shutdown_writes_unsettled_work_to_the_inbox,
    the_dead_letter_tools_list_show_replay_and_purge,
    trace_context_arrives,
    shutdown_drains_handlers_in_flight,
    provisioning_is_idempotent,
    invalid_subscriptions_are_refused,
);

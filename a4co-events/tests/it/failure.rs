//! The bus's failure model: nothing dropped, nothing run twice, targeted replays, supervised
//! consumers. Generic tests run on both transports; those that need a broker's failure
//! (a deleted DLQ stream, a backlog shared by two connections) on a real nats-server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a4co_events::bus::dlq::{
    DeadLetter, DeadLetters, FaultKind, Filter, REPLAY_LIMIT, ReplayError, ReplayOptions,
};
use a4co_events::bus::memory::MemoryTransport;
use a4co_events::bus::nats::NatsTransport;
use a4co_events::bus::transport::Transport;
use a4co_events::bus::{
    Backoff, DLQ_STREAM, DeliveryInfo, HandlerError, OrderBy, Publisher, RetryPolicy,
    SubscribeErrorKind, Subscriber, Subscription,
};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::{AnyMessage, Envelope, Message};

use crate::support::{Fixture, conformance, eventually, nats_connect};

/// Deliveries beyond the recorded attempts after which the bus gives up (the bus's
/// `NO_OUTCOME_LIMIT`, documented in docs/bus.md).
const NO_OUTCOME_LIMIT: u64 = 10;

fn order(aggregate: &str) -> Envelope<OrderCreated> {
    Envelope::new("order-service", aggregate, OrderCreated::example()).with_user_id("user-4711")
}

fn fast_retry(max_deliver: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_deliver,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).without_jitter(),
    )
}

/// The dead letters of one consumer, with their sequences in `DLQ`.
async fn letters_of<T: Transport>(f: &Fixture<T>, consumer: &str) -> Vec<(u64, DeadLetter)> {
    DeadLetters::new(f.bus.transport().clone())
        .list(&Filter {
            consumer: Some(consumer.to_owned()),
            ..Filter::default()
        })
        .await
        .unwrap()
}

/// What an operator can do to a broker, on both transports.
trait Operator: Transport {
    /// Deletes a durable consumer.
    async fn remove_consumer(&self, stream: &str, durable: &str);
}

impl Operator for MemoryTransport {
    async fn remove_consumer(&self, stream: &str, durable: &str) {
        assert!(
            self.delete_consumer(stream, durable),
            "no consumer {durable}"
        );
    }
}

impl Operator for NatsTransport {
    async fn remove_consumer(&self, stream: &str, durable: &str) {
        let stream = self.jetstream().get_stream(stream).await.unwrap();
        assert!(stream.delete_consumer(durable).await.unwrap().success);
    }
}

async fn replay_reaches_only_the_consumer_that_failed<T: Operator>(f: Fixture<T>) {
    let (calls_a, calls_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counted = Arc::clone(&calls_a);
    let a = f
        .bus
        .subscribe(
            Subscription::new("t", "replay-a").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                // The first run fails for good; after the fix (the replay) it succeeds.
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Err(HandlerError::permanent("a bug, fixed since"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    let counted = Arc::clone(&calls_b);
    let b = f
        .bus
        .subscribe(
            Subscription::new("t", "replay-b").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            },
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-r")).await.unwrap();
    eventually(10, "a dead-lettered, b handled", || async {
        a.stats().dead_lettered == 1 && b.stats().handled == 1
    })
    .await;
    let letters = letters_of(&f, "t/replay-a").await;
    let [(seq, letter)] = letters.as_slice() else {
        panic!("one letter: {letters:?}")
    };
    assert_eq!(letter.replays, 0);

    let tools = DeadLetters::new(f.bus.transport().clone());
    let dry = ReplayOptions {
        dry_run: true,
        ..ReplayOptions::default()
    };
    let planned = tools.replay(*seq, dry).await.unwrap();
    assert_eq!(
        (planned.consumer.as_str(), planned.replay, planned.published),
        ("t/replay-a", 1, None)
    );
    assert_eq!(
        letters_of(&f, "t/replay-a").await.len(),
        1,
        "a dry run removes nothing"
    );

    let done = tools.replay(*seq, ReplayOptions::default()).await.unwrap();
    assert!(done.published.is_some());
    eventually(10, "the replay handled by a, skipped by b", || async {
        a.stats().handled == 1 && b.stats().skipped == 1
    })
    .await;
    assert_eq!(calls_a.load(Ordering::SeqCst), 2, "a ran it again");
    assert_eq!(calls_b.load(Ordering::SeqCst), 1, "b did not");
    assert_eq!(b.stats().handled, 1);
    assert!(letters_of(&f, "t/replay-a").await.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_letter_replayed_to_the_limit_needs_force<T: Operator>(f: Fixture<T>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "stubborn").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(HandlerError::permanent("still broken")) }
            },
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-s")).await.unwrap();
    let tools = DeadLetters::new(f.bus.transport().clone());
    let latest = || async {
        let letters = letters_of(&f, "t/stubborn").await;
        assert_eq!(letters.len(), 1, "one letter at a time: {letters:?}");
        letters.into_iter().next().unwrap()
    };
    for replays in 0..REPLAY_LIMIT {
        eventually(10, "dead-lettered again", || async {
            handle.stats().dead_lettered == u64::from(replays) + 1
        })
        .await;
        let (seq, letter) = latest().await;
        assert_eq!(letter.replays, replays);
        assert!(!letter.replay_exhausted());
        tools.replay(seq, ReplayOptions::default()).await.unwrap();
    }
    eventually(10, "dead-lettered after the last replay", || async {
        handle.stats().dead_lettered == u64::from(REPLAY_LIMIT) + 1
    })
    .await;
    let (seq, letter) = latest().await;
    assert_eq!(letter.replays, REPLAY_LIMIT);
    assert!(letter.replay_exhausted());
    for options in [
        ReplayOptions::default(),
        ReplayOptions {
            dry_run: true,
            ..ReplayOptions::default()
        },
    ] {
        let refused = tools.replay(seq, options).await.unwrap_err();
        assert!(
            matches!(refused, ReplayError::Refused { replays, .. } if replays == REPLAY_LIMIT),
            "{refused}"
        );
        assert!(refused.to_string().contains("--force"), "{refused}");
    }
    assert_eq!(latest().await.0, seq, "a refused replay removes nothing");
    let forced = ReplayOptions {
        force: true,
        ..ReplayOptions::default()
    };
    let done = tools.replay(seq, forced).await.unwrap();
    assert_eq!(done.replay, REPLAY_LIMIT + 1);
    eventually(10, "dead-lettered after the forced replay", || async {
        handle.stats().dead_lettered == u64::from(REPLAY_LIMIT) + 2
    })
    .await;
    assert_eq!(latest().await.1.replays, REPLAY_LIMIT + 1);
    assert_eq!(calls.load(Ordering::SeqCst), u64::from(REPLAY_LIMIT) + 2);
    handle.shutdown().await;
}

async fn an_oversized_dead_letter_refers_to_its_original<T: Operator>(f: Fixture<T>) {
    let mut big = order("ord-big");
    // 0.95 MiB: the message fits the broker, its dead letter with the payload would not.
    big.data.customer_id = "c".repeat(972 * 1024);
    let size = big.to_json().len();
    assert!(size > 970 * 1024 && size < 1024 * 1024, "{size}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "big").to::<OrderCreated>(),
            move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
                let AnyMessage::OrderCreated(data) = m.data else {
                    unreachable!("subscribed to order.created only")
                };
                let mut seen = kept.lock().unwrap();
                seen.push(data.customer_id.len());
                let first = seen.len() == 1;
                async move {
                    if first {
                        Err(HandlerError::permanent("too big for us"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    let published = f.bus.publish(&big).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    let letters = letters_of(&f, "t/big").await;
    let [(seq, letter)] = letters.as_slice() else {
        panic!("one letter: {letters:?}")
    };
    assert!(letter.is_reference(), "{}", letter.payload_encoding);
    assert!(letter.payload.is_empty());
    assert_eq!(
        (letter.stream.as_str(), letter.stream_sequence),
        (published.stream.as_str(), published.sequence)
    );
    assert!(
        letter.reason.contains("too big for us"),
        "{}",
        letter.reason
    );
    assert!(
        letter.original().is_err(),
        "the record alone cannot restore it"
    );

    let tools = DeadLetters::new(f.bus.transport().clone());
    assert_eq!(tools.show(*seq).await.unwrap().as_ref(), Some(letter));
    let original = tools.original(letter).await.unwrap();
    assert_eq!(original.payload, big.to_json().as_slice());
    assert_eq!(original.subject, "order.created");

    tools.replay(*seq, ReplayOptions::default()).await.unwrap();
    eventually(10, "the replay handled", || async {
        handle.stats().handled == 1
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), [972 * 1024, 972 * 1024]);
    handle.shutdown().await;
}

async fn a_deleted_consumer_is_recreated_and_the_rest_handled<T: Operator>(f: Fixture<T>) {
    let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let counted = Arc::clone(&calls);
    let sub = Subscription::new("t", "phoenix").to::<OrderCreated>();
    let handle = f
        .bus
        .subscribe(
            sub.clone(),
            move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
                *counted.lock().unwrap().entry(m.aggregate_id).or_default() += 1;
                async { Ok::<_, HandlerError>(()) }
            },
        )
        .await
        .unwrap();
    let health = handle.health();
    for i in 0..20 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(10, "the first 20 handled", || async {
        handle.stats().handled == 20
    })
    .await;
    assert!(health.is_running() && health.problem().is_none());

    f.bus
        .transport()
        .remove_consumer("ORDERS", &sub.durable())
        .await;
    eventually(10, "reported not running", || async {
        !handle.is_running()
    })
    .await;
    let problem = health.problem().unwrap();
    assert!(
        problem.starts_with("t/phoenix on ORDERS: not running for "),
        "{problem}"
    );
    eventually(10, "re-created", || async { handle.is_running() }).await;

    for i in 20..40 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(10, "the rest handled", || async {
        handle.stats().handled == 40
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 40);
    assert!(calls.values().all(|n| *n == 1), "none ran twice: {calls:?}");
    handle.shutdown().await;
    assert!(
        !health.is_running(),
        "a shut-down subscription is not running"
    );
}

async fn a_message_that_keeps_killing_its_handler_is_dead_lettered<T: Operator>(f: Fixture<T>) {
    // Each instance dies while handling it (no failure is recorded): after 10 deliveries
    // beyond the attempts the bus counted, it is dead-lettered instead of run again.
    let sub = || {
        Subscription::new("t", "killer")
            .to::<OrderCreated>()
            .exclusive(false)
            .ack_wait(Duration::from_millis(300))
    };
    f.bus.publish(&order("ord-poison")).await.unwrap();
    let mut delivered = Vec::new();
    for _ in 0..=NO_OUTCOME_LIMIT {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hang = move |_: Envelope<AnyMessage>, info: DeliveryInfo| {
            let _ = tx.send(info.delivered);
            std::future::pending::<Result<(), HandlerError>>()
        };
        let dying = f.bus.subscribe(sub(), hang).await.unwrap();
        // It runs (and this instance is killed), or the limit is reached and it is
        // dead-lettered without running.
        let mut ran = None;
        eventually(10, "run or dead-lettered", || {
            ran = ran.or_else(|| rx.try_recv().ok());
            let done = ran.is_some() || dying.stats().dead_lettered == 1;
            async move { done }
        })
        .await;
        match ran {
            Some(n) => {
                delivered.push(n);
                dying.abort();
            }
            None => {
                dying.shutdown().await;
                break;
            }
        }
    }
    assert_eq!(
        delivered,
        (1..=NO_OUTCOME_LIMIT).collect::<Vec<_>>(),
        "run once per delivery until the limit"
    );
    let letters = letters_of(&f, "t/killer").await;
    let [(_, letter)] = letters.as_slice() else {
        panic!("one letter: {letters:?}")
    };
    assert_eq!(letter.fault, FaultKind::NoOutcome);
    assert!(
        letter.reason.contains("delivered 11 times"),
        "{}",
        letter.reason
    );
}

/// Guards against: a handler error of a megabyte made a dead letter larger than the
/// broker takes even by reference, so it could never be written and the message came back
/// for ever. The error text in a letter is clipped.
async fn a_huge_error_is_clipped_and_its_letter_written<T: Operator>(f: Fixture<T>) {
    let huge = "x".repeat(2 * 1024 * 1024);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "loud").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                let huge = huge.clone();
                async move { Err::<(), _>(HandlerError::permanent(huge)) }
            },
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-loud")).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    assert_eq!(
        handle.stats().dead_letter_failures,
        0,
        "written at the first try"
    );
    let letters = letters_of(&f, "t/loud").await;
    let [(_, letter)] = letters.as_slice() else {
        panic!("one letter: {letters:?}")
    };
    let chain: usize = letter.error_chain.iter().map(String::len).sum();
    assert!(chain < 64 * 1024, "the chain is clipped: {chain} bytes");
    assert!(
        letter.error_chain[0].starts_with("xxx"),
        "the start of the error is kept"
    );
    assert!(
        letter.reason.len() < 4 * 1024,
        "{} bytes",
        letter.reason.len()
    );
    handle.shutdown().await;
}

/// A handler's run, boxed.
type Running =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>;

/// A handler counting runs per aggregate; `ord-0` waits for the gate (so the ack floor
/// stays below everything else while it runs).
fn gated_counter(
    calls: &Arc<Mutex<HashMap<String, u32>>>,
    gate: &Arc<tokio::sync::Semaphore>,
) -> impl Fn(Envelope<AnyMessage>, DeliveryInfo) -> Running + Clone + Send + Sync + 'static {
    let (calls, gate) = (Arc::clone(calls), Arc::clone(gate));
    move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
        Box::pin(async move {
            if m.aggregate_id == "ord-0" {
                // Returned at once: once open, the gate stays open.
                drop(gate.acquire().await);
            }
            *calls.lock().unwrap().entry(m.aggregate_id).or_default() += 1;
            Ok(())
        })
    }
}

/// Guards against: a consumer re-created from its ack floor hands the messages settled
/// above the floor out again as first deliveries, and the instance that did not handle
/// one runs it again (its finished work was only in the other's book).
async fn instances_skip_settled_work_after_their_consumer_is_recreated<T: Operator>(f: Fixture<T>) {
    let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // No order: ord-0 holds only its own lane.
    let sub = Subscription::new("t", "phoenix-pair")
        .to::<OrderCreated>()
        .ordered_by(OrderBy::Nothing);
    let mut handles = Vec::new();
    for _ in 0..2 {
        let handle = f
            .bus
            .subscribe(sub.clone(), gated_counter(&calls, &gate))
            .await
            .unwrap();
        handles.push(handle);
    }
    for i in 0..40 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    let handled = |calls: &Arc<Mutex<HashMap<String, u32>>>| calls.lock().unwrap().len();
    eventually(10, "all but ord-0 handled", || async {
        handled(&calls) == 39
    })
    .await;
    assert!(
        handles.iter().all(|h| h.stats().handled > 0),
        "both instances took messages: {:?}",
        handles.iter().map(|h| h.stats()).collect::<Vec<_>>()
    );
    // The floor is below ord-0, everything above it is settled: re-created, the consumer
    // hands all of it out again.
    f.bus
        .transport()
        .remove_consumer("ORDERS", &sub.durable())
        .await;
    eventually(10, "both reported not running", || async {
        handles.iter().all(|h| !h.is_running())
    })
    .await;
    gate.add_permits(1);
    eventually(15, "both running again", || async {
        handles.iter().all(|h| h.is_running())
    })
    .await;
    for i in 40..60 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(15, "the new ones handled", || async {
        handled(&calls) == 60
    })
    .await;
    // The re-created consumer hands the 39 settled ones out again: each is settled again,
    // by running it or (as it must be) from the inbox.
    eventually(15, "the old ones settled again", || async {
        let stats = handles.iter().map(|h| h.stats());
        stats.map(|s| s.handled + s.duplicates).sum::<u64>() >= 60 + 39
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    let twice: Vec<_> = calls
        .iter()
        .filter(|(id, n)| id.as_str() != "ord-0" && **n != 1)
        .collect();
    // ord-0 was not settled when the consumer went (its ack had nowhere to go): at least
    // once is all it is promised.
    assert!(twice.is_empty(), "settled work ran again: {twice:?}");
    let skipped: u64 = handles.iter().map(|h| h.stats().duplicates).sum();
    assert!(skipped >= 39, "answered from the inbox: {skipped}");
    for handle in handles {
        handle.shutdown().await;
    }
}

/// Guards against: instances of one durable that disagree on sharing it (pinned or not)
/// delete and re-create each other's consumer in a loop. Then the upgrade path of
/// docs/bus.md: stop every instance, `recreate_consumers`, start the new version.
async fn instances_that_disagree_on_sharing_leave_the_consumer_alone<T: Operator>(f: Fixture<T>) {
    let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    // The version before: every instance takes messages at once.
    let before = Subscription::new("t", "upgraded")
        .to::<OrderCreated>()
        .exclusive(false);
    let old = f
        .bus
        .subscribe(before.clone(), gated_counter(&calls, &gate))
        .await
        .unwrap();
    f.bus.publish(&order("ord-1")).await.unwrap();
    eventually(10, "the old version handled one", || async {
        old.stats().handled == 1
    })
    .await;
    // The new version asks for a pinned consumer.
    let after = Subscription::new("t", "upgraded").to::<OrderCreated>();
    let refused = f
        .bus
        .subscribe(after.clone(), gated_counter(&calls, &gate))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), SubscribeErrorKind::Conflict, "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("t_upgraded") && text.contains("recreate_consumers"),
        "says which consumer and what to do: {text}"
    );
    // The running instance kept its consumer.
    f.bus.publish(&order("ord-2")).await.unwrap();
    eventually(10, "the old version goes on", || async {
        old.stats().handled == 2
    })
    .await;
    assert!(old.is_running());

    // The upgrade: every instance stopped, the consumer made anew once, pinned.
    old.shutdown().await;
    f.bus.recreate_consumers(&after).await.unwrap();
    let new = f
        .bus
        .subscribe(after.clone(), gated_counter(&calls, &gate))
        .await
        .unwrap();
    f.bus.publish(&order("ord-3")).await.unwrap();
    eventually(10, "the new version handles what follows", || async {
        new.stats().handled == 1
    })
    .await;
    let behind = f.bus.subscribe(before, gated_counter(&calls, &gate)).await;
    assert_eq!(
        behind.map(drop).unwrap_err().kind(),
        SubscribeErrorKind::Conflict,
        "an instance left on the old setting is refused now"
    );
    new.shutdown().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.values().all(|n| *n == 1), "none ran twice: {calls:?}");
}

/// Counts a future dropped before it finished (a cancelled handler run).
struct DropCount(Arc<AtomicU64>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Guards against: a handler that hangs holds its lane (and, behind it, the subscription's
/// capacity and the pin) forever, with nothing to see.
async fn a_hung_handler_is_cancelled_at_its_deadline_and_the_rest_flow<T: Operator>(f: Fixture<T>) {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let cancelled = Arc::new(AtomicU64::new(0));
    let (logged, dropped) = (Arc::clone(&log), Arc::clone(&cancelled));
    let sub = Subscription::new("t", "deadline")
        .to::<OrderCreated>()
        .max_in_flight(4)
        .retry(fast_retry(4))
        .handler_deadline(Duration::from_secs(2));
    let handle = f
        .bus
        .subscribe(sub, move |m: Envelope<AnyMessage>, info: DeliveryInfo| {
            let (log, dropped) = (Arc::clone(&logged), Arc::clone(&dropped));
            Box::pin(async move {
                if m.aggregate_id == "ord-hang" && info.attempt == 1 {
                    let _count = DropCount(dropped);
                    std::future::pending::<()>().await;
                }
                let entry = format!("{} at attempt {}", m.aggregate_id, info.attempt);
                log.lock().unwrap().push(entry);
                Ok::<_, HandlerError>(())
            }) as Running
        })
        .await
        .unwrap();
    f.bus.publish(&order("ord-hang")).await.unwrap();
    for i in 0..10 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(15, "the hung run cancelled", || async {
        cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    let flowed = log.lock().unwrap().len();
    let problem = handle.health().problem().unwrap_or_default();
    assert!(
        problem.contains("ran past its deadline of 2s"),
        "the health shows it: {problem:?}"
    );
    eventually(15, "everything handled", || async {
        log.lock().unwrap().len() == 11
    })
    .await;
    let log = log.lock().unwrap().clone();
    assert!(
        flowed >= 5,
        "other aggregates flowed while it hung: {flowed} before the cancel"
    );
    assert!(
        log.contains(&"ord-hang at attempt 2".to_owned()),
        "retried after the cancel: {log:?}"
    );
    let stats = handle.shutdown().await;
    assert_eq!((stats.timed_out, stats.handled), (1, 11), "{stats}");
    assert!(stats.retried >= 1, "{stats}");
}

/// Guards against: a handler that blocks its thread (no await, so no deadline can cancel
/// it) stalls its consumer while `/health` answers 200.
async fn a_handler_that_blocks_its_thread_shows_as_a_stalled_loop<T: Operator>(f: Fixture<T>) {
    f.bus.publish(&order("ord-block")).await.unwrap();
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blocked = Arc::clone(&released);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "blocking")
                .to::<OrderCreated>()
                .ack_wait(Duration::from_secs(1)),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                // Blocking, as a synchronous call in async code would.
                while !blocked.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                async { Ok::<_, HandlerError>(()) }
            },
        )
        .await
        .unwrap();
    let health = handle.health();
    // Waited for on this thread, with no timer of the runtime: with a worker blocked, the
    // other may not be driving timers (no worker parks on the driver).
    let stalled = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        health
            .problem()
            .is_some_and(|p| p.contains("its loop has not run for"))
    });
    let problem = health.problem();
    released.store(true, Ordering::SeqCst);
    assert!(stalled, "the stalled loop shows: {problem:?}");
    eventually(10, "handled, and healthy again", || async {
        handle.stats().handled >= 1 && health.problem().is_none()
    })
    .await;
    handle.shutdown().await;
}

/// Guards against: a handler that panics before it returns its future (in the closure's
/// synchronous part) kills the subscription's task: nothing more is handled, and the
/// health does not say so.
async fn a_handler_that_panics_before_its_future_is_retried_and_the_rest_handled<T: Operator>(
    f: Fixture<T>,
) {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let logged = Arc::clone(&log);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "sync-panic")
                .to::<OrderCreated>()
                .retry(fast_retry(4)),
            move |m: Envelope<AnyMessage>, info: DeliveryInfo| {
                assert!(
                    m.aggregate_id != "ord-p" || info.attempt > 1,
                    "a bug met before the handler's future"
                );
                let entry = format!("{} at attempt {}", m.aggregate_id, info.attempt);
                logged.lock().unwrap().push(entry);
                async { Ok::<_, HandlerError>(()) }
            },
        )
        .await
        .unwrap();
    f.bus.publish(&order("ord-p")).await.unwrap();
    for i in 0..5 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(10, "everything handled", || async {
        log.lock().unwrap().len() == 6
    })
    .await;
    assert!(
        log.lock()
            .unwrap()
            .contains(&"ord-p at attempt 2".to_owned())
    );
    let stats = handle.shutdown().await;
    assert_eq!((stats.handled, stats.retried), (6, 1), "{stats}");
}

/// Guards against: a letter replayed for a consumer that no longer exists was published,
/// acknowledged unhandled by every other consumer of the subject, and removed: the message
/// was gone. The replay is refused now and the letter kept, until the consumer is back.
async fn a_replay_for_a_consumer_that_is_gone_keeps_the_letter<T: Operator>(f: Fixture<T>) {
    let failing = std::sync::atomic::AtomicBool::new(true);
    let failing = Arc::new(failing);
    let calls = Arc::new(AtomicU64::new(0));
    let subscribe = || {
        let (failing, calls) = (Arc::clone(&failing), Arc::clone(&calls));
        f.bus.subscribe(
            Subscription::new("t", "retired").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                calls.fetch_add(1, Ordering::SeqCst);
                let result = if failing.load(Ordering::SeqCst) {
                    Err(HandlerError::permanent("not yet"))
                } else {
                    Ok(())
                };
                std::future::ready(result)
            },
        )
    };
    let handle = subscribe().await.unwrap();
    f.bus.publish(&order("ord-gone")).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    handle.shutdown().await;
    f.bus
        .transport()
        .remove_consumer("ORDERS", "t_retired")
        .await;

    let tools = DeadLetters::new(f.bus.transport().clone());
    let [(seq, _)] = letters_of(&f, "t/retired").await.try_into().unwrap();
    for options in [
        ReplayOptions::default(),
        ReplayOptions {
            force: true,
            ..ReplayOptions::default()
        },
    ] {
        let refused = tools.replay(seq, options).await.unwrap_err();
        assert!(
            matches!(&refused, ReplayError::ConsumerGone { consumer, .. } if consumer == "t/retired"),
            "{refused}"
        );
        assert!(refused.to_string().contains("the letter kept"), "{refused}");
    }
    assert_eq!(
        letters_of(&f, "t/retired").await.len(),
        1,
        "the letter is kept"
    );

    // The service is back: its consumer takes the replay.
    failing.store(false, Ordering::SeqCst);
    let handle = subscribe().await.unwrap();
    tools.replay(seq, ReplayOptions::default()).await.unwrap();
    eventually(10, "the replay handled", || async {
        handle.stats().handled == 1
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "failed once, then replayed"
    );
    assert!(letters_of(&f, "t/retired").await.is_empty());
    handle.shutdown().await;
}

conformance!(
    a_replay_for_a_consumer_that_is_gone_keeps_the_letter,
    a_handler_that_panics_before_its_future_is_retried_and_the_rest_handled,
    a_hung_handler_is_cancelled_at_its_deadline_and_the_rest_flow,
    a_handler_that_blocks_its_thread_shows_as_a_stalled_loop,
    instances_skip_settled_work_after_their_consumer_is_recreated,
    instances_that_disagree_on_sharing_leave_the_consumer_alone,
    a_message_that_keeps_killing_its_handler_is_dead_lettered,
    replay_reaches_only_the_consumer_that_failed,
    a_letter_replayed_to_the_limit_needs_force,
    an_oversized_dead_letter_refers_to_its_original,
    a_huge_error_is_clipped_and_its_letter_written,
    a_deleted_consumer_is_recreated_and_the_rest_handled,
);

/// The consumer's unsettled and undelivered counts, from the server.
async fn pending(bus: &a4co_events::bus::nats::NatsBus, durable: &str) -> (usize, u64) {
    let stream = bus
        .transport()
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    (info.num_ack_pending, info.num_pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_keeps_the_message() {
    let f = crate::support::nats_bus().await;
    let calls = Arc::new(Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let counted = Arc::clone(&calls);
    let sub = Subscription::new("t", "no-dlq")
        .to::<OrderCreated>()
        .retry(fast_retry(2));
    let handle = f
        .bus
        .subscribe(
            sub.clone(),
            move |m: Envelope<AnyMessage>, info: DeliveryInfo| {
                let id = m.aggregate_id;
                counted
                    .lock()
                    .unwrap()
                    .entry(id.clone())
                    .or_default()
                    .push(info.attempt);
                async move {
                    Err::<(), _>(if id == "ord-permanent" {
                        HandlerError::permanent("refused for good")
                    } else {
                        HandlerError::retryable("down for now")
                    })
                }
            },
        )
        .await
        .unwrap();
    let js = f.bus.transport().jetstream().clone();
    js.delete_stream(DLQ_STREAM).await.unwrap();
    f.bus.publish(&order("ord-permanent")).await.unwrap();
    f.bus.publish(&order("ord-retried")).await.unwrap();
    // Well past the broker limit the bus used to set (the ladder plus 3 deliveries).
    eventually(30, "dead letters failing to be written", || async {
        handle.stats().dead_letter_failures >= 8
    })
    .await;
    assert_eq!(handle.stats().dead_lettered, 0);
    assert_eq!(
        pending(&f.bus, &sub.durable()).await.0,
        2,
        "both messages are kept"
    );

    f.bus.provision().await.unwrap();
    eventually(30, "both dead-lettered once the DLQ is back", || async {
        handle.stats().dead_lettered == 2
    })
    .await;
    let letters = letters_of(&f, "t/no-dlq").await;
    let by_aggregate = |id: &str| {
        letters
            .iter()
            .map(|(_, l)| l)
            .find(|l| l.payload.contains(id))
            .unwrap_or_else(|| panic!("no letter of {id}: {letters:?}"))
    };
    let permanent = by_aggregate("ord-permanent");
    assert_eq!(permanent.fault, FaultKind::Permanent);
    assert!(permanent.reason.contains("refused for good"));
    let retried = by_aggregate("ord-retried");
    assert_eq!(retried.fault, FaultKind::RetriesExhausted);
    assert_eq!(
        retried
            .attempts
            .iter()
            .map(|a| (a.attempt, a.error.as_str()))
            .collect::<Vec<_>>(),
        [(1, "down for now")],
        "the failed attempt before the last"
    );
    assert_eq!(letters.len(), 2);
    // The handlers ran as the ladder says, not once per failed write: the verdict was kept.
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls["ord-permanent"], [1]);
    assert_eq!(calls["ord-retried"], [1, 2]);
    eventually(10, "nothing left unsettled", || async {
        pending(&f.bus, &sub.durable()).await == (0, 0)
    })
    .await;
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_shared_by_two_instances_runs_each_message_once() {
    const N: usize = 200;
    let f = crate::support::nats_bus().await;
    let url = f.server.as_ref().unwrap().url();
    for i in 0..N {
        f.bus
            .publish_pipelined(&order(&format!("ord-{i:03}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let runs = Arc::new(Mutex::new(HashMap::<String, Vec<u64>>::new()));
    // Not exclusive: both instances take messages at once (an exclusive subscription
    // would leave the whole backlog to one of them).
    let sub = Subscription::new("t", "backlog")
        .to::<OrderCreated>()
        .exclusive(false)
        .ack_wait(Duration::from_secs(5));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let bus = nats_connect(&url).await;
        let runs = Arc::clone(&runs);
        let handle = bus
            .subscribe(
                sub.clone(),
                move |m: Envelope<AnyMessage>, info: DeliveryInfo| {
                    runs.lock()
                        .unwrap()
                        .entry(m.aggregate_id)
                        .or_default()
                        .push(info.attempt);
                    async {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, HandlerError>(())
                    }
                },
            )
            .await
            .unwrap();
        instances.push((bus, handle));
    }
    let handled = || {
        instances
            .iter()
            .map(|(_, h)| h.stats().handled)
            .sum::<u64>()
    };
    eventually(90, "the backlog handled", || async {
        handled() == N as u64
    })
    .await;
    // Nothing left that the broker could still hand out again.
    eventually(10, "nothing pending", || async {
        pending(&f.bus, &sub.durable()).await == (0, 0)
    })
    .await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), N);
    let twice: Vec<_> = runs.iter().filter(|(_, r)| r.len() != 1).collect();
    assert!(twice.is_empty(), "run more than once: {twice:?}");
    assert!(runs.values().all(|r| r == &[1]), "every run was attempt 1");
    for (_, handle) in instances {
        let stats = handle.shutdown().await;
        assert_eq!((stats.dead_lettered, stats.duplicates), (0, 0), "{stats}");
        assert!(stats.handled > 0, "both instances took a share: {stats}");
    }
}

/// One handler run in the ordering test.
#[derive(Clone, Debug)]
struct Run {
    instance: usize,
    n: u32,
    started: std::time::Instant,
    ended: Option<std::time::Instant>,
}

/// The message of each aggregate that takes 1.5 s in the ordering test.
const SLOW: u32 = 20;

/// Starts instance `instance` of the ordered subscription on its own connection.
async fn ordered_instance(
    url: &str,
    instance: usize,
    runs: &Arc<Mutex<HashMap<String, Vec<Run>>>>,
) -> (
    a4co_events::bus::nats::NatsBus,
    a4co_events::bus::SubscriptionHandle,
) {
    let bus = nats_connect(url).await;
    let runs = Arc::clone(runs);
    let sub = Subscription::new("t", "ordered")
        .to::<OrderCreated>()
        .max_in_flight(4)
        .ack_wait(Duration::from_secs(2));
    let handle = bus
        .subscribe(sub, move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
            let AnyMessage::OrderCreated(data) = m.data else {
                unreachable!("subscribed to order.created only")
            };
            let n: u32 = data.customer_id.parse().unwrap();
            let aggregate = m.aggregate_id;
            let index = {
                let mut runs = runs.lock().unwrap();
                let list = runs.entry(aggregate.clone()).or_default();
                list.push(Run {
                    instance,
                    n,
                    started: std::time::Instant::now(),
                    ended: None,
                });
                list.len() - 1
            };
            let runs = Arc::clone(&runs);
            // Each aggregate's message 20 is slow: the bus keeps it alive (progress), so when
            // its instance dies it comes back an ack wait after its last progress, later than
            // the standby takes over: the newer messages must wait for it.
            let pause = if n == SLOW {
                Duration::from_millis(1500)
            } else {
                Duration::from_millis(fastrand::u64(0..30))
            };
            async move {
                tokio::time::sleep(pause).await;
                runs.lock().unwrap().get_mut(&aggregate).unwrap()[index].ended =
                    Some(std::time::Instant::now());
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    (bus, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_instances_while_one_dies_and_another_joins() {
    const AGGREGATES: usize = 20;
    const EACH: u32 = 50;
    let f = crate::support::nats_bus().await;
    let url = f.server.as_ref().unwrap().url();
    let runs = Arc::new(Mutex::new(HashMap::<String, Vec<Run>>::new()));
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(Some(ordered_instance(&url, i, &runs).await));
    }
    for n in 0..EACH {
        for a in 0..AGGREGATES {
            let mut data = OrderCreated::example();
            data.customer_id = n.to_string();
            let event = Envelope::new("order-service", format!("agg-{a:02}"), data);
            f.bus.publish(&event).await.unwrap();
        }
    }
    let done = || {
        runs.lock()
            .unwrap()
            .values()
            .map(|r| r.iter().filter(|r| r.ended.is_some()).count())
            .sum::<usize>()
    };
    // Killed just after a slow handler's progress (at half the ack wait).
    let slow_for = |at_least: Duration| {
        runs.lock()
            .unwrap()
            .values()
            .flatten()
            .any(|r| r.n == SLOW && r.ended.is_none() && r.started.elapsed() >= at_least)
    };
    eventually(30, "a slow message running for 1.1 s", || async {
        slow_for(Duration::from_millis(1100))
    })
    .await;
    assert!(done() > 0);
    // The instance taking the messages dies (its task and its connection), mid-handler.
    let active = instances
        .iter()
        .position(|i| i.as_ref().is_some_and(|(_, h)| h.stats().handled > 0))
        .unwrap();
    let busy: Vec<_> = instances
        .iter()
        .flatten()
        .filter(|(_, h)| h.stats().handled > 0)
        .collect();
    assert_eq!(busy.len(), 1, "one instance at a time takes the messages");
    let (bus, handle) = instances[active].take().unwrap();
    handle.abort();
    drop(bus);
    // The pin moves at once (as an operator's unpin does), well before the dead instance's
    // deliveries come back: the standby that takes over must hold the newer messages.
    f.bus
        .transport()
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap()
        .unpin_consumer("t_ordered", a4co_events::bus::transport::PIN_GROUP)
        .await
        .unwrap();
    // Another joins.
    instances.push(Some(ordered_instance(&url, 3, &runs).await));
    let distinct = || {
        runs.lock()
            .unwrap()
            .values()
            .map(|r| {
                r.iter()
                    .filter(|r| r.ended.is_some())
                    .map(|r| r.n)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .sum::<usize>()
    };
    eventually(60, "all handled", || async {
        distinct() == AGGREGATES * EACH as usize
    })
    .await;
    let runs = runs.lock().unwrap().clone();
    let mut taken_over = false;
    for (aggregate, list) in &runs {
        let ns: Vec<u32> = list.iter().map(|r| r.n).collect();
        assert!(
            ns.windows(2).all(|w| w[0] <= w[1]),
            "{aggregate} out of stream order: {ns:?}"
        );
        for pair in list.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            if before.n == after.n {
                continue; // a run cut short by the death, then run again
            }
            match before.ended {
                Some(ended) => assert!(
                    ended <= after.started,
                    "{aggregate}: {} started before {} ended",
                    after.n,
                    before.n
                ),
                None => assert_eq!(
                    before.instance, active,
                    "only the dead one leaves runs unended"
                ),
            }
        }
        taken_over |= list.iter().any(|r| r.instance != active);
    }
    assert!(taken_over, "another instance took over");
    for (_, handle) in instances.into_iter().flatten() {
        handle.shutdown().await;
    }
}

/// Guards against: a letter that refers to its original replayed whatever its stream
/// held at that sequence, even after the stream was re-created; and a record's subject was
/// published to as it stood, catalog type or not. Both are refused now, the letter kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refuses_a_replaced_original_and_a_subject_outside_the_catalog() {
    let f = crate::support::nats_bus().await;
    let mut big = order("ord-big");
    big.data.customer_id = "c".repeat(972 * 1024);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "big").to::<OrderCreated>(),
            |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                std::future::ready(Err(HandlerError::permanent("too big for us")))
            },
        )
        .await
        .unwrap();
    let published = f.bus.publish(&big).await.unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    handle.shutdown().await;
    let tools = DeadLetters::new(f.bus.transport().clone());
    let [(seq, letter)] = letters_of(&f, "t/big").await.try_into().unwrap();
    assert!(letter.is_reference());

    // ORDERS is deleted and re-created; other orders fill it up to the original's sequence.
    f.bus
        .transport()
        .jetstream()
        .delete_stream("ORDERS")
        .await
        .unwrap();
    f.bus.provision().await.unwrap();
    let mut last = 0;
    while last < published.sequence {
        last = f.bus.publish(&order("ord-other")).await.unwrap().sequence;
    }
    let refused = tools
        .replay(seq, ReplayOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ReplayError::OriginalReplaced { sequence, .. } if sequence == published.sequence),
        "{refused}"
    );
    assert_eq!(letters_of(&f, "t/big").await.len(), 1, "the letter is kept");

    // A record whose subject is no message type: its replay would publish anywhere.
    let mut forged = letter.clone();
    forged.subject = "payments.cmd.charge_everyone".to_owned();
    let mut record = forged.to_message();
    // Its own broker id: the original letter's would be dropped as a duplicate.
    record
        .headers
        .insert(a4co_events::headers::names::MSG_ID, "forged-1");
    f.bus.transport().publish(record).await.unwrap();
    let all = DeadLetters::new(f.bus.transport().clone())
        .list(&Filter::default())
        .await
        .unwrap();
    let (forged_seq, _) = all
        .iter()
        .find(|(_, l)| l.subject == "payments.cmd.charge_everyone")
        .expect("the forged record is listed");
    let refused = tools
        .replay(*forged_seq, ReplayOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ReplayError::NotCatalog { .. }),
        "{refused}"
    );
    assert_eq!(
        DeadLetters::new(f.bus.transport().clone())
            .list(&Filter::default())
            .await
            .unwrap()
            .len(),
        2,
        "both letters kept"
    );
}

/// Guards against: while the `DLQ` stream is down, a message whose letter cannot be
/// written came back after the ladder's first delay every time (about 1 Hz with the
/// defaults) when the bus could not count its attempts: undecodable input, or no inbox.
/// The waits now grow along the ladder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_letter_backs_off_along_the_ladder_without_an_inbox() {
    let f = crate::support::nats_bus().await;
    let sub = Subscription::new("t", "spin")
        .to::<OrderCreated>()
        .inbox_ttl(None)
        .retry(fast_retry(2));
    let handle = f
        .bus
        .subscribe(sub, |_: Envelope<AnyMessage>, _: DeliveryInfo| {
            std::future::ready(Ok(()))
        })
        .await
        .unwrap();
    f.bus
        .transport()
        .jetstream()
        .delete_stream(DLQ_STREAM)
        .await
        .unwrap();
    let junk = a4co_events::bus::RawMessage {
        subject: "order.created".into(),
        headers: a4co_events::Headers::new(),
        payload: bytes::Bytes::from_static(b"not json"),
    };
    f.bus.publish_raw(junk).await.unwrap();
    // When each failed write happened.
    let mut at = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while at.len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} failed writes",
            at.len()
        );
        let failures = handle.stats().dead_letter_failures as usize;
        while at.len() < failures {
            at.push(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 100 ms doubling (no jitter): about 200, 400 and 800 ms; stuck, each about 100 ms.
    assert!(gaps[3] >= gaps[0] * 3, "the waits do not grow: {gaps:?}");
    assert_eq!(handle.stats().dead_lettered, 0);
    handle.shutdown().await;
}

/// Guards against: while the inbox bucket is down (a leader election, an outage), a
/// retryable failure could not be recorded, so every redelivery counted as the first attempt
/// and came back after the ladder's first delay: the message burnt through its deliveries in
/// a few seconds and was dead-lettered while the outage lasted. The waits now grow with the
/// broker's count, and it is dead-lettered after the documented number of deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_that_cannot_be_recorded_still_back_off_along_the_ladder() {
    let f = crate::support::nats_bus().await;
    let at = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&at);
    let sub = Subscription::new("t", "no-inbox-bucket")
        .to::<OrderCreated>()
        .retry(fast_retry(4));
    let handle = f
        .bus
        .subscribe(
            sub.clone(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                seen.lock().unwrap().push(std::time::Instant::now());
                std::future::ready(Err::<(), _>(HandlerError::retryable("down for now")))
            },
        )
        .await
        .unwrap();
    let inbox_stream = format!("KV_a4co-inbox-{}", sub.durable());
    f.bus
        .transport()
        .jetstream()
        .delete_stream(&inbox_stream)
        .await
        .unwrap();
    f.bus.publish(&order("ord-unrecorded")).await.unwrap();
    eventually(30, "dead-lettered once its deliveries ran out", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    let at = at.lock().unwrap().clone();
    assert_eq!(
        at.len() as u64,
        NO_OUTCOME_LIMIT,
        "the handler ran once per delivery before the last"
    );
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 100 ms doubling up to 1 s (no jitter): about 200, 400, 800 ms; stuck, each 100 ms.
    assert!(gaps[3] >= gaps[0] * 3, "the waits do not grow: {gaps:?}");
    let letters = letters_of(&f, "t/no-inbox-bucket").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.fault, FaultKind::NoOutcome, "{letters:?}");
    handle.shutdown().await;
}

/// Guards against: a handler failing because its store or the broker is down (a leader
/// election, a node lost) used up its deliveries in seconds and the message was
/// dead-lettered, though nothing was wrong with it: the order it carried then waited for a
/// saga timeout, or for ever when it started the saga. An outage is now retried for
/// `RetryPolicy::outage`, the deliveries not counted against `max_deliver`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_past_max_deliver_for_the_outage_window() {
    let f = crate::support::nats_bus().await;
    let calls = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let counted = Arc::clone(&calls);
    let sub = Subscription::new("t", "outage")
        .to::<OrderCreated>()
        .retry(fast_retry(2).outage(Duration::from_secs(1)));
    let handle = f
        .bus
        .subscribe(sub, move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
            let mut calls = counted.lock().unwrap();
            let n = calls.entry(m.aggregate_id.clone()).or_default();
            *n += 1;
            let answer = if m.aggregate_id == "ord-back-soon" && *n > 3 {
                Ok(())
            } else {
                Err(HandlerError::unavailable("the store has no leader"))
            };
            std::future::ready(answer)
        })
        .await
        .unwrap();
    f.bus.publish(&order("ord-back-soon")).await.unwrap();
    f.bus.publish(&order("ord-down-for-good")).await.unwrap();
    eventually(30, "one handled, one dead-lettered", || async {
        let stats = handle.stats();
        stats.handled == 1 && stats.dead_lettered == 1
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    // Past `max_deliver` (2): the outage deliveries do not count.
    assert_eq!(calls["ord-back-soon"], 4, "handled on its fourth delivery");
    // 100 ms doubling: the waits before deliveries 2 to 5 add up to 1.5 s, past the
    // outage's 1 s, so the fifth failure is the last.
    assert_eq!(calls["ord-down-for-good"], 5);
    let letters = letters_of(&f, "t/outage").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0].1;
    assert_eq!(letter.fault, FaultKind::RetriesExhausted);
    assert!(letter.payload.contains("ord-down-for-good"));
    assert!(letter.reason.contains("unavailable"), "{}", letter.reason);
    assert_eq!(letter.attempts.len(), 4, "the failures before the last");
    assert!(letter.attempts.iter().all(|a| a.unavailable));
    handle.shutdown().await;
}

/// Guards against: a panic in a subscription's task (a bug in the engine or a transport)
/// ends it silently: nothing more is handled while `/health` answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_consumer_task_shows_and_the_task_starts_again() {
    let f = crate::support::memory_bus().await;
    let handled = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&handled);
    let handle = f
        .bus
        .subscribe(
            Subscription::new("t", "task-panic").to::<OrderCreated>(),
            move |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            },
        )
        .await
        .unwrap();
    let health = handle.health();
    f.bus.publish(&order("ord-0")).await.unwrap();
    eventually(10, "the first handled", || async {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    f.bus.transport().panic_on_next_fetch();
    eventually(10, "the panic shows in the health", || async {
        health
            .problem()
            .is_some_and(|p| p.contains("its task panicked (a fault injected"))
    })
    .await;
    eventually(10, "started again", || async { health.problem().is_none() }).await;
    for i in 1..6 {
        f.bus.publish(&order(&format!("ord-{i}"))).await.unwrap();
    }
    eventually(10, "the rest handled", || async {
        handled.load(Ordering::SeqCst) == 6
    })
    .await;
    handle.shutdown().await;
}

//! The consume engine, shared by every transport: fetch, decode, skip finished work, run
//! the handler, settle (ack, nak with backoff, or dead-letter once), drain on shutdown.
//!
//! - [`task`]: one consumer's loop, a state struct that takes one event at a time;
//! - [`settle`]: one delivery, from its body to a verdict and what the verdict does;
//! - [`lanes`], [`takeover`], [`marks`]: the plain structs the loop keeps (ordering by
//!   key, the barrier after a pinned consumer changes hands, finished work not yet in the
//!   inbox).

mod health;
mod lanes;
mod marks;
mod settle;
mod takeover;
mod task;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use health::SubscriptionHealth;
use marks::{Book, Mark, Timing};

use super::transport::{AckState, Consumer, Delivery, Inbox, Transport};
use super::{EventBus, Handler, SubscribeError, Subscription};
use crate::catalog::AnyMessage;
use crate::envelope::Envelope;

/// What a subscription has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages whose handler succeeded.
    pub handled: u64,
    /// Redeliveries of finished work, acknowledged without running the handler.
    pub duplicates: u64,
    /// Failed attempts sent back for a later retry.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Dead letters that could not be written: each time, the message was kept and comes
    /// back after a backoff to be written again (its handler does not run again).
    pub dead_letter_failures: u64,
    /// Replays of a dead letter meant for another consumer, acknowledged unhandled.
    pub skipped: u64,
    /// Handlers cancelled at their deadline (each also counted in `retried`, or
    /// `dead_lettered` when it was the last attempt).
    pub timed_out: u64,
}

/// `handled 2, duplicates 0, retried 1, dead-lettered 1`, then the rarer counts when not 0.
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Stats {
            handled,
            duplicates,
            retried,
            dead_lettered,
            dead_letter_failures,
            skipped,
            timed_out,
        } = self;
        write!(
            f,
            "handled {handled}, duplicates {duplicates}, retried {retried}, "
        )?;
        write!(f, "dead-lettered {dead_lettered}")?;
        if *dead_letter_failures > 0 {
            write!(f, ", dead letters not written {dead_letter_failures}")?;
        }
        if *skipped > 0 {
            write!(f, ", replays for others skipped {skipped}")?;
        }
        if *timed_out > 0 {
            write!(f, ", cancelled at the deadline {timed_out}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failures: AtomicU64,
    skipped: AtomicU64,
    timed_out: AtomicU64,
}

/// A running subscription. Dropping it leaves it running in the background; call
/// [`SubscriptionHandle::shutdown`] to stop it cleanly.
#[derive(Debug)]
#[must_use = "a subscription runs until its handle is shut down: keep the handle (in `Workers`, say) and shut it down on SIGTERM"]
pub struct SubscriptionHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    health: SubscriptionHealth,
}

impl SubscriptionHandle {
    /// Stops taking messages, lets the handlers already running (or handed a message)
    /// finish and settle, then returns what the subscription did in all.
    pub async fn shutdown(mut self) -> Stats {
        let _ = self.stop.send(true);
        for task in &mut self.tasks {
            let _ = task.await;
        }
        self.stats()
    }

    /// Stops at once, as a crash would: running handlers are dropped mid-work and their
    /// messages, unsettled, are redelivered when the ack wait runs out. For tests.
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            handled: c.handled.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            dead_letter_failures: c.dead_letter_failures.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Whether it is taking messages now: see [`SubscriptionHealth`].
    pub fn is_running(&self) -> bool {
        self.health.is_running()
    }

    /// Its health, to check from elsewhere (a `/health` route) while it runs.
    pub fn health(&self) -> SubscriptionHealth {
        self.health.clone()
    }
}

struct Shared<T: Transport, H> {
    bus: EventBus<T>,
    subscription: Subscription,
    inbox: Option<T::Inbox>,
    handler: H,
    counters: Arc<Counters>,
    durable: String,
    label: String,
    /// The service, as the metrics' label (shared, not copied per message).
    service: Arc<str>,
    /// Per consumer, its finished work not yet in the inbox (see [`marks`]); `None`
    /// where every finished message is written at once.
    books: Vec<Option<std::sync::Mutex<Book>>>,
    timing: Timing,
    /// Per consumer, its settings (to re-create it).
    specs: Vec<super::transport::ConsumerSpec>,
    health: SubscriptionHealth,
}

impl<T: Transport, H: Handler> Shared<T, H> {
    fn book(&self, consumer: usize) -> Option<std::sync::MutexGuard<'_, Book>> {
        let book = self.books.get(consumer)?.as_ref()?;
        // A panic while holding it cannot leave a book half-changed in a way that matters.
        Some(
            book.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

type DeliveryOf<T> = <<T as Transport>::Consumer as Consumer>::Delivery;

/// A delivery with its body decoded (once, when it is fetched: the lane it waits in is
/// chosen by the body's keys).
type Decoded<T> = (
    DeliveryOf<T>,
    Result<Envelope<AnyMessage>, crate::DecodeError>,
);

/// A delivery waiting for its lane, kept alive until it starts.
struct Held<T: Transport> {
    decoded: Decoded<T>,
    /// When it arrived.
    arrived: tokio::time::Instant,
    /// When the broker last heard it is being worked on (its arrival, or a progress sent).
    touched: tokio::time::Instant,
}

impl<T: Transport> Held<T> {
    /// Whether to ask the inbox before running it even on a first delivery: it may have
    /// been handled already when it is at or below `recheck_below` (what the stream held
    /// when its consumer was re-created), or when it waited a whole `ack_wait` (a progress
    /// that may not have arrived: redelivered and handled elsewhere).
    fn recheck(&self, recheck_below: u64, ack_wait: Duration) -> bool {
        self.decoded.0.info().stream_sequence <= recheck_below || self.arrived.elapsed() >= ack_wait
    }
}

pub(super) async fn start<T: Transport, H: Handler>(
    bus: EventBus<T>,
    subscription: Subscription,
    handler: H,
) -> Result<SubscriptionHandle, SubscribeError> {
    let mut specs = subscription.consumers()?;
    let durable = subscription.durable();
    let inbox = match subscription.inbox_ttl {
        Some(ttl) => Some(
            bus.transport
                .inbox(&format!("a4co-inbox-{durable}"), ttl)
                .await?,
        ),
        None => None,
    };
    // Work done under this name before (the consumer deleted while every instance was
    // down, say): a consumer created now checks what the stream holds against the inbox.
    if let Some(inbox) = &inbox
        && inbox.holds_records().await.unwrap_or(true)
    {
        for spec in &mut specs {
            spec.handled_before = true;
        }
    }
    let mut consumers = Vec::with_capacity(specs.len());
    let mut books = Vec::with_capacity(specs.len());
    let lazy = inbox.is_some() && subscription.inbox_check == super::InboxCheck::Redeliveries;
    for spec in &specs {
        let consumer = bus.transport.consumer(spec).await?;
        // Where the broker's acknowledgements stand: a consumer deleted later is re-created
        // from there.
        let state = consumer.ack_state().await;
        books.push(
            state
                .filter(|_| lazy)
                .map(|s| std::sync::Mutex::new(Book::new(s.epoch))),
        );
        consumers.push((consumer, state));
    }
    let counters = Arc::new(Counters::default());
    let label = subscription.label();
    let timing = Timing::for_ack_wait(subscription.ack_wait);
    let health = SubscriptionHealth::new(
        &label,
        specs.iter().map(|s| s.stream.clone()),
        (timing.tick * 10).max(Duration::from_secs(2)),
        subscription.handler_deadline,
    );
    let shared = Arc::new(Shared {
        service: Arc::from(subscription.service.as_str()),
        durable,
        bus,
        inbox,
        handler,
        counters: Arc::clone(&counters),
        timing,
        subscription,
        books,
        specs,
        health: health.clone(),
        label,
    });
    let (stop, stop_rx) = watch::channel(false);
    let tasks = consumers
        .into_iter()
        .enumerate()
        .map(|(index, (consumer, state))| {
            let shared = Arc::clone(&shared);
            tokio::spawn(supervise(shared, (consumer, state), index, stop_rx.clone()))
        })
        .collect();
    Ok(SubscriptionHandle {
        stop,
        tasks,
        counters,
        health,
    })
}

/// Runs consumer `index`'s task. A panic in it (a bug: the handlers' and decoding's panics
/// are caught where they happen) is logged, named in the health, and the task started
/// again on the consumer opened anew, after the re-creation backoff (250 ms doubling to
/// 10 s, from the start again after a minute without one). The deliveries it held come back
/// after their ack wait, and are checked against the inbox.
async fn supervise<T: Transport, H: Handler>(
    shared: Arc<Shared<T, H>>,
    opened: (T::Consumer, Option<AckState>),
    index: usize,
    stop: watch::Receiver<bool>,
) {
    use futures::FutureExt as _;
    let mut opened = Some(opened);
    let mut panics = 0;
    loop {
        let (consumer, state) = match opened.take() {
            Some(opened) => opened,
            None => {
                let mut spec = shared.specs[index].clone();
                spec.handled_before = true;
                match shared.bus.transport.consumer(&spec).await {
                    Ok(consumer) => {
                        let state = consumer.ack_state().await;
                        shared.health.set(index, None);
                        (consumer, state)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, consumer = %shared.durable, "cannot open the consumer again yet");
                        tokio::time::sleep(task::reopen_delay(panics)).await;
                        continue;
                    }
                }
            }
        };
        let task = task::Task::new(Arc::clone(&shared), consumer, state, index, stop.clone());
        let started = std::time::Instant::now();
        let Err(panic) = std::panic::AssertUnwindSafe(task.run())
            .catch_unwind()
            .await
        else {
            return;
        };
        let text = settle::panic_text(&*panic);
        tracing::error!(consumer = %shared.durable, panic = %text, "the subscription's task panicked; starting it again");
        shared.health.set(
            index,
            Some(format!("its task panicked ({text}); starting it again")),
        );
        if *stop.borrow() {
            return;
        }
        panics = if started.elapsed() > Duration::from_secs(60) {
            0
        } else {
            panics + 1
        };
        tokio::time::sleep(task::reopen_delay(panics)).await;
    }
}

/// Writes finished work to the inbox in the background (what a book says is due).
fn write_later<T: Transport, H: Handler>(shared: &Shared<T, H>, marks: Vec<Mark>) {
    if marks.is_empty() {
        return;
    }
    if let Some(inbox) = &shared.inbox {
        tokio::spawn(write_marks(inbox.clone(), shared.durable.clone(), marks));
    }
}

async fn write_marks<I: Inbox>(inbox: I, durable: String, marks: Vec<Mark>) {
    for mark in marks {
        if let Err(e) = inbox.mark_done_pipelined(&mark.key(&durable)).await {
            tracing::warn!(error = %e, "could not record finished work; a redelivery would run it again");
        }
    }
}

/// At shutdown: one last look at the ack floor, then what is not settled is written and
/// flushed before the subscription stops (another instance would get its redelivery).
async fn close_book<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    ack_state: impl Future<Output = Option<AckState>>,
    index: usize,
) {
    let state = ack_state.await;
    let marks = shared.book(index).map_or_else(Vec::new, |mut book| {
        let mut marks = state.map_or_else(Vec::new, |s| {
            book.update(s, std::time::Instant::now(), shared.timing)
        });
        marks.extend(book.take_open());
        marks
    });
    if let (Some(inbox), false) = (&shared.inbox, marks.is_empty()) {
        write_marks(inbox.clone(), shared.durable.clone(), marks).await;
        if let Err(e) = inbox.flush().await {
            tracing::warn!(error = %e, "could not flush the inbox's last records");
        }
    }
}

/// Counts, in the background, the subscription's letters kept in `DLQ` for the depth gauge
/// (`a4co_dlq_depth`).
fn count_dead_letters<T: Transport, H: Handler>(shared: &Arc<Shared<T, H>>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let filter = format!("{}.{}.>", super::DLQ_PREFIX, shared.label.replace('/', "."));
        if let Some(n) = shared
            .bus
            .transport
            .stored(super::DLQ_STREAM, &filter)
            .await
        {
            shared
                .bus
                .metrics
                .dead_letters_kept(&shared.service, &shared.label, n);
        }
    });
}

//! The consume engine, shared by every transport: fetch, decode, skip finished work, run
//! the handler, settle (ack, nak with backoff, or dead-letter once), drain on shutdown.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use std::collections::VecDeque;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::dlq::{DeadLetter, FaultKind, REPLAY_FOR_HEADER, REPLAY_HEADER};
use super::marks::{Book, Mark, Timing};
use super::transport::{AckState, Attempt, Consumer, Delivery, Inbox, RawMessage, Transport};
use super::{EventBus, Handler, HandlerError, SubscribeError, Subscription, telemetry};
use crate::catalog::AnyMessage;
use crate::envelope::Envelope;
use crate::headers::{TraceContext, names};

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
}

/// Whether a subscription's consumers are running: a cheap clone to hand to a health check.
#[derive(Clone, Debug)]
pub struct SubscriptionHealth {
    label: Arc<str>,
    /// Per consumer: its stream, and why it is not running (and since when), if it is not.
    consumers: Arc<std::sync::Mutex<Vec<ConsumerHealth>>>,
}

#[derive(Debug)]
struct ConsumerHealth {
    stream: String,
    /// Why it is not running, and since when.
    down: Option<(String, std::time::Instant)>,
}

impl SubscriptionHealth {
    fn new(label: &str, streams: impl Iterator<Item = String>) -> Self {
        SubscriptionHealth {
            label: Arc::from(label),
            consumers: Arc::new(std::sync::Mutex::new(
                streams
                    .map(|stream| ConsumerHealth { stream, down: None })
                    .collect(),
            )),
        }
    }

    fn set(&self, consumer: usize, down: Option<String>) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ConsumerHealth { down: state, .. }) = consumers.get_mut(consumer) {
            *state = match (down, state.take()) {
                (None, _) => None,
                // The first reason and its time stand until it runs again.
                (Some(_), Some(kept)) => Some(kept),
                (Some(reason), None) => Some((reason, std::time::Instant::now())),
            };
        }
    }

    /// `<service>/<subscription>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether every consumer of the subscription is taking messages (a consumer being
    /// re-created, or stopped, is not).
    pub fn is_running(&self) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .all(|c| c.down.is_none())
    }

    /// What is not running, in one line naming the subscription, the stream and why
    /// (`inventory-service/orders on ORDERS: not running for 3 s: the consumer was
    /// deleted; re-creating it`); `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let problems: Vec<String> = consumers
            .iter()
            .filter_map(|ConsumerHealth { stream, down }| {
                let (reason, since) = down.as_ref()?;
                Some(format!(
                    "{} on {stream}: not running for {} s: {reason}",
                    self.label,
                    since.elapsed().as_secs()
                ))
            })
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
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
    /// Per consumer, its finished work not yet in the inbox (see [`super::marks`]); `None`
    /// where every finished message is written at once.
    books: Vec<Option<std::sync::Mutex<Book>>>,
    timing: Timing,
    /// Per consumer, its settings (to re-create it).
    specs: Vec<super::ConsumerSpec>,
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
    /// been handled already when it is at or below `recheck_below` (the highest sequence
    /// seen before its consumer was re-created), or when it waited a whole `ack_wait` (a
    /// progress that may not have arrived: redelivered and handled elsewhere).
    fn recheck(&self, recheck_below: u64, ack_wait: Duration) -> bool {
        self.decoded.0.info().stream_sequence <= recheck_below || self.arrived.elapsed() >= ack_wait
    }
}

pub(super) async fn start<T: Transport, H: Handler>(
    bus: EventBus<T>,
    subscription: Subscription,
    handler: H,
) -> Result<SubscriptionHandle, SubscribeError> {
    let specs = subscription.consumers()?;
    let durable = subscription.durable();
    let inbox = match subscription.inbox_ttl {
        Some(ttl) => Some(
            bus.transport
                .inbox(&format!("a4co-inbox-{durable}"), ttl)
                .await?,
        ),
        None => None,
    };
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
        consumers.push((consumer, state.map(|s| s.floor)));
    }
    let counters = Arc::new(Counters::default());
    let label = subscription.label();
    let health = SubscriptionHealth::new(&label, specs.iter().map(|s| s.stream.clone()));
    let shared = Arc::new(Shared {
        service: Arc::from(subscription.service.as_str()),
        durable,
        bus,
        inbox,
        handler,
        counters: Arc::clone(&counters),
        timing: Timing::for_ack_wait(subscription.ack_wait),
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
        .map(|(index, (consumer, floor))| {
            tokio::spawn(run(
                Arc::clone(&shared),
                consumer,
                floor,
                index,
                stop_rx.clone(),
            ))
        })
        .collect();
    Ok(SubscriptionHandle {
        stop,
        tasks,
        counters,
        health,
    })
}

type AckStateFuture = std::pin::Pin<Box<dyn Future<Output = Option<AckState>> + Send>>;
type Reopening<C> =
    std::pin::Pin<Box<dyn Future<Output = Result<C, super::SubscribeError>> + Send>>;

/// What woke a consumer's loop.
enum Event<T: Transport> {
    /// The handling on this lane finished.
    Finished(usize),
    /// Shutdown was asked (`false`) or the handle was dropped (`true`).
    Stop(bool),
    /// Time to keep waiting deliveries alive and ask the broker for the ack floor.
    Tick,
    /// The broker's answer.
    Looked(Option<AckState>),
    /// Time to ask the broker again whether a takeover can go on.
    Relook,
    /// The pause after a failed fetch is over.
    Resume,
    /// The next delivery, an error, or `None` when the consumer closed.
    Fetched(Option<Result<DeliveryOf<T>, super::ConsumeError>>),
    /// The consumer was re-created, or could not be yet.
    Reopened(Result<T::Consumer, super::SubscribeError>),
}

/// How often at least a consumer asks the broker where it stands, for the backlog gauges
/// (`a4co_consumer_pending`, `a4co_consumer_ack_pending`) when nothing else makes it ask.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// How soon to ask the broker again while a takeover waits for the previous instance's
/// messages.
const RELOOK: Duration = Duration::from_millis(20);

/// The longest pause between two tries at re-creating a consumer.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(10);

/// One consumer's loop, in one task: take deliveries while fewer than twice `max_in_flight`
/// are running or waiting, run each as a future of this task (no hand-off between tasks),
/// and keep the messages of one aggregate in order by queueing them behind the running
/// one. Waiting deliveries are kept alive (progress) until they start, so none is
/// redelivered elsewhere while it waits. A consumer that is deleted or ends is re-created
/// from the last ack floor seen, with backoff, and reported not running meanwhile. With a
/// book (see [`super::marks`]), it also writes to the inbox what the book says is due.
async fn run<T: Transport, H: Handler>(
    shared: Arc<Shared<T, H>>,
    mut consumer: T::Consumer,
    mut floor: Option<u64>,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let booked = shared.book(index).is_some();
    let ack_wait = shared.subscription.ack_wait;
    let keep_alive = (ack_wait / 3).max(Duration::from_millis(20));
    let mut ticker = tokio::time::interval(shared.timing.tick.min(keep_alive));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looking: Option<AckStateFuture> = None;
    let mut reopening: Option<Reopening<T::Consumer>> = None;
    let mut reopen_tries = 0u32;
    let lanes = shared.subscription.max_in_flight;
    let capacity = lanes.saturating_mul(2);
    let mut running = FuturesUnordered::new();
    // Per lane: whether a delivery is running, and those waiting behind it.
    let mut busy = vec![false; lanes];
    let mut waiting: Vec<VecDeque<Held<T>>> = (0..lanes).map(|_| VecDeque::new()).collect();
    let mut queued = 0usize;
    // After this instance took over a pinned consumer: the first sequence it got, and the
    // newer deliveries held until the previous instance's unsettled ones are done.
    let mut barrier: Option<u64> = None;
    let mut barred: VecDeque<Held<T>> = VecDeque::new();
    let mut taking_over = false;
    // The fewest deliveries this instance held unsettled since the last look was asked.
    let mut look_min = usize::MAX;
    // When to ask again while a takeover waits (sooner than the next tick).
    let mut relook: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // Whether something arrived since the last look at the ack floor.
    let mut active = false;
    let mut last_look = std::time::Instant::now();
    // The highest sequence seen: after a re-creation, what is at or below it may have
    // been handled already and is checked against the inbox first.
    let mut seen = 0u64;
    let mut recheck_below = 0u64;
    // Runs a delivery on a lane.
    macro_rules! start {
        ($held:expr, $lane:expr) => {{
            let held: Held<T> = $held;
            let recheck = held.recheck(recheck_below, ack_wait);
            running.push(process(
                Arc::clone(&shared),
                held.decoded,
                $lane,
                index,
                recheck,
            ));
        }};
    }
    // Starts a delivery on its lane, or queues it behind the one running there.
    macro_rules! dispatch {
        ($held:expr) => {{
            let held: Held<T> = $held;
            let (delivery, decoded) = &held.decoded;
            let lane = match shared.subscription.ordered_by {
                super::OrderBy::Nothing => busy.iter().position(|b| !b).unwrap_or(0),
                order => lane_of(delivery.message(), decoded.as_ref().ok(), lanes, order),
            };
            if busy[lane] {
                waiting[lane].push_back(held);
                queued += 1;
            } else {
                busy[lane] = true;
                start!(held, lane);
            }
        }};
    }
    let mut stopping = false;
    // Set when the handle was dropped: the subscription then runs until the process ends.
    let mut detached = false;
    let mut fetch_paused_until: Option<tokio::time::Instant> = None;
    loop {
        let room = if stopping || reopening.is_some() {
            0
        } else {
            capacity.saturating_sub(running.len() + queued + barred.len())
        };
        let paused = fetch_paused_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let event: Event<T> = {
            // The branches in priority order; a branch whose condition is false is not
            // polled (and its future never made).
            let mut stopped = std::pin::pin!(stop.changed());
            let mut resume = std::pin::pin!(tokio::time::sleep_until(
                fetch_paused_until.unwrap_or_else(tokio::time::Instant::now)
            ));
            let fetching = !stopping && !paused && reopening.is_none();
            let mut fetched = std::pin::pin!(consumer.next(room));
            std::future::poll_fn(|cx| {
                use std::task::Poll;
                if !running.is_empty()
                    && let Poll::Ready(Some(lane)) = running.poll_next_unpin(cx)
                {
                    return Poll::Ready(Event::Finished(lane));
                }
                if !stopping
                    && !detached
                    && let Poll::Ready(changed) = stopped.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Stop(changed.is_err()));
                }
                if looking.is_none() && ticker.poll_tick(cx).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
                if let Some(look) = looking.as_mut()
                    && let Poll::Ready(state) = look.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Looked(state));
                }
                if looking.is_none()
                    && let Some(timer) = relook.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::Relook);
                }
                if let Some(reopen) = reopening.as_mut()
                    && let Poll::Ready(result) = reopen.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Reopened(result));
                }
                if paused && resume.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Resume);
                }
                if fetching && let Poll::Ready(next) = fetched.as_mut().poll(cx) {
                    return Poll::Ready(Event::Fetched(next));
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Finished(lane) => match waiting[lane].pop_front() {
                Some(held) => {
                    queued -= 1;
                    start!(held, lane);
                }
                None => busy[lane] = false,
            },
            Event::Stop(dropped) if dropped => detached = true,
            Event::Stop(_) => {
                stopping = true;
                // Held for a takeover that will not finish here: back to the broker.
                give_back(&mut barred, &mut barrier).await;
            }
            Event::Tick => {
                keep_alive_all(
                    waiting.iter_mut().flatten().chain(barred.iter_mut()),
                    keep_alive,
                )
                .await;
                if consumer.pin_changed() == Some(false) {
                    give_back(&mut barred, &mut barrier).await;
                }
                let book_open = shared.book(index).is_some_and(|b| !b.is_empty());
                // The backlog metrics want a fresh look now and then, busy or not.
                let stale = last_look.elapsed() >= BACKLOG_EVERY;
                if stale && index == 0 {
                    count_dead_letters(&shared);
                }
                if (booked && book_open) || active || barrier.is_some() || stale {
                    last_look = std::time::Instant::now();
                    active = false;
                    look_min = running.len() + queued + barred.len();
                    looking = Some(Box::pin(consumer.ack_state()));
                }
            }
            Event::Looked(state) => {
                looking = None;
                if let Some(state) = state {
                    floor = Some(state.floor);
                    shared.bus.metrics.backlog(
                        &shared.service,
                        &shared.label,
                        &shared.specs[index].stream,
                        state.waiting,
                        state.pending,
                    );
                    // The previous instance's messages are done when everything below the
                    // first sequence this instance got is settled, or nothing is unsettled
                    // but this instance's own (at their fewest while the broker was asked):
                    // release the rest in stream order.
                    let settled = barrier.is_some_and(|from| {
                        state.floor + 1 >= from || state.pending <= look_min as u64
                    });
                    if barrier.is_some() && !settled {
                        relook = Some(Box::pin(tokio::time::sleep(RELOOK)));
                    }
                    if settled {
                        tracing::info!(consumer = %shared.durable, held = barred.len(), "the previous instance's messages are settled; handling the newer ones");
                        barrier = None;
                        while let Some(held) = barred.pop_front() {
                            dispatch!(held);
                        }
                    }
                    let due = shared
                        .book(index)
                        .map(|mut b| b.update(state, std::time::Instant::now(), shared.timing));
                    write_later(&shared, due.unwrap_or_default());
                }
            }
            Event::Resume => fetch_paused_until = None,
            Event::Relook => {
                relook = None;
                if barrier.is_some() {
                    look_min = running.len() + queued + barred.len();
                    looking = Some(Box::pin(consumer.ack_state()));
                }
            }
            Event::Reopened(Ok(reopened)) => {
                tracing::info!(consumer = %shared.durable, stream = %shared.specs[index].stream, "consumer re-created; taking messages again");
                consumer = reopened;
                reopening = None;
                reopen_tries = 0;
                recheck_below = seen;
                shared.health.set(index, None);
            }
            Event::Reopened(Err(e)) => {
                reopen_tries += 1;
                tracing::warn!(error = %e, consumer = %shared.durable, "cannot re-create the consumer yet; trying again");
                shared
                    .health
                    .set(index, Some(format!("re-creating its consumer failed: {e}")));
                reopening = Some(reopen(&shared, index, floor, reopen_tries));
            }
            Event::Fetched(None) => {
                tracing::warn!(consumer = %shared.durable, "the consumer ended; re-creating it");
                shared
                    .health
                    .set(index, Some("its consumer ended; re-creating it".to_owned()));
                reopening = Some(reopen(&shared, index, floor, 0));
            }
            Event::Fetched(Some(Err(e)))
                if e.kind() == super::ConsumeErrorKind::ConsumerDeleted =>
            {
                tracing::warn!(error = %e, consumer = %shared.durable, "the consumer is gone; re-creating it");
                shared
                    .health
                    .set(index, Some(format!("{e}; re-creating it")));
                reopening = Some(reopen(&shared, index, floor, 0));
            }
            Event::Fetched(Some(Err(e))) => {
                // Pause fetching, not the handlers already running.
                tracing::warn!(error = %e, "fetching the next message failed; retrying in 200 ms");
                fetch_paused_until = Some(tokio::time::Instant::now() + Duration::from_millis(200));
            }
            Event::Fetched(Some(Ok(delivery))) => {
                active = true;
                let sequence = delivery.info().stream_sequence;
                seen = seen.max(sequence);
                match consumer.pin_changed() {
                    Some(true) => {
                        // This instance just took over: what the one before left unsettled
                        // (below this sequence) goes first; newer messages wait for it.
                        tracing::info!(consumer = %shared.durable, from = sequence, "taking over the subscription's messages; holding newer ones until the previous instance's are settled");
                        barrier = Some(sequence);
                        taking_over = true;
                    }
                    Some(false) => give_back(&mut barred, &mut barrier).await,
                    None => {}
                }
                let message = delivery.message();
                let decoded = shared
                    .subscription
                    .decoder
                    .decode(&message.payload, &message.headers);
                let now = tokio::time::Instant::now();
                let held = Held {
                    decoded: (delivery, decoded),
                    arrived: now,
                    touched: now,
                };
                if barrier.is_some_and(|from| sequence >= from) {
                    barred.push_back(held);
                } else {
                    dispatch!(held);
                }
                if std::mem::take(&mut taking_over) && looking.is_none() {
                    look_min = running.len() + queued + barred.len();
                    looking = Some(Box::pin(consumer.ack_state()));
                }
            }
        }
        look_min = look_min.min(running.len() + queued + barred.len());
        if stopping && running.is_empty() && queued == 0 {
            if booked {
                close_book(&shared, consumer.ack_state(), index).await;
            }
            // Nothing held: a standby may take over now rather than after the ack wait.
            consumer.release().await;
            shared
                .health
                .set(index, Some("the subscription was shut down".to_owned()));
            return;
        }
    }
}

/// Gives the deliveries held for a takeover back to the broker (this instance lost the
/// pin, or stops): the instance that takes over gets them first.
async fn give_back<T: Transport>(barred: &mut VecDeque<Held<T>>, barrier: &mut Option<u64>) {
    *barrier = None;
    for held in barred.drain(..) {
        let _ = held.decoded.0.nak(Duration::ZERO).await;
    }
}

/// Tells the broker that deliveries waiting to start are still being worked on, each once
/// per `period`, so none passes its ack wait while it waits.
async fn keep_alive_all<'a, T: Transport>(
    held: impl Iterator<Item = &'a mut Held<T>>,
    period: Duration,
) {
    let now = tokio::time::Instant::now();
    for held in held {
        if now.saturating_duration_since(held.touched) >= period {
            held.touched = now;
            if let Err(e) = held.decoded.0.progress().await {
                tracing::warn!(error = %e, "could not keep a waiting delivery alive; it is checked against the inbox before it runs");
            }
        }
    }
}

/// Re-creates consumer `index` where the broker's acknowledgements stood (`floor`), after
/// a backoff growing with `tries`: 250 ms, doubling up to [`MAX_REOPEN_DELAY`] (a pause
/// even before the first, so a consumer deleted with its stream, or while its server
/// restarts, is not hammered).
fn reopen<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    index: usize,
    floor: Option<u64>,
    tries: u32,
) -> Reopening<T::Consumer> {
    let transport = shared.bus.transport.clone();
    let mut spec = shared.specs[index].clone();
    spec.start_sequence = floor.map(|f| f + 1);
    let delay =
        (Duration::from_millis(250) * 2u32.saturating_pow(tries.min(6))).min(MAX_REOPEN_DELAY);
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        transport.consumer(&spec).await
    })
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

/// Messages of one aggregate (or one correlation) go to one lane, so they are handled in
/// order. The key is the decoded body's (headers no longer carry it); a body that did not
/// decode goes by its subject, and is dead-lettered in its turn.
fn lane_of(
    message: &RawMessage,
    envelope: Option<&Envelope<AnyMessage>>,
    lanes: usize,
    order: super::OrderBy,
) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let key = envelope.map_or(message.subject.as_str(), |e| match order {
        super::OrderBy::Correlation => e.metadata.correlation_id.as_str(),
        _ => e.aggregate_id.as_str(),
    });
    // FNV-1a: stable across processes and runs.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % lanes as u64).unwrap_or(0)
}

async fn process<T: Transport, H: Handler>(
    shared: Arc<Shared<T, H>>,
    (delivery, decoded): Decoded<T>,
    lane: usize,
    consumer: usize,
    recheck: bool,
) -> usize {
    let info = delivery.info();
    let message = delivery.message();
    let span = telemetry::consume_span(
        &message.subject,
        &shared.label,
        info.stream_sequence,
        info.delivered,
    );
    let mut decoded = decoded;
    let trace = match TraceContext::extract(&message.headers) {
        Some(trace) => {
            telemetry::set_remote_parent(&span, &trace);
            Some(trace)
        }
        // A message without trace context starts a trace here (the handling span's, or a new
        // one), which what the handler sends on its behalf continues.
        None => decoded.as_mut().ok().map(|envelope| {
            let trace = telemetry::outgoing(&span, None);
            envelope.trace = Some(trace.clone());
            trace
        }),
    };
    telemetry::described(&span, trace.as_ref(), decoded.as_ref().ok());
    let started = std::time::Instant::now();
    let (status, event_type) = settle(&shared, &delivery, decoded, consumer, recheck)
        .instrument(span)
        .await;
    shared.bus.metrics.processed(
        &shared.service,
        event_type,
        &message.subject,
        status,
        started.elapsed(),
    );
    lane
}

/// A delivered message the handler did not settle within this many deliveries beyond
/// its recorded attempts is dead-lettered ([`FaultKind::NoOutcome`]): its handler keeps
/// crashing or hanging the process, or its failures cannot be recorded.
pub(super) const NO_OUTCOME_LIMIT: u64 = 10;

/// Settles one delivery; returns what happened (the processed metric's status) and, once
/// decoded, the message type. Keys and strings that only failures or the inbox need are
/// built only on those paths.
async fn settle<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    delivery: &DeliveryOf<T>,
    decoded: Result<Envelope<AnyMessage>, crate::DecodeError>,
    consumer: usize,
    recheck: bool,
) -> (&'static str, Option<&'static str>) {
    let info = delivery.info();
    let message = delivery.message();
    let attempts_key = || {
        format!(
            "{}.{}.{}",
            shared.durable, info.stream, info.stream_sequence
        )
    };

    let envelope = match decoded {
        Ok(envelope) => envelope,
        Err(e) => {
            let id = message.headers.get(names::MSG_ID).map(str::to_owned);
            let fault = Fault {
                kind: FaultKind::Undecodable,
                chain: vec![e.reason()],
                event_type: e.event_type().map(str::to_owned),
                event_id: id,
                kept: false,
            };
            let key = attempts_key();
            let status = dead_letter(
                shared,
                delivery,
                info.delivered,
                fault,
                &key,
                &key,
                Vec::new(),
            )
            .await;
            return (status, None);
        }
    };
    let event_type = envelope.event_type();
    let event_id = envelope.event_id;
    // The fault of this (decoded) message, `kept` when its verdict is in the history.
    let fault = |kind, chain, kept| Fault {
        kind,
        chain,
        event_type: Some(event_type.to_owned()),
        event_id: Some(event_id.to_string()),
        kept,
    };
    if message.subject != event_type {
        // The subject is the type: a body that says otherwise contradicts its routing.
        let chain = vec![format!(
            "{}: the subject is {} but the body says {event_type}",
            crate::DecodeErrorKind::HeaderMismatch,
            crate::error::clip(&message.subject)
        )];
        let key = attempts_key();
        let fault = fault(FaultKind::Undecodable, chain, false);
        let status = dead_letter(
            shared,
            delivery,
            info.delivered,
            fault,
            &key,
            &key,
            Vec::new(),
        )
        .await;
        return (status, None);
    }
    if let Some(target) = message.headers.get(REPLAY_FOR_HEADER)
        && target != shared.label
    {
        // A dead letter replayed for another consumer: this one handled it already.
        shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
        ack(delivery).await;
        return ("skipped", Some(event_type));
    }
    let mark = || Mark {
        event_id,
        replay: message.headers.get(REPLAY_HEADER).map(Box::from),
    };
    let done_key = || mark().key(&shared.durable);
    let check = recheck
        || match shared.subscription.inbox_check {
            super::InboxCheck::Always => true,
            super::InboxCheck::Redeliveries => info.delivered > 1,
        };
    if let Some(inbox) = shared.inbox.as_ref().filter(|_| check) {
        let in_book = shared
            .book(consumer)
            .is_some_and(|b| b.knows(info.stream_sequence, &mark()));
        let done = if in_book {
            Ok(true)
        } else {
            inbox.is_done(&done_key()).await
        };
        match done {
            Ok(true) => {
                tracing::debug!("already handled; acknowledging the redelivery");
                shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                ack(delivery).await;
                return ("duplicate", Some(event_type));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inbox unreadable; handling anyway (at least once)");
            }
        }
    }

    // The attempt is the bus's count: failures recorded, plus one. A redelivery reads them
    // (a first delivery has none), with a verdict whose dead letter is still to write.
    let mut history = Vec::new();
    if let (Some(inbox), true) = (&shared.inbox, info.delivered > 1) {
        match inbox.attempts(&attempts_key()).await {
            Ok(recorded) => history = recorded,
            Err(e) => {
                tracing::warn!(error = %e, "attempt history unreadable; counting from it as empty");
            }
        }
    }
    let attempt = if shared.inbox.is_some() {
        history.iter().filter(|a| a.fault.is_none()).count() as u64 + 1
    } else {
        info.delivered
    };
    if let Some(verdict) = history.last().filter(|a| a.fault.is_some()).cloned() {
        history.pop();
        let kind = verdict.fault.unwrap_or(FaultKind::Permanent);
        let status = dead_letter(
            shared,
            delivery,
            verdict.attempt,
            fault(kind, vec![verdict.error], true),
            &done_key(),
            &attempts_key(),
            history,
        )
        .await;
        return (status, Some(event_type));
    }
    if shared.inbox.is_some() && info.delivered >= attempt + NO_OUTCOME_LIMIT {
        let chain = vec![format!(
            "delivered {} times for {attempt} recorded attempts: the handler crashes or \
             hangs the process, or its failures cannot be recorded",
            info.delivered
        )];
        let status = dead_letter(
            shared,
            delivery,
            attempt,
            fault(FaultKind::NoOutcome, chain, false),
            &done_key(),
            &attempts_key(),
            history,
        )
        .await;
        return (status, Some(event_type));
    }

    let mut handed = info.clone();
    handed.attempt = attempt;
    let work = AssertUnwindSafe(shared.handler.handle(envelope, handed)).catch_unwind();
    let outcome = match with_progress(delivery, shared.subscription.ack_wait, work).await {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(HandlerError::retryable(format!("handler panicked: {text}")))
        }
    };

    let status = match outcome {
        Ok(()) => {
            if let Some(inbox) = &shared.inbox {
                let booked = shared.book(consumer).map(|mut book| {
                    book.finished(info.stream_sequence, mark(), std::time::Instant::now())
                });
                let recorded = match (booked, shared.subscription.inbox_check) {
                    (Some(overflow), _) => {
                        write_later(shared, overflow);
                        Ok(())
                    }
                    (None, super::InboxCheck::Always) => inbox.mark_done(&done_key()).await,
                    (None, super::InboxCheck::Redeliveries) => {
                        inbox.mark_done_pipelined(&done_key()).await
                    }
                };
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "could not record finished work; a redelivery would run it again");
                }
                if attempt > 1 {
                    let _ = inbox.forget(&attempts_key()).await;
                }
            }
            ack(delivery).await;
            shared.counters.handled.fetch_add(1, Ordering::Relaxed);
            "success"
        }
        Err(error) => {
            let retry = &shared.subscription.retry;
            let kind = if error.is_permanent() {
                Some(FaultKind::Permanent)
            } else if retry.exhausted(attempt) {
                Some(FaultKind::RetriesExhausted)
            } else {
                None
            };
            if let Some(kind) = kind {
                // `history` holds the failures before this one (read for any redelivery).
                dead_letter(
                    shared,
                    delivery,
                    attempt,
                    fault(kind, error.chain(), false),
                    &done_key(),
                    &attempts_key(),
                    history,
                )
                .await
            } else {
                let delay = retry.delay(attempt);
                tracing::info!(error = %error, ?delay, attempt, "handler failed; retrying later");
                if let Some(inbox) = &shared.inbox {
                    let failed = Attempt {
                        attempt,
                        at: Utc::now(),
                        error: error.chain().join(": "),
                        fault: None,
                    };
                    if let Err(e) = inbox.record_attempt(&attempts_key(), failed).await {
                        tracing::warn!(error = %e, "could not record the failed attempt");
                    }
                }
                if let Err(e) = delivery.nak(delay).await {
                    tracing::warn!(error = %e, "nak failed; the broker redelivers after the ack wait");
                }
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                telemetry::failed(&tracing::Span::current(), "transient");
                "retry"
            }
        }
    };
    (status, Some(event_type))
}

struct Fault {
    kind: FaultKind,
    chain: Vec<String>,
    event_type: Option<String>,
    event_id: Option<String>,
    /// Whether the verdict is kept in the attempt history already (a redelivery after a
    /// dead letter that could not be written).
    kept: bool,
}

/// Records the dead letter of failed attempt `attempt`, then terminates the delivery.
/// `history` holds the failed attempts before it (none for undecodable input). If the
/// record cannot be written, the verdict is kept in the attempt history and the delivery
/// comes back after a backoff to be written again, its handler not run again: a message
/// is never dropped unrecorded. A record above 7/8 of the broker's maximum payload (room
/// for the broker's framing; the error chain and history are in it too) keeps a
/// reference to the original (its stream and sequence) instead of the payload.
async fn dead_letter<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    delivery: &DeliveryOf<T>,
    attempt: u64,
    fault: Fault,
    done_key: &str,
    attempts_key: &str,
    history: Vec<Attempt>,
) -> &'static str {
    let message = delivery.message();
    let info = delivery.info();
    // Decoding fails again on every delivery: no verdict to keep for it.
    let kept = fault.kept || fault.kind == FaultKind::Undecodable;
    let mut letter = DeadLetter::new(
        message,
        info,
        &shared.label,
        fault.kind,
        fault.chain,
        history,
        fault.event_type,
        fault.event_id,
    );
    let mut record = letter.to_message();
    if record.size() > shared.bus.transport.max_payload() / 8 * 7 {
        letter = letter.by_reference();
        record = letter.to_message();
    }
    // A message that came without trace context: its dead letter is in the handling's trace.
    if record.headers.get(names::TRACEPARENT).is_none() {
        telemetry::outgoing(&tracing::Span::current(), None).inject(&mut record.headers);
    }
    match shared.bus.transport.publish(record).await {
        Ok(_) => {
            tracing::warn!(reason = %letter.reason, "dead-lettered");
            if let Some(inbox) = &shared.inbox {
                // A redelivery (if the term below is lost) is then skipped, not faulted twice.
                let _ = inbox.mark_done(done_key).await;
                let _ = inbox.forget(attempts_key).await;
            }
            if let Err(e) = delivery.term().await {
                tracing::warn!(error = %e, "term failed after dead-lettering");
            }
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            shared
                .bus
                .metrics
                .dead_lettered(&shared.service, &shared.label, letter.fault);
            telemetry::failed(&tracing::Span::current(), letter.fault.as_str());
            "dead_letter"
        }
        Err(e) => {
            // Delivery count beyond the attempts: how often writing it failed already.
            let failures = info.delivered.saturating_sub(attempt) + 1;
            let delay = shared.subscription.retry.delay(failures);
            tracing::error!(error = %e, reason = %letter.reason, ?delay, "cannot write the dead letter; the message is kept and comes back to write it again");
            shared
                .counters
                .dead_letter_failures
                .fetch_add(1, Ordering::Relaxed);
            shared
                .bus
                .metrics
                .dead_letter_failed(&shared.service, &shared.label);
            if let Some(inbox) = &shared.inbox
                && !kept
            {
                let verdict = Attempt {
                    attempt,
                    at: Utc::now(),
                    error: letter.error_chain.join(": "),
                    fault: Some(letter.fault),
                };
                if let Err(e) = inbox.record_attempt(attempts_key, verdict).await {
                    tracing::warn!(error = %e, "could not keep the verdict; the handler runs again on the redelivery");
                }
            }
            let _ = delivery.nak(delay).await;
            "dead_letter_failed"
        }
    }
}

async fn ack<D: Delivery>(delivery: &D) {
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered and skipped by the inbox");
    }
}

/// Runs `work`, telling the broker every half ack-wait that it is still in progress.
async fn with_progress<D: Delivery, F: Future>(
    delivery: &D,
    ack_wait: Duration,
    work: F,
) -> F::Output {
    let period = (ack_wait / 2).max(Duration::from_millis(50));
    let mut work = std::pin::pin!(work);
    // Most handlers finish without waiting: no timer for them.
    if let std::task::Poll::Ready(out) = futures::poll!(&mut work) {
        return out;
    }
    loop {
        match tokio::time::timeout(period, &mut work).await {
            Ok(out) => return out,
            Err(_) => {
                let _ = delivery.progress().await;
            }
        }
    }
}

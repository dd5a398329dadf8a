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

use super::dlq::{DeadLetter, FaultKind, REPLAY_HEADER};
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
}

/// `handled 2, duplicates 0, retried 1, dead-lettered 1`.
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Stats {
            handled,
            duplicates,
            retried,
            dead_lettered,
        } = self;
        write!(
            f,
            "handled {handled}, duplicates {duplicates}, retried {retried}, "
        )?;
        write!(f, "dead-lettered {dead_lettered}")
    }
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// A running subscription. Dropping it leaves it running in the background; call
/// [`SubscriptionHandle::shutdown`] to stop it cleanly.
#[derive(Debug)]
pub struct SubscriptionHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
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
        }
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
        let state = if lazy {
            consumer.ack_state().await
        } else {
            None
        };
        books.push(state.map(|s| std::sync::Mutex::new(Book::new(s.epoch))));
        consumers.push(consumer);
    }
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        label: subscription.label(),
        service: Arc::from(subscription.service.as_str()),
        durable,
        bus,
        inbox,
        handler,
        counters: Arc::clone(&counters),
        timing: Timing::for_ack_wait(subscription.ack_wait),
        subscription,
        books,
    });
    let (stop, stop_rx) = watch::channel(false);
    let tasks = consumers
        .into_iter()
        .enumerate()
        .map(|(index, consumer)| {
            tokio::spawn(run(Arc::clone(&shared), consumer, index, stop_rx.clone()))
        })
        .collect();
    Ok(SubscriptionHandle {
        stop,
        tasks,
        counters,
    })
}

type AckStateFuture = std::pin::Pin<Box<dyn Future<Output = Option<AckState>> + Send>>;

/// What woke a consumer's loop.
enum Event<D> {
    /// The handling on this lane finished.
    Finished(usize),
    /// Shutdown was asked (`false`) or the handle was dropped (`true`).
    Stop(bool),
    /// Time to ask the broker for the ack floor.
    Tick,
    /// The broker's answer.
    Looked(Option<AckState>),
    /// The pause after a failed fetch is over.
    Resume,
    /// The next delivery, an error, or `None` when the consumer closed.
    Fetched(Option<Result<D, super::ConsumeError>>),
}

/// One consumer's loop, in one task: take deliveries while fewer than `max_in_flight` are
/// running or queued, run each as a future of this task (no hand-off between tasks), and
/// keep the messages of one aggregate in order by queueing them behind the running one.
/// With a book (see [`super::marks`]), it also asks the broker for the ack floor every tick
/// and writes to the inbox what the book says is due.
async fn run<T: Transport, H: Handler>(
    shared: Arc<Shared<T, H>>,
    mut consumer: T::Consumer,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let booked = shared.book(index).is_some();
    let mut ticker = tokio::time::interval(shared.timing.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looking: Option<AckStateFuture> = None;
    let limit = shared.subscription.max_in_flight;
    let mut running = FuturesUnordered::new();
    // Per lane: whether a delivery is running, and those waiting behind it.
    let mut busy = vec![false; limit];
    let mut waiting: Vec<VecDeque<Decoded<T>>> = (0..limit).map(|_| VecDeque::new()).collect();
    let mut queued = 0usize;
    let mut stopping = false;
    // Set when the handle was dropped: the subscription then runs until the process ends.
    let mut detached = false;
    let mut fetch_paused_until: Option<tokio::time::Instant> = None;
    loop {
        let room = !stopping && running.len() + queued < limit;
        let paused = fetch_paused_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let event = {
            // The branches in priority order; a branch whose condition is false is not
            // polled (and its future never made).
            let mut stopped = std::pin::pin!(stop.changed());
            let mut resume = std::pin::pin!(tokio::time::sleep_until(
                fetch_paused_until.unwrap_or_else(tokio::time::Instant::now)
            ));
            let mut fetched = std::pin::pin!(consumer.next());
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
                if booked && looking.is_none() && ticker.poll_tick(cx).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
                if let Some(look) = looking.as_mut()
                    && let Poll::Ready(state) = look.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Looked(state));
                }
                if paused && resume.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Resume);
                }
                if room
                    && !paused
                    && let Poll::Ready(next) = fetched.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Fetched(next));
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Finished(lane) => match waiting[lane].pop_front() {
                Some(next) => {
                    queued -= 1;
                    running.push(process(Arc::clone(&shared), next, lane, index));
                }
                None => busy[lane] = false,
            },
            Event::Stop(dropped) if dropped => detached = true,
            Event::Stop(_) => stopping = true,
            Event::Tick => {
                if shared.book(index).is_some_and(|b| !b.is_empty()) {
                    looking = Some(Box::pin(consumer.ack_state()));
                }
            }
            Event::Looked(state) => {
                looking = None;
                if let Some(state) = state {
                    let due = shared
                        .book(index)
                        .map(|mut b| b.update(state, std::time::Instant::now(), shared.timing));
                    write_later(&shared, due.unwrap_or_default());
                }
            }
            Event::Resume => fetch_paused_until = None,
            Event::Fetched(None) => stopping = true,
            Event::Fetched(Some(Err(e))) => {
                // Pause fetching, not the handlers already running.
                tracing::warn!(error = %e, "fetching the next message failed; retrying in 200 ms");
                fetch_paused_until = Some(tokio::time::Instant::now() + Duration::from_millis(200));
            }
            Event::Fetched(Some(Ok(delivery))) => {
                let message = delivery.message();
                let decoded = shared
                    .subscription
                    .decoder
                    .decode(&message.payload, &message.headers);
                let lane = match shared.subscription.ordered_by {
                    super::OrderBy::Nothing => busy.iter().position(|b| !b).unwrap_or(0),
                    order => lane_of(message, decoded.as_ref().ok(), limit, order),
                };
                let next = (delivery, decoded);
                if busy[lane] {
                    waiting[lane].push_back(next);
                    queued += 1;
                } else {
                    busy[lane] = true;
                    running.push(process(Arc::clone(&shared), next, lane, index));
                }
            }
        }
        if stopping && running.is_empty() && queued == 0 {
            if booked {
                close_book(&shared, consumer.ack_state(), index).await;
            }
            return;
        }
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
) -> usize {
    let info = delivery.info();
    let message = delivery.message();
    let span = telemetry::consume_span(
        &message.subject,
        &shared.label,
        info.stream_sequence,
        info.attempt,
    );
    if let Some(trace) = TraceContext::extract(&message.headers) {
        telemetry::set_remote_parent(&span, &trace);
    }
    let started = std::time::Instant::now();
    let (status, event_type) = settle(&shared, &delivery, decoded, consumer)
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

/// Settles one delivery; returns what happened (the processed metric's status) and, once
/// decoded, the message type. Keys and strings that only failures or the inbox need are
/// built only on those paths.
async fn settle<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    delivery: &DeliveryOf<T>,
    decoded: Result<Envelope<AnyMessage>, crate::DecodeError>,
    consumer: usize,
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
            };
            let key = attempts_key();
            return (dead_letter(shared, delivery, fault, &key, &key).await, None);
        }
    };
    let event_type = envelope.event_type();
    let event_id = envelope.event_id;
    if message.subject != event_type {
        // The subject is the type: a body that says otherwise contradicts its routing.
        let fault = Fault {
            kind: FaultKind::Undecodable,
            chain: vec![format!(
                "{}: the subject is {} but the body says {event_type}",
                crate::DecodeErrorKind::HeaderMismatch,
                crate::error::clip(&message.subject)
            )],
            event_type: Some(event_type.to_owned()),
            event_id: Some(event_id.to_string()),
        };
        let key = attempts_key();
        return (dead_letter(shared, delivery, fault, &key, &key).await, None);
    }
    let mark = || Mark {
        event_id,
        replay: message.headers.get(REPLAY_HEADER).map(Box::from),
    };
    let done_key = || mark().key(&shared.durable);
    let check = match shared.subscription.inbox_check {
        super::InboxCheck::Always => true,
        super::InboxCheck::Redeliveries => info.attempt > 1,
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

    let work = AssertUnwindSafe(shared.handler.handle(envelope, info.clone())).catch_unwind();
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
                if info.attempt > 1 {
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
            } else if retry.exhausted(info.attempt) {
                Some(FaultKind::RetriesExhausted)
            } else {
                None
            };
            if let Some(kind) = kind {
                let fault = Fault {
                    kind,
                    chain: error.chain(),
                    event_type: Some(event_type.to_owned()),
                    event_id: Some(event_id.to_string()),
                };
                dead_letter(shared, delivery, fault, &done_key(), &attempts_key()).await
            } else {
                let delay = retry.delay(info.attempt);
                tracing::info!(error = %error, ?delay, "handler failed; retrying later");
                if let Some(inbox) = &shared.inbox {
                    let attempt = Attempt {
                        attempt: info.attempt,
                        at: Utc::now(),
                        error: error.chain().join(": "),
                    };
                    if let Err(e) = inbox.record_attempt(&attempts_key(), attempt).await {
                        tracing::warn!(error = %e, "could not record the failed attempt");
                    }
                }
                if let Err(e) = delivery.nak(delay).await {
                    tracing::warn!(error = %e, "nak failed; the broker redelivers after the ack wait");
                }
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
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
}

/// Records the dead letter, then terminates the delivery. If the record cannot be written,
/// the delivery is retried later instead: a message is never dropped unrecorded.
async fn dead_letter<T: Transport, H: Handler>(
    shared: &Shared<T, H>,
    delivery: &DeliveryOf<T>,
    fault: Fault,
    done_key: &str,
    attempts_key: &str,
) -> &'static str {
    let history = match &shared.inbox {
        Some(inbox) => inbox.attempts(attempts_key).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let letter = DeadLetter::new(
        delivery.message(),
        delivery.info(),
        &shared.label,
        fault.kind,
        fault.chain,
        history,
        fault.event_type,
        fault.event_id,
    );
    match shared.bus.transport.publish(letter.to_message()).await {
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
            "dead_letter"
        }
        Err(e) => {
            tracing::error!(error = %e, reason = %letter.reason, "cannot write the dead letter; retrying the message later");
            let _ = delivery.nak(Duration::from_secs(1)).await;
            "retry"
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

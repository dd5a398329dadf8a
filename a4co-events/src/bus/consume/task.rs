//! One consumer's loop, in one task: [`Task::run`] waits for the next [`Event`] and hands
//! it to one method. Deliveries are taken while fewer than twice `max_in_flight` are
//! running or waiting, each runs as a future of this task (no hand-off between tasks), and
//! the messages of one key are kept in order by their [`Lanes`]. Waiting deliveries are
//! kept alive (progress) until they start, so none is redelivered elsewhere while it
//! waits. A consumer that is deleted or ends is re-created from the last ack floor seen,
//! with backoff, and reported not running meanwhile. With a book (see [`super::marks`]),
//! the task also writes to the inbox what the book says is due.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, Sleep};

use super::lanes::Lanes;
use super::takeover::Takeover;
use super::{Held, Shared, close_book, count_dead_letters, settle, write_later, write_marks};
use crate::bus::transport::{AckState, Consumer, Delivery, Inbox as _, Transport};
use crate::bus::{ConsumeError, ConsumeErrorKind, Handler, OrderBy, SubscribeError};

type DeliveryOf<T> = <<T as Transport>::Consumer as Consumer>::Delivery;
type Running = Pin<Box<dyn Future<Output = usize> + Send>>;
type AckStateFuture = Pin<Box<dyn Future<Output = Option<AckState>> + Send>>;
type Reopening<C> = Pin<Box<dyn Future<Output = Result<C, SubscribeError>> + Send>>;

/// How often at least a consumer asks the broker where it stands, for the backlog gauges
/// (`a4co_consumer_pending`, `a4co_consumer_ack_pending`) when nothing else makes it ask.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// How soon to ask the broker again while a takeover waits for the previous instance's
/// messages.
const RELOOK: Duration = Duration::from_millis(20);

/// The longest pause between two tries at re-creating a consumer.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(10);

/// How long fetching pauses after a fetch failed (the handlers running go on).
const FETCH_PAUSE: Duration = Duration::from_millis(200);

/// What woke a consumer's loop, in the order the loop looks for them.
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
    /// The consumer was re-created, or could not be yet.
    Reopened(Result<T::Consumer, SubscribeError>),
    /// The pause after a failed fetch is over.
    Resume,
    /// The next delivery, an error, or `None` when the consumer closed.
    Fetched(Option<Result<DeliveryOf<T>, ConsumeError>>),
}

/// The broker's view of the consumer: the question asked, when to ask again.
struct Looks {
    /// The question in flight.
    asking: Option<AckStateFuture>,
    /// When to ask again while a takeover waits (sooner than the next tick).
    relook: Option<Pin<Box<Sleep>>>,
    /// Whether something arrived since the last question.
    active: bool,
    last: std::time::Instant,
}

/// The consumer, and its re-creation when it is gone.
struct Reopen<C> {
    /// The re-creation in progress.
    pending: Option<Reopening<C>>,
    /// Failed tries so far, for the backoff.
    tries: u32,
    /// The highest sequence seen: a first delivery at or below it means the consumer was
    /// made anew (by another instance, maybe).
    seen: u64,
    /// What the stream held when the consumer was made anew
    /// ([`AckState::created_after`]): what is at or below it is checked against the inbox
    /// before it runs.
    recheck_below: u64,
    /// The consumer was made anew by another instance, as a first delivery showed, and the
    /// broker was not asked since: every delivery is checked against the inbox.
    suspect: bool,
}

/// One consumer of a subscription, and everything its loop keeps between events.
pub(super) struct Task<T: Transport, H> {
    shared: Arc<Shared<T, H>>,
    /// Which of the subscription's consumers.
    index: usize,
    consumer: T::Consumer,
    /// The last ack floor the broker reported: a re-created consumer starts above it.
    floor: Option<u64>,
    stop: watch::Receiver<bool>,
    ticker: Interval,
    /// How often a waiting delivery is kept alive.
    keep_alive: Duration,
    /// How many deliveries it holds at most (running, waiting or held).
    capacity: usize,
    /// Whether its finished work goes to a book first.
    booked: bool,
    running: FuturesUnordered<Running>,
    lanes: Lanes<Held<T>>,
    takeover: Takeover<Held<T>>,
    looks: Looks,
    reopen: Reopen<T::Consumer>,
    /// Fetching pauses until then after a failure.
    paused_until: Option<Instant>,
    /// Shutdown was asked: no more fetching; ends once nothing runs.
    stopping: bool,
    /// The handle was dropped: the subscription runs until the process ends.
    detached: bool,
}

impl<T: Transport, H: Handler> Task<T, H> {
    pub(super) fn new(
        shared: Arc<Shared<T, H>>,
        consumer: T::Consumer,
        state: Option<AckState>,
        index: usize,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let ack_wait = shared.subscription.ack_wait;
        let keep_alive = (ack_wait / 3).max(Duration::from_millis(20));
        let mut ticker = tokio::time::interval(shared.timing.tick.min(keep_alive));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lanes = shared.subscription.max_in_flight;
        let booked = shared.book(index).is_some();
        Task {
            booked,
            capacity: lanes.saturating_mul(2),
            lanes: Lanes::new(lanes),
            takeover: Takeover::default(),
            running: FuturesUnordered::new(),
            looks: Looks {
                asking: None,
                relook: None,
                active: false,
                last: std::time::Instant::now(),
            },
            reopen: Reopen {
                pending: None,
                tries: 0,
                seen: 0,
                recheck_below: state.map_or(0, |s| s.created_after),
                suspect: false,
            },
            paused_until: None,
            stopping: false,
            detached: false,
            shared,
            index,
            consumer,
            floor: state.map(|s| s.floor),
            stop,
            ticker,
            keep_alive,
        }
    }

    /// Runs until shutdown is asked and everything it took is settled.
    pub(super) async fn run(mut self) {
        loop {
            let event = self.next_event().await;
            self.shared.health.beat(self.index);
            match event {
                Event::Finished(lane) => self.finished(lane),
                Event::Stop(true) => self.detached = true,
                Event::Stop(false) => self.stop().await,
                Event::Tick => self.tick().await,
                Event::Looked(state) => self.looked(state),
                Event::Relook => self.relook(),
                Event::Reopened(result) => self.reopened(result),
                Event::Resume => self.paused_until = None,
                Event::Fetched(Some(Ok(delivery))) => self.delivered(delivery).await,
                Event::Fetched(Some(Err(e))) => self.fetch_failed(&e),
                Event::Fetched(None) => self.lost("its consumer ended".to_owned()),
            }
            self.takeover.observe(self.own());
            if self.stopping && self.running.is_empty() && self.lanes.queued() == 0 {
                return self.close().await;
            }
        }
    }

    /// Deliveries this instance holds unsettled: running, waiting on a lane, or held for a
    /// takeover.
    fn own(&self) -> usize {
        self.running.len() + self.lanes.queued() + self.takeover.held()
    }

    /// Waits for the next event. Sources are polled in the order of [`Event`]'s variants;
    /// one whose condition is false is not polled (its future never made).
    async fn next_event(&mut self) -> Event<T> {
        let reopening = self.reopen.pending.is_some();
        let room = if self.stopping || reopening {
            0
        } else {
            self.capacity.saturating_sub(self.own())
        };
        let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
        let fetching = !self.stopping && !paused && !reopening;
        let listening = !self.stopping && !self.detached;
        let Task {
            running,
            stop,
            ticker,
            looks,
            reopen,
            consumer,
            paused_until,
            ..
        } = self;
        let mut stopped = std::pin::pin!(stop.changed());
        let mut resume = std::pin::pin!(tokio::time::sleep_until(
            paused_until.unwrap_or_else(Instant::now)
        ));
        let mut fetched = std::pin::pin!(consumer.next(room));
        std::future::poll_fn(|cx| {
            if !running.is_empty()
                && let Poll::Ready(Some(lane)) = running.poll_next_unpin(cx)
            {
                return Poll::Ready(Event::Finished(lane));
            }
            if listening && let Poll::Ready(changed) = stopped.as_mut().poll(cx) {
                return Poll::Ready(Event::Stop(changed.is_err()));
            }
            // Ticks go on while a question is in flight: the loop's heartbeat, and waiting
            // deliveries kept alive, must not wait for a slow broker's answer.
            if ticker.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            match looks.asking.as_mut() {
                None => {
                    if let Some(timer) = looks.relook.as_mut()
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Event::Relook);
                    }
                }
                Some(asking) => {
                    if let Poll::Ready(state) = asking.as_mut().poll(cx) {
                        return Poll::Ready(Event::Looked(state));
                    }
                }
            }
            if let Some(pending) = reopen.pending.as_mut()
                && let Poll::Ready(result) = pending.as_mut().poll(cx)
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
    }

    /// Runs a delivery on a lane.
    fn start(&mut self, held: Held<T>, lane: usize) {
        let recheck = self.reopen.suspect
            || held.recheck(self.reopen.recheck_below, self.shared.subscription.ack_wait);
        self.running.push(Box::pin(settle::process(
            Arc::clone(&self.shared),
            held.decoded,
            lane,
            self.index,
            recheck,
        )));
    }

    /// Starts a delivery on its lane, or queues it behind the one running there.
    fn dispatch(&mut self, held: Held<T>) {
        let (delivery, decoded) = &held.decoded;
        // The key is the decoded body's (headers do not carry it); a body that did not
        // decode goes by its subject, and is dead-lettered in its turn.
        let key = match (self.shared.subscription.ordered_by, decoded) {
            (OrderBy::Nothing, _) => None,
            (OrderBy::Correlation, Ok(e)) => Some(e.metadata.correlation_id.as_str()),
            (_, Ok(e)) => Some(e.aggregate_id.as_str()),
            (_, Err(_)) => Some(delivery.message().subject.as_str()),
        };
        let lane = self.lanes.lane_for(key);
        if let Some(held) = self.lanes.admit(lane, held) {
            self.start(held, lane);
        }
    }

    fn finished(&mut self, lane: usize) {
        if let Some(next) = self.lanes.finished(lane) {
            self.start(next, lane);
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
        // Held for a takeover that will not finish here: back to the broker.
        self.give_back().await;
    }

    /// Keeps waiting deliveries alive, notices a lost pin, and (unless a question is in
    /// flight) asks the broker where it stands when something may have changed, or for
    /// the backlog gauges now and then.
    async fn tick(&mut self) {
        let period = self.keep_alive;
        let Task {
            lanes, takeover, ..
        } = self;
        keep_alive_all(lanes.waiting_mut().chain(takeover.held_mut()), period).await;
        if self.consumer.pin_changed() == Some(false) {
            self.give_back().await;
        }
        if self.looks.asking.is_some() {
            return;
        }
        let book_open = self.shared.book(self.index).is_some_and(|b| !b.is_empty());
        let stale = self.looks.last.elapsed() >= BACKLOG_EVERY;
        if stale && self.index == 0 {
            count_dead_letters(&self.shared);
        }
        if (self.booked && book_open) || self.looks.active || self.takeover.is_waiting() || stale {
            self.looks.last = std::time::Instant::now();
            self.looks.active = false;
            self.ask();
        }
    }

    /// Asks the broker where the consumer's acknowledgements stand.
    fn ask(&mut self) {
        self.takeover.asking(self.own());
        self.looks.asking = Some(Box::pin(self.consumer.ack_state()));
    }

    /// The broker's answer: the floor to re-create from, the backlog gauges, whether a
    /// takeover can go on, and what the book says is due in the inbox.
    fn looked(&mut self, state: Option<AckState>) {
        self.looks.asking = None;
        let Some(state) = state else { return };
        let shared = Arc::clone(&self.shared);
        self.floor = Some(state.floor);
        self.reopen.recheck_below = self.reopen.recheck_below.max(state.created_after);
        self.reopen.suspect = false;
        shared.bus.metrics.backlog(
            &shared.service,
            &shared.label,
            &shared.specs[self.index].stream,
            state.waiting,
            state.pending,
        );
        if self.takeover.settled_by(state) {
            let held = self.takeover.end();
            tracing::info!(consumer = %shared.durable, held = held.len(), "the previous instance's messages are settled; handling the newer ones");
            for held in held {
                self.dispatch(held);
            }
        } else if self.takeover.is_waiting() {
            self.looks.relook = Some(Box::pin(tokio::time::sleep(RELOOK)));
        }
        let due = shared
            .book(self.index)
            .map(|mut b| b.update(state, std::time::Instant::now(), shared.timing));
        write_later(&shared, due.unwrap_or_default());
    }

    fn relook(&mut self) {
        self.looks.relook = None;
        if self.takeover.is_waiting() {
            self.ask();
        }
    }

    fn reopened(&mut self, result: Result<T::Consumer, SubscribeError>) {
        let shared = &self.shared;
        match result {
            Ok(consumer) => {
                tracing::info!(consumer = %shared.durable, stream = %shared.specs[self.index].stream, "consumer re-created; taking messages again");
                self.consumer = consumer;
                self.reopen.pending = None;
                self.reopen.tries = 0;
                self.reopen.recheck_below = self.reopen.seen;
                // Until the broker says what the stream held when it was made anew, every
                // delivery is checked (another instance may have finished it).
                self.reopen.suspect = true;
                shared.health.set(self.index, None);
            }
            Err(e) => {
                self.reopen.tries += 1;
                tracing::warn!(error = %e, consumer = %shared.durable, "cannot re-create the consumer yet; trying again");
                let reason = format!("re-creating its consumer failed: {e}");
                shared.health.set(self.index, Some(reason));
                self.reopen.pending = Some(self.reopening(self.reopen.tries));
            }
        }
    }

    /// The consumer is gone (`why`): report it not running and re-create it.
    fn lost(&mut self, why: String) {
        tracing::warn!(consumer = %self.shared.durable, "{why}; re-creating it");
        self.shared
            .health
            .set(self.index, Some(format!("{why}; re-creating it")));
        self.reopen.pending = Some(self.reopening(0));
    }

    fn fetch_failed(&mut self, e: &ConsumeError) {
        if e.kind() == ConsumeErrorKind::ConsumerDeleted {
            return self.lost(e.to_string());
        }
        // Pause fetching, not the handlers already running.
        tracing::warn!(error = %e, "fetching the next message failed; retrying in {FETCH_PAUSE:?}");
        self.paused_until = Some(Instant::now() + FETCH_PAUSE);
    }

    /// A delivery: noted for the takeover barrier, decoded once (its lane is chosen by the
    /// body's keys), then held behind a takeover or dispatched.
    async fn delivered(&mut self, delivery: DeliveryOf<T>) {
        self.looks.active = true;
        let sequence = delivery.info().stream_sequence;
        if !self.reopen.suspect && delivery.info().delivered == 1 && sequence <= self.reopen.seen {
            // Only a consumer made anew delivers again for the first time.
            tracing::info!(consumer = %self.shared.durable, sequence, "the consumer was made anew; checking what it hands out against the inbox");
            self.reopen.suspect = true;
        }
        self.reopen.seen = self.reopen.seen.max(sequence);
        match self.consumer.pin_changed() {
            Some(true) => {
                // This instance just took over: what the one before left unsettled (below
                // this sequence) goes first; newer messages wait for it.
                tracing::info!(consumer = %self.shared.durable, from = sequence, "taking over the subscription's messages; holding newer ones until the previous instance's are settled");
                self.takeover.begin(sequence);
            }
            Some(false) => self.give_back().await,
            None => {}
        }
        let message = delivery.message();
        let decoder = &self.shared.subscription.decoder;
        // A panic while decoding (a bug met by some input) dead-letters that message.
        let decoded =
            std::panic::catch_unwind(|| decoder.decode(&message.payload, &message.headers))
                .unwrap_or_else(|panic| {
                    let text = settle::panic_text(&*panic);
                    Err(crate::DecodeError::new(
                        crate::DecodeErrorKind::InvalidEnvelope,
                        format!("decoding panicked: {text}"),
                    ))
                });
        let now = Instant::now();
        let held = Held {
            decoded: (delivery, decoded),
            arrived: now,
            touched: now,
        };
        if self.takeover.holds(sequence) {
            self.takeover.hold(held);
        } else {
            self.dispatch(held);
        }
        if self.takeover.take_ask_now() && self.looks.asking.is_none() {
            self.ask();
        }
    }

    /// Gives the deliveries held for a takeover back to the broker (this instance lost the
    /// pin, or stops): the instance that takes over gets them first.
    async fn give_back(&mut self) {
        for held in self.takeover.end() {
            let _ = held.decoded.0.nak(Duration::ZERO).await;
        }
    }

    /// Re-creates the consumer where the broker's acknowledgements stood, after a backoff
    /// growing with `tries`: 250 ms, doubling up to [`MAX_REOPEN_DELAY`] (a pause even
    /// before the first, so a consumer deleted with its stream, or while its server
    /// restarts, is not hammered).
    ///
    /// First, the finished work only this instance's book knows of is written to the
    /// inbox: the consumer made anew hands out again what was above its floor, to any
    /// instance.
    fn reopening(&self, tries: u32) -> Reopening<T::Consumer> {
        let transport = self.shared.bus.transport.clone();
        let mut spec = self.shared.specs[self.index].clone();
        spec.start_sequence = self.floor.map(|f| f + 1);
        spec.handled_before = true;
        let delay = reopen_delay(tries);
        let marks = self
            .shared
            .book(self.index)
            .map(|mut book| book.take_all())
            .unwrap_or_default();
        let inbox = self.shared.inbox.clone().filter(|_| !marks.is_empty());
        let durable = self.shared.durable.clone();
        Box::pin(async move {
            if let Some(inbox) = inbox {
                write_marks(inbox.clone(), durable, marks).await;
                if let Err(e) = inbox.flush().await {
                    tracing::warn!(error = %e, "could not flush finished work before re-creating the consumer");
                }
            }
            tokio::time::sleep(delay).await;
            transport.consumer(&spec).await
        })
    }

    /// Everything is settled after a shutdown: write the book, let a standby take over.
    async fn close(mut self) {
        if self.booked {
            close_book(&self.shared, self.consumer.ack_state(), self.index).await;
        }
        // Nothing held: a standby may take over now rather than after the ack wait.
        self.consumer.release().await;
        self.shared.health.set(
            self.index,
            Some("the subscription was shut down".to_owned()),
        );
    }
}

/// The pause before re-creating a consumer after `tries` failed tries: 250 ms, doubling up
/// to [`MAX_REOPEN_DELAY`].
pub(super) fn reopen_delay(tries: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(tries.min(6))).min(MAX_REOPEN_DELAY)
}

/// Tells the broker that deliveries waiting to start are still being worked on, each once
/// per `period`, so none passes its ack wait while it waits.
async fn keep_alive_all<'a, T: Transport>(
    held: impl Iterator<Item = &'a mut Held<T>>,
    period: Duration,
) {
    let now = Instant::now();
    for held in held {
        if now.saturating_duration_since(held.touched) >= period {
            held.touched = now;
            if let Err(e) = held.decoded.0.progress().await {
                tracing::warn!(error = %e, "could not keep a waiting delivery alive; it is checked against the inbox before it runs");
            }
        }
    }
}

//! Settling one delivery, as a pipeline: [`Settling::judge`] reaches a [`Verdict`] (screen
//! the body, skip what is not this consumer's or finished already, read the attempt
//! history, run the handler), then [`Settling::apply`] carries it out (ack, nak with
//! backoff, or write the dead letter once) and counts it.

use std::future::Future;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use tracing::Instrument as _;

use super::marks::Mark;
use super::{Decoded, DeliveryOf, Shared, write_later};
use crate::bus::dlq::{
    DeadLetter, FaultKind, MAX_ERROR_BYTES, REPLAY_FOR_HEADER, REPLAY_HEADER, clip_bytes,
};
use crate::bus::transport::{Attempt, Delivery, Inbox, Transport};
use crate::bus::{Handler, HandlerError, InboxCheck, telemetry};
use crate::catalog::AnyMessage;
use crate::envelope::Envelope;
use crate::headers::{TraceContext, names};
use crate::id::EventId;

/// A delivered message the handler did not settle within this many deliveries beyond
/// its recorded attempts is dead-lettered ([`FaultKind::NoOutcome`]): its handler keeps
/// crashing or hanging the process, or its failures cannot be recorded.
const NO_OUTCOME_LIMIT: u64 = 10;

/// What becomes of a delivery.
#[derive(Debug)]
enum Verdict {
    /// The handler succeeded on this attempt: record it done and acknowledge.
    Handled { attempt: u64, mark: Mark },
    /// Finished already (the inbox says so): acknowledge without running the handler.
    Duplicate,
    /// A dead letter replayed for another consumer: acknowledge unhandled.
    Skipped,
    /// The handler failed and may succeed later: record the attempt, nak with backoff.
    Retry { attempt: u64, error: HandlerError },
    /// Done trying: write the dead letter, then terminate the delivery.
    DeadLetter(Box<Letter>),
}

/// A dead letter to write.
#[derive(Debug)]
struct Letter {
    /// The failed attempt it records.
    attempt: u64,
    fault: Fault,
    /// The failed attempts before it (none for undecodable input).
    history: Vec<Attempt>,
    /// The finished-work mark of a decoded message; `None` for one that did not decode
    /// (its attempts key stands in).
    mark: Option<Mark>,
}

#[derive(Debug)]
struct Fault {
    kind: FaultKind,
    chain: Vec<String>,
    event_type: Option<String>,
    event_id: Option<String>,
    /// Whether the verdict is kept in the attempt history already (a redelivery after a
    /// dead letter that could not be written).
    kept: bool,
}

/// Handles one delivery in its `process <subject>` span and records the processed metric;
/// returns `lane`, for the consumer's loop to start the next one there.
pub(super) async fn process<T: Transport, H: Handler>(
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
    let settling = Settling {
        shared: &shared,
        delivery: &delivery,
        consumer,
    };
    let (status, event_type) = settling.settle(decoded, recheck).instrument(span).await;
    shared.bus.metrics.processed(
        &shared.service,
        event_type,
        &message.subject,
        status,
        started.elapsed(),
    );
    lane
}

/// One delivery being settled by consumer `consumer` of a subscription.
struct Settling<'a, T: Transport, H> {
    shared: &'a Shared<T, H>,
    delivery: &'a DeliveryOf<T>,
    consumer: usize,
}

impl<T: Transport, H: Handler> Settling<'_, T, H> {
    /// Settles the delivery; returns what happened (the processed metric's status) and,
    /// once decoded, the message type. `recheck` asks the inbox even on a first delivery.
    async fn settle(
        &self,
        decoded: Result<Envelope<AnyMessage>, crate::DecodeError>,
        recheck: bool,
    ) -> (&'static str, Option<&'static str>) {
        let (verdict, event_type) = match self.screen(decoded) {
            Ok(envelope) => {
                let event_type = envelope.event_type();
                (self.judge(envelope, recheck).await, Some(event_type))
            }
            Err(letter) => (Verdict::DeadLetter(letter), None),
        };
        (self.apply(verdict).await, event_type)
    }

    /// Keys and strings that only failures or the inbox need are built only on those paths.
    fn attempts_key(&self) -> String {
        let info = self.delivery.info();
        format!(
            "{}.{}.{}",
            self.shared.durable, info.stream, info.stream_sequence
        )
    }

    fn mark(&self, event_id: EventId) -> Mark {
        Mark {
            event_id,
            replay: self
                .delivery
                .message()
                .headers
                .get(REPLAY_HEADER)
                .map(Box::from),
        }
    }

    /// The body, or the dead letter of one that did not decode or contradicts its subject
    /// (the subject is the type).
    fn screen(
        &self,
        decoded: Result<Envelope<AnyMessage>, crate::DecodeError>,
    ) -> Result<Envelope<AnyMessage>, Box<Letter>> {
        let message = self.delivery.message();
        let (chain, event_type, event_id) = match decoded {
            Ok(envelope) if message.subject == envelope.event_type() => return Ok(envelope),
            Ok(envelope) => {
                let chain = format!(
                    "{}: the subject is {} but the body says {}",
                    crate::DecodeErrorKind::HeaderMismatch,
                    crate::error::clip(&message.subject),
                    envelope.event_type()
                );
                let id = envelope.event_id.to_string();
                (chain, Some(envelope.event_type().to_owned()), Some(id))
            }
            Err(e) => {
                let id = message.headers.get(names::MSG_ID).map(str::to_owned);
                (e.reason(), e.event_type().map(str::to_owned), id)
            }
        };
        Err(Box::new(Letter {
            attempt: self.delivery.info().delivered,
            fault: Fault {
                kind: FaultKind::Undecodable,
                chain: vec![chain],
                event_type,
                event_id,
                kept: false,
            },
            history: Vec::new(),
            mark: None,
        }))
    }

    /// The verdict on a decoded message: skipped or finished already, a verdict kept from
    /// an earlier delivery, or what its handler's outcome says.
    async fn judge(&self, envelope: Envelope<AnyMessage>, recheck: bool) -> Verdict {
        if let ControlFlow::Break(verdict) = self.not_to_run(&envelope, recheck).await {
            return verdict;
        }
        let mut history = self.history().await;
        let delivered = self.delivery.info().delivered;
        // The attempt is the bus's count: the handler's own failures recorded (outages not
        // counted), plus one; without an inbox, the broker's delivery count.
        let failures = history.iter().filter(|a| a.fault.is_none());
        let (attempt, recorded) = if self.shared.inbox.is_some() {
            let own = failures.clone().filter(|a| !a.unavailable).count() as u64;
            (own + 1, failures.count() as u64 + 1)
        } else {
            (delivered, delivered)
        };
        let (event_type, event_id) = (envelope.event_type(), envelope.event_id);
        let letter = |attempt, kind, chain, kept, history| {
            Verdict::DeadLetter(Box::new(Letter {
                attempt,
                fault: Fault {
                    kind,
                    chain,
                    event_type: Some(event_type.to_owned()),
                    event_id: Some(event_id.to_string()),
                    kept,
                },
                history,
                mark: Some(self.mark(event_id)),
            }))
        };
        if let Some(kept) = history.pop_if(|a| a.fault.is_some()) {
            // A verdict whose dead letter is still to write: write it, without running the
            // handler again.
            let kind = kept.fault.unwrap_or(FaultKind::Permanent);
            return letter(kept.attempt, kind, vec![kept.error], true, history);
        }
        if self.shared.inbox.is_some() && delivered >= recorded + NO_OUTCOME_LIMIT {
            let chain = vec![format!(
                "delivered {delivered} times for {recorded} recorded attempts: the handler \
                 crashes or hangs the process, or its failures cannot be recorded"
            )];
            return letter(attempt, FaultKind::NoOutcome, chain, false, history);
        }
        let error = match self.run_handler(envelope, attempt).await {
            Ok(()) => {
                let mark = self.mark(event_id);
                return Verdict::Handled { attempt, mark };
            }
            Err(error) => error,
        };
        let retry = &self.shared.subscription.retry;
        let mut chain = error.chain();
        let kind = if error.is_permanent() {
            FaultKind::Permanent
        } else if error.is_unavailable() {
            if !retry.outlasted(delivered) {
                return Verdict::Retry { attempt, error };
            }
            chain.insert(
                0,
                format!(
                    "a dependency stayed unavailable for the retry policy's outage ({:?}), \
                     {delivered} deliveries",
                    retry.outage
                ),
            );
            FaultKind::RetriesExhausted
        } else if retry.exhausted(attempt) {
            FaultKind::RetriesExhausted
        } else {
            return Verdict::Retry { attempt, error };
        };
        // `history` holds the failures before this one (read for any redelivery).
        letter(attempt, kind, chain, false, history)
    }

    /// Whether the handler is not to run: a replay meant for another consumer, or work the
    /// inbox (or the book) says is finished.
    async fn not_to_run(
        &self,
        envelope: &Envelope<AnyMessage>,
        recheck: bool,
    ) -> ControlFlow<Verdict> {
        let shared = self.shared;
        let message = self.delivery.message();
        let info = self.delivery.info();
        if let Some(target) = message.headers.get(REPLAY_FOR_HEADER)
            && target != shared.label
        {
            return ControlFlow::Break(Verdict::Skipped);
        }
        let check = recheck
            || match shared.subscription.inbox_check {
                InboxCheck::Always => true,
                InboxCheck::Redeliveries => info.delivered > 1,
            };
        let Some(inbox) = shared.inbox.as_ref().filter(|_| check) else {
            return ControlFlow::Continue(());
        };
        let mark = self.mark(envelope.event_id);
        let in_book = shared
            .book(self.consumer)
            .is_some_and(|b| b.knows(info.stream_sequence, &mark));
        let done = if in_book {
            Ok(true)
        } else {
            inbox.is_done(&mark.key(&shared.durable)).await
        };
        match done {
            Ok(true) => return ControlFlow::Break(Verdict::Duplicate),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inbox unreadable; handling anyway (at least once)");
            }
        }
        ControlFlow::Continue(())
    }

    /// The failed attempts recorded for this message: read for a redelivery (a first
    /// delivery has none).
    async fn history(&self) -> Vec<Attempt> {
        let Some(inbox) = self
            .shared
            .inbox
            .as_ref()
            .filter(|_| self.delivery.info().delivered > 1)
        else {
            return Vec::new();
        };
        inbox
            .attempts(&self.attempts_key())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "attempt history unreadable; counting from it as empty");
                Vec::new()
            })
    }

    /// Runs the handler, keeping the delivery alive while it works; a panic, or a run past
    /// the deadline (cancelled), is a retryable failure.
    async fn run_handler(
        &self,
        envelope: Envelope<AnyMessage>,
        attempt: u64,
    ) -> Result<(), HandlerError> {
        let shared = self.shared;
        let mut handed = self.delivery.info().clone();
        handed.attempt = attempt;
        let deadline = shared.subscription.handler_deadline;
        // A panic in the handler's synchronous part (before its future) is caught too.
        let work =
            std::panic::catch_unwind(AssertUnwindSafe(|| shared.handler.handle(envelope, handed)));
        let work = match work {
            Ok(work) => AssertUnwindSafe(work).catch_unwind(),
            Err(panic) => return Err(panicked(&*panic)),
        };
        let work = tokio::time::timeout(deadline, work);
        let Ok(outcome) = with_progress(self.delivery, shared.subscription.ack_wait, work).await
        else {
            shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            shared.health.timed_out(self.consumer);
            shared.bus.metrics.timed_out(&shared.service, &shared.label);
            tracing::warn!(
                ?deadline,
                attempt,
                "the handler ran past its deadline; cancelled"
            );
            return Err(HandlerError::retryable(format!(
                "the handler ran past its deadline of {deadline:?} and was cancelled"
            )));
        };
        outcome.unwrap_or_else(|panic| Err(panicked(&*panic)))
    }

    /// Carries out a verdict and counts it; returns the processed metric's status.
    async fn apply(&self, verdict: Verdict) -> &'static str {
        let counters = &self.shared.counters;
        match verdict {
            Verdict::Handled { attempt, mark } => {
                self.record_done(attempt, mark).await;
                ack(self.delivery).await;
                counters.handled.fetch_add(1, Ordering::Relaxed);
                "success"
            }
            Verdict::Duplicate => {
                tracing::debug!("already handled; acknowledging the redelivery");
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                ack(self.delivery).await;
                "duplicate"
            }
            Verdict::Skipped => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                ack(self.delivery).await;
                "skipped"
            }
            Verdict::Retry { attempt, error } => {
                self.retry(attempt, &error).await;
                counters.retried.fetch_add(1, Ordering::Relaxed);
                telemetry::failed(&tracing::Span::current(), "transient");
                "retry"
            }
            Verdict::DeadLetter(letter) => self.dead_letter(letter).await,
        }
    }

    /// Records finished work: in the book when there is one (written later, when the broker
    /// may deliver it again), else in the inbox; forgets the failed attempts before it.
    async fn record_done(&self, attempt: u64, mark: Mark) {
        let shared = self.shared;
        let Some(inbox) = &shared.inbox else { return };
        let sequence = self.delivery.info().stream_sequence;
        let booked = shared
            .book(self.consumer)
            .map(|mut book| book.finished(sequence, mark.clone(), std::time::Instant::now()));
        let key = || mark.key(&shared.durable);
        let recorded = match (booked, shared.subscription.inbox_check) {
            (Some(overflow), _) => {
                write_later(shared, overflow);
                Ok(())
            }
            (None, InboxCheck::Always) => inbox.mark_done(&key()).await,
            (None, InboxCheck::Redeliveries) => inbox.mark_done_pipelined(&key()).await,
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record finished work; a redelivery would run it again");
        }
        if attempt > 1 {
            let _ = inbox.forget(&self.attempts_key()).await;
        }
    }

    /// Records a failed attempt and sends the delivery back for a retry after the backoff.
    /// The wait follows the broker's delivery count when it is ahead of the recorded
    /// attempts (failures that could not be recorded, crashes), so it still grows along the
    /// ladder while the inbox is down.
    async fn retry(&self, attempt: u64, error: &HandlerError) {
        let delivered = self.delivery.info().delivered;
        let delay = self.shared.subscription.retry.delay(attempt.max(delivered));
        tracing::info!(error = %error, ?delay, attempt, "handler failed; retrying later");
        if let Some(inbox) = &self.shared.inbox {
            // Clipped as a letter clips it: the record must fit the inbox's bucket.
            let failed = Attempt {
                attempt,
                at: Utc::now(),
                error: clip_bytes(&error.chain().join(": "), MAX_ERROR_BYTES),
                fault: None,
                unavailable: error.is_unavailable(),
            };
            if let Err(e) = inbox.record_attempt(&self.attempts_key(), failed).await {
                tracing::warn!(error = %e, "could not record the failed attempt");
            }
        }
        if let Err(e) = self.delivery.nak(delay).await {
            tracing::warn!(error = %e, "nak failed; the broker redelivers after the ack wait");
        }
    }

    /// Writes the dead letter, then terminates the delivery. If it cannot be written, the
    /// verdict is kept in the attempt history and the delivery comes back after a backoff
    /// to be written again, its handler not run again: a message is never dropped
    /// unrecorded. A record above 7/8 of the broker's maximum payload (room for the
    /// broker's framing; the error chain and history are in it too) keeps a reference to
    /// the original (its stream and sequence) instead of the payload.
    async fn dead_letter(&self, letter: Box<Letter>) -> &'static str {
        let shared = self.shared;
        let Letter {
            attempt,
            fault,
            history,
            mark,
        } = *letter;
        // Decoding fails again on every delivery: no verdict to keep for it.
        let kept = fault.kept || fault.kind == FaultKind::Undecodable;
        let mut letter = DeadLetter::new(
            self.delivery.message(),
            self.delivery.info(),
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
        // A message that came without trace context: its dead letter is in the handling's
        // trace.
        if record.headers.get(names::TRACEPARENT).is_none() {
            telemetry::outgoing(&tracing::Span::current(), None).inject(&mut record.headers);
        }
        match shared.bus.transport.publish(record).await {
            Ok(_) => {
                let done_key = mark.map_or_else(|| self.attempts_key(), |m| m.key(&shared.durable));
                self.dead_lettered(&letter, &done_key).await;
                "dead_letter"
            }
            Err(e) => {
                self.dead_letter_failed(&letter, &e, attempt, kept).await;
                "dead_letter_failed"
            }
        }
    }

    /// The dead letter is written: the delivery is terminated and counted.
    async fn dead_lettered(&self, letter: &DeadLetter, done_key: &str) {
        let shared = self.shared;
        tracing::warn!(reason = %letter.reason, "dead-lettered");
        if let Some(inbox) = &shared.inbox {
            // A redelivery (if the term below is lost) is then skipped, not faulted twice.
            let _ = inbox.mark_done(done_key).await;
            let _ = inbox.forget(&self.attempts_key()).await;
        }
        if let Err(e) = self.delivery.term().await {
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
    }

    /// The dead letter could not be written: keep the verdict (unless it is kept already,
    /// or would be reached again anyway) and send the delivery back after a backoff.
    async fn dead_letter_failed(
        &self,
        letter: &DeadLetter,
        error: &crate::bus::PublishError,
        attempt: u64,
        kept: bool,
    ) {
        let shared = self.shared;
        // How often writing it failed already: the deliveries beyond its recorded attempts
        // where the attempts are counted apart (an inbox, a decoded message); else every
        // delivery counts (undecodable input, or no inbox, where the attempt is the broker's
        // count), so the waits still grow along the ladder.
        let delivered = self.delivery.info().delivered;
        let counted_apart = shared.inbox.is_some() && letter.fault != FaultKind::Undecodable;
        let failures = if counted_apart {
            delivered.saturating_sub(attempt) + 1
        } else {
            delivered
        };
        let delay = shared.subscription.retry.delay(failures);
        tracing::error!(error = %error, reason = %letter.reason, ?delay, "cannot write the dead letter; the message is kept and comes back to write it again");
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
                unavailable: false,
            };
            if let Err(e) = inbox.record_attempt(&self.attempts_key(), verdict).await {
                tracing::warn!(error = %e, "could not keep the verdict; the handler runs again on the redelivery");
            }
        }
        let _ = self.delivery.nak(delay).await;
    }
}

/// A panic's message, as a retryable failure.
fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    HandlerError::retryable(format!("handler panicked: {}", panic_text(panic)))
}

/// What a panic said.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
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

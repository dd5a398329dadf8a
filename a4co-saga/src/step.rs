//! The [`Step`] a reaction works through: the saga's data and the effects it asks for.

use std::sync::Arc;
use std::time::Duration;

use a4co_events::{AnyMessage, Envelope, EventId, Message, Payload, TraceContext};
use chrono::{DateTime, Utc};

use crate::error::ReactionErrorKind;
use crate::record::{Compensation, Ledger, Outgoing};

/// What a reaction works through: the saga's data, and the effects it wants (messages,
/// compensations, timers). Nothing happens until the runtime has saved the instance.
pub struct Step<D> {
    /// The saga's data, to read and change.
    pub data: D,
    pub(crate) ledger: Ledger,
    pub(crate) now: DateTime<Utc>,
    pub(crate) source: Arc<str>,
    /// The id of the message being handled (none for a timer).
    pub(crate) cause: Option<EventId>,
    /// The trace context what it sends carries.
    pub(crate) trace: Option<TraceContext>,
    pub(crate) misuse: Option<(ReactionErrorKind, String)>,
}

impl<D> std::fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("saga_id", &self.ledger.saga_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<D> Step<D> {
    /// The instance's id (`order-fulfillment/ord-1`).
    pub fn saga_id(&self) -> &str {
        &self.ledger.saga_id
    }

    /// What the instance is correlated by: the part of its id after the saga's name
    /// (`ord-1` in `order-fulfillment/ord-1`), the aggregate id of the message that
    /// started it unless [`Builder::correlate`](crate::Builder::correlate) says otherwise.
    /// Not the envelope's `correlationId`, which what the instance sends carries on.
    pub fn correlation_id(&self) -> &str {
        // A saga name has no '/' (the builder checks).
        self.ledger
            .saga_id
            .split_once('/')
            .map_or(self.ledger.saga_id.as_str(), |(_, key)| key)
    }

    /// The runtime's clock (virtual in tests).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// An idempotency key for an HTTP call made at `step`: the same on every retry and
    /// re-run of the step.
    pub fn idempotency_key(&self, step: &str) -> String {
        format!("{}/{step}", self.ledger.saga_id)
    }

    /// When the step's time runs out: the earliest of the instance's timers (the state's
    /// own deadline, such as the payment timer), as an instant on this machine. `None`
    /// without timers.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        let due = self.ledger.timers.values().min()?;
        let left = (*due - self.now).to_std().unwrap_or_default();
        Some(std::time::Instant::now() + left)
    }

    /// Prepares an HTTP call made at `step`: it carries the step's idempotency key (saga
    /// id + step, so a re-run of the step is one request to the target) and never waits
    /// past the step's [`deadline`](Step::deadline), which the target learns too.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http(&self, call: a4co_http::Call, step: &str) -> a4co_http::Call {
        let call = call.idempotency_key(self.idempotency_key(step));
        match self.deadline() {
            Some(deadline) => call.deadline(deadline),
            None => call,
        }
    }

    /// Claims step name `step` for one message; a name used before is a misuse.
    fn claim(&mut self, step: &str) -> bool {
        if self.ledger.steps.iter().any(|s| s == step) {
            self.misuse = Some((
                ReactionErrorKind::StepReused,
                format!(
                    "step {step:?} sent twice in {}: a step name sends one message",
                    self.ledger.saga_id
                ),
            ));
            return false;
        }
        self.ledger.steps.push(step.to_owned());
        true
    }

    /// The message of step `step`, stamped now, in the instance's correlation and trace,
    /// its id fixed by saga id and step, checked as every consumer will check it (as the
    /// bus checks what it publishes): one they would all dead-letter (an empty aggregate
    /// id, a payload against its schema) fails the reaction instead, and nothing is kept
    /// to send.
    fn outgoing<P: Payload>(
        &mut self,
        step: &str,
        aggregate_id: String,
        message: P,
    ) -> Option<Outgoing> {
        let id = EventId::deterministic(&self.ledger.saga_id, step);
        let mut envelope = Envelope::new(&*self.source, aggregate_id, message)
            .with_event_id(id)
            .with_occurred_at(self.now)
            .with_correlation_id(self.ledger.correlation_id.clone())
            .with_user_id(self.ledger.user_id.clone())
            .with_saga_id(self.ledger.saga_id.clone());
        envelope.metadata.causation_id = match &self.cause {
            Some(cause) => cause.to_string(),
            None => self.ledger.origin.clone(),
        };
        if let Some(trace) = &self.trace {
            envelope = envelope.with_trace(trace.clone());
        }
        match envelope.to_checked_json() {
            Ok(body) => Some(Outgoing::new(&envelope, step.to_owned(), body)),
            Err(e) => {
                self.undeliverable(step, envelope.event_type(), &e.reason());
                None
            }
        }
    }

    fn undeliverable(&mut self, step: &str, event_type: &str, reason: &str) {
        self.misuse = Some((
            ReactionErrorKind::Undeliverable,
            format!(
                "step {step:?} of {} sends a {event_type} every consumer would dead-letter: {reason}",
                self.ledger.saga_id,
            ),
        ));
    }

    /// Sends `message` about `aggregate_id` as step `step` (unique within the instance:
    /// the step names the message's id).
    pub fn send<M: Message>(&mut self, step: &str, aggregate_id: impl Into<String>, message: M) {
        if self.claim(step)
            && let Some(outgoing) = self.outgoing(step, aggregate_id.into(), message)
        {
            self.ledger.outbox.push(outgoing);
        }
    }

    /// Records that step `step` completed, with the message that undoes it: checked now,
    /// kept as its payload, sent by [`Step::compensate`] (its step is `undo/<step>`).
    pub fn completed<M: Message>(
        &mut self,
        step: &str,
        aggregate_id: impl Into<String>,
        compensation: M,
    ) {
        let undo = format!("undo/{step}");
        let aggregate_id = aggregate_id.into();
        let data = match serde_json::value::to_raw_value(&compensation) {
            Ok(data) => data,
            Err(e) => return self.undeliverable(&undo, M::TYPE, &e.to_string()),
        };
        if self.claim(&undo)
            && self
                .outgoing(&undo, aggregate_id.clone(), compensation)
                .is_some()
        {
            self.ledger.compensations.push(Compensation {
                step: undo,
                event_type: M::TYPE.to_owned(),
                event_version: M::VERSION,
                aggregate_id,
                data,
            });
        }
    }

    /// Whether completed steps wait for compensation.
    pub fn has_compensations(&self) -> bool {
        !self.ledger.compensations.is_empty()
    }

    /// Sends the compensations of every completed step, last completed first, and returns
    /// their steps in that order. Each is sent once, stamped now, caused by what set it off
    /// and in its trace; a payload kept by an older build is upcast to its type's newest
    /// version.
    pub fn compensate(&mut self) -> Vec<String> {
        let mut undone = Vec::new();
        while let Some(c) = self.ledger.compensations.pop() {
            let message =
                match AnyMessage::from_data_json(&c.event_type, c.event_version, c.data.get()) {
                    Ok(message) => message,
                    Err(e) => {
                        let reason = format!("its kept v{} payload: {e}", c.event_version);
                        self.undeliverable(&c.step, &c.event_type, &reason);
                        continue;
                    }
                };
            if let Some(outgoing) = self.outgoing(&c.step, c.aggregate_id, message) {
                undone.push(c.step);
                self.ledger.outbox.push(outgoing);
            }
        }
        undone
    }

    /// Drops the compensation of step `step` (it will never be needed: the step was
    /// undone another way, or its effect lapsed).
    pub fn forget_compensation(&mut self, step: &str) {
        let undo = format!("undo/{step}");
        self.ledger.compensations.retain(|c| c.step != undo);
    }

    /// Starts (or restarts) timer `timer`: unless cancelled, it runs out `after` from now
    /// and sets off the `on_timeout` reaction of the state the instance is then in, once.
    pub fn schedule(&mut self, timer: &str, after: Duration) {
        let at = chrono::Duration::from_std(after)
            .ok()
            .and_then(|d| self.now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.ledger.timers.insert(timer.to_owned(), at);
    }

    /// Cancels timer `timer` (nothing if it is not running).
    pub fn cancel(&mut self, timer: &str) {
        self.ledger.timers.remove(timer);
    }
}

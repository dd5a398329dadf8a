//! An instance's record, the [`Step`] a reaction works through, and the pure engine that
//! applies a message or a due timer to a record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use a4co_events::bus::RawMessage;
use a4co_events::{AnyMessage, Envelope, EventId, Message, TraceContext};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::definition::{Data, Definition, Run, State, Trigger};

/// How many processed message ids an instance remembers, to recognise redeliveries.
const REMEMBERED: usize = 512;

/// A message an instance sends, stored in its record before it is published, so a crash
/// between the two neither loses nor doubles it: its id is fixed (saga id + step).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outgoing {
    /// The step that sent it (`reserve/prod-1`), unique within the instance.
    pub step: String,
    /// Its event id: [`EventId::deterministic`] of saga id and step.
    pub event_id: EventId,
    /// Its type (`inventory.cmd.reserve_stock`).
    pub event_type: String,
    /// The subject.
    pub subject: String,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The envelope, as JSON (kept as is in the record, not as an escaped string).
    pub body: Box<serde_json::value::RawValue>,
}

impl PartialEq for Outgoing {
    fn eq(&self, other: &Self) -> bool {
        self.step == other.step
            && self.event_id == other.event_id
            && self.event_type == other.event_type
            && self.subject == other.subject
            && self.headers == other.headers
            && self.body.get() == other.body.get()
    }
}

impl Eq for Outgoing {}

impl Outgoing {
    fn new<M: Message>(envelope: &Envelope<M>, step: String) -> Self {
        Outgoing {
            step,
            event_id: envelope.event_id,
            event_type: M::TYPE.to_owned(),
            subject: envelope.subject().to_owned(),
            headers: envelope
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: raw_json(envelope.to_json()),
        }
    }

    /// The message as the bus carries it.
    pub fn to_raw(&self) -> RawMessage {
        RawMessage {
            subject: self.subject.clone(),
            headers: self.headers.iter().cloned().collect(),
            payload: Bytes::copy_from_slice(self.body.get().as_bytes()),
        }
    }
}

/// One move of an instance, kept in its record (the latest 64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The state before (`None` for the start).
    pub from: Option<String>,
    /// What set it off: a message type, or `timeout <name>`.
    pub trigger: String,
    /// The state after.
    pub to: String,
    /// When (the runtime's clock).
    #[serde(
        serialize_with = "a4co_events::time::utc",
        deserialize_with = "a4co_events::time::de_utc"
    )]
    pub at: DateTime<Utc>,
}

/// The bookkeeping of an instance beyond its state and data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Book {
    /// `order-fulfillment/ord-1`.
    pub saga_id: String,
    /// The correlation id of the message that started it, carried by all it sends.
    pub correlation_id: String,
    /// The user of the message that started it.
    pub user_id: String,
    /// The id of the message that started it.
    pub origin: String,
    /// Messages saved but not yet published.
    pub outbox: Vec<Outgoing>,
    /// Compensations of completed steps, in order of completion (run in reverse).
    pub compensations: Vec<Outgoing>,
    /// Timers by name: when each runs out.
    #[serde(serialize_with = "timers")]
    pub timers: BTreeMap<String, DateTime<Utc>>,
    /// Steps already used (a step name sends once).
    pub steps: Vec<String>,
    /// Ids of the latest messages processed.
    pub processed: Vec<EventId>,
    /// The earliest time a store index entry is known to exist for (see
    /// [`crate::Index::new_entry`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "a4co_events::time::opt_utc",
        deserialize_with = "a4co_events::time::de_opt_utc"
    )]
    pub indexed: Option<DateTime<Utc>>,
    /// The latest moves.
    pub history: Vec<Transition>,
}

/// Writes the timers as chrono would, through the bus's faster time writer (a record is
/// written at every save).
fn timers<S: serde::Serializer>(
    timers: &BTreeMap<String, DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    struct At<'a>(&'a DateTime<Utc>);
    impl Serialize for At<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            a4co_events::time::utc(self.0, serializer)
        }
    }
    let mut map = serializer.serialize_map(Some(timers.len()))?;
    for (name, at) in timers {
        map.serialize_entry(name, &At(at))?;
    }
    map.end()
}

/// A saga instance as stored: state, data and bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "D: Data, S: State"))]
pub struct Instance<D, S> {
    /// The current state.
    pub state: S,
    /// The saga's data.
    pub data: D,
    /// Outbox, compensations, timers, processed ids, history.
    pub book: Book,
}

impl<D: Data, S: State> Instance<D, S> {
    /// The earliest timer, if any.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.book.timers.values().min().copied()
    }

    /// Whether the instance reached a final state.
    pub fn is_finished(&self) -> bool {
        self.state.is_final()
    }
}

/// What a reaction works through: the saga's data, and the effects it wants (messages,
/// compensations, timers). Nothing happens until the runtime has saved the instance.
pub struct Step<D> {
    /// The saga's data, to read and change.
    pub data: D,
    book: Book,
    now: DateTime<Utc>,
    source: Arc<str>,
    cause: Option<(EventId, Option<TraceContext>)>,
    misuse: Option<String>,
}

impl<D> std::fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("saga_id", &self.book.saga_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<D> Step<D> {
    /// The instance's id (`order-fulfillment/ord-1`).
    pub fn saga_id(&self) -> &str {
        &self.book.saga_id
    }

    /// The runtime's clock (virtual in tests).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// An idempotency key for an HTTP call made at `step`: the same on every retry and
    /// re-run of the step.
    pub fn idempotency_key(&self, step: &str) -> String {
        format!("{}/{step}", self.book.saga_id)
    }

    /// When the step's time runs out: the earliest of the instance's timers (the state's
    /// own deadline, such as the payment timer), as an instant on this machine. `None`
    /// without timers.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        let due = self.book.timers.values().min()?;
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

    fn envelope<M: Message>(
        &mut self,
        step: &str,
        aggregate_id: String,
        message: M,
    ) -> Option<Envelope<M>> {
        if self.book.steps.iter().any(|s| s == step) {
            self.misuse = Some(format!(
                "step {step:?} sent twice in {}: a step name sends one message",
                self.book.saga_id
            ));
            return None;
        }
        self.book.steps.push(step.to_owned());
        let id = EventId::deterministic(&self.book.saga_id, step);
        let mut envelope = Envelope::new(&*self.source, aggregate_id, message)
            .with_event_id(id)
            .with_occurred_at(self.now)
            .with_correlation_id(self.book.correlation_id.clone())
            .with_user_id(self.book.user_id.clone())
            .with_saga_id(self.book.saga_id.clone());
        envelope.metadata.causation_id = match &self.cause {
            Some((cause, _)) => cause.to_string(),
            None => self.book.origin.clone(),
        };
        if let Some((_, Some(trace))) = &self.cause {
            envelope = envelope.with_trace(trace.clone());
        }
        Some(envelope)
    }

    /// Sends `message` about `aggregate_id` as step `step` (unique within the instance:
    /// the step names the message's id).
    pub fn send<M: Message>(&mut self, step: &str, aggregate_id: impl Into<String>, message: M) {
        if let Some(envelope) = self.envelope(step, aggregate_id.into(), message) {
            self.book
                .outbox
                .push(Outgoing::new(&envelope, step.to_owned()));
        }
    }

    /// Records that step `step` completed, with the message that undoes it; sent by
    /// [`Step::compensate`] (its step is `undo/<step>`).
    pub fn completed<M: Message>(
        &mut self,
        step: &str,
        aggregate_id: impl Into<String>,
        compensation: M,
    ) {
        let undo = format!("undo/{step}");
        if let Some(envelope) = self.envelope(&undo, aggregate_id.into(), compensation) {
            self.book.compensations.push(Outgoing::new(&envelope, undo));
        }
    }

    /// Whether completed steps wait for compensation.
    pub fn has_compensations(&self) -> bool {
        !self.book.compensations.is_empty()
    }

    /// Sends the compensations of every completed step, last completed first, and returns
    /// their steps in that order. Each is sent once.
    pub fn compensate(&mut self) -> Vec<String> {
        let mut undone = Vec::new();
        while let Some(mut c) = self.book.compensations.pop() {
            // Stamped now, caused by what set the compensation off.
            if let Ok(mut body) = serde_json::from_str::<serde_json::Value>(c.body.get()) {
                body["occurredAt"] = serde_json::Value::String(rfc3339(self.now));
                if let Some((cause, _)) = &self.cause {
                    body["metadata"]["causationId"] = serde_json::Value::String(cause.to_string());
                }
                c.body = raw_json(body.to_string().into_bytes());
            }
            undone.push(c.step.clone());
            self.book.outbox.push(c);
        }
        undone
    }

    /// Drops the compensation of step `step` (it will never be needed: the step was
    /// undone another way, or its effect lapsed).
    pub fn forget_compensation(&mut self, step: &str) {
        let undo = format!("undo/{step}");
        self.book.compensations.retain(|c| c.step != undo);
    }

    /// Starts (or restarts) timer `timer`: unless cancelled, it runs out `after` from now
    /// and sets off the `on_timeout` reaction of the state the instance is then in, once.
    pub fn schedule(&mut self, timer: &str, after: Duration) {
        let at = chrono::Duration::from_std(after)
            .ok()
            .and_then(|d| self.now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.book.timers.insert(timer.to_owned(), at);
    }

    /// Cancels timer `timer` (nothing if it is not running).
    pub fn cancel(&mut self, timer: &str) {
        self.book.timers.remove(timer);
    }
}

/// Bytes the envelope encoder wrote, as a raw JSON value. They are JSON by construction; a
/// failure here would be a bug in the encoder, kept visible as a JSON string.
fn raw_json(bytes: Vec<u8>) -> Box<serde_json::value::RawValue> {
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    serde_json::value::RawValue::from_string(text).unwrap_or_else(|e| {
        let quoted = serde_json::Value::String(format!("unencodable envelope: {e}")).to_string();
        serde_json::value::RawValue::from_string(quoted).unwrap_or_default()
    })
}

/// RFC 3339, as the catalog writes times.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// What applying a message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The instance started or moved: save it, then publish its outbox.
    Changed,
    /// The message was processed before: nothing to do.
    Duplicate,
    /// The instance is finished: the message is acknowledged and logged.
    Finished,
    /// The current state does not react to this message: acknowledged and logged.
    Unexpected,
    /// No instance, and the message does not start one (it came before its start):
    /// retry later.
    NotStarted,
}

/// A reaction broke the definition's rules: a bug in the saga, not in the message.
#[derive(Debug, thiserror::Error)]
#[error("saga {saga_id}: {problem}")]
pub struct ReactionError {
    /// The instance.
    pub saga_id: String,
    /// What went wrong.
    pub problem: String,
}

async fn run_reaction<D: Data, S: State>(
    definition: &Definition<D, S>,
    instance: &mut Instance<D, S>,
    from: Option<S>,
    trigger: Trigger,
    message: Option<Envelope<AnyMessage>>,
    now: DateTime<Utc>,
) -> Result<bool, ReactionError> {
    let Some(reaction) = definition.reaction(from, trigger) else {
        return Ok(false);
    };
    let cause = message.as_ref().map(|m| (m.event_id, m.trace.clone()));
    let mut step = Step {
        data: std::mem::take(&mut instance.data),
        book: std::mem::take(&mut instance.book),
        now,
        source: definition.source(),
        cause,
        misuse: None,
    };
    let to = match (&reaction.run, message) {
        (Run::Message(f), Some(m)) => Some(f(&mut step, m)),
        (Run::MessageAsync(f), Some(m)) => {
            let (back, to) = f(step, m).await;
            step = back;
            Some(to)
        }
        (Run::Timeout(f), None) => Some(Ok(f(&mut step))),
        _ => None,
    };
    let misuse = step.misuse.take();
    instance.data = step.data;
    instance.book = step.book;
    let Some(to) = to else {
        return Ok(false);
    };
    let fail = |problem: String| ReactionError {
        saga_id: instance.book.saga_id.clone(),
        problem,
    };
    let to = to.map_err(fail)?;
    if let Some(problem) = misuse {
        return Err(fail(problem));
    }
    if !reaction.to.contains(&to) {
        return Err(fail(format!(
            "{} on {trigger} moved to {}, which the definition does not declare (declared: {})",
            from.map_or("(start)", State::name),
            to.name(),
            reaction
                .to
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    instance.state = to;
    if to.is_final() {
        // A finished saga waits for nothing.
        instance.book.timers.clear();
    }
    instance.book.history.push(Transition {
        from: from.map(|s| s.name().to_owned()),
        trigger: trigger.to_string(),
        to: to.name().to_owned(),
        at: now,
    });
    if instance.book.history.len() > 64 {
        instance.book.history.remove(0);
    }
    Ok(true)
}

/// Applies `message` to the instance `saga_id` (`None`: not stored yet).
///
/// # Errors
/// A [`ReactionError`] when the reaction breaks the definition (a bug: dead-letter it).
pub async fn apply<D: Data, S: State>(
    definition: &Definition<D, S>,
    saga_id: &str,
    instance: Option<Instance<D, S>>,
    message: &Envelope<AnyMessage>,
    now: DateTime<Utc>,
) -> Result<(Applied, Option<Instance<D, S>>), ReactionError> {
    let trigger = Trigger::Message(message.event_type());
    let mut instance = match instance {
        Some(i) if i.book.processed.contains(&message.event_id) => {
            return Ok((Applied::Duplicate, Some(i)));
        }
        Some(i) if i.state.is_final() => return Ok((Applied::Finished, Some(i))),
        Some(i) => i,
        None => {
            if definition.reaction(None, trigger).is_none() {
                return Ok((Applied::NotStarted, None));
            }
            let mut fresh = Instance {
                // Replaced by the start reaction's target.
                state: S::ALL[0],
                data: D::default(),
                book: Book {
                    saga_id: saga_id.to_owned(),
                    correlation_id: message.metadata.correlation_id.clone(),
                    user_id: message.metadata.user_id.clone(),
                    origin: message.event_id.to_string(),
                    ..Book::default()
                },
            };
            run_reaction(
                definition,
                &mut fresh,
                None,
                trigger,
                Some(message.clone()),
                now,
            )
            .await?;
            remember(&mut fresh.book, message.event_id);
            return Ok((Applied::Changed, Some(fresh)));
        }
    };
    let from = instance.state;
    if !run_reaction(
        definition,
        &mut instance,
        Some(from),
        trigger,
        Some(message.clone()),
        now,
    )
    .await?
    {
        return Ok((Applied::Unexpected, Some(instance)));
    }
    remember(&mut instance.book, message.event_id);
    Ok((Applied::Changed, Some(instance)))
}

fn remember(book: &mut Book, id: EventId) {
    book.processed.push(id);
    if book.processed.len() > REMEMBERED {
        book.processed.remove(0);
    }
}

/// Fires every timer of `instance` due at `now`, earliest first: each is removed, and sets
/// off its reaction if the current state has one. Returns whether anything changed.
///
/// # Errors
/// As [`apply`].
pub async fn fire_due<D: Data, S: State>(
    definition: &Definition<D, S>,
    instance: &mut Instance<D, S>,
    now: DateTime<Utc>,
) -> Result<bool, ReactionError> {
    let mut changed = false;
    loop {
        let due = instance
            .book
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(_, at)| **at)
            .map(|(name, _)| name.clone());
        let Some(name) = due else {
            return Ok(changed);
        };
        instance.book.timers.remove(&name);
        changed = true;
        if instance.state.is_final() {
            continue;
        }
        // Timer names in definitions are 'static; find the declared one.
        let from = instance.state;
        let trigger = definition
            .timers_of(from)
            .find(|t| *t == name)
            .map(Trigger::Timeout);
        match trigger {
            Some(trigger) => {
                run_reaction(definition, instance, Some(from), trigger, None, now).await?;
            }
            None => tracing::debug!(
                saga_id = %instance.book.saga_id,
                timer = %name,
                state = from.name(),
                "timer ran out in a state that does not react to it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_times_are_written_as_chrono_writes_them_and_read_back() {
        for text in [
            "2026-01-15T10:00:00Z",
            "2026-01-15T10:00:00.123Z",
            "2026-01-15T10:00:00.123456789Z",
        ] {
            let at: DateTime<Utc> = text.parse().unwrap();
            let book = Book {
                timers: [("stock".to_owned(), at)].into(),
                indexed: Some(at),
                history: vec![Transition {
                    from: None,
                    trigger: "order.created".to_owned(),
                    to: "reserving".to_owned(),
                    at,
                }],
                ..Book::default()
            };
            let json: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec(&book).unwrap()).unwrap();
            let chrono = serde_json::to_value(at).unwrap();
            assert_eq!(json["timers"]["stock"], chrono, "{text}");
            assert_eq!(json["indexed"], chrono, "{text}");
            assert_eq!(json["history"][0]["at"], chrono, "{text}");
            let back: Book = serde_json::from_value(json).unwrap();
            assert_eq!(back, book, "{text}");
        }
    }
}

//! The envelope every message travels in, its identifiers and its metadata.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::AnyMessage;
use crate::headers::{Headers, TraceContext, names};
use crate::id::EventId;
use crate::message::{Message, Payload};

/// Who and what a message belongs to, beyond its own identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The conversation the message belongs to: the id of the first message of the chain
    /// (or of the request that started it), copied unchanged to every message it causes.
    #[schemars(length(min = 1))]
    pub correlation_id: String,
    /// The id of the message that caused this one; a first message names itself.
    #[schemars(length(min = 1))]
    pub causation_id: String,
    /// The user on whose behalf the chain runs, or [`Metadata::SYSTEM_USER`].
    #[schemars(length(min = 1))]
    pub user_id: String,
    /// The saga instance that sent or awaits the message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<String>,
}

impl Metadata {
    /// The `userId` of messages no person caused (expired reservations, timers).
    pub const SYSTEM_USER: &'static str = "system";
}

/// A message with its identity, origin and metadata: what travels on the bus.
///
/// On the wire (JSON, camelCase):
///
/// ```json
/// {
///   "eventId": "0194f1c2-...", "eventType": "order.created", "eventVersion": 2,
///   "aggregateId": "ord-1001", "occurredAt": "2026-01-15T10:00:00Z",
///   "source": "order-service", "data": { ... },
///   "metadata": { "correlationId": "...", "causationId": "...", "userId": "user-4711" }
/// }
/// ```
///
/// `eventType` and `eventVersion` come from the payload type, so they cannot disagree with
/// it. The delivery attempt is the broker's to tell, never part of the body. The trace
/// context travels in headers only ([`Envelope::headers`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<T> {
    /// The message's id and dedup key.
    pub event_id: EventId,
    /// The aggregate the message is about (an order id, a product id, ...).
    pub aggregate_id: String,
    /// When the fact happened or the command was issued (UTC).
    pub occurred_at: DateTime<Utc>,
    /// The service that published it (`order-service`).
    pub source: String,
    /// The message itself: a catalog type, or [`crate::AnyMessage`] for any of them.
    pub data: T,
    /// Correlation, causation, user and saga.
    pub metadata: Metadata,
    /// The W3C trace context, carried in headers.
    pub trace: Option<TraceContext>,
}

impl<T: Payload> Envelope<T> {
    /// Wraps the first message of a chain: a fresh id, the current time, and metadata that
    /// names the message itself as correlation and causation, on behalf of
    /// [`Metadata::SYSTEM_USER`] until [`Envelope::with_user_id`] says otherwise.
    pub fn new(source: impl Into<String>, aggregate_id: impl Into<String>, data: T) -> Self {
        let event_id = EventId::new();
        let id = event_id.to_string();
        Envelope {
            event_id,
            aggregate_id: aggregate_id.into(),
            occurred_at: Utc::now(),
            source: source.into(),
            data,
            metadata: Metadata {
                correlation_id: id.clone(),
                causation_id: id,
                user_id: Metadata::SYSTEM_USER.to_owned(),
                saga_id: None,
            },
            trace: None,
        }
    }

    /// Wraps a message caused by `parent`: a fresh id and time, the parent's correlation id,
    /// user, saga and trace, and the parent's id as causation.
    pub fn caused_by<P>(
        parent: &Envelope<P>,
        source: impl Into<String>,
        aggregate_id: impl Into<String>,
        data: T,
    ) -> Self {
        Envelope {
            event_id: EventId::new(),
            aggregate_id: aggregate_id.into(),
            occurred_at: Utc::now(),
            source: source.into(),
            data,
            metadata: Metadata {
                correlation_id: parent.metadata.correlation_id.clone(),
                causation_id: parent.event_id.to_string(),
                user_id: parent.metadata.user_id.clone(),
                saga_id: parent.metadata.saga_id.clone(),
            },
            trace: parent.trace.clone(),
        }
    }

    /// The answer to `cause` (a command, or an event a handler reacts to): caused by it
    /// ([`Envelope::caused_by`]), with an id derived from the cause's id and `step`
    /// ([`EventId::deterministic`]). Handling a redelivery of `cause` again makes the same
    /// id, so the broker stores the answer once; give each answer of one handler its own
    /// `step`.
    ///
    /// ```
    /// use a4co_events::catalog::inventory::{ReserveStock, StockReserved};
    /// use a4co_events::{Envelope, Message};
    ///
    /// let command = Envelope::new("order-service", "prod-1", ReserveStock::example());
    /// let answer = Envelope::reply_to(&command, "inventory-service", "prod-1", StockReserved::example(), "answer");
    /// let again = Envelope::reply_to(&command, "inventory-service", "prod-1", StockReserved::example(), "answer");
    /// assert_eq!(answer.event_id, again.event_id);
    /// assert_eq!(answer.metadata.causation_id, command.event_id.to_string());
    /// ```
    pub fn reply_to<P>(
        cause: &Envelope<P>,
        source: impl Into<String>,
        aggregate_id: impl Into<String>,
        data: T,
        step: &str,
    ) -> Self {
        Envelope::caused_by(cause, source, aggregate_id, data)
            .with_event_id(EventId::deterministic(&cause.event_id.to_string(), step))
    }

    /// Replaces the id (a saga passes [`EventId::deterministic`]). A first message keeps
    /// naming itself as correlation and causation.
    pub fn with_event_id(mut self, event_id: EventId) -> Self {
        let old = self.event_id.to_string();
        let new = event_id.to_string();
        if self.metadata.correlation_id == old {
            self.metadata.correlation_id.clone_from(&new);
        }
        if self.metadata.causation_id == old {
            self.metadata.causation_id = new;
        }
        self.event_id = event_id;
        self
    }

    /// Sets the user on whose behalf the chain runs.
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.metadata.user_id = user_id.into();
        self
    }

    /// Sets the saga instance.
    pub fn with_saga_id(mut self, saga_id: impl Into<String>) -> Self {
        self.metadata.saga_id = Some(saga_id.into());
        self
    }

    /// Sets the correlation id (for a chain started by an HTTP request with its own id).
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.metadata.correlation_id = correlation_id.into();
        self
    }

    /// Sets when it happened.
    pub fn with_occurred_at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = occurred_at;
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The type name (`order.created`), which is also the subject.
    pub fn event_type(&self) -> &'static str {
        self.data.event_type()
    }

    /// The payload's schema version.
    pub fn event_version(&self) -> u32 {
        self.data.event_version()
    }

    /// The subject to publish on: the message type (`order.created`), whose first token
    /// names the context's stream.
    pub fn subject(&self) -> &'static str {
        self.data.event_type()
    }

    /// The envelope as its published JSON body (camelCase, RFC 3339 times), the bytes
    /// [`crate::decode()`] reads back.
    pub fn to_json(&self) -> Vec<u8> {
        // An envelope of catalog payloads (string keys, no non-finite floats from the
        // catalog's own constructors) always serializes; a NaN rate would become `null`.
        let mut body = Vec::with_capacity(1024);
        match serde_json::to_writer(&mut body, self) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        }
    }

    /// The NATS headers: `Nats-Msg-Id` (dedup) and the W3C `traceparent`/`tracestate` when
    /// traced. Nothing more: the body says the rest, and every header costs every message
    /// on both sides (docs/benchmarks.md measures it).
    pub fn headers(&self) -> Headers {
        let mut h = Headers::new();
        let mut id = uuid::Uuid::encode_buffer();
        h.insert(
            names::MSG_ID,
            self.event_id
                .as_uuid()
                .hyphenated()
                .encode_lower(&mut id)
                .to_owned(),
        );
        if let Some(trace) = &self.trace {
            trace.inject(&mut h);
        }
        h
    }

    /// Wraps the payload as an [`AnyMessage`].
    pub fn into_any(self) -> Envelope<AnyMessage>
    where
        T: Into<AnyMessage>,
    {
        self.map(Into::into)
    }
}

impl<T> Envelope<T> {
    /// Transforms the payload, keeping everything else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        let (data, shell) = self.split();
        Envelope {
            event_id: shell.event_id,
            aggregate_id: shell.aggregate_id,
            occurred_at: shell.occurred_at,
            source: shell.source,
            data: f(data),
            metadata: shell.metadata,
            trace: shell.trace,
        }
    }

    /// Separates the payload from the rest.
    fn split(self) -> (T, Envelope<()>) {
        let shell = Envelope {
            event_id: self.event_id,
            aggregate_id: self.aggregate_id,
            occurred_at: self.occurred_at,
            source: self.source,
            data: (),
            metadata: self.metadata,
            trace: self.trace,
        };
        (self.data, shell)
    }
}

impl Envelope<AnyMessage> {
    /// The payload as a concrete type, or the envelope back when it holds another type.
    ///
    /// # Errors
    /// Returns `self` unchanged when the payload is not a `M`.
    // The error hands the caller's envelope back unchanged; boxing it would allocate on
    // every miss of a type-dispatch chain.
    #[allow(clippy::result_large_err)]
    pub fn downcast<M>(self) -> Result<Envelope<M>, Envelope<AnyMessage>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        let (data, shell) = self.split();
        match M::try_from(data) {
            Ok(data) => Ok(shell.map(|()| data)),
            Err(data) => Err(shell.map(|()| data)),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireRef<'a, T> {
    event_id: &'a EventId,
    event_type: &'static str,
    event_version: u32,
    aggregate_id: &'a str,
    #[serde(serialize_with = "crate::time::utc")]
    occurred_at: &'a DateTime<Utc>,
    source: &'a str,
    data: &'a T,
    metadata: &'a Metadata,
}

impl<T: Payload> Envelope<T> {
    /// The wire form of this envelope with `data` as its payload (the payload itself, or
    /// its JSON text).
    pub(crate) fn wire<'a, D>(&'a self, data: &'a D) -> WireRef<'a, D> {
        WireRef {
            event_id: &self.event_id,
            event_type: self.data.event_type(),
            event_version: self.data.event_version(),
            aggregate_id: &self.aggregate_id,
            occurred_at: &self.occurred_at,
            source: &self.source,
            data,
            metadata: &self.metadata,
        }
    }
}

impl<T: Payload> Serialize for Envelope<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.wire(&self.data).serialize(serializer)
    }
}

/// The envelope as it is on the wire, before its `data` is typed: what
/// [`crate::decode()`] checks first, and the source of the catalog's `envelope.schema.json`.
// `D` is how `data` is held: a JSON tree by default; the decoder keeps its text
// (`Box<RawValue>`) and types it from there. (Not in the doc comment: it becomes the
// schema's description.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "a4co envelope")]
pub struct WireEnvelope<D = serde_json::Value> {
    /// The message's id (UUID; UUIDv7 for fresh messages), also its `Nats-Msg-Id`.
    pub event_id: EventId,
    /// The message type, also its subject: `<context>.<event>` or `<context>.cmd.<command>`.
    #[schemars(pattern(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"))]
    pub event_type: String,
    /// The payload's schema version, from 1.
    #[schemars(range(min = 1))]
    pub event_version: u32,
    /// The aggregate the message is about.
    #[schemars(length(min = 1))]
    pub aggregate_id: String,
    /// When it happened (RFC 3339, UTC).
    #[serde(deserialize_with = "crate::time::de_utc")]
    pub occurred_at: DateTime<Utc>,
    /// The publishing service.
    #[schemars(length(min = 1))]
    pub source: String,
    /// The payload, as the schema of (`eventType`, `eventVersion`) describes it: always a
    /// JSON object (the envelope schema requires one).
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub data: D,
    /// Correlation, causation, user and saga.
    pub metadata: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::order::{ConfirmOrder, OrderCreated};

    #[test]
    fn a_first_message_names_itself_as_correlation_and_causation() {
        let env = Envelope::new("order-service", "ord-1", OrderCreated::example());
        assert_eq!(env.metadata.correlation_id, env.event_id.to_string());
        assert_eq!(env.metadata.causation_id, env.event_id.to_string());
        assert_eq!(env.metadata.user_id, Metadata::SYSTEM_USER);
        assert_eq!(env.event_id.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn a_caused_message_inherits_correlation_user_and_saga() {
        let parent = Envelope::new("order-service", "ord-1", OrderCreated::example())
            .with_user_id("user-4711")
            .with_saga_id("saga-1");
        let child = Envelope::caused_by(&parent, "saga", "ord-1", ConfirmOrder::example());
        assert_ne!(child.event_id, parent.event_id);
        assert_eq!(child.metadata.correlation_id, parent.event_id.to_string());
        assert_eq!(child.metadata.causation_id, parent.event_id.to_string());
        assert_eq!(child.metadata.user_id, "user-4711");
        assert_eq!(child.metadata.saga_id.as_deref(), Some("saga-1"));
    }

    #[test]
    fn deterministic_ids_depend_on_scope_and_step_only() {
        let a = EventId::deterministic("saga-1", "reserve:prod-1");
        assert_eq!(a, EventId::deterministic("saga-1", "reserve:prod-1"));
        assert_ne!(a, EventId::deterministic("saga-1", "reserve:prod-2"));
        assert_ne!(
            EventId::deterministic("a", "bc"),
            EventId::deterministic("ab", "c")
        );
        let env = Envelope::new("saga", "ord-1", ConfirmOrder::example()).with_event_id(a);
        assert_eq!(env.metadata.causation_id, a.to_string());
        assert_eq!(env.metadata.correlation_id, a.to_string());
    }
}

//! The record of a saga instance: its state and data, what it has sent and must still
//! send, its timers and its history, as a store keeps it. The bottom layer of the crate:
//! the [`State`] and [`Data`] traits live here, everything else builds on them.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;

use a4co_events::bus::RawMessage;
use a4co_events::{Envelope, EventId, Payload};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The states of a saga: an enum, usually `Copy`, with one final state or more.
pub trait State:
    Copy + Eq + Hash + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Every state, for checks and diagrams.
    const ALL: &'static [Self];
    /// The state's name in diagrams and logs (`reserving-stock`).
    fn name(self) -> &'static str;
    /// Whether the saga ends here: a final state has no timers, and reacts only to the
    /// messages its definition answers after the end, staying final.
    fn is_final(self) -> bool;

    /// How a saga that ends in this final state ended, for the metrics
    /// (`a4co_saga_finished_total{outcome}`): [`Outcome::Completed`] unless the state says
    /// the saga failed to do its job ([`Outcome::Failed`]; an instance that sent
    /// compensations on the way counts as [`Outcome::Compensated`]). Not asked of other
    /// states.
    fn outcome(self) -> Outcome {
        Outcome::Completed
    }
}

/// How a finished saga ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It did its job.
    Completed,
    /// It failed after completed steps were undone (it sent compensations).
    Compensated,
    /// It failed with nothing to undo.
    Failed,
}

impl Outcome {
    /// `completed`, `compensated` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Compensated => "compensated",
            Outcome::Failed => "failed",
        }
    }
}

/// What a saga keeps between messages.
pub trait Data:
    Clone + Default + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T> Data for T where
    T: Clone + Default + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

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
    /// The subject it is published on (its type; the stream of the receiving context).
    pub subject: String,
    /// The NATS headers it is published with, `Nats-Msg-Id` = `event_id` among them.
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
    /// The message of `envelope` with its encoded `body` (checked by the caller).
    pub(crate) fn new<P: Payload>(envelope: &Envelope<P>, step: String, body: Vec<u8>) -> Self {
        Outgoing {
            step,
            event_id: envelope.event_id,
            event_type: envelope.event_type().to_owned(),
            subject: envelope.subject().to_owned(),
            headers: envelope
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: raw_json(body),
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

/// The message that undoes a completed step, kept as its payload until it is sent: the
/// envelope is made when the compensation goes out, stamped then, caused by what set it
/// off, in that trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compensation {
    /// `undo/<step>`: the step that sends it.
    pub step: String,
    /// Its type (`inventory.cmd.release_stock`).
    pub event_type: String,
    /// The version of its type the payload was written in (upcast when it is sent).
    pub event_version: u32,
    /// The aggregate it is about.
    pub aggregate_id: String,
    /// The payload, as JSON (the envelope's `data`).
    pub data: Box<serde_json::value::RawValue>,
}

impl PartialEq for Compensation {
    fn eq(&self, other: &Self) -> bool {
        self.step == other.step
            && self.event_type == other.event_type
            && self.event_version == other.event_version
            && self.aggregate_id == other.aggregate_id
            && self.data.get() == other.data.get()
    }
}

impl Eq for Compensation {}

/// Reads the compensations as kept now, or as records written before kept them: a whole
/// message (`{step, body, ..}`), of which the payload is what counts.
fn compensations<'de, De: serde::Deserializer<'de>>(
    de: De,
) -> Result<Vec<Compensation>, De::Error> {
    use serde::de::Error as _;
    let kept = Vec::<serde_json::Value>::deserialize(de)?;
    kept.into_iter()
        .map(|mut c| {
            let Some(body) = c.get_mut("body").map(serde_json::Value::take) else {
                return serde_json::from_value(c).map_err(De::Error::custom);
            };
            let text = |key: &str| body[key].as_str().unwrap_or_default().to_owned();
            Ok(Compensation {
                step: c["step"].as_str().unwrap_or_default().to_owned(),
                event_type: text("eventType"),
                event_version: body["eventVersion"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(1),
                aggregate_id: text("aggregateId"),
                data: serde_json::value::to_raw_value(&body["data"]).map_err(De::Error::custom)?,
            })
        })
        .collect()
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

/// The bookkeeping of an instance beyond its state and data: engine-private, read
/// through [`Instance`]'s accessors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Ledger {
    /// `order-fulfillment/ord-1`.
    pub(crate) saga_id: String,
    /// The name of the definition it runs on (empty in records written before versions
    /// were recorded).
    #[serde(default)]
    pub(crate) definition: String,
    /// The version of the definition it started on and runs on (1 in records written
    /// before versions were recorded).
    #[serde(default = "first_version")]
    pub(crate) version: u32,
    /// The correlation id of the message that started it, carried by all it sends.
    pub(crate) correlation_id: String,
    /// The user of the message that started it.
    pub(crate) user_id: String,
    /// The id of the message that started it.
    pub(crate) origin: String,
    /// The W3C `traceparent` of the message that started it (absent in records written
    /// before it was kept): what a timer's messages continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<String>,
    /// Messages saved but not yet published.
    pub(crate) outbox: Vec<Outgoing>,
    /// Compensations of completed steps, in order of completion (run in reverse).
    #[serde(deserialize_with = "compensations")]
    pub(crate) compensations: Vec<Compensation>,
    /// Timers by name: when each runs out.
    #[serde(serialize_with = "timers")]
    pub(crate) timers: BTreeMap<String, DateTime<Utc>>,
    /// Steps already used (a step name sends once).
    pub(crate) steps: Vec<String>,
    /// Ids of the latest messages processed.
    pub(crate) processed: Vec<EventId>,
    /// The earliest time a store index entry is known to exist for (see
    /// [`crate::store::Index::new_entry`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "a4co_events::time::opt_utc",
        deserialize_with = "a4co_events::time::de_opt_utc"
    )]
    pub(crate) indexed: Option<DateTime<Utc>>,
    /// The state the store's index of waiting instances holds it in (see
    /// [`crate::store::Index::was_waiting`]); absent when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) counted: Option<String>,
    /// The latest moves.
    pub(crate) history: Vec<Transition>,
}

fn first_version() -> u32 {
    1
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
    /// Outbox, compensations, timers, processed ids, history (stored as `book`).
    #[serde(rename = "book")]
    pub(crate) ledger: Ledger,
}

impl<D: Data, S: State> Instance<D, S> {
    /// How it ended, once in a final state ([`State::outcome`]; a failure that sent
    /// compensations is [`Outcome::Compensated`]); `None` while it runs.
    pub fn outcome(&self) -> Option<Outcome> {
        if !self.state.is_final() {
            return None;
        }
        Some(match self.state.outcome() {
            Outcome::Completed => Outcome::Completed,
            _ if self.ledger.steps.iter().any(|s| s.starts_with("undo/")) => Outcome::Compensated,
            other => other,
        })
    }

    /// The earliest timer, if any.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.ledger.timers.values().min().copied()
    }

    /// Whether the instance reached a final state.
    pub fn is_finished(&self) -> bool {
        self.state.is_final()
    }

    /// Its id (`order-fulfillment/ord-1`).
    pub fn saga_id(&self) -> &str {
        &self.ledger.saga_id
    }

    /// The version of its definition it runs on: the one it started on, unless a
    /// migration moved it.
    pub fn version(&self) -> u32 {
        self.ledger.version
    }

    /// The correlation id of the message that started it, carried by all it sends.
    pub fn correlation_id(&self) -> &str {
        &self.ledger.correlation_id
    }

    /// Messages saved but not yet published (empty once the runtime has published them).
    pub fn outbox(&self) -> &[Outgoing] {
        &self.ledger.outbox
    }

    /// The compensations of completed steps, in order of completion (sent in reverse).
    pub fn compensations(&self) -> &[Compensation] {
        &self.ledger.compensations
    }

    /// The running timers by name, with when each runs out.
    pub fn timers(&self) -> impl Iterator<Item = (&str, DateTime<Utc>)> + '_ {
        self.ledger
            .timers
            .iter()
            .map(|(name, at)| (name.as_str(), *at))
    }

    /// The latest moves, oldest first (at most 64).
    pub fn history(&self) -> &[Transition] {
        &self.ledger.history
    }
}

/// Bytes the envelope encoder wrote, as a raw JSON value. They are JSON by construction; a
/// failure here would be a bug in the encoder, kept visible as a JSON string.
pub(crate) fn raw_json(bytes: Vec<u8>) -> Box<serde_json::value::RawValue> {
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    serde_json::value::RawValue::from_string(text).unwrap_or_else(|e| {
        let quoted = serde_json::Value::String(format!("unencodable envelope: {e}")).to_string();
        serde_json::value::RawValue::from_string(quoted).unwrap_or_default()
    })
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
            let book = Ledger {
                timers: [("stock".to_owned(), at)].into(),
                indexed: Some(at),
                history: vec![Transition {
                    from: None,
                    trigger: "order.created".to_owned(),
                    to: "reserving".to_owned(),
                    at,
                }],
                ..Ledger::default()
            };
            let json: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec(&book).unwrap()).unwrap();
            let chrono = serde_json::to_value(at).unwrap();
            assert_eq!(json["timers"]["stock"], chrono, "{text}");
            assert_eq!(json["indexed"], chrono, "{text}");
            assert_eq!(json["history"][0]["at"], chrono, "{text}");
            let back: Ledger = serde_json::from_value(json).unwrap();
            assert_eq!(back, book, "{text}");
        }
    }

    #[test]
    fn a_compensation_kept_as_a_whole_message_by_an_older_build_reads_as_its_payload() {
        use a4co_events::Message as _;
        use a4co_events::catalog::inventory::ReleaseStock;
        let release = ReleaseStock::example();
        let envelope = Envelope::new("order-service", "prod-1", release.clone());
        let older = serde_json::json!({
            "step": "undo/reserve/prod-1",
            "eventId": envelope.event_id,
            "eventType": "inventory.cmd.release_stock",
            "subject": "inventory.cmd.release_stock",
            "headers": [],
            "body": serde_json::from_slice::<serde_json::Value>(&envelope.to_json()).unwrap(),
        });
        let mut book = serde_json::to_value(Ledger::default()).unwrap();
        book["compensations"] = serde_json::json!([older]);
        let read: Ledger = serde_json::from_value(book).unwrap();
        let [kept] = read.compensations.as_slice() else {
            panic!("one compensation: {:?}", read.compensations);
        };
        assert_eq!(kept.step, "undo/reserve/prod-1");
        assert_eq!(kept.event_type, "inventory.cmd.release_stock");
        assert_eq!(kept.event_version, ReleaseStock::VERSION);
        assert_eq!(kept.aggregate_id, "prod-1");
        let data: ReleaseStock = serde_json::from_str(kept.data.get()).unwrap();
        assert_eq!(data, release);
        // Written back in today's shape, and read again the same.
        let again: Ledger = serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
        assert_eq!(again.compensations, read.compensations);
    }
}

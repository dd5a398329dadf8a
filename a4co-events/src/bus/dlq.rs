//! Dead letters: the record a failed message leaves, and the tools to list, show, replay and
//! purge them.
//!
//! A message is dead-lettered once, when it cannot be decoded, when its handler fails
//! permanently, or when its last retry fails. The record goes to the `DLQ` stream on
//! `dlq.<service>.<subscription>.<original subject>`, deduplicated on the original's stream
//! and sequence, and carries everything needed to understand and replay it.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::{DLQ_PREFIX, DLQ_STREAM};
use super::error::{ConsumeError, PublishError};
use super::transport::{Attempt, DeliveryInfo, PublishAck, RawMessage, Transport};
use crate::headers::{Headers, TraceContext, names};

/// Header of a replayed message: the dead letter's sequence in `DLQ`.
pub const REPLAY_HEADER: &str = "a4co-replay";
/// Header of a dead letter: why (`<kind>: <message>`).
pub const REASON_HEADER: &str = "a4co-dlq-reason";
/// Header of a dead letter: the consumer, `<service>/<subscription>`.
pub const CONSUMER_HEADER: &str = "a4co-dlq-consumer";

/// Why a message was given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// It could not be decoded (malformed, unknown type or version, schema violation, ...).
    Undecodable,
    /// Its handler failed with a permanent error.
    Permanent,
    /// Its handler failed on every allowed delivery.
    RetriesExhausted,
}

/// The record of a dead-lettered message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Why, in one line: `<kind>: <message>`.
    pub reason: String,
    /// The kind of fault.
    pub fault: FaultKind,
    /// The error and its causes, outermost first.
    pub error_chain: Vec<String>,
    /// The failed attempts before the last, oldest first (the last is `error_chain`).
    pub attempts: Vec<Attempt>,
    /// The consumer that gave up: `<service>/<subscription>`.
    pub consumer: String,
    /// The original's stream.
    pub stream: String,
    /// The original's sequence in its stream.
    pub stream_sequence: u64,
    /// How many deliveries it had.
    pub delivered: u64,
    /// The original's subject.
    pub subject: String,
    /// The original's headers.
    pub headers: BTreeMap<String, String>,
    /// The original's body: text when it was UTF-8, otherwise base64.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// The event type, when the envelope was readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The event id, when the envelope was readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The trace id, when the message was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The record of `message`, delivered as `info` to `consumer`, given up on for `fault`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        message: &RawMessage,
        info: &DeliveryInfo,
        consumer: &str,
        fault: FaultKind,
        error_chain: Vec<String>,
        attempts: Vec<Attempt>,
        event_type: Option<String>,
        event_id: Option<String>,
    ) -> Self {
        let (payload, payload_encoding) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&message.payload),
                "base64",
            ),
        };
        let kind = match fault {
            FaultKind::Undecodable => "undecodable",
            FaultKind::Permanent => "permanent",
            FaultKind::RetriesExhausted => "retries_exhausted",
        };
        DeadLetter {
            reason: format!("{kind}: {}", error_chain.first().map_or("", String::as_str)),
            fault,
            error_chain,
            attempts,
            consumer: consumer.to_owned(),
            stream: info.stream.to_string(),
            stream_sequence: info.stream_sequence,
            delivered: info.attempt,
            subject: message.subject.clone(),
            headers: message
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload,
            payload_encoding: payload_encoding.to_owned(),
            event_type,
            event_id,
            trace_id: TraceContext::extract(&message.headers).map(|t| t.trace_id().to_owned()),
            dead_lettered_at: Utc::now(),
        }
    }

    /// The subject it is stored on: `dlq.<service>.<subscription>.<original subject>`.
    pub fn dlq_subject(&self) -> String {
        format!(
            "{DLQ_PREFIX}.{}.{}",
            self.consumer.replace('/', "."),
            self.subject
        )
    }

    /// The record as a message for the `DLQ` stream. Its id is derived from the original's
    /// stream, sequence and consumer, so recording it twice stores it once.
    pub fn to_message(&self) -> RawMessage {
        let mut headers = Headers::new();
        headers.insert(
            names::MSG_ID,
            format!(
                "dlq:{}:{}:{}",
                self.stream, self.stream_sequence, self.consumer
            ),
        );
        // One line: a header value cannot carry line breaks (the body keeps the reason whole).
        let reason = crate::error::clip(&self.reason).replace(['\r', '\n'], " ");
        headers.insert(REASON_HEADER, reason);
        headers.insert(CONSUMER_HEADER, self.consumer.as_str());
        for name in [names::TRACEPARENT, names::TRACESTATE, names::EVENT_TYPE] {
            if let Some(v) = self.headers.get(name) {
                headers.insert(name, v.as_str());
            }
        }
        RawMessage {
            subject: self.dlq_subject(),
            headers,
            payload: Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
        }
    }

    /// The original message, as it was published.
    ///
    /// # Errors
    /// [`CorruptPayload`] when a base64 payload does not decode, or the encoding is
    /// neither `utf8` nor `base64` (a record written or edited by something else).
    pub fn original(&self) -> Result<RawMessage, CorruptPayload> {
        let payload = match self.payload_encoding.as_str() {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| CorruptPayload(format!("base64 payload: {e}")))?,
            "utf8" => self.payload.clone().into_bytes(),
            other => {
                return Err(CorruptPayload(format!(
                    "unknown payload encoding {other:?}"
                )));
            }
        };
        Ok(RawMessage {
            subject: self.subject.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            payload: Bytes::from(payload),
        })
    }
}

/// A dead letter whose original payload cannot be restored; says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the dead letter's payload is corrupt: {0}")]
pub struct CorruptPayload(String);

/// Which dead letters to look at. Empty matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this consumer (`<service>/<subscription>`).
    pub consumer: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.consumer.as_ref().is_none_or(|c| *c == letter.consumer)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| letter.event_type.as_ref() == Some(t))
            && self.since.is_none_or(|s| letter.dead_lettered_at >= s)
            && self.until.is_none_or(|u| letter.dead_lettered_at < u)
    }
}

/// The dead-letter tools over a transport.
#[derive(Clone, Debug)]
pub struct DeadLetters<T> {
    transport: T,
}

impl<T: Transport> DeadLetters<T> {
    /// The tools over `transport`.
    pub fn new(transport: T) -> Self {
        DeadLetters { transport }
    }

    /// Every dead letter matching `filter`, with its sequence in `DLQ`, oldest first.
    ///
    /// # Errors
    /// When the stream cannot be read.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<(u64, DeadLetter)>, ConsumeError> {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let batch = self.transport.read_stream(DLQ_STREAM, from, 256).await?;
            let Some((last, _, _)) = batch.last() else {
                break;
            };
            from = last + 1;
            out.extend(batch.into_iter().filter_map(|(seq, message, _)| {
                let letter: DeadLetter = serde_json::from_slice(&message.payload).ok()?;
                filter.matches(&letter).then_some((seq, letter))
            }));
        }
        Ok(out)
    }

    /// One dead letter by its sequence in `DLQ`.
    ///
    /// # Errors
    /// When the stream cannot be read.
    pub async fn show(&self, sequence: u64) -> Result<Option<DeadLetter>, ConsumeError> {
        let batch = self.transport.read_stream(DLQ_STREAM, sequence, 1).await?;
        Ok(batch
            .into_iter()
            .find(|(seq, _, _)| *seq == sequence)
            .and_then(|(_, message, _)| serde_json::from_slice(&message.payload).ok()))
    }

    /// Publishes the original back to its subject, under a new broker id (so the dedup
    /// window does not swallow it) and marked as a replay (so the consumer's inbox and
    /// attempt history start afresh), then removes the dead letter.
    ///
    /// # Errors
    /// When the dead letter does not exist or the publish fails; the dead letter then stays.
    pub async fn replay(&self, sequence: u64) -> Result<PublishAck, ReplayError> {
        let letter = self
            .show(sequence)
            .await?
            .ok_or_else(|| ReplayError::NotFound(sequence))?;
        let mut message = letter.original()?;
        let id = message.message_id().unwrap_or("none").to_owned();
        message
            .headers
            .insert(names::MSG_ID, format!("{id}:replay:{sequence}"));
        message.headers.insert(REPLAY_HEADER, sequence.to_string());
        let ack = self.transport.publish(message).await?;
        self.transport.delete_message(DLQ_STREAM, sequence).await?;
        Ok(ack)
    }

    /// Removes every dead letter matching `filter`; returns how many.
    ///
    /// # Errors
    /// When the stream cannot be read or changed.
    pub async fn purge(&self, filter: &Filter) -> Result<usize, ConsumeError> {
        let mut removed = 0;
        for (seq, _) in self.list(filter).await? {
            if self.transport.delete_message(DLQ_STREAM, seq).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No dead letter has that sequence.
    #[error("no dead letter with sequence {0}")]
    NotFound(u64),
    /// The record's payload cannot be restored.
    #[error(transparent)]
    Corrupt(#[from] CorruptPayload),
    /// Reading or deleting failed.
    #[error(transparent)]
    Read(#[from] ConsumeError),
    /// Publishing the original failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &[u8]) -> DeadLetter {
        let message = RawMessage {
            subject: "order.created".to_owned(),
            headers: Headers::new(),
            payload: Bytes::copy_from_slice(payload),
        };
        let info = DeliveryInfo {
            stream: "ORDERS".into(),
            consumer: "c".into(),
            stream_sequence: 7,
            attempt: 1,
            published: Utc::now(),
        };
        let chain = vec!["bad".to_owned()];
        DeadLetter::new(
            &message,
            &info,
            "s/c",
            FaultKind::Permanent,
            chain,
            Vec::new(),
            None,
            None,
        )
    }

    #[test]
    fn text_and_binary_payloads_come_back_as_published() {
        for payload in [&b"{\"a\":1}"[..], &[0xff, 0x00, 0xfe][..]] {
            let back = letter(payload).original();
            assert_eq!(back.map(|m| m.payload), Ok(Bytes::copy_from_slice(payload)));
        }
        assert_eq!(letter(&[0xff]).payload_encoding, "base64");
    }

    #[test]
    fn an_edited_record_is_a_clear_error() {
        let mut broken = letter(&[0xff]);
        broken.payload = "not base64!".to_owned();
        let err = broken.original().unwrap_err().to_string();
        assert!(
            err.starts_with("the dead letter's payload is corrupt: base64"),
            "{err}"
        );
        broken.payload_encoding = "gzip".to_owned();
        let err = broken.original().unwrap_err().to_string();
        assert!(err.contains("unknown payload encoding \"gzip\""), "{err}");
    }
}

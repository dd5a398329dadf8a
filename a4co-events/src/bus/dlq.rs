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
pub use super::fault::FaultKind;
use super::transport::{Attempt, Transport};
use crate::bus::{DeliveryInfo, PublishAck, RawMessage};
use crate::headers::{Headers, TraceContext, names};

/// Header of a replayed message: the dead letter's sequence in `DLQ`.
pub const REPLAY_HEADER: &str = "a4co-replay";
/// Header of a replayed message: the consumer it is for (`<service>/<subscription>`, the
/// one that dead-lettered it). Every other consumer acknowledges it without handling it.
pub const REPLAY_FOR_HEADER: &str = "a4co-replay-for";
/// Header of a replayed message: how many times the message has been replayed, from 1.
pub const REPLAY_COUNT_HEADER: &str = "a4co-replay-count";
/// How many times a dead letter may be replayed before [`DeadLetters::replay`] asks for
/// `force`: a message replayed this often and failing again needs a fix, not a replay.
pub const REPLAY_LIMIT: u32 = 3;
/// `payload_encoding` of a dead letter too large to hold the payload: the original stays
/// in its stream at its sequence.
pub const REFERENCE_ENCODING: &str = "reference";
/// Header of a dead letter: why (`<kind>: <message>`).
pub const REASON_HEADER: &str = "a4co-dlq-reason";
/// Header of a dead letter: the consumer, `<service>/<subscription>`.
pub const CONSUMER_HEADER: &str = "a4co-dlq-consumer";

/// The most bytes of one error (of the chain, or of an earlier attempt) a letter keeps; the
/// rest is cut at a character boundary and marked `…`. With at most 16 causes and the latest
/// 64 attempts kept, the text of a letter stays far below a broker's payload
/// limit, so it can always be written (by reference when the payload is large).
pub const MAX_ERROR_BYTES: usize = 4096;
/// The most bytes of the one-line reason.
const MAX_REASON_BYTES: usize = 512;
/// The most causes of an error chain a letter keeps (the last says how many more there were).
const MAX_CHAIN: usize = 16;
/// The most earlier attempts a letter keeps: the latest.
const MAX_ATTEMPTS_KEPT: usize = 64;

/// `text` cut to at most `max` bytes at a character boundary, `…` marking the cut.
pub(crate) fn clip_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
    /// The original's body: text when it was UTF-8, otherwise base64; empty when the
    /// record refers to the original instead ([`REFERENCE_ENCODING`]).
    pub payload: String,
    /// `utf8`, `base64`, or `reference`: the record would have been too large for the
    /// broker with the payload, which stays in the original's stream at its sequence
    /// ([`DeadLetters::original`] reads it from there).
    pub payload_encoding: String,
    /// How many times the message had been replayed before it failed this time (0: never).
    #[serde(default)]
    pub replays: u32,
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
        let mut error_chain = error_chain;
        if error_chain.len() > MAX_CHAIN {
            let more = error_chain.len() - MAX_CHAIN + 1;
            error_chain.truncate(MAX_CHAIN - 1);
            error_chain.push(format!("… {more} more causes"));
        }
        let error_chain: Vec<String> = error_chain
            .iter()
            .map(|e| clip_bytes(e, MAX_ERROR_BYTES))
            .collect();
        let mut attempts = attempts;
        if attempts.len() > MAX_ATTEMPTS_KEPT {
            attempts.drain(..attempts.len() - MAX_ATTEMPTS_KEPT);
        }
        for attempt in &mut attempts {
            attempt.error = clip_bytes(&attempt.error, MAX_ERROR_BYTES);
        }
        DeadLetter {
            reason: format!(
                "{}: {}",
                fault.as_str(),
                clip_bytes(
                    error_chain.first().map_or("", String::as_str),
                    MAX_REASON_BYTES
                )
            ),
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
            replays: message
                .headers
                .get(REPLAY_COUNT_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            event_type,
            event_id,
            trace_id: TraceContext::extract(&message.headers).map(|t| t.trace_id().to_owned()),
            dead_lettered_at: Utc::now(),
        }
    }

    /// The same record without the payload, referring to the original in its stream.
    pub(crate) fn by_reference(mut self) -> Self {
        self.payload = String::new();
        self.payload_encoding = REFERENCE_ENCODING.to_owned();
        self
    }

    /// Whether the payload stays in the original's stream (the record would have been too
    /// large with it).
    pub fn is_reference(&self) -> bool {
        self.payload_encoding == REFERENCE_ENCODING
    }

    /// Whether [`DeadLetters::replay`] refuses it without `force`: it was replayed
    /// [`REPLAY_LIMIT`] times and failed again.
    pub fn replay_exhausted(&self) -> bool {
        self.replays >= REPLAY_LIMIT
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

    /// The original message, as it was published, from the record (for a reference,
    /// [`DeadLetters::original`] reads it from its stream).
    ///
    /// # Errors
    /// [`CorruptPayload`] when a base64 payload does not decode, the record refers to the
    /// original, or the encoding is unknown (a record written or edited by something else).
    pub fn original(&self) -> Result<RawMessage, CorruptPayload> {
        let payload = match self.payload_encoding.as_str() {
            REFERENCE_ENCODING => {
                return Err(CorruptPayload(format!(
                    "the payload is not in the record: read it from {} at sequence {}",
                    self.stream, self.stream_sequence
                )));
            }
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

    /// The original message of `letter`, from the record, or from its stream when the
    /// record refers to it.
    ///
    /// # Errors
    /// [`ReplayError::OriginalGone`] when the stream no longer keeps it (its retention
    /// passed, or it was deleted), [`ReplayError::Corrupt`], [`ReplayError::Read`].
    pub async fn original(&self, letter: &DeadLetter) -> Result<RawMessage, ReplayError> {
        if !letter.is_reference() {
            return Ok(letter.original()?);
        }
        let (stream, sequence) = (letter.stream.as_str(), letter.stream_sequence);
        let found = self
            .transport
            .read_stream(stream, sequence, 1)
            .await?
            .into_iter()
            .find(|(seq, _, _)| *seq == sequence)
            .map(|(_, message, _)| message)
            .ok_or_else(|| ReplayError::OriginalGone {
                stream: stream.to_owned(),
                sequence,
            })?;
        // The stream may have been re-created since: the same sequence then holds another
        // message. Only the original's own id (or, without one, its event id) will do.
        let expected = letter
            .headers
            .get(names::MSG_ID)
            .cloned()
            .or_else(|| letter.event_id.clone());
        let id_of = |m: &RawMessage| {
            m.message_id().map(str::to_owned).or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .ok()
                    .and_then(|body| body["eventId"].as_str().map(str::to_owned))
            })
        };
        if found.subject != letter.subject || expected.is_some_and(|id| id_of(&found) != Some(id)) {
            return Err(ReplayError::OriginalReplaced {
                stream: stream.to_owned(),
                sequence,
            });
        }
        Ok(found)
    }

    /// Publishes the original back to its subject for the consumer that dead-lettered it
    /// only (every other consumer of the subject acknowledges it unhandled), under a new
    /// broker id (so the dedup window does not swallow it), marked as a replay (so that
    /// consumer's inbox and attempt history start afresh) and counted (a new dead letter of
    /// it records [`DeadLetter::replays`]), then removes the dead letter.
    ///
    /// A letter replayed [`REPLAY_LIMIT`] times that failed again is refused unless
    /// `options.force`; with `options.dry_run` nothing is published or removed and the
    /// answer says what would be.
    ///
    /// # Errors
    /// [`ReplayError`]: no such letter, its consumer gone, refused, the original gone from
    /// its stream, the publish failed (the dead letter then stays).
    pub async fn replay(
        &self,
        sequence: u64,
        options: ReplayOptions,
    ) -> Result<Replayed, ReplayError> {
        let letter = self
            .show(sequence)
            .await?
            .ok_or(ReplayError::NotFound(sequence))?;
        // A record names its own subject: replay publishes only to a catalog message type.
        if crate::catalog::versions(&letter.subject).next().is_none() {
            return Err(ReplayError::NotCatalog {
                sequence,
                subject: crate::error::clip(&letter.subject),
            });
        }
        if letter.replay_exhausted() && !options.force {
            return Err(ReplayError::Refused {
                sequence,
                replays: letter.replays,
            });
        }
        let mut message = self.original(&letter).await?;
        // Only the consumer that dead-lettered it takes a replay: without it, the replay
        // would be acknowledged unhandled by every other consumer and the letter gone.
        let durable = letter.consumer.replacen('/', "_", 1);
        if !self
            .transport
            .consumer_exists(&letter.stream, &durable)
            .await?
        {
            return Err(ReplayError::ConsumerGone {
                sequence,
                consumer: letter.consumer,
                stream: letter.stream,
            });
        }
        let id = message.message_id().unwrap_or("none").to_owned();
        let id = id.split(":replay:").next().unwrap_or("none").to_owned();
        message
            .headers
            .insert(names::MSG_ID, format!("{id}:replay:{sequence}"));
        message.headers.insert(REPLAY_HEADER, sequence.to_string());
        message
            .headers
            .insert(REPLAY_FOR_HEADER, letter.consumer.as_str());
        let count = letter.replays.saturating_add(1);
        message
            .headers
            .insert(REPLAY_COUNT_HEADER, count.to_string());
        let mut replayed = Replayed {
            sequence,
            consumer: letter.consumer,
            subject: message.subject.clone(),
            replay: count,
            published: None,
        };
        if options.dry_run {
            return Ok(replayed);
        }
        replayed.published = Some(self.transport.publish(message).await?);
        self.transport.delete_message(DLQ_STREAM, sequence).await?;
        Ok(replayed)
    }

    /// Removes every dead letter matching `filter`; returns their sequences (with
    /// `dry_run`, those it would remove, removing none).
    ///
    /// # Errors
    /// When the stream cannot be read or changed.
    pub async fn purge(&self, filter: &Filter, dry_run: bool) -> Result<Vec<u64>, ConsumeError> {
        let mut removed = Vec::new();
        for (seq, _) in self.list(filter).await? {
            if dry_run || self.transport.delete_message(DLQ_STREAM, seq).await? {
                removed.push(seq);
            }
        }
        Ok(removed)
    }
}

/// How [`DeadLetters::replay`] goes about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Replay a letter even if it was replayed [`REPLAY_LIMIT`] times already.
    pub force: bool,
    /// Publish and remove nothing; say what would be done.
    pub dry_run: bool,
}

/// What a replay did (or, dry, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The dead letter's sequence in `DLQ`.
    pub sequence: u64,
    /// The only consumer that handles the replay.
    pub consumer: String,
    /// Where the original was published again.
    pub subject: String,
    /// Which replay of the message this is, from 1.
    pub replay: u32,
    /// The broker's acknowledgement; `None` for a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<PublishAck>,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No dead letter has that sequence.
    #[error("no dead letter with sequence {0}")]
    NotFound(u64),
    /// The letter was replayed [`REPLAY_LIMIT`] times and failed again.
    #[error(
        "dead letter {sequence} was replayed {replays} times and failed again: fix the cause, \
         then replay it with --force (ReplayOptions::force)"
    )]
    Refused {
        /// The letter's sequence in `DLQ`.
        sequence: u64,
        /// How many times it was replayed.
        replays: u32,
    },
    /// The letter refers to its original, which its stream no longer keeps.
    #[error(
        "the dead letter refers to its original in {stream} at sequence {sequence}, which the \
         stream no longer keeps (its retention passed, or it was deleted)"
    )]
    OriginalGone {
        /// The original's stream.
        stream: String,
        /// The original's sequence.
        sequence: u64,
    },
    /// The letter refers to its original, but its stream now holds another message at that
    /// sequence (the stream was re-created): nothing is replayed, the letter stays.
    #[error(
        "the dead letter refers to its original in {stream} at sequence {sequence}, but that \
         sequence now holds another message (the stream was re-created): nothing replayed, the \
         letter kept"
    )]
    OriginalReplaced {
        /// The original's stream.
        stream: String,
        /// The original's sequence.
        sequence: u64,
    },
    /// The record's subject is no message type of the catalog: replaying it would publish
    /// where no consumer of the catalog expects it.
    #[error(
        "dead letter {sequence} names subject {subject:?}, which is no catalog message type: \
         nothing replayed, the letter kept"
    )]
    NotCatalog {
        /// The letter's sequence in `DLQ`.
        sequence: u64,
        /// Its subject, clipped.
        subject: String,
    },
    /// The consumer that dead-lettered the message no longer exists on its stream (the
    /// service was retired, renamed, or its consumer deleted): a replay would be
    /// acknowledged unhandled by every other consumer. Nothing is replayed, the letter
    /// stays.
    #[error(
        "dead letter {sequence} is for consumer {consumer}, which {stream} no longer has: \
         nothing replayed, the letter kept. Start the service (it creates its consumer), \
         then replay it again; or purge it if the service is gone for good"
    )]
    ConsumerGone {
        /// The letter's sequence in `DLQ`.
        sequence: u64,
        /// The consumer, `<service>/<subscription>`.
        consumer: String,
        /// The original's stream.
        stream: String,
    },
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

    #[test]
    fn clipping_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(clip_bytes("short", 10), "short");
        let cut = clip_bytes(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

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
            delivered: 1,
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

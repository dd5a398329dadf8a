//! What the bus hands a service and takes from it, whichever broker runs it: a message
//! as brokers carry it, a publish's acknowledgement, a delivery's info, what provisioning
//! found. Re-exported at the bus's root; the transport contract builds on them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::error::PublishError;
use crate::envelope::Envelope;
use crate::headers::{Headers, names};
use crate::message::Payload;

/// A message as brokers carry it: subject, headers, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// Where it is published (`order.created`): the message type for catalog messages,
    /// `dlq.<service>.<subscription>.<subject>` for dead letters.
    pub subject: String,
    /// NATS headers; `Nats-Msg-Id` is the broker's dedup key.
    pub headers: Headers,
    /// The bytes as sent: for catalog messages, the envelope's JSON.
    pub payload: Bytes,
}

impl RawMessage {
    /// The encoded envelope: its subject, headers and JSON body.
    pub fn from_envelope<P: Payload>(envelope: &Envelope<P>) -> Self {
        RawMessage {
            subject: envelope.subject().to_owned(),
            headers: envelope.headers(),
            payload: Bytes::from(envelope.to_json()),
        }
    }

    /// Refuses what the wire cannot carry (see [`Headers::wire_problem`]), with an error
    /// naming the header; every transport checks this before sending.
    ///
    /// # Errors
    /// [`PublishErrorKind::InvalidMessage`](super::PublishErrorKind::InvalidMessage).
    pub fn check_wire(&self) -> Result<(), super::PublishError> {
        match self.headers.wire_problem() {
            None => Ok(()),
            Some(problem) => Err(super::PublishError::new(
                super::PublishErrorKind::InvalidMessage,
                format!("cannot publish to {}: {problem}", self.subject),
            )),
        }
    }

    /// Its size as a broker counts it against its maximum payload: body and headers.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
    }

    /// The dedup key (`Nats-Msg-Id`), if set.
    pub fn message_id(&self) -> Option<&str> {
        self.headers.get(names::MSG_ID)
    }
}

/// The broker's acknowledgement of a stored message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PublishAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence number in the stream.
    pub sequence: u64,
    /// Whether the broker had it already (same `Nats-Msg-Id` within the dedup window):
    /// it was stored once.
    pub duplicate: bool,
}

/// An acknowledgement still on its way: await it.
pub struct PendingAck(Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>);

impl PendingAck {
    /// Wraps a future resolving to the acknowledgement.
    pub fn new(
        future: impl Future<Output = Result<PublishAck, PublishError>> + Send + 'static,
    ) -> Self {
        PendingAck(Box::pin(future))
    }

    /// An acknowledgement that is already here.
    pub fn ready(result: Result<PublishAck, PublishError>) -> Self {
        PendingAck::new(std::future::ready(result))
    }
}

impl Future for PendingAck {
    type Output = Result<PublishAck, PublishError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAck")
    }
}

/// What provisioning a stream found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// The stream's name (`ORDERS`, `DLQ`).
    pub stream: String,
    /// Whether it was created now (false: it existed).
    pub created: bool,
    /// How the existing stream differs from the expected settings, one line each. Drift is
    /// reported, never silently changed: an operator decides.
    pub drift: Vec<String>,
}

/// Where and how often a message was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The stream it is stored in.
    pub stream: Arc<str>,
    /// The durable consumer delivering it.
    pub consumer: Arc<str>,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// Which attempt at handling this is, from 1. The bus counts it: the failed attempts
    /// recorded in the subscription's inbox, plus one (a delivery that waited, or whose
    /// dead letter could not be written yet, is no attempt). Without an inbox it is the
    /// broker's count, [`DeliveryInfo::delivered`].
    pub attempt: u64,
    /// How many times the broker delivered it, from 1.
    pub delivered: u64,
    /// When the broker stored it.
    pub published: DateTime<Utc>,
}

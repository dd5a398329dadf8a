//! Pulling from a durable consumer with credit: the engine says how many deliveries it has
//! room for, and only that many are asked for.
//!
//! async-nats's own pull stream asks for a fixed batch and asks again as soon as half of it
//! has arrived, whatever the application did with it, so hundreds of deliveries can wait
//! unseen in the client while their ack wait runs out (and another instance gets them
//! again). Here every delivery the server sends was asked for with room to hold it, and the
//! engine keeps every held one alive (see the consume engine), so none runs twice because
//! it waited.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::time::Instant;

use super::{from_header_map, shared_name, to_chrono};
use crate::bus::config::PIN_GROUP;
use crate::bus::error::{AckError, AckErrorKind, ConsumeError, ConsumeErrorKind};
use crate::bus::transport::{AckState, Consumer, Delivery};
use crate::bus::{DeliveryInfo, RawMessage};

/// How long a pull request lives on the server (a pinned consumer's, at most its ack
/// wait: a standby's waiting requests are not served when it takes over, so they must be
/// renewed often).
const EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a pull request is still alive when it has nothing to send (at
/// most a third of the request's life).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A durable pull consumer on JetStream.
pub struct NatsConsumer {
    js: jetstream::Context,
    client: async_nats::Client,
    /// Where the server sends what this consumer asks for.
    inbox: async_nats::Subscriber,
    reply: async_nats::Subject,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`.
    next_subject: async_nats::Subject,
    /// Deliveries asked for and not yet received (nor released by the server).
    outstanding: usize,
    /// How long its pull requests live, and how often the server says they do.
    expires: Duration,
    heartbeat: Duration,
    /// When the server last sent anything for this consumer.
    heard: Instant,
    /// Wakes the consumer to check for silence; armed once and moved only when it fires
    /// (a timer made on every call would cost a timer-wheel insert and removal per
    /// delivery).
    silence: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The connection epoch the outstanding requests were sent in.
    epoch: u64,
    /// For a pinned consumer: how often to pull at least, to keep the pin (the server moves
    /// it to a standby instance when the pinned one sends no pull request for `ack_wait`),
    /// and the timer for it.
    keep_pin: Option<(Duration, std::pin::Pin<Box<tokio::time::Sleep>>)>,
    /// When the last pull request was sent.
    requested: Instant,
    /// The pin this instance holds (`Nats-Pin-Id`), if any.
    pin: Option<String>,
    /// A change of pin not yet reported ([`Consumer::pin_changed`]).
    pin_changed: Option<bool>,
    /// For asking the server about the consumer.
    handle: jetstream::consumer::PullConsumer,
    /// The connection's counters: its connect count is the [`AckState`] epoch.
    stats: Arc<async_nats::Statistics>,
    durable: String,
    /// Stream and consumer names, shared by every delivery's info.
    names: (Arc<str>, Arc<str>),
}

impl std::fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("durable", &self.durable)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl NatsConsumer {
    pub(super) async fn open(
        js: &jetstream::Context,
        client: &async_nats::Client,
        handle: jetstream::consumer::PullConsumer,
        spec: &crate::bus::transport::ConsumerSpec,
    ) -> Result<Self, async_nats::SubscribeError> {
        let (stream, durable) = (spec.stream.as_str(), spec.durable.as_str());
        let expires = if spec.pinned {
            spec.pin_timeout().clamp(Duration::from_secs(1), EXPIRES)
        } else {
            EXPIRES
        };
        let heartbeat = HEARTBEAT.min(expires / 3);
        let keep_pin = spec.pinned.then(|| {
            let every = (spec.pin_timeout() / 3).max(Duration::from_millis(100));
            (every, Box::pin(tokio::time::sleep(every)))
        });
        let reply = async_nats::Subject::from(client.new_inbox());
        let inbox = client.subscribe(reply.clone()).await?;
        let stats = client.statistics();
        Ok(NatsConsumer {
            js: js.clone(),
            client: client.clone(),
            inbox,
            reply,
            next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}").into(),
            outstanding: 0,
            heard: Instant::now(),
            expires,
            heartbeat,
            silence: Box::pin(tokio::time::sleep(heartbeat * 2)),
            epoch: stats.connects.load(Ordering::SeqCst),
            keep_pin,
            requested: Instant::now(),
            pin: None,
            pin_changed: None,
            handle,
            stats,
            durable: durable.to_owned(),
            names: (Arc::from(stream), Arc::from(durable)),
        })
    }

    fn error(&self, kind: ConsumeErrorKind, what: impl std::fmt::Display) -> ConsumeError {
        ConsumeError::new(
            kind,
            format!("{what} ({} on {})", self.durable, self.names.0),
        )
    }

    /// Asks for `batch` more deliveries.
    async fn request(&mut self, batch: usize) -> Result<(), ConsumeError> {
        let mut body = format!(
            r#"{{"batch":{batch},"expires":{},"idle_heartbeat":{}"#,
            self.expires.as_nanos(),
            self.heartbeat.as_nanos()
        );
        if self.keep_pin.is_some() {
            body.push_str(&format!(r#","group":"{PIN_GROUP}""#));
            if let Some(pin) = &self.pin {
                body.push_str(&format!(r#","id":"{pin}""#));
            }
        }
        body.push('}');
        self.client
            .publish_with_reply(
                self.next_subject.clone(),
                self.reply.clone(),
                Bytes::from(body),
            )
            .await
            .map_err(|e| {
                self.error(ConsumeErrorKind::ConnectionLost, "asking for deliveries")
                    .with_source(e)
            })?;
        // Counted once sent: a request dropped before it left is not waited for.
        self.outstanding += batch;
        self.heard = Instant::now();
        self.requested = self.heard;
        Ok(())
    }

    /// Whether the consumer still exists on the server (`None`: the server does not say).
    async fn exists(&self) -> Option<bool> {
        match self.handle.get_info().await {
            Ok(_) => Some(true),
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                Some(false)
            }
            Err(_) => None,
        }
    }

    /// Releases what the server says it will no longer send for an ended request.
    fn released(&mut self, message: &async_nats::Message) {
        let pending = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse::<usize>().ok());
        self.outstanding = match pending {
            Some(n) => self.outstanding.saturating_sub(n),
            None => 0,
        };
    }
}

impl Consumer for NatsConsumer {
    type Delivery = NatsDelivery;

    async fn next(&mut self, room: usize) -> Option<Result<NatsDelivery, ConsumeError>> {
        loop {
            let epoch = self.stats.connects.load(Ordering::SeqCst);
            if epoch != self.epoch {
                // Requests sent before a reconnect may be gone; ask again (a surplus is
                // held and kept alive like any delivery).
                self.epoch = epoch;
                self.outstanding = 0;
            }
            let want = room.saturating_sub(self.outstanding);
            if want > 0
                && (self.outstanding == 0 || want * 2 >= room)
                && let Err(e) = self.request(want).await
            {
                return Some(Err(e));
            }
            let waiting = self.outstanding > 0;
            let (pin_every, pin_timer) = match self.keep_pin.as_mut() {
                Some((every, timer)) => (*every, Some(timer.as_mut())),
                None => (Duration::ZERO, None),
            };
            let keeping = pin_timer.is_some();
            let pin_due = async {
                match pin_timer {
                    Some(timer) => timer.await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                biased;
                message = self.inbox.next() => message?,
                () = pin_due, if keeping => {
                    if Instant::now() >= self.requested + pin_every {
                        // A pull request at least this often, busy or not, keeps the pin.
                        if let Err(e) = self.request(want.max(1)).await {
                            return Some(Err(e));
                        }
                    }
                    let next = self.requested + pin_every;
                    if let Some((_, timer)) = self.keep_pin.as_mut() {
                        timer.as_mut().reset(next);
                    }
                    continue;
                }
                () = self.silence.as_mut(), if waiting => {
                    let deadline = self.heard + self.heartbeat * 2;
                    if Instant::now() < deadline {
                        // Heard from since it was armed.
                        self.silence.as_mut().reset(deadline);
                        continue;
                    }
                    // Two heartbeats missed: the requests were lost (a leader moved, a
                    // server restarted); forget them and ask again.
                    tracing::debug!(durable = %self.durable, "pull requests went silent; asking again");
                    self.outstanding = 0;
                    self.silence.as_mut().reset(Instant::now() + self.heartbeat * 2);
                    if self.exists().await == Some(false) {
                        return Some(Err(self.error(ConsumeErrorKind::ConsumerDeleted, "the consumer is gone")));
                    }
                    continue;
                }
            };
            self.heard = Instant::now();
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if self.keep_pin.is_some()
                        && let Some(id) = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                        && self.pin.as_deref() != Some(id.as_str())
                    {
                        tracing::info!(durable = %self.durable, "this instance now takes the consumer's messages (pinned)");
                        self.pin = Some(id.as_str().to_owned());
                        self.pin_changed = Some(true);
                        // Requests sent without the pin are not served any more: ask anew.
                        self.outstanding = 0;
                    }
                    let message = jetstream::Message {
                        message,
                        context: self.js.clone(),
                    };
                    return Some(NatsDelivery::new(message, &self.names));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    // Another instance holds the pin now: stand by.
                    self.released(&message);
                    if self.pin.take().is_some() {
                        tracing::info!(durable = %self.durable, "another instance took over the consumer's messages; standing by");
                        self.pin_changed = Some(false);
                    }
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    // Nobody serves the consumer: deleted, or its leader is being elected.
                    self.outstanding = 0;
                    let gone = self.exists().await == Some(false);
                    let kind = if gone {
                        ConsumeErrorKind::ConsumerDeleted
                    } else {
                        ConsumeErrorKind::Other
                    };
                    return Some(Err(self.error(kind, "no server answers for the consumer")));
                }
                Some(_) => {
                    let description = message.description.as_deref().unwrap_or_default();
                    if description.eq_ignore_ascii_case("consumer deleted") {
                        self.outstanding = 0;
                        return Some(Err(self.error(
                            ConsumeErrorKind::ConsumerDeleted,
                            "the consumer was deleted",
                        )));
                    }
                    // A request ended (expired, a leadership change, a limit): what it
                    // still owed will not come.
                    self.released(&message);
                    if description.starts_with("Exceeded") {
                        return Some(Err(self.error(
                            ConsumeErrorKind::Other,
                            format_args!("the server refused a pull request: {description}"),
                        )));
                    }
                }
            }
        }
    }

    fn pin_changed(&mut self) -> Option<bool> {
        self.pin_changed.take()
    }

    async fn release(&mut self) {
        if self.pin.take().is_none() {
            return;
        }
        let (stream, durable) = (&self.names.0, &self.names.1);
        match self.js.get_stream(stream.as_ref()).await {
            Ok(stream) => {
                if let Err(e) = stream.unpin_consumer(durable, PIN_GROUP).await {
                    tracing::debug!(error = %e, "could not give up the pin; a standby takes over after the ack wait");
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not give up the pin"),
        }
    }

    fn ack_state(&self) -> impl Future<Output = Option<AckState>> + Send + 'static {
        let handle = self.handle.clone();
        let stats = Arc::clone(&self.stats);
        async move {
            // Read before asking: a loss during the request then shows as a new epoch at
            // the next look at the latest (an answer after a loss needs a reconnect, which
            // counts).
            let epoch = stats.connects.load(Ordering::SeqCst);
            match handle.get_info().await {
                Ok(info) => Some(AckState {
                    floor: info.ack_floor.stream_sequence,
                    epoch,
                    pending: info.num_ack_pending as u64,
                    waiting: info.num_pending,
                    created_after: super::durable::created_after(&info),
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "consumer info unavailable");
                    None
                }
            }
        }
    }
}

/// A delivery from JetStream.
pub struct NatsDelivery {
    message: jetstream::Message,
    raw: RawMessage,
    info: DeliveryInfo,
}

impl std::fmt::Debug for NatsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsDelivery")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl NatsDelivery {
    fn new(
        message: jetstream::Message,
        (stream, consumer): &(Arc<str>, Arc<str>),
    ) -> Result<Self, ConsumeError> {
        let info = {
            let i = message.info().map_err(|e| {
                ConsumeError::new(
                    ConsumeErrorKind::Other,
                    "a delivery without JetStream metadata",
                )
                .with_source(e.to_string())
            })?;
            let delivered = u64::try_from(i.delivered).unwrap_or(1);
            DeliveryInfo {
                stream: shared_name(stream, i.stream),
                consumer: shared_name(consumer, i.consumer),
                stream_sequence: i.stream_sequence,
                attempt: delivered,
                delivered,
                published: to_chrono(i.published),
            }
        };
        let mut raw = RawMessage {
            subject: message.subject.to_string(),
            headers: from_header_map(message.headers.as_ref()),
            payload: message.payload.clone(),
        };
        // The broker's word to this instance about the delivery, not part of the message.
        raw.headers.remove("Nats-Pin-Id");
        Ok(NatsDelivery { message, raw, info })
    }

    async fn send(&self, kind: AckKind) -> Result<(), AckError> {
        self.message.ack_with(kind).await.map_err(|e| {
            AckError::new(
                AckErrorKind::Other,
                format!("settling {}", self.info.stream_sequence),
            )
            .with_source(e.to_string())
        })
    }
}

impl Delivery for NatsDelivery {
    fn message(&self) -> &RawMessage {
        &self.raw
    }
    fn info(&self) -> &DeliveryInfo {
        &self.info
    }
    async fn ack(&self) -> Result<(), AckError> {
        self.send(AckKind::Ack).await
    }
    async fn nak(&self, delay: Duration) -> Result<(), AckError> {
        self.send(AckKind::Nak(Some(delay))).await
    }
    async fn term(&self) -> Result<(), AckError> {
        self.send(AckKind::Term).await
    }
    async fn progress(&self) -> Result<(), AckError> {
        self.send(AckKind::Progress).await
    }
}

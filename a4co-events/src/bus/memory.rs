//! The in-memory transport: JetStream's semantics in one process, for demos and fast tests.
//!
//! Streams capture subjects (with `*` and `>` wildcards) and deduplicate on `Nats-Msg-Id`
//! within their window; durable consumers are shared by every instance that opens them
//! (a pinned one delivers to one instance until it is dropped), redeliver after a nak's
//! delay or when the ack wait runs out, stop after `max_deliver` deliveries when limited,
//! and hold at most `max_ack_pending` unsettled ones; messages over 1 MiB are refused. Time is tokio's, so a test
//! with a paused clock drives retries without waiting. Nothing survives the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{ConsumerSpec, StreamSpec};
use super::error::{
    AckError, ConsumeError, ConsumeErrorKind, InboxError, ProvisionError, PublishError,
    PublishErrorKind, SubscribeError, SubscribeErrorKind,
};
use super::transport::{AckState, Attempt, Consumer, Delivery, Inbox, Transport};
use crate::bus::{DeliveryInfo, PendingAck, Provisioned, PublishAck, RawMessage};

/// Whether a NATS subject matches a filter with `*` (one token) and `>` (the rest).
pub(crate) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The largest message stored, headers and body together: NATS's default.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// The in-memory broker. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryTransport {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on every change a waiting consumer may care about.
    changed: Notify,
    /// The next fetch panics ([`MemoryTransport::panic_on_next_fetch`]).
    panic_next: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    consumers: HashMap<(String, String), ConsumerState>,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Stream {
    spec: StreamSpec,
    messages: BTreeMap<u64, Stored>,
    last_sequence: u64,
    dedup: HashMap<String, (u64, Instant)>,
    /// The dedup entries by age, oldest first, so expiring them costs what expires.
    dedup_order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Stored {
    message: RawMessage,
    published: DateTime<Utc>,
    at: Instant,
}

#[derive(Debug)]
struct ConsumerState {
    spec: ConsumerSpec,
    /// The next stream sequence not yet delivered.
    next_sequence: u64,
    /// Unsettled deliveries: sequence -> (deliveries so far, when it may be delivered again).
    pending: BTreeMap<u64, (u64, Instant)>,
    /// For a pinned consumer, the instance ([`MemoryConsumer`]) that takes its messages.
    pinned: Option<u64>,
    /// [`AckState::created_after`].
    created_after: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    ttl: Duration,
    entries: HashMap<String, (Vec<u8>, Instant)>,
    /// Keys by expiry, soonest first (a key written again has a later entry too).
    expiry: VecDeque<(Instant, String)>,
}

impl ConsumerState {
    /// Its ack floor: just below the lowest unsettled delivery, or the last delivered.
    fn floor(&self) -> u64 {
        match self.pending.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.next_sequence.saturating_sub(1),
        }
    }
}

fn no_stream(name: &str) -> SubscribeError {
    SubscribeError::new(
        SubscribeErrorKind::NoStream,
        format!("stream {name} does not exist: provision the streams first"),
    )
}

impl MemoryTransport {
    /// An empty broker.
    pub fn new() -> Self {
        MemoryTransport::default()
    }

    /// Deletes the durable consumer `durable` of `stream`, as an operator could on a
    /// broker: its subscription's next fetch fails with
    /// [`ConsumeErrorKind::ConsumerDeleted`] (the bus re-creates it). Returns whether it
    /// existed. For tests of that path.
    pub fn delete_consumer(&self, stream: &str, durable: &str) -> bool {
        let removed = self
            .lock()
            .consumers
            .remove(&(stream.to_owned(), durable.to_owned()))
            .is_some();
        self.shared.changed.notify_waiters();
        removed
    }

    /// Makes the next fetch of any consumer panic, as a bug in a transport would, inside
    /// the subscription's task: the bus restarts the task. For tests of that path.
    pub fn panic_on_next_fetch(&self) {
        self.shared
            .panic_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        message.check_wire()?;
        let size = message.size();
        if size > MAX_PAYLOAD {
            return Err(PublishError::new(
                PublishErrorKind::Rejected,
                format!(
                    "a message of {size} bytes to {} exceeds the maximum payload of {MAX_PAYLOAD} bytes",
                    message.subject
                ),
            ));
        }
        let mut state = self.lock();
        let now = Instant::now();
        let Some(stream) = state.streams.values_mut().find(|s| {
            s.spec
                .subjects
                .iter()
                .any(|f| subject_matches(f, &message.subject))
        }) else {
            return Err(PublishError::new(
                PublishErrorKind::NoStream,
                format!("no stream captures subject {}", message.subject),
            ));
        };
        let window = stream.spec.duplicate_window;
        while let Some((at, _)) = stream.dedup_order.front()
            && now.duration_since(*at) >= window
        {
            if let Some((_, id)) = stream.dedup_order.pop_front()
                && stream
                    .dedup
                    .get(&id)
                    .is_some_and(|(_, t)| now.duration_since(*t) >= window)
            {
                stream.dedup.remove(&id);
            }
        }
        if let Some(id) = message.message_id()
            && let Some((sequence, _)) = stream.dedup.get(id)
        {
            return Ok(PublishAck {
                stream: stream.spec.name.clone(),
                sequence: *sequence,
                duplicate: true,
            });
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        if let Some(id) = message.message_id() {
            stream.dedup.insert(id.to_owned(), (sequence, now));
            stream.dedup_order.push_back((now, id.to_owned()));
        }
        stream.messages.insert(
            sequence,
            Stored {
                message,
                published: Utc::now(),
                at: now,
            },
        );
        let max_age = stream.spec.max_age;
        while let Some((&first, stored)) = stream.messages.first_key_value() {
            if now.duration_since(stored.at) <= max_age {
                break;
            }
            stream.messages.remove(&first);
        }
        let ack = PublishAck {
            stream: stream.spec.name.clone(),
            sequence,
            duplicate: false,
        };
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(ack)
    }

    fn settle(&self, key: &(String, String), sequence: u64, outcome: Settle) {
        let mut state = self.lock();
        if let Some(consumer) = state.consumers.get_mut(key) {
            match outcome {
                Settle::Done => {
                    consumer.pending.remove(&sequence);
                }
                Settle::RetryAfter(delay) => {
                    if let Some(entry) = consumer.pending.get_mut(&sequence) {
                        entry.1 = Instant::now() + delay;
                    }
                }
                Settle::Working => {
                    let wait = consumer.spec.ack_wait;
                    if let Some(entry) = consumer.pending.get_mut(&sequence) {
                        entry.1 = Instant::now() + wait;
                    }
                }
            }
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// The next delivery for a consumer's instance `instance`, with whether it just took
    /// the pin, or when to look again.
    fn take(
        &self,
        key: &(String, String),
        instance: u64,
    ) -> Result<Result<(MemoryDelivery, bool), Option<Instant>>, ConsumeError> {
        let mut guard = self.lock();
        let State {
            streams, consumers, ..
        } = &mut *guard;
        let Some(consumer) = consumers.get_mut(key) else {
            return Err(ConsumeError::new(
                ConsumeErrorKind::ConsumerDeleted,
                format!("consumer {} is gone", key.1),
            ));
        };
        let Some(stream) = streams.get(&key.0) else {
            return Err(ConsumeError::new(
                ConsumeErrorKind::ConsumerDeleted,
                format!("stream {} is gone", key.0),
            ));
        };
        // A pinned consumer delivers to one instance; the others wait until it is gone.
        if consumer.spec.pinned && consumer.pinned.is_some_and(|p| p != instance) {
            return Ok(Err(None));
        }
        let now = Instant::now();
        let spec = &consumer.spec;
        // As JetStream: after its last delivery's ack wait (or a nak), a message that had
        // `max_deliver` deliveries (when limited) is no longer pending and never delivered
        // again; deleted messages are dropped too.
        let max_deliver = spec.max_deliver.map_or(u64::MAX, |m| u64::from(m.max(1)));
        consumer.pending.retain(|seq, (count, at)| {
            stream.messages.contains_key(seq) && !(*count >= max_deliver && *at <= now)
        });
        // Redeliveries first: the oldest sequence whose time has come.
        let due = consumer
            .pending
            .iter()
            .find(|(seq, (_, at))| *at <= now && stream.messages.contains_key(seq))
            .map(|(seq, _)| *seq);
        let mut chosen = due;
        if chosen.is_none() && consumer.pending.len() < spec.max_ack_pending.max(1) as usize {
            chosen = stream
                .messages
                .range(consumer.next_sequence..)
                .find(|(_, m)| {
                    spec.filter_subjects.is_empty()
                        || spec
                            .filter_subjects
                            .iter()
                            .any(|f| subject_matches(f, &m.message.subject))
                })
                .map(|(seq, _)| *seq);
            if let Some(seq) = chosen {
                consumer.next_sequence = seq + 1;
            } else if let Some((&last, _)) = stream.messages.last_key_value() {
                consumer.next_sequence = consumer.next_sequence.max(last + 1);
            }
        }
        let Some(seq) = chosen else {
            let wake = consumer.pending.values().map(|(_, at)| *at).min();
            return Ok(Err(wake));
        };
        let took_pin = spec.pinned && consumer.pinned.is_none();
        if took_pin {
            consumer.pinned = Some(instance);
        }
        let entry = consumer.pending.entry(seq).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now + spec.ack_wait;
        let attempt = entry.0;
        let stored = &stream.messages[&seq];
        let delivery = MemoryDelivery {
            transport: self.clone(),
            key: key.clone(),
            message: stored.message.clone(),
            info: DeliveryInfo {
                stream: Arc::from(key.0.as_str()),
                consumer: Arc::from(key.1.as_str()),
                stream_sequence: seq,
                attempt,
                delivered: attempt,
                published: stored.published,
            },
        };
        Ok(Ok((delivery, took_pin)))
    }
}

enum Settle {
    Done,
    RetryAfter(Duration),
    Working,
}

/// A delivery from the in-memory broker.
#[derive(Debug)]
pub struct MemoryDelivery {
    transport: MemoryTransport,
    key: (String, String),
    message: RawMessage,
    info: DeliveryInfo,
}

impl Delivery for MemoryDelivery {
    fn message(&self) -> &RawMessage {
        &self.message
    }
    fn info(&self) -> &DeliveryInfo {
        &self.info
    }
    async fn ack(&self) -> Result<(), AckError> {
        self.transport
            .settle(&self.key, self.info.stream_sequence, Settle::Done);
        Ok(())
    }
    async fn nak(&self, delay: Duration) -> Result<(), AckError> {
        self.transport.settle(
            &self.key,
            self.info.stream_sequence,
            Settle::RetryAfter(delay),
        );
        Ok(())
    }
    async fn term(&self) -> Result<(), AckError> {
        self.transport
            .settle(&self.key, self.info.stream_sequence, Settle::Done);
        Ok(())
    }
    async fn progress(&self) -> Result<(), AckError> {
        self.transport
            .settle(&self.key, self.info.stream_sequence, Settle::Working);
        Ok(())
    }
}

/// A durable consumer of the in-memory broker.
#[derive(Debug)]
pub struct MemoryConsumer {
    transport: MemoryTransport,
    key: (String, String),
    /// This instance, for a pinned consumer's pin.
    instance: u64,
    /// Whether the last delivery was the first since this instance took the pin.
    took_pin: bool,
}

impl MemoryConsumer {
    /// Gives up the pin, if this instance holds it.
    fn unpin(&self) {
        let mut state = self.transport.lock();
        if let Some(consumer) = state.consumers.get_mut(&self.key)
            && consumer.pinned == Some(self.instance)
        {
            consumer.pinned = None;
        }
        drop(state);
        self.transport.shared.changed.notify_waiters();
    }
}

/// An instance that is gone (a crash drops it) stops holding the pin.
impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.unpin();
    }
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    async fn next(&mut self, room: usize) -> Option<Result<MemoryDelivery, ConsumeError>> {
        if room == 0 {
            // Nothing is pulled ahead here: with no room there is nothing to wait for.
            return std::future::pending().await;
        }
        loop {
            let shared = Arc::clone(&self.transport.shared);
            let changed = shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            // Read first: the common path writes nothing shared.
            if shared.panic_next.load(std::sync::atomic::Ordering::Relaxed)
                && shared
                    .panic_next
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("a fault injected into the in-memory transport's fetch");
            }
            match self.transport.take(&self.key, self.instance) {
                Err(e) => return Some(Err(e)),
                Ok(Ok((delivery, took_pin))) => {
                    self.took_pin = took_pin;
                    return Some(Ok(delivery));
                }
                Ok(Err(Some(wake))) => {
                    let _ = tokio::time::timeout_at(wake, &mut changed).await;
                }
                Ok(Err(None)) => changed.await,
            }
        }
    }

    fn ack_state(&self) -> impl Future<Output = Option<AckState>> + Send + 'static {
        let state = self.transport.lock();
        let state = state.consumers.get(&self.key).map(|c| {
            let floor = c.floor();
            let waiting = state.streams.get(&c.spec.stream).map_or(0, |stream| {
                stream
                    .messages
                    .range(c.next_sequence..)
                    .filter(|(_, m)| {
                        c.spec.filter_subjects.is_empty()
                            || c.spec
                                .filter_subjects
                                .iter()
                                .any(|f| subject_matches(f, &m.message.subject))
                    })
                    .count() as u64
            });
            // An in-memory broker loses no connection.
            AckState {
                floor,
                epoch: 0,
                pending: c.pending.len() as u64,
                waiting,
                created_after: c.created_after,
            }
        });
        std::future::ready(state)
    }

    fn pin_changed(&mut self) -> Option<bool> {
        std::mem::take(&mut self.took_pin).then_some(true)
    }

    async fn release(&mut self) {
        self.unpin();
    }
}

/// The in-memory inbox.
#[derive(Clone, Debug)]
pub struct MemoryInbox {
    transport: MemoryTransport,
    bucket: String,
}

impl MemoryInbox {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut state = self.transport.lock();
        let bucket = state.buckets.get_mut(&self.bucket)?;
        let now = Instant::now();
        while let Some((expires, _)) = bucket.expiry.front()
            && *expires <= now
        {
            if let Some((_, key)) = bucket.expiry.pop_front()
                && bucket.entries.get(&key).is_some_and(|(_, e)| *e <= now)
            {
                bucket.entries.remove(&key);
            }
        }
        bucket.entries.get(key).map(|(v, _)| v.clone())
    }

    fn put(&self, key: &str, value: Vec<u8>) {
        let mut state = self.transport.lock();
        if let Some(bucket) = state.buckets.get_mut(&self.bucket) {
            let expires = Instant::now() + bucket.ttl;
            bucket.entries.insert(key.to_owned(), (value, expires));
            bucket.expiry.push_back((expires, key.to_owned()));
        }
    }
}

impl Inbox for MemoryInbox {
    async fn is_done(&self, key: &str) -> Result<bool, InboxError> {
        Ok(self.get(&format!("done.{key}")).is_some())
    }
    async fn mark_done(&self, key: &str) -> Result<(), InboxError> {
        self.put(&format!("done.{key}"), b"1".to_vec());
        Ok(())
    }
    async fn record_attempt(&self, key: &str, attempt: Attempt) -> Result<(), InboxError> {
        let mut history = self.attempts(key).await?;
        history.push(attempt);
        self.put(
            &format!("attempts.{key}"),
            serde_json::to_vec(&history).unwrap_or_default(),
        );
        Ok(())
    }
    async fn attempts(&self, key: &str) -> Result<Vec<Attempt>, InboxError> {
        Ok(self
            .get(&format!("attempts.{key}"))
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }
    async fn forget(&self, key: &str) -> Result<(), InboxError> {
        let mut state = self.transport.lock();
        if let Some(bucket) = state.buckets.get_mut(&self.bucket) {
            bucket.entries.remove(&format!("attempts.{key}"));
        }
        Ok(())
    }
    async fn holds_records(&self) -> Result<bool, InboxError> {
        let state = self.transport.lock();
        Ok(state
            .buckets
            .get(&self.bucket)
            .is_some_and(|b| !b.entries.is_empty()))
    }
}

impl Transport for MemoryTransport {
    type Consumer = MemoryConsumer;
    type Inbox = MemoryInbox;

    async fn publish(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        self.store(message)
    }

    async fn publish_pipelined(&self, message: RawMessage) -> Result<PendingAck, PublishError> {
        Ok(PendingAck::ready(self.store(message)))
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<Provisioned, ProvisionError> {
        let mut state = self.lock();
        if let Some(existing) = state.streams.get(&spec.name) {
            return Ok(Provisioned {
                stream: spec.name.clone(),
                created: false,
                drift: drift(&existing.spec, spec),
            });
        }
        state.streams.insert(
            spec.name.clone(),
            Stream {
                spec: spec.clone(),
                messages: BTreeMap::new(),
                last_sequence: 0,
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
            },
        );
        Ok(Provisioned {
            stream: spec.name.clone(),
            created: true,
            drift: Vec::new(),
        })
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<MemoryConsumer, SubscribeError> {
        let mut state = self.lock();
        let Some(stream) = state.streams.get(&spec.stream) else {
            return Err(no_stream(&spec.stream));
        };
        let first = stream
            .messages
            .first_key_value()
            .map_or(stream.last_sequence + 1, |(s, _)| *s);
        // A start past the stream's end means the stream was made anew: all of it.
        let first = match spec.start_sequence {
            Some(start) if start <= stream.last_sequence + 1 => start.max(first),
            _ => first,
        };
        let created_after = if spec.handled_before {
            stream.last_sequence
        } else {
            0
        };
        let key = (spec.stream.clone(), spec.durable.clone());
        match state.consumers.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(mut existing) => {
                if existing.get().spec.pinned != spec.pinned {
                    return Err(spec.conflict(existing.get().spec.pinned));
                }
                existing.get_mut().spec = spec.clone();
            }
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(ConsumerState {
                    spec: spec.clone(),
                    next_sequence: first,
                    pending: BTreeMap::new(),
                    pinned: None,
                    created_after,
                });
            }
        }
        drop(state);
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(MemoryConsumer {
            transport: self.clone(),
            key,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            took_pin: false,
        })
    }

    async fn recreate_consumer(&self, spec: &ConsumerSpec) -> Result<(), SubscribeError> {
        let mut spec = spec.clone();
        spec.handled_before = true;
        let key = (spec.stream.clone(), spec.durable.clone());
        if let Some(old) = self.lock().consumers.remove(&key) {
            spec.start_sequence = Some(old.floor() + 1);
        }
        self.shared.changed.notify_waiters();
        self.consumer(&spec).await.map(drop)
    }

    async fn consumer_exists(&self, stream: &str, durable: &str) -> Result<bool, ConsumeError> {
        let key = (stream.to_owned(), durable.to_owned());
        Ok(self.lock().consumers.contains_key(&key))
    }

    async fn inbox(&self, name: &str, ttl: Duration) -> Result<MemoryInbox, SubscribeError> {
        let mut state = self.lock();
        let bucket = state.buckets.entry(name.to_owned()).or_default();
        bucket.ttl = ttl;
        Ok(MemoryInbox {
            transport: self.clone(),
            bucket: name.to_owned(),
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_sequence: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RawMessage, DateTime<Utc>)>, ConsumeError> {
        let state = self.lock();
        let Some(s) = state.streams.get(stream) else {
            return Err(ConsumeError::new(
                ConsumeErrorKind::Other,
                format!("no stream {stream}"),
            ));
        };
        Ok(s.messages
            .range(from_sequence..)
            .take(limit)
            .map(|(seq, m)| (*seq, m.message.clone(), m.published))
            .collect())
    }

    async fn stored(&self, stream: &str, filter: &str) -> Option<u64> {
        let state = self.lock();
        let s = state.streams.get(stream)?;
        Some(
            s.messages
                .values()
                .filter(|m| subject_matches(filter, &m.message.subject))
                .count() as u64,
        )
    }

    async fn delete_message(&self, stream: &str, sequence: u64) -> Result<bool, ConsumeError> {
        let mut state = self.lock();
        Ok(state
            .streams
            .get_mut(stream)
            .is_some_and(|s| s.messages.remove(&sequence).is_some()))
    }
}

/// How an existing stream differs from the expected one, one line per setting.
pub(crate) fn drift(actual: &StreamSpec, expected: &StreamSpec) -> Vec<String> {
    let mut out = Vec::new();
    if actual.subjects != expected.subjects {
        out.push(format!(
            "subjects are {:?}, expected {:?}",
            actual.subjects, expected.subjects
        ));
    }
    if actual.max_age != expected.max_age {
        out.push(format!(
            "max age is {:?}, expected {:?}",
            actual.max_age, expected.max_age
        ));
    }
    if actual.duplicate_window != expected.duplicate_window {
        out.push(format!(
            "duplicate window is {:?}, expected {:?}",
            actual.duplicate_window, expected.duplicate_window
        ));
    }
    if actual.replicas != expected.replicas {
        out.push(format!(
            "replicas are {}, expected {}",
            actual.replicas, expected.replicas
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("order.>", "order.created"));
        assert!(subject_matches("order.>", "order.cmd.confirm"));
        assert!(!subject_matches("order.>", "order"));
        assert!(subject_matches("order.*", "order.created"));
        assert!(!subject_matches("order.*", "order.cmd.confirm"));
        assert!(subject_matches("order.cmd.*", "order.cmd.confirm"));
        assert!(!subject_matches("order.created", "order.created.x"));
        assert!(!subject_matches("payment.>", "order.created"));
    }
}

//! The JetStream transport (async-nats): the production bus.
//!
//! ```no_run
//! use a4co_events::bus::nats::{Config, NatsBus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = NatsBus::connect(Config::new("nats://127.0.0.1:4222").name("order-service")).await?;
//! for report in bus.provision().await? {
//!     println!("{}: created={} drift={:?}", report.stream, report.created, report.drift);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The server must be nats-server 2.12 or newer (older ones silently ignore settings the
//! SDK relies on); [`NatsBus::connect`] refuses older ones.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, IntoHeaderName as _};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::future::IntoFuture as _;
use tokio::sync::broadcast;

use super::config::{ConsumerSpec, StreamSpec};
use super::error::{
    ConsumeError, ConsumeErrorKind, InboxError, InboxErrorKind, ProvisionError, ProvisionErrorKind,
    PublishError, PublishErrorKind, SubscribeError, SubscribeErrorKind,
};
use super::transport::{Attempt, Inbox, Transport};
use super::{Error, EventBus};
use crate::bus::{PendingAck, Provisioned, PublishAck, RawMessage};
use crate::headers::{Headers, known_name};

mod connect;
mod durable;
mod puller;

pub use connect::{Config, redact_url};
pub use puller::{NatsConsumer, NatsDelivery};

/// The bus on NATS JetStream.
pub type NatsBus = EventBus<NatsTransport>;

/// A KV bucket the SDK or a service keeps state in: see [`NatsTransport::key_value`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// The bucket's name (its stream is `KV_<name>`).
    pub name: String,
    /// What it holds, as monitoring shows it.
    pub description: String,
    /// Values kept per key (1: the latest only).
    pub history: i64,
    /// How long an entry lives after its last write; zero keeps it until deleted.
    pub max_age: Duration,
    /// Whether a write may set its own shorter lifetime (JetStream's per-message TTL, the
    /// `Nats-TTL` header). Turned on in an existing bucket that lacks it (it cannot be
    /// turned off).
    pub message_ttl: bool,
}

impl BucketSpec {
    /// A bucket keeping the latest value of each key, forever.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        BucketSpec {
            name: name.into(),
            description: description.into(),
            history: 1,
            max_age: Duration::ZERO,
            message_ttl: false,
        }
    }

    /// Entries expire `max_age` after their last write.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Writes may set their own lifetime (see [`BucketSpec::message_ttl`]).
    #[must_use]
    pub fn message_ttl(mut self) -> Self {
        self.message_ttl = true;
        self
    }
}

/// The oldest nats-server the SDK accepts.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 12);

/// Why connecting failed.
pub type ConnectError = Error<ConnectErrorKind>;

/// Why connecting failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// A URL or setting is invalid, or a file it names cannot be read; the message says
    /// which.
    InvalidConfig,
    /// The server refused the credentials (wrong, expired, revoked) or requires some; the
    /// message names the setting.
    Unauthorized,
    /// The TLS handshake failed: a server certificate not signed by the configured CA, or
    /// a client certificate missing, expired or not trusted; the message names the setting.
    Tls,
    /// No server answered.
    Unavailable,
    /// The server is older than 2.12 or has JetStream off.
    Unsupported,
}

impl std::fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectErrorKind::InvalidConfig => "invalid NATS config",
            ConnectErrorKind::Unauthorized => "NATS refused the credentials",
            ConnectErrorKind::Tls => "NATS TLS failed",
            ConnectErrorKind::Unavailable => "NATS unavailable",
            ConnectErrorKind::Unsupported => "unsupported NATS server",
        })
    }
}

/// The JetStream transport: a cheap `Clone` over one connection.
#[derive(Clone, Debug)]
pub struct NatsTransport {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Copies of every stream and bucket it creates.
    replicas: usize,
    /// Subjects the server refused a publish to (permission violations), as they come;
    /// `None` on a client the team built (its events are not ours to see).
    denied: Option<broadcast::Sender<Arc<str>>>,
}

impl NatsBus {
    /// Connects, checks the server (2.12 or newer, JetStream on), and returns the bus.
    /// Reconnects are automatic and unlimited afterwards.
    ///
    /// # Errors
    /// [`ConnectError`] saying what to fix and naming the setting.
    pub async fn connect(config: Config) -> Result<NatsBus, ConnectError> {
        let transport = NatsTransport::connect(config).await?;
        Ok(EventBus::new(transport))
    }
}

/// The subject of a server's "Permissions Violation for Publish to \"<subject>\"".
fn denied_subject(error: &str) -> Option<&str> {
    const PREFIX: &str = "permissions violation for publish to ";
    let head = error.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = error[PREFIX.len()..].trim();
    Some(rest.trim_matches('"'))
}

impl NatsTransport {
    /// See [`NatsBus::connect`].
    ///
    /// # Errors
    /// [`ConnectError`] saying what to fix and naming the setting.
    pub async fn connect(mut config: Config) -> Result<NatsTransport, ConnectError> {
        config.check_replicas()?;
        let (client, denied) = match config.client.take() {
            Some(client) => (client, None),
            None => {
                let (options, addrs) = config.options()?;
                let (denied, _) = broadcast::channel::<Arc<str>>(64);
                let sender = denied.clone();
                let options = options.event_callback(move |event| {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) =
                        &event
                        && let Some(subject) = denied_subject(e)
                    {
                        let _ = sender.send(Arc::from(subject));
                    }
                    async move {
                        match event {
                            async_nats::Event::Connected => tracing::info!("NATS connected"),
                            async_nats::Event::Disconnected => {
                                tracing::warn!("NATS disconnected; reconnecting");
                            }
                            other => tracing::info!(event = %other, "NATS event"),
                        }
                    }
                });
                let client = options
                    .connect(addrs)
                    .await
                    .map_err(|e| config.connect_failure(e))?;
                (client, Some(denied))
            }
        };
        let version = client.server_info().version;
        if !version_at_least(&version, MIN_SERVER_VERSION) {
            return Err(ConnectError::new(
                ConnectErrorKind::Unsupported,
                format!(
                    "nats-server {version} at {} is too old: a4co needs {}.{} or newer (older \
                     servers silently ignore KV TTLs, multi-filter consumers and schedules)",
                    config.shown_urls(),
                    MIN_SERVER_VERSION.0,
                    MIN_SERVER_VERSION.1
                ),
            ));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        if let Err(e) = js.query_account().await {
            return Err(ConnectError::new(
                ConnectErrorKind::Unsupported,
                format!(
                    "JetStream is not enabled for this account on {} (start nats-server with \
                     -js, or give the account JetStream limits)",
                    config.shown_urls()
                ),
            )
            .with_source(e));
        }
        Ok(NatsTransport {
            client,
            js,
            replicas: config.replicas,
            denied,
        })
    }

    /// How many copies of each stream and bucket this transport creates.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Opens the KV bucket `spec` names, creating it (file storage, this transport's
    /// [`replicas`](Self::replicas)) when missing. An existing bucket is used as it is; how
    /// it differs from `spec` (replicas, history, age, storage) is logged as a warning and
    /// returned in the report, never changed: an operator decides.
    ///
    /// # Errors
    /// [`ProvisionErrorKind::InvalidConfig`] when the servers cannot hold that many
    /// replicas; [`ProvisionErrorKind::Unavailable`] when JetStream does not answer.
    pub async fn key_value(
        &self,
        spec: &BucketSpec,
    ) -> Result<(kv::Store, Provisioned), ProvisionError> {
        let stream = format!("KV_{}", spec.name);
        match self.js.get_key_value(&spec.name).await {
            Ok(store) => {
                let c = &store
                    .status()
                    .await
                    .map_err(|e| {
                        ProvisionError::new(
                            ProvisionErrorKind::Unavailable,
                            format!("reading bucket {}", spec.name),
                        )
                        .with_source(e)
                    })?
                    .info
                    .config;
                let mut drift = Vec::new();
                let mut differs = |what: &str, actual: String, expected: String| {
                    if actual != expected {
                        drift.push(format!("{what} {actual}, expected {expected}"));
                    }
                };
                differs(
                    "replicas are",
                    c.num_replicas.to_string(),
                    self.replicas.to_string(),
                );
                differs(
                    "history is",
                    c.max_messages_per_subject.to_string(),
                    spec.history.to_string(),
                );
                differs(
                    "max age is",
                    format!("{:?}", c.max_age),
                    format!("{:?}", spec.max_age),
                );
                if c.storage != stream::StorageType::File {
                    drift.push(format!("storage is {:?}, expected file", c.storage));
                }
                for line in &drift {
                    tracing::warn!(bucket = %spec.name, drift = %line, "bucket differs from the expected settings");
                }
                if spec.message_ttl && !c.allow_message_ttl {
                    self.allow_message_ttl(&stream).await?;
                }
                Ok((
                    store,
                    Provisioned {
                        stream,
                        created: false,
                        drift,
                    },
                ))
            }
            Err(_) => {
                let store = self
                    .js
                    .create_key_value(kv::Config {
                        bucket: spec.name.clone(),
                        description: spec.description.clone(),
                        history: spec.history,
                        max_age: spec.max_age,
                        storage: stream::StorageType::File,
                        num_replicas: self.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        let kind = if e.to_string().contains("replicas") {
                            ProvisionErrorKind::InvalidConfig
                        } else {
                            ProvisionErrorKind::Unavailable
                        };
                        ProvisionError::new(
                            kind,
                            format!(
                                "creating bucket {} with {} replicas",
                                spec.name, self.replicas
                            ),
                        )
                        .with_source(e)
                    })?;
                if spec.message_ttl {
                    self.allow_message_ttl(&stream).await?;
                }
                Ok((
                    store,
                    Provisioned {
                        stream,
                        created: true,
                        drift: Vec::new(),
                    },
                ))
            }
        }
    }

    /// Lets writes to `stream` set their own lifetime (`Nats-TTL`).
    async fn allow_message_ttl(&self, stream: &str) -> Result<(), ProvisionError> {
        let failed = |e: &dyn std::fmt::Display| {
            ProvisionError::new(
                ProvisionErrorKind::Unavailable,
                format!("allowing per-message TTLs on {stream}: {e}"),
            )
        };
        let mut config = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| failed(&e))?
            .cached_info()
            .config
            .clone();
        if !config.allow_message_ttl {
            config.allow_message_ttl = true;
            self.js
                .update_stream(config)
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(())
    }

    /// The live keys of the KV bucket `store` that match one of the key patterns
    /// (`outbox.>`, `due.1700000000.>`; `*` and `>` as in subjects), sorted. One
    /// headers-only ordered consumer reads the last entry of each matching key, so the cost
    /// follows the matching keys (plus removal markers not yet expired), not the bucket's
    /// other keys or its history. A listing that does not end within `within` (a push
    /// consumer can lose its first message) fails; list again.
    ///
    /// # Errors
    /// [`ConsumeErrorKind::Other`] when the server refuses or the listing times out.
    pub async fn kv_keys(
        &self,
        store: &kv::Store,
        patterns: &[&str],
        within: Duration,
    ) -> Result<Vec<String>, ConsumeError> {
        let failed = |e: &dyn std::fmt::Display| {
            ConsumeError::new(
                ConsumeErrorKind::Other,
                format!("listing keys {patterns:?} of bucket {}: {e}", store.name),
            )
        };
        let listing = async {
            use futures::StreamExt as _;
            let consumer = store
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subjects: patterns
                        .iter()
                        .map(|p| format!("{}{p}", store.prefix))
                        .collect(),
                    headers_only: true,
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&e))?;
            let mut keys = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(keys);
            }
            let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| failed(&e))?;
                let removed = message.headers.as_ref().is_some_and(kv_removal);
                if !removed && let Some(key) = message.subject.as_str().strip_prefix(&store.prefix)
                {
                    keys.push(key.to_owned());
                }
                if message.info().map(|i| i.pending).unwrap_or(0) == 0 {
                    break;
                }
            }
            keys.sort();
            Ok(keys)
        };
        tokio::time::timeout(within, listing)
            .await
            .map_err(|_| failed(&format!("no end within {within:?}")))?
    }

    /// The value and revision of `key` in the KV bucket `store` as the stream's leader
    /// holds it (`None`: no value, or removed). Unlike a KV get, which any replica may
    /// answer, this reads what was last written: a decision taken on it (an instance's
    /// state, a record missing) is not taken on a stale copy in a cluster.
    ///
    /// # Errors
    /// [`ConsumeErrorKind::Other`] when the server does not answer.
    pub async fn kv_get(
        &self,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<(Bytes, u64)>, ConsumeError> {
        use jetstream::stream::LastRawMessageErrorKind;
        match store
            .stream
            .get_last_raw_message_by_subject(&format!("{}{key}", store.prefix))
            .await
        {
            Ok(message) => {
                Ok((!kv_removal(&message.headers)).then_some((message.payload, message.sequence)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ConsumeError::new(
                ConsumeErrorKind::Other,
                format!("reading {key} from bucket {}", store.name),
            )
            .with_source(e)),
        }
    }

    /// Compare-and-swap on a KV entry, the one every record store of the SDK goes through
    /// (`service::Records`, the saga store): writes `value` under `key` in the bucket
    /// `store` if the key is still at revision `expected`, and returns the new revision.
    /// `expected` `None` writes only a key that holds nothing (with `ttl` `None`, a
    /// removed key counts as nothing; with a `ttl`, not even a removal marker may be
    /// there). With `ttl`, the entry has its own lifetime: the server drops it `ttl` after
    /// this write (whole seconds, at least one) unless a later write replaces it, and the
    /// bucket must allow per-message TTLs ([`BucketSpec::message_ttl`]).
    ///
    /// # Errors
    /// [`PublishErrorKind::Conflict`] when the key is not at `expected` (someone wrote it
    /// since it was read: read again and retry); the other kinds as for a publish.
    pub async fn kv_swap(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<u64, PublishError> {
        let conflict = || {
            PublishError::new(
                PublishErrorKind::Conflict,
                format!("{key} changed since it was read"),
            )
        };
        let failed = |e: &dyn std::fmt::Display| {
            PublishError::new(
                PublishErrorKind::Other,
                format!("writing {key} in bucket {}: {e}", store.name),
            )
        };
        match (ttl, expected) {
            (Some(ttl), _) => self.kv_put_expiring(store, key, value, expected, ttl).await,
            (None, None) => store.create(key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    conflict()
                } else {
                    failed(&e)
                }
            }),
            (None, Some(revision)) => store.update(key, value, revision).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    conflict()
                } else {
                    failed(&e)
                }
            }),
        }
    }

    /// [`NatsTransport::kv_swap`] with a lifetime: a publish on the key's subject expecting
    /// its last sequence, with `Nats-TTL`.
    async fn kv_put_expiring(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
        ttl: Duration,
    ) -> Result<u64, PublishError> {
        let subject = format!(
            "{}{key}",
            store.put_prefix.as_deref().unwrap_or(&store.prefix)
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.unwrap_or(0).to_string(),
        );
        headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string());
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, value)
            .await
            .map_err(|e| to_publish_error(e, &subject))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(PublishError::new(
                    PublishErrorKind::Conflict,
                    format!("{key} changed since it was read"),
                ))
            }
            Err(e) => Err(to_publish_error(e, &subject)),
        }
    }

    /// The underlying client, for what the bus does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The async-nats JetStream context this transport publishes and consumes through,
    /// for what the bus does not wrap (KV buckets, stream administration).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn publish_message(message: RawMessage) -> Result<(String, PublishMessage), PublishError> {
        message.check_wire()?;
        let headers = to_header_map(message.headers);
        Ok((
            message.subject,
            PublishMessage::build()
                .payload(message.payload)
                .headers(headers),
        ))
    }
}

fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The headers as async-nats takes them: names of [`crate::headers::names`] as static
/// names, values moved. Only for headers that passed [`RawMessage::check_wire`]: async-nats
/// panics on the others.
fn to_header_map(headers: Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = match name {
            Cow::Borrowed(name) => HeaderName::from_static(name),
            Cow::Owned(name) => name.into_header_name(),
        };
        map.insert(name, HeaderValue::from(value));
    }
    map
}

fn from_header_map(map: Option<&HeaderMap>) -> Headers {
    let mut headers = Headers::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            if let Some(value) = values.first() {
                let name: &str = name.as_ref();
                let name =
                    known_name(name).map_or_else(|| Cow::Owned(name.to_owned()), Cow::Borrowed);
                headers.insert(name, value.as_str());
            }
        }
    }
    headers
}

/// `known` when `name` is it (always, in practice), else a new copy.
fn shared_name(known: &Arc<str>, name: &str) -> Arc<str> {
    if **known == *name {
        Arc::clone(known)
    } else {
        Arc::from(name)
    }
}

fn to_chrono(t: async_nats::datetime::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

/// Completes when the server refuses a publish to `subject`; never when it does not.
async fn refusal_of(mut denied: broadcast::Receiver<Arc<str>>, subject: &str) {
    loop {
        match denied.recv().await {
            Ok(refused) if *refused == *subject => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Whether a KV entry's headers mark a removal (a delete or purge marker), not a value.
fn kv_removal(headers: &HeaderMap) -> bool {
    headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() != "PUT")
}

fn publish_error(e: &jetstream::context::PublishError) -> PublishErrorKind {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => PublishErrorKind::NoStream,
        K::TimedOut => PublishErrorKind::Timeout,
        K::BrokenPipe => PublishErrorKind::ConnectionLost,
        K::WrongLastMessageId | K::WrongLastSequence | K::MaxPayloadExceeded => {
            PublishErrorKind::Rejected
        }
        _ => PublishErrorKind::Other,
    }
}

fn to_publish_error(e: jetstream::context::PublishError, subject: &str) -> PublishError {
    let kind = publish_error(&e);
    let message = match kind {
        PublishErrorKind::NoStream => {
            format!("no stream captures subject {subject}: provision the streams")
        }
        _ => format!("publishing to {subject}"),
    };
    PublishError::new(kind, message).with_source(e)
}

impl Transport for NatsTransport {
    type Consumer = NatsConsumer;
    type Inbox = NatsInbox;

    fn replicas(&self) -> usize {
        self.replicas
    }

    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    async fn publish(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        self.publish_pipelined(message).await?.await
    }

    async fn publish_pipelined(&self, message: RawMessage) -> Result<PendingAck, PublishError> {
        let (subject, publish) = Self::publish_message(message)?;
        // Listen before sending: the refusal may come before the send returns.
        let denied = self.denied.as_ref().map(broadcast::Sender::subscribe);
        let future = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| to_publish_error(e, &subject))?;
        Ok(PendingAck::new(async move {
            let ack = match denied {
                None => future.await,
                Some(denied) => {
                    let ack = std::pin::pin!(future.into_future());
                    let refused = std::pin::pin!(refusal_of(denied, &subject));
                    match futures::future::select(ack, refused).await {
                        futures::future::Either::Left((ack, _)) => ack,
                        futures::future::Either::Right(((), _)) => {
                            return Err(PublishError::new(
                                PublishErrorKind::PermissionDenied,
                                format!(
                                    "the server does not allow this connection's user to \
                                     publish to {subject}: grant it, or publish elsewhere"
                                ),
                            ));
                        }
                    }
                }
            };
            let ack = ack.map_err(|e| to_publish_error(e, &subject))?;
            Ok(PublishAck {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }))
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<Provisioned, ProvisionError> {
        let wanted = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            max_age: spec.max_age,
            duplicate_window: spec.duplicate_window,
            num_replicas: spec.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        match self.js.get_stream(&spec.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| {
                    ProvisionError::new(
                        ProvisionErrorKind::Unavailable,
                        format!("reading stream {}", spec.name),
                    )
                    .with_source(e)
                })?;
                let c = &info.config;
                let actual = StreamSpec {
                    name: c.name.clone(),
                    subjects: c.subjects.clone(),
                    max_age: c.max_age,
                    duplicate_window: c.duplicate_window,
                    replicas: c.num_replicas,
                };
                let mut drift = super::memory::drift(&actual, spec);
                if c.storage != stream::StorageType::File {
                    drift.push(format!("storage is {:?}, expected file", c.storage));
                }
                if c.retention != stream::RetentionPolicy::Limits {
                    drift.push(format!("retention is {:?}, expected limits", c.retention));
                }
                Ok(Provisioned {
                    stream: spec.name.clone(),
                    created: false,
                    drift,
                })
            }
            Err(_) => {
                self.js.create_stream(wanted).await.map_err(|e| {
                    let kind = if e.to_string().contains("replicas") {
                        ProvisionErrorKind::InvalidConfig
                    } else {
                        ProvisionErrorKind::Other
                    };
                    ProvisionError::new(kind, format!("creating stream {}", spec.name))
                        .with_source(e)
                })?;
                Ok(Provisioned {
                    stream: spec.name.clone(),
                    created: true,
                    drift: Vec::new(),
                })
            }
        }
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<NatsConsumer, SubscribeError> {
        let handle = durable::create_or_bind(&self.js, spec).await?;
        NatsConsumer::open(&self.js, &self.client, handle, spec)
            .await
            .map_err(|e| {
                SubscribeError::new(
                    SubscribeErrorKind::Unavailable,
                    format!("pulling from {}", spec.durable),
                )
                .with_source(e)
            })
    }

    async fn recreate_consumer(&self, spec: &ConsumerSpec) -> Result<(), SubscribeError> {
        durable::recreate(&self.js, spec).await
    }

    async fn consumer_exists(&self, stream: &str, durable: &str) -> Result<bool, ConsumeError> {
        durable::exists(&self.js, stream, durable).await
    }

    async fn inbox(&self, name: &str, ttl: Duration) -> Result<NatsInbox, SubscribeError> {
        let spec = BucketSpec::new(name, "a4co inbox: work done, by event id").max_age(ttl);
        let (store, _) = self.key_value(&spec).await.map_err(|e| {
            let kind = match e.kind() {
                ProvisionErrorKind::InvalidConfig => SubscribeErrorKind::InvalidConfig,
                _ => SubscribeErrorKind::Unavailable,
            };
            SubscribeError::new(kind, format!("opening inbox bucket {name}")).with_source(e)
        })?;
        Ok(NatsInbox {
            store,
            client: self.client.clone(),
            bucket: name.to_owned(),
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_sequence: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RawMessage, DateTime<Utc>)>, ConsumeError> {
        let unavailable = |e: Box<dyn std::error::Error + Send + Sync>| {
            ConsumeError::new(ConsumeErrorKind::Other, format!("reading stream {stream}"))
                .with_source(e)
        };
        let mut handle = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| unavailable(e.into()))?;
        let last = handle
            .info()
            .await
            .map_err(|e| unavailable(e.into()))?
            .state
            .last_sequence;
        let mut out = Vec::new();
        let mut seq = from_sequence.max(1);
        while seq <= last && out.len() < limit {
            // Deleted sequences answer "no message found": skip them.
            if let Ok(m) = handle.get_raw_message(seq).await {
                let message = RawMessage {
                    subject: m.subject.to_string(),
                    headers: from_header_map(Some(&m.headers)),
                    payload: m.payload,
                };
                out.push((seq, message, to_chrono(m.time)));
            }
            seq += 1;
        }
        Ok(out)
    }

    async fn stored(&self, stream: &str, filter: &str) -> Option<u64> {
        use futures::TryStreamExt as _;
        let handle = self.js.get_stream(stream).await.ok()?;
        let counts = handle.info_with_subjects(filter).await.ok()?;
        counts
            .try_fold(0_u64, |sum, (_, n)| async move { Ok(sum + n as u64) })
            .await
            .ok()
    }

    async fn delete_message(&self, stream: &str, sequence: u64) -> Result<bool, ConsumeError> {
        let handle = self.js.get_stream(stream).await.map_err(|e| {
            ConsumeError::new(ConsumeErrorKind::Other, format!("opening stream {stream}"))
                .with_source(e)
        })?;
        Ok(handle.delete_message(sequence).await.unwrap_or(false))
    }
}

/// The inbox on a JetStream KV bucket whose entries expire after its TTL.
#[derive(Clone)]
pub struct NatsInbox {
    store: kv::Store,
    client: async_nats::Client,
    bucket: String,
}

impl std::fmt::Debug for NatsInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsInbox").finish_non_exhaustive()
    }
}

impl NatsInbox {
    fn error(
        what: &str,
        key: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> InboxError {
        InboxError::new(InboxErrorKind::Unavailable, format!("{what} {key}")).with_source(e)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, InboxError> {
        self.store
            .get(key)
            .await
            .map_err(|e| Self::error("reading", key, e))
    }
}

impl Inbox for NatsInbox {
    async fn is_done(&self, key: &str) -> Result<bool, InboxError> {
        Ok(self.get(&format!("done.{key}")).await?.is_some())
    }
    async fn mark_done(&self, key: &str) -> Result<(), InboxError> {
        let key = format!("done.{key}");
        self.store
            .put(&key, Bytes::from_static(b"1"))
            .await
            .map(|_| ())
            .map_err(|e| Self::error("writing", &key, e))
    }
    async fn mark_done_pipelined(&self, key: &str) -> Result<(), InboxError> {
        // A KV put is a publish to `$KV.<bucket>.<key>`; a plain publish (no reply subject)
        // is stored the same, and neither side spends anything on an acknowledgement nobody
        // waits for.
        let subject = format!("$KV.{}.done.{key}", self.bucket);
        self.client
            .publish(subject, Bytes::from_static(b"1"))
            .await
            .map_err(|e| Self::error("writing", key, e))
    }
    async fn flush(&self) -> Result<(), InboxError> {
        self.client
            .flush()
            .await
            .map_err(|e| Self::error("flushing", &self.bucket, e))
    }
    async fn record_attempt(&self, key: &str, attempt: Attempt) -> Result<(), InboxError> {
        let mut history = self.attempts(key).await?;
        history.push(attempt);
        let key = format!("attempts.{key}");
        let value = Bytes::from(serde_json::to_vec(&history).unwrap_or_default());
        self.store
            .put(&key, value)
            .await
            .map(|_| ())
            .map_err(|e| Self::error("writing", &key, e))
    }
    async fn attempts(&self, key: &str) -> Result<Vec<Attempt>, InboxError> {
        Ok(self
            .get(&format!("attempts.{key}"))
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }
    async fn forget(&self, key: &str) -> Result<(), InboxError> {
        let key = format!("attempts.{key}");
        self.store
            .purge(&key)
            .await
            .map_err(|e| Self::error("purging", &key, e))
    }
    async fn holds_records(&self) -> Result<bool, InboxError> {
        // The bucket's state as it was opened (the subscription opens it just before).
        let status = self
            .store
            .status()
            .await
            .map_err(|e| Self::error("reading the state of", &self.bucket, e))?;
        Ok(status.values() > 0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_by_major_then_minor() {
        assert!(super::version_at_least("2.15.1", (2, 12)));
        assert!(super::version_at_least("v3.0.0", (2, 12)));
        assert!(!super::version_at_least("2.9.10", (2, 12)));
        assert!(!super::version_at_least("garbage", (2, 12)));
    }
}

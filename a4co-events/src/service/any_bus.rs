//! One bus type for a service that runs on NATS or in memory, chosen at start-up.

use crate::bus::nats::{self, NatsBus};
use crate::bus::{
    Handler, MemoryBus, PendingAck, PublishAck, PublishError, Publisher, RawMessage,
    SubscribeError, Subscriber, Subscription, SubscriptionHandle,
};
use crate::envelope::Envelope;
use crate::message::Payload;

use super::{StartError, StartErrorKind};

/// The in-memory bus (one process: a demo, tests) or NATS JetStream, as one
/// [`Publisher`] + [`Subscriber`]: a service's logic depends on those traits, and its
/// binary is built once for both modes.
///
/// ```
/// use a4co_events::service::AnyBus;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // No URL: a fresh in-memory bus with every stream provisioned.
/// let bus = AnyBus::connect(None, "inventory-service", 1).await?;
/// assert_eq!(bus.kind(), "memory");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub enum AnyBus {
    /// Every stream in this process's memory.
    Memory(MemoryBus),
    /// NATS JetStream (boxed: its handle is much larger than the in-memory one).
    Nats(Box<NatsBus>),
}

impl AnyBus {
    /// The bus the environment asks for: NATS as [`nats::Config::from_env`] reads it
    /// (`NATS_URL` with comma-separated seeds, credentials, TLS, `NATS_REPLICAS`) with
    /// every stream provisioned, or the in-memory bus when `NATS_URL` is unset or empty.
    /// `service` names the connection.
    ///
    /// # Errors
    /// [`StartErrorKind::InvalidConfig`] naming the variable that is wrong (a bad value,
    /// refused credentials, a TLS file or certificate); [`StartErrorKind::Unavailable`]
    /// when the server cannot be reached, is too old, or the streams cannot be created.
    /// No message holds a password, token or seed.
    pub async fn from_env(service: &str) -> Result<AnyBus, StartError> {
        let config = nats::Config::from_env().map_err(start_error("NATS"))?;
        AnyBus::open(config.map(|c| c.name(service))).await
    }

    /// NATS at `url` with every stream provisioned at `replicas`, or, without a URL, a
    /// fresh in-memory bus. Credentials in the URL (`nats://user:password@host`) are used.
    ///
    /// # Errors
    /// As [`AnyBus::from_env`], the message naming the URL instead of the variable.
    pub async fn connect(
        url: Option<&str>,
        service: &str,
        replicas: usize,
    ) -> Result<AnyBus, StartError> {
        let config = url.map(|url| nats::Config::new(url).name(service).replicas(replicas));
        AnyBus::open(config).await
    }

    /// NATS as `config` says, with every stream provisioned, or, with `None`, a fresh
    /// in-memory bus.
    ///
    /// # Errors
    /// As [`AnyBus::from_env`].
    pub async fn open(config: Option<nats::Config>) -> Result<AnyBus, StartError> {
        let Some(config) = config else {
            let bus = MemoryBus::provisioned().await.map_err(|e| {
                StartError::new(StartErrorKind::Unavailable, "the in-memory bus").with_source(e)
            })?;
            return Ok(AnyBus::Memory(bus));
        };
        let shown = config.shown_urls();
        let bus = NatsBus::connect(config)
            .await
            .map_err(start_error(&format!("NATS at {shown}")))?;
        bus.provision().await.map_err(|e| {
            let replicas = bus.transport().replicas();
            StartError::new(
                StartErrorKind::Unavailable,
                format!("provisioning the streams on {shown} ({replicas} replicas)"),
            )
            .with_source(e)
        })?;
        Ok(AnyBus::Nats(Box::new(bus)))
    }

    /// `memory` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyBus::Memory(_) => "memory",
            AnyBus::Nats(_) => "nats",
        }
    }

    /// Whether the bus can carry messages now; else what is wrong (for `/health`).
    ///
    /// # Errors
    /// The NATS connection is down (the client keeps reconnecting).
    pub fn check(&self) -> Result<(), String> {
        match self {
            AnyBus::Memory(_) => Ok(()),
            AnyBus::Nats(bus) => match bus.transport().client().connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("NATS connection {other}")),
            },
        }
    }
}

/// A connect error as a start error: a setting to fix, or a server that is not there.
fn start_error(what: &str) -> impl FnOnce(nats::ConnectError) -> StartError + '_ {
    move |e| {
        let kind = match e.kind() {
            nats::ConnectErrorKind::InvalidConfig
            | nats::ConnectErrorKind::Unauthorized
            | nats::ConnectErrorKind::Tls => StartErrorKind::InvalidConfig,
            _ => StartErrorKind::Unavailable,
        };
        StartError::new(kind, what.to_owned()).with_source(e)
    }
}

impl From<MemoryBus> for AnyBus {
    fn from(bus: MemoryBus) -> Self {
        AnyBus::Memory(bus)
    }
}

impl From<NatsBus> for AnyBus {
    fn from(bus: NatsBus) -> Self {
        AnyBus::Nats(Box::new(bus))
    }
}

impl Publisher for AnyBus {
    async fn publish<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PublishAck, PublishError> {
        match self {
            AnyBus::Memory(bus) => bus.publish(envelope).await,
            AnyBus::Nats(bus) => bus.publish(envelope).await,
        }
    }

    async fn publish_pipelined<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PendingAck, PublishError> {
        match self {
            AnyBus::Memory(bus) => bus.publish_pipelined(envelope).await,
            AnyBus::Nats(bus) => bus.publish_pipelined(envelope).await,
        }
    }

    async fn publish_raw(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        match self {
            AnyBus::Memory(bus) => bus.publish_raw(message).await,
            AnyBus::Nats(bus) => bus.publish_raw(message).await,
        }
    }
}

impl Subscriber for AnyBus {
    async fn subscribe<H: Handler>(
        &self,
        subscription: Subscription,
        handler: H,
    ) -> Result<SubscriptionHandle, SubscribeError> {
        match self {
            AnyBus::Memory(bus) => bus.subscribe(subscription, handler).await,
            AnyBus::Nats(bus) => bus.subscribe(subscription, handler).await,
        }
    }
}

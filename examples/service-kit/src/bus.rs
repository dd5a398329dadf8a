//! One bus type for a service that runs on NATS or in memory, chosen at start-up.
//!
//! The services' logic depends on the SDK's [`Publisher`] and [`Subscriber`] traits only;
//! [`Bus`] implements both by handing each call to the bus it holds, so a binary is built
//! once for both modes.

use a4co_events::bus::nats::{self, NatsBus};
use a4co_events::bus::{
    Handler, MemoryBus, PendingAck, PublishAck, PublishError, Publisher, RawMessage,
    SubscribeError, Subscriber, Subscription, SubscriptionHandle,
};
use a4co_events::{Envelope, Payload};

use crate::config::ConfigError;

/// The in-memory bus (one process: the demo, tests) or NATS JetStream.
#[derive(Clone, Debug)]
pub enum Bus {
    /// Every stream in this process's memory.
    Memory(MemoryBus),
    /// NATS JetStream (boxed: its handle is much larger than the in-memory one).
    Nats(Box<NatsBus>),
}

impl Bus {
    /// NATS at `url` (comma-separated seeds) with every stream provisioned (1 replica, or
    /// `NATS_REPLICAS`), or, without a URL, a fresh in-memory bus.
    ///
    /// # Errors
    /// The server is unreachable, too old, or the streams cannot be created: the message
    /// says which.
    pub async fn connect(url: Option<&str>, service: &str) -> Result<Bus, ConfigError> {
        let Some(url) = url else {
            let bus = MemoryBus::provisioned()
                .await
                .map_err(|e| ConfigError::new(format!("in-memory bus: {e}")))?;
            return Ok(Bus::Memory(bus));
        };
        let bus = NatsBus::connect(nats::Config::new(url).name(service))
            .await
            .map_err(|e| ConfigError::new(format!("NATS_URL={url:?}: {e}")))?;
        bus.provision(1)
            .await
            .map_err(|e| ConfigError::new(format!("provisioning the streams on {url}: {e}")))?;
        Ok(Bus::Nats(Box::new(bus)))
    }

    /// `memory` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Bus::Memory(_) => "memory",
            Bus::Nats(_) => "nats",
        }
    }

    /// Whether the bus can carry messages now; else what is wrong.
    ///
    /// # Errors
    /// The NATS connection is down (the client keeps reconnecting).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Nats(bus) => match bus.transport().client().connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("NATS connection {other}")),
            },
        }
    }
}

impl From<MemoryBus> for Bus {
    fn from(bus: MemoryBus) -> Self {
        Bus::Memory(bus)
    }
}

impl From<NatsBus> for Bus {
    fn from(bus: NatsBus) -> Self {
        Bus::Nats(Box::new(bus))
    }
}

impl Publisher for Bus {
    async fn publish<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PublishAck, PublishError> {
        match self {
            Bus::Memory(bus) => bus.publish(envelope).await,
            Bus::Nats(bus) => bus.publish(envelope).await,
        }
    }

    async fn publish_pipelined<P: Payload>(
        &self,
        envelope: &Envelope<P>,
    ) -> Result<PendingAck, PublishError> {
        match self {
            Bus::Memory(bus) => bus.publish_pipelined(envelope).await,
            Bus::Nats(bus) => bus.publish_pipelined(envelope).await,
        }
    }

    async fn publish_raw(&self, message: RawMessage) -> Result<PublishAck, PublishError> {
        match self {
            Bus::Memory(bus) => bus.publish_raw(message).await,
            Bus::Nats(bus) => bus.publish_raw(message).await,
        }
    }
}

impl Subscriber for Bus {
    async fn subscribe<H: Handler>(
        &self,
        subscription: Subscription,
        handler: H,
    ) -> Result<SubscriptionHandle, SubscribeError> {
        match self {
            Bus::Memory(bus) => bus.subscribe(subscription, handler).await,
            Bus::Nats(bus) => bus.subscribe(subscription, handler).await,
        }
    }
}

/// The answer to `cause` (a command, or an event a service reacts to): caused by it, with
/// an id derived from its id and `step`, so handling a redelivery again publishes the same
/// id and the broker stores the answer once.
pub fn reply_to<P, T: Payload>(
    cause: &Envelope<P>,
    source: &str,
    aggregate: impl Into<String>,
    data: T,
    step: &str,
) -> Envelope<T> {
    Envelope::caused_by(cause, source, aggregate, data).with_event_id(
        a4co_events::EventId::deterministic(&cause.event_id.to_string(), step),
    )
}

impl From<crate::records::RecordsError> for a4co_events::bus::HandlerError {
    /// A record that cannot be read or a key that cannot exist will not heal (dead letter);
    /// a store that is down or a race lost many times may (retry).
    fn from(error: crate::records::RecordsError) -> Self {
        use crate::records::RecordsError as E;
        match error {
            E::InvalidKey(_) | E::Corrupt { .. } => {
                a4co_events::bus::HandlerError::permanent(error)
            }
            E::Conflict(_) | E::Unavailable(_) => a4co_events::bus::HandlerError::retryable(error),
        }
    }
}

//! The saga store that goes with a service's bus: in memory beside the in-memory bus, the
//! JetStream KV buckets beside NATS.

use std::time::Duration;

use a4co_events::service::AnyBus;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::nats::KvStore;
use crate::store::{Due, Index, MemoryStore, SetAside, Store, Stored};

/// A [`MemoryStore`] or a [`KvStore`], chosen by the bus a service runs on
/// ([`AnyStore::for_bus`]), as one [`Store`]: a service's saga is built once for both.
///
/// ```
/// use std::time::Duration;
///
/// use a4co_events::service::AnyBus;
/// use a4co_saga::AnyStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = AnyBus::connect(None, "order-service", 1).await?;
/// let store = AnyStore::for_bus(&bus, Duration::from_secs(7 * 24 * 3600)).await?;
/// assert!(matches!(store, AnyStore::Memory(_)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// Instances in this process's memory (beside [`AnyBus::Memory`]).
    Memory(MemoryStore),
    /// Instances in the JetStream KV buckets (beside [`AnyBus::Nats`]; boxed: its handle
    /// is much larger than the in-memory one).
    Kv(Box<KvStore>),
}

impl AnyStore {
    /// The store for `bus`, keeping a finished instance `finished_retention` after it
    /// finished: a [`MemoryStore`] on the in-memory bus, the [`KvStore`] buckets (with the
    /// bus's replicas) on NATS.
    ///
    /// # Errors
    /// [`StoreError::InvalidConfig`] for a retention under a second on NATS;
    /// [`StoreError::Unavailable`] when the buckets cannot be opened or created.
    pub async fn for_bus(bus: &AnyBus, finished_retention: Duration) -> Result<Self, StoreError> {
        match bus {
            AnyBus::Memory(_) => Ok(AnyStore::Memory(
                MemoryStore::new().retain_finished(finished_retention),
            )),
            AnyBus::Nats(nats) => KvStore::open(nats.transport())
                .await?
                .retain_finished(finished_retention)
                .map(|store| AnyStore::Kv(Box::new(store))),
        }
    }
}

macro_rules! both {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => $call.await,
            AnyStore::Kv($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        both!(self, store => store.load(key))
    }

    async fn save(
        &self,
        key: &str,
        record: Bytes,
        expected: Option<u64>,
        index: Index,
    ) -> Result<u64, StoreError> {
        both!(self, store => store.save(key, record, expected, index))
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Due>, StoreError> {
        both!(self, store => store.due(now))
    }

    async fn fired(&self, due: &Due, next: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        both!(self, store => store.fired(due, next))
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        both!(self, store => store.pending())
    }

    async fn put_aside(&self, aside: SetAside) -> Result<bool, StoreError> {
        both!(self, store => store.put_aside(aside))
    }

    async fn set_aside(&self) -> Result<Vec<SetAside>, StoreError> {
        both!(self, store => store.set_aside())
    }

    async fn records(&self) -> Result<Vec<Bytes>, StoreError> {
        both!(self, store => store.records())
    }

    async fn waiting(&self, saga: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        both!(self, store => store.waiting(saga))
    }
}

//! Where instances live: a store with optimistic concurrency. [`MemoryStore`] here;
//! [`crate::nats::KvStore`] on JetStream with the `nats` feature.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::StoreError;

/// A stored record and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The record (JSON).
    pub record: Bytes,
    /// Its revision: pass it back to [`Store::save`] to update it.
    pub revision: u64,
}

/// What the runtime needs to find instances without reading them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// When the instance's earliest timer runs out.
    pub next_timer: Option<DateTime<Utc>>,
    /// A time to add an index entry for, because no entry at or before the earliest
    /// timer is known to exist (a store that indexes by entries writes one before the
    /// save; an exact index like [`MemoryStore`]'s uses `next_timer`). Between, a stale
    /// earlier entry stands for the later timer: the runtime visits at the stale time,
    /// finds nothing due, and indexes the real one then.
    pub new_entry: Option<DateTime<Utc>>,
    /// Whether its outbox holds messages not yet published.
    pub pending: bool,
    /// Whether it is finished: a store keeps it for its finished-instance retention, then
    /// drops it.
    pub finished: bool,
    /// The state it waits in (`None`: finished), for the store's index of waiting
    /// instances ([`Store::waiting`]).
    pub waiting: Option<&'static str>,
    /// The state that index last holds it in, as the record saved before says (`None`:
    /// none, a new instance, a finished one, or one saved before the index existed). A
    /// store that indexes by entries writes one only when this differs from
    /// [`Index::waiting`]: the new entry with the save, the old one dropped after it.
    pub was_waiting: Option<&'static str>,
}

/// An instance with a timer due, as [`Store::due`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The instance's key (`order-fulfillment/ord-1`), for [`Store::load`].
    pub key: String,
    /// The store's index entries that named it, to drop in [`Store::fired`].
    pub entries: Vec<String>,
}

/// A record set aside because it cannot be read: kept as it is for repair, no longer
/// visited by timers; a message for it is dead-lettered with the reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetAside {
    /// The instance's key (`order-fulfillment/ord-1`).
    pub key: String,
    /// Why it cannot be read.
    pub reason: String,
    /// When it was set aside.
    #[serde(
        serialize_with = "a4co_events::time::utc",
        deserialize_with = "a4co_events::time::de_utc"
    )]
    pub at: DateTime<Utc>,
}

/// Instances keyed by `<saga>/<correlation id>`, saved with compare-and-swap.
pub trait Store: Clone + Send + Sync + 'static {
    /// The instance under `key`, if any.
    fn load(&self, key: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;

    /// Saves `record` under `key` if its revision is still `expected` (`None`: only if
    /// there is none yet) and returns the new revision.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when someone saved it since.
    fn save(
        &self,
        key: &str,
        record: Bytes,
        expected: Option<u64>,
        index: Index,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The instances with a timer due at `now`. May name instances whose timer was
    /// cancelled or already fired (the runtime finds nothing due and calls
    /// [`Store::fired`]); never misses one.
    fn due(&self, now: DateTime<Utc>) -> impl Future<Output = Result<Vec<Due>, StoreError>> + Send;

    /// The runtime handled the timers `due` listed: their index entries may go, and `next`
    /// (the instance's earliest timer left, if any) must stay findable. (The in-memory
    /// index is exact and needs nothing.)
    fn fired(
        &self,
        due: &Due,
        next: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (due, next);
        async { Ok(()) }
    }

    /// The keys of instances with unpublished messages. A full listing on stores without
    /// an index of them ([`crate::nats::KvStore`]): for recovery tools, not for start-up.
    fn pending(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Notes that the record under `key` cannot be read (`aside.reason`): it stays as it is,
    /// and [`Store::set_aside`] lists it. Idempotent: returns whether the note is new.
    fn put_aside(&self, aside: SetAside) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The records set aside, by key.
    fn set_aside(&self) -> impl Future<Output = Result<Vec<SetAside>, StoreError>> + Send;

    /// Every instance record stored now, finished ones included: a full read, which
    /// [`crate::Runtime::census`] falls back to for a store without an index of waiting
    /// instances ([`Store::waiting`]). A store that cannot list returns none.
    fn records(&self) -> impl Future<Output = Result<Vec<Bytes>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// The instances of `saga` that wait, as `(key, state)` pairs from the store's index of
    /// them ([`Index::waiting`]): what [`crate::Runtime::census`] reads, so its cost
    /// follows the instances under way, never the finished ones. A key listed under two
    /// states (a save that lost a race after indexing its new state) is decided by its
    /// record. `None` from a store without such an index.
    fn waiting(
        &self,
        saga: &str,
    ) -> impl Future<Output = Result<Option<Vec<(String, String)>>, StoreError>> + Send {
        let _ = saga;
        async { Ok(None) }
    }
}

#[derive(Debug)]
struct Entry {
    record: Bytes,
    revision: u64,
    index: Index,
    /// When it was saved finished.
    finished: Option<std::time::Instant>,
}

/// Instances in memory, for tests and the demo. Clones share the instances, so a
/// "restarted" runtime given a clone finds them (as it would on JetStream).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    aside: Arc<Mutex<std::collections::BTreeMap<String, SetAside>>>,
    finished_retention: Option<std::time::Duration>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Drops a finished instance `retention` after it finished (checked as the runtime
    /// looks for due timers); by default finished instances stay.
    #[must_use]
    pub fn retain_finished(mut self, retention: std::time::Duration) -> Self {
        self.finished_retention = Some(retention);
        self
    }

    /// How many instances it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.lock().get(key).map(|e| Stored {
            record: e.record.clone(),
            revision: e.revision,
        }))
    }

    async fn save(
        &self,
        key: &str,
        record: Bytes,
        expected: Option<u64>,
        index: Index,
    ) -> Result<u64, StoreError> {
        let mut entries = self.lock();
        let current = entries.get(key).map(|e| e.revision);
        if current != expected {
            return Err(StoreError::Conflict(key.to_owned()));
        }
        let revision = current.unwrap_or(0) + 1;
        entries.insert(
            key.to_owned(),
            Entry {
                record,
                revision,
                index,
                finished: index.finished.then(std::time::Instant::now),
            },
        );
        Ok(revision)
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Due>, StoreError> {
        let mut entries = self.lock();
        if let Some(retention) = self.finished_retention {
            entries.retain(|_, e| e.finished.is_none_or(|at| at.elapsed() < retention));
        }
        let mut due: Vec<Due> = entries
            .iter()
            .filter(|(_, e)| e.index.next_timer.is_some_and(|t| t <= now))
            .map(|(k, _)| Due {
                key: k.clone(),
                entries: Vec::new(),
            })
            .collect();
        due.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(due)
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.index.pending)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn put_aside(&self, aside: SetAside) -> Result<bool, StoreError> {
        if let Some(entry) = self.lock().get_mut(&aside.key) {
            // Timers no longer visit it.
            entry.index.next_timer = None;
        }
        let mut noted = self.aside.lock().unwrap_or_else(PoisonError::into_inner);
        if noted.contains_key(&aside.key) {
            return Ok(false);
        }
        noted.insert(aside.key.clone(), aside);
        Ok(true)
    }

    async fn records(&self) -> Result<Vec<Bytes>, StoreError> {
        Ok(self.lock().values().map(|e| e.record.clone()).collect())
    }

    /// Exact: the state each instance was last saved in.
    async fn waiting(&self, saga: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let prefix = format!("{saga}/");
        Ok(Some(
            self.lock()
                .iter()
                .filter(|(key, _)| key.starts_with(&prefix))
                .filter_map(|(key, e)| Some((key.clone(), e.index.waiting?.to_owned())))
                .collect(),
        ))
    }

    async fn set_aside(&self) -> Result<Vec<SetAside>, StoreError> {
        Ok(self
            .aside
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect())
    }
}

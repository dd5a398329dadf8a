//! A service's own state: JSON records under keys, each with a revision, written with
//! compare-and-swap. On NATS they live in a JetStream KV bucket (so every instance of the
//! service shares them and a restart finds them); in memory otherwise.
//!
//! A handler's [`RecordsError`] converts into a [`HandlerError`](crate::bus::HandlerError):
//! a bad key or unreadable record is permanent, a lost race or an unreachable store
//! retryable.
//!
//! [`Records::modify`] is the one way to change a record safely under concurrency: it reads,
//! lets a closure decide, writes only if nobody wrote since, and retries otherwise.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[cfg(feature = "nats")]
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "nats")]
use super::AnyBus;
#[cfg(feature = "nats")]
use crate::bus::nats::{BucketSpec, NatsTransport};

/// A record and the revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The record as stored at `revision`.
    pub value: T,
    /// Its revision: pass it back to write over exactly this version.
    pub revision: u64,
}

/// Reading or writing a record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Someone wrote the record since it was read (retry from the read).
    #[error("record {0:?} changed since it was read")]
    Conflict(String),
    /// The key has characters a KV key cannot hold.
    #[error("{0:?} is not a record key (letters, digits, - _ . = / only)")]
    InvalidKey(String),
    /// The stored bytes are not the record type (a bug, or another writer).
    #[error("record {key:?} is unreadable: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The store cannot be reached (retry later).
    #[error("records unavailable: {0}")]
    Unavailable(String),
}

/// A record in memory: its bytes, revision, and when it expires (if it does).
type MemoryEntry = (Bytes, u64, Option<Instant>);

#[derive(Clone, Debug)]
enum Inner {
    Memory(Arc<Mutex<BTreeMap<String, MemoryEntry>>>),
    #[cfg(feature = "nats")]
    Nats(Box<(kv::Store, NatsTransport)>),
}

/// JSON records with compare-and-swap; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Records {
    inner: Inner,
    /// Lifetimes by key prefix (see [`Records::expire`]).
    lifetimes: Arc<[(String, Duration)]>,
}

/// How many times [`Records::modify`] retries a write that lost a race.
const MAX_CONFLICTS: usize = 64;

/// How long one listing of keys may take on NATS.
#[cfg(feature = "nats")]
const LIST_WITHIN: Duration = Duration::from_secs(5);

impl Records {
    /// Empty records in memory.
    pub fn memory() -> Self {
        Records {
            inner: Inner::Memory(Arc::default()),
            lifetimes: Arc::new([]),
        }
    }

    /// Records under `prefix` live `ttl` after their last write, then leave (a record
    /// written again lives on); the others stay until removed. For what has a natural
    /// end: idempotency keys, inbox-like notes, logs kept for a while. On NATS the server
    /// drops them (per-message TTL, whole seconds: a `ttl` under one second counts as one);
    /// in memory they read as absent.
    #[must_use]
    pub fn expire(self, prefix: &str, ttl: Duration) -> Self {
        let mut lifetimes = self.lifetimes.to_vec();
        lifetimes.retain(|(p, _)| p != prefix);
        lifetimes.push((prefix.to_owned(), ttl.max(Duration::from_secs(1))));
        Records {
            inner: self.inner,
            lifetimes: lifetimes.into(),
        }
    }

    /// The lifetime of a record under `key`, if it has one (the longest prefix wins).
    fn lifetime(&self, key: &str) -> Option<Duration> {
        self.lifetimes
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, ttl)| *ttl)
    }

    /// The records of `bucket`: a JetStream KV bucket when `bus` is NATS (created if
    /// missing, file storage, the connection's replicas, per-message lifetimes allowed;
    /// drift reported, see
    /// [`NatsTransport::key_value`](crate::bus::nats::NatsTransport::key_value)), else empty
    /// records in memory.
    ///
    /// # Errors
    /// The bucket cannot be opened or created.
    #[cfg(feature = "nats")]
    #[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
    pub async fn open(bus: &AnyBus, bucket: &str) -> Result<Self, RecordsError> {
        let AnyBus::Nats(bus) = bus else {
            return Ok(Records::memory());
        };
        let spec = BucketSpec::new(bucket, "a4co service records").message_ttl();
        let (store, _) = bus
            .transport()
            .key_value(&spec)
            .await
            .map_err(|e| RecordsError::Unavailable(format!("bucket {bucket}: {e}")))?;
        Ok(Records {
            inner: Inner::Nats(Box::new((store, bus.transport().clone()))),
            lifetimes: Arc::new([]),
        })
    }

    /// The record under `key`, if any.
    ///
    /// # Errors
    /// [`RecordsError`]: a bad key, unreadable bytes, an unreachable store.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, RecordsError> {
        check_key(key)?;
        let raw = match &self.inner {
            Inner::Memory(map) => {
                live(&mut lock(map), key).map(|(bytes, revision, _)| (bytes, revision))
            }
            // From the stream's leader (see NatsTransport::kv_get): a decision taken on a
            // read (a product not found, say) is never taken on a stale copy.
            #[cfg(feature = "nats")]
            Inner::Nats(nats) => nats
                .1
                .kv_get(&nats.0, key)
                .await
                .map_err(|e| RecordsError::Unavailable(e.to_string()))?,
        };
        raw.map(|(bytes, revision)| decode(key, &bytes).map(|value| Versioned { value, revision }))
            .transpose()
    }

    /// Writes `value` under `key` if the record is still at `expected` (`None`: only if
    /// there is none) and returns the new revision.
    ///
    /// # Errors
    /// [`RecordsError::Conflict`] when someone wrote it since; the others as [`Records::get`].
    pub async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<u64, RecordsError> {
        check_key(key)?;
        let bytes =
            Bytes::from(
                serde_json::to_vec(value).map_err(|source| RecordsError::Corrupt {
                    key: key.to_owned(),
                    source,
                })?,
            );
        match (&self.inner, self.lifetime(key)) {
            (Inner::Memory(map), lifetime) => {
                let mut map = lock(map);
                let current = live(&mut map, key).map(|(_, revision, _)| revision);
                if current != expected {
                    return Err(RecordsError::Conflict(key.to_owned()));
                }
                let revision = current.unwrap_or(0) + 1;
                let expires = lifetime.map(|ttl| Instant::now() + ttl);
                map.insert(key.to_owned(), (bytes, revision, expires));
                Ok(revision)
            }
            #[cfg(feature = "nats")]
            (Inner::Nats(nats), lifetime) => {
                let (store, transport) = &**nats;
                transport
                    .kv_swap(store, key, bytes, expected, lifetime)
                    .await
                    .map_err(|e| match e.kind() {
                        crate::bus::PublishErrorKind::Conflict => {
                            RecordsError::Conflict(key.to_owned())
                        }
                        _ => RecordsError::Unavailable(e.to_string()),
                    })
            }
        }
    }

    /// Reads the record under `key`, lets `decide` look at it and return the new record
    /// (`None`: leave it as it is) plus an answer, writes the new record if nobody wrote
    /// since the read, and retries from the read if somebody did. `decide` may run more
    /// than once: keep its side effects out of it.
    ///
    /// # Errors
    /// As [`Records::put`]; [`RecordsError::Conflict`] only after many lost races in a row.
    pub async fn modify<T, R>(
        &self,
        key: &str,
        mut decide: impl FnMut(Option<&T>) -> (Option<T>, R),
    ) -> Result<R, RecordsError>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..MAX_CONFLICTS {
            let current = self.get::<T>(key).await?;
            let (next, answer) = decide(current.as_ref().map(|v| &v.value));
            let Some(next) = next else {
                return Ok(answer);
            };
            match self.put(key, &next, current.map(|v| v.revision)).await {
                Ok(_) => return Ok(answer),
                Err(RecordsError::Conflict(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Err(RecordsError::Conflict(key.to_owned()))
    }

    /// The keys that start with `prefix`, sorted. On NATS the cost follows the matching
    /// keys when `prefix` is empty or ends with `.` (a subject filter picks them); any other
    /// prefix lists every key of the bucket.
    ///
    /// # Errors
    /// [`RecordsError::Unavailable`] when the store cannot be reached.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, RecordsError> {
        match &self.inner {
            Inner::Memory(map) => {
                let now = Instant::now();
                Ok(lock(map)
                    .range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(_, (_, _, expires))| expires.is_none_or(|at| at > now))
                    .map(|(k, _)| k.clone())
                    .collect())
            }
            #[cfg(feature = "nats")]
            Inner::Nats(nats) => {
                let (store, transport) = &**nats;
                let pattern = if prefix.is_empty() || prefix.ends_with('.') {
                    format!("{prefix}>")
                } else {
                    ">".to_owned()
                };
                let keys = transport
                    .kv_keys(store, &[&pattern], LIST_WITHIN)
                    .await
                    .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
                Ok(keys.into_iter().filter(|k| k.starts_with(prefix)).collect())
            }
        }
    }

    /// Every record whose key starts with `prefix`, by key: [`Records::keys`], then each
    /// record (one that went meanwhile is left out).
    ///
    /// # Errors
    /// As [`Records::get`].
    pub async fn all<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, RecordsError> {
        let mut entries = Vec::new();
        for key in self.keys(prefix).await? {
            if let Some(found) = self.get::<T>(&key).await? {
                entries.push((key, found.value));
            }
        }
        Ok(entries)
    }

    /// Removes the record under `key` with its history, leaving no marker behind (a
    /// listing does not pay for removed records). Removing a missing record does nothing.
    ///
    /// # Errors
    /// [`RecordsError::InvalidKey`], [`RecordsError::Unavailable`].
    pub async fn remove(&self, key: &str) -> Result<(), RecordsError> {
        check_key(key)?;
        match &self.inner {
            Inner::Memory(map) => {
                lock(map).remove(key);
                Ok(())
            }
            #[cfg(feature = "nats")]
            Inner::Nats(nats) => nats
                .0
                .stream
                .purge()
                .filter(format!("{}{key}", nats.0.prefix))
                .await
                .map(|_| ())
                .map_err(|e| RecordsError::Unavailable(format!("removing {key}: {e}"))),
        }
    }
}

fn check_key(key: &str) -> Result<(), RecordsError> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RecordsError::InvalidKey(key.to_owned()))
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordsError> {
    serde_json::from_slice(bytes).map_err(|source| RecordsError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

/// The entry under `key` unless it expired (then it is dropped).
fn live(map: &mut BTreeMap<String, MemoryEntry>, key: &str) -> Option<MemoryEntry> {
    match map.get(key) {
        Some((_, _, Some(at))) if *at <= Instant::now() => {
            map.remove(key);
            None
        }
        found => found.cloned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl From<RecordsError> for crate::bus::HandlerError {
    /// A record that cannot be read or a key that cannot exist will not heal (dead letter);
    /// a race lost many times may (retry); a store that is down is an outage
    /// ([`HandlerError::unavailable`](crate::bus::HandlerError::unavailable)).
    fn from(error: RecordsError) -> Self {
        match error {
            RecordsError::InvalidKey(_) | RecordsError::Corrupt { .. } => {
                crate::bus::HandlerError::permanent(error)
            }
            RecordsError::Conflict(_) => crate::bus::HandlerError::retryable(error),
            RecordsError::Unavailable(_) => crate::bus::HandlerError::unavailable(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Records, RecordsError};

    #[tokio::test]
    async fn a_stale_write_conflicts_and_modify_retries_it() {
        let records = Records::memory();
        let first = records.put("k", &1_u32, None).await.unwrap_or_default();
        assert!(matches!(
            records.put("k", &5_u32, None).await,
            Err(RecordsError::Conflict(_))
        ));
        records.put("k", &2_u32, Some(first)).await.ok();
        assert!(matches!(
            records.put("k", &3_u32, Some(first)).await,
            Err(RecordsError::Conflict(_))
        ));
        let seen = records
            .modify("k", |n: Option<&u32>| (n.map(|n| n * 10), n.copied()))
            .await
            .ok()
            .flatten();
        assert_eq!(seen, Some(2));
        let stored = records.get::<u32>("k").await.ok().flatten();
        assert_eq!(stored.map(|v| (v.value, v.revision)), Some((20, 3)));
    }

    #[tokio::test]
    async fn bad_keys_are_refused() {
        let records = Records::memory();
        assert!(matches!(
            records.put("a b", &1_u8, None).await,
            Err(RecordsError::InvalidKey(_))
        ));
        assert!(matches!(
            records.get::<u8>("").await,
            Err(RecordsError::InvalidKey(_))
        ));
    }
}

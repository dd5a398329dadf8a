//! Instances on JetStream KV: one entry per instance (`<saga>/<correlation id>`), saved
//! with compare-and-swap on the entry's revision; a second bucket indexes due timers.

use a4co_events::bus::nats::NatsTransport;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::store::{Index, Store, Stored};

/// The bucket of instances.
pub const INSTANCES_BUCKET: &str = "a4co-sagas";
/// The bucket of timer index entries (`due.<unix ms>.<instance key>`).
pub const TIMERS_BUCKET: &str = "a4co-saga-timers";

/// Saga instances in JetStream KV. A cheap `Clone`.
#[derive(Clone, Debug)]
pub struct KvStore {
    instances: kv::Store,
    timers: kv::Store,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// KV keys allow letters, digits and `-/_=.`; everything else (and `.`, `=`) is escaped
/// as `=XX`, so any correlation id maps to one key and back.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn decode(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl KvStore {
    /// Opens (creating if missing) the two buckets, file-stored, with `replicas` copies.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when JetStream refuses.
    pub async fn open(transport: &NatsTransport, replicas: usize) -> Result<Self, StoreError> {
        let js = transport.jetstream();
        let bucket = |name: &str, description: &str| kv::Config {
            bucket: name.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        let open = async |config: kv::Config| match js.get_key_value(&config.bucket).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_key_value(config.clone())
                .await
                .map_err(|e| unavailable(&format!("creating bucket {}", config.bucket), e)),
        };
        Ok(KvStore {
            instances: open(bucket(INSTANCES_BUCKET, "a4co saga instances")).await?,
            timers: open(bucket(TIMERS_BUCKET, "a4co saga timers, by due time")).await?,
        })
    }
}

impl Store for KvStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let entry = self
            .instances
            .entry(encode(key))
            .await
            .map_err(|e| unavailable(&format!("loading {key}"), e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Stored {
                record: e.value,
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
        let encoded = encode(key);
        // The timer's index entry goes first: if the save then fails, a stale entry only
        // costs a look at the instance; the other order could lose a timer.
        if let Some(at) = index.next_timer {
            let entry = format!("due.{}.{encoded}", at.timestamp_millis().max(0));
            self.timers
                .put(entry, Bytes::new())
                .await
                .map_err(|e| unavailable(&format!("indexing the timer of {key}"), e))?;
        }
        match expected {
            None => self.instances.create(&encoded, record).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    StoreError::Conflict(key.to_owned())
                } else {
                    unavailable(&format!("creating {key}"), e)
                }
            }),
            Some(revision) => self
                .instances
                .update(&encoded, record, revision)
                .await
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                        StoreError::Conflict(key.to_owned())
                    } else {
                        unavailable(&format!("saving {key}"), e)
                    }
                }),
        }
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt as _;
        let now_ms = now.timestamp_millis();
        let names: Vec<String> = match self.timers.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| unavailable("listing timers", e))?,
            Err(e) => return Err(unavailable("listing timers", e)),
        };
        let mut keys: Vec<String> = names
            .iter()
            .filter_map(|name| {
                let rest = name.strip_prefix("due.")?;
                let (ms, key) = rest.split_once('.')?;
                (ms.parse::<i64>().ok()? <= now_ms).then(|| decode(key))?
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn fired(&self, key: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        use futures::TryStreamExt as _;
        let now_ms = now.timestamp_millis();
        let suffix = format!(".{}", encode(key));
        let names: Vec<String> = match self.timers.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| unavailable("listing timers", e))?,
            Err(e) => return Err(unavailable("listing timers", e)),
        };
        for name in names {
            let due_ms = name
                .strip_prefix("due.")
                .and_then(|rest| rest.strip_suffix(&suffix))
                .and_then(|ms| ms.parse::<i64>().ok());
            if due_ms.is_some_and(|ms| ms <= now_ms) {
                self.timers
                    .purge(&name)
                    .await
                    .map_err(|e| unavailable(&format!("dropping timer entry {name}"), e))?;
            }
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt as _;
        let names: Vec<String> = match self.instances.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| unavailable("listing instances", e))?,
            Err(e) => return Err(unavailable("listing instances", e)),
        };
        // Outboxes are emptied right after publishing: listing every instance at start is
        // the price of not indexing them on every save.
        let mut keys: Vec<String> = names.iter().filter_map(|n| decode(n)).collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn keys_round_trip_through_the_kv_alphabet() {
        for key in ["order-fulfillment/ord-1", "s/a.b c=d:é", "x/"] {
            let encoded = encode(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=".contains(&b)),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(key));
        }
        assert_eq!(decode("bad=zz"), None);
    }
}

//! Instances on JetStream KV: one entry per instance (`<saga>/<correlation id>`), saved
//! with compare-and-swap on the entry's revision; a second bucket indexes due timers by
//! the second they run out, so a tick lists only the seconds since the last one, lists
//! the instances that wait by state (`waiting.<saga>.<state>.<id>`, what the census reads),
//! and notes the records set aside (`aside.<instance>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use a4co_events::bus::PublishErrorKind;
use a4co_events::bus::nats::{BucketSpec, NatsTransport};
use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::store::{Due, Index, SetAside, Store, Stored};

/// The bucket of instances.
pub const INSTANCES_BUCKET: &str = "a4co-sagas";
/// The bucket of timer index entries (`due.<unix second>.<unix ms>.<instance key>`).
pub const TIMERS_BUCKET: &str = "a4co-saga-timers";

/// The most seconds a tick lists one by one; a longer gap (a runtime that was down) lists
/// the whole index once.
const MAX_SECONDS_LISTED: i64 = 300;

/// How long one listing of the timer index may take.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Saga instances in JetStream KV. A cheap `Clone`.
#[derive(Clone, Debug)]
pub struct KvStore {
    instances: kv::Store,
    finished_retention: std::time::Duration,
    timers: kv::Store,
    transport: NatsTransport,
    sweep: Arc<Mutex<Sweep>>,
}

/// What this process listed of the timer index.
#[derive(Debug, Default)]
struct Sweep {
    /// The second up to which entries were listed (`None`: nothing yet, list all).
    until: Option<i64>,
    /// Entries listed as due whose instance was not yet handled ([`Store::fired`]), by
    /// instance: listed again with every tick until it is, since the listing moved on.
    outstanding: HashMap<String, Vec<String>>,
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

/// The waiting-index entry of the instance `key` (`<saga>/<id>`) in `state`:
/// `waiting.<saga>.<state>.<id>`, each part encoded.
fn waiting_entry(key: &str, state: &str) -> String {
    let (saga, id) = key.split_once('/').unwrap_or((key, ""));
    format!("waiting.{}.{}.{}", encode(saga), encode(state), encode(id))
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

/// How long an instance is kept after its last change, unless [`KvStore::open_with`] says
/// otherwise: 30 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// How long a finished instance is kept, unless [`KvStore::retain_finished`] says
/// otherwise: 7 days (a message that reaches it meanwhile is recognised: a duplicate, or
/// one a finished saga answers).
pub const DEFAULT_FINISHED_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

impl KvStore {
    /// Opens (creating if missing) the two buckets, file-stored, with the transport's
    /// replicas (drift on existing ones is reported, see [`NatsTransport::key_value`]),
    /// keeping an instance [`DEFAULT_RETENTION`] after its last change.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when JetStream refuses.
    pub async fn open(transport: &NatsTransport) -> Result<Self, StoreError> {
        Self::open_with(transport, DEFAULT_RETENTION).await
    }

    /// As [`KvStore::open`], keeping an instance `retention` after its last change (every
    /// step rewrites it, so only finished or forgotten instances age out). It must outlast
    /// the longest wait of any saga (timers included); a bucket that exists keeps its own.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when JetStream refuses; [`StoreError::InvalidConfig`] for a
    /// retention under one second.
    pub async fn open_with(
        transport: &NatsTransport,
        retention: std::time::Duration,
    ) -> Result<Self, StoreError> {
        if retention < std::time::Duration::from_secs(1) {
            return Err(StoreError::InvalidConfig(format!(
                "a retention of {retention:?} is too short: JetStream keeps entries whole seconds; use 1 s or more"
            )));
        }
        let open = async |name: &str, description: &str| {
            let mut spec = BucketSpec::new(name, description).max_age(retention);
            if name == INSTANCES_BUCKET {
                spec = spec.message_ttl();
            }
            transport
                .key_value(&spec)
                .await
                .map(|(store, _)| store)
                .map_err(|e| unavailable(&format!("opening bucket {name}"), e))
        };
        let instances = open(INSTANCES_BUCKET, "a4co saga instances").await?;
        let timers = open(TIMERS_BUCKET, "a4co saga timers, by due time").await?;
        Ok(KvStore {
            instances,
            finished_retention: DEFAULT_FINISHED_RETENTION.min(retention),
            timers,
            transport: transport.clone(),
            sweep: Arc::default(),
        })
    }

    /// Keeps a finished instance `retention` after it finished (default
    /// [`DEFAULT_FINISHED_RETENTION`], never longer than the bucket's retention), then drops
    /// it: long enough for any message still on its way to it.
    ///
    /// # Errors
    /// [`StoreError::InvalidConfig`] for a retention under one second.
    pub fn retain_finished(mut self, retention: std::time::Duration) -> Result<Self, StoreError> {
        if retention < std::time::Duration::from_secs(1) {
            return Err(StoreError::InvalidConfig(format!(
                "a finished-instance retention of {retention:?} is too short: JetStream keeps entries whole seconds; use 1 s or more"
            )));
        }
        self.finished_retention = retention;
        Ok(self)
    }

    /// Writes the index entry for `key`'s timer at `at`.
    async fn put_entry(&self, key: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let ms = at.timestamp_millis().max(0);
        let second = ms / 1000;
        let entry = format!("due.{second}.{ms}.{}", encode(key));
        // A timer already due, in a second this process swept: list from there again.
        {
            let mut sweep = self.sweep();
            if let Some(until) = sweep.until
                && second < until
            {
                sweep.until = Some(second);
            }
        }
        self.timers
            .put(entry, Bytes::new())
            .await
            .map_err(|e| unavailable(&format!("indexing the timer of {key}"), e))?;
        Ok(())
    }

    /// Removes the index entry `name` from the stream, not marked deleted: listings stay
    /// the size of what is still to come.
    async fn purge(&self, name: &str) -> Result<(), StoreError> {
        self.timers
            .stream
            .purge()
            .filter(format!("$KV.{TIMERS_BUCKET}.{name}"))
            .await
            .map(drop)
            .map_err(|e| unavailable(&format!("dropping index entry {name}"), e))
    }

    fn sweep(&self) -> std::sync::MutexGuard<'_, Sweep> {
        self.sweep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index entries (names after `due.`) under the given key patterns, as they stand.
    async fn list(&self, patterns: &[&str]) -> Result<Vec<String>, StoreError> {
        self.transport
            .kv_keys(&self.timers, patterns, LIST_TIMEOUT)
            .await
            .map_err(|e| unavailable("listing timers", e))
    }
}

impl Store for KvStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        // From the stream's leader: a message acknowledged without a change (a duplicate,
        // an unexpected one) is decided on the instance as last saved, never on a replica's
        // stale copy.
        let found = self
            .transport
            .kv_get(&self.instances, &encode(key))
            .await
            .map_err(|e| unavailable(&format!("loading {key}"), e))?;
        Ok(found.map(|(record, revision)| Stored { record, revision }))
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
        if let Some(at) = index.new_entry {
            self.put_entry(key, at).await?;
        }
        // The waiting index (what the census reads) alongside the save, never in its way:
        // a failed write only leaves the instance uncounted until it moves again. A save
        // that fails after it leaves the instance under two states, which the census
        // decides by its record.
        let moved = index.waiting != index.was_waiting;
        let indexed = async {
            if moved
                && let Some(state) = index.waiting
                && let Err(e) = self
                    .timers
                    .put(waiting_entry(key, state), Bytes::new())
                    .await
            {
                tracing::warn!(instance = %key, error = %e, "indexing a waiting instance failed");
            }
        };
        // A finished instance is saved with its own lifetime (`Nats-TTL`).
        let lifetime = index.finished.then_some(self.finished_retention);
        let saved = async {
            self.transport
                .kv_swap(&self.instances, &encoded, record, expected, lifetime)
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::Conflict => StoreError::Conflict(key.to_owned()),
                    _ => unavailable(&format!("saving {key}"), e),
                })
        };
        let ((), revision) = futures::join!(indexed, saved);
        let revision = revision?;
        if moved && let Some(state) = index.was_waiting {
            let entry = waiting_entry(key, state);
            // Saved already: a stale entry only miscounts until the instance moves again.
            if let Err(e) = self.purge(&entry).await {
                tracing::warn!(instance = %key, error = %e, "dropping a waiting-index entry failed");
            }
        }
        Ok(revision)
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Due>, StoreError> {
        let now_ms = now.timestamp_millis();
        let now_second = now_ms / 1000;
        let from = self.sweep().until;
        let filters = match from {
            Some(from) if now_second - from <= MAX_SECONDS_LISTED => (from.min(now_second)
                ..=now_second)
                .map(|second| format!("due.{second}.>"))
                .collect(),
            _ => vec!["due.>".to_owned()],
        };
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let names = self.list(&filters).await?;
        let mut listed: HashMap<String, Vec<String>> = HashMap::new();
        for name in names {
            let parsed = name.strip_prefix("due.").and_then(|rest| {
                let (_, rest) = rest.split_once('.')?;
                let (ms, key) = rest.split_once('.')?;
                Some((ms.parse::<i64>().ok()?, decode(key)?))
            });
            if let Some((ms, key)) = parsed
                && ms <= now_ms
            {
                listed.entry(key).or_default().push(name);
            }
        }
        let mut sweep = self.sweep();
        for (key, entries) in listed {
            let known = sweep.outstanding.entry(key).or_default();
            for entry in entries {
                if !known.contains(&entry) {
                    known.push(entry);
                }
            }
        }
        let mut due: Vec<Due> = sweep
            .outstanding
            .iter()
            .map(|(key, entries)| Due {
                key: key.clone(),
                entries: entries.clone(),
            })
            .collect();
        due.sort_by(|a, b| a.key.cmp(&b.key));
        // Next time from this second on (entries due later in it are listed again), unless
        // a save moved the start back meanwhile.
        sweep.until = Some(match (from, sweep.until) {
            (Some(f), Some(current)) if current < f => current,
            _ => now_second,
        });
        Ok(due)
    }

    async fn fired(&self, due: &Due, next: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        // The entries about to go may be all that stands for a later timer: index it first.
        if let Some(at) = next {
            self.put_entry(&due.key, at).await?;
        }
        for name in &due.entries {
            self.purge(name).await?;
        }
        let mut sweep = self.sweep();
        if let Some(left) = sweep.outstanding.get_mut(&due.key) {
            left.retain(|e| !due.entries.contains(e));
            if left.is_empty() {
                sweep.outstanding.remove(&due.key);
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

    /// The latest value of every key, in one pass of a watch (JetStream's last per
    /// subject), not one request per instance.
    async fn records(&self) -> Result<Vec<Bytes>, StoreError> {
        use futures::StreamExt as _;
        // Fresh: `kv::Store::status` answers from the info cached when the bucket opened.
        let stored = self
            .transport
            .jetstream()
            .get_stream(&self.instances.stream_name)
            .await
            .map_err(|e| unavailable("reading the instances bucket", e))?
            .info()
            .await
            .map_err(|e| unavailable("reading the instances bucket", e))?
            .state
            .messages;
        // A watch of an empty bucket would wait for the first write.
        if stored == 0 {
            return Ok(Vec::new());
        }
        let mut watch = self
            .instances
            .watch_with_history(">")
            .await
            .map_err(|e| unavailable("reading every instance", e))?;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(LIST_TIMEOUT, watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    if entry.operation == kv::Operation::Put {
                        out.push(entry.value);
                    }
                    if entry.delta == 0 {
                        return Ok(out);
                    }
                }
                Ok(Some(Err(e))) => return Err(unavailable("reading every instance", e)),
                Ok(None) => return Ok(out),
                Err(_) => {
                    return Err(unavailable(
                        "reading every instance",
                        format!("no answer within {LIST_TIMEOUT:?}"),
                    ));
                }
            }
        }
    }

    /// A listing of the entry names under `waiting.<saga>.`, headers only: one pass over
    /// the waiting instances, none over the finished.
    async fn waiting(&self, saga: &str) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let saga = encode(saga);
        let pattern = format!("waiting.{saga}.>");
        let names = self.list(&[pattern.as_str()]).await?;
        Ok(Some(
            names
                .iter()
                .filter_map(|name| {
                    let rest = name.strip_prefix("waiting.")?.strip_prefix(saga.as_str())?;
                    let (state, id) = rest.strip_prefix('.')?.split_once('.')?;
                    Some((
                        format!("{}/{}", decode(&saga)?, decode(id)?),
                        state.to_owned(),
                    ))
                })
                .collect(),
        ))
    }

    async fn put_aside(&self, aside: SetAside) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(&aside).map_err(|e| unavailable("setting aside", e))?;
        let name = format!("aside.{}", encode(&aside.key));
        match self.timers.create(&name, Bytes::from(value)).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(&format!("setting {} aside", aside.key), e)),
        }
    }

    async fn set_aside(&self) -> Result<Vec<SetAside>, StoreError> {
        let names = self.list(&["aside.>"]).await?;
        let mut aside = Vec::with_capacity(names.len());
        for name in names {
            let Some(value) = self
                .timers
                .get(&name)
                .await
                .map_err(|e| unavailable("listing records set aside", e))?
            else {
                continue;
            };
            match serde_json::from_slice::<SetAside>(&value) {
                Ok(entry) => aside.push(entry),
                Err(e) => tracing::warn!(entry = %name, error = %e, "an unreadable set-aside note"),
            }
        }
        aside.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(aside)
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

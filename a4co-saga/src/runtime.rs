//! The runtime: feeds messages and due timers to instances, saves them, then publishes
//! what they send. Several replicas may run at once on one store: saves are compare-and-swap,
//! and a conflict reloads the instance and applies the message again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use a4co_events::bus::{HandlerError, Publisher, Subscriber, Subscription, SubscriptionHandle};
use a4co_events::{AnyMessage, Envelope, EventId};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::definition::Definition;
use crate::engine::{Applied, apply, fire_due};
use crate::error::{DefinitionError, DefinitionErrorKind, RuntimeError, StoreError};
use crate::record::{Data, Instance, State};
use crate::store::{Due, Index, SetAside, Store};

/// How many times a save is retried against concurrent replicas before giving up (the
/// message is then retried by the bus).
const MAX_CONFLICTS: u32 = 16;

/// How many instances a runtime remembers as it last saved them.
const CACHE_CAPACITY: usize = 4096;

/// The instances this runtime saved last, with their revisions, so the next message of a
/// saga handled here skips loading it. An entry is only a guess: the save's
/// compare-and-swap proves it current (another replica's save makes it fail, and the
/// instance is loaded); any outcome but a change is decided on the stored instance.
struct Cache<D, S> {
    entries: Mutex<HashMap<String, Cached<D, S>>>,
}

/// An instance and the revision it was saved under.
type Cached<D, S> = (Instance<D, S>, u64);

impl<D: Data, S: State> Cache<D, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached<D, S>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the entry out: a message of the same saga handled meanwhile loads it.
    fn take(&self, key: &str) -> Option<Cached<D, S>> {
        self.lock().remove(key)
    }

    /// Remembers an instance just saved; a finished one waits for nothing and is dropped.
    fn put(&self, key: &str, instance: Instance<D, S>, revision: u64) {
        let mut entries = self.lock();
        if instance.is_finished() {
            entries.remove(key);
            return;
        }
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(key) {
            // Any entry: a miss only costs a load.
            let evicted = entries.keys().next().cloned();
            if let Some(evicted) = evicted {
                entries.remove(&evicted);
            }
        }
        entries.insert(key.to_owned(), (instance, revision));
    }
}

/// Runs one saga definition on a bus and a store. A cheap `Clone` handle.
pub struct Runtime<D, S, B, St> {
    inner: Arc<Inner<D, S, B, St>>,
}

impl<D, S, B, St> Clone for Runtime<D, S, B, St> {
    fn clone(&self) -> Self {
        Runtime {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<D, S, B, St> std::fmt::Debug for Runtime<D, S, B, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Moves an instance's state and data from an older version to the current one.
type Migration<D, S> = Arc<dyn Fn(S, D) -> (S, D) + Send + Sync>;

#[derive(Clone)]
struct Inner<D, S, B, St> {
    definition: Definition<D, S>,
    /// Earlier versions it keeps running for the instances that started on them.
    older: BTreeMap<u32, Definition<D, S>>,
    /// Migrations to the current version, by the version they move from.
    migrations: BTreeMap<u32, Migration<D, S>>,
    bus: B,
    store: St,
    clock: Arc<dyn Clock>,
    tick: Duration,
    /// How often a started runtime counts the instances waiting by state (none: never).
    census_every: Option<Duration>,
    max_in_flight: usize,
    lost_publishes: Arc<AtomicU32>,
    cache: Arc<Cache<D, S>>,
    unflushed: Arc<Mutex<HashMap<String, Unflushed>>>,
    /// Instances whose saved messages could not be published (the broker was away): the
    /// timer task publishes them every tick until it can.
    stranded: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Of those, the instances whose messages the broker refused for good (logged and
    /// counted once; still tried every tick, in case the refusal was a setting since
    /// fixed).
    refused: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

/// Sets up a [`Runtime`]: made by [`Runtime::builder`], finished by
/// [`RuntimeBuilder::build`].
#[must_use]
pub struct RuntimeBuilder<D, S, B, St> {
    runtime: Runtime<D, S, B, St>,
    /// Earlier versions to keep running, checked by `build`.
    older: Vec<Definition<D, S>>,
}

impl<D, S, B, St> std::fmt::Debug for RuntimeBuilder<D, S, B, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder").finish_non_exhaustive()
    }
}

impl<D, S, B, St> RuntimeBuilder<D, S, B, St>
where
    D: Data,
    S: State,
    B: Publisher + Subscriber,
    St: Store,
{
    fn inner(&mut self) -> &mut Inner<D, S, B, St> {
        // The runtime is not shared before `build`.
        Arc::make_mut(&mut self.runtime.inner)
    }

    /// Reads the time from `clock` (a [`crate::VirtualClock`] in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.inner().clock = Arc::new(clock);
        self
    }

    /// How often [`Runtime::start`]'s background task looks for due timers (default 1 s).
    pub fn tick(mut self, every: Duration) -> Self {
        self.inner().tick = every.max(Duration::from_millis(1));
        self
    }

    /// How often [`Runtime::start`]'s background task counts the instances waiting in each
    /// state ([`Runtime::census`], a full read of the store) for the gauge
    /// `a4co_saga_instances_waiting{saga, state}`; default 60 s, `None` never. Every replica
    /// counts: read the gauge with `max by (saga, state)`.
    pub fn census_every(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.inner().census_every = every.into().map(|e| e.max(Duration::from_millis(1)));
        self
    }

    /// How many messages [`Runtime::start`] handles at once (default 64; messages of one
    /// aggregate still in order, and conflicting saves on one instance retried).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.inner().max_in_flight = n.max(1);
        self
    }

    /// Also runs `older`, an earlier version of the same saga, for the instances that
    /// started on it: they go on to the end on the reactions they started with, while new
    /// instances start on the current version. Keep an older version until no instance
    /// of it is left (or give a [`RuntimeBuilder::migrate`] instead).
    pub fn keep_running(mut self, older: Definition<D, S>) -> Self {
        self.older.push(older);
        self
    }

    /// Moves instances of version `from` onto the current version the next time a message
    /// or timer reaches them: `migrate` gets their state and data and returns those they
    /// continue with (timers, outbox, compensations and history are kept). A version kept
    /// with [`RuntimeBuilder::keep_running`] is run as it is, not migrated.
    pub fn migrate(
        mut self,
        from: u32,
        migrate: impl Fn(S, D) -> (S, D) + Send + Sync + 'static,
    ) -> Self {
        self.inner().migrations.insert(from, Arc::new(migrate));
        self
    }

    /// The runtime.
    ///
    /// # Errors
    /// A [`DefinitionError`] when a definition given to [`RuntimeBuilder::keep_running`]
    /// is another saga, or not an earlier version.
    pub fn build(mut self) -> Result<Runtime<D, S, B, St>, DefinitionError> {
        for older in std::mem::take(&mut self.older) {
            let current = &self.runtime.inner.definition;
            let problem = if older.name() != current.name() {
                format!(
                    "cannot keep running saga {:?} beside {:?}: a runtime runs the versions of one saga",
                    older.name(),
                    current.name()
                )
            } else if older.version() >= current.version() {
                format!(
                    "version {} is not older than the current version {}: pass the newest definition to Runtime::builder",
                    older.version(),
                    current.version()
                )
            } else {
                self.inner().older.insert(older.version(), older);
                continue;
            };
            return Err(DefinitionError::new(
                current.name(),
                DefinitionErrorKind::Version,
                problem,
            ));
        }
        Ok(self.runtime)
    }
}

/// Messages published from a saved outbox whose record still lists them: the instance's
/// next save drops them, or [`Runtime::flush_published`] does.
struct Unflushed {
    revision: u64,
    since: std::time::Instant,
    sent: Vec<EventId>,
}

/// When a published outbox is emptied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emptying {
    /// At once, with a second save.
    Now,
    /// With the instance's next save, or by the flush of a started runtime within
    /// [`FLUSH_AFTER`] (well inside the broker's dedup window, which drops a re-send).
    Deferred,
}

/// How long a started runtime leaves published messages in a record before emptying it
/// with a save of its own.
const FLUSH_AFTER: Duration = Duration::from_secs(1);

impl<D, S, B, St> Runtime<D, S, B, St>
where
    D: Data,
    S: State,
    B: Publisher + Subscriber,
    St: Store,
{
    /// A runtime for `definition` on `bus`, keeping instances in `store`, with the
    /// defaults of [`Runtime::builder`].
    pub fn new(definition: Definition<D, S>, bus: B, store: St) -> Self {
        Runtime {
            inner: Arc::new(Inner {
                definition,
                older: BTreeMap::new(),
                migrations: BTreeMap::new(),
                bus,
                store,
                clock: Arc::new(SystemClock),
                tick: Duration::from_secs(1),
                census_every: Some(Duration::from_secs(60)),
                max_in_flight: 64,
                lost_publishes: Arc::default(),
                cache: Arc::new(Cache {
                    entries: Mutex::default(),
                }),
                unflushed: Arc::default(),
                stranded: Arc::default(),
                refused: Arc::default(),
            }),
        }
    }

    /// A runtime for `definition` on `bus`, keeping instances in `store`, set up with
    /// [`RuntimeBuilder`]'s methods: on the system clock, looking for due timers every
    /// second, counting waiting instances every minute, 64 messages at once, the current
    /// version only, until said otherwise.
    ///
    /// ```
    /// # use a4co_saga::{Definition, MemoryStore, Runtime, State, VirtualClock};
    /// # use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
    /// # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
    /// # enum Phase { Waiting, #[state(final)] Done }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let definition = Definition::<(), Phase>::builder("watch", "order-service")
    /// #     .starts_with::<OrderCreated>().to(Phase::Waiting, |_, _| {})
    /// #     .on::<OrderConfirmed>(Phase::Waiting).to(Phase::Done, |_, _| {})
    /// #     .build()?;
    /// # let bus = a4co_events::bus::MemoryBus::provisioned().await?;
    /// let runtime = Runtime::builder(definition, bus, MemoryStore::new())
    ///     .clock(VirtualClock::at(chrono::Utc::now()))
    ///     .tick(std::time::Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(runtime.versions(), [1]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(definition: Definition<D, S>, bus: B, store: St) -> RuntimeBuilder<D, S, B, St> {
        RuntimeBuilder {
            runtime: Self::new(definition, bus, store),
            older: Vec::new(),
        }
    }

    /// The definition it runs (its name, subjects, diagram): the current version, on
    /// which every new instance starts.
    pub fn definition(&self) -> &Definition<D, S> {
        &self.inner.definition
    }

    /// The versions it runs, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        let mut versions: Vec<u32> = self.inner.older.keys().copied().collect();
        versions.push(self.inner.definition.version());
        versions
    }

    /// The definition `instance` runs on: its own version's, or the current one once a
    /// migration moved it.
    fn definition_of(
        &self,
        instance: &mut Instance<D, S>,
    ) -> Result<&Definition<D, S>, RuntimeError> {
        let current = &self.inner.definition;
        let version = instance.ledger.version;
        if version == current.version() {
            return Ok(current);
        }
        if let Some(older) = self.inner.older.get(&version) {
            return Ok(older);
        }
        let Some(migrate) = self.inner.migrations.get(&version) else {
            return Err(RuntimeError::UnknownVersion {
                saga_id: instance.ledger.saga_id.clone(),
                saga: current.name().to_owned(),
                version,
                known: self.versions(),
            });
        };
        let (state, data) = migrate(instance.state, std::mem::take(&mut instance.data));
        instance.state = state;
        instance.data = data;
        instance.ledger.version = current.version();
        instance.ledger.definition = current.name().to_owned();
        tracing::info!(saga_id = %instance.ledger.saga_id, from = version, to = current.version(), state = state.name(), "instance migrated");
        Ok(current)
    }

    /// The instance a message belongs to: by the current version's correlation, else by
    /// the newest older version that takes its type.
    fn instance_id(&self, message: &Envelope<AnyMessage>) -> Option<String> {
        self.inner.definition.instance_id(message).or_else(|| {
            self.inner
                .older
                .values()
                .rev()
                .find_map(|d| d.instance_id(message))
        })
    }

    /// For crash tests: the next `n` instances saved skip publishing their messages, as if
    /// the process died right after the save. A started runtime then leaves the message it
    /// was handling unacknowledged (the bus delivers it again, and that delivery publishes
    /// them); [`Runtime::handle`] returns as if it had published, and
    /// [`Runtime::resend_pending`] sends them.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn lose_next_publishes(&self, n: u32) {
        self.inner.lost_publishes.store(n, Ordering::SeqCst);
    }

    /// The instance `saga_id` (`order-fulfillment/ord-1`), as stored.
    ///
    /// # Errors
    /// The store's.
    pub async fn instance(&self, saga_id: &str) -> Result<Option<Instance<D, S>>, StoreError> {
        Ok(self.load(saga_id).await?.map(|(i, _)| i))
    }

    /// The stored instance. One that cannot be read is set aside (logged, counted, listed
    /// by [`Runtime::set_aside`]) and reported as [`StoreError::Corrupt`].
    async fn load(&self, key: &str) -> Result<Option<(Instance<D, S>, u64)>, StoreError> {
        let Some(stored) = self.inner.store.load(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&stored.record) {
            Ok(instance) => Ok(Some((instance, stored.revision))),
            Err(e) => {
                let reason = e.to_string();
                self.put_aside(key, &reason).await?;
                Err(StoreError::Corrupt {
                    key: key.to_owned(),
                    reason,
                })
            }
        }
    }

    /// Sets a record aside; logged at error level and counted once, when first noted.
    async fn put_aside(&self, key: &str, reason: &str) -> Result<(), StoreError> {
        let aside = SetAside {
            key: key.to_owned(),
            reason: reason.to_owned(),
            at: self.inner.clock.now(),
        };
        if self.inner.store.put_aside(aside).await? {
            tracing::error!(saga_id = %key, reason, "a saga record cannot be read: set aside (its messages are dead-lettered, its timers no longer fire); repair or delete it");
            crate::metrics::set_aside(self.inner.definition.name());
        } else {
            tracing::debug!(saga_id = %key, "a message or timer for a record set aside");
        }
        Ok(())
    }

    /// How many instances hold messages this runtime saved but the broker refused: it sends
    /// them again every tick until they go out (for health checks and tests).
    pub fn waiting_outboxes(&self) -> usize {
        self.stranded().len()
    }

    /// Of [`Runtime::waiting_outboxes`], how many the broker refused for good (a message it
    /// will not take as it is), not for being away: each was logged at error and counted in
    /// `a4co_saga_outbox_refused_total{saga}`.
    pub fn refused_outboxes(&self) -> usize {
        let stranded = self.stranded();
        self.refused()
            .iter()
            .filter(|k| stranded.contains(*k))
            .count()
    }

    /// The records of this runtime's store that cannot be read and were set aside.
    ///
    /// # Errors
    /// The store's.
    pub async fn set_aside(&self) -> Result<Vec<SetAside>, StoreError> {
        self.inner.store.set_aside().await
    }

    async fn save(
        &self,
        key: &str,
        instance: &mut Instance<D, S>,
        expected: Option<u64>,
    ) -> Result<u64, StoreError> {
        let next_timer = instance.next_timer();
        // An entry at or before the earliest timer is enough: a new one only when there is
        // none. Entries already due may be gone (visited and dropped): they do not count.
        let now = self.inner.clock.now();
        let new_entry =
            next_timer.filter(|t| instance.ledger.indexed.is_none_or(|i| i > *t || i <= now));
        if new_entry.is_some() {
            instance.ledger.indexed = new_entry;
        }
        let waiting = (!instance.is_finished()).then(|| instance.state.name());
        let was_waiting = instance.ledger.counted.as_deref().and_then(|counted| {
            S::ALL
                .iter()
                .map(|s| s.name())
                .find(|name| *name == counted)
        });
        instance.ledger.counted = waiting.map(str::to_owned);
        let record = serde_json::to_vec(instance).map_err(|e| StoreError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        let index = Index {
            next_timer,
            new_entry,
            pending: !instance.ledger.outbox.is_empty(),
            finished: instance.is_finished(),
            waiting,
            was_waiting,
        };
        let revision = self
            .inner
            .store
            .save(key, Bytes::from(record), expected, index)
            .await?;
        // The record just saved lists what it still has to publish; whoever saved it
        // publishes that (again, if need be: the broker drops a re-send).
        self.unflushed().remove(key);
        Ok(revision)
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stranded(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.inner
            .stranded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unflushed>> {
        self.inner
            .unflushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one message: loads its instance, runs the reaction, saves the instance with
    /// the messages it sends, then publishes them and takes them out of the record (a
    /// started runtime leaves that to the instance's next save). Safe to call again with
    /// the same message.
    ///
    /// # Errors
    /// The store's or the bus's (the message should be retried), a reaction breaking the
    /// definition (it should be dead-lettered), or endless conflicts.
    pub async fn handle(&self, message: &Envelope<AnyMessage>) -> Result<Applied, RuntimeError> {
        Ok(self.handle_with(message, Emptying::Now).await?.0)
    }

    /// As [`Runtime::handle`]; also says whether what was saved was published (`false`
    /// only under the test hook `Runtime::lose_next_publishes`).
    async fn handle_with(
        &self,
        message: &Envelope<AnyMessage>,
        emptying: Emptying,
    ) -> Result<(Applied, bool), RuntimeError> {
        let Some(key) = self.instance_id(message) else {
            return Ok((Applied::Unexpected, true));
        };
        // First a guess, without a read: the instance as this runtime last saved it, or
        // none yet (right for a message that starts a saga). A wrong guess costs a load.
        let mut guess = Some(self.inner.cache.take(&key));
        let mut conflicts = 0;
        loop {
            let (loaded, guessed) = match guess.take() {
                Some(guessed) => (guessed, true),
                None => (self.load(&key).await?, false),
            };
            let revision = loaded.as_ref().map(|(_, r)| *r);
            let now = self.inner.clock.now();
            let mut instance = loaded.map(|(i, _)| i);
            let before = instance.as_ref().map(|i| i.state);
            let definition = match &mut instance {
                Some(instance) => self.definition_of(instance)?,
                None => &self.inner.definition,
            };
            let reacted = apply(definition, &key, instance, message, now).await;
            // Only a change is checked by the save; anything else needs the stored instance.
            if guessed && !matches!(reacted, Ok((Applied::Changed, _))) {
                continue;
            }
            let (applied, instance) = reacted?;
            match applied {
                Applied::Changed => {}
                Applied::Duplicate | Applied::Finished | Applied::Unexpected => {
                    if applied != Applied::Duplicate {
                        tracing::info!(saga_id = %key, event_type = message.event_type(), event_id = %message.event_id, outcome = ?applied, "message acknowledged without a reaction");
                    }
                    // A redelivery after a crash between save and publish: finish the publish.
                    if let (Some(instance), Some(revision)) = (instance, revision)
                        && !instance.ledger.outbox.is_empty()
                    {
                        let sent = self
                            .publish_outbox(&key, instance, revision, emptying)
                            .await?;
                        return Ok((applied, sent));
                    }
                    return Ok((applied, true));
                }
                Applied::NotStarted => return Ok((applied, true)),
            }
            let Some(mut instance) = instance else {
                return Ok((applied, true));
            };
            match self.save(&key, &mut instance, revision).await {
                Ok(revision) => {
                    crate::metrics::moved(before, &instance);
                    let sent = self
                        .publish_outbox(&key, instance, revision, emptying)
                        .await?;
                    return Ok((Applied::Changed, sent));
                }
                // Saved elsewhere since this runtime's last save: load it.
                Err(StoreError::Conflict(_)) if guessed => {}
                Err(StoreError::Conflict(_)) => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(RuntimeError::Contention(key, MAX_CONFLICTS));
                    }
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(100..2_000))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Publishes an instance's outbox, then removes what was published from the stored
    /// record (compare-and-swap; a conflict reloads and removes by id), at once or
    /// deferred. The instance, as saved, is then remembered for the saga's next message.
    ///
    /// Returns `false` when the test hook `Runtime::lose_next_publishes` dropped the
    /// messages (a crash: the caller must not acknowledge what it handled).
    async fn publish_outbox(
        &self,
        key: &str,
        mut instance: Instance<D, S>,
        mut revision: u64,
        emptying: Emptying,
    ) -> Result<bool, RuntimeError> {
        if instance.ledger.outbox.is_empty() {
            self.inner.cache.put(key, instance, revision);
            return Ok(true);
        }
        let lost = self
            .inner
            .lost_publishes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            tracing::warn!(saga_id = %key, "test crash: the saved messages are not published");
            return Ok(false);
        }
        // All at once, then every acknowledgement.
        let publishes = instance
            .ledger
            .outbox
            .iter()
            .map(|outgoing| self.inner.bus.publish_raw(outgoing.to_raw()));
        let acks = futures::future::join_all(publishes).await;
        if let Some(Err(e)) = acks.into_iter().find(Result::is_err) {
            // Saved, not sent: the timer task sends it once the broker is back.
            self.stranded().insert(key.to_owned());
            return Err(e.into());
        }
        self.stranded().remove(key);
        let sent: Vec<EventId> = instance.ledger.outbox.iter().map(|o| o.event_id).collect();
        if emptying == Emptying::Deferred {
            instance.ledger.outbox.clear();
            self.inner.cache.put(key, instance, revision);
            self.unflushed().insert(
                key.to_owned(),
                Unflushed {
                    revision,
                    since: std::time::Instant::now(),
                    sent,
                },
            );
            return Ok(true);
        }
        for _ in 0..MAX_CONFLICTS {
            instance
                .ledger
                .outbox
                .retain(|o| !sent.contains(&o.event_id));
            match self.save(key, &mut instance, Some(revision)).await {
                Ok(revision) => {
                    self.inner.cache.put(key, instance, revision);
                    return Ok(true);
                }
                Err(StoreError::Conflict(_)) => match self.load(key).await? {
                    Some((fresh, r)) => {
                        instance = fresh;
                        revision = r;
                    }
                    None => return Ok(true),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::Contention(key.to_owned(), MAX_CONFLICTS))
    }

    /// Fires the timers due now, each once across replicas (the save that removes a timer
    /// is compare-and-swap), and publishes what their reactions send. Each instance is
    /// handled on its own: one that fails (a store or broker away, a reaction that breaks
    /// the definition) is logged and tried again next tick, and the others fire; one whose
    /// record cannot be read is set aside. Returns how many instances changed.
    ///
    /// # Errors
    /// Listing the due timers failed.
    pub async fn fire_due_timers(&self) -> Result<usize, RuntimeError> {
        let now = self.inner.clock.now();
        let mut fired = 0;
        for due in self.inner.store.due(now).await? {
            match self.fire_one(&due, now).await {
                Ok(changed) => fired += usize::from(changed),
                Err(e) => {
                    tracing::warn!(saga_id = %due.key, error = %e, "firing this instance's timers failed; trying it again next tick");
                }
            }
        }
        Ok(fired)
    }

    /// Fires the due timers of one listed instance; its index entries go once what they
    /// set off is saved and published.
    async fn fire_one(
        &self,
        due: &Due,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, RuntimeError> {
        let key = &due.key;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut instance, revision) = match self.load(key).await {
                Ok(Some(loaded)) => loaded,
                Ok(None) => break,
                // Set aside by `load`: its entries go, nothing fires.
                Err(StoreError::Corrupt { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            let definition = self.definition_of(&mut instance)?;
            let before = instance.state;
            let lags: Vec<f64> = instance
                .ledger
                .timers
                .values()
                .filter_map(|at| (now - *at).to_std().ok())
                .map(|lag| lag.as_secs_f64())
                .collect();
            let changed = fire_due(definition, &mut instance, now).await?;
            if !changed {
                // Fired already (by another replica, or before a crash that stopped the
                // publish): finish publishing what it saved.
                let next = instance.next_timer();
                if !self
                    .publish_outbox(key, instance, revision, Emptying::Now)
                    .await?
                {
                    return Ok(false);
                }
                self.inner.store.fired(due, next).await?;
                return Ok(false);
            }
            match self.save(key, &mut instance, Some(revision)).await {
                Ok(revision) => {
                    crate::metrics::moved(Some(before), &instance);
                    crate::metrics::timers_fired(&instance.ledger.definition, &lags);
                    // The save indexed the timers it left.
                    let sent = self
                        .publish_outbox(key, instance, revision, Emptying::Now)
                        .await?;
                    if sent {
                        self.inner.store.fired(due, None).await?;
                    }
                    return Ok(true);
                }
                Err(StoreError::Conflict(_)) if attempts < MAX_CONFLICTS => {}
                Err(StoreError::Conflict(_)) => {
                    return Err(RuntimeError::Contention(key.clone(), MAX_CONFLICTS));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.store.fired(due, None).await?;
        Ok(false)
    }

    /// Publishes the outboxes whose publish failed (the broker was away), now that it may
    /// be back. Those that fail again wait for the next call. An outbox the broker refuses
    /// for good (a message too large, one it cannot carry, a permission missing) is logged
    /// at error and counted once, and the ones behind it go on; a broker still away stops
    /// the round (the rest would fail the same way).
    async fn resend_stranded(&self) {
        let keys: Vec<String> = self.stranded().iter().cloned().collect();
        for key in keys {
            let outcome = match self.load(&key).await {
                Ok(Some((instance, revision))) => self
                    .publish_outbox(&key, instance, revision, Emptying::Now)
                    .await
                    .map(drop),
                Ok(None) | Err(StoreError::Corrupt { .. }) => {
                    self.stranded().remove(&key);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(()) => {
                    self.refused().remove(&key);
                    tracing::info!(saga_id = %key, "saved messages sent after the broker came back");
                }
                Err(RuntimeError::Publish(e)) if refused_for_good(&e) => {
                    if self.refused().insert(key.clone()) {
                        tracing::error!(saga_id = %key, error = %e, "the broker refuses this instance's saved messages; they are kept and tried again every tick, and the other instances go on");
                        crate::metrics::outbox_refused(self.inner.definition.name());
                    }
                }
                Err(e) => {
                    tracing::debug!(saga_id = %key, error = %e, "saved messages still not sent; next tick");
                    break;
                }
            }
        }
    }

    /// Empties the records whose published messages were left for their next save, once
    /// they have waited `older_than`: from the remembered instance if it is still the
    /// stored one, else from the store; a record saved since is left alone (whoever
    /// saved it publishes what it lists).
    async fn flush_published(&self, older_than: Duration) -> Result<(), RuntimeError> {
        let ready: Vec<(String, Unflushed)> = self
            .unflushed()
            .extract_if(|_, u| u.since.elapsed() >= older_than)
            .collect();
        let mut ready = ready.into_iter();
        while let Some((key, waiting)) = ready.next() {
            if let Err(e) = self.flush_one(&key, &waiting).await {
                // The store is unavailable: all of them wait for the next round.
                let mut unflushed = self.unflushed();
                for (key, waiting) in std::iter::once((key, waiting)).chain(ready) {
                    unflushed.entry(key).or_insert(waiting);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Empties one record of what `waiting` names, if it is still the revision that
    /// listed them.
    async fn flush_one(&self, key: &str, waiting: &Unflushed) -> Result<(), RuntimeError> {
        let current = match self.inner.cache.take(key) {
            Some((instance, revision)) if revision == waiting.revision => {
                Some((instance, revision))
            }
            _ => self.load(key).await?,
        };
        let Some((mut instance, revision)) = current else {
            return Ok(());
        };
        if revision != waiting.revision {
            return Ok(());
        }
        instance
            .ledger
            .outbox
            .retain(|o| !waiting.sent.contains(&o.event_id));
        match self.save(key, &mut instance, Some(revision)).await {
            Ok(revision) => self.inner.cache.put(key, instance, revision),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Publishes the messages instances saved but did not publish (a crash between the two).
    /// Their ids are fixed, so the broker drops any that did go out. Returns how many
    /// instances had some.
    ///
    /// A started runtime does not need it: a message being handled when the process died
    /// is delivered again (and finishes the publish), a timer's index entry stays until
    /// what it set off is published, and an outbox the broker refused is sent again every
    /// tick. It lists every instance on stores without an index of outboxes
    /// ([`crate::nats::KvStore`]): a recovery tool, for the in-memory store of tests.
    ///
    /// # Errors
    /// As [`Runtime::handle`].
    pub async fn resend_pending(&self) -> Result<usize, RuntimeError> {
        let keys = self.inner.store.pending().await?;
        let mut resent = 0;
        for key in keys {
            if let Some((instance, revision)) = self.load(&key).await?
                && !instance.ledger.outbox.is_empty()
            {
                tracing::info!(saga_id = %key, messages = instance.ledger.outbox.len(), "re-sending saved messages");
                if self
                    .publish_outbox(&key, instance, revision, Emptying::Now)
                    .await?
                {
                    resent += 1;
                }
            }
        }
        Ok(resent)
    }

    /// Starts the saga: subscribes to its messages (a durable consumer `<service>_<saga>`
    /// shared by replicas), and every tick fires due timers and sends outboxes the broker
    /// refused. It reads no instance up front.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start(&self) -> Result<Running, RuntimeError> {
        let definition = &self.inner.definition;
        // No bus inbox: instances remember the messages they processed.
        let mut subscription = Subscription::new(definition.service(), definition.name())
            .max_in_flight(self.inner.max_in_flight)
            .inbox_ttl(None)
            // One instance's messages in order (fewer conflicting saves); replies come
            // from many aggregates but share the saga's correlation id.
            .ordered_by(a4co_events::bus::OrderBy::Correlation);
        let subjects: std::collections::BTreeSet<&str> = std::iter::once(definition)
            .chain(self.inner.older.values())
            .flat_map(Definition::subjects)
            .collect();
        for subject in subjects {
            subscription = subscription.subject(subject);
        }
        let runtime = self.clone();
        let handle = self
            .inner
            .bus
            .subscribe(subscription, move |message: Envelope<AnyMessage>, _| {
                let runtime = runtime.clone();
                async move {
                    match runtime.handle_with(&message, Emptying::Deferred).await {
                        Ok((_, false)) => Err(HandlerError::retryable(
                            "test crash between save and publish: not acknowledged",
                        )),
                        Ok((Applied::NotStarted, _)) => Err(HandlerError::retryable(format!(
                            "{} arrived before its saga started",
                            message.event_type()
                        ))),
                        Ok(_) => Ok(()),
                        Err(
                            e @ (RuntimeError::Reaction(_)
                            | RuntimeError::Store(StoreError::Corrupt { .. })),
                        ) => Err(HandlerError::permanent(e)),
                        // The store or the broker down (a leader election, a node lost):
                        // retried for the outage, the deliveries not counted.
                        Err(e @ RuntimeError::Store(StoreError::Unavailable(_))) => {
                            Err(HandlerError::unavailable(e))
                        }
                        Err(RuntimeError::Publish(e)) => Err(HandlerError::from(e)),
                        Err(e) => Err(HandlerError::retryable(e)),
                    }
                }
            })
            .await?;
        let (stop, mut stopped) = watch::channel(false);
        let runtime = self.clone();
        let ticker = tokio::spawn(async move {
            let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut counted: Option<std::time::Instant> = None;
            let mut every = tokio::time::interval(runtime.inner.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The stop first: an overdue tick is always ready and would starve it.
                let stop = std::pin::pin!(stopped.changed());
                let tick = std::pin::pin!(every.tick());
                match futures::future::select(stop, tick).await {
                    futures::future::Either::Left(_) => {
                        if let Err(e) = runtime.flush_published(Duration::ZERO).await {
                            tracing::warn!(error = %e, "emptying published outboxes at shutdown failed; a restart re-sends them (the broker drops what it has seen)");
                        }
                        return;
                    }
                    futures::future::Either::Right(_) => {
                        if let Err(e) = runtime.fire_due_timers().await {
                            tracing::warn!(error = %e, "listing due timers failed; trying again next tick");
                        }
                        runtime.resend_stranded().await;
                        if let Err(e) = runtime.flush_published(FLUSH_AFTER).await {
                            tracing::warn!(error = %e, "emptying published outboxes failed; trying again next tick");
                        }
                        if let Some(period) = runtime.inner.census_every
                            && counted.is_none_or(|at| at.elapsed() >= period)
                        {
                            counted = Some(std::time::Instant::now());
                            runtime.take_census(&counting);
                        }
                    }
                }
            }
        });
        Ok(Running {
            handle,
            ticker,
            stop,
        })
    }

    /// How many instances of this saga wait in each state that is not final (every such
    /// state listed, 0 included), which a started runtime counts every
    /// [`RuntimeBuilder::census_every`]. Read from the store's index of waiting instances
    /// ([`Store::waiting`]; on NATS, one headers-only pass over their entries), so it costs
    /// what is under way, never what finished; an instance listed under two states is
    /// decided by its record. A store without that index is read whole instead. Records of
    /// other sagas, and records that cannot be read, are not counted; an instance saved
    /// before the index existed is counted from its next save.
    ///
    /// # Errors
    /// The store could not be read.
    pub async fn census(&self) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(bound(deserialize = "S: State"))]
        struct StateOnly<S> {
            state: S,
        }
        let mut counts: BTreeMap<&'static str, u64> = S::ALL
            .iter()
            .filter(|s| !s.is_final())
            .map(|s| (s.name(), 0))
            .collect();
        let saga = self.inner.definition.name();
        let Some(listed) = self.inner.store.waiting(saga).await? else {
            return self.census_of_every_record(counts).await;
        };
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, state) in listed {
            by_key.entry(key).or_default().push(state);
        }
        for (key, states) in by_key {
            let state = match states.as_slice() {
                [one] => S::ALL.iter().find(|s| s.name() == one).copied(),
                _ => self
                    .inner
                    .store
                    .load(&key)
                    .await?
                    .and_then(|stored| serde_json::from_slice::<StateOnly<S>>(&stored.record).ok())
                    .map(|only| only.state),
            };
            if let Some(state) = state.filter(|s| !s.is_final()) {
                *counts.entry(state.name()).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// [`Runtime::census`] from every record of the store.
    async fn census_of_every_record(
        &self,
        mut counts: BTreeMap<&'static str, u64>,
    ) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Book {
            #[serde(rename = "sagaId")]
            saga_id: String,
        }
        #[derive(serde::Deserialize)]
        #[serde(bound(deserialize = "S: State"))]
        struct Only<S> {
            state: S,
            book: Book,
        }
        let prefix = format!("{}/", self.inner.definition.name());
        for record in self.inner.store.records().await? {
            if let Ok(Only::<S> { state, book }) = serde_json::from_slice(&record)
                && !state.is_final()
                && book.saga_id.starts_with(&prefix)
            {
                *counts.entry(state.name()).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Counts the waiting instances for the gauge, in the background, unless a count is
    /// still under way.
    fn take_census(&self, running: &Arc<std::sync::atomic::AtomicBool>) {
        if running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (runtime, running) = (self.clone(), Arc::clone(running));
        tokio::spawn(async move {
            match runtime.census().await {
                Ok(counts) => {
                    crate::metrics::waiting(runtime.inner.definition.name(), &counts);
                }
                Err(e) => tracing::warn!(error = %e, "counting the waiting instances failed"),
            }
            running.store(false, Ordering::SeqCst);
        });
    }
}

/// A started saga runtime: its subscription and timer task.
#[derive(Debug)]
pub struct Running {
    handle: SubscriptionHandle,
    ticker: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// The health of the runtime's subscription (`<service>/<saga>`), for a service's
    /// `/health` (`service::Workers::watch`).
    pub fn health(&self) -> a4co_events::bus::SubscriptionHealth {
        self.handle.health()
    }

    /// Stops taking messages and timers, letting the reactions under way finish, then
    /// takes what they published out of the records.
    pub async fn shutdown(self) {
        // Messages first (their outboxes are then emptied by the timer task's last round).
        self.handle.shutdown().await;
        let _ = self.stop.send(true);
        let _ = self.ticker.await;
    }

    /// Stops at once, as a crash would (for tests).
    pub fn abort(self) {
        self.ticker.abort();
        self.handle.abort();
    }
}

/// Whether the broker refused a publish for good: sending it again as it is fails again,
/// so it must not hold up the outboxes behind it.
fn refused_for_good(e: &a4co_events::bus::PublishError) -> bool {
    use a4co_events::bus::PublishErrorKind as Kind;
    matches!(
        e.kind(),
        Kind::Rejected | Kind::InvalidMessage | Kind::PermissionDenied
    )
}

//! Given/when/then for sagas: a [`Scenario`] runs a saga definition on a recording
//! in-memory bus, an in-memory store and a virtual clock, and feeds it messages directly
//! (no consumer in between), so every step is deterministic. It can replay duplicates, move
//! time, and crash the runtime between saving an instance and publishing its messages.
//!
//! ```
//! use std::time::Duration;
//! use a4co_events::catalog::order::{CancelOrder, CancellationReason, OrderCreated};
//! use a4co_events::catalog::payment::PaymentSucceeded;
//! use a4co_saga::{Applied, Definition, State};
//! use a4co_testkit::saga::Scenario;
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
//! #[serde(rename_all = "kebab-case")]
//! enum Pay { Waiting, #[state(final)] Paid, #[state(final, outcome = "failed")] Expired }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let definition = Definition::<(), Pay>::builder("payment-window", "order-service")
//!     .correlate::<PaymentSucceeded>(|paid| paid.order_id.clone())
//!     .starts_with::<OrderCreated>().to(Pay::Waiting, |step, _| step.schedule("pay", Duration::from_secs(900)))
//!     .on::<PaymentSucceeded>(Pay::Waiting).to(Pay::Paid, |step, _| step.cancel("pay"))
//!     .on_timeout(Pay::Waiting, "pay").to(Pay::Expired, |step| {
//!         let cancel = CancelOrder { reason: CancellationReason::PaymentTimeout, refund_required: false, detail: None };
//!         step.send("cancel", step.correlation_id().to_owned(), cancel);
//!     })
//!     .build()
//!     .unwrap();
//! let scenario = Scenario::new(definition).await;
//! let order = a4co_testkit::example_envelope::<OrderCreated>("ord-1").into_any();
//! scenario.when(&order).await;
//! scenario.then_state(Pay::Waiting).await;
//! // The same message again changes nothing.
//! assert_eq!(scenario.when(&order).await, Applied::Duplicate);
//!
//! // No payment; the process dies right after saving the expiry: nothing went out...
//! scenario.crash_after_next_save();
//! scenario.when_time_passes(Duration::from_secs(901)).await;
//! scenario.then_sent::<CancelOrder>(0);
//! // ...until it restarts, and then once.
//! scenario.restart().await;
//! let [cancel] = scenario.then_sent::<CancelOrder>(1).try_into().unwrap();
//! assert_eq!(cancel.aggregate_id, "ord-1");
//! scenario.then_state_of("payment-window/ord-1", Pay::Expired).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use a4co_events::{AnyMessage, Envelope, EventId, Message};
use a4co_saga::{
    Applied, Clock as _, Data, Definition, Instance, MemoryStore, Runtime, State, VirtualClock,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::bus::RecordingBus;

/// When a scenario's virtual clock starts: 2026-01-15 10:00:00 UTC, as the catalog examples.
pub fn scenario_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// The input the `then_*` checks look at.
#[derive(Debug, Default)]
struct LastInput {
    what: String,
    published_before: usize,
    saga_id: Option<String>,
}

/// A saga under test. See the [module docs](self).
pub struct Scenario<D, S> {
    runtime: Mutex<Runtime<D, S, RecordingBus, MemoryStore>>,
    definition: Definition<D, S>,
    bus: RecordingBus,
    store: MemoryStore,
    clock: VirtualClock,
    seen: Arc<Mutex<usize>>,
    /// The last input: what it was, how many messages were published before it, and the
    /// instance it reached (for the `then_*` checks).
    last: Mutex<LastInput>,
    /// What each instance went through, by saga id (see [`Scenario::histories`]).
    log: Mutex<BTreeMap<String, History>>,
}

impl<D, S> std::fmt::Debug for Scenario<D, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").finish_non_exhaustive()
    }
}

impl<D: Data, S: State> Scenario<D, S> {
    /// `definition` on a fresh recording bus, store and virtual clock.
    pub async fn new(definition: Definition<D, S>) -> Self {
        Self::starting_at(definition, scenario_start()).await
    }

    /// As [`Scenario::new`], the clock starting at `start`.
    pub async fn starting_at(definition: Definition<D, S>, start: DateTime<Utc>) -> Self {
        let bus = RecordingBus::new().await;
        let store = MemoryStore::new();
        let clock = VirtualClock::at(start);
        let runtime = runtime_on(&definition, &bus, &store, &clock);
        Scenario {
            runtime: Mutex::new(runtime),
            last: Mutex::default(),
            definition,
            bus,
            store,
            clock,
            seen: Arc::default(),
            log: Mutex::default(),
        }
    }

    fn runtime(&self) -> Runtime<D, S, RecordingBus, MemoryStore> {
        self.runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The runtime under test.
    pub fn current_runtime(&self) -> Runtime<D, S, RecordingBus, MemoryStore> {
        self.runtime()
    }

    /// The recording bus (what was published, and a bus to subscribe to).
    pub fn bus(&self) -> &RecordingBus {
        &self.bus
    }

    /// The in-memory store holding the scenario's instances, to inspect them.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Applies each message in order, as history.
    ///
    /// # Panics
    /// When the runtime fails on one (the panic names it).
    pub async fn given<'m>(&self, messages: impl IntoIterator<Item = &'m Envelope<AnyMessage>>) {
        for m in messages {
            self.when(m).await;
        }
    }

    /// Applies one message and says what the runtime did with it.
    ///
    /// # Panics
    /// When the runtime fails on it (the panic names the message and the error).
    pub async fn when(&self, message: &Envelope<AnyMessage>) -> Applied {
        self.try_when(message)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", message.event_type(), message.event_id))
    }

    /// Applies one message and returns the runtime's error, if any.
    ///
    /// # Errors
    /// The runtime's.
    pub async fn try_when(
        &self,
        message: &Envelope<AnyMessage>,
    ) -> Result<Applied, a4co_saga::RuntimeError> {
        let runtime = self.runtime();
        let before = self.bus.all_published().len();
        let saga_id = runtime.definition().instance_id(message);
        self.note_input(message.event_type().to_owned(), before, saga_id.clone());
        let applied = runtime.handle(message).await?;
        if let Some(saga_id) = saga_id {
            self.record(&saga_id, Input::message(message), before).await;
        }
        Ok(applied)
    }

    /// Moves the clock by `by` and fires the timers then due; returns how many instances
    /// they changed.
    ///
    /// # Panics
    /// When the runtime fails.
    pub async fn when_time_passes(&self, by: Duration) -> usize {
        self.clock.advance(by);
        let now = self.clock.now();
        let runtime = self.runtime();
        let mut due = Vec::new();
        for key in self.store.keys() {
            let instance = runtime.instance(&key).await.ok().flatten();
            if instance
                .and_then(|i| i.next_timer())
                .is_some_and(|at| at <= now)
            {
                due.push(key);
            }
        }
        let before = self.bus.all_published().len();
        let only = (due.len() == 1).then(|| due[0].clone());
        self.note_input(format!("{by:?} passing"), before, only);
        let changed = runtime
            .fire_due_timers()
            .await
            .unwrap_or_else(|e| panic!("firing timers: {e}"));
        for key in due {
            self.record(&key, Input::Timers, before).await;
        }
        changed
    }

    /// Notes what `saga_id` did with `input`: the state it is in now and what it sent
    /// since `before` messages were published.
    async fn record(&self, saga_id: &str, input: Input, before: usize) {
        let instance = self.runtime().instance(saga_id).await.ok().flatten();
        let sent = sent_by(&self.bus, saga_id, before);
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let history = log.entry(saga_id.to_owned()).or_insert_with(|| History {
            saga_id: saga_id.to_owned(),
            version: instance.as_ref().map_or(0, Instance::version),
            steps: Vec::new(),
        });
        history.steps.push(Recorded {
            at: self.clock.now(),
            input,
            state: instance.map(|i| i.state.name().to_owned()),
            sent,
        });
    }

    /// What each instance of the scenario went through so far: its messages and timer
    /// rounds in order, with the state and the messages sent after each. Save them (they
    /// are JSON) to check a later version of the definition against with [`replay`].
    pub fn histories(&self) -> Vec<History> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The next instance saved does not publish its messages, as if the process died right
    /// after the save. [`Scenario::restart`] brings them out.
    pub fn crash_after_next_save(&self) {
        self.runtime().lose_next_publishes(1);
    }

    /// A new runtime on the same store, bus and clock, which re-sends what was saved but not
    /// published (as a restarted service does). Returns how many instances had some.
    ///
    /// # Panics
    /// When re-sending fails.
    pub async fn restart(&self) -> usize {
        let fresh = runtime_on(&self.definition, &self.bus, &self.store, &self.clock);
        let before = self.bus.all_published().len();
        self.note_input("the restart".to_owned(), before, None);
        *self.runtime.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        fresh
            .resend_pending()
            .await
            .unwrap_or_else(|e| panic!("re-sending after restart: {e}"))
    }

    /// The instance `saga_id`, as stored.
    ///
    /// # Panics
    /// When the store cannot read it.
    pub async fn instance(&self, saga_id: &str) -> Option<Instance<D, S>> {
        self.runtime()
            .instance(saga_id)
            .await
            .unwrap_or_else(|e| panic!("{saga_id}: {e}"))
    }

    /// The state of instance `saga_id`.
    pub async fn state(&self, saga_id: &str) -> Option<S> {
        self.instance(saga_id).await.map(|i| i.state)
    }

    /// Every message published (and stored by the broker) so far.
    pub fn sent(&self) -> Vec<Envelope<AnyMessage>> {
        self.bus.all_published()
    }

    /// The messages published since the last `take_sent*` call.
    pub fn take_sent(&self) -> Vec<Envelope<AnyMessage>> {
        let all = self.bus.all_published();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let new = all.get(*seen..).map(<[_]>::to_vec).unwrap_or_default();
        *seen = all.len();
        new
    }

    /// The messages of type `M` published since the last `take_sent*` call (others taken
    /// too are dropped).
    pub fn take_sent_of<M>(&self) -> Vec<Envelope<M>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.take_sent()
            .into_iter()
            .filter_map(|m| m.downcast::<M>().ok())
            .collect()
    }

    /// Every message of type `M` published so far.
    pub fn sent_of<M>(&self) -> Vec<Envelope<M>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.sent()
            .into_iter()
            .filter_map(|m| m.downcast::<M>().ok())
            .collect()
    }
}

impl<D: Data, S: State> Scenario<D, S> {
    fn note_input(&self, what: String, published_before: usize, saga_id: Option<String>) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = LastInput {
            what,
            published_before,
            saga_id,
        };
    }

    /// Checks that the last input (the last `when`, `given` message, `when_time_passes`
    /// or `restart`) made the saga send exactly `n` messages of type `M`, and returns them
    /// for closer checks. Call it once per type: each looks at the same input.
    ///
    /// # Panics
    /// When it sent another number of them; the panic lists what it sent.
    #[track_caller]
    pub fn then_sent<M>(&self, n: usize) -> Vec<Envelope<M>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let since = self
            .bus
            .all_published()
            .get(last.published_before..)
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let all: Vec<&'static str> = since.iter().map(Envelope::event_type).collect();
        let sent: Vec<Envelope<M>> = since
            .into_iter()
            .filter_map(|m| m.downcast::<M>().ok())
            .collect();
        assert!(
            sent.len() == n,
            "after {}: expected {n} {} sent, found {} (all it sent: {all:?})",
            last.what,
            M::TYPE,
            sent.len()
        );
        sent
    }

    /// Checks that the instance the last input reached is in `state` now.
    ///
    /// # Panics
    /// When it is in another state or gone, or the last input reached no single instance
    /// (timers of several instances, a restart: name it with [`Scenario::then_state_of`]).
    pub async fn then_state(&self, state: S) {
        let last = {
            let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            (last.what.clone(), last.saga_id.clone())
        };
        let (what, Some(saga_id)) = last else {
            panic!(
                "after {}: no single instance to check; use then_state_of",
                last.0
            );
        };
        let now = self.state(&saga_id).await;
        assert!(
            now == Some(state),
            "after {what}: expected {saga_id} in {}, found {}",
            state.name(),
            now.map_or("no instance", State::name)
        );
    }

    /// Checks that instance `saga_id` is in `state` now.
    ///
    /// # Panics
    /// When it is in another state or gone.
    pub async fn then_state_of(&self, saga_id: &str, state: S) {
        let now = self.state(saga_id).await;
        assert!(
            now == Some(state),
            "expected {saga_id} in {}, found {}",
            state.name(),
            now.map_or("no instance", State::name)
        );
    }
}

/// A runtime for a scenario: `definition` on its bus, store and clock.
fn runtime_on<D: Data, S: State>(
    definition: &Definition<D, S>,
    bus: &RecordingBus,
    store: &MemoryStore,
    clock: &VirtualClock,
) -> Runtime<D, S, RecordingBus, MemoryStore> {
    Runtime::builder(definition.clone(), bus.clone(), store.clone())
        .clock(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("a runtime of the current version only cannot fail: {e}"))
}

/// The messages `saga_id` sent among those published after the first `before`.
fn sent_by(bus: &RecordingBus, saga_id: &str, before: usize) -> Vec<Sent> {
    bus.all_published()
        .get(before..)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.metadata.saga_id.as_deref() == Some(saga_id))
        .map(|e| Sent {
            event_type: e.event_type().to_owned(),
            event_id: e.event_id,
        })
        .collect()
}

/// What one saga instance went through in a [`Scenario`]: the input of each step, and the
/// state and messages that followed. Serializable: record histories of the version in
/// production, replay them against the next one with [`replay`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The instance (`order-fulfillment/ord-1`).
    pub saga_id: String,
    /// The version of the definition it ran on.
    pub version: u32,
    /// Its steps, in order.
    pub steps: Vec<Recorded>,
}

/// One step of a [`History`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// When it happened (the scenario's clock).
    pub at: DateTime<Utc>,
    /// What came in.
    pub input: Input,
    /// The state after it (`None`: no instance).
    pub state: Option<String>,
    /// The messages the instance sent on it, in order.
    pub sent: Vec<Sent>,
}

/// The input of a step: a message, or the clock reaching `at` (the timers then due fire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Input {
    /// A message, as published: its JSON body and headers.
    Message {
        /// The envelope's JSON body.
        body: serde_json::Value,
        /// Its NATS headers.
        headers: Vec<(String, String)>,
    },
    /// The timers due at the step's time.
    Timers,
}

impl Input {
    fn message(envelope: &Envelope<AnyMessage>) -> Self {
        Input::Message {
            body: serde_json::from_slice(&envelope.to_json()).unwrap_or_default(),
            headers: envelope
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Input::Message { body, .. } => {
                body["eventType"].as_str().unwrap_or("a message").to_owned()
            }
            Input::Timers => "the timers due".to_owned(),
        }
    }
}

/// A message a step sent: its type and id (the id is fixed by the saga id and the step's
/// name, so a renamed or different step shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// `inventory.cmd.reserve_stock`.
    pub event_type: String,
    /// Its id.
    pub event_id: EventId,
}

/// Where a replayed history left the path it recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The instance.
    pub saga_id: String,
    /// The step (0 is the first).
    pub step: usize,
    /// Its input.
    pub input: String,
    /// The state and messages recorded.
    pub recorded: (Option<String>, Vec<String>),
    /// The state and messages the definition under check gives.
    pub replayed: (Option<String>, Vec<String>),
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} step {} ({}): recorded {:?} sending {:?}, now {:?} sending {:?}",
            self.saga_id,
            self.step,
            self.input,
            self.recorded.0,
            self.recorded.1,
            self.replayed.0,
            self.replayed.1
        )
    }
}

/// What [`replay`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// Histories replayed.
    pub checked: usize,
    /// Those that took another path, with where.
    pub diverged: Vec<Divergence>,
}

impl ReplayReport {
    /// Whether every history took its recorded path.
    pub fn is_clean(&self) -> bool {
        self.diverged.is_empty()
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} histories take another path",
            self.diverged.len(),
            self.checked
        )?;
        for d in &self.diverged {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Replays recorded histories against `definition` and reports every one that would now
/// take another path: at some step a different state, or other messages (by type and step),
/// or a timer firing where none did. Each history runs alone on a fresh [`Scenario`] at its
/// recorded times; before each step the timers then due fire, as a running service would.
///
/// A definition that passes can replace the recorded one for the instances under way (the
/// same version, or a [`RuntimeBuilder::migrate`](a4co_saga::RuntimeBuilder::migrate)); one that does not needs a new
/// [`Builder::version`](a4co_saga::Builder::version), with the old one kept running
/// ([`RuntimeBuilder::keep_running`](a4co_saga::RuntimeBuilder::keep_running)). An additive change (a reaction to a message the histories
/// never had) passes.
pub async fn replay<D: Data, S: State>(
    definition: &Definition<D, S>,
    histories: &[History],
) -> ReplayReport {
    let mut report = ReplayReport {
        checked: histories.len(),
        diverged: Vec::new(),
    };
    for history in histories {
        if let Some(divergence) = replay_one(definition, history).await {
            report.diverged.push(divergence);
        }
    }
    report
}

async fn replay_one<D: Data, S: State>(
    definition: &Definition<D, S>,
    history: &History,
) -> Option<Divergence> {
    let start = history.steps.first()?.at;
    let scenario = Scenario::starting_at(definition.clone(), start).await;
    let runtime = scenario.runtime();
    let names = |sent: &[Sent]| -> Vec<String> {
        sent.iter()
            .map(|s| format!("{} {}", s.event_type, s.event_id))
            .collect()
    };
    for (i, step) in history.steps.iter().enumerate() {
        let now = scenario.clock.now();
        if let Ok(by) = (step.at - now).to_std() {
            scenario.clock.advance(by);
        }
        let before = scenario.bus.all_published().len();
        let mut outcome = runtime.fire_due_timers().await.map(drop);
        if let (Input::Message { body, headers }, Ok(())) = (&step.input, &outcome) {
            let headers = headers.iter().cloned().collect();
            outcome = match a4co_events::decode(body.to_string().as_bytes(), &headers) {
                Ok(message) => runtime.handle(&message).await.map(drop),
                Err(e) => {
                    tracing::warn!(saga_id = %history.saga_id, error = %e, "a recorded message no longer decodes");
                    Ok(())
                }
            };
        }
        let state = runtime
            .instance(&history.saga_id)
            .await
            .ok()
            .flatten()
            .map(|i| i.state.name().to_owned());
        let sent = sent_by(&scenario.bus, &history.saga_id, before);
        let mut replayed = (state, names(&sent));
        if let Err(e) = outcome {
            replayed.1.push(format!("(refused: {e})"));
        }
        let recorded = (step.state.clone(), names(&step.sent));
        if replayed != recorded {
            return Some(Divergence {
                saga_id: history.saga_id.clone(),
                step: i,
                input: step.input.describe(),
                recorded,
                replayed,
            });
        }
    }
    None
}

/// What a stand-in answers to one message: the replies to publish (none: stay silent).
type Answer = Arc<dyn Fn(&Envelope<AnyMessage>) -> Vec<Envelope<AnyMessage>> + Send + Sync>;

/// Stand-ins for the services a saga talks to, on a real bus: each answers the message
/// types it takes with a closure (typically through a shared ledger the test reads), once
/// per message id, as an idempotent service would (a redelivery is answered with the same
/// replies, not run again). Build one per test:
///
/// ```
/// use a4co_events::catalog::order::{ConfirmOrder, OrderConfirmed};
/// use a4co_events::{Envelope, Message};
/// use a4co_testkit::saga::Responders;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = a4co_events::bus::MemoryBus::provisioned().await?;
/// let responders = Responders::new().on::<ConfirmOrder>("order-sim", |command| {
///     let confirmed = OrderConfirmed::example();
///     vec![Envelope::caused_by(command, "order-service", &command.aggregate_id, confirmed).into_any()]
/// });
/// let handles = responders.start(&bus).await?;
/// # drop(handles);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Responders {
    /// By service: the message types it takes, with their answers.
    services: Vec<(String, Vec<(&'static str, Answer)>)>,
}

impl std::fmt::Debug for Responders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<&str> = self.services.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("Responders")
            .field("services", &services)
            .finish()
    }
}

impl Responders {
    /// No stand-ins yet.
    pub fn new() -> Self {
        Responders::default()
    }

    /// The stand-in `service` (its consumer's name) answers each message of type `M` with
    /// what `answer` returns.
    #[must_use]
    pub fn on<M>(
        mut self,
        service: &str,
        answer: impl Fn(&Envelope<M>) -> Vec<Envelope<AnyMessage>> + Send + Sync + 'static,
    ) -> Self
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        let typed: Answer =
            Arc::new(
                move |message: &Envelope<AnyMessage>| match message.clone().downcast::<M>() {
                    Ok(message) => answer(&message),
                    Err(_) => Vec::new(),
                },
            );
        match self.services.iter_mut().find(|(s, _)| s == service) {
            Some((_, answers)) => answers.push((M::TYPE, typed)),
            None => self
                .services
                .push((service.to_owned(), vec![(M::TYPE, typed)])),
        }
        self
    }

    /// Subscribes every stand-in to `bus` (one durable consumer `<service>_commands` each,
    /// 64 messages at once) and publishes their answers.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start<B>(
        &self,
        bus: &B,
    ) -> Result<Vec<a4co_events::bus::SubscriptionHandle>, a4co_events::bus::SubscribeError>
    where
        B: a4co_events::bus::Publisher + a4co_events::bus::Subscriber,
    {
        use a4co_events::bus::{HandlerError, Subscription};

        let mut handles = Vec::new();
        for (service, answers) in &self.services {
            let mut subscription = Subscription::new(service, "commands").max_in_flight(64);
            for (event_type, _) in answers {
                subscription = subscription.subject(*event_type);
            }
            let answers = Arc::new(answers.clone());
            // Each message id answered once; a redelivery gets the same replies again
            // (same ids: the broker drops what it stored already).
            let answered: Arc<Mutex<std::collections::HashMap<_, Vec<Envelope<AnyMessage>>>>> =
                Arc::default();
            let publisher = bus.clone();
            let handle = bus
                .subscribe(subscription, move |message: Envelope<AnyMessage>, _| {
                    let answers = Arc::clone(&answers);
                    let answered = Arc::clone(&answered);
                    let publisher = publisher.clone();
                    async move {
                        let replies = answered
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(message.event_id)
                            .or_insert_with(|| {
                                answers
                                    .iter()
                                    .find(|(t, _)| *t == message.event_type())
                                    .map(|(_, answer)| answer(&message))
                                    .unwrap_or_default()
                            })
                            .clone();
                        for reply in &replies {
                            publisher
                                .publish(reply)
                                .await
                                .map_err(HandlerError::retryable)?;
                        }
                        Ok(())
                    }
                })
                .await?;
            handles.push(handle);
        }
        Ok(handles)
    }
}

//! Declaring a saga: its states, the messages it starts on and reacts to, its timeouts; the
//! checks a definition passes when it is built; its Mermaid diagram.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use a4co_events::{AnyMessage, Envelope, Message};

use crate::error::{DefinitionError, DefinitionErrorKind};
use crate::record::{Data, State};
use crate::step::Step;

/// A reaction's outcome: the next state, or why the message cannot be its input.
pub(crate) type Outcome<S> = Result<S, String>;
pub(crate) type React<D, S> =
    Arc<dyn Fn(&mut Step<D>, Envelope<AnyMessage>) -> Outcome<S> + Send + Sync>;
/// A future that hands the step back with the outcome.
pub(crate) type StepFuture<D, S> = Pin<Box<dyn Future<Output = (Step<D>, Outcome<S>)> + Send>>;
pub(crate) type ReactAsync<D, S> =
    Arc<dyn Fn(Step<D>, Envelope<AnyMessage>) -> StepFuture<D, S> + Send + Sync>;

/// The payload under a message type that another build may have put there (an older
/// version's variant, say): refused, never a panic.
fn mismatch(found: &Envelope<AnyMessage>, expected: &str) -> String {
    format!(
        "a {} payload ({:?}) cannot be the input of the {expected} reaction",
        found.event_type(),
        std::mem::discriminant(&found.data)
    )
}
pub(crate) type OnTimeoutFn<D, S> = Arc<dyn Fn(&mut Step<D>) -> S + Send + Sync>;
pub(crate) type Correlate = Arc<dyn Fn(&Envelope<AnyMessage>) -> String + Send + Sync>;

/// What sets a reaction off: a message type, or a timer by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// A message of this type (`inventory.stock_reserved`).
    Message(&'static str),
    /// The timer of this name ran out.
    Timeout(&'static str),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Message(t) => f.write_str(t),
            Trigger::Timeout(t) => write!(f, "timeout {t}"),
        }
    }
}

pub(crate) enum Run<D, S> {
    Message(React<D, S>),
    MessageAsync(ReactAsync<D, S>),
    Timeout(OnTimeoutFn<D, S>),
}

pub(crate) struct Reaction<D, S> {
    /// `None` for a start: there is no instance yet.
    pub(crate) from: Option<S>,
    pub(crate) trigger: Trigger,
    pub(crate) to: Vec<S>,
    /// Whether the reaction chooses among `to` (else it always leads to its one state).
    pub(crate) choice: bool,
    pub(crate) run: Run<D, S>,
}

/// A checked saga definition: build one with [`Definition::builder`]. Cheap to clone.
pub struct Definition<D, S> {
    inner: Arc<Inner<D, S>>,
}

impl<D, S> Clone for Definition<D, S> {
    fn clone(&self) -> Self {
        Definition {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<D, S> {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) service: Arc<str>,
    pub(crate) reactions: Vec<Reaction<D, S>>,
    pub(crate) correlate: HashMap<&'static str, Correlate>,
    /// The subjects of every message type it starts on or reacts to.
    pub(crate) subjects: BTreeSet<&'static str>,
}

impl<D, S> fmt::Debug for Definition<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definition")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("service", &self.inner.service)
            .field("reactions", &self.inner.reactions.len())
            .finish_non_exhaustive()
    }
}

impl<D: Data, S: State> Definition<D, S> {
    /// Starts declaring the saga `name` (`order-fulfillment`), run by `service` (the
    /// `source` of the messages it sends, and its consumer's name).
    pub fn builder(name: impl Into<String>, service: impl Into<String>) -> Builder<D, S> {
        Builder {
            name: name.into(),
            version: 1,
            service: service.into(),
            reactions: Vec::new(),
            correlate: HashMap::new(),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its version (1 unless [`Builder::version`] says otherwise): every instance records
    /// the version it started on and runs on it to the end (see
    /// [`RuntimeBuilder::keep_running`](crate::RuntimeBuilder::keep_running)).
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// The service that runs it.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The service, shared (the `source` of every message a step sends).
    pub(crate) fn source(&self) -> Arc<str> {
        Arc::clone(&self.inner.service)
    }

    /// The subjects of the messages it starts on or reacts to.
    pub fn subjects(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.inner.subjects.iter().copied()
    }

    /// The id of the instance a message belongs to (`order-fulfillment/ord-1`), or `None`
    /// when the saga does not take messages of its type.
    pub fn instance_id(&self, message: &Envelope<AnyMessage>) -> Option<String> {
        let correlate = self.inner.correlate.get(message.event_type())?;
        Some(format!("{}/{}", self.inner.name, correlate(message)))
    }

    pub(crate) fn reaction(&self, from: Option<S>, trigger: Trigger) -> Option<&Reaction<D, S>> {
        self.inner
            .reactions
            .iter()
            .find(|r| r.from == from && r.trigger == trigger)
    }

    /// The timers state `from` reacts to.
    pub(crate) fn timers_of(&self, from: S) -> impl Iterator<Item = &'static str> + '_ {
        self.inner
            .reactions
            .iter()
            .filter_map(move |r| match r.trigger {
                Trigger::Timeout(t) if r.from == Some(from) => Some(t),
                _ => None,
            })
    }

    /// The definition as a Mermaid state diagram (`stateDiagram-v2`).
    pub fn mermaid(&self) -> String {
        use fmt::Write as _;
        let mut out = String::from("stateDiagram-v2\n");
        let id = |s: S| s.name().replace('-', "_");
        for r in &self.inner.reactions {
            let from = r.from.map_or_else(|| "[*]".to_owned(), id);
            for to in &r.to {
                let _ = writeln!(out, "    {from} --> {}: {}", id(*to), r.trigger);
            }
        }
        for s in S::ALL {
            if s.is_final() {
                let _ = writeln!(out, "    {} --> [*]", id(*s));
            }
            if s.name().contains('-') {
                let _ = writeln!(out, "    {}: {}", id(*s), s.name());
            }
        }
        out
    }
}

/// Declares a saga; [`Builder::build`] checks it.
#[must_use]
pub struct Builder<D, S> {
    name: String,
    version: u32,
    service: String,
    reactions: Vec<Reaction<D, S>>,
    correlate: HashMap<&'static str, Correlate>,
}

impl<D, S> fmt::Debug for Builder<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<D: Data, S: State> Builder<D, S> {
    /// The definition's version (default 1). Change it whenever a change to the
    /// reactions could move an instance differently from the way it started (a changed
    /// transition, a command sent or not): instances under way keep the version they
    /// started on. The replay check (`a4co_testkit::saga::replay`) tells which changes
    /// need it.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// A message of type `M` starts an instance (from `D::default()`): say where with
    /// [`On::to`] or [`On::choose`].
    pub fn starts_with<M>(self) -> On<D, S, M>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        On {
            builder: self,
            from: None,
            message: PhantomData,
        }
    }

    /// In state `from`, a message of type `M` sets off a reaction: say which and where it
    /// leads with [`On::to`], [`On::choose`] or their `_async` forms (staying in `from`
    /// counts only if they name it).
    ///
    /// `from` may be a final state: a finished saga then still answers that message (a
    /// payment that reaches a cancelled order is refunded), and stays finished (it may
    /// lead to final states only). Any other message reaching it is acknowledged and
    /// logged.
    pub fn on<M>(self, from: S) -> On<D, S, M>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        On {
            builder: self,
            from: Some(from),
            message: PhantomData,
        }
    }

    /// In state `from`, the timer `timer` running out (see [`Step::schedule`]) sets off a
    /// reaction: say which and where it leads with [`OnTimeout::to`] or
    /// [`OnTimeout::choose`].
    pub fn on_timeout(self, from: S, timer: &'static str) -> OnTimeout<D, S> {
        OnTimeout {
            builder: self,
            from,
            timer,
        }
    }

    fn react(
        mut self,
        from: Option<S>,
        trigger: Trigger,
        to: Vec<S>,
        choice: bool,
        run: Run<D, S>,
    ) -> Self {
        self.reactions.push(Reaction {
            from,
            trigger,
            to,
            choice,
            run,
        });
        self
    }

    /// Which instance a message of type `M` belongs to: the correlation id its payload
    /// carries (default: the envelope's aggregate id).
    pub fn correlate<M>(mut self, by: impl Fn(&M) -> String + Send + Sync + 'static) -> Self
    where
        M: Message,
        for<'a> &'a M: TryFrom<&'a AnyMessage>,
    {
        self.correlate.insert(
            M::TYPE,
            Arc::new(
                move |envelope: &Envelope<AnyMessage>| match <&M>::try_from(&envelope.data) {
                    Ok(payload) => by(payload),
                    Err(_) => envelope.aggregate_id.clone(),
                },
            ),
        );
        self
    }

    /// Checks the definition.
    ///
    /// # Errors
    /// A [`DefinitionError`] naming the problem: no start, a state that reacts twice to the
    /// same trigger, a final state that reacts to a timer or leads out of the final states,
    /// a reaction with no target state, a state reachable from the start that can never
    /// reach a final state, a name unfit for ids.
    pub fn build(self) -> Result<Definition<D, S>, DefinitionError> {
        let refuse = |(kind, what): (DefinitionErrorKind, String)| {
            DefinitionError::new(&self.name, kind, what)
        };
        self.check_names().map_err(refuse)?;
        let mut seen = BTreeSet::new();
        for r in &self.reactions {
            check_reaction(r, &mut seen).map_err(refuse)?;
        }
        self.check_liveness().map_err(refuse)?;
        let mut correlate = self.correlate;
        let mut subjects = BTreeSet::new();
        for r in &self.reactions {
            if let Trigger::Message(t) = r.trigger {
                subjects.insert(t);
                correlate
                    .entry(t)
                    .or_insert_with(|| Arc::new(|e: &Envelope<AnyMessage>| e.aggregate_id.clone()));
            }
        }
        Ok(Definition {
            inner: Arc::new(Inner {
                name: self.name,
                version: self.version,
                service: Arc::from(self.service),
                reactions: self.reactions,
                correlate,
                subjects,
            }),
        })
    }

    /// The names fit for ids, a version, a start.
    fn check_names(&self) -> Result<(), (DefinitionErrorKind, String)> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.name) || !name_ok(&self.service) {
            return Err((
                DefinitionErrorKind::Name,
                format!(
                    "the saga name {:?} and service {:?} must be non-empty and use only letters, digits, '-' and '_'",
                    self.name, self.service
                ),
            ));
        }
        if self.version == 0 {
            return Err((
                DefinitionErrorKind::Version,
                "the version must be 1 or more".to_owned(),
            ));
        }
        if !self.reactions.iter().any(|r| r.from.is_none()) {
            return Err((
                DefinitionErrorKind::NoStart,
                "no message starts it: add .starts_with::<M>().to(..)".to_owned(),
            ));
        }
        Ok(())
    }

    /// Every state the saga can reach can still finish.
    fn check_liveness(&self) -> Result<(), (DefinitionErrorKind, String)> {
        let edges = |s: Option<S>| {
            self.reactions
                .iter()
                .filter(move |r| r.from == s)
                .flat_map(|r| r.to.iter().copied())
        };
        let mut reachable: Vec<S> = edges(None).collect();
        let mut i = 0;
        while i < reachable.len() {
            for next in edges(Some(reachable[i])) {
                if !reachable.contains(&next) {
                    reachable.push(next);
                }
            }
            i += 1;
        }
        for &s in &reachable {
            let mut frontier = vec![s];
            let mut visited = vec![s];
            let mut finishes = s.is_final();
            while let Some(x) = frontier.pop() {
                if finishes {
                    break;
                }
                for next in edges(Some(x)) {
                    finishes |= next.is_final();
                    if !visited.contains(&next) {
                        visited.push(next);
                        frontier.push(next);
                    }
                }
            }
            if !finishes {
                return Err((
                    DefinitionErrorKind::Stuck,
                    format!(
                        "state {} can never reach a final state (no reaction leads out of it to one)",
                        s.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One reaction's own rules: a trigger once per state, a target (and a choice among more
/// than one), a final state without timers that stays final. `seen` collects the (state,
/// trigger) pairs so far.
fn check_reaction<D, S: State>(
    r: &Reaction<D, S>,
    seen: &mut BTreeSet<(Option<&'static str>, Trigger)>,
) -> Result<(), (DefinitionErrorKind, String)> {
    use DefinitionErrorKind as Kind;
    let from = r.from.map_or("(start)", State::name);
    if !seen.insert((r.from.map(State::name), r.trigger)) {
        return Err((
            Kind::Duplicate,
            format!("state {from} reacts twice to {}", r.trigger),
        ));
    }
    match r.to.as_slice() {
        [] => {
            return Err((
                Kind::Targets,
                format!("{from} on {} leads to no state", r.trigger),
            ));
        }
        [only] if r.choice => {
            return Err((
                Kind::Targets,
                format!(
                    "{from} on {} chooses among one state: declare it with .to({}, ..), whose reaction returns nothing",
                    r.trigger,
                    only.name()
                ),
            ));
        }
        _ => {}
    }
    let Some(s) = r.from.filter(|s| s.is_final()) else {
        return Ok(());
    };
    if let Trigger::Timeout(_) = r.trigger {
        return Err((
            Kind::LeavesFinal,
            format!(
                "final state {} reacts to {}: a finished saga has no timers",
                s.name(),
                r.trigger
            ),
        ));
    }
    if let Some(next) = r.to.iter().find(|to| !to.is_final()) {
        return Err((
            Kind::LeavesFinal,
            format!(
                "final state {} on {} leads to {}: a finished saga stays finished",
                s.name(),
                r.trigger,
                next.name()
            ),
        ));
    }
    Ok(())
}

/// A message's reaction being declared: [`Builder::starts_with`] or [`Builder::on`], then
/// where it leads. Each says the next state once:
///
/// - [`On::to`]: always to one state, and the reaction returns nothing;
/// - [`On::choose`]: to one of several, and the reaction returns the one it took (another
///   fails the reaction; [`Builder::build`] checks what each can reach).
#[must_use = "a reaction is declared by .to(state, reaction) or .choose([states], reaction)"]
pub struct On<D, S, M> {
    builder: Builder<D, S>,
    /// `None` for a start.
    from: Option<S>,
    message: PhantomData<fn() -> M>,
}

impl<D, S, M> fmt::Debug for On<D, S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("On")
            .field("saga", &self.builder.name)
            .finish_non_exhaustive()
    }
}

impl<D: Data, S: State, M> On<D, S, M>
where
    M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
{
    /// `react` runs, and the instance moves to `to`.
    pub fn to(
        self,
        to: S,
        react: impl Fn(&mut Step<D>, Envelope<M>) + Send + Sync + 'static,
    ) -> Builder<D, S> {
        self.choosing(vec![to], false, move |step, message| {
            react(step, message);
            to
        })
    }

    /// `react` runs and returns the state the instance moves to, one of `to`.
    pub fn choose<const N: usize>(
        self,
        to: [S; N],
        react: impl Fn(&mut Step<D>, Envelope<M>) -> S + Send + Sync + 'static,
    ) -> Builder<D, S> {
        self.choosing(to.to_vec(), true, react)
    }

    /// As [`On::to`], for a reaction that awaits something: an HTTP call to a participant,
    /// made with the step's idempotency key and deadline ([`Step::http`]). It takes the
    /// step and hands it back. The instance is saved only after it finishes; a retry of
    /// the message runs it again, so what it calls must be idempotent (the key sees to
    /// that).
    pub fn to_async<F>(
        self,
        to: S,
        react: impl Fn(Step<D>, Envelope<M>) -> F + Send + Sync + 'static,
    ) -> Builder<D, S>
    where
        F: Future<Output = Step<D>> + Send + 'static,
    {
        self.choosing_async(vec![to], false, move |step, message| {
            let running = react(step, message);
            async move { (running.await, to) }
        })
    }

    /// As [`On::choose`], for a reaction that awaits something (see [`On::to_async`]): it
    /// hands the step back with the state it took.
    pub fn choose_async<F, const N: usize>(
        self,
        to: [S; N],
        react: impl Fn(Step<D>, Envelope<M>) -> F + Send + Sync + 'static,
    ) -> Builder<D, S>
    where
        F: Future<Output = (Step<D>, S)> + Send + 'static,
    {
        self.choosing_async(to.to_vec(), true, react)
    }

    fn trigger() -> Trigger {
        Trigger::Message(M::TYPE)
    }

    fn choosing(
        self,
        to: Vec<S>,
        choice: bool,
        react: impl Fn(&mut Step<D>, Envelope<M>) -> S + Send + Sync + 'static,
    ) -> Builder<D, S> {
        let run: React<D, S> = Arc::new(move |step, envelope| match envelope.downcast::<M>() {
            Ok(envelope) => Ok(react(step, envelope)),
            Err(other) => Err(mismatch(&other, M::TYPE)),
        });
        self.builder
            .react(self.from, Self::trigger(), to, choice, Run::Message(run))
    }

    fn choosing_async<F>(
        self,
        to: Vec<S>,
        choice: bool,
        react: impl Fn(Step<D>, Envelope<M>) -> F + Send + Sync + 'static,
    ) -> Builder<D, S>
    where
        F: Future<Output = (Step<D>, S)> + Send + 'static,
    {
        let run: ReactAsync<D, S> =
            Arc::new(move |step, envelope| match envelope.downcast::<M>() {
                Ok(envelope) => {
                    let running = react(step, envelope);
                    Box::pin(async move {
                        let (step, to) = running.await;
                        (step, Ok(to))
                    })
                }
                Err(other) => {
                    let problem = mismatch(&other, M::TYPE);
                    Box::pin(std::future::ready((step, Err(problem))))
                }
            });
        self.builder.react(
            self.from,
            Self::trigger(),
            to,
            choice,
            Run::MessageAsync(run),
        )
    }
}

/// A timer's reaction being declared: [`Builder::on_timeout`], then where it leads, as
/// with [`On`].
#[must_use = "a reaction is declared by .to(state, reaction) or .choose([states], reaction)"]
pub struct OnTimeout<D, S> {
    builder: Builder<D, S>,
    from: S,
    timer: &'static str,
}

impl<D, S> fmt::Debug for OnTimeout<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnTimeout")
            .field("saga", &self.builder.name)
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}

impl<D: Data, S: State> OnTimeout<D, S> {
    /// `react` runs, and the instance moves to `to`.
    pub fn to(self, to: S, react: impl Fn(&mut Step<D>) + Send + Sync + 'static) -> Builder<D, S> {
        let run: OnTimeoutFn<D, S> = Arc::new(move |step| {
            react(step);
            to
        });
        self.builder.react(
            Some(self.from),
            Trigger::Timeout(self.timer),
            vec![to],
            false,
            Run::Timeout(run),
        )
    }

    /// `react` runs and returns the state the instance moves to, one of `to`.
    pub fn choose<const N: usize>(
        self,
        to: [S; N],
        react: impl Fn(&mut Step<D>) -> S + Send + Sync + 'static,
    ) -> Builder<D, S> {
        self.builder.react(
            Some(self.from),
            Trigger::Timeout(self.timer),
            to.to_vec(),
            true,
            Run::Timeout(Arc::new(react)),
        )
    }
}

//! Declaring a saga: its states, the messages it starts on and reacts to, its timeouts; the
//! checks a definition passes when it is built; its Mermaid diagram.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use a4co_events::{AnyMessage, Envelope, Message};

use crate::error::DefinitionError;
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
pub(crate) type OnTimeout<D, S> = Arc<dyn Fn(&mut Step<D>) -> S + Send + Sync>;
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
    Timeout(OnTimeout<D, S>),
}

pub(crate) struct Reaction<D, S> {
    /// `None` for a start: there is no instance yet.
    pub(crate) from: Option<S>,
    pub(crate) trigger: Trigger,
    pub(crate) to: Vec<S>,
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
    /// [`Runtime::keep_running`](crate::Runtime::keep_running)).
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

fn typed<M, D, S>(f: impl Fn(&mut Step<D>, Envelope<M>) -> S + Send + Sync + 'static) -> React<D, S>
where
    M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
{
    Arc::new(move |step, envelope| match envelope.downcast::<M>() {
        Ok(envelope) => Ok(f(step, envelope)),
        Err(other) => Err(mismatch(&other, M::TYPE)),
    })
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

    /// A message of type `M` starts an instance (from `D::default()`), which `start` moves
    /// to one of `to`.
    pub fn starts_with<M>(
        mut self,
        to: &[S],
        start: impl Fn(&mut Step<D>, Envelope<M>) -> S + Send + Sync + 'static,
    ) -> Self
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.reactions.push(Reaction {
            from: None,
            trigger: Trigger::Message(M::TYPE),
            to: to.to_vec(),
            run: Run::Message(typed(start)),
        });
        self
    }

    /// In state `from`, a message of type `M` runs `react`, which moves the instance to one
    /// of `to` (staying in `from` counts only if `to` lists it).
    ///
    /// `from` may be a final state: a finished saga then still answers that message (a
    /// payment that reaches a cancelled order is refunded), and stays finished (`to` may
    /// list final states only). Any other message reaching it is acknowledged and logged.
    pub fn on<M>(
        mut self,
        from: S,
        to: &[S],
        react: impl Fn(&mut Step<D>, Envelope<M>) -> S + Send + Sync + 'static,
    ) -> Self
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        self.reactions.push(Reaction {
            from: Some(from),
            trigger: Trigger::Message(M::TYPE),
            to: to.to_vec(),
            run: Run::Message(typed(react)),
        });
        self
    }

    /// As [`Builder::on`], for a reaction that awaits something: an HTTP call to a
    /// participant, made with the step's idempotency key and deadline ([`Step::http`]). It
    /// takes the step and hands it back with the next state. The instance is saved only
    /// after it finishes; a retry of the message runs it again, so what it calls must be
    /// idempotent (the key sees to that).
    pub fn on_async<M, F>(
        mut self,
        from: S,
        to: &[S],
        react: impl Fn(Step<D>, Envelope<M>) -> F + Send + Sync + 'static,
    ) -> Self
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
        F: Future<Output = (Step<D>, S)> + Send + 'static,
    {
        let react: ReactAsync<D, S> =
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
        self.reactions.push(Reaction {
            from: Some(from),
            trigger: Trigger::Message(M::TYPE),
            to: to.to_vec(),
            run: Run::MessageAsync(react),
        });
        self
    }

    /// In state `from`, the timer `timer` running out runs `react` (see
    /// [`Step::schedule`]).
    pub fn on_timeout(
        mut self,
        from: S,
        timer: &'static str,
        to: &[S],
        react: impl Fn(&mut Step<D>) -> S + Send + Sync + 'static,
    ) -> Self {
        self.reactions.push(Reaction {
            from: Some(from),
            trigger: Trigger::Timeout(timer),
            to: to.to_vec(),
            run: Run::Timeout(Arc::new(react)),
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
        let err = |what: String| {
            Err(DefinitionError {
                saga: self.name.clone(),
                problem: what,
            })
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.name) || !name_ok(&self.service) {
            return err(format!(
                "the saga name {:?} and service {:?} must be non-empty and use only letters, digits, '-' and '_'",
                self.name, self.service
            ));
        }
        if self.version == 0 {
            return err("the version must be 1 or more".to_owned());
        }
        if !self.reactions.iter().any(|r| r.from.is_none()) {
            return err("no message starts it: add .starts_with::<M>(..)".to_owned());
        }
        let mut seen = BTreeSet::new();
        for r in &self.reactions {
            let from = r.from.map_or("(start)", State::name);
            if !seen.insert((r.from.map(State::name), r.trigger)) {
                return err(format!("state {from} reacts twice to {}", r.trigger));
            }
            if r.to.is_empty() {
                return err(format!("{from} on {} leads to no state", r.trigger));
            }
            if let Some(s) = r.from
                && s.is_final()
            {
                if let Trigger::Timeout(_) = r.trigger {
                    return err(format!(
                        "final state {} reacts to {}: a finished saga has no timers",
                        s.name(),
                        r.trigger
                    ));
                }
                if let Some(next) = r.to.iter().find(|to| !to.is_final()) {
                    return err(format!(
                        "final state {} on {} leads to {}: a finished saga stays finished",
                        s.name(),
                        r.trigger,
                        next.name()
                    ));
                }
            }
        }
        // Every state the saga can reach must still be able to finish.
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
                    if next.is_final() {
                        finishes = true;
                    }
                    if !visited.contains(&next) {
                        visited.push(next);
                        frontier.push(next);
                    }
                }
            }
            if !finishes {
                return err(format!(
                    "state {} can never reach a final state (no reaction leads out of it to one)",
                    s.name()
                ));
            }
        }
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
}

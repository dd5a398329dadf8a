//! The engine: applies a message or a due timer to an instance's record through the
//! definition's reactions. Pure (no I/O): the runtime loads, saves and publishes around it.

use a4co_events::{AnyMessage, Envelope, EventId, TraceContext};
use chrono::{DateTime, Utc};

use crate::definition::{Definition, Run, Trigger};
use crate::error::{ReactionError, ReactionErrorKind};
use crate::record::{Data, Instance, Ledger, State, Transition};
use crate::step::Step;

/// How many processed message ids an instance remembers, to recognise redeliveries.
const REMEMBERED: usize = 512;

/// What applying a message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The instance started or moved: save it, then publish its outbox.
    Changed,
    /// The message was processed before: nothing to do.
    Duplicate,
    /// The instance is finished and its state does not react to the message: acknowledged
    /// and logged.
    Finished,
    /// The current state does not react to this message: acknowledged and logged.
    Unexpected,
    /// No instance, and the message does not start one (it came before its start):
    /// retry later.
    NotStarted,
}

async fn run_reaction<D: Data, S: State>(
    definition: &Definition<D, S>,
    instance: &mut Instance<D, S>,
    from: Option<S>,
    trigger: Trigger,
    message: Option<Envelope<AnyMessage>>,
    now: DateTime<Utc>,
) -> Result<bool, ReactionError> {
    let Some(reaction) = definition.reaction(from, trigger) else {
        return Ok(false);
    };
    // What it sends continues the trace it runs in: the handling span's (OpenTelemetry),
    // else the message's, else (a timer) the trace that started the instance.
    let trace = a4co_events::bus::current_trace()
        .or_else(|| message.as_ref().and_then(|m| m.trace.clone()))
        .or_else(|| {
            let parent = instance.ledger.trace.as_deref()?;
            TraceContext::parse(parent, None)
        });
    let cause = message.as_ref().map(|m| m.event_id);
    let mut step = Step {
        data: std::mem::take(&mut instance.data),
        ledger: std::mem::take(&mut instance.ledger),
        now,
        source: definition.source(),
        cause,
        trace,
        misuse: None,
    };
    let to = match (&reaction.run, message) {
        (Run::Message(f), Some(m)) => Some(f(&mut step, m)),
        (Run::MessageAsync(f), Some(m)) => {
            let (back, to) = f(step, m).await;
            step = back;
            Some(to)
        }
        (Run::Timeout(f), None) => Some(Ok(f(&mut step))),
        _ => None,
    };
    let misuse = step.misuse.take();
    instance.data = step.data;
    instance.ledger = step.ledger;
    let Some(to) = to else {
        return Ok(false);
    };
    let fail = |kind, problem: String| ReactionError {
        saga_id: instance.ledger.saga_id.clone(),
        problem,
        kind,
    };
    let to = to.map_err(|problem| fail(ReactionErrorKind::WrongPayload, problem))?;
    if let Some((kind, problem)) = misuse {
        return Err(fail(kind, problem));
    }
    if !reaction.to.contains(&to) {
        let declared: Vec<&str> = reaction.to.iter().map(|s| s.name()).collect();
        return Err(fail(
            ReactionErrorKind::UndeclaredState,
            format!(
                "{} on {trigger} moved to {}, which the definition does not declare (declared: {})",
                from.map_or("(start)", State::name),
                to.name(),
                declared.join(", ")
            ),
        ));
    }
    enter(instance, from, trigger, to, now);
    Ok(true)
}

/// Moves the instance to `to`, as `trigger` took it from `from`: a final state drops the
/// timers; the move joins the history (the latest 64).
fn enter<D, S: State>(
    instance: &mut Instance<D, S>,
    from: Option<S>,
    trigger: Trigger,
    to: S,
    now: DateTime<Utc>,
) {
    instance.state = to;
    if to.is_final() {
        // A finished saga waits for nothing.
        instance.ledger.timers.clear();
    }
    instance.ledger.history.push(Transition {
        from: from.map(|s| s.name().to_owned()),
        trigger: trigger.to_string(),
        to: to.name().to_owned(),
        at: now,
    });
    if instance.ledger.history.len() > 64 {
        instance.ledger.history.remove(0);
    }
}

/// Applies `message` to the instance `saga_id` (`None`: not stored yet).
///
/// # Errors
/// A [`ReactionError`] when the reaction breaks the definition (a bug: dead-letter it).
pub(crate) async fn apply<D: Data, S: State>(
    definition: &Definition<D, S>,
    saga_id: &str,
    instance: Option<Instance<D, S>>,
    message: &Envelope<AnyMessage>,
    now: DateTime<Utc>,
) -> Result<(Applied, Option<Instance<D, S>>), ReactionError> {
    let trigger = Trigger::Message(message.event_type());
    let mut instance = match instance {
        Some(i) if i.ledger.processed.contains(&message.event_id) => {
            return Ok((Applied::Duplicate, Some(i)));
        }
        // A finished saga reacts only where its definition says so (to give back what a
        // late message took); it stays finished.
        Some(i) if i.state.is_final() && definition.reaction(Some(i.state), trigger).is_none() => {
            return Ok((Applied::Finished, Some(i)));
        }
        Some(i) => i,
        None => {
            if definition.reaction(None, trigger).is_none() {
                return Ok((Applied::NotStarted, None));
            }
            let mut fresh = Instance {
                // Replaced by the start reaction's target.
                state: S::ALL[0],
                data: D::default(),
                ledger: Ledger {
                    saga_id: saga_id.to_owned(),
                    definition: definition.name().to_owned(),
                    version: definition.version(),
                    correlation_id: message.metadata.correlation_id.clone(),
                    user_id: message.metadata.user_id.clone(),
                    origin: message.event_id.to_string(),
                    trace: Some(
                        message
                            .trace
                            .clone()
                            .unwrap_or_else(TraceContext::new_root)
                            .traceparent()
                            .to_owned(),
                    ),
                    ..Ledger::default()
                },
            };
            run_reaction(
                definition,
                &mut fresh,
                None,
                trigger,
                Some(message.clone()),
                now,
            )
            .await?;
            remember(&mut fresh.ledger, message.event_id);
            return Ok((Applied::Changed, Some(fresh)));
        }
    };
    let from = instance.state;
    if !run_reaction(
        definition,
        &mut instance,
        Some(from),
        trigger,
        Some(message.clone()),
        now,
    )
    .await?
    {
        return Ok((Applied::Unexpected, Some(instance)));
    }
    remember(&mut instance.ledger, message.event_id);
    Ok((Applied::Changed, Some(instance)))
}

fn remember(ledger: &mut Ledger, id: EventId) {
    ledger.processed.push(id);
    if ledger.processed.len() > REMEMBERED {
        ledger.processed.remove(0);
    }
}

/// Fires every timer of `instance` due at `now`, earliest first: each is removed, and sets
/// off its reaction if the current state has one. Returns whether anything changed.
///
/// # Errors
/// As [`apply`].
pub(crate) async fn fire_due<D: Data, S: State>(
    definition: &Definition<D, S>,
    instance: &mut Instance<D, S>,
    now: DateTime<Utc>,
) -> Result<bool, ReactionError> {
    let mut changed = false;
    loop {
        let due = instance
            .ledger
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(_, at)| **at)
            .map(|(name, _)| name.clone());
        let Some(name) = due else {
            return Ok(changed);
        };
        instance.ledger.timers.remove(&name);
        changed = true;
        if instance.state.is_final() {
            continue;
        }
        // Timer names in definitions are 'static; find the declared one.
        let from = instance.state;
        let trigger = definition
            .timers_of(from)
            .find(|t| *t == name)
            .map(Trigger::Timeout);
        match trigger {
            Some(trigger) => {
                run_reaction(definition, instance, Some(from), trigger, None, now).await?;
            }
            None => tracing::debug!(
                saga_id = %instance.ledger.saga_id,
                timer = %name,
                state = from.name(),
                "timer ran out in a state that does not react to it"
            ),
        }
    }
}

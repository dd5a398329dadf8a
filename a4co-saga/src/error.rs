//! The saga crate's errors.

use a4co_events::bus::{PublishError, SubscribeError};

/// A definition that cannot work, rejected by [`crate::Builder::build`] (or by
/// [`crate::RuntimeBuilder::build`] for a version that cannot join the runtime).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga}: {problem}")]
pub struct DefinitionError {
    /// The saga's name.
    pub saga: String,
    /// What is wrong, and what to fix.
    pub problem: String,
    kind: DefinitionErrorKind,
}

impl DefinitionError {
    pub(crate) fn new(
        saga: impl Into<String>,
        kind: DefinitionErrorKind,
        problem: impl Into<String>,
    ) -> Self {
        DefinitionError {
            saga: saga.into(),
            problem: problem.into(),
            kind,
        }
    }

    /// A setting the definition is built from cannot work (a timeout longer than what it
    /// guards, say): for a definition made from configuration, so that a bad setting fails
    /// at start-up as the definition's own checks do.
    pub fn settings(saga: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::new(saga, DefinitionErrorKind::Settings, problem)
    }

    /// Which rule the definition breaks.
    pub fn kind(&self) -> DefinitionErrorKind {
        self.kind
    }
}

/// Which rule a [`DefinitionError`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DefinitionErrorKind {
    /// The saga or service name is empty or has characters unfit for ids.
    Name,
    /// Version 0, or a version kept running that is not an earlier one of the same saga.
    Version,
    /// No message starts an instance.
    NoStart,
    /// A state reacts twice to one trigger.
    Duplicate,
    /// A reaction leads to no state, or chooses among one (name it alone instead).
    Targets,
    /// A final state reacts to a timer, or leads out of the final states.
    LeavesFinal,
    /// A state the saga can reach can never reach a final state.
    Stuck,
    /// A setting the definition is built from cannot work ([`DefinitionError::settings`]).
    Settings,
}

/// A store's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else saved the instance since it was loaded: reload and re-apply.
    #[error("instance {0} changed since it was loaded")]
    Conflict(String),
    /// The store cannot be reached or refused the operation.
    #[error("saga store: {0}")]
    Unavailable(String),
    /// A setting that cannot work, saying what to fix.
    #[error("saga store: {0}")]
    InvalidConfig(String),
    /// A stored record cannot be read back.
    #[error("instance {key}: stored record unreadable: {reason}")]
    Corrupt {
        /// The instance's key (`order-fulfillment/ord-1`).
        key: String,
        /// Why.
        reason: String,
    },
}

/// A runtime's failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Subscribing to the saga's messages failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing an instance's messages failed (they stay in its outbox).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A reaction broke the definition.
    #[error(transparent)]
    Reaction(#[from] ReactionError),
    /// Saving kept conflicting with other replicas.
    #[error("instance {0}: still conflicting after {1} attempts")]
    Contention(String, u32),
    /// The instance runs on a version of its definition this runtime does not have, and no
    /// migration from it: the message is retried (a runtime that has it may take it) and
    /// dead-lettered with this reason if none does.
    #[error(
        "instance {saga_id} runs on version {version} of {saga}, which this runtime does not have (it runs {known:?}): give it that definition with RuntimeBuilder::keep_running, or a migration with RuntimeBuilder::migrate"
    )]
    UnknownVersion {
        /// The instance (`order-fulfillment/ord-1`).
        saga_id: String,
        /// The saga's name.
        saga: String,
        /// The version it runs on.
        version: u32,
        /// The versions this runtime runs.
        known: Vec<u32>,
    },
}

/// A reaction broke the definition's rules: a bug in the saga, not in the message.
#[derive(Debug, thiserror::Error)]
#[error("saga {saga_id}: {problem}")]
pub struct ReactionError {
    /// The instance whose reaction failed (`order-fulfillment/ord-1`).
    pub saga_id: String,
    /// What went wrong.
    pub problem: String,
    pub(crate) kind: ReactionErrorKind,
}

impl ReactionError {
    /// What the reaction did wrong.
    pub fn kind(&self) -> ReactionErrorKind {
        self.kind
    }
}

/// What a [`ReactionError`] says the reaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReactionErrorKind {
    /// It chose a state its definition does not list for it.
    UndeclaredState,
    /// The message's payload is not the type the reaction takes (another build put it
    /// under that type).
    WrongPayload,
    /// It sent two messages under one step name.
    StepReused,
    /// It sent a message every consumer would dead-letter (an empty aggregate id, a
    /// payload against its schema).
    Undeliverable,
}

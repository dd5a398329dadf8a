//! Bus errors: one generic [`Error`] with a per-operation kind.

use std::fmt;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of a bus operation: a kind to match on, a message, and the underlying cause.
///
/// Each operation has its own kind: [`PublishErrorKind`], [`SubscribeErrorKind`],
/// [`ProvisionErrorKind`], [`ConsumeErrorKind`], [`AckErrorKind`], [`InboxErrorKind`].
pub struct Error<K> {
    kind: K,
    message: String,
    source: Option<BoxError>,
}

impl<K: Copy + fmt::Display> Error<K> {
    /// An error of `kind` with a message saying what happened.
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

macro_rules! kinds {
    ($(#[$meta:meta])* $name:ident, $alias:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($name::$variant => $text,)*
                })
            }
        }

        #[doc = concat!("An [`Error`] of kind [`", stringify!($name), "`].")]
        pub type $alias = Error<$name>;
    };
}

kinds!(
    /// Why a publish failed.
    PublishErrorKind, PublishError {
        /// No stream captures the subject: provision the streams first.
        NoStream => "no stream",
        /// The broker did not acknowledge in time; the message may or may not be stored
        /// (publishing again is safe: the broker deduplicates on the event id).
        Timeout => "timeout",
        /// The connection is down.
        ConnectionLost => "connection lost",
        /// The broker refused the message (too large, a failed expectation, ...).
        Rejected => "rejected",
        /// A compare-and-swap write lost: the key is no longer at the revision expected
        /// (someone wrote it since it was read). Read it again and retry.
        Conflict => "conflict",
        /// The server does not allow this connection's user to publish to the subject
        /// (its permissions); sending it again will fail again.
        PermissionDenied => "permission denied",
        /// The message cannot be sent as it is: a header name or value the wire cannot
        /// carry, or an envelope every consumer would dead-letter (an empty aggregate id, a
        /// payload that violates its schema); the message says which, and nothing was
        /// sent. Sending it again will fail again.
        InvalidMessage => "invalid message",
        /// Anything else.
        Other => "publish failed",
    }
);

kinds!(
    /// Why a subscription could not start.
    SubscribeErrorKind, SubscribeError {
        /// A stream the subscription reads does not exist: provision the streams first.
        NoStream => "no stream",
        /// The subscription's settings are invalid; the message says which and why.
        InvalidConfig => "invalid subscription",
        /// Its durable consumer exists with settings JetStream cannot change in place
        /// (whether instances share it or one is pinned), set by other instances: the
        /// consumer is left as it is, and the message says how to change it.
        Conflict => "conflicting consumer",
        /// The broker could not be reached.
        Unavailable => "unavailable",
        /// Anything else.
        Other => "subscribe failed",
    }
);

kinds!(
    /// Why provisioning failed.
    ProvisionErrorKind, ProvisionError {
        /// The settings are invalid (say, more replicas than servers).
        InvalidConfig => "invalid stream config",
        /// The broker is too old, or lacks JetStream.
        Unsupported => "unsupported server",
        /// The broker could not be reached.
        Unavailable => "unavailable",
        /// Anything else.
        Other => "provisioning failed",
    }
);

kinds!(
    /// Why fetching the next delivery failed (the consumer goes on).
    ConsumeErrorKind, ConsumeError {
        /// The connection is down; the consumer resumes when it is back.
        ConnectionLost => "connection lost",
        /// The consumer was deleted on the broker.
        ConsumerDeleted => "consumer deleted",
        /// Anything else.
        Other => "consume failed",
    }
);

kinds!(
    /// Why an acknowledgement failed. The broker redelivers unacknowledged messages, so
    /// the message is not lost; it may be handled again.
    AckErrorKind, AckError {
        /// The connection is down.
        ConnectionLost => "connection lost",
        /// Anything else.
        Other => "ack failed",
    }
);

kinds!(
    /// Why the inbox (the record of finished work) could not be read or written.
    InboxErrorKind, InboxError {
        /// The broker could not be reached.
        Unavailable => "unavailable",
        /// Anything else.
        Other => "inbox failed",
    }
);

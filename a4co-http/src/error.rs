//! The client's one error type: opaque, with predicates to branch on.

use std::fmt;

/// A boxed error source.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call failed. Branch on the predicates ([`Error::is_timeout`], [`Error::status`],
/// ...); the message says what happened, to whom, after how many attempts.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    target: String,
    call: String,
    attempts: u32,
    status: Option<u16>,
    body: Option<String>,
    detail: Option<String>,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The per-attempt or total timeout ran out.
    Timeout,
    /// The caller's deadline passed (or would pass before the next attempt).
    Deadline,
    /// No connection could be made.
    Connect,
    /// The target answered with a status that is not a success.
    Status,
    /// The concurrency limit was full and no slot freed in time.
    Rejected,
    /// The response body was not the expected JSON.
    Decode,
    /// The request could not be built (bad path, body that does not serialize).
    Request,
    /// Anything else on the way (connection reset, protocol error, ...).
    Transport,
    /// The circuit breaker is open: the call failed fast, nothing was sent.
    CircuitOpen,
}

impl Error {
    pub(crate) fn new(kind: Kind, target: &str, call: &str) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                target: target.to_owned(),
                call: call.to_owned(),
                attempts: 0,
                status: None,
                body: None,
                detail: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.inner.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_status(mut self, status: u16, body: String) -> Self {
        self.inner.status = Some(status);
        self.inner.body = Some(body);
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.inner.attempts = attempts;
        self
    }

    /// A timeout (per attempt or in total) ran out.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// The caller's deadline passed, or would have before another attempt could finish.
    pub fn is_deadline(&self) -> bool {
        self.inner.kind == Kind::Deadline
    }

    /// No connection could be made to the target.
    pub fn is_connect(&self) -> bool {
        self.inner.kind == Kind::Connect
    }

    /// The concurrency limit (bulkhead) was full: the request was not sent.
    pub fn is_rejected(&self) -> bool {
        self.inner.kind == Kind::Rejected
    }

    /// The target's circuit breaker is open: the call failed fast without reaching it.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == Kind::CircuitOpen
    }

    /// The target is unavailable rather than answering: breaker open, retries spent on
    /// connect errors, timeouts or 429/502/503/504, rejected by the concurrency limit, or
    /// the deadline passed. This is when a fallback answers.
    pub fn is_unavailable(&self) -> bool {
        match self.inner.kind {
            Kind::Timeout
            | Kind::Deadline
            | Kind::Connect
            | Kind::Rejected
            | Kind::Transport
            | Kind::CircuitOpen => true,
            Kind::Status => matches!(self.inner.status, Some(429 | 502 | 503 | 504)),
            Kind::Decode | Kind::Request => false,
        }
    }

    /// The response was not the JSON the caller asked for.
    pub fn is_decode(&self) -> bool {
        self.inner.kind == Kind::Decode
    }

    /// The request could not be built; nothing was sent.
    pub fn is_request(&self) -> bool {
        self.inner.kind == Kind::Request
    }

    /// The status of the last response, when the target answered with a failure.
    pub fn status(&self) -> Option<u16> {
        self.inner.status
    }

    /// The body of that failed response (as text), to show what the target said.
    pub fn body(&self) -> Option<&str> {
        self.inner.body.as_deref()
    }

    /// How many attempts were sent.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// The target service.
    pub fn target(&self) -> &str {
        &self.inner.target
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let what = match i.kind {
            Kind::Timeout => "timed out",
            Kind::Deadline => "deadline exceeded",
            Kind::Connect => "cannot connect",
            Kind::Status => "failed",
            Kind::Rejected => "rejected: too many requests in flight",
            Kind::Decode => "unexpected response body",
            Kind::Request => "invalid request",
            Kind::Transport => "transport error",
            Kind::CircuitOpen => "circuit open, failing fast",
        };
        write!(f, "{} {}: {what}", i.target, i.call)?;
        if let Some(status) = i.status {
            write!(f, " with status {status}")?;
        }
        if i.attempts > 1 {
            write!(f, " after {} attempts", i.attempts)?;
        }
        if let Some(detail) = &i.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(body) = i.body.as_deref().filter(|b| !b.is_empty()) {
            write!(f, ": {}", clip(body))?;
        }
        if let Some(source) = &i.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Error")
            .field("kind", &i.kind)
            .field("target", &i.target)
            .field("call", &i.call)
            .field("attempts", &i.attempts)
            .field("status", &i.status)
            .field("detail", &i.detail)
            .field("source", &i.source)
            .finish_non_exhaustive()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A response body in a message: at most 512 characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(512) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A client configuration that cannot work; the message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid HTTP client config for {target}: {message}")]
pub struct ConfigError {
    target: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(target: &str, message: impl Into<String>) -> Self {
        ConfigError {
            target: target.to_owned(),
            message: message.into(),
        }
    }
}

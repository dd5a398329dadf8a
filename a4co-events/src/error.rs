//! Why input was rejected: the decoding error every layer above reports bad input with.
//!
//! It sits at the bottom of the crate because headers, envelopes, CloudEvents and the
//! decoder all reject input; its kinds are all permanent (the same bytes fail again).

use std::fmt;

/// What kind of input was rejected. Every kind is permanent: the same bytes fail again, so a
/// consumer dead-letters them instead of retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Larger than the decoder's limit.
    TooLarge,
    /// Not valid UTF-8.
    NotUtf8,
    /// Not JSON: a syntax error, or truncated input.
    MalformedJson,
    /// JSON, but not an a4co envelope (missing or ill-typed `eventId`, `metadata`, ...).
    InvalidEnvelope,
    /// A required header is absent.
    MissingHeader,
    /// A header cannot be parsed, or contradicts the body.
    HeaderMismatch,
    /// No message of the catalog has the `eventType`.
    UnknownType,
    /// The type exists but this build does not know the `eventVersion`.
    UnknownVersion,
    /// The payload breaks its schema: a missing field, a wrong type, a value out of range.
    SchemaViolation,
    /// A valid message, of another type than the one asked for.
    UnexpectedType,
}

impl DecodeErrorKind {
    /// A stable snake_case name, for dead-letter records and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::NotUtf8 => "not_utf8",
            DecodeErrorKind::MalformedJson => "malformed_json",
            DecodeErrorKind::InvalidEnvelope => "invalid_envelope",
            DecodeErrorKind::MissingHeader => "missing_header",
            DecodeErrorKind::HeaderMismatch => "header_mismatch",
            DecodeErrorKind::UnknownType => "unknown_type",
            DecodeErrorKind::UnknownVersion => "unknown_version",
            DecodeErrorKind::SchemaViolation => "schema_violation",
            DecodeErrorKind::UnexpectedType => "unexpected_type",
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule: where in the message, which rule, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the envelope (`/data/items/0/quantity`); `/` for the whole body.
    pub path: String,
    /// The JSON Schema keyword broken (`required`, `type`, `minimum`, `format`, ...).
    pub rule: String,
    /// What was wrong, in words.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {} ({}): {}", self.path, self.rule, self.message)
    }
}

/// Why bytes did not become an envelope. See [`DecodeErrorKind`].
///
/// The message names the field and the rule, e.g. `schema violation in order.created v2 at
/// /data/items/0/quantity (minimum): 0 is less than the minimum of 1`.
#[derive(Clone, PartialEq, Eq)]
pub struct DecodeError(Box<Inner>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Inner {
    kind: DecodeErrorKind,
    message: String,
    violations: Vec<Violation>,
    event_type: Option<String>,
    event_version: Option<u32>,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        DecodeError(Box::new(Inner {
            kind,
            message: message.into(),
            violations: Vec::new(),
            event_type: None,
            event_version: None,
        }))
    }

    pub(crate) fn about(mut self, event_type: &str, event_version: u32) -> Self {
        self.0.event_type = Some(clip(event_type));
        self.0.event_version = Some(event_version);
        self
    }

    pub(crate) fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.0.violations = violations;
        self
    }

    /// What kind of input was rejected.
    pub fn kind(&self) -> DecodeErrorKind {
        self.0.kind
    }

    /// The broken rules, for [`DecodeErrorKind::SchemaViolation`] and
    /// [`DecodeErrorKind::InvalidEnvelope`] (at most [`MAX_VIOLATIONS`]).
    pub fn violations(&self) -> &[Violation] {
        &self.0.violations
    }

    /// The message type, once the envelope was readable.
    pub fn event_type(&self) -> Option<&str> {
        self.0.event_type.as_deref()
    }

    /// The message version, once the envelope was readable.
    pub fn event_version(&self) -> Option<u32> {
        self.0.event_version
    }

    /// Always `false`: the same bytes fail the same way, so retrying is pointless.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// A one-line reason for a dead-letter record: `<kind>: <message>`.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.0.kind, self.0.message)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodeError")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("violations", &self.0.violations)
            .finish()
    }
}

impl std::error::Error for DecodeError {}

/// At most this many violations are collected and reported per message.
pub const MAX_VIOLATIONS: usize = 8;
/// Quoted input is cut to this many characters in error messages.
const MAX_QUOTE: usize = 120;

/// Cuts text quoted from input, so a hostile megabyte never lands in a log line.
/// An error and its causes, outermost first, one text each.
#[cfg(feature = "bus")]
pub(crate) fn chain(error: &dyn std::error::Error) -> Vec<String> {
    let mut chain = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    chain
}

pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

//! Message headers: only what the body cannot carry.
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | `eventId`: JetStream deduplicates on it; a deliberate re-publication (a dead-letter replay) appends `:<suffix>` so the broker stores it again |
//! | `traceparent`, `tracestate` | W3C trace context, when there is one |
//!
//! The subject is the type; type, version, aggregate and correlation are read from the
//! body. Publishers before 2026-12 also sent `a4co-event-type`, `a4co-event-version`,
//! `a4co-aggregate-id` and `a4co-correlation-id` ([`names::LEGACY`]): consumers still
//! accept them, and reject a message whose headers contradict its body.
//!
//! NATS header names are case-sensitive, so every name here is exactly as written (lower
//! case but for `Nats-Msg-Id`, which the server defines).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::error::{DecodeError, DecodeErrorKind, clip};
use crate::id::EventId;

/// The header names a4co writes and reads.
pub mod names {
    /// JetStream's dedup key: the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The message type (legacy: no longer sent; checked against the body when present).
    pub const EVENT_TYPE: &str = "a4co-event-type";
    /// The payload's schema version (legacy, as [`EVENT_TYPE`]).
    pub const EVENT_VERSION: &str = "a4co-event-version";
    /// The aggregate id (legacy, as [`EVENT_TYPE`]).
    pub const AGGREGATE_ID: &str = "a4co-aggregate-id";
    /// The correlation id (legacy, as [`EVENT_TYPE`]).
    pub const CORRELATION_ID: &str = "a4co-correlation-id";
    /// The headers publishers sent until 2026-12 and no longer send: consumers accept
    /// them and check them against the body.
    pub const LEGACY: [&str; 4] = [EVENT_TYPE, EVENT_VERSION, AGGREGATE_ID, CORRELATION_ID];
    /// W3C trace context: version, trace id, parent span id, flags.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C vendor trace state.
    pub const TRACESTATE: &str = "tracestate";
}

/// A set of message headers, one value per name.
///
/// Transport-neutral: the NATS transport converts it to and from `async_nats::HeaderMap`.
/// Names are usually the `'static` constants of [`names`], which cost no copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<Cow<'static, str>, String>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(BTreeMap::new())
    }

    /// Sets a header, replacing any value it had.
    pub fn insert(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// The value of a header (names are case-sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Removes a header, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Every header, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why these headers cannot go on the wire, if they cannot: NATS header names are
    /// printable ASCII without `:`, and values have no line breaks. Transports refuse such
    /// a message with an error naming the header instead of sending a broken one.
    pub fn wire_problem(&self) -> Option<String> {
        let bad_name =
            |n: &str| n.is_empty() || n.bytes().any(|b| !b.is_ascii_graphic() || b == b':');
        let bad_value = |v: &str| v.bytes().any(|b| b == b'\r' || b == b'\n');
        let (name, value) = self
            .0
            .iter()
            .find(|(name, value)| bad_name(name) || bad_value(value))?;
        Some(if bad_name(name) {
            format!("header name {name:?} is not printable ASCII without ':'")
        } else {
            format!("header {name} has a line break in its value {value:?}")
        })
    }
}

/// The headers by value, sorted by name: names and values move out without a copy.
impl IntoIterator for Headers {
    type Item = (Cow<'static, str>, String);
    type IntoIter = std::collections::btree_map::IntoIter<Cow<'static, str>, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<Cow<'static, str>>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The `'static` name among [`names`] equal to `name`, so a received header costs no copy
/// of its name.
#[cfg(feature = "nats")]
pub(crate) fn known_name(name: &str) -> Option<&'static str> {
    [
        names::MSG_ID,
        names::EVENT_TYPE,
        names::EVENT_VERSION,
        names::AGGREGATE_ID,
        names::CORRELATION_ID,
        names::TRACEPARENT,
        names::TRACESTATE,
    ]
    .into_iter()
    .find(|known| *known == name)
}

/// A W3C trace context (`traceparent` and optional `tracestate`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).
    /// Returns `None` for a malformed value, which W3C says to ignore rather than reject.
    /// An empty `tracestate` counts as none.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let [version, trace_id, span_id, flags, ..] = parts.as_slice() else {
            return None;
        };
        let valid = hex(version, 2)
            && *version != "ff"
            && (*version != "00" || parts.len() == 4)
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(span_id, 16)
            && span_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then(|| TraceContext {
            traceparent: parts[..4].join("-"),
            tracestate: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// The context of a span known valid (non-zero ids, as OpenTelemetry's span contexts
    /// are): formatted, not parsed again.
    #[cfg(feature = "otel")]
    pub(crate) fn of_span(
        trace_id: impl fmt::LowerHex,
        span_id: impl fmt::LowerHex,
        flags: u8,
        tracestate: String,
    ) -> Self {
        TraceContext {
            traceparent: format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}"),
            tracestate: (!tracestate.is_empty()).then_some(tracestate),
        }
    }

    /// A new trace: random trace and span ids, sampled (the W3C format of a root span
    /// started here). The bus sends one with a message that has no trace context, so
    /// every message on the wire can be followed, with or without OpenTelemetry.
    #[cfg(feature = "bus")]
    pub fn new_root() -> Self {
        let trace_id = fastrand::u128(1..);
        let span_id = fastrand::u64(1..);
        TraceContext {
            traceparent: format!("00-{trace_id:032x}-{span_id:016x}-01"),
            tracestate: None,
        }
    }

    /// Reads the trace context from headers, if a valid one is there.
    pub fn extract(headers: &Headers) -> Option<Self> {
        Self::parse(
            headers.get(names::TRACEPARENT)?,
            headers.get(names::TRACESTATE),
        )
    }

    /// Writes the trace context into headers (no empty `tracestate`).
    pub fn inject(&self, headers: &mut Headers) {
        headers.insert(names::TRACEPARENT, self.traceparent.as_str());
        if let Some(state) = &self.tracestate {
            headers.insert(names::TRACESTATE, state.as_str());
        }
    }

    /// The full `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16-hex-digit id of the span that sent the message.
    pub fn parent_span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// Whether the sender sampled the trace.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

/// What the headers of an a4co message say, parsed: the event id and trace context, and
/// whatever legacy headers an older publisher sent (each must agree with the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeHeaders {
    /// `Nats-Msg-Id`.
    pub event_id: EventId,
    /// `a4co-event-type`, when present.
    pub event_type: Option<String>,
    /// `a4co-event-version`, when present.
    pub event_version: Option<u32>,
    /// `a4co-aggregate-id`, when present.
    pub aggregate_id: Option<String>,
    /// `a4co-correlation-id`, when present.
    pub correlation_id: Option<String>,
    /// The trace context, when present and valid.
    pub trace: Option<TraceContext>,
}

impl EnvelopeHeaders {
    /// Parses the headers an envelope writes ([`crate::Envelope::headers`]). The id is
    /// required; the trace context and the legacy headers are optional.
    ///
    /// # Errors
    /// [`DecodeErrorKind::MissingHeader`] when a required header is absent,
    /// [`DecodeErrorKind::HeaderMismatch`] when one cannot be parsed.
    pub fn from_headers(headers: &Headers) -> Result<Self, DecodeError> {
        let required = |name: &'static str| {
            headers.get(name).ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorKind::MissingHeader,
                    format!("missing header `{name}`: every a4co message carries it"),
                )
            })
        };
        let id = required(names::MSG_ID)?;
        // `<eventId>` or `<eventId>:<suffix>` (a replay that must pass the broker's dedup).
        let event_id = id
            .split(':')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| {
                DecodeError::new(
                    DecodeErrorKind::HeaderMismatch,
                    format!("header `{}` is {:?}, not a UUID", names::MSG_ID, clip(id)),
                )
            })?;
        let event_version = headers
            .get(names::EVENT_VERSION)
            .map(|version| {
                version.parse().map_err(|_| {
                    DecodeError::new(
                        DecodeErrorKind::HeaderMismatch,
                        format!(
                            "header `{}` is {:?}, not a version number",
                            names::EVENT_VERSION,
                            clip(version)
                        ),
                    )
                })
            })
            .transpose()?;
        let optional = |name: &str| headers.get(name).map(str::to_owned);
        Ok(EnvelopeHeaders {
            event_id,
            event_type: optional(names::EVENT_TYPE),
            event_version,
            aggregate_id: optional(names::AGGREGATE_ID),
            correlation_id: optional(names::CORRELATION_ID),
            trace: TraceContext::extract(headers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed_into_its_parts() {
        let t = TraceContext::parse(TP, Some("")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id(), "00f067aa0ba902b7");
        assert!(t.sampled());
        assert_eq!(t.tracestate(), None, "an empty tracestate is none");
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        let t = TraceContext::parse(TP, Some("vendor=1")).unwrap();
        let mut h = Headers::new();
        t.inject(&mut h);
        assert_eq!(h.get("traceparent"), Some(TP));
        assert_eq!(TraceContext::extract(&h), Some(t));
    }

    #[test]
    fn missing_and_unparsable_headers_are_reported_by_name() {
        let err = EnvelopeHeaders::from_headers(&Headers::new()).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::MissingHeader);
        assert!(err.to_string().contains("Nats-Msg-Id"), "{err}");

        let h: Headers = [
            (names::MSG_ID, "not-a-uuid"),
            (names::EVENT_TYPE, "order.created"),
            (names::EVENT_VERSION, "2"),
        ]
        .into_iter()
        .collect();
        let err = EnvelopeHeaders::from_headers(&h).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::HeaderMismatch);
        assert!(err.to_string().contains("not a UUID"), "{err}");

        let id = "01944a6b-7c00-7000-8000-000000000001";
        let only_id: Headers = [(names::MSG_ID, id)].into_iter().collect();
        let parsed = EnvelopeHeaders::from_headers(&only_id).unwrap();
        assert_eq!((parsed.event_type, parsed.event_version), (None, None));
        let bad_version: Headers = [(names::MSG_ID, id), (names::EVENT_VERSION, "two")]
            .into_iter()
            .collect();
        let err = EnvelopeHeaders::from_headers(&bad_version).unwrap_err();
        assert!(err.to_string().contains("not a version number"), "{err}");
    }
}

//! Decoding at the boundary: bytes (and headers) in, a typed envelope or a precise error out.
//!
//! Every check a consumer needs runs here, cheapest first: size, UTF-8, JSON syntax, the
//! envelope's shape, the headers' agreement with the body, the type and version, the
//! payload's schema (formats included), and finally the typed conversion, which upcasts older
//! versions. Any input, however broken, yields an error, never a panic: a consumer
//! dead-letters it with [`DecodeError::reason`] and goes on.

use serde_json::Value;
use serde_json::value::RawValue;

use crate::catalog::{self, AnyDataError, AnyMessage};
use crate::envelope::{Envelope, WireEnvelope};
use crate::error::clip;
pub use crate::error::{DecodeError, DecodeErrorKind, MAX_VIOLATIONS, Violation};
use crate::headers::{EnvelopeHeaders, Headers, TraceContext, names};
use crate::message::{DataError, Message, Payload};
#[cfg(feature = "validate")]
use crate::schema::validator;

/// An envelope whose `data` is still JSON text.
type Wire = WireEnvelope<Box<RawValue>>;

/// The default size limit: NATS's default maximum payload, 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// Decodes with the default [`Decoder`]: 1 MiB limit, headers required.
///
/// ```
/// use a4co_events::{Envelope, Message, decode, catalog::order::OrderConfirmed};
///
/// let sent = Envelope::new("order-service", "ord-1", OrderConfirmed::example());
/// let received = decode(&sent.to_json(), &sent.headers())?;
/// assert_eq!(received.event_type(), "order.confirmed");
/// # Ok::<(), a4co_events::DecodeError>(())
/// ```
///
/// # Errors
/// A [`DecodeError`] whose [`kind`](DecodeError::kind) says what was wrong.
pub fn decode(bytes: &[u8], headers: &Headers) -> Result<Envelope<AnyMessage>, DecodeError> {
    Decoder::new().decode(bytes, headers)
}

/// Decodes one message type with the default [`Decoder`]; see [`Decoder::decode_as`].
///
/// # Errors
/// As [`decode`], plus [`DecodeErrorKind::UnexpectedType`] for a message of another type.
pub fn decode_as<M: Message>(bytes: &[u8], headers: &Headers) -> Result<Envelope<M>, DecodeError> {
    Decoder::new().decode_as(bytes, headers)
}

/// The checked encoding lives with the checks it runs: what a consumer would refuse is
/// refused before it is sent.
impl<T: Payload> Envelope<T> {
    /// The JSON body as [`Envelope::to_json`] writes it, checked first as every consumer
    /// will check it ([`crate::decode::check_body`] gives the same answer): no empty
    /// `aggregateId`, `source` or metadata id, a payload valid against its schema, at most
    /// 1 MiB. The payload is serialized once and checked as text, without parsing the body
    /// back.
    ///
    /// # Errors
    /// The [`DecodeError`] a consumer would dead-letter the body with.
    pub fn to_checked_json(&self) -> Result<Vec<u8>, crate::DecodeError> {
        let m = &self.metadata;
        let empty = [
            &self.aggregate_id,
            &self.source,
            &m.correlation_id,
            &m.causation_id,
            &m.user_id,
        ]
        .iter()
        .any(|s| s.is_empty());
        let data = serde_json::value::to_raw_value(&self.data).ok();
        let checked = match &data {
            Some(data) if !empty => {
                check_payload(self.data.event_type(), self.data.event_version(), data)
            }
            // Rare: let the decoder say exactly what a consumer would.
            _ => check_body(&self.to_json()),
        };
        checked?;
        let mut body = Vec::with_capacity(1024);
        if let Err(e) = serde_json::to_writer(&mut body, &self.wire(&data)) {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidEnvelope,
                format!("the envelope does not serialize: {e}"),
            ));
        }
        if body.len() > DEFAULT_MAX_BYTES {
            check_body(&body)?;
        }
        Ok(body)
    }
}

/// Checks a message body as a consumer will, without building the typed envelope: size,
/// UTF-8, JSON, the envelope's rules (no empty `aggregateId`, `source` or ids), a known type
/// and version, and the payload's schema. Publishers run it so that nothing every consumer
/// would dead-letter is sent.
///
/// # Errors
/// The [`DecodeError`] a consumer would dead-letter the message with.
pub fn check_body(bytes: &[u8]) -> Result<(), DecodeError> {
    Decoder::new()
        .headers_optional()
        .checked(bytes, &Headers::new())
        .map(|_| ())
}

/// The decoding policy: a size limit, and whether headers must be present.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Decoder {
    max_bytes: usize,
    require_headers: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// 1 MiB limit, headers required.
    pub const fn new() -> Self {
        Decoder {
            max_bytes: DEFAULT_MAX_BYTES,
            require_headers: true,
        }
    }

    /// Rejects bodies larger than `max_bytes`.
    pub const fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Accepts messages without a4co headers (from a source that cannot set them, e.g. a
    /// CloudEvents webhook): with no `Nats-Msg-Id`, only a W3C trace context is read from
    /// the headers. With one, the headers are checked against the body as usual.
    pub const fn headers_optional(mut self) -> Self {
        self.require_headers = false;
        self
    }

    /// Decodes any catalog message into the newest version of its type.
    ///
    /// # Errors
    /// A [`DecodeError`] whose [`kind`](DecodeError::kind) says what was wrong.
    pub fn decode(
        &self,
        bytes: &[u8],
        headers: &Headers,
    ) -> Result<Envelope<AnyMessage>, DecodeError> {
        let (wire, trace) = self.checked(bytes, headers)?;
        let (event_type, version) = (wire.event_type.as_str(), wire.event_version);
        let data = AnyMessage::from_data_json(event_type, version, wire.data.get()).map_err(
            |e| match e {
                AnyDataError::UnknownType => unknown_type(event_type, version),
                AnyDataError::UnknownVersion => unknown_version(event_type, version),
                AnyDataError::Invalid(e) => invalid_data(event_type, version, &e),
            },
        )?;
        Ok(into_envelope(wire, data, trace))
    }

    /// Decodes a message that must be of type `M` (the newest version of its type name, or
    /// exactly `M` for a superseded version type); older versions are upcast to `M`.
    ///
    /// # Errors
    /// As [`Decoder::decode`], plus [`DecodeErrorKind::UnexpectedType`] for another type.
    pub fn decode_as<M: Message>(
        &self,
        bytes: &[u8],
        headers: &Headers,
    ) -> Result<Envelope<M>, DecodeError> {
        let (wire, trace) = self.checked(bytes, headers)?;
        let (event_type, version) = (wire.event_type.as_str(), wire.event_version);
        if event_type != M::TYPE {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedType,
                format!(
                    "expected a {} message, got {} v{version}",
                    M::TYPE,
                    clip(event_type)
                ),
            )
            .about(event_type, version));
        }
        let data = M::decode_data_json(version, wire.data.get()).map_err(|e| match e {
            DataError::UnknownVersion => unknown_version(event_type, version),
            DataError::Invalid(e) => invalid_data(event_type, version, &e),
        })?;
        Ok(into_envelope(wire, data, trace))
    }

    /// Every check but the typed conversion. Returns the envelope and the trace context.
    fn checked(
        &self,
        bytes: &[u8],
        headers: &Headers,
    ) -> Result<(Wire, Option<TraceContext>), DecodeError> {
        if bytes.len() > self.max_bytes {
            return Err(DecodeError::new(
                DecodeErrorKind::TooLarge,
                format!(
                    "message is {} bytes; the limit is {}",
                    bytes.len(),
                    self.max_bytes
                ),
            ));
        }
        let wire = match serde_json::from_slice::<Wire>(bytes) {
            // The fast path: straight into the typed envelope (serde_json checks the UTF-8 of
            // what it reads), then the few rules serde does not check. The checks below only
            // run to explain a failure precisely.
            Ok(wire) if satisfies_envelope_rules(&wire, is_object(&wire.data)) => wire,
            _ => {
                if let Err(e) = std::str::from_utf8(bytes) {
                    return Err(DecodeError::new(
                        DecodeErrorKind::NotUtf8,
                        format!(
                            "message is not UTF-8: invalid byte sequence at offset {}",
                            e.valid_up_to()
                        ),
                    ));
                }
                let value: Value = serde_json::from_slice(bytes).map_err(|e| {
                    let what = if e.is_eof() {
                        "truncated JSON"
                    } else {
                        "malformed JSON"
                    };
                    DecodeError::new(DecodeErrorKind::MalformedJson, format!("{what}: {e}"))
                })?;
                let wire = envelope_of(value)?;
                let data = serde_json::value::to_raw_value(&wire.data).map_err(|e| {
                    DecodeError::new(
                        DecodeErrorKind::InvalidEnvelope,
                        format!("invalid envelope: {e}"),
                    )
                })?;
                WireEnvelope {
                    event_id: wire.event_id,
                    event_type: wire.event_type,
                    event_version: wire.event_version,
                    aggregate_id: wire.aggregate_id,
                    occurred_at: wire.occurred_at,
                    source: wire.source,
                    data,
                    metadata: wire.metadata,
                }
            }
        };
        let (event_type, version) = (wire.event_type.as_str(), wire.event_version);

        // Without a4co headers (no event id), only the trace context is read from them.
        let trace = if !self.require_headers && headers.get(names::MSG_ID).is_none() {
            TraceContext::extract(headers)
        } else {
            let parsed =
                EnvelopeHeaders::from_headers(headers).map_err(|e| e.about(event_type, version))?;
            agree(&parsed, &wire)?;
            parsed.trace
        };

        check_payload(event_type, version, &wire.data)?;
        Ok((wire, trace))
    }
}

/// Checks the payload against its schema (formats included). Without the `validate` feature
/// only the typed conversion checks it, and an unknown type or version is reported there.
#[cfg(feature = "validate")]
pub(crate) fn check_payload(
    event_type: &str,
    version: u32,
    data: &RawValue,
) -> Result<(), DecodeError> {
    let Some(schema) = validator::payload(event_type, version) else {
        return Err(if catalog::versions(event_type).next().is_none() {
            unknown_type(event_type, version)
        } else {
            unknown_version(event_type, version)
        });
    };
    // The check over the text passes valid payloads without building a tree; only what it
    // does not pass is looked at by the full validator, which also explains.
    if schema.check.passes(data.get()) {
        return Ok(());
    }
    let tree: Value = serde_json::from_str(data.get()).map_err(|e| {
        DecodeError::new(
            DecodeErrorKind::MalformedJson,
            format!("malformed JSON: {e}"),
        )
    })?;
    if schema.full.is_valid(&tree) {
        return Ok(());
    }
    let violations = validator::violations(schema.full.iter_errors(&tree), "/data");
    let first = violations
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let more = match violations.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Err(DecodeError::new(
        DecodeErrorKind::SchemaViolation,
        format!("schema violation in {event_type} v{version} {first}{more}"),
    )
    .about(event_type, version)
    .with_violations(violations))
}

#[cfg(not(feature = "validate"))]
#[allow(clippy::unnecessary_wraps)]
pub(crate) fn check_payload(_: &str, _: u32, _: &RawValue) -> Result<(), DecodeError> {
    Ok(())
}

/// The envelope schema's rules that deserializing a [`WireEnvelope`] does not enforce
/// (serde already checks the fields' presence and types, the UUID and the RFC 3339 time).
fn satisfies_envelope_rules<D>(wire: &WireEnvelope<D>, data_is_object: bool) -> bool {
    let valid_token = |t: &str| {
        t.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let type_ok =
        wire.event_type.split('.').count() >= 2 && wire.event_type.split('.').all(valid_token);
    let m = &wire.metadata;
    type_ok
        && data_is_object
        && wire.event_version >= 1
        && ![
            &wire.aggregate_id,
            &wire.source,
            &m.correlation_id,
            &m.causation_id,
            &m.user_id,
        ]
        .iter()
        .any(|s| s.is_empty())
}

fn envelope_of(value: Value) -> Result<WireEnvelope, DecodeError> {
    if !value.is_object() {
        let got = match &value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidEnvelope,
            format!("invalid envelope: expected a JSON object, got {got}"),
        ));
    }
    #[cfg(feature = "validate")]
    if let Some(validator) = validator::envelope().filter(|v| !v.is_valid(&value)) {
        let violations = validator::violations(validator.iter_errors(&value), "");
        let first = violations
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidEnvelope,
            format!("invalid envelope {first}"),
        )
        .with_violations(violations));
    }
    serde_json::from_value(value).map_err(|e| {
        DecodeError::new(
            DecodeErrorKind::InvalidEnvelope,
            format!("invalid envelope: {e}"),
        )
    })
}

/// Whether JSON text is an object.
fn is_object(data: &RawValue) -> bool {
    data.get().trim_start().starts_with('{')
}

/// Checks that what the headers repeat matches the body.
fn agree(headers: &EnvelopeHeaders, wire: &Wire) -> Result<(), DecodeError> {
    let mismatch = |name: &str, header: &str, body: &str| {
        Err(DecodeError::new(
            DecodeErrorKind::HeaderMismatch,
            format!(
                "header `{name}` says {:?} but the body says {:?}",
                clip(header),
                clip(body)
            ),
        )
        .about(&wire.event_type, wire.event_version))
    };
    use crate::headers::names;
    if headers.event_id != wire.event_id {
        return mismatch(
            names::MSG_ID,
            &headers.event_id.to_string(),
            &wire.event_id.to_string(),
        );
    }
    if let Some(h) = headers
        .event_type
        .as_deref()
        .filter(|t| *t != wire.event_type)
    {
        return mismatch(names::EVENT_TYPE, h, &wire.event_type);
    }
    if let Some(h) = headers.event_version.filter(|v| *v != wire.event_version) {
        let (h, b) = (h.to_string(), wire.event_version.to_string());
        return mismatch(names::EVENT_VERSION, &h, &b);
    }
    if let Some(aggregate) = headers
        .aggregate_id
        .as_deref()
        .filter(|a| *a != wire.aggregate_id)
    {
        return mismatch(names::AGGREGATE_ID, aggregate, &wire.aggregate_id);
    }
    let correlation = &wire.metadata.correlation_id;
    if let Some(h) = headers
        .correlation_id
        .as_deref()
        .filter(|c| *c != correlation)
    {
        return mismatch(names::CORRELATION_ID, h, correlation);
    }
    Ok(())
}

fn into_envelope<T>(wire: Wire, data: T, trace: Option<TraceContext>) -> Envelope<T> {
    Envelope {
        event_id: wire.event_id,
        aggregate_id: wire.aggregate_id,
        occurred_at: wire.occurred_at,
        source: wire.source,
        data,
        metadata: wire.metadata,
        trace,
    }
}

fn unknown_type(event_type: &str, version: u32) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::UnknownType,
        format!(
            "unknown event type {:?}: not in the catalog ({} types known)",
            clip(event_type),
            catalog::MESSAGES.iter().filter(|m| m.latest).count()
        ),
    )
    .about(event_type, version)
}

fn unknown_version(event_type: &str, version: u32) -> DecodeError {
    let mut versions: Vec<u32> = catalog::versions(event_type).collect();
    versions.sort_unstable();
    let known: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
    DecodeError::new(
        DecodeErrorKind::UnknownVersion,
        format!(
            "unknown version v{version} of {event_type}: this build knows {}; a newer version \
             needs a newer a4co-events",
            known.join(", ")
        ),
    )
    .about(event_type, version)
}

fn invalid_data(event_type: &str, version: u32, error: &serde_json::Error) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::SchemaViolation,
        format!(
            "schema violation in {event_type} v{version} at /data: {}",
            clip(&error.to_string())
        ),
    )
    .about(event_type, version)
    .with_violations(vec![Violation {
        path: "/data".into(),
        rule: "type".into(),
        message: clip(&error.to_string()),
    }])
}

#[cfg(all(test, feature = "validate"))]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{WireEnvelope, satisfies_envelope_rules};
    use crate::schema::validator::envelope as envelope_validator;

    fn valid() -> Value {
        json!({
            "eventId": "01944a6b-7c00-7000-8000-000000000001",
            "eventType": "order.confirmed",
            "eventVersion": 1,
            "aggregateId": "ord-1",
            "occurredAt": "2026-01-15T10:00:00Z",
            "source": "order-service",
            "data": {},
            "metadata": {"correlationId": "c", "causationId": "c", "userId": "u"}
        })
    }

    const FIELDS: &[&str] = &[
        "/eventType",
        "/eventVersion",
        "/aggregateId",
        "/source",
        "/data",
        "/occurredAt",
        "/eventId",
        "/metadata/correlationId",
        "/metadata/causationId",
        "/metadata/userId",
        "/metadata/sagaId",
    ];

    fn odd_values() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("")),
            Just(json!("Order.Created")),
            Just(json!("order")),
            Just(json!("order..created")),
            Just(json!("order.created_v2")),
            Just(json!("9order.x")),
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(1)),
            Just(json!([])),
            Just(json!({})),
            Just(json!(null)),
            Just(json!("2026-01-15T10:00:00+02:00")),
            Just(json!("2026-13-15T10:00:00Z")),
            "[a-z.]{0,12}".prop_map(Value::String),
        ]
    }

    proptest! {
        /// The fast path never accepts an envelope the published schema rejects.
        #[test]
        fn the_fast_path_accepts_nothing_the_schema_rejects(field in 0..FIELDS.len(), value in odd_values()) {
            let mut envelope = valid();
            if let Some(slot) = envelope.pointer_mut(FIELDS[field]) {
                *slot = value;
            } else if let Some(meta) = envelope["metadata"].as_object_mut() {
                meta.insert("sagaId".into(), value);
            }
            if let Ok(wire) = serde_json::from_value::<WireEnvelope>(envelope.clone())
                && satisfies_envelope_rules(&wire, wire.data.is_object())
            {
                prop_assert!(envelope_validator().is_some_and(|v| v.is_valid(&envelope)), "{envelope}");
            }
        }
    }

    #[test]
    fn the_fast_path_accepts_a_valid_envelope() {
        let wire: WireEnvelope = serde_json::from_value(valid()).unwrap();
        assert!(satisfies_envelope_rules(&wire, wire.data.is_object()));
    }
}

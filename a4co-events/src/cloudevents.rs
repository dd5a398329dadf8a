//! The CloudEvents 1.0 mapping (structured JSON format), for bridges to systems that speak
//! CloudEvents (Knative, Dapr, Azure Event Grid, ...).
//!
//! | CloudEvents attribute | envelope |
//! |---|---|
//! | `specversion` | always `"1.0"` |
//! | `id` | `eventId` |
//! | `type` | `dev.a4co.` + `eventType` (`dev.a4co.order.created`) |
//! | `source` | `/a4co/` + `source` (`/a4co/order-service`) |
//! | `subject` | `aggregateId` |
//! | `time` | `occurredAt` |
//! | `datacontenttype` | `application/json` |
//! | `dataschema` | the `$id` of the payload's schema in the catalog |
//! | `data` | `data` |
//! | extension `eventversion` | `eventVersion` |
//! | extensions `correlationid`, `causationid`, `userid`, `sagaid` | `metadata.*` |
//! | extensions `traceparent`, `tracestate` (Distributed Tracing) | the trace context |
//!
//! The mapping is lossless both ways: [`from_cloudevent`] of [`to_cloudevent`] gives the
//! envelope back, checked and upcast exactly as [`crate::decode()`] does.

use serde_json::{Map, Value, json};

use crate::catalog::AnyMessage;
use crate::decode::{DecodeError, DecodeErrorKind, Decoder};
use crate::envelope::Envelope;
use crate::headers::{Headers, TraceContext, names};
use crate::message::Payload;
use crate::schema::schema_id;

/// The prefix of CloudEvents `type`s.
pub const TYPE_PREFIX: &str = "dev.a4co.";
/// The prefix of CloudEvents `source`s.
pub const SOURCE_PREFIX: &str = "/a4co/";

/// An envelope as a structured-mode CloudEvent (JSON).
pub fn to_cloudevent<T: Payload>(envelope: &Envelope<T>) -> Value {
    let mut ce = json!({
        "specversion": "1.0",
        "id": envelope.event_id.to_string(),
        "type": format!("{TYPE_PREFIX}{}", envelope.event_type()),
        "source": format!("{SOURCE_PREFIX}{}", envelope.source),
        "subject": envelope.aggregate_id,
        "time": envelope.occurred_at,
        "datacontenttype": "application/json",
        "dataschema": schema_id(envelope.event_type(), envelope.event_version()),
        "data": serde_json::to_value(&envelope.data).unwrap_or(Value::Null),
        "eventversion": envelope.event_version(),
        "correlationid": envelope.metadata.correlation_id,
        "causationid": envelope.metadata.causation_id,
        "userid": envelope.metadata.user_id,
    });
    if let Value::Object(map) = &mut ce {
        if let Some(saga) = &envelope.metadata.saga_id {
            map.insert("sagaid".into(), json!(saga));
        }
        if let Some(trace) = &envelope.trace {
            map.insert("traceparent".into(), json!(trace.traceparent()));
            if let Some(state) = trace.tracestate() {
                map.insert("tracestate".into(), json!(state));
            }
        }
    }
    ce
}

/// A structured-mode CloudEvent back into a checked, typed envelope.
///
/// # Errors
/// [`DecodeErrorKind::InvalidEnvelope`] when a required attribute is missing or of the wrong
/// type (`specversion` other than 1.0, a `type` outside `dev.a4co.`), then every error of
/// [`crate::decode()`].
pub fn from_cloudevent(event: &Value) -> Result<Envelope<AnyMessage>, DecodeError> {
    let invalid = |what: String| {
        DecodeError::new(
            DecodeErrorKind::InvalidEnvelope,
            format!("invalid CloudEvent: {what}"),
        )
    };
    let Some(ce) = event.as_object() else {
        return Err(invalid("expected a JSON object".into()));
    };
    let text = |name: &str| -> Result<&str, DecodeError> {
        ce.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("attribute `{name}` is missing or not a string")))
    };
    if text("specversion")? != "1.0" {
        return Err(invalid("only specversion 1.0 is supported".into()));
    }
    let ce_type = text("type")?;
    let event_type = ce_type.strip_prefix(TYPE_PREFIX).ok_or_else(|| {
        invalid(format!(
            "type {:?} is not an a4co type ({TYPE_PREFIX}...)",
            crate::error::clip(ce_type)
        ))
    })?;
    let source = text("source")?;
    let source = source.strip_prefix(SOURCE_PREFIX).unwrap_or(source);
    let version = ce.get("eventversion").cloned().unwrap_or(json!(1));

    let mut metadata = Map::new();
    for (attribute, field) in [
        ("correlationid", "correlationId"),
        ("causationid", "causationId"),
        ("userid", "userId"),
        ("sagaid", "sagaId"),
    ] {
        if let Some(value) = ce.get(attribute) {
            metadata.insert(field.into(), value.clone());
        }
    }
    let envelope = json!({
        "eventId": ce.get("id"),
        "eventType": event_type,
        "eventVersion": version,
        "aggregateId": ce.get("subject"),
        "occurredAt": ce.get("time"),
        "source": source,
        "data": ce.get("data"),
        "metadata": metadata,
    });
    let mut headers = Headers::new();
    if let Some(parent) = ce.get("traceparent").and_then(Value::as_str) {
        headers.insert(names::TRACEPARENT, parent);
        if let Some(state) = ce.get("tracestate").and_then(Value::as_str) {
            headers.insert(names::TRACESTATE, state);
        }
    }
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    let trace = TraceContext::extract(&headers);
    let mut decoded = Decoder::new()
        .headers_optional()
        .decode(&body, &Headers::new())?;
    decoded.trace = trace;
    Ok(decoded)
}

//! The JSON Schemas (draft 2020-12) of every message version, of the envelope and of the
//! headers: what the decoder validates against and what the published catalog holds.
//!
//! The files, the AsyncAPI document and the evolution checks built from them are in
//! `contract` (feature `contract`).

use serde_json::{Value, json};

use crate::catalog::{self, MessageInfo};
use crate::envelope::WireEnvelope;
use crate::headers::names;

#[cfg(feature = "validate")]
pub(crate) mod check;
#[cfg(feature = "validate")]
pub(crate) mod validator;

/// A validator with the decoder's options (formats checked); `None` for a schema that does
/// not compile. Both the text check ([`check`]) and the full validators ([`validator`])
/// build on it.
#[cfg(feature = "validate")]
pub(crate) fn compile(schema: &Value) -> Option<jsonschema::Validator> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .ok()
}

/// The base of every `$id`: ids mirror the catalog's layout.
pub const ID_BASE: &str = "https://a4co.dev/catalog/";

/// Where a message version's schema lives inside the catalog folder:
/// `schemas/order.created/v2.schema.json`.
pub fn schema_path(type_name: &str, version: u32) -> String {
    format!("schemas/{type_name}/v{version}.schema.json")
}

/// The `$id` of a message version's schema.
pub fn schema_id(type_name: &str, version: u32) -> String {
    format!("{ID_BASE}{}", schema_path(type_name, version))
}

/// The published JSON Schema (draft 2020-12) of one message version's payload: what the Rust
/// type derives, plus `$id`, a title, the kind/stream/subject as `x-a4co-*` keywords, and the
/// type's example.
pub fn message_schema(info: &MessageInfo) -> Value {
    let mut schema = info.raw_schema();
    plain_enums(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.insert("$id".into(), json!(schema_id(info.type_name, info.version)));
        map.insert(
            "title".into(),
            json!(format!("{} v{}", info.type_name, info.version)),
        );
        map.insert("examples".into(), json!([info.example()]));
        map.insert(
            "x-a4co".into(),
            json!({
                "type": info.type_name,
                "version": info.version,
                "kind": info.kind.as_str(),
                "context": info.context.name(),
                "subject": info.subject(),
                "stream": info.stream(),
                "aggregate": info.aggregate,
                "rustType": info.rust_name,
            }),
        );
    }
    schema
}

/// Rewrites schemars' rendering of a documented unit enum (`oneOf` of `const`s) as a plain
/// `enum`, keeping each value's documentation in `x-enum-descriptions`. Validators then say
/// which values are allowed, and code generators of other languages produce enums.
pub(crate) fn plain_enums(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let consts: Option<Vec<(Value, Option<Value>)>> = map
                .get("oneOf")
                .and_then(Value::as_array)
                .filter(|variants| !variants.is_empty())
                .and_then(|variants| {
                    variants
                        .iter()
                        .map(|v| {
                            let o = v.as_object()?;
                            let only_doc = o
                                .keys()
                                .all(|k| matches!(k.as_str(), "const" | "type" | "description"));
                            (only_doc && o.get("const")?.is_string())
                                .then(|| (o["const"].clone(), o.get("description").cloned()))
                        })
                        .collect()
                });
            if let Some(consts) = consts {
                map.remove("oneOf");
                let docs: serde_json::Map<String, Value> = consts
                    .iter()
                    .filter_map(|(value, doc)| Some((value.as_str()?.to_owned(), doc.clone()?)))
                    .collect();
                map.insert("type".into(), json!("string"));
                map.insert(
                    "enum".into(),
                    Value::Array(consts.into_iter().map(|(v, _)| v).collect()),
                );
                if !docs.is_empty() {
                    map.insert("x-enum-descriptions".into(), Value::Object(docs));
                }
            }
            map.values_mut().for_each(plain_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(plain_enums),
        _ => {}
    }
}

/// The published JSON Schema of the envelope every message travels in.
pub fn envelope_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<WireEnvelope>()
        .to_value();
    if let Value::Object(map) = &mut schema {
        map.insert(
            "$id".into(),
            json!(format!("{ID_BASE}envelope.schema.json")),
        );
        map.insert("examples".into(), json!([example_envelope()]));
    }
    schema
}

/// The JSON Schema of the NATS headers of a message: `Nats-Msg-Id`, and the W3C trace
/// context when there is one. The legacy `a4co-*` headers older publishers sent are listed
/// as deprecated: consumers accept them when they agree with the body.
pub fn headers_schema() -> Value {
    let legacy = |description: &str| {
        json!({"type": "string", "deprecated": true,
            "description": format!("{description} Sent before 2026-12; no longer sent. Accepted when it agrees with the body; a message where it does not is dead-lettered.")})
    };
    let mut version = legacy("The envelope's eventVersion.");
    version["pattern"] = json!("^[1-9][0-9]*$");
    json!({
        "type": "object",
        "required": [names::MSG_ID],
        "properties": {
            names::MSG_ID: {"type": "string", "format": "uuid",
                "description": "The envelope's eventId: JetStream deduplicates on it."},
            names::TRACEPARENT: {"type": "string",
                "description": "W3C trace context, when the sender has one."},
            names::TRACESTATE: {"type": "string", "description": "W3C trace state."},
            names::EVENT_TYPE: legacy("The envelope's eventType."),
            names::EVENT_VERSION: version,
            names::AGGREGATE_ID: legacy("The envelope's aggregateId."),
            names::CORRELATION_ID: legacy("The envelope's metadata.correlationId."),
        }
    })
}

fn example_envelope() -> Value {
    let info = catalog::find("order.confirmed", 1);
    json!({
        "eventId": "01944a6b-7c00-7000-8000-000000000001",
        "eventType": "order.confirmed",
        "eventVersion": 1,
        "aggregateId": "ord-1001",
        "occurredAt": "2026-01-15T10:01:30Z",
        "source": "order-service",
        "data": info.map(MessageInfo::example).unwrap_or_else(|| json!({})),
        "metadata": {
            "correlationId": "01944a6b-7c00-7000-8000-000000000000",
            "causationId": "01944a6b-7c00-7000-8000-000000000000",
            "userId": "user-4711",
            "sagaId": "order-fulfillment/ord-1001"
        }
    })
}

//! The AsyncAPI 3.0 document: channels (subjects), messages (every version), and the
//! operations of each service, from the catalog's publisher and subscriber lists.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::yaml;
use crate::catalog::MessageInfo;
use crate::schema::{headers_schema, schema_path};

fn key(text: &str) -> String {
    text.replace('.', "_")
}

/// Renders `asyncapi.yaml` for the given message versions.
pub(super) fn render(messages: &[&MessageInfo]) -> String {
    yaml::to_string(&document(messages))
}

/// The AsyncAPI 3.0 document for the given message versions.
pub(super) fn document(messages: &[&MessageInfo]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut components = Map::new();
    let mut by_type: BTreeMap<&str, Vec<&MessageInfo>> = BTreeMap::new();
    for m in messages {
        by_type.entry(m.type_name).or_default().push(m);
    }

    for (type_name, versions) in &by_type {
        let channel_id = key(type_name);
        let Some(latest) = versions.iter().copied().find(|m| m.latest) else {
            continue;
        };
        let mut channel_messages = Map::new();
        for m in versions {
            let message_id = format!("{}_v{}", key(m.type_name), m.version);
            let summary = m
                .raw_schema()
                .get("description")
                .cloned()
                .unwrap_or(Value::Null);
            components.insert(
                message_id.clone(),
                json!({
                    "name": m.type_name,
                    "title": format!("{} v{}", m.type_name, m.version),
                    "summary": summary,
                    "contentType": "application/json",
                    "headers": {"$ref": "#/components/schemas/headers"},
                    "payload": {
                        "allOf": [
                            {"$ref": "envelope.schema.json"},
                            {
                                "type": "object",
                                "properties": {
                                    "eventType": {"const": m.type_name},
                                    "eventVersion": {"const": m.version},
                                    "data": {"$ref": schema_path(m.type_name, m.version)}
                                }
                            }
                        ]
                    },
                    "x-a4co-kind": m.kind.as_str(),
                    "x-a4co-latest": m.latest,
                }),
            );
            channel_messages.insert(
                message_id.clone(),
                json!({"$ref": format!("#/components/messages/{message_id}")}),
            );
        }
        channels.insert(
            channel_id.clone(),
            json!({
                "address": latest.subject(),
                "title": type_name,
                "description": format!(
                    "{} of the {} context, stored in stream {}; the aggregate id names a {}.",
                    if latest.kind == crate::message::MessageKind::Event { "Event" } else { "Command" },
                    latest.context.name(),
                    latest.stream(),
                    latest.aggregate
                ),
                "messages": channel_messages,
            }),
        );
        let message_ref = |m: &MessageInfo| json!({"$ref": format!("#/channels/{channel_id}/messages/{}_v{}", key(m.type_name), m.version)});
        for service in latest.publishers {
            operations.insert(
                format!("{service}_send_{channel_id}"),
                json!({
                    "action": "send",
                    "title": format!("{service} publishes {type_name}"),
                    "channel": {"$ref": format!("#/channels/{channel_id}")},
                    "messages": [message_ref(latest)],
                    "x-a4co-service": service,
                }),
            );
        }
        for service in latest.subscribers {
            operations.insert(
                format!("{service}_receive_{channel_id}"),
                json!({
                    "action": "receive",
                    "title": format!("{service} consumes {type_name}"),
                    "channel": {"$ref": format!("#/channels/{channel_id}")},
                    "messages": versions.iter().map(|m| message_ref(m)).collect::<Vec<_>>(),
                    "x-a4co-service": service,
                }),
            );
        }
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "a4co marketplace messages",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event and command of the a4co marketplace on NATS JetStream. \
                Each message travels in the envelope of envelope.schema.json with its payload in \
                `data`; headers repeat the id (Nats-Msg-Id, for deduplication), type, version and \
                trace context. Generated by `a4co catalog generate`: do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "A local nats-server with JetStream, as scripts/nats-server starts it."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": components,
            "schemas": {"headers": headers_schema()},
        },
    })
}

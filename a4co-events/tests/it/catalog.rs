//! The catalog itself: every message round-trips, validates, and is documented.

use std::collections::{BTreeSet, HashSet};

use a4co_events::catalog::{self, AnyMessage, MESSAGES};
use a4co_events::{
    BoundedContext, Decoder, Envelope, Headers, MessageKind, Payload, contract, decode, schema,
};
use serde_json::{Value, json};

#[test]
fn every_message_round_trips_through_json_and_the_envelope() {
    for info in MESSAGES {
        let data = info.example();
        // Payload: JSON -> typed -> JSON is the identity.
        let typed = a4co_events_data(info.type_name, info.version, data.clone());
        if info.latest {
            assert_eq!(
                serde_json::to_value(&typed).unwrap(),
                data,
                "{} v{}",
                info.type_name,
                info.version
            );
            // And the whole envelope survives encode + decode.
            let env = Envelope::new(info.publishers[0], "agg-1", typed.clone());
            let back = decode(&env.to_json(), &env.headers()).unwrap();
            assert_eq!(back.data, typed);
            assert_eq!(back.event_id, env.event_id);
            assert_eq!(back.occurred_at, env.occurred_at);
            assert_eq!(back.metadata, env.metadata);
        } else {
            // A superseded version decodes to its successor type.
            assert!(
                typed.event_version() > info.version,
                "{} v{} was not upcast",
                info.type_name,
                info.version
            );
        }
    }
}

fn a4co_events_data(type_name: &str, version: u32, data: Value) -> AnyMessage {
    AnyMessage::from_data(type_name, version, data)
        .unwrap_or_else(|e| panic!("{type_name} v{version} example does not decode: {e:?}"))
}

#[test]
fn every_example_validates_against_its_published_schema() {
    for info in MESSAGES {
        let schema = schema::message_schema(info);
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&info.example())
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} v{}: {errors:?}",
            info.type_name,
            info.version
        );
        assert_eq!(schema["examples"][0], info.example());
    }
    let envelope = schema::envelope_schema();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&envelope)
        .unwrap();
    assert!(validator.is_valid(&envelope["examples"][0]));
}

#[test]
fn the_whole_catalog_validates_against_the_2020_12_metaschema() {
    let mut schemas: Vec<Value> = MESSAGES.iter().map(schema::message_schema).collect();
    schemas.push(schema::envelope_schema());
    schemas.push(schema::headers_schema());
    for s in &schemas {
        if s.get("$schema").is_some() {
            assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        }
        jsonschema::meta::validate(s).unwrap_or_else(|e| panic!("{}: {e}", s["$id"]));
    }
    // The metaschema check is real: a broken schema fails it.
    assert!(
        jsonschema::meta::validate(
            &json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": 12})
        )
        .is_err()
    );
}

#[test]
fn published_schemas_carry_id_title_description_and_routing() {
    let mut ids = HashSet::new();
    for info in MESSAGES {
        let s = schema::message_schema(info);
        let id = s["$id"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "duplicate $id {id}");
        assert!(id.ends_with(&schema::schema_path(info.type_name, info.version)));
        assert_eq!(s["title"], format!("{} v{}", info.type_name, info.version));
        assert!(
            s["description"].as_str().is_some_and(|d| d.len() > 10),
            "{id} has no description"
        );
        assert_eq!(s["x-a4co"]["subject"], info.type_name);
        assert_eq!(s["x-a4co"]["stream"], info.context.stream());
    }
}

#[test]
fn type_names_subjects_and_streams_follow_the_contexts() {
    let mut seen = HashSet::new();
    for info in MESSAGES {
        assert!(
            seen.insert((info.type_name, info.version)),
            "{} v{} twice",
            info.type_name,
            info.version
        );
        let tokens: Vec<&str> = info.type_name.split('.').collect();
        assert_eq!(tokens[0], info.context.name(), "{}", info.type_name);
        match info.kind {
            MessageKind::Event => assert_eq!(
                tokens.len(),
                2,
                "events are <context>.<event>: {}",
                info.type_name
            ),
            MessageKind::Command => assert_eq!(
                tokens[1], "cmd",
                "commands are <context>.cmd.<command>: {}",
                info.type_name
            ),
        }
        assert!(
            !info.publishers.is_empty(),
            "{} has no publisher",
            info.type_name
        );
        assert_eq!(info.stream(), info.context.stream());
    }
    // Exactly one latest version per type, and it is the highest.
    let types: BTreeSet<&str> = MESSAGES.iter().map(|m| m.type_name).collect();
    for t in types {
        let latest: Vec<_> = MESSAGES
            .iter()
            .filter(|m| m.type_name == t && m.latest)
            .collect();
        assert_eq!(latest.len(), 1, "{t}");
        assert_eq!(Some(latest[0].version), catalog::versions(t).max(), "{t}");
    }
}

#[test]
fn every_context_has_messages_and_its_guide_names_each_one() {
    for context in BoundedContext::ALL {
        let of_context: Vec<_> = MESSAGES.iter().filter(|m| m.context == context).collect();
        assert!(!of_context.is_empty(), "{context} has no messages");
        for m in of_context {
            let name = m.rust_name.trim_end_matches("V1");
            assert!(
                context.notes().contains(name),
                "the {context} guide does not mention {}",
                m.rust_name
            );
            assert!(
                context.notes().contains(m.type_name),
                "the {context} guide does not mention {}",
                m.type_name
            );
        }
    }
}

#[test]
fn the_design_documents_messages_are_all_in_the_catalog() {
    // Every event and command the design documents name, under the name the catalog uses.
    let expected = [
        "order.created",
        "order.confirmed",
        "order.cancelled",
        "order.delivered",
        "order.shipped",
        "order.status_changed",
        "order.cmd.confirm",
        "order.cmd.cancel",
        "inventory.stock_reserved",
        "inventory.stock_reservation_failed",
        "inventory.stock_released",
        "inventory.low_stock_warning",
        "inventory.adjusted",
        "inventory.cmd.reserve_stock",
        "inventory.cmd.release_stock",
        "payment.initiated",
        "payment.succeeded",
        "payment.failed",
        "payment.refund_processed",
        "payment.cmd.process",
        "payment.cmd.refund",
        "user.registered",
        "user.profile_updated",
        "user.preferences_changed",
        "user.email_verified",
        "user.address_added",
        "artisan.verified",
        "artisan.status_changed",
        "artisan.new_product_listed",
        "product.updated",
        "product.deleted",
        "product.price_changed",
        "cart.abandoned",
        "cart.checkout_initiated",
        "shipping.shipment_created",
        "shipping.shipment_dispatched",
        "shipping.shipment_status_updated",
        "shipping.shipment_delivered",
        "notification.sent",
    ];
    let in_catalog: BTreeSet<&str> = MESSAGES.iter().map(|m| m.type_name).collect();
    assert_eq!(in_catalog, expected.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn the_checked_in_catalog_matches_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/catalog");
    let report = contract::check(&dir).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(report.files > MESSAGES.len());
}

#[test]
fn the_asyncapi_document_lists_every_channel_sender_and_receiver() {
    let files = contract::generate();
    let doc = &files["asyncapi.yaml"];
    assert!(doc.starts_with("asyncapi: \"3.0.0\"\n") || doc.contains("\nasyncapi: \"3.0.0\"\n"));
    for info in MESSAGES.iter().filter(|m| m.latest) {
        let channel = info.type_name.replace('.', "_");
        assert!(
            doc.contains(&format!(
                "\n  {channel}:\n    address: \"{}\"",
                info.type_name
            )),
            "channel {channel}"
        );
        for p in info.publishers {
            assert!(
                doc.contains(&format!("\n  {p}_send_{channel}:\n")),
                "{p} sends {channel}"
            );
        }
        for s in info.subscribers {
            assert!(
                doc.contains(&format!("\n  {s}_receive_{channel}:\n")),
                "{s} receives {channel}"
            );
        }
    }
    // Both versions of order.created are messages of its channel.
    assert!(doc.contains("order_created_v1:") && doc.contains("order_created_v2:"));
}

#[test]
fn headers_optional_accepts_a_body_without_headers_but_checks_present_ones() {
    let (body, headers) = crate::support::order_created();
    let bytes = crate::support::bytes(&body);
    assert!(
        Decoder::new()
            .headers_optional()
            .decode(&bytes, &Headers::new())
            .is_ok()
    );
    assert!(
        decode(&bytes, &Headers::new()).is_err(),
        "headers are required by default"
    );
    let mut wrong = headers;
    wrong.insert("a4co-event-type", "order.confirmed");
    assert!(
        Decoder::new()
            .headers_optional()
            .decode(&bytes, &wrong)
            .is_err()
    );
}

#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() {
    let Ok(path) = std::env::var("A4CO_ASYNCAPI_SCHEMA") else {
        panic!(
            "A4CO_ASYNCAPI_SCHEMA is not set: it names the AsyncAPI 3.0.0 JSON Schema of npm's \
             @asyncapi/specs, which scripts/test fetches into .tools/ (run scripts/test, or \
             `source scripts/lib/asyncapi.sh && a4co_ensure_asyncapi_schema`)"
        )
    };
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&spec).unwrap();
    let doc = contract::asyncapi_document();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .take(5)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The check bites: an AsyncAPI 2 verb is rejected.
    let mut broken = doc;
    let (_, op) = broken["operations"]
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .next()
        .unwrap();
    op["action"] = json!("publish");
    assert!(!validator.is_valid(&broken));
}

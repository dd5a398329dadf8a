//! The CloudEvents 1.0 mapping, both ways.

use a4co_events::catalog::order::OrderCreated;
use a4co_events::cloudevents::{from_cloudevent, to_cloudevent};
use a4co_events::{DecodeErrorKind, Envelope, Message, TraceContext};
use serde_json::json;

fn envelope() -> Envelope<OrderCreated> {
    Envelope::new("order-service", "ord-1001", OrderCreated::example())
        .with_user_id("user-4711")
        .with_saga_id("saga-1")
        .with_trace(
            TraceContext::parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("k=v"),
            )
            .unwrap(),
        )
}

#[test]
fn an_envelope_maps_to_the_cloudevents_attributes() {
    let env = envelope();
    let ce = to_cloudevent(&env);
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], env.event_id.to_string());
    assert_eq!(ce["type"], "dev.a4co.order.created");
    assert_eq!(ce["source"], "/a4co/order-service");
    assert_eq!(ce["subject"], "ord-1001");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(
        ce["dataschema"],
        "https://a4co.dev/catalog/schemas/order.created/v2.schema.json"
    );
    assert_eq!(ce["eventversion"], 2);
    assert_eq!(ce["correlationid"], env.metadata.correlation_id);
    assert_eq!(ce["userid"], "user-4711");
    assert_eq!(ce["sagaid"], "saga-1");
    assert_eq!(
        ce["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(
        ce["data"],
        serde_json::to_value(OrderCreated::example()).unwrap()
    );
    // Extension names follow the spec: lower-case letters and digits, at most 20 characters.
    for key in ce.as_object().unwrap().keys() {
        assert!(
            key.len() <= 20
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{key}"
        );
    }
}

#[test]
fn the_mapping_round_trips() {
    let env = envelope();
    let back = from_cloudevent(&to_cloudevent(&env))
        .unwrap()
        .downcast::<OrderCreated>()
        .unwrap();
    assert_eq!(back.event_id, env.event_id);
    assert_eq!(back.source, env.source);
    assert_eq!(back.aggregate_id, env.aggregate_id);
    assert_eq!(back.occurred_at, env.occurred_at);
    assert_eq!(back.metadata, env.metadata);
    assert_eq!(back.trace, env.trace);
    assert_eq!(back.data, env.data);
}

#[test]
fn foreign_or_broken_cloudevents_are_rejected_with_the_reason() {
    let mut ce = to_cloudevent(&envelope());
    ce["type"] = json!("com.example.thing");
    let err = from_cloudevent(&ce).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidEnvelope);
    assert!(err.to_string().contains("not an a4co type"), "{err}");

    let mut ce = to_cloudevent(&envelope());
    ce["specversion"] = json!("0.3");
    assert!(
        from_cloudevent(&ce)
            .unwrap_err()
            .to_string()
            .contains("specversion")
    );

    let mut ce = to_cloudevent(&envelope());
    ce["data"]["items"] = json!([]);
    assert_eq!(
        from_cloudevent(&ce).unwrap_err().kind(),
        DecodeErrorKind::SchemaViolation
    );

    assert_eq!(
        from_cloudevent(&json!([1])).unwrap_err().kind(),
        DecodeErrorKind::InvalidEnvelope
    );
}

//! The envelope's wire form and its header mapping, both ways.

use a4co_events::catalog::inventory::ReserveStock;
use a4co_events::catalog::order::OrderCreated;
use a4co_events::headers::{EnvelopeHeaders, names};
use a4co_events::{Envelope, EventId, Message, TraceContext, decode};
use serde_json::Value;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced() -> Envelope<OrderCreated> {
    Envelope::new("order-service", "ord-1001", OrderCreated::example())
        .with_user_id("user-4711")
        .with_saga_id("order-fulfillment/ord-1001")
        .with_trace(TraceContext::parse(TP, Some("a4co=1")).unwrap())
}

#[test]
fn the_body_has_exactly_the_design_fields_in_camel_case() {
    let body: Value = serde_json::from_slice(&traced().to_json()).unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aggregateId",
            "data",
            "eventId",
            "eventType",
            "eventVersion",
            "metadata",
            "occurredAt",
            "source"
        ]
    );
    let mut meta: Vec<&str> = body["metadata"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    meta.sort_unstable();
    assert_eq!(meta, ["causationId", "correlationId", "sagaId", "userId"]);
    assert_eq!(body["eventType"], "order.created");
    assert_eq!(body["eventVersion"], 2);
    assert!(
        body["occurredAt"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 in UTC"
    );
    assert!(
        body.get("traceparent").is_none(),
        "the trace context travels in headers only"
    );
}

#[test]
fn headers_carry_only_the_dedup_id_and_the_trace_context() {
    let env = traced();
    let h = env.headers();
    let names: Vec<&str> = h.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [names::MSG_ID, names::TRACEPARENT, names::TRACESTATE]
    );
    assert_eq!(
        h.get(names::MSG_ID),
        Some(env.event_id.to_string().as_str())
    );
    assert_eq!(h.get(names::TRACEPARENT), Some(TP));
    assert_eq!(h.get(names::TRACESTATE), Some("a4co=1"));
    let untraced = Envelope::new("order-service", "ord-1001", OrderCreated::example()).headers();
    assert_eq!(untraced.len(), 1, "{untraced:?}");

    // And back: the id and trace context; no legacy header, so nothing else.
    let parsed = EnvelopeHeaders::from_headers(&h).unwrap();
    assert_eq!(parsed.event_id, env.event_id);
    assert_eq!((parsed.event_type, parsed.event_version), (None, None));
    assert_eq!(parsed.aggregate_id, None);
    assert_eq!(parsed.trace, env.trace);
}

#[test]
fn decoding_restores_the_trace_context_from_headers() {
    let env = traced();
    let back = decode(&env.to_json(), &env.headers()).unwrap();
    assert_eq!(
        back.trace.as_ref().map(TraceContext::trace_id),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        back.metadata.saga_id.as_deref(),
        Some("order-fulfillment/ord-1001")
    );
    // An untraced message decodes with no trace, and a malformed traceparent is ignored.
    let plain = Envelope::new("order-service", "ord-1", OrderCreated::example());
    let mut h = plain.headers();
    h.insert(names::TRACEPARENT, "garbage");
    assert_eq!(decode(&plain.to_json(), &h).unwrap().trace, None);
}

#[test]
fn a_saga_command_resent_after_a_crash_carries_the_same_id() {
    let id = EventId::deterministic(
        "order-fulfillment/ord-1001",
        "reserve-stock/prod-olive-oil-500",
    );
    let first = Envelope::new(
        "order-service",
        "prod-olive-oil-500",
        ReserveStock::example(),
    )
    .with_event_id(id);
    let again = Envelope::new(
        "order-service",
        "prod-olive-oil-500",
        ReserveStock::example(),
    )
    .with_event_id(id);
    assert_eq!(
        first.headers().get(names::MSG_ID),
        again.headers().get(names::MSG_ID)
    );
    assert_eq!(first.subject(), "inventory.cmd.reserve_stock");
    assert_eq!(ReserveStock::STREAM, "INVENTORY");
}

#[test]
fn downcast_gives_the_concrete_type_or_the_envelope_back() {
    let env = traced();
    let any = decode(&env.to_json(), &env.headers()).unwrap();
    let wrong = any.clone().downcast::<ReserveStock>().unwrap_err();
    assert_eq!(wrong, any);
    let right = any.downcast::<OrderCreated>().unwrap();
    assert_eq!(right.data, OrderCreated::example());
}

#[test]
fn the_checked_body_is_the_body_and_is_refused_as_consumers_refuse_it() {
    let env = Envelope::new("order-service", "ord-1001", OrderCreated::example());
    assert_eq!(env.to_checked_json().unwrap(), env.to_json());
    let any = env.clone().into_any();
    assert_eq!(any.to_checked_json().unwrap(), any.to_json());

    let mut empty = env.clone();
    empty.aggregate_id.clear();
    let mut no_lines = env;
    no_lines.data.items.clear();
    for bad in [empty, no_lines] {
        let refused = bad.to_checked_json().unwrap_err();
        let consumer = a4co_events::decode::check_body(&bad.to_json()).unwrap_err();
        assert_eq!(refused.kind(), consumer.kind());
        assert_eq!(refused.reason(), consumer.reason());
    }
}

//! Every decode error kind, with messages that name the field and the rule.

use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_events::catalog::payment::{PaymentFailed, PaymentInitiated};
use a4co_events::{
    DecodeError, DecodeErrorKind, Decoder, Envelope, Headers, Message, decode, decode_as,
};
use serde_json::{Value, json};

use crate::support::{bytes, order_created};

fn fails(body: &[u8], headers: &Headers) -> DecodeError {
    decode(body, headers).expect_err("decoding should have failed")
}

fn with(mutate: impl FnOnce(&mut Value)) -> DecodeError {
    let (mut body, headers) = order_created();
    mutate(&mut body);
    fails(&bytes(&body), &headers)
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let (body, headers) = order_created();
    let b = bytes(&body);
    let err = Decoder::new()
        .max_bytes(100)
        .decode(&b, &headers)
        .unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::TooLarge);
    assert!(
        err.to_string()
            .contains(&format!("{} bytes; the limit is 100", b.len())),
        "{err}"
    );
    // The default limit is 1 MiB: a 2 MiB body is refused even when it is valid JSON.
    let huge = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        fails(huge.as_bytes(), &headers).kind(),
        DecodeErrorKind::TooLarge
    );
}

#[test]
fn non_utf8_input_is_reported_with_its_offset() {
    let err = fails(b"{\"eventId\":\"\xc3\x28\"}", &Headers::new());
    assert_eq!(err.kind(), DecodeErrorKind::NotUtf8);
    assert!(err.to_string().contains("offset 12"), "{err}");
}

#[test]
fn malformed_and_truncated_json_are_told_apart() {
    let err = fails(b"{\"eventId\": }", &Headers::new());
    assert_eq!(err.kind(), DecodeErrorKind::MalformedJson);
    assert!(err.to_string().starts_with("malformed JSON"), "{err}");
    assert!(err.to_string().contains("line 1 column 13"), "{err}");

    let (body, headers) = order_created();
    let b = bytes(&body);
    let err = fails(&b[..b.len() - 7], &headers);
    assert_eq!(err.kind(), DecodeErrorKind::MalformedJson);
    assert!(err.to_string().starts_with("truncated JSON"), "{err}");
    assert_eq!(fails(b"", &headers).kind(), DecodeErrorKind::MalformedJson);
}

#[test]
fn a_broken_envelope_names_the_field() {
    let err = with(|b| {
        b.as_object_mut().unwrap().remove("eventId");
    });
    assert_eq!(err.kind(), DecodeErrorKind::InvalidEnvelope);
    assert!(
        err.to_string()
            .contains("\"eventId\" is a required property"),
        "{err}"
    );
    assert_eq!(err.violations()[0].rule, "required");

    let err = with(|b| b["eventId"] = json!("not-a-uuid"));
    assert_eq!(err.kind(), DecodeErrorKind::InvalidEnvelope);
    assert_eq!(err.violations()[0].path, "/eventId");
    assert_eq!(err.violations()[0].rule, "format");

    let err = with(|b| b["metadata"]["correlationId"] = json!(""));
    assert_eq!(err.violations()[0].path, "/metadata/correlationId");

    let err = with(|b| b["data"] = json!([1, 2]));
    assert_eq!(err.kind(), DecodeErrorKind::InvalidEnvelope);
    assert_eq!(err.violations()[0].path, "/data");

    assert_eq!(
        fails(b"42", &Headers::new()).kind(),
        DecodeErrorKind::InvalidEnvelope
    );
}

#[test]
fn missing_and_contradicting_headers_are_rejected() {
    let (body, base) = order_created();
    let b = bytes(&body);
    let err = fails(&b, &Headers::new());
    assert_eq!(err.kind(), DecodeErrorKind::MissingHeader);
    assert!(err.to_string().contains("Nats-Msg-Id"), "{err}");

    // Today's publishers send the id alone; type, version, aggregate and correlation come
    // from the body.
    assert_eq!(base.len(), 1, "{base:?}");
    let decoded = decode(&b, &base).unwrap();
    assert_eq!(decoded.aggregate_id, "ord-1001");

    // Older publishers also sent four a4co-* headers: accepted when they agree...
    let mut legacy = base;
    legacy.insert("a4co-event-type", "order.created");
    legacy.insert("a4co-event-version", "2");
    legacy.insert("a4co-aggregate-id", "ord-1001");
    legacy.insert(
        "a4co-correlation-id",
        body["metadata"]["correlationId"].as_str().unwrap(),
    );
    assert_eq!(decode(&b, &legacy).unwrap().aggregate_id, "ord-1001");

    // ... and rejected, naming the header, when one contradicts the body.
    for (name, value) in [
        ("a4co-event-version", "1"),
        ("a4co-event-type", "order.confirmed"),
        ("Nats-Msg-Id", "0194f1c2-0000-7000-8000-000000000000"),
        ("a4co-aggregate-id", "ord-other"),
        ("a4co-correlation-id", "other"),
    ] {
        let mut h = legacy.clone();
        h.insert(name, value);
        let err = fails(&b, &h);
        assert_eq!(err.kind(), DecodeErrorKind::HeaderMismatch, "{name}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn unknown_types_and_versions_are_told_apart() {
    let (mut body, mut headers) = order_created();
    body["eventType"] = json!("order.teleported");
    headers.insert("a4co-event-type", "order.teleported");
    let err = fails(&bytes(&body), &headers);
    assert_eq!(err.kind(), DecodeErrorKind::UnknownType);
    assert_eq!(err.event_type(), Some("order.teleported"));

    let (mut body, mut headers) = order_created();
    body["eventVersion"] = json!(3);
    headers.insert("a4co-event-version", "3");
    let err = fails(&bytes(&body), &headers);
    assert_eq!(err.kind(), DecodeErrorKind::UnknownVersion);
    assert!(err.to_string().contains("knows v1, v2"), "{err}");
    assert_eq!(err.event_version(), Some(3));
}

#[test]
fn schema_violations_name_the_field_and_the_rule() {
    type Case = (fn(&mut Value), &'static str, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            |b| {
                b["data"].as_object_mut().unwrap().remove("customerId");
            },
            "/data",
            "required",
            "\"customerId\" is a required property",
        ),
        (
            |b| b["data"]["items"][0]["quantity"] = json!(0),
            "/data/items/0/quantity",
            "minimum",
            "less than the minimum of 1",
        ),
        (
            |b| b["data"]["items"][0]["quantity"] = json!("two"),
            "/data/items/0/quantity",
            "type",
            "is not of type \"integer\"",
        ),
        (
            |b| b["data"]["totalAmount"]["amountMinor"] = json!(59.5),
            "/data/totalAmount/amountMinor",
            "type",
            "integer",
        ),
        (
            |b| b["data"]["totalAmount"]["currency"] = json!("eur"),
            "/data/totalAmount/currency",
            "pattern",
            "^[A-Z]{3}$",
        ),
        (
            |b| b["data"]["createdAt"] = json!("yesterday"),
            "/data/createdAt",
            "format",
            "date-time",
        ),
        (
            |b| b["data"]["items"] = json!([]),
            "/data/items",
            "minItems",
            "",
        ),
        (
            |b| b["data"]["fulfillment"]["method"] = json!("teleport"),
            "/data/fulfillment",
            "oneOf",
            "",
        ),
    ];
    for (mutate, path, rule, words) in cases {
        let err = with(mutate);
        assert_eq!(err.kind(), DecodeErrorKind::SchemaViolation, "{err}");
        let v = &err.violations()[0];
        assert_eq!((v.path.as_str(), v.rule.as_str()), (path, rule), "{err}");
        assert!(err.to_string().contains(words), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("order.created v2 at {path} ({rule})")),
            "{err}"
        );
        assert_eq!(err.event_type(), Some("order.created"));
    }
}

#[test]
fn an_enum_value_outside_the_closed_set_is_a_violation() {
    let env = Envelope::new("payment-service", "pay-1", PaymentInitiated::example());
    let mut body: Value = serde_json::from_slice(&env.to_json()).unwrap();
    body["data"]["paymentMethod"] = json!("bitcoin");
    let err = fails(&bytes(&body), &env.headers());
    assert_eq!(err.kind(), DecodeErrorKind::SchemaViolation);
    assert_eq!(err.violations()[0].rule, "enum");
    assert_eq!(err.violations()[0].path, "/data/paymentMethod");
}

#[test]
fn several_violations_are_all_reported_but_bounded() {
    let err = with(|b| {
        b["data"] = json!({"items": [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}]});
    });
    assert_eq!(err.kind(), DecodeErrorKind::SchemaViolation);
    assert_eq!(err.violations().len(), a4co_events::decode::MAX_VIOLATIONS);
    assert!(err.to_string().contains("more)"), "{err}");
}

#[test]
fn hostile_input_is_clipped_in_messages() {
    let (mut body, mut headers) = order_created();
    let long = "x".repeat(100_000);
    body["eventType"] = json!(format!("order.{long}"));
    headers.insert("a4co-event-type", format!("order.{long}"));
    let err = fails(&bytes(&body), &headers);
    assert_eq!(err.kind(), DecodeErrorKind::UnknownType);
    assert!(
        err.to_string().len() < 400,
        "{} bytes",
        err.to_string().len()
    );
}

#[test]
fn decode_as_checks_the_type_first() {
    let (body, headers) = order_created();
    let err = decode_as::<OrderConfirmed>(&bytes(&body), &headers).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::UnexpectedType);
    assert!(
        err.to_string()
            .contains("expected a order.confirmed message, got order.created v2"),
        "{err}"
    );
    let ok = decode_as::<OrderCreated>(&bytes(&body), &headers).unwrap();
    assert_eq!(ok.data, OrderCreated::example());
    let err = decode_as::<PaymentFailed>(b"{", &headers).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::MalformedJson);
}

#[test]
fn every_error_is_permanent_and_has_a_dead_letter_reason() {
    let err = fails(b"nope", &Headers::new());
    assert!(!err.is_retryable());
    assert!(
        err.reason().starts_with("malformed_json: "),
        "{}",
        err.reason()
    );
}

#[test]
fn a_payload_with_a_duplicate_key_is_a_schema_violation() {
    let (body, headers) = order_created();
    let text = String::from_utf8(bytes(&body)).unwrap();
    let customer = body["data"]["customerId"].as_str().unwrap();
    let doubled = text.replacen(
        "\"customerId\"",
        &format!("\"customerId\":{customer:?},\"customerId\""),
        1,
    );
    assert_ne!(doubled, text);
    let err = fails(doubled.as_bytes(), &headers);
    assert_eq!(err.kind(), DecodeErrorKind::SchemaViolation);
    assert!(err.to_string().contains("duplicate field"), "{err}");
}

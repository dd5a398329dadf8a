//! Property tests: no input makes decoding panic.

use a4co_events::{Decoder, Headers, Money, decode};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::{bytes, order_created};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths of a valid envelope where a random value is planted.
const SPOTS: &[&str] = &[
    "",
    "/eventId",
    "/eventType",
    "/eventVersion",
    "/data",
    "/data/items",
    "/data/items/0",
    "/data/items/0/quantity",
    "/data/totalAmount",
    "/data/fulfillment",
    "/data/fulfillment/method",
    "/metadata",
    "/metadata/userId",
    "/occurredAt",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (_, headers) = order_created();
        let _ = decode(&input, &headers);
        let _ = decode(&input, &Headers::new());
        let _ = Decoder::new().headers_optional().max_bytes(512).decode(&input, &Headers::new());
    }

    #[test]
    fn mutilated_valid_messages_never_panic(cut in 0usize..2000, flips in prop::collection::vec((0usize..2000, any::<u8>()), 0..6)) {
        let (body, headers) = order_created();
        let mut b = bytes(&body);
        for (at, byte) in flips {
            let len = b.len();
            b[at % len] = byte;
        }
        b.truncate(cut.min(b.len()));
        let _ = decode(&b, &headers);
    }

    #[test]
    fn arbitrary_values_planted_in_a_valid_envelope_never_panic(spot in 0..SPOTS.len(), value in arbitrary_json()) {
        let (mut body, headers) = order_created();
        if SPOTS[spot].is_empty() {
            body = value;
        } else if let Some(slot) = body.pointer_mut(SPOTS[spot]) {
            *slot = value;
        }
        match decode(&bytes(&body), &headers) {
            Ok(env) => prop_assert_eq!(env.aggregate_id, "ord-1001"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn money_round_trips_through_json(amount in 0i64..i64::MAX, code in "[A-Z]{3}") {
        let m = Money::new(amount, a4co_events::Currency::new(&code).unwrap());
        let back: Money = serde_json::from_value(serde_json::to_value(m).unwrap()).unwrap();
        prop_assert_eq!(back, m);
    }
}

//! Versioning: v1 payloads arrive as the newest type.

use a4co_events::catalog::order::{Fulfillment, OrderCreated, OrderCreatedV1, OrderType};
use a4co_events::{AnyMessage, DataError, Envelope, Message, Upcast, decode, decode_as};

#[test]
fn a_v1_delivery_order_decodes_as_v2_with_its_address() {
    let v1 = OrderCreatedV1::example();
    let env = Envelope::new("order-service", "ord-1", v1.clone());
    assert_eq!(env.event_version(), 1);
    let got = decode(&env.to_json(), &env.headers()).unwrap();
    assert_eq!(got.event_version(), 2);
    let AnyMessage::OrderCreated(order) = got.data else {
        panic!("not an OrderCreated")
    };
    assert_eq!(
        order.fulfillment,
        Fulfillment::Delivery {
            address: v1.delivery_address.clone(),
            requested_date: v1.requested_delivery_date
        }
    );
    assert_eq!(order.items, v1.items);
    assert_eq!(order.total_amount, v1.total_amount);
    assert_eq!(order.payment_method_id, None, "v1 had no payment method");
}

#[test]
fn a_v1_pickup_order_drops_the_placeholder_address() {
    let v1 = OrderCreatedV1 {
        order_type: OrderType::Pickup,
        ..OrderCreatedV1::example()
    };
    let env = Envelope::new("order-service", "ord-2", v1.clone());
    let got = decode_as::<OrderCreated>(&env.to_json(), &env.headers()).unwrap();
    assert_eq!(
        got.data.fulfillment,
        Fulfillment::Pickup {
            requested_date: v1.requested_delivery_date
        }
    );
    assert_eq!(got.data, v1.upcast());
}

#[test]
fn both_versions_stay_in_the_catalog_and_decode_data_follows_the_chain() {
    let versions: Vec<u32> = a4co_events::catalog::versions("order.created").collect();
    let mut versions = versions;
    versions.sort_unstable();
    assert_eq!(versions, [1, 2]);
    let v1_json = serde_json::to_value(OrderCreatedV1::example()).unwrap();
    assert_eq!(
        OrderCreated::decode_data(1, v1_json.clone()).unwrap(),
        OrderCreatedV1::example().upcast()
    );
    assert!(matches!(
        OrderCreated::decode_data(3, v1_json.clone()),
        Err(DataError::UnknownVersion)
    ));
    assert!(matches!(
        OrderCreated::decode_data(0, v1_json.clone()),
        Err(DataError::UnknownVersion)
    ));
    // v1 data is not valid v2 data: the versions really differ.
    assert!(matches!(
        OrderCreated::decode_data(2, v1_json),
        Err(DataError::Invalid(_))
    ));
}

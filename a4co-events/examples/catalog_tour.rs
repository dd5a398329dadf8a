//! A tour of the message catalog: build an event, encode it, look at its headers and the
//! schema it validates against, decode it back, upcast an old version, and reject bad input.
//!
//! Run with `scripts/demo` or `cargo run -p a4co-events --example catalog-tour`.

use a4co_events::catalog::order::{Fulfillment, OrderCreated, OrderCreatedV1};
use a4co_events::catalog::{self, AnyMessage};
use a4co_events::{BoundedContext, DecodeError, Envelope, Message, TraceContext, decode, schema};

fn main() -> Result<(), DecodeError> {
    let per_context: Vec<String> = BoundedContext::ALL
        .iter()
        .map(|c| {
            let n = catalog::MESSAGES
                .iter()
                .filter(|m| m.context == *c && m.latest)
                .count();
            format!("{c} {n}")
        })
        .collect();
    println!(
        "== The catalog: {} message types, {} versions ({})",
        catalog::MESSAGES.iter().filter(|m| m.latest).count(),
        catalog::MESSAGES.len(),
        per_context.join(", ")
    );

    println!("\n== 1. A service builds an event");
    let trace = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        None,
    );
    let mut event = Envelope::new("order-service", "ord-1001", OrderCreated::example())
        .with_user_id("user-4711");
    event.trace = trace;
    println!(
        "{} v{} on subject `{}`, stored in stream {}",
        event.event_type(),
        event.event_version(),
        event.subject(),
        OrderCreated::STREAM
    );

    println!("\n== 2. Encoded: NATS headers");
    for (name, value) in event.headers().iter() {
        println!("  {name}: {value}");
    }
    println!("\n== 3. Encoded: JSON body");
    let body = event.to_json();
    let pretty: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&pretty).unwrap_or_default()
    );

    println!("\n== 4. The schema `data` validates against (docs/catalog/schemas/...)");
    if let Some(info) = catalog::find(OrderCreated::TYPE, OrderCreated::VERSION) {
        let published = schema::message_schema(info);
        println!("  $id: {}", published["$id"].as_str().unwrap_or_default());
        let required: Vec<&str> = published["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        println!("  required fields: {}", required.join(", "));
    }

    println!("\n== 5. A consumer decodes it");
    let received = decode(&body, &event.headers())?;
    if let AnyMessage::OrderCreated(order) = &received.data {
        println!(
            "  order for {} with {} lines, total {}, trace {}",
            order.customer_id,
            order.items.len(),
            order.total_amount,
            received
                .trace
                .as_ref()
                .map(TraceContext::trace_id)
                .unwrap_or("none")
        );
    }

    println!("\n== 6. An old producer still sends order.created v1: it arrives as v2");
    let old = Envelope::new(
        "legacy-order-service",
        "ord-0999",
        OrderCreatedV1::example(),
    );
    let upcast = decode(&old.to_json(), &old.headers())?;
    if let AnyMessage::OrderCreated(order) = &upcast.data {
        let how = match &order.fulfillment {
            Fulfillment::Delivery { address, .. } => format!("delivery to {}", address.city),
            Fulfillment::Pickup { .. } => "pickup".to_owned(),
        };
        println!(
            "  sent v{}, received v{}: fulfillment = {how}",
            old.event_version(),
            upcast.event_version()
        );
    }

    println!("\n== 7. Bad input gets a clear error (a consumer dead-letters it and goes on)");
    let mut broken: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    broken["data"]["items"][0]["quantity"] = serde_json::json!(0);
    let broken = serde_json::to_vec(&broken).unwrap_or_default();
    let cases: [(&str, &[u8]); 4] = [
        ("truncated", &body[..body.len() / 2]),
        ("not UTF-8", b"{\"eventId\": \"\xff\"}"),
        ("quantity 0", &broken),
        ("not an envelope", b"[1, 2, 3]"),
    ];
    for (what, bytes) in cases {
        if let Err(e) = decode(bytes, &event.headers()) {
            println!("  {what:<16} -> {}", e.reason());
        }
    }
    Ok(())
}

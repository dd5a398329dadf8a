//! The smallest a4co service: one typed consumer with retries, dead letters and an inbox.
//! Run with `cargo run -p example-hello-consumer` (in memory), or with `NATS_URL` set.
use std::time::Duration;

use a4co_events::bus::{HandlerError, InboxCheck, Publisher, RetryPolicy};
use a4co_events::bus::{Subscriber, Subscription};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::service::{AnyBus, shutdown_signal};
use a4co_events::{Envelope, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = AnyBus::from_env("hello-consumer").await?; // NATS_URL, else in memory
    let orders = Subscription::new("hello-consumer", "orders")
        // 3 deliveries, retried 200 ms then 400 ms later; then the dead-letter stream.
        .retry(RetryPolicy::attempts(3, Duration::from_millis(200)))
        // Finished event ids are kept for an hour: a redelivery is skipped, not run again.
        .inbox_ttl(Some(Duration::from_secs(3600)))
        .inbox_check(InboxCheck::Always)
        .of::<OrderCreated>();
    let handle = bus
        .on(orders, |order, delivery| async move {
            match order.aggregate_id.as_str() {
                "ord-bad" => return Err(HandlerError::permanent("unknown customer")),
                "ord-slow" if delivery.attempt == 1 => return Err(HandlerError::retryable("busy")),
                id => println!("{id}: handled on attempt {}", delivery.attempt),
            }
            Ok(())
        })
        .await?;
    for id in ["ord-1", "ord-slow", "ord-bad"] {
        let order = Envelope::new("order-service", id, OrderCreated::example());
        bus.publish(&order).await?;
    }
    println!("consuming on the {} bus; Ctrl-C to stop", bus.kind());
    shutdown_signal().await;
    println!("{}", handle.shutdown().await); // waits for the handlers in flight
    Ok(())
}

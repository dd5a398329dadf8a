//! Helpers shared by the test modules.

use a4co_events::catalog::order::OrderCreated;
use a4co_events::{Envelope, Headers, Message};
use serde_json::Value;

/// A valid `order.created` v2 envelope: its body as JSON and its headers.
pub(crate) fn order_created() -> (Value, Headers) {
    let env = Envelope::new("order-service", "ord-1001", OrderCreated::example())
        .with_user_id("user-4711");
    (
        serde_json::from_slice(&env.to_json()).expect("the body is JSON"),
        env.headers(),
    )
}

/// Serializes a JSON value.
pub(crate) fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

/// A bus under test and what keeps it alive (the nats-server, for NATS).
pub(crate) struct Fixture<T: a4co_events::bus::Transport> {
    pub(crate) bus: a4co_events::bus::EventBus<T>,
    pub(crate) server: Option<a4co_testkit::nats::NatsServer>,
}

/// A provisioned in-memory bus.
pub(crate) async fn memory_bus() -> Fixture<a4co_events::bus::MemoryTransport> {
    Fixture {
        bus: a4co_events::bus::MemoryBus::provisioned().await.unwrap(),
        server: None,
    }
}

/// A provisioned bus on a fresh nats-server.
pub(crate) async fn nats_bus() -> Fixture<a4co_events::bus::nats::NatsTransport> {
    let server = a4co_testkit::nats::NatsServer::start();
    let bus = nats_connect(&server.url()).await;
    Fixture {
        bus,
        server: Some(server),
    }
}

/// A provisioned bus on an existing server.
pub(crate) async fn nats_connect(url: &str) -> a4co_events::bus::nats::NatsBus {
    use a4co_events::bus::nats::{Config, NatsBus};
    let bus = NatsBus::connect(
        Config::new(url)
            .name("a4co-tests")
            .ack_timeout(std::time::Duration::from_secs(2)),
    )
    .await
    .unwrap();
    bus.provision(1).await.unwrap();
    bus
}

/// Receives from a channel or fails the test after `secs` seconds.
pub(crate) async fn recv<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    secs: u64,
    what: &str,
) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), rx.recv()).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("{what}: channel closed"),
        Err(_) => panic!("{what}: nothing within {secs} s"),
    }
}

/// Waits until `check` holds, or fails the test after `secs` seconds.
pub(crate) async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

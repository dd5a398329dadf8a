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

/// Runs each generic test `$test(fixture)` of the calling module on the memory bus and on
/// a fresh nats-server, as `memory::$test` and `nats::$test`.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::memory_bus().await).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::nats_bus().await).await;
                }
            )*
        }
    };
}
pub(crate) use conformance;

/// A bus under test and what keeps it alive (the nats-server, for NATS).
pub(crate) struct Fixture<T: a4co_events::bus::transport::Transport> {
    pub(crate) bus: a4co_events::bus::EventBus<T>,
    pub(crate) server: Option<a4co_testkit::nats::NatsServer>,
}

/// A provisioned in-memory bus.
pub(crate) async fn memory_bus() -> Fixture<a4co_events::bus::memory::MemoryTransport> {
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
    bus.provision().await.unwrap();
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

/// Whether the inbox of `sub` holds finished work for `event_id` (an error while the broker
/// is unreachable).
pub(crate) async fn in_inbox<T: a4co_events::bus::transport::Transport>(
    f: &Fixture<T>,
    sub: &a4co_events::bus::Subscription,
    event_id: &str,
) -> Result<bool, String> {
    use a4co_events::bus::transport::Inbox as _;
    let durable = sub.durable();
    let inbox = f
        .bus
        .transport()
        .inbox(
            &format!("a4co-inbox-{durable}"),
            std::time::Duration::from_secs(3600),
        )
        .await
        .map_err(|e| e.to_string())?;
    inbox
        .is_done(&format!("{durable}.{event_id}"))
        .await
        .map_err(|e| e.to_string())
}

/// A transport whose acknowledgements are lost on the way: the handler's work is done, the
/// broker never hears of it and redelivers after the ack wait.
#[derive(Clone, Debug)]
pub(crate) struct LosingAcks<T>(pub(crate) T);

/// A consumer of [`LosingAcks`].
pub(crate) struct LosingConsumer<C>(C);

/// A delivery of [`LosingAcks`].
pub(crate) struct LosingDelivery<D>(D);

impl<D: a4co_events::bus::transport::Delivery> a4co_events::bus::transport::Delivery
    for LosingDelivery<D>
{
    fn message(&self) -> &a4co_events::bus::RawMessage {
        self.0.message()
    }
    fn info(&self) -> &a4co_events::bus::DeliveryInfo {
        self.0.info()
    }
    async fn ack(&self) -> Result<(), a4co_events::bus::AckError> {
        Ok(())
    }
    async fn nak(&self, delay: std::time::Duration) -> Result<(), a4co_events::bus::AckError> {
        self.0.nak(delay).await
    }
    async fn term(&self) -> Result<(), a4co_events::bus::AckError> {
        self.0.term().await
    }
    async fn progress(&self) -> Result<(), a4co_events::bus::AckError> {
        self.0.progress().await
    }
}

impl<C: a4co_events::bus::transport::Consumer> a4co_events::bus::transport::Consumer
    for LosingConsumer<C>
{
    type Delivery = LosingDelivery<C::Delivery>;
    async fn next(
        &mut self,
        room: usize,
    ) -> Option<Result<Self::Delivery, a4co_events::bus::ConsumeError>> {
        Some(self.0.next(room).await?.map(LosingDelivery))
    }
    fn ack_state(
        &self,
    ) -> impl std::future::Future<Output = Option<a4co_events::bus::transport::AckState>> + Send + 'static
    {
        self.0.ack_state()
    }
}

impl<T: a4co_events::bus::transport::Transport> a4co_events::bus::transport::Transport
    for LosingAcks<T>
{
    type Consumer = LosingConsumer<T::Consumer>;
    type Inbox = T::Inbox;
    async fn publish(
        &self,
        m: a4co_events::bus::RawMessage,
    ) -> Result<a4co_events::bus::PublishAck, a4co_events::bus::PublishError> {
        self.0.publish(m).await
    }
    async fn publish_pipelined(
        &self,
        m: a4co_events::bus::RawMessage,
    ) -> Result<a4co_events::bus::PendingAck, a4co_events::bus::PublishError> {
        self.0.publish_pipelined(m).await
    }
    async fn ensure_stream(
        &self,
        s: &a4co_events::bus::transport::StreamSpec,
    ) -> Result<a4co_events::bus::Provisioned, a4co_events::bus::ProvisionError> {
        self.0.ensure_stream(s).await
    }
    async fn consumer(
        &self,
        s: &a4co_events::bus::transport::ConsumerSpec,
    ) -> Result<Self::Consumer, a4co_events::bus::SubscribeError> {
        Ok(LosingConsumer(self.0.consumer(s).await?))
    }
    async fn recreate_consumer(
        &self,
        s: &a4co_events::bus::transport::ConsumerSpec,
    ) -> Result<(), a4co_events::bus::SubscribeError> {
        self.0.recreate_consumer(s).await
    }
    async fn consumer_exists(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<bool, a4co_events::bus::ConsumeError> {
        self.0.consumer_exists(stream, durable).await
    }
    async fn inbox(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<T::Inbox, a4co_events::bus::SubscribeError> {
        self.0.inbox(name, ttl).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<
        Vec<(
            u64,
            a4co_events::bus::RawMessage,
            chrono::DateTime<chrono::Utc>,
        )>,
        a4co_events::bus::ConsumeError,
    > {
        self.0.read_stream(stream, from, limit).await
    }
    async fn delete_message(
        &self,
        stream: &str,
        seq: u64,
    ) -> Result<bool, a4co_events::bus::ConsumeError> {
        self.0.delete_message(stream, seq).await
    }
}

//! What a service repo writes against each feature set of the SDK. It only has to compile:
//! scripts/test checks it with `--no-default-features --features <one set>` per set, so a
//! feature that stops building on its own, or an item that moves behind another feature,
//! fails the suite.

/// The typed catalog alone: envelopes, JSON, decoding.
pub fn catalog() -> Result<usize, a4co_events::DecodeError> {
    use a4co_events::catalog::order::OrderCreated;
    use a4co_events::{Envelope, Message, decode_as};
    let sent = Envelope::new("order-service", "ord-1", OrderCreated::example());
    let received = decode_as::<OrderCreated>(&sent.to_json(), &sent.headers())?;
    Ok(received.data.items.len())
}

/// Decoding checks payloads against their schemas.
#[cfg(feature = "events-validate")]
pub fn validated() -> Result<(), a4co_events::DecodeError> {
    use a4co_events::catalog::order::OrderCreated;
    use a4co_events::{Envelope, Message};
    let sent = Envelope::new("order-service", "ord-1", OrderCreated::example());
    sent.to_checked_json().map(drop)
}

/// The published contract: catalog files, AsyncAPI, evolution checks.
#[cfg(feature = "events-contract")]
pub fn contract() -> usize {
    a4co_events::contract::generate().len()
}

/// A typed handler on the in-memory bus.
#[cfg(feature = "events-bus")]
pub async fn bus() -> Result<(), Box<dyn std::error::Error>> {
    use a4co_events::bus::{HandlerError, MemoryBus, Subscriber, Subscription};
    use a4co_events::catalog::order::OrderCreated;
    let bus = MemoryBus::provisioned().await?;
    let orders = Subscription::new("inventory-service", "orders").of::<OrderCreated>();
    let handle = bus
        .on(orders, |order, _| async move {
            if order.data.items.is_empty() {
                return Err(HandlerError::permanent("an order without items"));
            }
            Ok(())
        })
        .await?;
    handle.shutdown().await;
    Ok(())
}

/// The bus on NATS JetStream.
#[cfg(feature = "events-nats")]
pub async fn nats(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    use a4co_events::bus::nats::{Config, NatsBus};
    let bus = NatsBus::connect(Config::new(url)).await?;
    bus.provision().await?;
    Ok(())
}

/// A service's runtime: settings, telemetry, the bus from the environment, serving.
#[cfg(feature = "events-server")]
pub async fn server() -> Result<(), a4co_events::service::StartError> {
    use a4co_events::service::{Env, Service, Workers};
    let env = Env::from_pairs([("ORDER_HTTP_ADDR", "127.0.0.1:0")]);
    let default = std::net::SocketAddr::from(([127, 0, 0, 1], 8081));
    let addr = env.var("ORDER_HTTP_ADDR", default, "an address to listen on")?;
    let service = Service::start("order-service", &env).await?;
    let router = axum::Router::new();
    service
        .serve_until_signal(addr, router, Workers::new())
        .await
}

/// The HTTP client without axum.
#[cfg(feature = "http")]
pub fn http() -> Result<a4co_http::Client, a4co_http::ConfigError> {
    a4co_http::Client::builder("inventory-service", "http://127.0.0.1:8082").build()
}

/// The axum layer that checks service JWTs.
#[cfg(feature = "http-server")]
pub fn http_server(secret: &a4co_http::auth::Secret) -> a4co_http::auth::RequireLayer {
    a4co_http::auth::require(&a4co_http::auth::Verifier::new(secret), "inventory:read")
}

/// A saga on the memory store.
#[cfg(feature = "saga")]
pub fn saga() -> a4co_saga::MemoryStore {
    a4co_saga::MemoryStore::new()
}

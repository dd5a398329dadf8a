//! A service's runtime: telemetry, the bus and its records from the environment, and
//! serving until a signal.

use std::net::SocketAddr;

use axum::Router;

use super::{AnyBus, Env, LogFormat, Records, StartError, Workers};

/// A running service's name and bus, set up from the environment by [`Service::start`]:
/// what a service's `main` needs beside its own logic.
///
/// ```no_run
/// use a4co_events::service::{Env, Service, StartError, Workers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StartError> {
/// let env = Env::from_process();
/// let service = Service::start("inventory-service", &env).await?;
/// let stock = service.records("inventory").await?;
/// let workers = Workers::new(); // the service's subscriptions and sweeps
/// let router = axum::Router::new(); // its REST routes
/// # drop(stock);
/// service.serve_until_signal("127.0.0.1:8082".parse().unwrap(), router, workers).await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    bus: AnyBus,
}

impl Service {
    /// Sets up logs, metrics and traces ([`super::init`]: JSON lines, `RUST_LOG`, OTLP from
    /// the `OTEL_*` variables) and connects the bus `env` asks for: NATS JetStream as the
    /// `NATS_*` variables say ([`Env::nats`]), every stream provisioned, or in memory when
    /// `NATS_URL` is unset. `name` is the service's name in telemetry and on the connection.
    ///
    /// # Errors
    /// [`StartErrorKind::InvalidConfig`](super::StartErrorKind::InvalidConfig) naming the
    /// variable to fix (a bad value, refused credentials, an OTLP protocol that is not
    /// supported); [`StartErrorKind::Unavailable`](super::StartErrorKind::Unavailable) when
    /// NATS cannot be reached, is too old, or its streams cannot be created.
    pub async fn start(name: &str, env: &Env) -> Result<Service, StartError> {
        super::init(name, "info", LogFormat::Json)?;
        let bus = AnyBus::open(env.nats()?.map(|c| c.name(name))).await?;
        Ok(Service::on(name, bus))
    }

    /// A service named `name` on a bus already connected (several services in one process,
    /// tests). Telemetry is left as it is: call [`super::init`] first where it matters.
    pub fn on(name: &str, bus: AnyBus) -> Service {
        Service {
            name: name.to_owned(),
            bus,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bus (a cheap clone: hand it to the service's logic).
    pub fn bus(&self) -> &AnyBus {
        &self.bus
    }

    /// The service's records in `bucket` on the bus's broker (a JetStream KV bucket on
    /// NATS, created with the bus's replicas; memory otherwise).
    ///
    /// # Errors
    /// [`StartErrorKind::Unavailable`](super::StartErrorKind::Unavailable): the bucket cannot
    /// be opened or created.
    pub async fn records(&self, bucket: &str) -> Result<Records, StartError> {
        Records::open(&self.bus, bucket).await.map_err(|e| {
            StartError::unavailable(format!("opening the records bucket {bucket:?}")).with_source(e)
        })
    }

    /// Binds `addr` and serves `router` with `/health` (the bus and every subscription of
    /// `workers`), `/metrics` and a span per request ([`super::request_span`]) added, until
    /// Ctrl-C or SIGTERM; then lets requests in flight finish, stops `workers` gracefully
    /// and flushes telemetry ([`super::shutdown`]).
    ///
    /// # Errors
    /// [`StartErrorKind::InvalidConfig`](super::StartErrorKind::InvalidConfig) when `addr`
    /// cannot be bound (the message names it); `Unavailable` when serving failed.
    pub async fn serve_until_signal(
        self,
        addr: SocketAddr,
        router: Router,
        workers: Workers,
    ) -> Result<(), StartError> {
        super::ops::serve_until_signal(&self.name, addr, self.bus, router, workers).await
    }
}

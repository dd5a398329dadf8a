//! The service's settings, from the environment.

use std::net::SocketAddr;

use a4co_events::bus::nats::Config as NatsConfig;
use a4co_http::auth::Secret;
use service_kit::{ConfigError, Env};

/// Everything the service reads at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// `NOTIFICATION_HTTP_ADDR`, default `127.0.0.1:8084`.
    pub http_addr: SocketAddr,
    /// NATS as the `NATS_*` variables say (`NATS_URL`, credentials, TLS, `NATS_REPLICAS`:
    /// see [`Env::nats`]); `None` when `NATS_URL` is unset: the in-memory bus.
    pub nats: Option<NatsConfig>,
    /// `SERVICE_JWT_SECRET`, required.
    pub secret: Secret,
}

impl Config {
    /// Reads the settings.
    ///
    /// # Errors
    /// A bad value or a missing secret, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            http_addr: env.var(
                "NOTIFICATION_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8084)),
                "an address to listen on, such as 127.0.0.1:8084",
            )?,
            nats: env.nats()?,
            secret: env.jwt_secret()?,
        })
    }
}

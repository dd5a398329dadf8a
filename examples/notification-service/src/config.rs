//! The service's settings, from the environment.

use std::net::SocketAddr;

use a4co_events::service::{Env, StartError};
use a4co_http::auth::Secret;

/// Everything the service reads at start-up beyond the bus (which [`Service::start`](a4co_events::service::Service::start) reads).
#[derive(Clone, Debug)]
pub struct Config {
    /// `NOTIFICATION_HTTP_ADDR`, default `127.0.0.1:8084`.
    pub http_addr: SocketAddr,
    /// `SERVICE_JWT_SECRET`, required.
    pub secret: Secret,
}

impl Config {
    /// Reads the settings.
    ///
    /// # Errors
    /// A bad value or a missing secret, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, StartError> {
        Ok(Config {
            http_addr: env.var(
                "NOTIFICATION_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8084)),
                "an address to listen on, such as 127.0.0.1:8084",
            )?,
            secret: service_kit::jwt_secret(env)?,
        })
    }
}

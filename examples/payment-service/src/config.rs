//! The service's settings, from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use a4co_events::service::{Env, StartError};
use a4co_http::auth::Secret;

use crate::Gateway;

/// Everything the service reads at start-up beyond the bus (which [`Service::start`](a4co_events::service::Service::start) reads).
#[derive(Clone, Debug)]
pub struct Config {
    /// `PAYMENT_HTTP_ADDR`, default `127.0.0.1:8083`.
    pub http_addr: SocketAddr,
    /// The simulated gateway: `PAYMENT_DECLINE_RATE` (0 to 1, default 0),
    /// `PAYMENT_DECLINE_SEED` (default 7), `PAYMENT_DECLINE_OVER_MINOR` (an amount in cents
    /// above which cards are declined; default none), `PAYMENT_LATENCY_MS` (default 20).
    pub gateway: Gateway,
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
                "PAYMENT_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8083)),
                "an address to listen on, such as 127.0.0.1:8083",
            )?,
            gateway: Gateway::from_env(env)?,
            secret: service_kit::jwt_secret(env)?,
        })
    }
}

impl Gateway {
    /// The simulated gateway as the `PAYMENT_DECLINE_*` and `PAYMENT_LATENCY_MS` variables
    /// say (see [`Config::gateway`]); the marketplace demo reads it too.
    ///
    /// # Errors
    /// A bad value, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, StartError> {
        let defaults = Gateway::default();
        let rate: f64 = env.var(
            "PAYMENT_DECLINE_RATE",
            0.0,
            "a share between 0 and 1, such as 0.1",
        )?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(StartError::invalid_config(format!(
                "PAYMENT_DECLINE_RATE={rate} is not between 0 and 1"
            )));
        }
        let over: i64 = env.var(
            "PAYMENT_DECLINE_OVER_MINOR",
            -1,
            "an amount in minor units (cents)",
        )?;
        Ok(Gateway {
            decline_rate: rate,
            seed: env.var("PAYMENT_DECLINE_SEED", defaults.seed, "a whole number")?,
            decline_over_minor: (over >= 0).then_some(over),
            latency: Duration::from_millis(env.var(
                "PAYMENT_LATENCY_MS",
                20,
                "milliseconds per gateway answer",
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::service::Env;

    use super::Config;

    const SECRET: (&str, &str) = ("SERVICE_JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn the_gateway_is_configured_from_the_environment() {
        let config = Config::from_env(&Env::from_pairs([
            SECRET,
            ("PAYMENT_DECLINE_RATE", "0.2"),
            ("PAYMENT_DECLINE_OVER_MINOR", "50000"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.gateway.decline_rate, 0.2);
        assert_eq!(config.gateway.decline_over_minor, Some(50_000));
        for (name, value) in [
            ("PAYMENT_DECLINE_RATE", "1.5"),
            ("PAYMENT_LATENCY_MS", "-3"),
        ] {
            let err = Config::from_env(&Env::from_pairs([SECRET, (name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}

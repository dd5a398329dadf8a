//! The service's settings, from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use a4co_events::service::{Env, StartError};
use a4co_http::auth::Secret;

use crate::Settings;

/// Everything the service reads at start-up beyond the bus (which [`Service::start`](a4co_events::service::Service::start) reads).
#[derive(Clone, Debug)]
pub struct Config {
    /// `INVENTORY_HTTP_ADDR`, default `127.0.0.1:8082`.
    pub http_addr: SocketAddr,
    /// `INVENTORY_LOW_STOCK_THRESHOLD` (default 5) and `INVENTORY_SWEEP_INTERVAL_MS`
    /// (default 5000).
    pub settings: Settings,
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
                "INVENTORY_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8082)),
                "an address to listen on, such as 127.0.0.1:8082",
            )?,
            settings: Settings::from_env(env)?,
            secret: service_kit::jwt_secret(env)?,
        })
    }
}

impl Settings {
    /// The settings as `INVENTORY_LOW_STOCK_THRESHOLD` and `INVENTORY_SWEEP_INTERVAL_MS`
    /// say (see [`Config::settings`]); the marketplace demo reads them too.
    ///
    /// # Errors
    /// A bad value, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, StartError> {
        let defaults = Settings::default();
        let sweep_ms: u64 = env.var(
            "INVENTORY_SWEEP_INTERVAL_MS",
            5000,
            "milliseconds between looks for lapsed reservations",
        )?;
        if sweep_ms == 0 {
            return Err(StartError::invalid_config(
                "INVENTORY_SWEEP_INTERVAL_MS=0: lapsed reservations would never be released; use at least 1",
            ));
        }
        Ok(Settings {
            low_stock_threshold: env.var(
                "INVENTORY_LOW_STOCK_THRESHOLD",
                defaults.low_stock_threshold,
                "a whole number of units",
            )?,
            sweep_interval: Duration::from_millis(sweep_ms),
            ack_wait: defaults.ack_wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::service::Env;

    use super::Config;

    const SECRET: (&str, &str) = ("SERVICE_JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_work_locally_and_bad_values_say_what_to_fix() {
        let config = Config::from_env(&Env::from_pairs([SECRET])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.http_addr.port(), 8082);
        let bad = Config::from_env(&Env::from_pairs([
            SECRET,
            ("INVENTORY_SWEEP_INTERVAL_MS", "0"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("INVENTORY_SWEEP_INTERVAL_MS"), "{bad}");
        let bad = Config::from_env(&Env::from_pairs([
            SECRET,
            ("INVENTORY_HTTP_ADDR", "localhost"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("INVENTORY_HTTP_ADDR=\"localhost\""), "{bad}");
    }
}

//! The service's settings, from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::fulfillment::Settings;
use a4co_events::service::{Env, StartError};
use a4co_http::auth::Secret;

/// Everything the service reads at start-up beyond the bus (which [`Service::start`](a4co_events::service::Service::start) reads).
#[derive(Clone, Debug)]
pub struct Config {
    /// `ORDER_HTTP_ADDR`, default `127.0.0.1:8081`.
    pub http_addr: SocketAddr,
    /// `INVENTORY_URL`, default `http://127.0.0.1:8082`.
    pub inventory_url: String,
    /// `PAYMENT_URL`, default `http://127.0.0.1:8083`.
    pub payment_url: String,
    /// The saga's timings in seconds: `ORDER_RESERVATION_TTL_SECS` (1800),
    /// `ORDER_STOCK_TIMEOUT_SECS` (120), `ORDER_PAYMENT_TIMEOUT_SECS` (300),
    /// `ORDER_LATE_PAYMENT_WINDOW_SECS` (3600), `ORDER_SAGA_RETENTION_SECS` (604800: how
    /// long a finished instance is kept).
    pub saga: Settings,
    /// `SERVICE_JWT_SECRET`, required.
    pub secret: Secret,
}

impl Config {
    /// Reads the settings.
    ///
    /// # Errors
    /// A bad value or a missing secret, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, StartError> {
        let saga = Settings::from_env(env)?;
        let url = |name: &str, default: &str| -> Result<String, StartError> {
            let value = env.optional(name).unwrap_or_else(|| default.to_owned());
            if value.starts_with("http://") || value.starts_with("https://") {
                Ok(value)
            } else {
                Err(StartError::invalid_config(format!(
                    "{name}={value:?} is not an http(s) URL"
                )))
            }
        };
        Ok(Config {
            http_addr: env.var(
                "ORDER_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8081)),
                "an address to listen on, such as 127.0.0.1:8081",
            )?,
            inventory_url: url("INVENTORY_URL", "http://127.0.0.1:8082")?,
            payment_url: url("PAYMENT_URL", "http://127.0.0.1:8083")?,
            saga,
            secret: service_kit::jwt_secret(env)?,
        })
    }
}

impl Settings {
    /// The saga's timings as the `ORDER_*_SECS` variables say (see [`Config::saga`]); the
    /// marketplace demo reads them too.
    ///
    /// # Errors
    /// A bad value, naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, StartError> {
        let defaults = Settings::default();
        let secs = |name: &str, default: Duration| -> Result<Duration, StartError> {
            let value: u64 = env.var(name, default.as_secs(), "a whole number of seconds")?;
            if value == 0 {
                return Err(StartError::invalid_config(format!(
                    "{name}=0: must be at least 1 second"
                )));
            }
            Ok(Duration::from_secs(value))
        };
        let saga = Settings {
            reservation_ttl: secs("ORDER_RESERVATION_TTL_SECS", defaults.reservation_ttl)?,
            stock_timeout: secs("ORDER_STOCK_TIMEOUT_SECS", defaults.stock_timeout)?,
            payment_timeout: secs("ORDER_PAYMENT_TIMEOUT_SECS", defaults.payment_timeout)?,
            late_payment_window: secs(
                "ORDER_LATE_PAYMENT_WINDOW_SECS",
                defaults.late_payment_window,
            )?,
            confirm_timeout: secs("ORDER_CONFIRM_TIMEOUT_SECS", defaults.confirm_timeout)?,
            finished_retention: secs("ORDER_SAGA_RETENTION_SECS", defaults.finished_retention)?,
        };
        if saga.payment_timeout >= saga.reservation_ttl {
            return Err(StartError::invalid_config(
                "ORDER_PAYMENT_TIMEOUT_SECS must be below ORDER_RESERVATION_TTL_SECS: a payment must not outlive the stock held for it",
            ));
        }
        Ok(saga)
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::service::Env;

    use super::Config;

    const SECRET: (&str, &str) = ("SERVICE_JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn bad_timings_and_urls_say_what_to_fix() {
        assert!(Config::from_env(&Env::from_pairs([SECRET])).is_ok());
        for (name, value, says) in [
            (
                "ORDER_PAYMENT_TIMEOUT_SECS",
                "3600",
                "ORDER_RESERVATION_TTL_SECS",
            ),
            ("ORDER_STOCK_TIMEOUT_SECS", "0", "ORDER_STOCK_TIMEOUT_SECS"),
            ("INVENTORY_URL", "inventory:8082", "INVENTORY_URL"),
        ] {
            let err = Config::from_env(&Env::from_pairs([SECRET, (name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{name}: {err}");
        }
    }
}

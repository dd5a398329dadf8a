//! Configuration from the environment: every setting has a default that works on a laptop,
//! and a bad value stops the service at start-up with a message naming the variable, the
//! value and what it expects. Secrets have no default.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use a4co_http::auth::{self, Secret};

/// A bad setting: what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

impl From<a4co_events::service::RecordsError> for ConfigError {
    fn from(error: a4co_events::service::RecordsError) -> Self {
        ConfigError(format!("opening the service's records: {error}"))
    }
}

impl From<a4co_events::service::StartError> for ConfigError {
    fn from(error: a4co_events::service::StartError) -> Self {
        // Its message names the variable to fix.
        ConfigError(error.to_string())
    }
}

impl From<a4co_events::bus::SubscribeError> for ConfigError {
    fn from(error: a4co_events::bus::SubscribeError) -> Self {
        ConfigError(format!("subscribing: {error}"))
    }
}

/// The variables a service reads: the process environment, or given pairs (tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// Exactly these variables.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The NATS settings: `NATS_URL` (comma-separated seeds), `NATS_USER`/`NATS_PASSWORD`,
    /// `NATS_TOKEN`, `NATS_NKEY_SEED_FILE`, `NATS_CREDS_FILE`, `NATS_TLS_CA_FILE`,
    /// `NATS_TLS_CERT_FILE`/`NATS_TLS_KEY_FILE` and `NATS_REPLICAS` (see
    /// [`a4co_events::bus::nats::Config::from_env`]); `None` when `NATS_URL` is unset.
    ///
    /// # Errors
    /// A bad or contradictory value, naming the variable.
    pub fn nats(&self) -> Result<Option<a4co_events::bus::nats::Config>, ConfigError> {
        self.nats_at(None)
    }

    /// As [`Env::nats`], with `url` in place of `NATS_URL` when given (a `--nats` flag).
    ///
    /// # Errors
    /// As [`Env::nats`].
    pub fn nats_at(
        &self,
        url: Option<&str>,
    ) -> Result<Option<a4co_events::bus::nats::Config>, ConfigError> {
        a4co_events::bus::nats::Config::from_vars(|name| match (name, url) {
            ("NATS_URL", Some(url)) => Some(url.to_owned()),
            _ => self.optional(name),
        })
        .map_err(|e| ConfigError(e.to_string()))
    }

    /// The value of `name`, when set and not blank.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// `name` parsed as `T`, or `default` when unset.
    ///
    /// # Errors
    /// The value does not parse: the message names the variable, the value and `expected`.
    pub fn var<T>(&self, name: &str, default: T, expected: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| {
                ConfigError(format!(
                    "{name}={raw:?} is not valid: expected {expected} ({e}); unset it for the default"
                ))
            }),
        }
    }

    /// The service-to-service JWT secret from `SERVICE_JWT_SECRET`. There is no default:
    /// every service of a deployment must share one secret of at least 32 bytes.
    ///
    /// # Errors
    /// Missing or too short, with how to make one.
    pub fn jwt_secret(&self) -> Result<Secret, ConfigError> {
        let value = self.optional(auth::SECRET_ENV).ok_or_else(|| {
            ConfigError(format!(
                "{} is not set: every service needs the same secret of at least {} bytes to sign and check service tokens (e.g. `export {}=$(openssl rand -hex 32)`)",
                auth::SECRET_ENV,
                auth::MIN_SECRET_BYTES,
                auth::SECRET_ENV
            ))
        })?;
        Secret::new(value).map_err(|e| ConfigError(format!("{}: {e}", auth::SECRET_ENV)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::Env;

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let env = Env::from_pairs([("PORT", "  ")]);
        let addr: SocketAddr = env
            .var(
                "ADDR",
                "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
                "an address",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(addr.port(), 1);
        assert_eq!(env.var("PORT", 7_u16, "a port").ok(), Some(7));
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_expects() {
        let env = Env::from_pairs([("INVENTORY_LOW_STOCK", "lots")]);
        let err = env
            .var("INVENTORY_LOW_STOCK", 5_u32, "a whole number of units")
            .unwrap_err()
            .to_string();
        assert!(err.contains("INVENTORY_LOW_STOCK=\"lots\""), "{err}");
        assert!(err.contains("a whole number of units"), "{err}");
    }

    #[test]
    fn the_jwt_secret_has_no_fallback() {
        let missing = Env::default().jwt_secret().unwrap_err().to_string();
        assert!(
            missing.contains("SERVICE_JWT_SECRET is not set"),
            "{missing}"
        );
        let short = Env::from_pairs([("SERVICE_JWT_SECRET", "short")])
            .jwt_secret()
            .unwrap_err()
            .to_string();
        assert!(short.contains("32"), "{short}");
        assert!(
            Env::from_pairs([("SERVICE_JWT_SECRET", "k".repeat(32))])
                .jwt_secret()
                .is_ok()
        );
    }
}

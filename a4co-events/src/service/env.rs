//! Settings from the environment: every setting has a default that works on a laptop,
//! and a bad value stops the service at start-up with a message naming the variable, the
//! value and what it expects. Secrets have no default.
//!
//! ```
//! use a4co_events::service::Env;
//!
//! let env = Env::from_pairs([("INVENTORY_LOW_STOCK", "5")]);
//! assert_eq!(env.var("INVENTORY_LOW_STOCK", 10_u32, "a whole number of units")?, 5);
//! let err = Env::from_pairs([("INVENTORY_LOW_STOCK", "lots")])
//!     .var("INVENTORY_LOW_STOCK", 10_u32, "a whole number of units")
//!     .unwrap_err();
//! assert!(err.to_string().contains("INVENTORY_LOW_STOCK=\"lots\""));
//! # Ok::<(), a4co_events::service::StartError>(())
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use super::{StartError, StartErrorKind};

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
    /// [`nats::Config::from_env`](crate::bus::nats::Config::from_env)); `None` when `NATS_URL` is unset.
    ///
    /// # Errors
    /// A bad or contradictory value, naming the variable.
    pub fn nats(&self) -> Result<Option<crate::bus::nats::Config>, StartError> {
        self.nats_at(None)
    }

    /// As [`Env::nats`], with `url` in place of `NATS_URL` when given (a `--nats` flag).
    ///
    /// # Errors
    /// As [`Env::nats`].
    pub fn nats_at(
        &self,
        url: Option<&str>,
    ) -> Result<Option<crate::bus::nats::Config>, StartError> {
        crate::bus::nats::Config::from_vars(|name| match (name, url) {
            ("NATS_URL", Some(url)) => Some(url.to_owned()),
            _ => self.optional(name),
        })
        .map_err(|e| StartError::new(StartErrorKind::InvalidConfig, "NATS").with_source(e))
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
    pub fn var<T>(&self, name: &str, default: T, expected: &str) -> Result<T, StartError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| {
                StartError::invalid_config(format!(
                    "{name}={raw:?} is not valid: expected {expected} ({e}); unset it for the default"
                ))
            }),
        }
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
}

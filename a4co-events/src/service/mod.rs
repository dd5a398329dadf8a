//! What a service needs to run on the bus, beyond publishing and handling: the memory/NATS
//! switch read from the environment ([`AnyBus`], feature `nats`), its own state as records
//! with compare-and-swap ([`Records`]), background work stopped together ([`Workers`]), and
//! the signal to stop on ([`shutdown_signal`]).
//!
//! ```
//! use a4co_events::service::{Records, Workers};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // State with compare-and-swap: in memory here, a JetStream KV bucket on NATS.
//! let stock = Records::memory();
//! let left = stock
//!     .modify("prod-1", |units: Option<&u32>| {
//!         let left = units.copied().unwrap_or(10) - 3;
//!         (Some(left), left)
//!     })
//!     .await?;
//! assert_eq!(left, 7);
//! assert_eq!(stock.get::<u32>("prod-1").await?.map(|r| r.value), Some(7));
//!
//! let mut workers = Workers::new();
//! workers.every(std::time::Duration::from_secs(60), || async { /* sweep */ });
//! workers.shutdown().await; // waits for a sweep under way
//! # Ok(())
//! # }
//! ```

use std::fmt;

#[cfg(feature = "nats")]
mod any_bus;
#[cfg(feature = "server")]
mod env;
#[cfg(feature = "server")]
mod ops;
mod records;
#[cfg(feature = "server")]
mod runtime;
mod workers;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use any_bus::AnyBus;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use env::Env;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use ops::{LogFormat, Otlp, Telemetry, init, request_span, routes, shutdown};
pub use records::{Records, RecordsError, Versioned};
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use runtime::Service;
pub use workers::Workers;

use crate::bus::Error;

/// Why a service could not start: see [`StartErrorKind`].
pub type StartError = Error<StartErrorKind>;

/// Why a service could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartErrorKind {
    /// A setting is wrong; the message names the variable and what it expects.
    InvalidConfig,
    /// The broker cannot be reached, is unsuitable, or its streams cannot be created.
    Unavailable,
}

impl fmt::Display for StartErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StartErrorKind::InvalidConfig => "invalid setting",
            StartErrorKind::Unavailable => "unavailable",
        })
    }
}

impl StartError {
    /// [`StartErrorKind::InvalidConfig`]: `message` names the setting and what to set.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        StartError::new(StartErrorKind::InvalidConfig, message)
    }

    /// [`StartErrorKind::Unavailable`]: `message` names what could not be reached.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StartError::new(StartErrorKind::Unavailable, message)
    }
}

/// Subscribing at start-up failed: an invalid subscription is a setting to fix, anything
/// else a broker that is not there.
impl From<crate::bus::SubscribeError> for StartError {
    fn from(error: crate::bus::SubscribeError) -> Self {
        let kind = match error.kind() {
            crate::bus::SubscribeErrorKind::InvalidConfig => StartErrorKind::InvalidConfig,
            _ => StartErrorKind::Unavailable,
        };
        StartError::new(kind, "subscribing").with_source(error)
    }
}

/// The service's records could not be read or opened at start-up.
impl From<RecordsError> for StartError {
    fn from(error: RecordsError) -> Self {
        StartError::unavailable("the service's records").with_source(error)
    }
}

/// Completes when the process is asked to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what
/// container runtimes send). If a signal cannot be listened to, that one is ignored and
/// the other still counts.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    futures::future::select(std::pin::pin!(interrupt), std::pin::pin!(terminate)).await;
}

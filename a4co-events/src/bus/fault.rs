//! Why the bus gave up on a message: the fault a dead letter records, and the verdict an
//! attempt history keeps while its dead letter cannot be written. Below both the transport
//! contract (which stores attempts) and the dead-letter records; re-exported as
//! `bus::dlq::FaultKind`.

use serde::{Deserialize, Serialize};

/// Why a message was given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// It could not be decoded (malformed, unknown type or version, schema violation, ...).
    Undecodable,
    /// Its handler failed with a permanent error.
    Permanent,
    /// Its handler failed on every allowed delivery.
    RetriesExhausted,
    /// It was delivered many times without its handler ever returning (the handler
    /// crashes or hangs the process), or its failures could not be recorded.
    NoOutcome,
}

impl FaultKind {
    /// `undecodable`, `permanent`, `retries_exhausted` or `no_outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Undecodable => "undecodable",
            FaultKind::Permanent => "permanent",
            FaultKind::RetriesExhausted => "retries_exhausted",
            FaultKind::NoOutcome => "no_outcome",
        }
    }
}

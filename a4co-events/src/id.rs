//! Message identifiers: the event id every envelope carries and the broker deduplicates on.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message's unique id, and the broker's dedup key (`Nats-Msg-Id`).
///
/// Fresh ids are UUIDv7 (time-ordered within a process; order by stream sequence across
/// processes). A message a saga sends gets a deterministic id from the saga id and the step
/// ([`EventId::deterministic`]), so a re-send after a crash carries the same id and the broker
/// drops the duplicate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct EventId(Uuid);

/// The UUIDv5 namespace of deterministic ids (a fixed random UUID, never change it).
const DETERMINISTIC_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_1c5e_8a4b_4c0f_9d7e_3b2a_a4c0_e1d5);

impl EventId {
    /// A fresh time-ordered id (UUIDv7).
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The same id for the same `(scope, step)`, every time and in every process (UUIDv5).
    /// Sagas use their saga id and step name, so a re-sent command is deduplicated.
    pub fn deterministic(scope: &str, step: &str) -> Self {
        let mut name = Vec::with_capacity(scope.len() + step.len() + 1);
        name.extend_from_slice(scope.as_bytes());
        name.push(0); // a separator no text contains: ("a", "bc") differs from ("ab", "c")
        name.extend_from_slice(step.as_bytes());
        EventId(Uuid::new_v5(&DETERMINISTIC_NAMESPACE, &name))
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The id as a UUID (v4 when random, v5 when [`EventId::deterministic`]).
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

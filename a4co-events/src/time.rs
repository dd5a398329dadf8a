//! Writing times: RFC 3339 in UTC (`Z`, 0/3/6/9 fraction digits), byte for byte what
//! chrono's own `Serialize` writes, at a fraction of its cost. chrono's impl goes through
//! `collect_str`, which serde_json escapes one formatted piece (often one character) at a
//! time; in a typical event that cost more than the rest of the envelope together. Catalog
//! payloads use these with `#[serde(serialize_with = ...)]`; reading stays chrono's.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// Serializes a time as one RFC 3339 string.
///
/// # Errors
/// The serializer's.
pub(crate) fn utc<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// [`utc`] for an optional time (`None` as `null`; fields skip it when absent).
///
/// # Errors
/// The serializer's.
#[allow(clippy::ref_option)]
pub(crate) fn opt_utc<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => utc(t, serializer),
        None => serializer.serialize_none(),
    }
}

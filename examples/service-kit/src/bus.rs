//! Replies the reference services publish to the messages they handle.

use a4co_events::{Envelope, Payload};

/// The answer to `cause` (a command, or an event a service reacts to): caused by it, with
/// an id derived from its id and `step`, so handling a redelivery again publishes the same
/// id and the broker stores the answer once.
pub fn reply_to<P, T: Payload>(
    cause: &Envelope<P>,
    source: &str,
    aggregate: impl Into<String>,
    data: T,
    step: &str,
) -> Envelope<T> {
    Envelope::caused_by(cause, source, aggregate, data).with_event_id(
        a4co_events::EventId::deterministic(&cause.event_id.to_string(), step),
    )
}

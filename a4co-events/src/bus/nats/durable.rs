//! Durable consumers on JetStream: created or bound with the spec's settings, never deleted
//! behind another instance's back, re-created only when asked.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::{self, stream};

use crate::bus::config::{ConsumerSpec, PIN_GROUP};
use crate::bus::error::{ConsumeError, ConsumeErrorKind, SubscribeError, SubscribeErrorKind};

/// The consumer metadata key holding [`AckState::created_after`](crate::bus::AckState).
const CREATED_AFTER: &str = "a4co_created_after";

/// The consumer's [`AckState::created_after`](crate::bus::AckState): 0 when it was made
/// without one (fresh, or by an older SDK).
pub(super) fn created_after(info: &consumer::Info) -> u64 {
    info.config
        .metadata
        .get(CREATED_AFTER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Creates `spec`'s consumer, or binds the one that exists: its start is kept (another
/// instance may have re-created it from elsewhere) and the rest updated to `spec`.
///
/// # Errors
/// [`SubscribeErrorKind::Conflict`] when it exists with the other sharing (pinned or not),
/// which JetStream cannot change in place; the consumer is left as it is.
pub(super) async fn create_or_bind(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<consumer::PullConsumer, SubscribeError> {
    let stream = open_stream(js, &spec.stream).await?;
    let mut config = config_for(&stream, spec);
    // Strict: an existing consumer with other settings is an error here, not updated (a
    // plain create would change its sharing under the instances using it).
    let create = match stream.create_consumer_strict(config.clone()).await {
        Ok(handle) => return Ok(handle),
        Err(e) => e,
    };
    let existing = stream.consumer_info(&spec.durable).await.map_err(|_| {
        SubscribeError::new(
            SubscribeErrorKind::Other,
            format!("creating consumer {}", spec.durable),
        )
        .with_source(create)
    })?;
    if existing.config.priority_policy != config.priority_policy {
        return Err(conflict(spec, existing.config.priority_policy));
    }
    config.deliver_policy = existing.config.deliver_policy;
    config.metadata = existing
        .config
        .metadata
        .get(CREATED_AFTER)
        .map(|v| HashMap::from([(CREATED_AFTER.to_owned(), v.clone())]))
        .unwrap_or_default();
    stream.update_consumer(config).await.map_err(|e| {
        SubscribeError::new(
            SubscribeErrorKind::Other,
            format!("updating consumer {}", spec.durable),
        )
        .with_source(e)
    })
}

/// Deletes `spec`'s consumer, if it exists, and makes it anew with `spec`'s settings from
/// just above its ack floor (from `spec.start_sequence` when there was none).
pub(super) async fn recreate(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<(), SubscribeError> {
    let stream = open_stream(js, &spec.stream).await?;
    let mut spec = spec.clone();
    spec.handled_before = true;
    if let Ok(existing) = stream.consumer_info(&spec.durable).await {
        spec.start_sequence = Some(existing.ack_floor.stream_sequence + 1);
        stream.delete_consumer(&spec.durable).await.map_err(|e| {
            SubscribeError::new(
                SubscribeErrorKind::Other,
                format!("deleting consumer {}", spec.durable),
            )
            .with_source(e)
        })?;
    }
    tracing::warn!(consumer = %spec.durable, start_sequence = ?spec.start_sequence, pinned = spec.pinned, "re-creating the consumer");
    create_or_bind(js, &spec).await.map(drop)
}

/// Whether `stream` has the consumer `durable`: no when the stream or the consumer is
/// missing.
pub(super) async fn exists(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<bool, ConsumeError> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
    let cannot_tell = |e: Box<dyn std::error::Error + Send + Sync>| {
        ConsumeError::new(
            ConsumeErrorKind::Other,
            format!("looking up consumer {durable} on {stream}"),
        )
        .with_source(e)
    };
    let handle = match js.get_stream(stream).await {
        Ok(handle) => handle,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(cannot_tell(e.into())),
    };
    match handle.consumer_info(durable).await {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), Kind::NotFound | Kind::StreamNotFound) => Ok(false),
        Err(e) => Err(cannot_tell(e.into())),
    }
}

async fn open_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::Stream, SubscribeError> {
    js.get_stream(name).await.map_err(|e| {
        SubscribeError::new(
            SubscribeErrorKind::NoStream,
            format!("stream {name} is not available: provision the streams first"),
        )
        .with_source(e)
    })
}

/// The JetStream settings for `spec` on `stream` (as its cached info last saw it).
fn config_for(stream: &stream::Stream, spec: &ConsumerSpec) -> pull::Config {
    let last = stream.cached_info().state.last_sequence;
    let deliver_policy = match spec.start_sequence {
        // A start past the stream's end means the stream was made anew: all of it.
        Some(start_sequence) if start_sequence <= last.saturating_add(1) => {
            DeliverPolicy::ByStartSequence { start_sequence }
        }
        _ => DeliverPolicy::All,
    };
    let (priority_policy, priority_groups) = if spec.pinned {
        (PriorityPolicy::PinnedClient, vec![PIN_GROUP.to_owned()])
    } else {
        (PriorityPolicy::None, Vec::new())
    };
    let metadata = if spec.handled_before {
        HashMap::from([(CREATED_AFTER.to_owned(), last.to_string())])
    } else {
        HashMap::new()
    };
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        priority_policy,
        priority_groups,
        // A pinned instance that sends no pull request for this long is taken over.
        priority_timeout: if spec.pinned {
            spec.pin_timeout()
        } else {
            Duration::ZERO
        },
        filter_subjects: spec.filter_subjects.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy,
        ack_wait: spec.ack_wait,
        // -1: no limit; the bus counts attempts and dead-letters by its own count.
        max_deliver: spec.max_deliver.map_or(-1, i64::from),
        max_ack_pending: i64::from(spec.max_ack_pending),
        metadata,
        ..Default::default()
    }
}

fn conflict(spec: &ConsumerSpec, existing: PriorityPolicy) -> SubscribeError {
    spec.conflict(existing == PriorityPolicy::PinnedClient)
}

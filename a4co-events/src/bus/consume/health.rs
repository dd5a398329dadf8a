//! Whether a subscription's consumers are running, for a `/health` route.

use std::sync::Arc;

/// Whether a subscription's consumers are running: a cheap clone to hand to a health check.
#[derive(Clone, Debug)]
pub struct SubscriptionHealth {
    label: Arc<str>,
    /// Per consumer: its stream, and why it is not running (and since when), if it is not.
    consumers: Arc<std::sync::Mutex<Vec<ConsumerHealth>>>,
}

#[derive(Debug)]
struct ConsumerHealth {
    stream: String,
    /// Why it is not running, and since when.
    down: Option<(String, std::time::Instant)>,
}

impl SubscriptionHealth {
    pub(super) fn new(label: &str, streams: impl Iterator<Item = String>) -> Self {
        SubscriptionHealth {
            label: Arc::from(label),
            consumers: Arc::new(std::sync::Mutex::new(
                streams
                    .map(|stream| ConsumerHealth { stream, down: None })
                    .collect(),
            )),
        }
    }

    pub(super) fn set(&self, consumer: usize, down: Option<String>) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ConsumerHealth { down: state, .. }) = consumers.get_mut(consumer) {
            *state = match (down, state.take()) {
                (None, _) => None,
                // The first reason and its time stand until it runs again.
                (Some(_), Some(kept)) => Some(kept),
                (Some(reason), None) => Some((reason, std::time::Instant::now())),
            };
        }
    }

    /// `<service>/<subscription>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether every consumer of the subscription is taking messages (a consumer being
    /// re-created, or stopped, is not).
    pub fn is_running(&self) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .all(|c| c.down.is_none())
    }

    /// What is not running, in one line naming the subscription, the stream and why
    /// (`inventory-service/orders on ORDERS: not running for 3 s: the consumer was
    /// deleted; re-creating it`); `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let problems: Vec<String> = consumers
            .iter()
            .filter_map(|ConsumerHealth { stream, down }| {
                let (reason, since) = down.as_ref()?;
                Some(format!(
                    "{} on {stream}: not running for {} s: {reason}",
                    self.label,
                    since.elapsed().as_secs()
                ))
            })
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

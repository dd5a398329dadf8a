//! What a started service runs in the background (its subscriptions, periodic tasks, a saga
//! runtime), stopped together: gracefully, draining work in flight, or at once, as a crash.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::bus::{SubscriptionHandle, SubscriptionHealth};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Stopper = Box<dyn FnOnce(bool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A service's background work.
#[derive(Default)]
pub struct Workers {
    subscriptions: Vec<SubscriptionHandle>,
    /// The health of what runs its own subscription (a saga runtime), reported with ours.
    watched: Vec<SubscriptionHealth>,
    tasks: Vec<JoinHandle<()>>,
    stoppers: Vec<Stopper>,
    stop: Option<watch::Sender<bool>>,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("subscriptions", &self.subscriptions.len())
            .field("tasks", &self.tasks.len())
            .field("others", &self.stoppers.len())
            .finish()
    }
}

impl Workers {
    /// Nothing running yet.
    pub fn new() -> Self {
        Workers::default()
    }

    /// Adds a subscription.
    pub fn subscription(&mut self, handle: SubscriptionHandle) {
        self.subscriptions.push(handle);
    }

    /// Reports `health` with the subscriptions': for what runs a subscription of its own
    /// and is added with [`Workers::other`] (a saga runtime's `Running::health`), so
    /// `/health` sees it too.
    pub fn watch(&mut self, health: SubscriptionHealth) {
        self.watched.push(health);
    }

    /// The health of every subscription added or watched so far, to check from a
    /// `/health` route: a subscription whose consumer is being re-created (deleted on the
    /// broker, its stream gone) reports what is wrong until it runs again.
    pub fn health(&self) -> Vec<SubscriptionHealth> {
        self.subscriptions
            .iter()
            .map(SubscriptionHandle::health)
            .chain(self.watched.iter().cloned())
            .collect()
    }

    /// Runs `work` every `period` until the workers stop (a stop waits for a run under way).
    pub fn every<F, Fut>(&mut self, period: Duration, work: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let mut stopped = self
            .stop
            .get_or_insert_with(|| watch::channel(false).0)
            .subscribe();
        self.tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The stop first: an overdue tick is always ready and would starve it.
                let stop = std::pin::pin!(stopped.changed());
                let tick = std::pin::pin!(ticks.tick());
                match futures::future::select(stop, tick).await {
                    futures::future::Either::Left(_) => return,
                    futures::future::Either::Right(_) => work().await,
                }
            }
        }));
    }

    /// Adds something else with its own stop: `stop(true)` stops it gracefully,
    /// `stop(false)` at once.
    pub fn other<F, Fut>(&mut self, stop: F)
    where
        F: FnOnce(bool) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.stoppers
            .push(Box::new(move |graceful| Box::pin(stop(graceful))));
    }

    /// Stops taking new work, lets the work under way finish, and returns when all did.
    pub async fn shutdown(self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
        for task in self.tasks {
            let _ = task.await;
        }
        for stopper in self.stoppers {
            stopper(true).await;
        }
        for handle in self.subscriptions {
            handle.shutdown().await;
        }
    }

    /// Stops everything at once, as a crash would (work under way is abandoned and will
    /// be redelivered).
    pub async fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
        for stopper in self.stoppers {
            stopper(false).await;
        }
        for handle in self.subscriptions {
            handle.abort();
        }
    }
}

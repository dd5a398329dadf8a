//! Routed typed handlers: one durable consumer, several message types, each with its own
//! handler of `Envelope<M>`.
//!
//! [`Handlers::with_state`] starts a route table; each [`Handlers::on`] adds a handler for
//! one message type `M` and `M`'s subject to the subscription it is subscribed with, so a
//! subscription takes exactly what it has handlers for. [`Handlers::layer`] wraps every
//! handler in cross-cutting work (timing, an audit line, a tenant check), as axum's
//! `middleware::from_fn` wraps routes.
//!
//! ```
//! use a4co_events::bus::{DeliveryInfo, HandlerError, Handlers, MemoryBus};
//! use a4co_events::bus::{Publisher, Subscriber, Subscription};
//! use a4co_events::catalog::inventory::{ReleaseStock, ReserveStock};
//! use a4co_events::{Envelope, Message};
//! use tokio::sync::mpsc::UnboundedSender;
//!
//! async fn reserve(
//!     log: UnboundedSender<String>,
//!     command: Envelope<ReserveStock>,
//!     _: DeliveryInfo,
//! ) -> Result<(), HandlerError> {
//!     let line = format!("reserve {} for {}", command.data.quantity, command.data.order_id);
//!     log.send(line).map_err(HandlerError::permanent)
//! }
//!
//! async fn release(
//!     log: UnboundedSender<String>,
//!     command: Envelope<ReleaseStock>,
//!     _: DeliveryInfo,
//! ) -> Result<(), HandlerError> {
//!     log.send(format!("release {}", command.data.reservation_id)).map_err(HandlerError::permanent)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = MemoryBus::provisioned().await?;
//! let (log, mut lines) = tokio::sync::mpsc::unbounded_channel();
//! let handlers = Handlers::with_state(log).on::<ReserveStock>(reserve).on::<ReleaseStock>(release);
//! let handle = bus.subscribe(Subscription::new("inventory-service", "commands"), handlers).await?;
//! bus.publish(&Envelope::new("order-service", "prod-1", ReserveStock::example())).await?;
//! assert!(lines.recv().await.unwrap().starts_with("reserve "));
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::{BoxFuture, Either};

use super::{DeliveryInfo, Handler, HandlerError};
use crate::catalog::AnyMessage;
use crate::envelope::Envelope;
use crate::message::Message;

/// A handler of one message type `M` with a state `S`: any
/// `Fn(S, Envelope<M>, DeliveryInfo) -> impl Future<Output = Result<(), HandlerError>>`,
/// typically a named `async fn`. The state is cloned for every call (make it an `Arc`, a
/// client, a channel: something cheap to clone).
///
/// A closure is one too; give its parameters their types
/// (`|state: Inventory, command: Envelope<ReserveStock>, _: DeliveryInfo| async move { .. }`),
/// since they are not inferred through this trait.
pub trait TypedHandler<S, M>: Send + Sync + 'static {
    /// What a call returns.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles one message; `Ok` acknowledges it (see [`HandlerError`] for failures).
    fn call(&self, state: S, message: Envelope<M>, delivery: DeliveryInfo) -> Self::Future;
}

impl<S, M, F, Fut> TypedHandler<S, M> for F
where
    F: Fn(S, Envelope<M>, DeliveryInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, state: S, message: Envelope<M>, delivery: DeliveryInfo) -> Fut {
        self(state, message, delivery)
    }
}

/// A message type a route table has a handler for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Its type name (`inventory.cmd.reserve_stock`).
    pub message_type: &'static str,
    /// The subject it is published on, which the subscription takes.
    pub subject: &'static str,
}

/// A route table: what [`Handlers`] is built of. Implemented by the tables
/// [`Handlers::with_state`], [`Handlers::on`] and [`Handlers::layer`] return; there is
/// nothing to implement by hand.
pub trait Routes<S>: Send + Sync + 'static {
    /// Adds the types the table has handlers for to `out`, in the order they were added.
    fn describe(&self, out: &mut Vec<Route>);

    /// The handling of `message` by the handler of its type, or the message back when the
    /// table has none.
    ///
    /// # Errors
    /// The message and its delivery, unhandled, when no handler takes its type.
    #[allow(clippy::result_large_err)] // the message given back, on a path taken by mistakes only
    fn route(
        &self,
        state: &S,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<impl Future<Output = Result<(), HandlerError>> + Send, Unrouted>;
}

/// A message no route took, given back with its delivery.
pub type Unrouted = (Envelope<AnyMessage>, DeliveryInfo);

/// The empty table [`Handlers::with_state`] starts from.
struct Empty;

impl<S> Routes<S> for Empty {
    fn describe(&self, _: &mut Vec<Route>) {}

    fn route(
        &self,
        _: &S,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<impl Future<Output = Result<(), HandlerError>> + Send, Unrouted> {
        Err::<std::future::Ready<_>, _>((message, delivery))
    }
}

/// `M`'s handler `H`, tried before the routes added earlier.
struct OneType<M, H, R> {
    handler: H,
    earlier: R,
    message: PhantomData<fn() -> M>,
}

impl<S, M, H, R> Routes<S> for OneType<M, H, R>
where
    S: Clone + Send + Sync + 'static,
    M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    H: TypedHandler<S, M>,
    R: Routes<S>,
{
    fn describe(&self, out: &mut Vec<Route>) {
        self.earlier.describe(out);
        out.push(Route {
            message_type: M::TYPE,
            subject: M::SUBJECT,
        });
    }

    fn route(
        &self,
        state: &S,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<impl Future<Output = Result<(), HandlerError>> + Send, Unrouted> {
        match message.downcast::<M>() {
            Ok(typed) => Ok(Either::Left(self.handler.call(
                state.clone(),
                typed,
                delivery,
            ))),
            Err(other) => self
                .earlier
                .route(state, other, delivery)
                .map(Either::Right),
        }
    }
}

/// The rest of a handling, handed to a [`Handlers::layer`]: run it (once) to handle the
/// message, or return without running it to settle the message with the layer's own
/// result.
pub struct Next {
    run: NextFn,
}

type NextFn = Box<
    dyn FnOnce(Envelope<AnyMessage>, DeliveryInfo) -> BoxFuture<'static, Result<(), HandlerError>>
        + Send,
>;

impl Next {
    /// Hands `message` to the layers and the handler inside this one.
    ///
    /// # Errors
    /// The handler's error, or a permanent one when no handler takes the message's type.
    pub async fn run(
        self,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<(), HandlerError> {
        (self.run)(message, delivery).await
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}

/// A layer `L` around the routes `R`.
struct Layered<L, R> {
    layer: L,
    inner: Arc<R>,
}

impl<S, L, Fut, R> Routes<S> for Layered<L, R>
where
    S: Clone + Send + Sync + 'static,
    L: Fn(Envelope<AnyMessage>, DeliveryInfo, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    R: Routes<S>,
{
    fn describe(&self, out: &mut Vec<Route>) {
        self.inner.describe(out);
    }

    fn route(
        &self,
        state: &S,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> Result<impl Future<Output = Result<(), HandlerError>> + Send, Unrouted> {
        let (inner, state) = (Arc::clone(&self.inner), state.clone());
        let next = Next {
            run: Box::new(move |message, delivery| {
                Box::pin(async move {
                    match inner.route(&state, message, delivery) {
                        Ok(handling) => handling.await,
                        Err((message, _)) => Err(unrouted(&*inner, &message)),
                    }
                })
            }),
        };
        Ok::<_, Unrouted>((self.layer)(message, delivery, next))
    }
}

/// The permanent error for a message no route takes: a body of one type on another's
/// subject, or a subject the subscription added beyond its handlers' (the same bytes fail
/// again, so it is no use retrying).
fn unrouted<S>(routes: &impl Routes<S>, message: &Envelope<AnyMessage>) -> HandlerError {
    let mut handled = Vec::new();
    routes.describe(&mut handled);
    let handled: Vec<&str> = handled.iter().map(|r| r.message_type).collect();
    HandlerError::permanent(format!(
        "no handler for {} v{} (this subscription handles {})",
        message.event_type(),
        message.event_version(),
        handled.join(", ")
    ))
}

/// A subscription's handlers, one per message type, with the state they share: a
/// [`Handler`] to give [`Subscriber::subscribe`](super::Subscriber::subscribe), which adds
/// each type's subject to the subscription. See the [module docs](self).
///
/// A message of a type with no handler (a body of one type sent on another's subject, or
/// a subject added with [`Subscription::subject`](super::Subscription::subject) beyond the
/// handlers') is a permanent failure: it goes to the dead-letter stream saying which types
/// the subscription handles.
#[must_use = "handlers do nothing until subscribed"]
pub struct Handlers<S, R> {
    state: S,
    routes: R,
}

impl<S: Clone + Send + Sync + 'static> Handlers<S, ()> {
    /// An empty table whose handlers get a clone of `state` with every message.
    pub fn with_state(state: S) -> Handlers<S, impl Routes<S>> {
        Handlers {
            state,
            routes: Empty,
        }
    }
}

impl<S: Clone + Send + Sync + 'static, R: Routes<S>> Handlers<S, R> {
    /// Adds `handler` for messages of type `M` (older versions upcast), and `M`'s subject
    /// to the subscription.
    pub fn on<M>(self, handler: impl TypedHandler<S, M>) -> Handlers<S, impl Routes<S>>
    where
        M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
    {
        Handlers {
            state: self.state,
            routes: OneType {
                handler,
                earlier: self.routes,
                message: PhantomData,
            },
        }
    }

    /// Wraps every handler added so far in `layer`, which gets each message with its
    /// delivery and the [`Next`] to run; what it returns settles the message. A later
    /// layer wraps the earlier ones. Add layers after the handlers.
    ///
    /// ```
    /// use a4co_events::bus::{DeliveryInfo, HandlerError, Handlers, Next};
    /// use a4co_events::catalog::order::OrderConfirmed;
    /// use a4co_events::{AnyMessage, Envelope};
    ///
    /// async fn confirmed(_: (), _: Envelope<OrderConfirmed>, _: DeliveryInfo) -> Result<(), HandlerError> {
    ///     Ok(())
    /// }
    ///
    /// let handlers = Handlers::with_state(()).on::<OrderConfirmed>(confirmed).layer(
    ///     |message: Envelope<AnyMessage>, delivery: DeliveryInfo, next: Next| async move {
    ///         let (kind, started) = (message.event_type(), std::time::Instant::now());
    ///         let result = next.run(message, delivery).await;
    ///         tracing::info!(kind, took = ?started.elapsed(), ok = result.is_ok(), "handled");
    ///         result
    ///     },
    /// );
    /// # drop(handlers);
    /// ```
    pub fn layer<L, Fut>(self, layer: L) -> Handlers<S, impl Routes<S>>
    where
        L: Fn(Envelope<AnyMessage>, DeliveryInfo, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        Handlers {
            state: self.state,
            routes: Layered {
                layer,
                inner: Arc::new(self.routes),
            },
        }
    }
}

impl<S: Clone + Send + Sync + 'static, R: Routes<S>> Handler for Handlers<S, R> {
    fn handle(
        &self,
        message: Envelope<AnyMessage>,
        delivery: DeliveryInfo,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let handling = self
            .routes
            .route(&self.state, message, delivery)
            .map_err(|(message, _)| unrouted(&self.routes, &message));
        async move { handling?.await }
    }

    fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        self.routes.describe(&mut out);
        out
    }
}

impl<S, R> fmt::Debug for Handlers<S, R>
where
    R: Routes<S>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut routes = Vec::new();
        self.routes.describe(&mut routes);
        f.debug_struct("Handlers")
            .field(
                "routes",
                &routes.iter().map(|r| r.message_type).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::inventory::{ReleaseStock, ReserveStock};
    use crate::catalog::order::OrderConfirmed;
    use chrono::Utc;
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<String>>>;

    async fn reserve(
        log: Log,
        m: Envelope<ReserveStock>,
        _: DeliveryInfo,
    ) -> Result<(), HandlerError> {
        log.lock()
            .unwrap()
            .push(format!("reserve {}", m.data.quantity));
        Ok(())
    }

    async fn release(
        log: Log,
        m: Envelope<ReleaseStock>,
        _: DeliveryInfo,
    ) -> Result<(), HandlerError> {
        log.lock()
            .unwrap()
            .push(format!("release {}", m.data.order_id));
        Err(HandlerError::retryable("later"))
    }

    fn delivery() -> DeliveryInfo {
        DeliveryInfo {
            stream: "INVENTORY".into(),
            consumer: "inventory-service_commands".into(),
            stream_sequence: 1,
            attempt: 1,
            delivered: 1,
            published: Utc::now(),
        }
    }

    fn any<M: Message + Into<AnyMessage>>(data: M) -> Envelope<AnyMessage> {
        Envelope::new("order-service", "prod-1", data).map(Into::into)
    }

    #[tokio::test]
    async fn each_type_reaches_its_own_handler_and_nothing_else_is_taken() {
        let log = Log::default();
        let handlers = Handlers::with_state(log.clone())
            .on::<ReserveStock>(reserve)
            .on::<ReleaseStock>(release);
        assert_eq!(
            handlers
                .routes()
                .iter()
                .map(|r| r.subject)
                .collect::<Vec<_>>(),
            [ReserveStock::SUBJECT, ReleaseStock::SUBJECT]
        );
        handlers
            .handle(any(ReserveStock::example()), delivery())
            .await
            .unwrap();
        let released = handlers
            .handle(any(ReleaseStock::example()), delivery())
            .await
            .unwrap_err();
        assert!(!released.is_permanent(), "{released}");
        let stray = handlers
            .handle(any(OrderConfirmed::example()), delivery())
            .await
            .unwrap_err();
        assert!(stray.is_permanent());
        assert!(
            stray.to_string().contains(&format!(
                "no handler for order.confirmed v{} (this subscription handles inventory.cmd.reserve_stock, inventory.cmd.release_stock)",
                OrderConfirmed::VERSION
            )),
            "{stray}"
        );
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log[0].starts_with("reserve ") && log[1].starts_with("release "));
    }

    #[tokio::test]
    async fn layers_wrap_every_handler_outermost_last_and_may_settle_alone() {
        let log = Log::default();
        let (outer, inner) = (log.clone(), log.clone());
        let handlers = Handlers::with_state(log.clone())
            .on::<ReserveStock>(reserve)
            .layer(move |m: Envelope<AnyMessage>, d, next: Next| {
                let log = inner.clone();
                async move {
                    log.lock().unwrap().push("inner".into());
                    if m.aggregate_id == "refused" {
                        return Err(HandlerError::permanent("refused by the layer"));
                    }
                    next.run(m, d).await
                }
            })
            .layer(move |m: Envelope<AnyMessage>, d, next: Next| {
                let log = outer.clone();
                async move {
                    log.lock().unwrap().push("outer".into());
                    next.run(m, d).await
                }
            });
        handlers
            .handle(any(ReserveStock::example()), delivery())
            .await
            .unwrap();
        let mut refused = any(ReserveStock::example());
        refused.aggregate_id = "refused".into();
        assert!(handlers.handle(refused, delivery()).await.is_err());
        let stray = handlers
            .handle(any(OrderConfirmed::example()), delivery())
            .await
            .unwrap_err();
        assert!(stray.to_string().contains("no handler for order.confirmed"));
        let log = log.lock().unwrap();
        assert_eq!(log[..3], ["outer", "inner", log[2].as_str()]);
        assert!(log[2].starts_with("reserve "), "{log:?}");
        assert_eq!(log[3..], ["outer", "inner", "outer", "inner"]);
    }
}

//! **notification-service**, the a4co reference service that tells people what happened:
//! it subscribes to every event the design documents list for it (taken from the catalog's
//! subscriber tables), renders the e-mail, SMS or push message it would send
//! ([`render::draft`]), writes it to the log, keeps it queryable, and publishes
//! `notification.sent`. One notification per event, whatever the redeliveries.
//!
//! Run it with `cargo run -p example-notification-service` (in memory), or with
//! `NATS_URL=nats://127.0.0.1:4222` (notifications in the KV bucket `notifications`). It
//! needs `SERVICE_JWT_SECRET`.
//!
//! | REST (service JWT) | permission |
//! |---|---|
//! | `GET /api/v1/notifications?recipient=&orderId=&type=&limit=` | `notification:read` |
//!
//! ```
//! use a4co_events::bus::Publisher;
//! use a4co_events::catalog::order::OrderCreated;
//! use a4co_events::{Envelope, Message};
//! use notification_service::Notifications;
//! use a4co_events::service::{AnyBus, Records};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = AnyBus::connect(None, "notification-service", 1).await?;
//! let notifications = Notifications::new(bus.clone(), Records::memory());
//! let workers = notifications.start().await?;
//! bus.publish(&Envelope::new("order-service", "ord-1", OrderCreated::example())).await?;
//! # let mut sent = Vec::new();
//! # for _ in 0..200 {
//! #     sent = notifications.list(&Default::default()).await?;
//! #     if !sent.is_empty() { break; }
//! #     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! # }
//! assert_eq!(sent[0].template, "order-received");
//! workers.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod config;
pub mod render;

use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::notification::{Channel, DeliveryStatus, NotificationSent};
use a4co_events::service::{Env, Service};
use a4co_events::service::{Records, RecordsError, Workers};
use a4co_events::{AnyMessage, Envelope};
use a4co_http::auth::{Verifier, require};
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, is_valid_id};

pub use config::Config;
use render::{Draft, Recipient};

/// The service's name on the bus and in tokens.
pub const NAME: &str = "notification-service";

/// After this many deliveries, an event whose order's customer is still unknown is sent to
/// the order instead (its `order.created` may never come).
const WAIT_FOR_CUSTOMER_ATTEMPTS: u64 = 3;

/// How long notifications, their indexes and the order-to-customer notes are kept.
pub const KEPT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The records this service keeps, each for [`KEPT`]: `notification.<ms>.<event id>`
/// (what was sent, `<ms>` when the event occurred), `to.<recipient>.<ms>.<event id>` and
/// `about.<order>.<ms>.<event id>` (indexes), `customer-of.<order>`.
const KEPT_PREFIXES: [&str; 4] = ["notification.", "to.", "about.", "customer-of."];

/// A notification, as sent (to the log) and as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `ntf-<event id>`.
    pub notification_id: String,
    /// The event it tells of.
    pub event_id: String,
    /// That event's type.
    pub event_type: String,
    /// Who it was for.
    pub recipient: String,
    /// How.
    pub channel: Channel,
    /// The template.
    pub template: String,
    /// The subject line.
    pub subject: String,
    /// The text.
    pub body: String,
    /// The order it is about, if any.
    pub order_id: Option<String>,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

/// Filters of [`Notifications::list`] (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Only for this recipient.
    pub recipient: Option<String>,
    /// Only about this order.
    pub order_id: Option<String>,
    /// Only of this template (`type` in the query).
    #[serde(rename = "type")]
    pub template: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The service over a bus and its records; a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Notifications<B> {
    bus: B,
    records: Records,
}

impl<B: Publisher + Subscriber> Notifications<B> {
    /// The service on `bus`, keeping notifications in `records` for [`KEPT`].
    pub fn new(bus: B, records: Records) -> Self {
        let records = KEPT_PREFIXES
            .iter()
            .fold(records, |records, prefix| records.expire(prefix, KEPT));
        Notifications { bus, records }
    }

    /// The subscription: every message type whose catalog entry names this service.
    pub fn subscription() -> Subscription {
        a4co_events::catalog::MESSAGES
            .iter()
            .filter(|m| m.latest && m.subscribers.contains(&NAME))
            .fold(Subscription::new(NAME, "events"), |s, m| {
                s.subject(m.subject())
            })
    }

    /// Subscribes.
    ///
    /// # Errors
    /// Subscribing failed.
    pub async fn start(&self) -> Result<Workers, a4co_events::bus::SubscribeError> {
        let me = self.clone();
        let handle = self
            .bus
            .subscribe(
                Self::subscription(),
                // A fan-in of every type it is told of: one handler for them all.
                move |event: Envelope<AnyMessage>, delivery: DeliveryInfo| {
                    let me = me.clone();
                    async move { me.handle(&event, &delivery).await }
                },
            )
            .await?;
        let mut workers = Workers::new();
        workers.subscription(handle);
        Ok(workers)
    }

    async fn handle(
        &self,
        event: &Envelope<AnyMessage>,
        delivery: &DeliveryInfo,
    ) -> Result<(), HandlerError> {
        if let AnyMessage::OrderCreated(created) = &event.data
            && is_valid_id(&event.aggregate_id)
        {
            let customer = created.customer_id.clone();
            self.records
                .modify(
                    &format!("customer-of.{}", event.aggregate_id),
                    |known: Option<&String>| (known.is_none().then(|| customer.clone()), ()),
                )
                .await?;
        }
        let Some(draft) = render::draft(event) else {
            return Ok(());
        };
        // Keys sort by when the event occurred: listings read newest first.
        let stamp = format!(
            "{:013}.{}",
            event.occurred_at.timestamp_millis().max(0),
            event.event_id
        );
        let key = format!("notification.{stamp}");
        let recipient = self.recipient(&draft, delivery.attempt).await?;
        let notification = Notification {
            notification_id: format!("ntf-{}", event.event_id),
            event_id: event.event_id.to_string(),
            event_type: event.event_type().to_owned(),
            recipient,
            channel: draft.channel,
            template: draft.template.to_owned(),
            subject: draft.subject,
            body: draft.body,
            order_id: draft.order_id,
            sent_at: Utc::now(),
        };
        // The indexes first: a notification is never listed less than it was sent.
        let mut indexes = vec![format!("to.{}.{stamp}", key_token(&notification.recipient))];
        if let Some(order) = notification.order_id.as_deref().filter(|o| is_valid_id(o)) {
            indexes.push(format!("about.{order}.{stamp}"));
        }
        for index in &indexes {
            match self.records.put(index, &(), None).await {
                Ok(_) | Err(RecordsError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (sent, first) = self
            .records
            .modify(&key, |existing: Option<&Notification>| match existing {
                Some(existing) => (None, (existing.clone(), false)),
                None => (Some(notification.clone()), (notification.clone(), true)),
            })
            .await?;
        if first {
            tracing::info!(
                recipient = %sent.recipient,
                channel = ?sent.channel,
                template = %sent.template,
                subject = %sent.subject,
                body = %sent.body,
                "notification sent"
            );
        }
        let announced = NotificationSent {
            recipient: sent.recipient.clone(),
            notification_type: sent.template.clone(),
            channel: Some(sent.channel),
            status: DeliveryStatus::Sent,
        };
        self.bus
            .publish(&Envelope::reply_to(
                event,
                NAME,
                &sent.notification_id,
                announced,
                "sent",
            ))
            .await
            .map_err(HandlerError::from)?;
        Ok(())
    }

    async fn recipient(&self, draft: &Draft, attempt: u64) -> Result<String, HandlerError> {
        match &draft.recipient {
            Recipient::Direct(to) => Ok(to.clone()),
            Recipient::CustomerOf(order) => {
                let known = if is_valid_id(order) {
                    self.records
                        .get::<String>(&format!("customer-of.{order}"))
                        .await?
                        .map(|v| v.value)
                } else {
                    None
                };
                match known {
                    Some(customer) => Ok(customer),
                    // The order's creation travels on another stream and may come later.
                    None if attempt < WAIT_FOR_CUSTOMER_ATTEMPTS => Err(HandlerError::retryable(
                        format!("the customer of order {order} is not known yet"),
                    )),
                    None => Ok(format!("order:{order}")),
                }
            }
        }
    }

    /// Notifications sent in the last [`KEPT`], newest first (by when their event
    /// occurred), at most `filter.limit`. A recipient or order filter reads that
    /// recipient's or order's index only; records are read, newest first, until the limit
    /// is reached.
    ///
    /// # Errors
    /// The store failed.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Notification>, RecordsError> {
        let limit = filter.limit.unwrap_or(100).min(1000);
        let index = match (&filter.recipient, &filter.order_id) {
            (Some(recipient), _) => Some(format!("to.{}.", key_token(recipient))),
            (None, Some(order)) if is_valid_id(order) => Some(format!("about.{order}.")),
            (None, Some(_)) => return Ok(Vec::new()),
            (None, None) => None,
        };
        let mut keys: Vec<String> = match &index {
            Some(prefix) => self
                .records
                .keys(prefix)
                .await?
                .iter()
                .map(|k| format!("notification.{}", &k[prefix.len()..]))
                .collect(),
            None => self.records.keys("notification.").await?,
        };
        keys.reverse();
        let mut found = Vec::new();
        for key in keys {
            if found.len() == limit {
                break;
            }
            let Some(n) = self.records.get::<Notification>(&key).await? else {
                continue;
            };
            let n = n.value;
            if filter.recipient.as_ref().is_none_or(|r| *r == n.recipient)
                && (filter.order_id.is_none() || filter.order_id == n.order_id)
                && filter.template.as_ref().is_none_or(|t| *t == n.template)
            {
                found.push(n);
            }
        }
        Ok(found)
    }

    /// How many notifications were sent, by template.
    ///
    /// # Errors
    /// The store failed.
    pub async fn counts(&self) -> Result<std::collections::BTreeMap<String, usize>, RecordsError> {
        let mut counts = std::collections::BTreeMap::new();
        for (_, n) in self.records.all::<Notification>("notification.").await? {
            *counts.entry(n.template).or_default() += 1;
        }
        Ok(counts)
    }

    /// The REST routes, checking service tokens with `verifier`.
    pub fn router(&self, verifier: &Verifier) -> Router {
        Router::new()
            .route("/api/v1/notifications", get(list::<B>))
            .route_layer(require(verifier, "notification:read"))
            .with_state(self.clone())
    }
}

async fn list<B: Publisher + Subscriber>(
    State(notifications): State<Notifications<B>>,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    let Query(filter) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if filter.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    Ok(Json(notifications.list(&filter).await?))
}

/// Runs the service until Ctrl-C or SIGTERM.
///
/// # Errors
/// A bad setting, an unreachable NATS, an address in use: the message says what to fix.
pub async fn run(env: Env) -> Result<(), a4co_events::service::StartError> {
    let config = Config::from_env(&env)?;
    let service = Service::start(NAME, &env).await?;
    let records = service.records("notifications").await?;
    let notifications = Notifications::new(service.bus().clone(), records);
    let workers = notifications.start().await?;
    let router = notifications.router(&Verifier::new(&config.secret));
    service
        .serve_until_signal(config.http_addr, router, workers)
        .await
}

/// `text` as one key token: letters, digits, `-` and `_` as they are, every other byte as
/// `=` and two hex digits (so `order:ord-1` is `order=3Aord-1`).
fn key_token(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

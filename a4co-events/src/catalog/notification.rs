#![doc = include_str!("docs/notification.md")]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::message;

/// How a notification reaches a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// E-mail.
    Email,
    /// SMS.
    Sms,
    /// Push notification.
    Push,
}

/// Whether a notification left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryStatus {
    /// Handed to the provider.
    Sent,
    /// The provider refused it.
    Failed,
}

/// `notification.sent`: a notification was sent, or failed to be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    /// Who it was for: an e-mail address, a phone number or a user id.
    pub recipient: String,
    /// What it was about: the template (`order-confirmed`, `payment-failed`, ...).
    #[serde(rename = "type")]
    pub notification_type: String,
    /// How it was sent, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Whether it left.
    pub status: DeliveryStatus,
}

message!(NotificationSent {
    type_name: "notification.sent",
    version: 1,
    kind: Event,
    context: Notification,
    aggregate: "notification",
    publishers: ["notification-service"],
    subscribers: &[],
    example: NotificationSent {
        recipient: "maria.lopez@example.com".into(),
        notification_type: "order-confirmed".into(),
        channel: Some(Channel::Email),
        status: DeliveryStatus::Sent,
    },
});

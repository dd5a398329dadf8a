#![doc = include_str!("docs/user.md")]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Address, Coordinates, example_address, example_time};
use crate::message::message;

/// Where a user signed up from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationSource {
    /// The web shop.
    Web,
    /// The mobile app.
    Mobile,
    /// A social login.
    Social,
    /// A referral link.
    Referral,
}

/// Where a user lives, as given at registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserLocation {
    /// City or town.
    pub city: String,
    /// Province.
    pub province: String,
    /// Country.
    pub country: String,
    /// Where it is on the map, if shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates: Option<Coordinates>,
}

/// `user.registered`: a customer signed up. Also stands for `CustomerRegistered` (DDD
/// document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    /// The user's e-mail address.
    #[schemars(email)]
    pub email: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// When they signed up.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub registration_date: DateTime<Utc>,
    /// Where from.
    pub registration_source: RegistrationSource,
    /// Preferred language (BCP 47: `es`, `en`).
    pub preferred_language: String,
    /// Where they live, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<UserLocation>,
    /// Whether they accept marketing messages.
    pub marketing_consent: bool,
    /// The user who referred them, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_by: Option<String>,
}

message!(UserRegistered {
    type_name: "user.registered",
    version: 1,
    kind: Event,
    context: User,
    aggregate: "user",
    publishers: ["user-service"],
    subscribers: &[
        "notification-service",
        "loyalty-service",
        "analytics-service",
        "recommendation-service",
        "cms-service"
    ],
    example: UserRegistered {
        email: "maria.lopez@example.com".into(),
        first_name: "María".into(),
        last_name: "López".into(),
        registration_date: example_time(-86_400),
        registration_source: RegistrationSource::Web,
        preferred_language: "es".into(),
        location: Some(UserLocation {
            city: "Jaén".into(),
            province: "Jaén".into(),
            country: "ES".into(),
            coordinates: None,
        }),
        marketing_consent: true,
        referred_by: None,
    },
});

/// `user.profile_updated`: a user changed profile fields. Also stands for `CustomerUpdated`
/// (DDD document) and `ProfileUpdated` (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserProfileUpdated {
    /// The names of the fields that changed.
    pub changed_fields: Vec<String>,
    /// Their values before, by field name.
    pub previous_values: BTreeMap<String, serde_json::Value>,
    /// Their values after, by field name.
    pub new_values: BTreeMap<String, serde_json::Value>,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub updated_at: DateTime<Utc>,
    /// Who (the user, or an administrator's id).
    pub updated_by: String,
    /// Why, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_reason: Option<String>,
}

message!(UserProfileUpdated {
    type_name: "user.profile_updated",
    version: 1,
    kind: Event,
    context: User,
    aggregate: "user",
    publishers: ["user-service"],
    subscribers: &[
        "notification-service",
        "geo-service",
        "recommendation-service"
    ],
    example: UserProfileUpdated {
        changed_fields: vec!["lastName".into()],
        previous_values: BTreeMap::from([("lastName".into(), "Lopez".into())]),
        new_values: BTreeMap::from([("lastName".into(), "López".into())]),
        updated_at: example_time(600),
        updated_by: "user-4711".into(),
        update_reason: None,
    },
});

/// Which notifications a user wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPreferences {
    /// By e-mail.
    pub email: bool,
    /// By SMS.
    pub sms: bool,
    /// By push notification.
    pub push: bool,
    /// About their orders.
    pub order_updates: bool,
    /// About promotions.
    pub promotions: bool,
    /// The newsletter.
    pub newsletter: bool,
}

/// How a user likes to shop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShoppingPreferences {
    /// Categories they favour.
    pub favorite_categories: Vec<String>,
    /// How far away producers may be, in kilometres.
    pub max_delivery_radius: u32,
    /// Preferred delivery time slot (`morning`, `afternoon`, `18:00-20:00`, ...).
    pub preferred_delivery_time: String,
    /// Whether to alert them on price drops.
    pub price_alerts: bool,
}

/// What a user shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivacyPreferences {
    /// Share their location.
    pub share_location: bool,
    /// Share their preferences.
    pub share_preferences: bool,
    /// Allow tracking.
    pub allow_tracking: bool,
}

/// All of a user's preferences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    /// Notifications.
    pub notifications: NotificationPreferences,
    /// Shopping.
    pub shopping: ShoppingPreferences,
    /// Privacy.
    pub privacy: PrivacyPreferences,
}

/// `user.preferences_changed`: a user changed their preferences; the payload holds all of
/// them, not only the changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPreferencesChanged {
    /// The preferences now.
    pub preferences: Preferences,
    /// When they changed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub updated_at: DateTime<Utc>,
}

message!(UserPreferencesChanged {
    type_name: "user.preferences_changed",
    version: 1,
    kind: Event,
    context: User,
    aggregate: "user",
    publishers: ["user-service"],
    subscribers: &[
        "notification-service",
        "product-service",
        "recommendation-service"
    ],
    example: UserPreferencesChanged {
        preferences: Preferences {
            notifications: NotificationPreferences {
                email: true,
                sms: false,
                push: true,
                order_updates: true,
                promotions: false,
                newsletter: false,
            },
            shopping: ShoppingPreferences {
                favorite_categories: vec!["olive-oil".into(), "ceramics".into()],
                max_delivery_radius: 50,
                preferred_delivery_time: "afternoon".into(),
                price_alerts: true,
            },
            privacy: PrivacyPreferences {
                share_location: true,
                share_preferences: false,
                allow_tracking: false,
            },
        },
        updated_at: example_time(900),
    },
});

/// `user.email_verified`: a user proved they own their e-mail address (integration
/// summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailVerified {
    /// The address verified.
    #[schemars(email)]
    pub email: String,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub verified_at: DateTime<Utc>,
}

message!(EmailVerified {
    type_name: "user.email_verified",
    version: 1,
    kind: Event,
    context: User,
    aggregate: "user",
    publishers: ["user-service"],
    subscribers: &["notification-service"],
    example: EmailVerified {
        email: "maria.lopez@example.com".into(),
        verified_at: example_time(-86_000),
    },
});

/// `user.address_added`: a user saved a new address (the DDD document's
/// `CustomerAddressAdded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAddressAdded {
    /// The new address's id.
    pub address_id: String,
    /// The address.
    pub address: Address,
}

message!(UserAddressAdded {
    type_name: "user.address_added",
    version: 1,
    kind: Event,
    context: User,
    aggregate: "user",
    publishers: ["user-service"],
    subscribers: &["geo-service"],
    example: UserAddressAdded {
        address_id: "addr-2".into(),
        address: example_address()
    },
});

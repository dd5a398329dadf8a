//! Value types shared by several contexts.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A point on the map, in decimal degrees (WGS 84).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Coordinates {
    /// Latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lng: f64,
}

/// A postal address as the documents give it (delivery, customer and business addresses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City or town.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Province (Jaén, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    /// Country (ISO 3166-1 alpha-2 where known), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Where it is on the map, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinates: Option<Coordinates>,
}

/// The instant every catalog example is built around: 2026-01-15T10:00:00Z plus `seconds`.
/// Examples are deterministic so the generated catalog is stable.
pub(crate) fn example_time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_768_471_200 + seconds, 0).unwrap_or_default()
}

/// The address used by the examples: a workshop in Úbeda, Jaén.
pub(crate) fn example_address() -> Address {
    Address {
        street: "Calle Real 12".into(),
        city: "Úbeda".into(),
        postal_code: "23400".into(),
        province: Some("Jaén".into()),
        country: Some("ES".into()),
        coordinates: Some(Coordinates {
            lat: 38.0133,
            lng: -3.3705,
        }),
    }
}

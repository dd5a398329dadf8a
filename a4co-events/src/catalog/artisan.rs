#![doc = include_str!("docs/artisan.md")]

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Coordinates, example_time};
use crate::message::message;
use crate::money::Money;

/// An artisan's workshop or shop: unlike other addresses, always placed on the map (the
/// geo service finds artisans near a customer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusinessAddress {
    /// Street and number.
    pub street: String,
    /// City or town.
    pub city: String,
    /// Province.
    pub province: String,
    /// Postal code.
    pub postal_code: String,
    /// Where it is.
    pub coordinates: Coordinates,
}

/// How thoroughly an artisan was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VerificationLevel {
    /// Identity and business checked.
    Basic,
    /// Plus a visit and references.
    Premium,
    /// Plus a recognised master craftsperson.
    Master,
}

/// `artisan.verified`: an artisan passed verification and may sell. Also stands for
/// `ArtisanOnboarded` (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtisanVerified {
    /// The trading name.
    pub business_name: String,
    /// Contact e-mail.
    #[schemars(email)]
    pub contact_email: String,
    /// Contact phone (E.164 where possible).
    pub contact_phone: String,
    /// Where the workshop is.
    pub business_address: BusinessAddress,
    /// What they make (`olive-oil`, `ceramics`, ...).
    pub specialties: Vec<String>,
    /// How they make it.
    pub crafting_techniques: Vec<String>,
    /// Certifications held (`DOP Sierra de Segura`, ...).
    pub certifications: Vec<String>,
    /// How thoroughly they were verified.
    pub verification_level: VerificationLevel,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub verified_at: DateTime<Utc>,
    /// Who verified them.
    pub verified_by: String,
    /// Whether the background check passed.
    pub background_check_passed: bool,
    /// Whether their insurance was validated.
    pub insurance_validated: bool,
}

message!(ArtisanVerified {
    type_name: "artisan.verified",
    version: 1,
    kind: Event,
    context: Artisan,
    aggregate: "artisan",
    publishers: ["artisan-service"],
    subscribers: &[
        "notification-service",
        "product-service",
        "geo-service",
        "analytics-service"
    ],
    example: ArtisanVerified {
        business_name: "Almazara de Úbeda".into(),
        contact_email: "hola@almazara-ubeda.example".into(),
        contact_phone: "+34953000000".into(),
        business_address: BusinessAddress {
            street: "Camino de la Fuente 3".into(),
            city: "Úbeda".into(),
            province: "Jaén".into(),
            postal_code: "23400".into(),
            coordinates: Coordinates {
                lat: 38.0101,
                lng: -3.3712
            },
        },
        specialties: vec!["olive-oil".into()],
        crafting_techniques: vec!["cold-extraction".into()],
        certifications: vec!["DOP Sierra Mágina".into()],
        verification_level: VerificationLevel::Premium,
        verified_at: example_time(-30 * 86_400),
        verified_by: "admin-3".into(),
        background_check_passed: true,
        insurance_validated: true,
    },
});

/// The life-cycle states of an artisan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ArtisanStatus {
    /// Signed up, not yet verified.
    Pending,
    /// Selling.
    Active,
    /// Not selling, by choice.
    Inactive,
    /// Not selling, for a while, by the marketplace's decision.
    Suspended,
    /// Excluded for good.
    Banned,
}

/// `artisan.status_changed`: an artisan moved between life-cycle states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtisanStatusChanged {
    /// The state before.
    pub previous_status: ArtisanStatus,
    /// The state now.
    pub new_status: ArtisanStatus,
    /// Why, in words.
    pub reason: String,
    /// When.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub changed_at: DateTime<Utc>,
    /// Who changed it.
    pub changed_by: String,
    /// When a suspension ends by itself, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(
        serialize_with = "crate::time::opt_utc",
        deserialize_with = "crate::time::de_opt_utc"
    )]
    pub automatic_reactivation_date: Option<DateTime<Utc>>,
    /// The products affected.
    pub impacted_products: Vec<String>,
}

message!(ArtisanStatusChanged {
    type_name: "artisan.status_changed",
    version: 1,
    kind: Event,
    context: Artisan,
    aggregate: "artisan",
    publishers: ["artisan-service"],
    subscribers: &[
        "product-service",
        "inventory-service",
        "notification-service",
        "order-service"
    ],
    example: ArtisanStatusChanged {
        previous_status: ArtisanStatus::Active,
        new_status: ArtisanStatus::Suspended,
        reason: "holiday closure".into(),
        changed_at: example_time(7200),
        changed_by: "art-ceramica-tito".into(),
        automatic_reactivation_date: Some(example_time(14 * 86_400)),
        impacted_products: vec!["prod-ceramic-bowl".into()],
    },
});

/// A product's size, in centimetres, and weight, in kilograms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dimensions {
    /// Width, cm.
    #[schemars(range(min = 0.0))]
    pub width: f64,
    /// Height, cm.
    #[schemars(range(min = 0.0))]
    pub height: f64,
    /// Depth, cm.
    #[schemars(range(min = 0.0))]
    pub depth: f64,
    /// Weight, kg.
    #[schemars(range(min = 0.0))]
    pub weight: f64,
}

/// `artisan.new_product_listed`: an artisan put a new product up for sale. Its aggregate is
/// the product. Also stands for `ProductCreated` (DDD document) and `ProductPublished`
/// (executive summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewProductListed {
    /// The artisan selling it.
    pub artisan_id: String,
    /// Its name.
    pub product_name: String,
    /// Its category.
    pub category: String,
    /// Its subcategory.
    pub subcategory: String,
    /// Its description.
    pub description: String,
    /// Its unit price.
    pub price: Money,
    /// Units available at listing.
    pub initial_stock: u32,
    /// Hours of work per unit.
    pub crafting_time: u32,
    /// What it is made of.
    pub materials: Vec<String>,
    /// Its size and weight, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<Dimensions>,
    /// Whether it can be made to order.
    pub customizable: bool,
    /// A sustainability score, 0 to 100, if assessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sustainability_score: Option<f64>,
    /// When it was listed.
    #[serde(
        serialize_with = "crate::time::utc",
        deserialize_with = "crate::time::de_utc"
    )]
    pub listed_at: DateTime<Utc>,
}

message!(NewProductListed {
    type_name: "artisan.new_product_listed",
    version: 1,
    kind: Event,
    context: Artisan,
    aggregate: "product",
    publishers: ["artisan-service"],
    subscribers: &[
        "product-service",
        "inventory-service",
        "notification-service",
        "recommendation-service",
        "geo-service"
    ],
    example: NewProductListed {
        artisan_id: "art-ceramica-tito".into(),
        product_name: "Cuenco de cerámica verde".into(),
        category: "ceramics".into(),
        subcategory: "bowls".into(),
        description: "Hand-thrown bowl with the green glaze of Úbeda".into(),
        price: Money::eur(3400),
        initial_stock: 12,
        crafting_time: 6,
        materials: vec!["clay".into(), "lead-free glaze".into()],
        dimensions: Some(Dimensions {
            width: 18.0,
            height: 8.5,
            depth: 18.0,
            weight: 0.6
        }),
        customizable: false,
        sustainability_score: Some(82.0),
        listed_at: example_time(-10 * 86_400),
    },
});

//! The published contract (feature `contract`, which the `a4co` CLI implies): the catalog
//! folder (docs/catalog/), the AsyncAPI document, and the evolution checks that keep
//! published versions compatible.
//!
//! The checked-in catalog is the published contract. [`generate`] renders it from the code;
//! [`check`] fails when the code and the checked-in files differ, and says whether the
//! difference breaks consumers (then a new version plus an [`Upcast`](crate::Upcast) is the
//! way) or only needs `a4co catalog generate`.

mod asyncapi;
pub mod evolution;
mod files;
mod markdown;
mod yaml;

pub use files::{
    CheckReport, Finding, FindingKind, WriteError, asyncapi_document, check, generate, write,
};

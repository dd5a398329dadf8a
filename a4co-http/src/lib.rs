#![doc = include_str!("../README.md")]

pub mod auth;
pub mod breaker;
mod client;
mod error;
mod limit;
pub mod retry;
mod telemetry;

pub use client::{
    Call, Client, ClientBuilder, DEADLINE_HEADER, IDEMPOTENCY_KEY_HEADER, Response,
    deadline_from_headers,
};
pub use error::{ConfigError, Error};

/// The guide in docs/ for this crate, compiled as a doctest so its examples keep building.
#[cfg(doctest)]
#[doc = include_str!("../../docs/http.md")]
struct HttpGuide;

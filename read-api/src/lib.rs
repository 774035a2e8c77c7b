//! The public scan API (`voketag serve scan`): `GET /v1/scan/{tag_id}` answers whether a
//! tagged product is genuine and why, from the read models only — the Redis scan model
//! first, the Postgres views when Redis misses, is slow or is down — and publishes every
//! scan as a `ScanObserved` on the bus without making the answer wait for it.
//!
//! - [`api`]: routes, handlers, OpenAPI, [`App`].
//! - [`lookup`]: Redis then Postgres, each behind a [`breaker`] with a deadline.
//! - [`verdict`]: the rules, pure and unit-tested.
//! - [`signals`]: country, region and salted device hash (no personal data).
//! - [`publisher`]: the bounded queue in front of the bus.
//! - [`page`]: the HTML page browsers get.

pub mod api;
pub mod breaker;
pub mod lookup;
pub mod page;
pub mod publisher;
pub mod signals;
pub mod verdict;

pub use api::{App, build, build_with, openapi, router};

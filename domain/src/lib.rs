//! The VokeTag domain: aggregates (factory, product, batch, API key), their commands,
//! events and rules, and the value types they are made of. Pure: no I/O of any kind.

pub mod api_key;
pub mod batch;
pub mod factory;
pub mod gtin;
pub mod market;
pub mod product;
pub mod role;

pub use gtin::Gtin;
pub use market::Market;
pub use role::Role;

/// Most tags one `TagsIssued` event carries, so that one event (and one bus message) stays
/// far below Pub/Sub's 10 MB limit: 10,000 tags is about 600 KB of JSON.
pub const MAX_TAGS_PER_EVENT: usize = 10_000;

/// Every domain error names the rule it enforces with a stable machine-readable code.
pub trait RuleCode {
    fn code(&self) -> &'static str;
}

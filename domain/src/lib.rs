//! The VokeTag domain: aggregates (factory, product, batch, API key), their commands,
//! events and rules, and the value types they are made of. Pure: no I/O of any kind.

pub mod api_key;
pub mod batch;
pub mod factory;
pub mod gtin;
pub mod market;
pub mod product;
pub mod role;
pub mod scan;

pub use gtin::Gtin;
pub use market::Market;
pub use role::Role;

/// Most tags one `TagsIssued` event carries, so that one event (and one bus message) stays
/// far below Pub/Sub's 10 MB limit: 10,000 tags is about 350 KB of JSON with short serials
/// (ADR 0013), and under 3 MB with every serial at its longest (64 four-byte characters).
pub const MAX_TAGS_PER_EVENT: usize = 10_000;

/// What kind of refusal a rule is, so that every API answers it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// The input itself is invalid, whatever the state (HTTP 422).
    Invalid,
    /// The input is fine but the current state forbids it (HTTP 409).
    State,
    /// The thing acted on does not exist (HTTP 404).
    Missing,
}

/// Every domain error names the rule it enforces with a stable machine-readable code.
pub trait RuleCode: std::error::Error {
    fn code(&self) -> &'static str;
    fn kind(&self) -> RuleKind;
}

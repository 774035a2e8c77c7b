//! What a scan needs to know about a tag, as every read model answers it.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    pub product_id: Uuid,
    pub gtin: String,
    pub name: String,
    pub brand: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchView {
    pub batch_id: Uuid,
    pub factory_id: Uuid,
    pub lot: String,
    /// `draft`, `active`, `recalled` or `closed`.
    pub status: String,
    pub production_date: NaiveDate,
    pub sell_by: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2 codes.
    pub intended_markets: Vec<String>,
    pub recall_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagView {
    pub tag_id: Uuid,
    pub serial: Option<String>,
    /// The revocation reason, if the tag was revoked.
    pub revoked: Option<String>,
    pub first_scan_at: Option<DateTime<Utc>>,
    pub scan_count: u64,
    pub batch: BatchView,
    pub product: ProductView,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was the next version of its aggregate and is now applied.
    Applied,
    /// That version (or a later one) was applied before: nothing to do.
    Duplicate,
    /// An earlier version is missing; `expected` is the version the model waits for.
    Gap { expected: i64 },
    /// The model does not follow this kind of event.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The event cannot be applied however often it is retried: it must be parked.
    #[error("event {aggregate_type}/{aggregate_id}#{sequence} cannot be applied: {reason}")]
    Poison {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        reason: String,
    },
}

impl ProjectionError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProjectionError::Poison { .. })
    }

    /// Whether the read model's store itself is unreachable (connection refused or lost,
    /// timed out, pool exhausted): nothing is wrong with the event, so retrying must not
    /// count towards parking it.
    pub fn is_unavailable(&self) -> bool {
        use fred::error::ErrorKind;
        match self {
            ProjectionError::Redis(e) => matches!(
                e.kind(),
                ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure
            ),
            ProjectionError::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            ProjectionError::Poison { .. } => false,
        }
    }
}

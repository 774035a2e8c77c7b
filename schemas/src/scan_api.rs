//! Responses of the public scan API (`GET /v1/scan/{tag_id}` on `voketag serve scan`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What the scan API concludes about a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A registered tag of an active or closed batch, with nothing unusual about the scan.
    Authentic,
    /// Registered, but something about the tag, its batch or this scan needs a closer look.
    Suspicious,
    /// The tag was revoked or its batch recalled: do not trust or use the product.
    Revoked,
    /// No read model knows the tag.
    Unknown,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Authentic => "authentic",
            Verdict::Suspicious => "suspicious",
            Verdict::Revoked => "revoked",
            Verdict::Unknown => "unknown",
        }
    }
}

/// A machine-readable reason behind a verdict. A persistent contract: never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The tag was issued by a registered factory for a registered product.
    RegisteredTag,
    /// The tag's batch is active.
    BatchActive,
    /// The tag's batch is closed: production ended normally.
    BatchClosed,
    /// The factory revoked this tag.
    TagRevoked,
    /// The factory recalled the tag's batch.
    BatchRecalled,
    /// The tag's batch is still a draft: its tags are not meant to be in circulation.
    BatchNotActive,
    /// The scan comes from a country outside the batch's intended markets.
    OutsideIntendedMarket,
    /// The tag has been scanned unusually often.
    UnusuallyManyScans,
    /// No read model knows the tag.
    TagNotFound,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::RegisteredTag => "registered_tag",
            Reason::BatchActive => "batch_active",
            Reason::BatchClosed => "batch_closed",
            Reason::TagRevoked => "tag_revoked",
            Reason::BatchRecalled => "batch_recalled",
            Reason::BatchNotActive => "batch_not_active",
            Reason::OutsideIntendedMarket => "outside_intended_market",
            Reason::UnusuallyManyScans => "unusually_many_scans",
            Reason::TagNotFound => "tag_not_found",
        }
    }
}

/// Which read model answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanSource {
    /// The Redis scan model (the fast path).
    Cache,
    /// The Postgres views (the fallback when Redis misses, is slow or is down).
    Database,
}

impl ScanSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScanSource::Cache => "cache",
            ScanSource::Database => "database",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScanProduct {
    pub product_id: Uuid,
    /// GTIN-14.
    #[schema(example = "09506000134352")]
    pub gtin: String,
    pub name: String,
    pub brand: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScanBatch {
    pub batch_id: Uuid,
    pub lot: String,
    /// `draft`, `active`, `recalled` or `closed`.
    pub status: String,
    pub production_date: NaiveDate,
    pub sell_by: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2 codes.
    #[schema(example = json!(["BR", "US"]))]
    pub intended_markets: Vec<String>,
    /// Why the factory recalled the batch, if it did.
    pub recall_reason: Option<String>,
}

/// The answer to one scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScanResponse {
    pub tag_id: Uuid,
    pub verdict: Verdict,
    /// Why: every rule that contributed to the verdict, most important first.
    pub reasons: Vec<Reason>,
    /// The serial printed on the tag, if the factory gave one.
    pub serial: Option<String>,
    /// `null` for an unknown tag.
    pub product: Option<ScanProduct>,
    /// `null` for an unknown tag.
    pub batch: Option<ScanBatch>,
    /// When the tag was first scanned (this scan, if `first_scan`).
    pub first_scan_at: Option<DateTime<Utc>>,
    /// Scans of this tag so far, this one included (0 for an unknown tag).
    pub scan_count: u64,
    /// Whether this is the tag's first scan.
    pub first_scan: bool,
    pub source: ScanSource,
    pub checked_at: DateTime<Utc>,
}

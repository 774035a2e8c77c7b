//! Requests and responses of the factory command API (`/v1` on `voketag serve factory`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFactoryRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FactoryDto {
    pub id: Uuid,
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductRequest {
    /// Required for admins, who act for every factory; others act for their own.
    #[serde(default)]
    pub factory_id: Option<Uuid>,
    /// GTIN-8, -12, -13 or -14; stored as 14 digits.
    #[schema(example = "09506000134352")]
    pub gtin: String,
    pub name: String,
    pub brand: String,
    #[serde(default)]
    pub description: String,
    /// ISO 3166-1 alpha-2 codes.
    #[schema(example = json!(["BR", "US"]))]
    pub intended_markets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProductDto {
    pub id: Uuid,
    pub factory_id: Uuid,
    pub gtin: String,
    pub name: String,
    pub brand: String,
    pub description: String,
    pub intended_markets: Vec<String>,
    pub version: u64,
}

/// One page of a list, newest last; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatchRequest {
    pub product_id: Uuid,
    pub lot: String,
    pub production_date: NaiveDate,
    #[serde(default)]
    pub sell_by: Option<NaiveDate>,
    /// A subset of the product's markets; empty or absent means all of them.
    #[serde(default)]
    pub intended_markets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchDto {
    pub id: Uuid,
    pub factory_id: Uuid,
    pub product_id: Uuid,
    pub lot: String,
    pub production_date: NaiveDate,
    pub sell_by: Option<NaiveDate>,
    pub intended_markets: Vec<String>,
    /// `draft`, `active`, `recalled` or `closed`.
    pub status: String,
    pub tag_count: u64,
    pub revoked_tag_count: u64,
    pub recall_reason: Option<String>,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TagRevokedDto {
    pub tag_id: Uuid,
    pub batch_id: Uuid,
    pub reason: String,
    pub batch_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    #[serde(default)]
    pub factory_id: Option<Uuid>,
    pub name: String,
    /// `factory_user` (default) or `viewer`.
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyDto {
    pub id: Uuid,
    pub factory_id: Uuid,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The only time the key is shown: store it now, it cannot be read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreatedDto {
    #[serde(flatten)]
    pub key: ApiKeyDto,
    pub api_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportErrorDto {
    pub line: u64,
    pub column: Option<String>,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportDto {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub factory_id: Uuid,
    /// `queued`, `validating`, `applying`, `completed` or `rejected`.
    pub status: String,
    pub content_bytes: u64,
    pub rows_read: u64,
    pub tags_issued: u64,
    /// All errors found; `errors` holds the first 1,000.
    pub error_count: u64,
    pub errors: Vec<ImportErrorDto>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

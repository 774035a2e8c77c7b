//! The one error envelope every VokeTag HTTP API answers with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error":{"code","message","request_id","details"}}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `batch.issue_into_finished_batch`.
    pub code: String,
    /// What went wrong and, where possible, how to fix it.
    pub message: String,
    /// The `x-request-id` of the request, for support and log search.
    pub request_id: String,
    /// Structured specifics: the field, line or current version involved.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

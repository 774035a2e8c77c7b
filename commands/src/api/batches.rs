//! Batches and their life cycle (draft → active → recalled or closed), and tag revocation.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use uuid::Uuid;
use voketag_domain::batch::{Batch, BatchCommand, NewBatch};
use voketag_domain::product::Product;
use voketag_platform::http::{ApiError, ApiJson, ApiPath as Path};
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::EventMetadata;
use voketag_schemas::factory_api::{BatchDto, NewBatchRequest, ReasonRequest, TagRevokedDto};

use super::context::{
    Caller, Idempotency, Target, command_error, decide, expected_version, once, versioned,
};
use super::products::markets;
use super::{AppState, db_error};

pub(crate) fn dto(id: Uuid, b: &Batch, version: u64) -> Option<BatchDto> {
    b.state.as_ref().map(|s| BatchDto {
        id,
        factory_id: s.factory_id,
        product_id: s.product_id,
        lot: s.lot.clone(),
        production_date: s.production_date,
        sell_by: s.sell_by,
        intended_markets: s.intended_markets.iter().map(|m| m.to_string()).collect(),
        status: s.status.as_str().to_string(),
        tag_count: s.tag_count,
        revoked_tag_count: s.revoked_tags.len() as u64,
        recall_reason: s.recall_reason.clone(),
        version,
    })
}

/// The batch if the caller may see it; otherwise 404, whether it exists or not.
pub(crate) async fn visible_batch(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<(Batch, u64), ApiError> {
    let loaded = state
        .store
        .load::<Batch>(&id.to_string())
        .await
        .map_err(command_error)?;
    match &loaded.aggregate.state {
        Some(s) if caller.sees(s.factory_id) => Ok((loaded.aggregate, loaded.version)),
        _ => Err(ApiError::not_found("batch")),
    }
}

/// Create a batch of a product, in draft.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = NewBatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    responses((status = 201, body = BatchDto), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewBatchRequest>,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let idem = Idempotency::from_request(&headers, &caller, "POST /v1/batches", &req)?;
    once(&state, idem.as_ref(), || async {
        let intended_markets = markets("intended_markets", &req.intended_markets)?;
        let product = state
            .store
            .load::<Product>(&req.product_id.to_string())
            .await
            .map_err(command_error)?;
        let product = match product.aggregate.state {
            Some(p) if caller.sees(p.factory_id) => p,
            _ => {
                return Err(ApiError::not_found("product")
                    .with_details(serde_json::json!({"field": "product_id"})));
            }
        };
        let id = Uuid::now_v7();
        let command = BatchCommand::CreateBatch(NewBatch {
            factory_id: product.factory_id,
            product_id: req.product_id,
            product_markets: product.intended_markets,
            lot: req.lot,
            production_date: req.production_date,
            sell_by: req.sell_by,
            intended_markets,
        });
        let (body, version) = decide::<Batch, _>(
            &state,
            Target::New(id),
            command,
            &caller.metadata(product.factory_id),
            None,
            idem.as_ref().map(|i| (i, StatusCode::CREATED)),
            |b, v| dto(id, b, v),
        )
        .await?;
        Ok(versioned(StatusCode::CREATED, &body, version))
    })
    .await
}

/// One batch.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    responses((status = 200, body = BatchDto), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn get_batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let (batch, version) = visible_batch(&state, &caller, id).await?;
    let body = dto(id, &batch, version).ok_or_else(|| ApiError::not_found("batch"))?;
    Ok(versioned(StatusCode::OK, &body, version))
}

async fn transition(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    id: Uuid,
    route: &str,
    command: BatchCommand,
    request: serde_json::Value,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let expected = expected_version(&headers)?;
    let (batch, _) = visible_batch(&state, &caller, id).await?;
    let factory_id = batch
        .state
        .as_ref()
        .map(|s| s.factory_id)
        .unwrap_or_default();
    let idem = Idempotency::from_request(&headers, &caller, route, &request)?;
    once(&state, idem.as_ref(), || async {
        let (body, version) = decide::<Batch, _>(
            &state,
            Target::Existing(id),
            command,
            &caller.metadata(factory_id),
            expected,
            idem.as_ref().map(|i| (i, StatusCode::OK)),
            |b, v| dto(id, b, v),
        )
        .await?;
        Ok(versioned(StatusCode::OK, &body, version))
    })
    .await
}

/// Activate a draft batch: its tags become scannable as authentic.
#[utoipa::path(post, path = "/v1/batches/{id}/activate", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id"), ("If-Match" = Option<String>, Header, description = "expected version")),
    responses((status = 200, body = BatchDto), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn activate_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let route = format!("POST /v1/batches/{id}/activate");
    transition(
        state,
        caller,
        headers,
        id,
        &route,
        BatchCommand::ActivateBatch,
        serde_json::Value::Null,
    )
    .await
}

/// Recall a batch: its tags answer `revoked` with the reason.
#[utoipa::path(post, path = "/v1/batches/{id}/recall", tag = "batches", request_body = ReasonRequest,
    params(("id" = Uuid, Path, description = "batch id"), ("If-Match" = Option<String>, Header, description = "expected version")),
    responses((status = 200, body = BatchDto), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn recall_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    let route = format!("POST /v1/batches/{id}/recall");
    let request = serde_json::to_value(&req).map_err(ApiError::internal)?;
    transition(
        state,
        caller,
        headers,
        id,
        &route,
        BatchCommand::RecallBatch { reason: req.reason },
        request,
    )
    .await
}

/// Close an active batch: production is over, no more tags.
#[utoipa::path(post, path = "/v1/batches/{id}/close", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id"), ("If-Match" = Option<String>, Header, description = "expected version")),
    responses((status = 200, body = BatchDto), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn close_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let route = format!("POST /v1/batches/{id}/close");
    transition(
        state,
        caller,
        headers,
        id,
        &route,
        BatchCommand::CloseBatch,
        serde_json::Value::Null,
    )
    .await
}

/// Revoke one tag (stolen, damaged, cloned): scans of it answer `revoked`.
#[utoipa::path(post, path = "/v1/tags/{tag_id}/revoke", tag = "tags", request_body = ReasonRequest,
    params(("tag_id" = Uuid, Path, description = "tag id")),
    responses((status = 200, body = TagRevokedDto), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn revoke_tag(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(tag_id): Path<Uuid>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let batch_id: Option<Uuid> =
        // A tag an unfinished import has only reserved (ADR 0012) is not issued yet; an
        // import's rows name their batch through the import (ADR 0014).
        sqlx::query_scalar(
            "SELECT coalesce(r.batch_id, i.batch_id)
               FROM tag_registry r LEFT JOIN imports i ON i.import_id = r.import_id
              WHERE r.tag_id = $1 AND (r.import_id IS NULL OR i.status = 'completed')",
        )
            .bind(tag_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(db_error)?;
    let batch_id = batch_id.ok_or_else(|| ApiError::not_found("tag"))?;
    let (batch, _) = visible_batch(&state, &caller, batch_id)
        .await
        .map_err(|_| ApiError::not_found("tag"))?;
    let factory_id = batch
        .state
        .as_ref()
        .map(|s| s.factory_id)
        .unwrap_or_default();
    let route = format!("POST /v1/tags/{tag_id}/revoke");
    let idem = Idempotency::from_request(&headers, &caller, &route, &req)?;
    let metadata: EventMetadata = caller.metadata(factory_id);
    once(&state, idem.as_ref(), || async {
        let reason = req.reason.trim().to_string();
        let (body, version) = decide::<Batch, _>(
            &state,
            Target::Existing(batch_id),
            BatchCommand::RevokeTag {
                tag_id,
                reason: req.reason.clone(),
            },
            &metadata,
            None,
            idem.as_ref().map(|i| (i, StatusCode::OK)),
            |_, v| TagRevokedDto {
                tag_id,
                batch_id,
                reason,
                batch_version: v,
            },
        )
        .await?;
        Ok(versioned(StatusCode::OK, &body, version))
    })
    .await
}

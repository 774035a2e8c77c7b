//! API keys for machine clients: shown once, stored as SHA-256, revocable.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voketag_domain::Role;
use voketag_domain::api_key::{ApiKey, ApiKeyCommand};
use voketag_platform::http::{ApiError, ApiJson, ApiPath as Path, ApiQuery as Query};
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::factory_api::{ApiKeyCreatedDto, ApiKeyDto, NewApiKeyRequest};

use super::context::{Caller, Idempotency, Target, command_error, decide, once};
use super::products::field_error;
use super::{AppState, db_error};
use crate::auth::api_key::generate;

/// Issue an API key; the key is in this answer and nowhere else, ever.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = NewApiKeyRequest,
    responses((status = 201, body = ApiKeyCreatedDto), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewApiKeyRequest>,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let factory_id = caller.acting_for(req.factory_id)?;
    let role: Role = match req.role.as_deref() {
        None => Role::FactoryUser,
        Some(r) => r.parse().map_err(|e: voketag_domain::role::UnknownRole| {
            field_error("role", "invalid_role", e.to_string())
        })?,
    };
    let idem = Idempotency::from_request(&headers, &caller, "POST /v1/api-keys", &req)?;
    once(&state, idem.as_ref(), || async {
        let id = Uuid::now_v7();
        let key = generate();
        let command = ApiKeyCommand::IssueApiKey {
            factory_id,
            name: req.name,
            role,
            prefix: key.prefix.clone(),
            secret_sha256: key.secret_sha256.clone(),
        };
        // The secret is never stored, so a retry cannot be answered with it.
        let refusal = serde_json::json!({
            "replay_refused": format!("API key {id} was already created by this request; its secret is shown only once. Revoke it and create another if it was lost."),
            "details": {"api_key_id": id},
        });
        decide::<ApiKey, _>(
            &state,
            Target::New(id),
            command,
            &caller.metadata(factory_id),
            None,
            idem.as_ref().map(|i| (i, StatusCode::CREATED)),
            |_, _| refusal,
        )
        .await?;
        let stored = load_key(&state, id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("API key {id} committed but not found")))?;
        let body = ApiKeyCreatedDto {
            key: stored,
            api_key: key.full_key,
        };
        Ok((StatusCode::CREATED, axum::Json(body)).into_response())
    })
    .await
}

async fn load_key(state: &AppState, id: Uuid) -> Result<Option<ApiKeyDto>, ApiError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT key_id, factory_id, name, role, prefix, created_at, revoked_at FROM api_keys WHERE key_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_error)?;
    Ok(row.map(KeyRow::dto))
}

type KeyRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

trait IntoDto {
    fn dto(self) -> ApiKeyDto;
}

impl IntoDto for KeyRow {
    fn dto(self) -> ApiKeyDto {
        let (id, factory_id, name, role, prefix, created_at, revoked_at) = self;
        ApiKeyDto {
            id,
            factory_id,
            name,
            role,
            prefix,
            created_at,
            revoked_at,
        }
    }
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct KeysQuery {
    /// Admins only: one factory's keys.
    factory_id: Option<Uuid>,
}

/// List API keys (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", params(KeysQuery),
    responses((status = 200, body = Vec<ApiKeyDto>)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<KeysQuery>,
) -> Result<axum::Json<Vec<ApiKeyDto>>, ApiError> {
    let factory = if caller.is_admin() {
        q.factory_id
    } else {
        Some(caller.principal.factory_id)
    };
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT key_id, factory_id, name, role, prefix, created_at, revoked_at FROM api_keys
          WHERE ($1::uuid IS NULL OR factory_id = $1) ORDER BY key_id LIMIT 1000",
    )
    .bind(factory)
    .fetch_all(&state.pool)
    .await
    .map_err(db_error)?;
    Ok(axum::Json(rows.into_iter().map(KeyRow::dto).collect()))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = Uuid, Path, description = "API key id")),
    responses((status = 204), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    caller.require_write()?;
    let key = load_key(&state, id).await?;
    let key = match key {
        Some(k) if caller.sees(k.factory_id) => k,
        _ => return Err(ApiError::not_found("API key")),
    };
    state
        .store
        .execute::<ApiKey>(
            &id.to_string(),
            ApiKeyCommand::RevokeApiKey,
            &caller.metadata(key.factory_id),
            None,
        )
        .await
        .map_err(command_error)?;
    Ok(StatusCode::NO_CONTENT)
}

//! Factories (tenants): registered by admins.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use uuid::Uuid;
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_platform::http::{ApiError, ApiJson, ApiPath as Path};
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::factory_api::{FactoryDto, NewFactoryRequest};

use super::AppState;
use super::context::{Caller, Idempotency, Target, command_error, decide, once, versioned};

fn dto(id: Uuid, f: &Factory, version: u64) -> Option<FactoryDto> {
    f.state.as_ref().map(|s| FactoryDto {
        id,
        name: s.name.clone(),
        version,
    })
}

/// Register a factory (admins only).
#[utoipa::path(post, path = "/v1/factories", tag = "factories", request_body = NewFactoryRequest,
    responses((status = 201, body = FactoryDto), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub(crate) async fn create_factory(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewFactoryRequest>,
) -> Result<Response, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::forbidden("only admins register factories"));
    }
    let idem = Idempotency::from_request(&headers, &caller, "POST /v1/factories", &req)?;
    once(&state, idem.as_ref(), || async {
        let id = Uuid::now_v7();
        let (body, version) = decide::<Factory, _>(
            &state,
            Target::New(id),
            FactoryCommand::RegisterFactory { name: req.name },
            &caller.metadata(id),
            None,
            idem.as_ref().map(|i| (i, StatusCode::CREATED)),
            |f, v| dto(id, f, v),
        )
        .await?;
        Ok(versioned(StatusCode::CREATED, &body, version))
    })
    .await
}

/// One factory.
#[utoipa::path(get, path = "/v1/factories/{id}", tag = "factories",
    params(("id" = Uuid, Path, description = "factory id")),
    responses((status = 200, body = FactoryDto), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn get_factory(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    if !caller.sees(id) {
        return Err(ApiError::not_found("factory"));
    }
    let loaded = state
        .store
        .load::<Factory>(&id.to_string())
        .await
        .map_err(command_error)?;
    let body =
        dto(id, &loaded.aggregate, loaded.version).ok_or_else(|| ApiError::not_found("factory"))?;
    Ok(versioned(StatusCode::OK, &body, loaded.version))
}

//! Products: registered by a factory, listed with cursor pagination.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use uuid::Uuid;
use voketag_domain::product::{NewProduct, Product, ProductCommand};
use voketag_domain::{Gtin, Market};
use voketag_platform::http::{ApiError, ApiJson, ApiPath as Path, ApiQuery as Query};
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::factory_api::{NewProductRequest, Page, ProductDto};

use super::context::{Caller, Idempotency, Target, command_error, decide, once, versioned};
use super::{AppState, db_error};

pub(crate) fn dto(id: Uuid, p: &Product, version: u64) -> Option<ProductDto> {
    p.state.as_ref().map(|s| ProductDto {
        id,
        factory_id: s.factory_id,
        gtin: s.gtin.to_string(),
        name: s.name.clone(),
        brand: s.brand.clone(),
        description: s.description.clone(),
        intended_markets: s.intended_markets.iter().map(|m| m.to_string()).collect(),
        version,
    })
}

pub(crate) fn field_error(field: &str, code: &str, message: String) -> ApiError {
    ApiError::unprocessable(code, message).with_details(serde_json::json!({ "field": field }))
}

pub(crate) fn markets(field: &str, codes: &[String]) -> Result<Vec<Market>, ApiError> {
    Market::parse_list(codes).map_err(|e| field_error(field, "invalid_market", e.to_string()))
}

/// Register a product.
#[utoipa::path(post, path = "/v1/products", tag = "products", request_body = NewProductRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    responses((status = 201, body = ProductDto), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn create_product(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewProductRequest>,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let factory_id = caller.acting_for(req.factory_id)?;
    let idem = Idempotency::from_request(&headers, &caller, "POST /v1/products", &req)?;
    once(&state, idem.as_ref(), || async {
        let gtin = Gtin::parse(&req.gtin)
            .map_err(|e| field_error("gtin", "invalid_gtin", e.to_string()))?;
        let intended_markets = markets("intended_markets", &req.intended_markets)?;
        let id = Uuid::now_v7();
        let command = ProductCommand::RegisterProduct(NewProduct {
            factory_id,
            gtin,
            name: req.name,
            brand: req.brand,
            description: req.description,
            intended_markets,
        });
        let (body, version) = decide::<Product, _>(
            &state,
            Target::New(id),
            command,
            &caller.metadata(factory_id),
            None,
            idem.as_ref().map(|i| (i, StatusCode::CREATED)),
            |p, v| dto(id, p, v),
        )
        .await?;
        Ok(versioned(StatusCode::CREATED, &body, version))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ListQuery {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 200; default 50.
    limit: Option<u32>,
    /// Admins only: one factory's products.
    factory_id: Option<Uuid>,
}

/// List products, oldest first.
#[utoipa::path(get, path = "/v1/products", tag = "products", params(ListQuery),
    responses((status = 200, body = Page<ProductDto>), (status = 400, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn list_products(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Page<ProductDto>>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 200",
        ));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| Uuid::from_slice(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_cursor", "cursor is not one this API gave out")
                })
        })
        .transpose()?;
    let factory = if caller.is_admin() {
        q.factory_id
    } else {
        Some(caller.principal.factory_id)
    };
    let mut ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT product_id FROM products
          WHERE ($1::uuid IS NULL OR factory_id = $1) AND ($2::uuid IS NULL OR product_id > $2)
          ORDER BY product_id
          LIMIT $3",
    )
    .bind(factory)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(db_error)?;
    let more = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let products = state
        .store
        .load_many::<Product>(&keys)
        .await
        .map_err(command_error)?;
    let items: Vec<ProductDto> = ids
        .into_iter()
        .zip(products)
        .filter_map(|(id, p)| dto(id, &p.aggregate, p.version))
        .collect();
    let next_cursor = if more {
        items
            .last()
            .map(|p| URL_SAFE_NO_PAD.encode(p.id.as_bytes()))
    } else {
        None
    };
    Ok(axum::Json(Page { items, next_cursor }))
}

/// One product.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "products",
    params(("id" = Uuid, Path, description = "product id")),
    responses((status = 200, body = ProductDto), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn get_product(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let loaded = state
        .store
        .load::<Product>(&id.to_string())
        .await
        .map_err(command_error)?;
    match dto(id, &loaded.aggregate, loaded.version) {
        Some(body) if caller.sees(body.factory_id) => {
            Ok(versioned(StatusCode::OK, &body, loaded.version))
        }
        _ => Err(ApiError::not_found("product")),
    }
}

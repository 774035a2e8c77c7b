//! The factory command API (`voketag serve factory`): products, batches, tags, API keys and
//! CSV imports under `/v1`, with identity, roles, idempotency and the OpenAPI document.

mod api_keys;
mod batches;
mod context;
mod factories;
mod imports;
mod products;

pub use context::{Caller, Idempotency};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voketag_platform::http::{self as vhttp, ApiError};
use voketag_platform::redis::RedisPool;
use voketag_platform::{Settings, db, redis};

use crate::auth::dev_idp::DevIdp;
use crate::auth::jwt::{JwksCachePolicy, JwtVerifier};
use crate::auth::rate_limit::RedisRateLimiter;
use crate::store::EventStore;

pub(crate) type AppState = Arc<Inner>;

pub struct Inner {
    pub store: EventStore,
    pub pool: PgPool,
    pub redis: RedisPool,
    pub verifier: JwtVerifier,
    pub limiter: RedisRateLimiter,
    pub settings: Settings,
    /// The development identity provider's public keys, served when no real provider is set.
    pub dev_jwks: Option<jsonwebtoken::jwk::JwkSet>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "VokeTag factory API", version = "1", description = "Products, batches, tags, API keys and CSV imports of a factory. Errors use one envelope: {\"error\":{\"code\",\"message\",\"request_id\",\"details\"}}."),
    modifiers(&Security),
    components(schemas(voketag_schemas::ErrorEnvelope, voketag_schemas::ErrorBody))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The routes and their OpenAPI description, generated from the handlers' annotations.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(factories::create_factory))
        .routes(routes!(factories::get_factory))
        .routes(routes!(products::create_product, products::list_products))
        .routes(routes!(products::get_product))
        .routes(routes!(batches::create_batch))
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::activate_batch))
        .routes(routes!(batches::recall_batch))
        .routes(routes!(batches::close_batch))
        .routes(routes!(batches::revoke_tag))
        .routes(routes!(api_keys::create_api_key, api_keys::list_api_keys))
        .routes(routes!(api_keys::revoke_api_key))
        .routes(routes!(imports::create_import))
        .routes(routes!(imports::get_import))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

pub fn router(state: AppState) -> Router {
    let (api, _) = routes().split_for_parts();
    let timeout = Duration::from_secs(state.settings.request_timeout_secs);
    vhttp::conventions(
        api.route("/.well-known/jwks.json", get(dev_jwks)),
        state,
        "factory-api",
        timeout,
    )
}

/// The development identity provider's JWKS, for other services' `VOKETAG_JWKS_URL`.
async fn dev_jwks(
    State(state): State<AppState>,
) -> Result<axum::Json<jsonwebtoken::jwk::JwkSet>, ApiError> {
    state.dev_jwks.clone().map(axum::Json).ok_or_else(|| {
        ApiError::not_found("development JWKS (a real identity provider is configured)")
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    axum::Json(DOC.get_or_init(openapi).clone())
}

/// The process is alive.
#[utoipa::path(get, path = "/v1/health", tag = "operations", responses((status = 200, description = "alive")))]
async fn health() -> axum::Json<serde_json::Value> {
    vhttp::health().await
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn metrics() -> axum::response::Response {
    vhttp::metrics().await
}

/// Postgres and Redis are reachable.
#[utoipa::path(get, path = "/v1/ready", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = voketag_schemas::ErrorEnvelope)))]
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (pg, rd) = tokio::join!(
        vhttp::check_postgres(&state.pool),
        vhttp::check_redis(&state.redis)
    );
    vhttp::readiness(vec![("postgres", pg), ("redis", rd)])
}

/// The factory API, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
    pub state: AppState,
}

/// Connects to Postgres and Redis, sets up identity, binds `settings.factory_addr`.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let pool = db::connect(&settings).await?;
    let redis = redis::connect(&settings).await?;
    build_with(settings, pool, redis).await
}

pub async fn build_with(settings: Settings, pool: PgPool, redis: RedisPool) -> anyhow::Result<App> {
    // Install the metrics recorder now, so requests before the first scrape are counted.
    voketag_platform::telemetry::metrics_handle();
    let mut dev_jwks = None;
    let verifier = match &settings.jwks_url {
        Some(url) => JwtVerifier::remote(
            url.clone(),
            settings.jwt_issuer.clone(),
            settings.jwt_audience.clone(),
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            JwksCachePolicy::default(),
        ),
        None => {
            let idp = DevIdp::load_or_create(
                &pool,
                settings.jwt_issuer.clone(),
                settings.jwt_audience.clone(),
            )
            .await?;
            dev_jwks = Some(idp.jwks());
            idp.verifier()
        }
    };
    let limiter = RedisRateLimiter::new(
        redis.clone(),
        settings.redis_prefix.clone(),
        settings.api_key_requests_per_minute,
    );
    let listener = TcpListener::bind(settings.factory_addr).await?;
    let state = Arc::new(Inner {
        store: EventStore::new(pool.clone()),
        pool,
        redis,
        verifier,
        limiter,
        settings,
        dev_jwks,
    });
    Ok(App {
        listener,
        router: router(state.clone()),
        state,
    })
}

impl App {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(voketag_platform::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, finishing the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

pub(crate) fn db_error(e: sqlx::Error) -> ApiError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ApiError::unavailable("the database is unreachable; retry shortly")
        }
        e if voketag_platform::db::is_connection_error(&e) => {
            ApiError::unavailable("the database is unreachable; retry shortly")
        }
        other => ApiError::internal(other),
    }
}

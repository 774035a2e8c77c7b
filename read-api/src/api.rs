//! The HTTP side of the scan API (`voketag serve scan`): routes, handlers, the OpenAPI
//! document and the [`App`] that binds and serves them.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use voketag_platform::bus::{Bus, InProcBus};
use voketag_platform::http::{self as vhttp, ApiError, RequestContext};
use voketag_platform::redis::RedisPool;
use voketag_platform::settings::BusKind;
use voketag_platform::{Settings, db, redis};
use voketag_projections::pg_views::PgViews;
use voketag_projections::redis_model::RedisScanModel;
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::bus::ScanObserved;
use voketag_schemas::scan_api::{ScanBatch, ScanProduct, ScanResponse, ScanSource, Verdict};

use crate::lookup::{Found, ReadModels};
use crate::page;
use crate::publisher::{Drainer, QUEUE_CAPACITY, ScanPublisher};
use crate::signals::ScanSignals;
use crate::verdict;

pub type AppState = Arc<Inner>;

pub struct Inner {
    pub models: ReadModels,
    pub publisher: ScanPublisher,
    pub pool: PgPool,
    pub redis: RedisPool,
    pub settings: Settings,
    scans: ScanCounters,
}

/// `scans_total{verdict, source}`, every combination registered once: looking a labelled
/// counter up by name on every scan costs more than counting it.
struct ScanCounters([metrics::Counter; 8]);

impl ScanCounters {
    const VERDICTS: [Verdict; 4] = [
        Verdict::Authentic,
        Verdict::Suspicious,
        Verdict::Revoked,
        Verdict::Unknown,
    ];
    const SOURCES: [ScanSource; 2] = [ScanSource::Cache, ScanSource::Database];

    fn new() -> Self {
        ScanCounters(std::array::from_fn(|i| {
            let (verdict, source) = (Self::VERDICTS[i / 2], Self::SOURCES[i % 2]);
            metrics::counter!("scans_total", "verdict" => verdict.as_str(), "source" => source.as_str())
        }))
    }

    fn get(&self, verdict: Verdict, source: ScanSource) -> &metrics::Counter {
        let v = Self::VERDICTS
            .iter()
            .position(|x| *x == verdict)
            .unwrap_or_default();
        let s = Self::SOURCES
            .iter()
            .position(|x| *x == source)
            .unwrap_or_default();
        &self.0[v * 2 + s]
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "VokeTag scan API",
        version = "1",
        description = "Public and unauthenticated: is this tagged product genuine, and why. Answers come from the read models only (Redis, then the Postgres views). Browsers (`Accept: text/html`) get a page, other clients JSON. Errors use one envelope: {\"error\":{\"code\",\"message\",\"request_id\",\"details\"}}."
    ),
    components(schemas(voketag_schemas::ErrorEnvelope, voketag_schemas::ErrorBody))
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(scan))
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
    vhttp::conventions(api, state, "scan-api", timeout)
}

/// Check a tag: is the product genuine, and why.
///
/// Every call counts as a scan of the tag and is published as a `ScanObserved` (country
/// and region from the load balancer, a salted hash of device signals; never the IP
/// address). Verdicts: `authentic`, `suspicious`, `revoked`, `unknown`, each with
/// machine-readable reasons.
#[utoipa::path(get, path = "/v1/scan/{tag_id}", tag = "scan",
    params(
        ("tag_id" = String, Path, description = "The tag id from the QR code or NFC chip: a UUID such as `0190f5c2-8a5b-7c3d-9e4f-0123456789ab`."),
        ("x-client-region" = Option<String>, Header, description = "ISO 3166-1 alpha-2 country of the client, set by the load balancer."),
        ("x-client-region-subdivision" = Option<String>, Header, description = "Subdivision of that country, set by the load balancer."),
    ),
    responses(
        (status = 200, description = "The verdict (also for an unknown tag: verdict `unknown`). JSON, or an HTML page when `Accept` prefers `text/html`.",
            content((ScanResponse = "application/json"), (String = "text/html"))),
        (status = 400, description = "`invalid_tag_id`: the path segment is not a UUID", body = ErrorEnvelope),
        (status = 503, description = "`read_models_unavailable`: neither Redis nor Postgres answered", body = ErrorEnvelope),
    ))]
async fn scan(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let html = wants_html(&headers);
    let tag_id = match path {
        Ok(Path(raw)) => match parse_tag_id(&raw) {
            Ok(id) => id,
            Err(e) => return failure(e, html),
        },
        Err(rejection) => {
            return failure(invalid_tag_id("", &rejection.body_text()), html);
        }
    };
    let now = Utc::now();
    let found = match state.models.scan(tag_id, now).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(tag.id = %tag_id, error = %e, "no read model answered");
            let error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read_models_unavailable",
                "the tag could not be checked: neither the scan cache (Redis) nor the database \
                 (Postgres) answered; try again in a few seconds",
            )
            .with_details(serde_json::json!({"read_models": ["redis", "postgres"]}))
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return failure(error, html);
        }
    };
    let signals = ScanSignals::from_headers(&headers, &state.settings.device_salt);
    let (verdict, reasons) = verdict::judge(
        found.view.as_ref(),
        verdict::Scan {
            country: signals.country.as_deref(),
            scan_number: found.scan_number,
        },
    );
    let response = dto(tag_id, verdict, reasons, &found, now);
    state.scans.get(verdict, found.source).increment(1);
    // The access log line already says route, status and latency; the verdicts are in
    // `scans_total`. One more info line per scan cost a fifth of the CPU of a scan.
    tracing::debug!(
        tag.id = %tag_id,
        scan.verdict = verdict.as_str(),
        scan.source = found.source.as_str(),
        scan.country = signals.country.as_deref().unwrap_or(""),
        "scan answered"
    );
    state
        .publisher
        .publish(&ScanObserved {
            scan_id: Uuid::now_v7(),
            tag_id,
            batch_id: found.view.as_ref().map(|v| v.batch.batch_id),
            scanned_at: now,
            verdict: verdict.as_str().to_string(),
            reasons: response
                .reasons
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            country: signals.country,
            region: signals.region,
            device: signals.device,
            scan_number: found.scan_number,
            source: found.source.as_str().to_string(),
        })
        .await;
    respond(&response, html)
}

fn dto(
    tag_id: Uuid,
    verdict: voketag_schemas::scan_api::Verdict,
    reasons: Vec<voketag_schemas::scan_api::Reason>,
    found: &Found,
    now: chrono::DateTime<Utc>,
) -> ScanResponse {
    let view = found.view.as_ref();
    ScanResponse {
        tag_id,
        verdict,
        reasons,
        serial: view.and_then(|v| v.serial.clone()),
        product: view.map(|v| ScanProduct {
            product_id: v.product.product_id,
            gtin: v.product.gtin.clone(),
            name: v.product.name.clone(),
            brand: v.product.brand.clone(),
        }),
        batch: view.map(|v| ScanBatch {
            batch_id: v.batch.batch_id,
            lot: v.batch.lot.clone(),
            status: v.batch.status.clone(),
            production_date: v.batch.production_date,
            sell_by: v.batch.sell_by,
            intended_markets: v.batch.intended_markets.clone(),
            recall_reason: v.batch.recall_reason.clone(),
        }),
        first_scan_at: view.and_then(|v| v.first_scan_at),
        scan_count: found.scan_number,
        first_scan: found.first_scan,
        source: found.source,
        checked_at: now,
    }
}

/// Every scan is counted: no cache along the way may answer one for us. The page loads
/// nothing from elsewhere, which the policy makes explicit.
fn scan_headers(html: bool) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::VARY, HeaderValue::from_static("accept")),
        if html {
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            )
        } else {
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )
        },
    ]
}

fn respond(response: &ScanResponse, html: bool) -> Response {
    if html {
        return (scan_headers(true), page::scan(response)).into_response();
    }
    // What `axum::Json` writes, into a buffer that holds a whole answer (~600 bytes)
    // from the start instead of growing it from 128 bytes several times per scan.
    let mut body = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut body, response) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            scan_headers(false),
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The error in the envelope, or as a page for a browser.
fn failure(error: ApiError, html: bool) -> Response {
    if !html {
        return error.into_response();
    }
    let heading = match error.status {
        StatusCode::BAD_REQUEST => "Not a VokeTag code",
        _ => "Cannot check this tag right now",
    };
    let request_id = RequestContext::current()
        .map(|c| c.request_id)
        .unwrap_or_default();
    let mut response = (
        error.status,
        scan_headers(true),
        page::error(heading, &error.message, &request_id),
    )
        .into_response();
    for (name, value) in error.headers {
        response.headers_mut().insert(name, value);
    }
    response
}

const EXAMPLE_TAG_ID: &str = "0190f5c2-8a5b-7c3d-9e4f-0123456789ab";

fn invalid_tag_id(shown: &str, problem: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_tag_id",
        format!(
            "`{shown}` is not a valid tag id: expected a UUID such as {EXAMPLE_TAG_ID} \
             (32 hexadecimal digits, grouped 8-4-4-4-12 by hyphens)"
        ),
    )
    .with_details(serde_json::json!({
        "field": "tag_id",
        "expected": "uuid",
        "example": EXAMPLE_TAG_ID,
        "problem": problem,
    }))
}

fn parse_tag_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw.trim()).map_err(|e| {
        // Echo a bounded prefix only: the segment is attacker-controlled.
        let shown: String = raw.chars().take(64).collect();
        invalid_tag_id(&shown, &e.to_string())
    })
}

/// Whether the client prefers an HTML page to JSON: the media range with the highest
/// quality among `text/html`, `application/xhtml+xml` and `application/json` wins, the
/// first listed on a tie; no `Accept`, or none of them, means JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut best: Option<(f32, bool)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let html = if media.eq_ignore_ascii_case("text/html")
            || media.eq_ignore_ascii_case("application/xhtml+xml")
        {
            true
        } else if media.eq_ignore_ascii_case("application/json") {
            false
        } else {
            continue;
        };
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())
                    .flatten()
            })
            .next()
            .unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, html));
        }
    }
    best.is_some_and(|(_, html)| html)
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
async fn metrics() -> Response {
    vhttp::metrics().await
}

/// Ready while at least one read model is reachable: scans are answered from either. The
/// answer lists both (`status` is `degraded` when one is down) and the state of each
/// circuit breaker (`closed`, `half_open` or `open`).
#[utoipa::path(get, path = "/v1/ready", tag = "operations",
    responses((status = 200, description = "at least one read model is reachable"),
              (status = 503, description = "`read_models_unavailable`: neither is", body = ErrorEnvelope)))]
async fn ready(State(state): State<AppState>) -> Response {
    let (redis, postgres) = tokio::join!(
        vhttp::check_redis(&state.redis),
        vhttp::check_postgres(&state.pool)
    );
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("unreachable: {e}"),
    };
    let checks = serde_json::json!({"redis": show(&redis), "postgres": show(&postgres)});
    let (redis_circuit, postgres_circuit) = state.models.circuits();
    let circuits = serde_json::json!({
        "redis": redis_circuit.as_str(),
        "postgres": postgres_circuit.as_str(),
    });
    let status = match (redis.is_ok(), postgres.is_ok()) {
        (false, false) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read_models_unavailable",
                "neither read model (Redis, Postgres) is reachable: scans cannot be answered",
            )
            .with_details(serde_json::json!({ "checks": checks, "circuits": circuits }))
            .into_response();
        }
        (true, true) => "ready",
        _ => "degraded",
    };
    axum::Json(serde_json::json!({"status": status, "checks": checks, "circuits": circuits}))
        .into_response()
}

/// The scan API, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
    drainer: Drainer,
}

/// Connects to Postgres, Redis and the bus that `settings.bus` names, binds
/// `settings.scan_addr`.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    use anyhow::Context;
    let pool = db::connect(&settings)
        .await
        .context("connecting to Postgres")?;
    let redis = redis::connect(&settings)
        .await
        .context("connecting to Redis")?;
    let bus: Arc<dyn Bus> = match settings.bus {
        BusKind::Inproc => {
            tracing::warn!(
                "VOKETAG_BUS=inproc: scan observations reach only consumers in this process \
                 (`voketag up` runs them; `voketag serve scan` alone has none)"
            );
            Arc::new(InProcBus::new())
        }
        BusKind::Pubsub => anyhow::bail!(
            "VOKETAG_BUS=pubsub: the scan API cannot connect to Pub/Sub yet; use `voketag up`"
        ),
    };
    build_with(settings, pool, redis, bus).await
}

/// Serves scans from these pools and publishes observations on `bus`; binds
/// `settings.scan_addr` (port 0 in tests).
pub async fn build_with(
    settings: Settings,
    pool: PgPool,
    redis: RedisPool,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<App> {
    // Install the metrics recorder now, so scans before the first scrape are counted.
    voketag_platform::telemetry::metrics_handle();
    let models = ReadModels::new(
        RedisScanModel::new(redis.clone(), settings.redis_prefix.clone()),
        PgViews::new(pool.clone()),
    );
    models.prepare().await;
    let (publisher, drainer) = ScanPublisher::start(bus, QUEUE_CAPACITY);
    let listener = TcpListener::bind(settings.scan_addr).await?;
    let state = Arc::new(Inner {
        models,
        publisher,
        pool,
        redis,
        settings,
        scans: ScanCounters::new(),
    });
    Ok(App {
        listener,
        router: router(state),
        drainer,
    })
}

impl App {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until Ctrl-C or SIGTERM, then publishes the observations still queued.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(voketag_platform::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then publishes the observations still queued.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        self.drainer.finish(Duration::from_secs(10)).await;
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn browsers_get_html_and_everyone_else_json() {
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(wants_html(&accept("text/html, application/json")));
        assert!(wants_html(&accept("application/json;q=0.5, text/html")));
        assert!(!wants_html(&accept("application/json, text/html")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept(
            "text/html;q=0, application/json;q=0.1"
        )));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn a_bad_tag_id_says_what_was_wrong_and_what_is_expected() {
        let e = parse_tag_id("not-a-uuid").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_tag_id");
        assert!(e.message.contains("`not-a-uuid`"), "{}", e.message);
        assert!(e.message.contains("expected a UUID"), "{}", e.message);
        assert_eq!(e.details["field"], "tag_id");
        let long = "x".repeat(1000);
        assert!(parse_tag_id(&long).unwrap_err().message.len() < 300);
        let id = Uuid::now_v7();
        assert_eq!(parse_tag_id(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for path in [
            "/v1/scan/{tag_id}",
            "/v1/health",
            "/v1/ready",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["ScanResponse"].is_object());
    }
}

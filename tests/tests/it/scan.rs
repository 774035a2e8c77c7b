//! The public scan API end to end: the read models are seeded by applying hand-made events
//! (as the projectors would), the API runs in-process on a free port with the in-process
//! bus, and every answer is checked through HTTP: verdicts and their reasons, first scan
//! and scan counts, the page browsers get, the fallback to Postgres when Redis misses or
//! is down (and the circuit closing again once Redis is back), 503 when both are down,
//! readiness, and the `ScanObserved` published for every scan, with no IP address in it.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use voketag_domain::batch::{BatchEvent, IssuedTag};
use voketag_domain::product::ProductEvent;
use voketag_domain::{Gtin, Market};
use voketag_platform::Settings;
use voketag_platform::bus::{Bus, InProcBus, Subscriber};
use voketag_platform::redis::{RedisPool, connect_url};
use voketag_projections::{Applied, PgViews, RedisScanModel};
use voketag_schemas::bus::{EventEnvelope, SCANS_TOPIC, ScanObserved};
use voketag_tests::{OwnRedis, TestDb, free_port, redis_url};

// ---------------------------------------------------------------------------------------
// Seeding the read models with events

fn envelope(aggregate_type: &str, id: Uuid, sequence: i64, payload: Value) -> EventEnvelope {
    let event_type = match &payload {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    EventEnvelope {
        position: 0,
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.to_string(),
        sequence,
        event_type,
        event_version: "1".into(),
        payload,
        metadata: HashMap::new(),
        recorded_at: chrono::Utc::now(),
    }
}

fn json<T: serde::Serialize>(event: T) -> Value {
    serde_json::to_value(event).expect("serialise an event")
}

fn markets(codes: &[&str]) -> Vec<Market> {
    codes
        .iter()
        .map(|c| Market::parse(c).expect("a market"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Draft,
    Active,
    Recalled,
}

/// One product with one batch (markets BR and US) and its tags, as events.
struct Catalogue {
    product: Uuid,
    batch: Uuid,
    tags: Vec<Uuid>,
    events: Vec<EventEnvelope>,
}

fn catalogue(status: Status, tags: usize, revoked: Option<usize>) -> Catalogue {
    let (factory, product, batch) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let tags: Vec<Uuid> = (0..tags).map(|_| Uuid::now_v7()).collect();
    let mut events = vec![envelope(
        "Product",
        product,
        1,
        json(ProductEvent::ProductRegistered {
            factory_id: factory,
            gtin: Gtin::parse("09506000134352").expect("a valid GTIN"),
            name: "Vitamin C Serum".into(),
            brand: "Acme".into(),
            description: String::new(),
            intended_markets: markets(&["BR", "US"]),
        }),
    )];
    let mut batch_events = vec![BatchEvent::BatchCreated {
        factory_id: factory,
        product_id: product,
        lot: "LOT-42".into(),
        production_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("a date"),
        sell_by: None,
        intended_markets: markets(&["BR", "US"]),
    }];
    if status != Status::Draft {
        batch_events.push(BatchEvent::BatchActivated);
    }
    batch_events.push(BatchEvent::TagsIssued {
        import_id: None,
        tags: tags
            .iter()
            .enumerate()
            .map(|(i, t)| IssuedTag {
                tag_id: *t,
                serial: Some(format!("SN-{i}")),
            })
            .collect(),
    });
    if let Some(i) = revoked {
        batch_events.push(BatchEvent::TagRevoked {
            tag_id: tags[i],
            reason: "reported stolen".into(),
        });
    }
    if status == Status::Recalled {
        batch_events.push(BatchEvent::BatchRecalled {
            reason: "contamination".into(),
        });
    }
    for (i, e) in batch_events.into_iter().enumerate() {
        events.push(envelope("Batch", batch, i as i64 + 1, json(e)));
    }
    Catalogue {
        product,
        batch,
        tags,
        events,
    }
}

async fn apply_redis(model: &RedisScanModel, events: &[EventEnvelope]) {
    for e in events {
        let applied = model.apply(e).await.expect("apply to Redis");
        assert_eq!(applied, Applied::Applied, "{e:?}");
    }
}

async fn apply_pg(views: &PgViews, events: &[EventEnvelope]) {
    for e in events {
        let applied = views.apply(e).await.expect("apply to Postgres");
        assert_eq!(applied, Applied::Applied, "{e:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The scan API in-process

struct ScanApi {
    base: String,
    http: reqwest::Client,
    bus: InProcBus,
    prefix: String,
    /// Its Redis keys go with it.
    _keys: voketag_tests::DropPrefix,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    elapsed: Duration,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl ScanApi {
    /// Starts the scan API on a free port against these pools; `bus` subscriptions made
    /// before the first scan see every observation.
    async fn start(pool: PgPool, redis: RedisPool, bus: InProcBus) -> ScanApi {
        voketag_platform::telemetry::init_for_tests();
        let prefix = voketag_tests::test_prefix();
        let settings = Settings {
            redis_prefix: prefix.clone(),
            scan_addr: "127.0.0.1:0".parse().expect("a literal address"),
            ..Settings::default()
        };
        let app = voketag_read_api::build_with(settings, pool, redis, Arc::new(bus.clone()))
            .await
            .expect("build the scan API");
        let addr: SocketAddr = app.local_addr().expect("bound address");
        tokio::spawn(app.run_until_stopped());
        ScanApi {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            bus,
            _keys: voketag_tests::DropPrefix::new(&voketag_tests::redis_url(), &prefix),
            prefix,
        }
    }

    fn redis_model(&self, redis: &RedisPool) -> RedisScanModel {
        RedisScanModel::new(redis.clone(), self.prefix.clone())
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut r = self.http.get(format!("{}{}", self.base, path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let started = Instant::now();
        let response = r.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        Answer {
            status,
            headers,
            text,
            elapsed: started.elapsed(),
        }
    }

    async fn scan(&self, tag: Uuid, headers: &[(&str, &str)]) -> Value {
        let a = self.get(&format!("/v1/scan/{tag}"), headers).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.json()
    }
}

/// The scan API on the shared Redis (own key prefix) and a fresh database, with both read
/// models at hand for seeding.
struct Fixture {
    api: ScanApi,
    redis: RedisScanModel,
    pg: PgViews,
    _db: TestDb,
}

async fn fixture() -> Fixture {
    let db = TestDb::new().await;
    let redis = connect_url(&redis_url()).await.expect("connect to Redis");
    let api = ScanApi::start(db.pool.clone(), redis.clone(), InProcBus::new()).await;
    Fixture {
        redis: api.redis_model(&redis),
        pg: PgViews::new(db.pool.clone()),
        api,
        _db: db,
    }
}

impl Fixture {
    async fn seed(&self, c: &Catalogue) {
        apply_redis(&self.redis, &c.events).await;
        apply_pg(&self.pg, &c.events).await;
    }
}

fn reasons(body: &Value) -> Vec<&str> {
    body["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A pool whose server is not there: connecting is attempted only on use, and fails.
fn unreachable_postgres() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!(
            "postgres://postgres@127.0.0.1:{}/nowhere",
            free_port()
        ))
        .expect("a lazy pool")
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_malformed_tag_id_is_a_400_that_says_what_is_expected() {
    let fx = fixture().await;
    let a = fx.api.get("/v1/scan/not-a-uuid", &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let body = a.json();
    assert_eq!(body["error"]["code"], "invalid_tag_id");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`not-a-uuid`"), "{message}");
    assert!(message.contains("expected a UUID"), "{message}");
    assert_eq!(body["error"]["details"]["field"], "tag_id");
    assert_eq!(body["error"]["request_id"], a.header("x-request-id"));
    // A browser gets the same status, as a page.
    let a = fx
        .api
        .get("/v1/scan/12345", &[("accept", "text/html")])
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.header("content-type").starts_with("text/html"));
    assert!(a.text.contains("expected a UUID"));
}

#[tokio::test]
async fn an_authentic_tag_is_answered_from_the_cache_and_its_scans_are_counted() {
    let fx = fixture().await;
    let c = catalogue(Status::Active, 2, None);
    fx.seed(&c).await;
    let tag = c.tags[0];

    let first = fx.api.scan(tag, &[]).await;
    assert_eq!(first["tag_id"], tag.to_string());
    assert_eq!(first["verdict"], "authentic");
    assert_eq!(reasons(&first), ["registered_tag", "batch_active"]);
    assert_eq!(first["source"], "cache");
    assert_eq!(first["first_scan"], true);
    assert_eq!(first["scan_count"], 1);
    assert_eq!(first["serial"], "SN-0");
    assert_eq!(first["product"]["product_id"], c.product.to_string());
    assert_eq!(first["product"]["name"], "Vitamin C Serum");
    assert_eq!(first["product"]["brand"], "Acme");
    assert_eq!(first["product"]["gtin"], "09506000134352");
    assert_eq!(first["batch"]["batch_id"], c.batch.to_string());
    assert_eq!(first["batch"]["lot"], "LOT-42");
    assert_eq!(first["batch"]["status"], "active");
    assert_eq!(
        first["batch"]["intended_markets"],
        serde_json::json!(["BR", "US"])
    );
    assert!(first["first_scan_at"].is_string(), "{first}");
    assert!(first["checked_at"].is_string());

    let second = fx.api.scan(tag, &[]).await;
    assert_eq!(second["first_scan"], false);
    assert_eq!(second["scan_count"], 2);
    assert_eq!(second["first_scan_at"], first["first_scan_at"]);
    let third = fx.api.scan(tag, &[]).await;
    assert_eq!(third["scan_count"], 3);
    assert_eq!(third["verdict"], "authentic");

    // The other tag of the batch has its own counters.
    let other = fx.api.scan(c.tags[1], &[]).await;
    assert_eq!(other["first_scan"], true);
    assert_eq!(other["scan_count"], 1);

    let a = fx.api.get(&format!("/v1/scan/{tag}"), &[]).await;
    assert_eq!(a.header("cache-control"), "no-store");
    let metrics = fx.api.get("/metrics", &[]).await;
    assert!(metrics.text.contains("scans_total"), "{}", metrics.text);
}

#[tokio::test]
async fn a_revoked_tag_and_a_recalled_batch_are_revoked() {
    let fx = fixture().await;
    let revoked = catalogue(Status::Active, 2, Some(0));
    fx.seed(&revoked).await;
    let body = fx.api.scan(revoked.tags[0], &[]).await;
    assert_eq!(body["verdict"], "revoked");
    assert_eq!(reasons(&body), ["tag_revoked"]);
    // Its sibling is fine.
    assert_eq!(
        fx.api.scan(revoked.tags[1], &[]).await["verdict"],
        "authentic"
    );

    let recalled = catalogue(Status::Recalled, 1, None);
    fx.seed(&recalled).await;
    let body = fx.api.scan(recalled.tags[0], &[]).await;
    assert_eq!(body["verdict"], "revoked");
    assert_eq!(reasons(&body), ["batch_recalled"]);
    assert_eq!(body["batch"]["status"], "recalled");
    assert_eq!(body["batch"]["recall_reason"], "contamination");
}

#[tokio::test]
async fn a_tag_of_a_draft_batch_is_suspicious() {
    let fx = fixture().await;
    let c = catalogue(Status::Draft, 1, None);
    fx.seed(&c).await;
    let body = fx.api.scan(c.tags[0], &[]).await;
    assert_eq!(body["verdict"], "suspicious");
    assert_eq!(reasons(&body), ["batch_not_active"]);
}

#[tokio::test]
async fn a_scan_outside_the_intended_markets_is_suspicious() {
    let fx = fixture().await;
    let c = catalogue(Status::Active, 1, None);
    fx.seed(&c).await;
    let body = fx.api.scan(c.tags[0], &[("x-client-region", "DE")]).await;
    assert_eq!(body["verdict"], "suspicious");
    assert_eq!(reasons(&body), ["outside_intended_market"]);
    let body = fx.api.scan(c.tags[0], &[("x-client-region", "br")]).await;
    assert_eq!(body["verdict"], "authentic");
}

#[tokio::test]
async fn an_unknown_tag_is_answered_unknown() {
    let fx = fixture().await;
    let body = fx.api.scan(Uuid::now_v7(), &[]).await;
    assert_eq!(body["verdict"], "unknown");
    assert_eq!(reasons(&body), ["tag_not_found"]);
    assert!(body["product"].is_null() && body["batch"].is_null());
    assert_eq!(body["scan_count"], 0);
    assert_eq!(body["first_scan"], false);
    // Redis missed, so Postgres was asked last.
    assert_eq!(body["source"], "database");
}

#[tokio::test]
async fn a_browser_gets_a_page_with_the_verdict() {
    let fx = fixture().await;
    let c = catalogue(Status::Active, 1, None);
    fx.seed(&c).await;
    let a = fx
        .api
        .get(
            &format!("/v1/scan/{}", c.tags[0]),
            &[(
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            )],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.header("content-type").starts_with("text/html"),
        "{:?}",
        a.headers
    );
    assert!(a.text.contains("<h1>Authentic</h1>"), "{}", a.text);
    assert!(a.text.contains("Vitamin C Serum"));
    assert!(a.text.contains("LOT-42"));
    assert!(
        a.text
            .contains("The manufacturer issued this tag for this product.")
    );
    assert!(!a.text.contains("<script"));
    assert!(
        a.header("content-security-policy")
            .contains("default-src 'none'")
    );
    // A client asking for JSON first still gets JSON.
    let a = fx
        .api
        .get(
            &format!("/v1/scan/{}", c.tags[0]),
            &[("accept", "application/json, text/html")],
        )
        .await;
    assert_eq!(a.json()["verdict"], "authentic");
}

#[tokio::test]
async fn a_tag_missing_from_redis_is_answered_from_postgres() {
    let fx = fixture().await;
    let c = catalogue(Status::Active, 1, None);
    apply_pg(&fx.pg, &c.events).await;
    let body = fx.api.scan(c.tags[0], &[]).await;
    assert_eq!(body["source"], "database");
    assert_eq!(body["verdict"], "authentic");
    assert_eq!(reasons(&body), ["registered_tag", "batch_active"]);
    assert_eq!(body["first_scan"], true);
    assert_eq!(body["scan_count"], 1);
    assert_eq!(body["serial"], "SN-0");
    assert_eq!(body["product"]["name"], "Vitamin C Serum");
}

#[tokio::test]
async fn every_scan_is_published_without_any_ip_address_or_raw_device_signal() {
    let fx = fixture().await;
    let c = catalogue(Status::Active, 1, None);
    fx.seed(&c).await;
    let sub = fx
        .api
        .bus
        .subscribe(SCANS_TOPIC, "test")
        .await
        .expect("subscribe");
    let body = fx
        .api
        .scan(
            c.tags[0],
            &[
                ("x-forwarded-for", "203.0.113.9, 10.1.2.3"),
                ("x-real-ip", "203.0.113.9"),
                ("forwarded", "for=203.0.113.9"),
                ("user-agent", "SecretPhone/9.9 (build zqxv)"),
                ("accept-language", "pt-BR,pt;q=0.9"),
                ("x-client-region", "BR"),
                ("x-client-region-subdivision", "BRSP"),
                ("x-correlation-id", "corr-scan-1"),
            ],
        )
        .await;
    assert_eq!(body["verdict"], "authentic");

    let (raw, attributes, observed) = next_observation(&sub).await;
    assert_eq!(observed.tag_id, c.tags[0]);
    assert_eq!(observed.batch_id, Some(c.batch));
    assert_eq!(observed.scan_id.get_version_num(), 7);
    assert_eq!(observed.verdict, "authentic");
    assert_eq!(observed.reasons, ["registered_tag", "batch_active"]);
    assert_eq!(observed.country.as_deref(), Some("BR"));
    assert_eq!(observed.region.as_deref(), Some("BRSP"));
    assert_eq!(observed.scan_number, 1);
    assert_eq!(observed.source, "cache");
    let device = observed.device.as_deref().expect("a device hash");
    assert!(device.len() == 64 && device.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(attributes["correlation_id"], "corr-scan-1");
    let everything = format!("{raw} {attributes:?}");
    // Markers chosen so that no UUID, hash or trace id can contain them by chance.
    for secret in [
        "203.0.113",
        "10.1.2.3",
        "SecretPhone",
        "build zqxv",
        "pt-BR",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }

    // The same device hashes the same; an unknown tag is observed too.
    fx.api
        .scan(
            Uuid::now_v7(),
            &[
                ("user-agent", "SecretPhone/9.9 (build zqxv)"),
                ("accept-language", "pt-BR,pt;q=0.9"),
            ],
        )
        .await;
    let (_, _, unknown) = next_observation(&sub).await;
    assert_eq!(unknown.verdict, "unknown");
    assert_eq!(unknown.batch_id, None);
    assert_eq!(unknown.scan_number, 0);
    assert_eq!(unknown.device.as_deref(), Some(device));

    let metrics = fx.api.get("/metrics", &[]).await;
    assert!(metrics.text.contains("scan_observations_published_total"));
}

async fn next_observation(sub: &Subscriber) -> (String, HashMap<String, String>, ScanObserved) {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an observation within 10 s")
        .expect("the bus is open");
    let raw = String::from_utf8(d.message.data.clone()).expect("UTF-8 JSON");
    let attributes = d.message.attributes.clone().into_iter().collect();
    let observed: ScanObserved = serde_json::from_str(&raw).expect("a ScanObserved");
    assert_eq!(d.message.ordering_key, observed.tag_id.to_string());
    d.ack();
    (raw, attributes, observed)
}

#[tokio::test]
async fn with_redis_down_scans_are_answered_from_postgres_quickly_until_redis_returns() {
    let db = TestDb::new().await;
    let mut server = OwnRedis::start().await;
    let redis = connect_url(&server.url())
        .await
        .expect("connect to own Redis");
    let api = ScanApi::start(db.pool.clone(), redis.clone(), InProcBus::new()).await;
    let model = api.redis_model(&redis);
    let c = catalogue(Status::Active, 1, None);
    apply_redis(&model, &c.events).await;
    apply_pg(&PgViews::new(db.pool.clone()), &c.events).await;
    let tag = c.tags[0];
    assert_eq!(api.scan(tag, &[]).await["source"], "cache");
    let ready = api.get("/v1/ready", &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");

    server.stop();
    // The first few calls each cost at most Redis' 100 ms deadline; then the circuit is
    // open and Redis is not even tried.
    for i in 0..10 {
        let a = api.get(&format!("/v1/scan/{tag}"), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let body = a.json();
        assert_eq!(body["source"], "database", "scan {i}");
        assert_eq!(body["verdict"], "authentic");
        if i >= 5 {
            assert!(
                a.elapsed < Duration::from_millis(500),
                "scan {i} took {:?} with the circuit open",
                a.elapsed
            );
        }
    }
    let ready = api.get("/v1/ready", &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    let ready = ready.json();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["circuits"]["redis"], "open", "{ready}");
    assert_eq!(ready["circuits"]["postgres"], "closed", "{ready}");
    assert_eq!(ready["checks"]["postgres"], "ok");
    assert!(
        ready["checks"]["redis"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unreachable"),
        "{ready}"
    );

    // Redis returns, empty (nothing was saved); the projector would rebuild it: here the
    // test does. After the open interval a probe goes through and closes the circuit.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Reseeding fails until the pool has reconnected.
        if model.apply(&c.events[0]).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Redis pool did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    apply_redis(&model, &c.events[1..]).await;
    loop {
        let body = api.scan(tag, &[]).await;
        if body["source"] == "cache" {
            assert_eq!(body["verdict"], "authentic");
            assert_eq!(body["first_scan"], true, "Redis was rebuilt empty");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the circuit did not close: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(api.scan(tag, &[]).await["source"], "cache");
    let ready = api.get("/v1/ready", &[]).await.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["circuits"]["redis"], "closed", "{ready}");
}

#[tokio::test]
async fn with_both_read_models_down_scans_and_readiness_are_503() {
    let mut server = OwnRedis::start().await;
    let redis = connect_url(&server.url())
        .await
        .expect("connect to own Redis");
    server.stop();
    let api = ScanApi::start(unreachable_postgres(), redis, InProcBus::new()).await;

    let a = api.get(&format!("/v1/scan/{}", Uuid::now_v7()), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    let body = a.json();
    assert_eq!(body["error"]["code"], "read_models_unavailable");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Redis") && message.contains("Postgres"),
        "{message}"
    );
    assert_eq!(a.header("retry-after"), "2");

    let ready = api.get("/v1/ready", &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert_eq!(ready.json()["error"]["code"], "read_models_unavailable");
    // Alive all the same.
    assert_eq!(api.get("/v1/health", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn operational_routes_answer_and_the_openapi_document_lists_them() {
    let fx = fixture().await;
    let ready = fx.api.get("/v1/ready", &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    let ready = ready.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["redis"], "ok");
    assert_eq!(ready["checks"]["postgres"], "ok");
    assert_eq!(fx.api.get("/v1/health", &[]).await.json()["status"], "ok");
    let doc = fx.api.get("/openapi.json", &[]).await.json();
    for path in [
        "/v1/scan/{tag_id}",
        "/v1/health",
        "/v1/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    let missing = fx.api.get("/v1/nothing", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "route_not_found");
}

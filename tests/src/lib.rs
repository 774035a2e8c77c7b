//! Test harness: each test gets the real factory API on a free port, its own Postgres
//! database (dropped afterwards) and its own Redis key prefix, so tests run in parallel.

pub mod models;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_commands::store::EventStore;
use voketag_domain::Role;
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_platform::redis::RedisPool;
use voketag_platform::{Settings, db, redis};
use voketag_schemas::EventMetadata;

/// The server every test database lives on (`VOKETAG_TEST_DATABASE_URL` overrides).
pub fn admin_database_url() -> String {
    std::env::var("VOKETAG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("VOKETAG_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis pool for the test's own reads and writes, which may wait: the project's pool gives
/// up on a command after 500 ms (the scan path wants that), a busy test machine may not
/// answer that fast, and a test that checks models must not fail for it.
pub async fn patient_redis() -> RedisPool {
    use fred::prelude::{Builder, ClientLike, Config};
    let pool = Builder::from_config(Config::from_url(&redis_url()).expect("a Redis URL"))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(30))
        .build_pool(4)
        .expect("a Redis pool");
    pool.init().await.expect("connect to Redis");
    pool
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("vt_test_{}", Uuid::new_v4().simple());
        let mut settings = Settings {
            database_url: admin_database_url(),
            ..Settings::default()
        };
        settings.database_url = settings.database_url_for(&name);
        db::ensure_database(&settings.database_url)
            .await
            .expect("create the test database");
        let pool = db::connect_url(&settings.database_url, 10)
            .await
            .expect("connect to the test database");
        db::migrate(&pool).await.expect("migrate the test database");
        TestDb {
            name,
            url: settings.database_url,
            pool,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The pool belongs to the test's runtime, which this drop blocks: it is not closed
        // here; FORCE ends its connections.
        on_own_runtime(async move {
            if let Ok(admin) = db::connect_url(&admin_database_url(), 1).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        });
    }
}

/// Runs `work` to its end on a thread with a runtime of its own, and waits for it: async
/// clean-up in `Drop`, where the test's runtime cannot be used (it may be the one blocked).
fn on_own_runtime(work: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db: TestDb,
    pub redis: RedisPool,
    pub settings: Settings,
    pub idp: DevIdp,
    pub http: reqwest::Client,
    /// The app's Redis keys go when it does.
    _keys: DropPrefix,
}

/// Redis prefixes of tests start so; only such a prefix is deleted by [`DropPrefix`].
const TEST_PREFIX: &str = "vt:test:";

/// Deletes every Redis key under its prefix when dropped, also when the test failed, the
/// way [`TestDb`] drops its database. Only a test prefix (`vt:test:<something>`) is ever
/// deleted.
pub struct DropPrefix {
    url: String,
    prefix: String,
}

impl DropPrefix {
    pub fn new(url: &str, prefix: &str) -> DropPrefix {
        DropPrefix {
            url: url.to_string(),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for DropPrefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        if !prefix.starts_with(TEST_PREFIX) || prefix.len() == TEST_PREFIX.len() {
            return;
        }
        on_own_runtime(async move {
            if let Ok(redis) = redis::connect_url(&url).await {
                let _ = redis::delete_prefix(&redis, &prefix).await;
                let _ = fred::interfaces::ClientLike::quit(&redis).await;
            }
        });
    }
}

/// A new test prefix: `vt:test:<random>:`.
pub fn test_prefix() -> String {
    format!("{TEST_PREFIX}{}:", Uuid::new_v4().simple())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    voketag_platform::telemetry::init_for_tests();
    let db = TestDb::new().await;
    let mut settings = Settings {
        database_url: db.url.clone(),
        redis_url: redis_url(),
        redis_prefix: test_prefix(),
        factory_addr: "127.0.0.1:0".parse().expect("a literal address"),
        db_max_connections: 10,
        ..Settings::default()
    };
    configure(&mut settings);
    let redis = redis::connect(&settings).await.expect("connect to Redis");
    let app = voketag_commands::api::build_with(settings.clone(), db.pool.clone(), redis.clone())
        .await
        .expect("build the factory API");
    let addr = app.local_addr().expect("bound address");
    tokio::spawn(app.run_until_stopped());
    let idp = DevIdp::load_or_create(
        &db.pool,
        settings.jwt_issuer.clone(),
        settings.jwt_audience.clone(),
    )
    .await
    .expect("dev identity provider");
    TestApp {
        _keys: DropPrefix::new(&settings.redis_url, &settings.redis_prefix),
        addr,
        base: format!("http://{addr}"),
        db,
        redis,
        settings,
        idp,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client"),
    }
}

/// A response read whole: status, headers and the body as JSON (or as a JSON string when
/// it is not JSON; `null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error envelope's code, or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Who sends a request.
#[derive(Debug, Clone)]
pub enum As {
    Nobody,
    Token(String),
    ApiKey(String),
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub fn store(&self) -> EventStore {
        EventStore::new(self.db.pool.clone())
    }

    /// Registers a factory directly through the event store.
    pub async fn factory(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        self.store()
            .execute::<Factory>(
                &id.to_string(),
                FactoryCommand::RegisterFactory { name: name.into() },
                &EventMetadata {
                    actor: "test".into(),
                    factory_id: id.to_string(),
                    ..EventMetadata::default()
                },
                None,
            )
            .await
            .expect("register factory");
        id
    }

    pub fn token(&self, factory: Uuid, role: Role) -> As {
        As::Token(
            self.idp
                .mint(
                    &format!("{role}-user"),
                    factory,
                    role,
                    Duration::from_secs(3600),
                )
                .expect("mint a token"),
        )
    }

    pub fn request(&self, method: Method, path: &str, who: &As) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match who {
            As::Nobody => r,
            As::Token(t) => r.bearer_auth(t),
            As::ApiKey(k) => r.header("x-api-key", k),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        who: &As,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.request(method, path, who);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let a = Answer::read(r.send().await.expect("request sent")).await;
        (a.status, a.body)
    }

    pub async fn get(&self, path: &str, who: &As) -> (StatusCode, Value) {
        self.send(Method::GET, path, who, None).await
    }

    pub async fn post(&self, path: &str, who: &As, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, who, Some(body)).await
    }

    /// A product through the API; returns its id.
    pub async fn product(&self, who: &As, gtin: &str) -> Uuid {
        let (status, body) = self
            .post(
                "/v1/products",
                who,
                serde_json::json!({"gtin": gtin, "name": "Serum", "brand": "Acme", "intended_markets": ["BR", "US"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id_of(&body)
    }

    /// A draft batch through the API; returns its id.
    pub async fn batch(&self, who: &As, product: Uuid, lot: &str) -> Uuid {
        let (status, body) = self
            .post(
                "/v1/batches",
                who,
                serde_json::json!({"product_id": product, "lot": lot, "production_date": "2026-11-01"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id_of(&body)
    }

    /// Uploads a CSV; returns the status and body of the answer.
    pub async fn upload(
        &self,
        who: &As,
        batch: Uuid,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let response = self
            .request(Method::POST, &format!("/v1/batches/{batch}/imports"), who)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("upload sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs the imports worker until nothing is pending.
    pub async fn drain_imports(&self) {
        voketag_workers::imports::ImportWorker::new(self.db.pool.clone())
            .drain()
            .await
            .expect("imports worker pass");
    }
}

pub fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {body}"))
}

/// Where a spawned `voketag` process writes its logs: the test's own stderr when `TEST_LOG`
/// is set, nowhere otherwise.
pub fn child_stderr() -> std::process::Stdio {
    if std::env::var_os("TEST_LOG").is_some() {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// The path of the `voketag` binary built next to this test binary.
pub fn voketag_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/voketag
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let bin = dir.join("voketag");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p voketag-deploy`; the test command does)",
        bin.display()
    );
    bin
}

/// A Redis server of the test's own, to stop and start without touching the shared one.
pub struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("voketag-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory for Redis");
        let mut r = OwnRedis {
            port,
            dir,
            child: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (deploy/local/services installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port).await {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a
    /// hung server; [`thaw`](Self::thaw) resumes it with its data.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").await.is_ok()
        && s.read_exact(&mut buf).await.is_ok()
        && &buf == b"+PONG\r\n"
}

/// Where the Pub/Sub emulator answers (`deploy/local/pubsub-emulator`).
pub const PUBSUB_ENDPOINT: &str = "http://127.0.0.1:8085";

/// The Pub/Sub emulator's address (Google's `pstest`, served by
/// `deploy/local/pubsub-emulator`), started unless it answers already (the script is
/// idempotent).
pub fn pubsub_emulator() -> &'static str {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/local/pubsub-emulator");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .expect("running deploy/local/pubsub-emulator");
        assert!(
            out.status.success(),
            "deploy/local/pubsub-emulator failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    PUBSUB_ENDPOINT
}

/// The `voketag` binary with the settings of a test (database, Redis and its prefix), logs
/// at `warn`.
pub fn voketag_command(settings: &Settings) -> std::process::Command {
    let mut c = std::process::Command::new(voketag_binary());
    c.env("VOKETAG_DATABASE_URL", &settings.database_url)
        .env("VOKETAG_REDIS_URL", &settings.redis_url)
        .env("VOKETAG_REDIS_PREFIX", &settings.redis_prefix)
        .env("VOKETAG_LOG_FILTER", "warn");
    c
}

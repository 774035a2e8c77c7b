//! The whole system through `voketag up`: factory commands and CSV imports become events,
//! the relay and projectors make every tag scannable, the scan API falls back to Postgres
//! when Redis loses its data, `voketag replay redis` rebuilds it, and a SIGKILL of the
//! whole process loses nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_domain::Role;
use voketag_tests::{TestDb, child_stderr, voketag_binary};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `voketag up` process on its own database, Redis prefix and ports.
struct Up {
    db: TestDb,
    prefix: String,
    factory: String,
    scan: String,
    ports: (u16, u16, u16),
    child: Option<Child>,
    http: reqwest::Client,
    /// More settings, e.g. the Pub/Sub bus.
    env: Vec<(String, String)>,
    /// The system's Redis keys go with it.
    _keys: voketag_tests::DropPrefix,
}

impl Up {
    async fn start() -> Up {
        let mut up = Up::new(TestDb::new().await);
        up.spawn().await;
        up
    }

    /// Not started yet: its own Redis prefix and free ports, on `db`.
    fn new(db: TestDb) -> Up {
        let ports = (free_port(), free_port(), free_port());
        let prefix = voketag_tests::test_prefix();
        Up {
            _keys: voketag_tests::DropPrefix::new(&voketag_tests::redis_url(), &prefix),
            db,
            prefix,
            factory: format!("http://127.0.0.1:{}", ports.0),
            scan: format!("http://127.0.0.1:{}", ports.1),
            ports,
            child: None,
            env: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(voketag_binary());
        c.args(args)
            .env("VOKETAG_DATABASE_URL", &self.db.url)
            .env("VOKETAG_REDIS_URL", voketag_tests::redis_url())
            .env("VOKETAG_REDIS_PREFIX", &self.prefix)
            .env(
                "VOKETAG_FACTORY_ADDR",
                format!("127.0.0.1:{}", self.ports.0),
            )
            .env("VOKETAG_SCAN_ADDR", format!("127.0.0.1:{}", self.ports.1))
            .env("VOKETAG_ADMIN_ADDR", format!("127.0.0.1:{}", self.ports.2))
            .env("VOKETAG_LOG_FILTER", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    async fn spawn(&mut self) {
        let child = self
            .command(&["up"])
            .stdout(Stdio::null())
            .stderr(child_stderr())
            .spawn()
            .expect("start `voketag up`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .http
                .get(format!("{}/v1/ready", self.scan))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`voketag up` did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL voketag up");
            let _ = c.wait();
        }
    }

    async fn token(&self, factory: Uuid, role: Role) -> String {
        DevIdp::load_or_create(&self.db.pool, "voketag-dev".into(), "voketag".into())
            .await
            .expect("dev identity provider")
            .mint("pipeline-test", factory, role, Duration::from_secs(3600))
            .expect("token")
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.factory))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn scan(&self, tag: Uuid) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/scan/{tag}", self.scan))
            .send()
            .await
            .expect("scan");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("scan json")
    }

    /// Scans `tag` until `check` holds (the projection is eventually consistent).
    async fn scan_until(&self, tag: Uuid, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.scan(tag).await;
            if check(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{what}: last answer {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the relay has published every stored event; on the in-process bus that
    /// means every projector applied it (ADR 0005).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events e
                                 WHERE NOT EXISTS (SELECT 1 FROM relay_checkpoints c
                                                    WHERE (e.tx_id, e.global_position) <= (c.tx_id, c.position)))",
            )
            .fetch_one(&self.db.pool)
            .await
            .expect("relay progress");
            if !behind {
                return;
            }
            assert!(Instant::now() < deadline, "the relay did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run voketag")
    }

    async fn flush_redis(&self) {
        use fred::interfaces::KeysInterface;
        use futures::StreamExt;
        let pool = voketag_platform::redis::connect_url(&voketag_tests::redis_url())
            .await
            .expect("redis");
        let keys: Vec<String> = pool
            .next()
            .scan_buffered(format!("{}*", self.prefix), Some(1000), None)
            .filter_map(|k| async move { k.ok().and_then(|k| k.as_str().map(str::to_string)) })
            .collect()
            .await;
        assert!(!keys.is_empty(), "the scan model lives under the prefix");
        for chunk in keys.chunks(500) {
            let _: i64 = pool.del(chunk.to_vec()).await.expect("del");
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A factory with an active batch whose tags came from a CSV import.
async fn seeded(up: &Up, n: usize) -> (String, Uuid, Vec<Uuid>) {
    let admin = up.token(Uuid::nil(), Role::Admin).await;
    let factory = up
        .post(&admin, "/v1/factories", json!({"name": "Acme"}))
        .await;
    let factory_id: Uuid = factory["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("factory id");
    let user = up.token(factory_id, Role::FactoryUser).await;
    let product = up
        .post(
            &user,
            "/v1/products",
            json!({"gtin": "09506000134352", "name": "Serum", "brand": "Acme", "intended_markets": ["BR"]}),
        )
        .await;
    let batch = up
        .post(
            &user,
            "/v1/batches",
            json!({"product_id": product["id"], "lot": "L1", "production_date": "2026-11-01"}),
        )
        .await;
    let batch_id: Uuid = batch["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("batch id");
    up.post(
        &user,
        &format!("/v1/batches/{batch_id}/activate"),
        json!(null),
    )
    .await;
    let tags: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let csv: String = std::iter::once("tag_id".to_string())
        .chain(tags.iter().map(Uuid::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    let r = up
        .http
        .post(format!("{}/v1/batches/{batch_id}/imports", up.factory))
        .bearer_auth(&user)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let import: Value = r.json().await.expect("import");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = up
            .http
            .get(format!(
                "{}/v1/imports/{}",
                up.factory,
                import["id"].as_str().unwrap_or("")
            ))
            .bearer_auth(&user)
            .send()
            .await
            .expect("import status")
            .json()
            .await
            .expect("json");
        if status["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline && status["status"] != "rejected",
            "{status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (user, batch_id, tags)
}

#[tokio::test]
async fn imported_tags_become_scannable_and_survive_the_loss_of_redis() {
    let up = Up::start().await;
    let (user, batch_id, tags) = seeded(&up, 3_000).await;

    // Every imported tag answers authentic from the cache (a sample of 300 scanned).
    for tag in tags.iter().step_by(10) {
        let answer = up
            .scan_until(*tag, "tag becomes scannable from the cache", |a| {
                a["verdict"] == "authentic" && a["source"] == "cache"
            })
            .await;
        assert_eq!(answer["source"], "cache", "{answer}");
        assert_eq!(answer["batch"]["batch_id"], batch_id.to_string());
    }
    // A recall reaches the scan answer.
    up.post(
        &user,
        &format!("/v1/batches/{batch_id}/recall"),
        json!({"reason": "contamination"}),
    )
    .await;
    let recalled = up
        .scan_until(tags[0], "recall visible", |a| a["verdict"] == "revoked")
        .await;
    assert!(
        recalled["reasons"].to_string().contains("batch_recalled"),
        "{recalled}"
    );

    // Redis loses everything: answers come from Postgres, the same verdicts.
    up.flush_redis().await;
    let from_db = up.scan(tags[1]).await;
    assert_eq!(from_db["source"], "database", "{from_db}");
    assert_eq!(from_db["verdict"], "revoked");

    // The replay rebuilds Redis from the event store, and Redis answers again.
    let replay = up.run(&["replay", "redis"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    for tag in tags.iter().step_by(100) {
        let answer = up.scan(*tag).await;
        assert_eq!(answer["source"], "cache", "{answer}");
        assert_eq!(answer["verdict"], "revoked", "{answer}");
    }
    // Let the scans worker record the scans and the views catch up: then they agree.
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.settle().await;
    let verify = up.run(&["replay", "redis", "--verify"]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test]
async fn voketag_up_runs_every_role_over_pubsub() {
    let endpoint = voketag_tests::pubsub_emulator();
    let mut up = Up::new(TestDb::new().await);
    up.env = vec![
        ("VOKETAG_BUS".into(), "pubsub".into()),
        ("VOKETAG_PUBSUB_ENDPOINT".into(), endpoint.into()),
        (
            "VOKETAG_PUBSUB_PROJECT".into(),
            format!("vt-test-{}", Uuid::new_v4().simple()),
        ),
    ];
    up.spawn().await;
    let (_, batch_id, tags) = seeded(&up, 200).await;
    for tag in tags.iter().step_by(20) {
        up.scan_until(*tag, "scannable from the cache over Pub/Sub", |a| {
            a["verdict"] == "authentic" && a["source"] == "cache"
        })
        .await;
    }
    // The scans went out as observations on the scans topic and came back as events.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'ScanLog' AND aggregate_id = $1",
        )
        .bind(batch_id.to_string())
        .fetch_one(&up.db.pool)
        .await
        .expect("scan log");
        if recorded > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no scan was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And every consumer catches up with the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = up.run(&["lag"]);
        let out = String::from_utf8_lossy(&lag.stdout).to_string();
        assert!(lag.status.success(), "{out}");
        let caught_up = out
            .lines()
            .filter(|l| l.starts_with("relay") || l.starts_with("projector-"))
            .all(|l| l.split_whitespace().nth(1) == Some("0"));
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "still behind:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.kill();
}

#[tokio::test]
async fn a_sigkill_of_the_whole_system_loses_nothing_and_applies_nothing_twice() {
    let mut up = Up::start().await;
    let (user, _, tags) = seeded(&up, 500).await;
    // Commands keep arriving while the process is killed and restarted, twice.
    let mut revoked = Vec::new();
    for (round, chunk) in tags.chunks(20).take(4).enumerate() {
        for tag in chunk.iter().take(5) {
            up.post(
                &user,
                &format!("/v1/tags/{tag}/revoke"),
                json!({"reason": "stolen"}),
            )
            .await;
            revoked.push(*tag);
        }
        if round % 2 == 0 {
            up.kill();
            up.spawn().await;
        }
    }
    for tag in &revoked {
        up.scan_until(*tag, "revocation applied after restarts", |a| {
            a["verdict"] == "revoked"
        })
        .await;
    }
    for tag in tags.iter().skip(100).step_by(25) {
        let a = up.scan(*tag).await;
        assert_eq!(a["verdict"], "authentic", "{a}");
    }
    // Nothing parked, each event applied once: Redis and the views agree tag by tag.
    up.settle().await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(&up.db.pool)
        .await
        .expect("parked");
    assert_eq!(parked, 0);
    let views: i64 = sqlx::query_scalar("SELECT count(*) FROM view_tags")
        .fetch_one(&up.db.pool)
        .await
        .expect("view tags");
    assert_eq!(views, tags.len() as i64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.settle().await;
    let verify = up.run(&["replay", "redis", "--verify"]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A Postgres server of this test's own, so that it can be stopped without touching the
/// one every other test uses. Run as the `postgres` user when the test runs as root.
struct OwnPostgres {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn as_owner(&self, command: &str) -> std::process::Output {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut c = if root {
            let mut c = Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c", command]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", command]);
            c
        };
        c.output().expect("run a Postgres tool")
    }

    fn start_new() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .max()
            .expect("a PostgreSQL version");
        let dir = std::env::temp_dir().join(format!("vt-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("data directory");
        let pg = OwnPostgres {
            dir,
            bin,
            port: free_port(),
        };
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&pg.dir)
            .output();
        let init = pg.as_owner(&format!(
            "{}/initdb -D {}/data -A trust -U postgres >/dev/null",
            pg.bin.display(),
            pg.dir.display()
        ));
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        pg.start();
        pg
    }

    fn start(&self) {
        let out = self.as_owner(&format!(
            "{}/pg_ctl -D {d}/data -o '-p {} -k {d} -c listen_addresses=127.0.0.1' -l {d}/log -w start >/dev/null",
            self.bin.display(),
            self.port,
            d = self.dir.display()
        ));
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let out = self.as_owner(&format!(
            "{}/pg_ctl -D {}/data -m immediate -w stop >/dev/null",
            self.bin.display(),
            self.dir.display()
        ));
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.as_owner(&format!(
            "{}/pg_ctl -D {}/data -m immediate stop >/dev/null 2>&1",
            self.bin.display(),
            self.dir.display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_postgres_down_cached_tags_still_scan_and_commands_answer_503() {
    let pg = OwnPostgres::start_new();
    let url = pg.url("voketag");
    voketag_platform::db::ensure_database(&url)
        .await
        .expect("database");
    let pool = voketag_platform::db::connect_url(&url, 4)
        .await
        .expect("connect");
    voketag_platform::db::migrate(&pool).await.expect("migrate");
    let mut up = Up::new(TestDb::new().await);
    // This test's `voketag up` runs on its own Postgres; the harness database stays unused.
    up.db.url = url.clone();
    up.db.pool = pool;
    up.spawn().await;
    let (user, _, tags) = seeded(&up, 50).await;
    for tag in &tags[..5] {
        up.scan_until(*tag, "cached", |a| {
            a["verdict"] == "authentic" && a["source"] == "cache"
        })
        .await;
    }

    pg.stop();
    for tag in &tags[..5] {
        let a = up.scan(*tag).await;
        assert_eq!(
            (a["verdict"].as_str(), a["source"].as_str()),
            (Some("authentic"), Some("cache")),
            "{a}"
        );
    }
    let r = up
        .http
        .post(format!("{}/v1/products", up.factory))
        .bearer_auth(&user)
        .json(&json!({"gtin": "96385074", "name": "N", "brand": "B", "intended_markets": ["BR"]}))
        .send()
        .await
        .expect("command sent");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.expect("envelope");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    pg.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = up
            .http
            .post(format!("{}/v1/products", up.factory))
            .bearer_auth(&user)
            .json(
                &json!({"gtin": "96385074", "name": "N", "brand": "B", "intended_markets": ["BR"]}),
            )
            .send()
            .await
            .expect("command sent");
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commands did not recover: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.kill();
}

#[tokio::test]
async fn a_replay_that_cannot_read_an_event_fails_and_leaves_the_old_keyspace_serving() {
    let up = Up::start().await;
    let (_, _, tags) = seeded(&up, 20).await;
    up.scan_until(tags[0], "cached", |a| a["source"] == "cache")
        .await;
    let redis = voketag_platform::redis::connect_url(&voketag_tests::redis_url())
        .await
        .expect("redis");
    let pointer = format!("{}scan:active", up.prefix);
    use fred::interfaces::KeysInterface;
    let before: Option<String> = redis.get(&pointer).await.expect("pointer");

    // An event no model can read (events are append-only; this is what a bad deploy or a
    // hand-written fix could leave behind).
    let broken = Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Batch', $1, 1, 'BatchCreated', '1', '{\"BatchCreated\": 42}', '{}')",
    )
    .bind(&broken)
    .execute(&up.db.pool)
    .await
    .expect("insert a broken event");
    // Readers of the store see an event once no older transaction anywhere in the cluster
    // is still open (ADR 0004); other tests' transactions may hold that back a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let settled: bool = sqlx::query_scalar(
            "SELECT tx_id < pg_snapshot_xmin(pg_current_snapshot()) FROM events WHERE aggregate_id = $1",
        )
        .bind(&broken)
        .fetch_one(&up.db.pool)
        .await
        .expect("horizon");
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken event never became final"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let replay = up.run(&["replay", "redis"]);
    assert!(!replay.status.success(), "the replay must fail");
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(
        stderr.contains("position"),
        "the error names the event: {stderr}"
    );
    let after: Option<String> = redis.get(&pointer).await.expect("pointer");
    assert_eq!(before, after, "the old keyspace is still the active one");
    let a = up.scan(tags[1]).await;
    assert_eq!(
        (a["verdict"].as_str(), a["source"].as_str()),
        (Some("authentic"), Some("cache")),
        "{a}"
    );
}

//! Benchmarks (see README): each prints its figure next to a raw baseline measured in
//! the same run on the same machine, and the ratio between them.
//!
//! Every run creates a throwaway database on the server of `VOKETAG_DATABASE_URL`
//! (`voketag_bench_<random>`), migrates it, starts the real factory API in-process on
//! 127.0.0.1:0 with a Redis key prefix of its own, and drops the database at the end, also
//! when the benchmark fails or is interrupted (Ctrl-C, SIGTERM).
//!
//! * `voketag bench import --rows N [--runs R]`: a CSV of N tags uploaded over HTTP and
//!   issued by the imports worker, against `COPY ... FROM STDIN` of the same bytes into a
//!   bare table; R runs, each in a throwaway database, and their median ratio.
//! * `voketag bench commands --clients C --seconds D`: C concurrent HTTP clients registering
//!   products, against C concurrent connections doing one-row INSERT transactions.
//! * `voketag bench scan --concurrency C --seconds D`: the scan API on a Redis hit, against an
//!   axum server doing one Redis GET per request; then its latency at half its peak rate.
//! * `voketag bench fallback`: the scan API with Redis down (Postgres views), against an axum
//!   server doing one primary-key SELECT per request.
//! * `voketag bench replay --tags N`: the Redis scan model rebuilt from the event store,
//!   against N keys written with plain Redis pipelines; Redis bytes per tag.
//! * `voketag bench lag --events N`: commit → visible in Redis through relay and projector.
//! * `voketag bench bus --events N`: events/s from the store to both read models over Google
//!   Pub/Sub (the emulator at `VOKETAG_PUBSUB_ENDPOINT`, default 127.0.0.1:8085) against the
//!   in-process bus, and against applying the same events directly, without a bus.
//!
//! The read-side benchmarks also delete their Redis keys (a prefix of their own) at the end,
//! and `replay`/`fallback` run a private `redis-server` on a free port, stopped at the end.

use anyhow::{Context, anyhow, bail, ensure};
use axum::extract::Path;
use axum::response::IntoResponse;
use bytes::Bytes;
use clap::Subcommand;
use cqrs_es::DomainEvent;
use fred::interfaces::{ClientLike, KeysInterface, ServerInterface};
use fred::types::Value as RedisValue;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_commands::store::EventStore;
use voketag_domain::batch::{Batch, BatchCommand, BatchEvent, IssuedTag, NewBatch};
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_domain::product::{NewProduct, Product, ProductCommand, ProductEvent};
use voketag_domain::scan::{ScanLog, ScanLogCommand, ScanRecord};
use voketag_domain::{Gtin, Market};
use voketag_domain::{MAX_TAGS_PER_EVENT, Role};
use voketag_platform::bus::pubsub::{PubSubBus, PubSubConfig};
use voketag_platform::bus::{Bus, InProcBus};
use voketag_platform::redis::RedisPool;
use voketag_platform::{Settings, db, redis, telemetry};
use voketag_projections::{Applied, PgViews, RedisScanModel};
use voketag_schemas::EventMetadata;
use voketag_schemas::bus::{EVENTS_TOPIC, EventEnvelope, SCANS_TOPIC};
use voketag_workers::events::{COLUMNS, StoredEvent};
use voketag_workers::imports::ImportWorker;
use voketag_workers::projector::{Model, Projector};
use voketag_workers::relay::Relay;

#[derive(Subcommand, Clone)]
pub enum BenchCommand {
    /// A CSV of N tags from upload to events committed, against a raw COPY of the same rows.
    Import {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Runs, each in a database of its own; with more than one, the median ratio too
        /// (one run's ratio varies by ±10 % on a busy machine).
        #[arg(long, default_value_t = 1)]
        runs: u32,
    },
    /// Concurrent single-event commands (POST /v1/products) against one-row INSERT transactions.
    Commands {
        /// Concurrent clients (HTTP clients for VokeTag, connections for the baseline).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Measured seconds of each side, after the warm-up.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of warm-up before each side's measurement, not counted.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Scans/s on a cache hit (GET /v1/scan/{id} served from Redis) against an axum server
    /// doing one Redis GET per request; then our latency at half our peak rate.
    Scan {
        #[command(flatten)]
        load: ReadLoad,
    },
    /// Scans/s with Redis down (answered from the Postgres views) against an axum server doing
    /// one primary-key SELECT per request.
    Fallback {
        #[command(flatten)]
        load: ReadLoad,
    },
    /// Rebuilding the Redis scan model from N issued tags (`voketag replay redis`) against
    /// writing N keys with plain Redis pipelines; Redis bytes per tag.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        tags: u64,
    },
    /// Event commit → visible in Redis, through the relay and the Redis projector.
    Lag {
        /// Commands (tag revocations) committed one by one, each waited for in Redis.
        #[arg(long, default_value_t = 2000)]
        events: u64,
    },
    /// Events/s from committed in the store to applied in both read models (relay and both
    /// projectors) over Google Pub/Sub (the emulator) against the in-process bus, and against
    /// applying the same events in order directly, without a bus.
    Bus {
        /// Events in the store, over all aggregates.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Batches the events are spread over (each with its factory, product and scan log).
        #[arg(long, default_value_t = 100)]
        batches: u64,
    },
}

/// The load of the scan benchmarks.
#[derive(clap::Args, Clone, Copy)]
pub struct ReadLoad {
    /// Measured seconds of each side, after the warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive HTTP/1.1 clients (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tags in the read models (and rows/keys of the baseline); each request picks one at random.
    #[arg(long, default_value_t = 10_000)]
    tags: u64,
    /// Seconds of warm-up before each side's measurement, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

impl ReadLoad {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        ensure!(self.seconds >= 1, "--seconds must be at least 1");
        ensure!(self.tags >= 1, "--tags must be at least 1");
        ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must be a non-negative number of seconds"
        );
        Ok(())
    }
}

pub async fn run(mut settings: Settings, bench: BenchCommand) -> anyhow::Result<()> {
    // The servers under test log at `warn` unless told otherwise: the raw baselines log
    // nothing, and an access log line per request would measure the log writer instead.
    if std::env::var_os("VOKETAG_LOG_FILTER").is_none() {
        settings.log_filter = "warn".into();
    }
    telemetry::init("bench", &settings);
    match &bench {
        BenchCommand::Import { rows, runs } => {
            ensure!(*rows >= 1, "--rows must be at least 1");
            ensure!(*runs >= 1, "--runs must be at least 1");
        }
        BenchCommand::Commands {
            clients,
            seconds,
            warmup,
        } => {
            ensure!(*clients >= 1, "--clients must be at least 1");
            ensure!(*seconds >= 1, "--seconds must be at least 1");
            ensure!(
                warmup.is_finite() && *warmup >= 0.0,
                "--warmup must be a non-negative number of seconds"
            );
        }
        BenchCommand::Scan { load } | BenchCommand::Fallback { load } => load.check()?,
        BenchCommand::Replay { tags } => ensure!(*tags >= 1, "--tags must be at least 1"),
        BenchCommand::Lag { events } => ensure!(*events >= 1, "--events must be at least 1"),
        BenchCommand::Bus { events, batches } => {
            ensure!(*batches >= 1, "--batches must be at least 1");
            ensure!(
                *events >= 10 * batches,
                "--events must be at least 10 per batch ({})",
                10 * batches
            );
        }
    }
    let runs = match bench {
        BenchCommand::Import { runs, .. } => runs,
        _ => 1,
    };
    let mut ratios = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            println!("run {run} of {runs}");
        }
        ratios.extend(in_throwaway_database(settings.clone(), bench.clone()).await?);
    }
    if ratios.len() > 1 {
        ratios.sort_by(f64::total_cmp);
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        line(
            IMPORT_LABELS,
            "median ratio",
            format_args!(
                "{:>6.2}× the raw COPY over {} runs (sorted: {})",
                median(&ratios),
                ratios.len(),
                listed.join(", ")
            ),
        );
    }
    Ok(())
}

/// The middle of sorted figures (the mean of the two middle ones for an even count).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs `bench` once in a database of its own, dropped at the end with the bench's Redis
/// keys; gives the import benchmark's ratio.
async fn in_throwaway_database(
    settings: Settings,
    bench: BenchCommand,
) -> anyhow::Result<Option<f64>> {
    let name = format!("voketag_bench_{}", Uuid::new_v4().simple());
    let db_url = settings.database_url_for(&name);
    let admin_url = settings.database_url_for("postgres");
    // A URL database_url_for could not rewrite would point at the real database: refuse.
    let named = PgConnectOptions::from_str(&db_url)
        .context("VOKETAG_DATABASE_URL is not a usable Postgres URL")?
        .get_database()
        .map(str::to_string);
    ensure!(
        named.as_deref() == Some(name.as_str()),
        "cannot derive a throwaway database name from VOKETAG_DATABASE_URL (got {:?})",
        named
    );
    let bench_settings = Settings {
        database_url: db_url,
        redis_prefix: format!(
            "{}bench:{}:",
            settings.redis_prefix,
            Uuid::new_v4().simple()
        ),
        factory_addr: "127.0.0.1:0".parse().context("a literal address")?,
        // Tokens are minted by the development identity provider of the bench database.
        jwks_url: None,
        ..settings
    };

    let (redis_url, redis_prefix) = (
        bench_settings.redis_url.clone(),
        bench_settings.redis_prefix.clone(),
    );
    let outcome = tokio::select! {
        r = run_bench(bench_settings, &name, bench) => r,
        () = voketag_platform::shutdown_signal() => Err(anyhow!("interrupted")),
    };
    // Best effort, like the database: the bench's keys go too.
    if let Err(e) = delete_prefix_at(&redis_url, &redis_prefix).await {
        eprintln!(
            "voketag bench: deleting the Redis keys {redis_prefix}*: {e:#}; delete them by hand"
        );
    }
    let dropped = drop_database(&admin_url, &name).await;
    match (outcome, dropped) {
        (Ok(ratio), Ok(())) => Ok(ratio),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => {
            eprintln!("voketag bench: {d:#}");
            Err(e)
        }
    }
}

async fn run_bench(
    settings: Settings,
    name: &str,
    bench: BenchCommand,
) -> anyhow::Result<Option<f64>> {
    db::ensure_database(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "creating the bench database {name} (is Postgres up, VOKETAG_DATABASE_URL right?)"
            )
        })?;
    let done = match bench {
        BenchCommand::Import { rows, .. } => return import(settings, rows).await.map(Some),
        BenchCommand::Commands {
            clients,
            seconds,
            warmup,
        } => {
            commands(
                settings,
                clients,
                Duration::from_secs(seconds),
                Duration::from_secs_f64(warmup),
            )
            .await
        }
        BenchCommand::Scan { load } => scan(settings, load).await,
        BenchCommand::Fallback { load } => fallback(settings, load).await,
        BenchCommand::Replay { tags } => replay(settings, tags).await,
        BenchCommand::Lag { events } => lag(settings, events).await,
        BenchCommand::Bus { events, batches } => bus(settings, events, batches).await,
    };
    done.map(|()| None)
}

/// Best effort: the bench database goes, whatever still holds connections to it.
async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = db::connect_url(admin_url, 1).await.with_context(|| {
        format!("connecting to the `postgres` database to drop {name}; drop it by hand")
    })?;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .with_context(|| format!("dropping the bench database {name}; drop it by hand"));
    admin.close().await;
    dropped.map(|_| ())
}

/// Aborts the task when dropped, so a failing benchmark leaves no server behind.
struct AbortOnDrop(JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The factory API serving the bench database, a registered factory and a token for it.
struct Harness {
    url: String,
    pool: PgPool,
    base: String,
    addr: std::net::SocketAddr,
    token: String,
    factory: Uuid,
    _server: AbortOnDrop,
}

impl Harness {
    async fn start(settings: Settings) -> anyhow::Result<Harness> {
        let pool = db::connect_url(&settings.database_url, settings.db_max_connections)
            .await
            .context("connecting to the bench database")?;
        db::migrate(&pool)
            .await
            .context("migrating the bench database")?;
        let redis = redis::connect(&settings)
            .await
            .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
        let app = voketag_commands::api::build_with(settings.clone(), pool.clone(), redis)
            .await
            .context("starting the factory API")?;
        let addr = app.local_addr().context("the factory API's address")?;
        let server = AbortOnDrop(tokio::spawn(app.run_until_stopped()));

        let factory = Uuid::now_v7();
        EventStore::new(pool.clone())
            .execute::<Factory>(
                &factory.to_string(),
                FactoryCommand::RegisterFactory {
                    name: "Bench Factory".into(),
                },
                &EventMetadata {
                    actor: "system:bench".into(),
                    factory_id: factory.to_string(),
                    ..EventMetadata::default()
                },
                None,
            )
            .await
            .context("registering the bench factory")?;
        let idp = DevIdp::load_or_create(
            &pool,
            settings.jwt_issuer.clone(),
            settings.jwt_audience.clone(),
        )
        .await
        .context("loading the development identity provider")?;
        let token = idp
            .mint(
                "bench-user",
                factory,
                Role::FactoryUser,
                Duration::from_secs(4 * 3600),
            )
            .context("minting a token")?;
        Ok(Harness {
            url: settings.database_url.clone(),
            pool,
            base: format!("http://{addr}"),
            addr,
            token,
            factory,
            _server: server,
        })
    }

    /// POSTs JSON and returns the body of the expected answer, or fails with what came.
    async fn post_json(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: &Value,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let response = http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        answer(response, &format!("POST {path}"), expected).await
    }

    async fn get_json(&self, http: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let response = http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        answer(response, &format!("GET {path}"), StatusCode::OK).await
    }

    /// A product and a draft batch through the API; returns the batch id.
    async fn batch(&self, http: &reqwest::Client) -> anyhow::Result<Uuid> {
        let product = self
            .post_json(
                http,
                "/v1/products",
                &json!({"gtin": gtin(1), "name": "Bench Serum", "brand": "Acme", "intended_markets": ["BR", "US"]}),
                StatusCode::CREATED,
            )
            .await?;
        let batch = self
            .post_json(
                http,
                "/v1/batches",
                &json!({"product_id": id_of(&product)?, "lot": "BENCH-001", "production_date": "2026-11-01"}),
                StatusCode::CREATED,
            )
            .await?;
        id_of(&batch)
    }

    async fn close(self) {
        drop(self._server);
        self.pool.close().await;
    }
}

async fn answer(
    response: reqwest::Response,
    what: &str,
    expected: StatusCode,
) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the answer to {what}"))?;
    if status != expected {
        bail!(
            "{what} answered {status}, expected {expected}: {}",
            shorten(&text)
        );
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the answer to {what} is not JSON: {}", shorten(&text)))
}

fn id_of(body: &Value) -> anyhow::Result<Uuid> {
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no id in {}", shorten(&body.to_string())))
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 300 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(300).collect::<String>())
    }
}

/// A valid GTIN-14, different for every `n` below 10^12: `9`, `n` in 12 digits, and the
/// GS1 mod-10 check digit (weights 3 and 1 alternating from the rightmost data digit).
fn gtin(n: u64) -> String {
    let data = format!("9{:012}", n % 1_000_000_000_000);
    let sum: u32 = data
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{data}{}", (10 - sum % 10) % 10)
}

/// Width of the label column of each benchmark's report.
const IMPORT_LABELS: usize = 30;
const COMMAND_LABELS: usize = 36;

/// One line of a report: an indented label in a column of `width`, then the figures.
fn line(width: usize, label: &str, figures: std::fmt::Arguments<'_>) {
    println!("  {label:<width$} {figures}");
}

/// The process's peak resident set size, from `VmHWM` in /proc/self/status.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.0} MiB", kb as f64 / 1024.0))
}

fn per_second(n: f64, elapsed: Duration) -> String {
    let r = n / elapsed.as_secs_f64().max(1e-9);
    if r >= 10_000.0 {
        format!("{:.0}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

/// Best effort: a checkpoint before each timed part, so one part does not pay for the
/// dirty pages of the other.
async fn checkpoint(pool: &PgPool) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        tracing::warn!(error = %e, "CHECKPOINT refused; figures may be noisier");
    }
}

// ---------------------------------------------------------------------------------------
// bench import

fn tag_csv(rows: u64) -> Bytes {
    let mut csv = String::with_capacity(16 + rows as usize * 48);
    csv.push_str("tag_id,serial\n");
    for i in 1..=rows {
        // Writing to a String cannot fail.
        let _ = writeln!(csv, "{},SN-{i:07}", Uuid::new_v4());
    }
    Bytes::from(csv)
}

/// One run of the import benchmark; gives its ratio.
async fn import(mut settings: Settings, rows: u64) -> anyhow::Result<f64> {
    let csv = tag_csv(rows);
    // The bench measures the import, not the limits of a particular deployment.
    settings.import_max_bytes = settings.import_max_bytes.max(csv.len() as u64);
    settings.request_timeout_secs = settings.request_timeout_secs.max(600);
    let harness = Harness::start(settings).await?;
    let result = import_with(&harness, csv, rows).await;
    harness.close().await;
    result
}

async fn import_with(h: &Harness, csv: Bytes, rows: u64) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .context("building the HTTP client")?;
    let batch = h.batch(&http).await?;
    println!(
        "import benchmark: {rows} rows ({:.1} MiB)",
        csv.len() as f64 / (1024.0 * 1024.0)
    );

    // Baseline: COPY of the very same bytes into a bare table.
    sqlx::query("CREATE TABLE raw_tags (tag_id uuid, serial text)")
        .execute(&h.pool)
        .await
        .context("creating raw_tags")?;
    checkpoint(&h.pool).await;
    let copy_time = {
        let mut conn = h.pool.acquire().await.context("a connection for COPY")?;
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw("COPY raw_tags (tag_id, serial) FROM STDIN WITH (FORMAT csv, HEADER true)")
            .await
            .context("starting COPY raw_tags")?;
        for piece in csv.chunks(1024 * 1024) {
            copy.send(piece).await.context("sending COPY data")?;
        }
        let copied = copy.finish().await.context("finishing COPY raw_tags")?;
        let elapsed = started.elapsed();
        ensure!(copied == rows, "COPY stored {copied} rows, expected {rows}");
        elapsed
    };
    line(
        IMPORT_LABELS,
        "raw COPY into a bare table",
        format_args!(
            "{:>6.2} s   {} rows/s",
            copy_time.as_secs_f64(),
            per_second(rows as f64, copy_time)
        ),
    );
    sqlx::query("DROP TABLE raw_tags")
        .execute(&h.pool)
        .await
        .context("dropping raw_tags")?;
    checkpoint(&h.pool).await;

    // Ours: upload over HTTP, then the imports worker until the import is finished.
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/batches/{batch}/imports", h.base))
        .bearer_auth(&h.token)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(csv)
        .send()
        .await
        .context("uploading the CSV")?;
    let accepted = answer(response, "the CSV upload", StatusCode::ACCEPTED).await?;
    let upload_time = started.elapsed();
    let import_id = id_of(&accepted)?;
    let finished = ImportWorker::new(h.pool.clone())
        .drain()
        .await
        .context("the imports worker")?;
    let total_time = started.elapsed();
    let process_time = total_time.saturating_sub(upload_time);
    ensure!(
        finished == 1,
        "the imports worker finished {finished} imports, expected 1"
    );

    let import = h
        .get_json(&http, &format!("/v1/imports/{import_id}"))
        .await?;
    ensure!(
        import["status"] == "completed" && import["tags_issued"] == rows,
        "the import is not completed with {rows} tags: {}",
        shorten(&import.to_string())
    );
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM tag_registry")
        .fetch_one(&h.pool)
        .await
        .context("counting tag_registry")?;
    ensure!(
        registered as u64 == rows,
        "tag_registry holds {registered} tags, expected {rows}"
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Batch' AND aggregate_id = $1 AND event_type = 'TagsIssued'",
    )
    .bind(batch.to_string())
    .fetch_one(&h.pool)
    .await
    .context("counting TagsIssued events")?;
    let expected_events = rows.div_ceil(MAX_TAGS_PER_EVENT as u64);
    ensure!(
        events as u64 == expected_events,
        "{events} TagsIssued events, expected {expected_events}"
    );

    line(
        IMPORT_LABELS,
        "VokeTag upload → committed",
        format_args!(
            "{:>6.2} s   {} rows/s  (upload {:.2} s, validate+issue {:.2} s)",
            total_time.as_secs_f64(),
            per_second(rows as f64, total_time),
            upload_time.as_secs_f64(),
            process_time.as_secs_f64()
        ),
    );
    let ratio = total_time.as_secs_f64() / copy_time.as_secs_f64().max(1e-9);
    line(
        IMPORT_LABELS,
        "ratio",
        format_args!("{ratio:>6.2}× the raw COPY (goal ≤ 2×)"),
    );
    line(
        IMPORT_LABELS,
        "checked",
        format_args!(
            "import completed, {registered} tags in tag_registry, {events} TagsIssued events"
        ),
    );
    line(
        IMPORT_LABELS,
        "peak RSS (VmHWM)",
        format_args!("{}", peak_rss().unwrap_or_else(|| "unavailable".into())),
    );
    Ok(ratio)
}

// ---------------------------------------------------------------------------------------
// bench commands

/// When a client measures: operations started at or after `from` and finished by `until`
/// count; none starts after `until`.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn starting_in(warmup: Duration, measured: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            until: from + measured,
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Answers other than the expected one, by kind: how many and the first one's text.
    errors: BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn error(&mut self, kind: String, text: String) {
        self.errors.entry(kind).or_insert((0, text)).0 += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        for (kind, (n, text)) in other.errors {
            self.errors.entry(kind).or_insert((0, text)).0 += n;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    fn rate(&self, measured: Duration) -> f64 {
        self.latencies.len() as f64 / measured.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// One keep-alive HTTP/1.1 connection and nothing else: no pool, no URL parsing, no
/// redirect policy. The commands baseline's client is sqlx on one connection; a load
/// generator as light as that measures our server, not a general-purpose HTTP client.
struct LightClient {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    host: http::HeaderValue,
}

impl LightClient {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<LightClient> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("the HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a bench connection ended");
            }
        });
        Ok(LightClient {
            send,
            host: http::HeaderValue::from_str(&addr.to_string()).context("the host header")?,
        })
    }

    /// POSTs `body` as JSON; the status and the whole answer, within 30 s.
    async fn post_json(
        &mut self,
        path: &str,
        authorization: &http::HeaderValue,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        use http_body_util::BodyExt;
        let request = http::Request::post(path)
            .header(http::header::HOST, self.host.clone())
            .header(http::header::AUTHORIZATION, authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(
                body,
            )?)))
            .context("building the request")?;
        let exchange = async {
            self.send.ready().await.context("the connection")?;
            let response = self.send.send_request(request).await.context("sending")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .context("no answer within 30 s")?
    }
}

async fn join_all(mut tasks: JoinSet<anyhow::Result<Tally>>) -> anyhow::Result<Tally> {
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a benchmark client panicked")??);
    }
    Ok(total)
}

/// A JSON document of about 300 bytes, like a product's registration event.
fn raw_payload(id: Uuid, n: u64) -> String {
    json!({
        "ProductRegistered": {
            "factory_id": id,
            "gtin": gtin(n),
            "name": "Vitamin C Serum 30 ml",
            "brand": "Acme Labs",
            "description": "A raw baseline row: about as large as a product registration event.",
            "intended_markets": ["BR", "US", "PT", "AR"],
            "registered_by": "user:bench-user"
        }
    })
    .to_string()
}

async fn commands(
    mut settings: Settings,
    clients: usize,
    measured: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    // Each request may hold a transaction and load the aggregate on another connection.
    settings.db_max_connections = settings.db_max_connections.max(clients as u32 * 2 + 2);
    let harness = Harness::start(settings).await?;
    let result = commands_with(&harness, clients, measured, warmup).await;
    harness.close().await;
    result
}

async fn commands_with(
    h: &Harness,
    clients: usize,
    measured: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    println!(
        "commands benchmark: {clients} clients, {} s each side (after a {:.1} s warm-up)",
        measured.as_secs(),
        warmup.as_secs_f64()
    );
    let gtins = Arc::new(AtomicU64::new(1_000));

    // Baseline: one-row INSERT transactions, each client on its own connection.
    sqlx::query("CREATE TABLE raw_commands (id uuid PRIMARY KEY, payload json NOT NULL)")
        .execute(&h.pool)
        .await
        .context("creating raw_commands")?;
    let raw_pool = db::connect_url(&h.url, clients as u32)
        .await
        .context("connecting the baseline clients")?;
    checkpoint(&h.pool).await;
    let window = Window::starting_in(warmup, measured);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let pool = raw_pool.clone();
        let gtins = gtins.clone();
        tasks.spawn(async move {
            let mut conn = pool.acquire().await.context("a baseline connection")?;
            let mut tally = Tally::default();
            loop {
                let started = Instant::now();
                if started >= window.until {
                    break;
                }
                let id = Uuid::new_v4();
                let payload = raw_payload(id, gtins.fetch_add(1, Ordering::Relaxed));
                let result =
                    sqlx::query("INSERT INTO raw_commands (id, payload) VALUES ($1, $2::json)")
                        .bind(id)
                        .bind(&payload)
                        .execute(&mut *conn)
                        .await;
                let finished = Instant::now();
                match result {
                    Ok(_) if started >= window.from && finished <= window.until => {
                        tally.latencies.push(finished - started)
                    }
                    Ok(_) => {}
                    Err(e) => tally.error("insert failed".into(), e.to_string()),
                }
            }
            Ok(tally)
        });
    }
    let mut raw = join_all(tasks).await?;
    raw_pool.close().await;
    report_side(
        "raw one-row INSERT per transaction",
        &mut raw,
        measured,
        "inserts",
    );

    // Ours: POST /v1/products over keep-alive HTTP, one connection per client.
    checkpoint(&h.pool).await;
    let authorization = http::HeaderValue::from_str(&format!("Bearer {}", h.token))
        .context("the token as a header")?;
    let window = Window::starting_in(warmup, measured);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let addr = h.addr;
        let mut conn = LightClient::connect(addr).await?;
        let authorization = authorization.clone();
        let gtins = gtins.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let started = Instant::now();
                if started >= window.until {
                    break;
                }
                let body = json!({
                    "gtin": gtin(gtins.fetch_add(1, Ordering::Relaxed)),
                    "name": "Vitamin C Serum 30 ml",
                    "brand": "Acme Labs",
                    "description": "Registered by the commands benchmark.",
                    "intended_markets": ["BR", "US"]
                });
                let result = conn.post_json("/v1/products", &authorization, &body).await;
                let finished = Instant::now();
                let counted = started >= window.from && finished <= window.until;
                match result {
                    Ok((StatusCode::CREATED, _)) => {
                        if counted {
                            tally.latencies.push(finished - started);
                        }
                    }
                    Ok((status, text)) => tally.error(
                        format!("HTTP {status}"),
                        shorten(&String::from_utf8_lossy(&text)),
                    ),
                    Err(e) => {
                        tally.error("request failed".into(), format!("{e:#}"));
                        conn = LightClient::connect(addr).await?;
                    }
                }
            }
            Ok(tally)
        });
    }
    let mut ours = join_all(tasks).await?;
    report_side("VokeTag POST /v1/products", &mut ours, measured, "created");

    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM products WHERE factory_id = $1")
        .bind(h.factory)
        .fetch_one(&h.pool)
        .await
        .context("counting products")?;
    let ratio = ours.rate(measured) / raw.rate(measured).max(1e-9);
    line(
        COMMAND_LABELS,
        "ratio",
        format_args!(
            "{:>7.0} % of the raw inserts/s (goal ≥ 50 %)",
            ratio * 100.0
        ),
    );
    line(
        COMMAND_LABELS,
        "checked",
        format_args!("{created} products stored (warm-up included)"),
    );
    line(
        COMMAND_LABELS,
        "peak RSS (VmHWM)",
        format_args!("{}", peak_rss().unwrap_or_else(|| "unavailable".into())),
    );
    ensure!(
        ours.error_count() == 0 && raw.error_count() == 0,
        "{} requests and {} inserts failed (see above)",
        ours.error_count(),
        raw.error_count()
    );
    Ok(())
}

fn report_side(label: &str, tally: &mut Tally, measured: Duration, what: &str) {
    let rate = tally.rate(measured);
    let p50 = tally.percentile(50.0);
    let p99 = tally.percentile(99.0);
    line(
        COMMAND_LABELS,
        label,
        format_args!(
            "{rate:>7.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} {what}, {} errors)",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            tally.latencies.len(),
            tally.error_count()
        ),
    );
    for (kind, (n, first)) in &tally.errors {
        println!("    {kind} ×{n}, first: {first}");
    }
}

// ---------------------------------------------------------------------------------------
// Read side: shared helpers

/// Width of the label column of the read-side reports.
const READ_LABELS: usize = 40;

/// A product, a batch and its tags, as hand-made events or as commands.
struct Catalog {
    factory: Uuid,
    product: Uuid,
    batch: Uuid,
    tags: Vec<Uuid>,
}

impl Catalog {
    fn new(tags: u64) -> Catalog {
        Catalog {
            factory: Uuid::now_v7(),
            product: Uuid::now_v7(),
            batch: Uuid::now_v7(),
            tags: (0..tags).map(|_| Uuid::new_v4()).collect(),
        }
    }

    fn serial(i: usize) -> String {
        format!("SN-{:07}", i + 1)
    }

    fn markets() -> anyhow::Result<Vec<Market>> {
        Ok(vec![Market::parse("BR")?, Market::parse("US")?])
    }

    fn production_date() -> anyhow::Result<chrono::NaiveDate> {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 1).context("a literal date")
    }

    fn issued(&self, from: usize, tags: &[Uuid]) -> Vec<IssuedTag> {
        tags.iter()
            .enumerate()
            .map(|(i, t)| IssuedTag {
                tag_id: *t,
                serial: Some(Catalog::serial(from + i)),
            })
            .collect()
    }

    /// ProductRegistered; BatchCreated, BatchActivated, then TagsIssued of at most
    /// [`MAX_TAGS_PER_EVENT`] tags: what the relay would deliver to the read models.
    fn envelopes(&self) -> anyhow::Result<Vec<EventEnvelope>> {
        fn event<E: DomainEvent>(
            aggregate: &str,
            id: Uuid,
            sequence: i64,
            event: E,
        ) -> anyhow::Result<EventEnvelope> {
            Ok(EventEnvelope {
                position: 0,
                aggregate_type: aggregate.into(),
                aggregate_id: id.to_string(),
                sequence,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_value(&event)?,
                metadata: HashMap::new(),
                recorded_at: chrono::Utc::now(),
            })
        }
        let mut out = vec![
            event(
                "Product",
                self.product,
                1,
                ProductEvent::ProductRegistered {
                    factory_id: self.factory,
                    gtin: Gtin::parse(&gtin(7))?,
                    name: "Vitamin C Serum 30 ml".into(),
                    brand: "Acme Labs".into(),
                    description: "Seeded by the scan benchmark.".into(),
                    intended_markets: Catalog::markets()?,
                },
            )?,
            event(
                "Batch",
                self.batch,
                1,
                BatchEvent::BatchCreated {
                    factory_id: self.factory,
                    product_id: self.product,
                    lot: "BENCH-001".into(),
                    production_date: Catalog::production_date()?,
                    sell_by: None,
                    intended_markets: Catalog::markets()?,
                },
            )?,
            event("Batch", self.batch, 2, BatchEvent::BatchActivated)?,
        ];
        for (n, chunk) in self.tags.chunks(MAX_TAGS_PER_EVENT).enumerate() {
            out.push(event(
                "Batch",
                self.batch,
                3 + n as i64,
                BatchEvent::TagsIssued {
                    import_id: None,
                    tags: self.issued(n * MAX_TAGS_PER_EVENT, chunk),
                },
            )?);
        }
        Ok(out)
    }

    /// The raw baselines' value of tag `i`: a JSON document shaped (and sized) like the
    /// scan API's answer.
    fn raw_json(&self, i: usize) -> String {
        json!({
            "tag_id": self.tags[i],
            "verdict": "authentic",
            "reasons": [],
            "serial": Catalog::serial(i),
            "product": {"product_id": self.product, "gtin": gtin(7), "name": "Vitamin C Serum 30 ml", "brand": "Acme Labs"},
            "batch": {"batch_id": self.batch, "lot": "BENCH-001", "status": "active", "production_date": "2026-11-01",
                      "sell_by": null, "intended_markets": ["BR", "US"], "recall_reason": null},
            "first_scan_at": "2026-11-25T12:00:00Z",
            "scan_count": 1,
            "first_scan": false,
            "source": "raw",
            "checked_at": "2026-11-25T12:00:00.123456789Z"
        })
        .to_string()
    }

    /// The same product, batch and tags through the event store, as commands (the relay and
    /// the replay read them from there). Tags are issued `per_commit` at a time, in
    /// TagsIssued events of at most [`MAX_TAGS_PER_EVENT`]. Returns the events written.
    async fn store(&self, pool: &PgPool, per_commit: usize) -> anyhow::Result<u64> {
        let store = EventStore::new(pool.clone());
        let meta = EventMetadata {
            actor: "system:bench".into(),
            factory_id: self.factory.to_string(),
            ..EventMetadata::default()
        };
        store
            .execute::<Factory>(
                &self.factory.to_string(),
                FactoryCommand::RegisterFactory {
                    name: "Bench Factory".into(),
                },
                &meta,
                None,
            )
            .await
            .context("registering the bench factory")?;
        store
            .execute::<Product>(
                &self.product.to_string(),
                ProductCommand::RegisterProduct(NewProduct {
                    factory_id: self.factory,
                    gtin: Gtin::parse(&gtin(7))?,
                    name: "Vitamin C Serum 30 ml".into(),
                    brand: "Acme Labs".into(),
                    description: "Seeded by the benchmark.".into(),
                    intended_markets: Catalog::markets()?,
                }),
                &meta,
                None,
            )
            .await
            .context("registering the bench product")?;
        let batch = self.batch.to_string();
        let mut unit = store.begin::<Batch>(&batch, &meta).await?;
        unit.handle(BatchCommand::CreateBatch(NewBatch {
            factory_id: self.factory,
            product_id: self.product,
            product_markets: Catalog::markets()?,
            lot: "BENCH-001".into(),
            production_date: Catalog::production_date()?,
            sell_by: None,
            intended_markets: vec![],
        }))
        .await
        .context("creating the bench batch")?;
        unit.handle(BatchCommand::ActivateBatch)
            .await
            .context("activating the bench batch")?;
        unit.commit().await.context("committing the bench batch")?;
        let mut events = 4;
        for (n, chunk) in self.tags.chunks(per_commit.max(1)).enumerate() {
            let mut unit = store.begin::<Batch>(&batch, &meta).await?;
            let written = unit
                .handle(BatchCommand::IssueTags {
                    import_id: None,
                    tags: self.issued(n * per_commit, chunk),
                })
                .await
                .context("issuing tags")?;
            events += written.len() as u64;
            unit.commit().await.context("committing issued tags")?;
        }
        Ok(events)
    }
}

/// Applies every envelope to the models given, each in order.
async fn apply_all(
    envelopes: &[EventEnvelope],
    redis: Option<&RedisScanModel>,
    views: Option<&PgViews>,
) -> anyhow::Result<()> {
    for e in envelopes {
        let what = || {
            format!(
                "applying {} {} v{}",
                e.aggregate_type, e.event_type, e.sequence
            )
        };
        if let Some(m) = redis {
            let applied = m.apply(e).await.with_context(|| what() + " to Redis")?;
            ensure!(
                applied == Applied::Applied,
                "{}: Redis answered {applied:?}",
                what()
            );
        }
        if let Some(v) = views {
            let applied = v.apply(e).await.with_context(|| what() + " to the views")?;
            ensure!(
                applied == Applied::Applied,
                "{}: the views answered {applied:?}",
                what()
            );
        }
    }
    Ok(())
}

/// Aborts a background task when dropped.
struct Aborting<T>(JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `redis-server` of our own on a free port, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start() -> anyhow::Result<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a private redis-server (is it installed?)")?;
        let mut redis = PrivateRedis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = redis
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the private redis-server on port {port} exited: {status}");
            }
            ensure!(
                Instant::now() < deadline,
                "the private redis-server on port {port} does not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .context("killing the private redis-server")?;
        }
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

async fn delete_prefix_at(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let redis = tokio::time::timeout(Duration::from_secs(5), redis::connect_url(url))
        .await
        .context("connecting timed out")??;
    let removed = redis::delete_prefix(&redis, prefix)
        .await
        .context("deleting the keys");
    let _ = redis.quit().await;
    removed
}

/// `used_memory` of `INFO memory`.
async fn used_memory(redis: &RedisPool) -> anyhow::Result<u64> {
    // Keys deleted with UNLINK are freed in the background: wait until they are.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis
            .info(Some(fred::types::InfoKind::Memory))
            .await
            .context("INFO memory")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("lazyfree_pending_objects:").unwrap_or(0) == 0 || Instant::now() > deadline {
            return field("used_memory:").context("no used_memory in INFO memory");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a timed part's time went: this process's CPU, the Redis server's CPU and the time
/// Redis spent executing commands (`INFO commandstats`, scripts included).
struct Spent {
    own_cpu: Option<f64>,
    redis_cpu: Option<f64>,
    redis_commands: Option<f64>,
}

impl Spent {
    async fn now(redis: &RedisPool) -> Spent {
        let commands = redis
            .info::<String>(Some(fred::types::InfoKind::CommandStats))
            .await
            .ok()
            .map(|info| {
                info.lines()
                    .filter_map(|l| {
                        l.split("usec=")
                            .nth(1)?
                            .split(',')
                            .next()?
                            .parse::<f64>()
                            .ok()
                    })
                    .sum::<f64>()
                    / 1e6
            });
        Spent {
            own_cpu: own_cpu_seconds(),
            redis_cpu: Backend::Redis(redis.clone()).cpu_seconds().await,
            redis_commands: commands,
        }
    }

    /// "this process x s CPU, Redis y s CPU (z s in commands)" since `before`.
    fn since(&self, before: &Spent) -> String {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2} s", a - b),
            _ => "?".into(),
        };
        format!(
            "this process {} CPU, Redis {} CPU ({} executing commands)",
            d(self.own_cpu, before.own_cpu),
            d(self.redis_cpu, before.redis_cpu),
            d(self.redis_commands, before.redis_commands)
        )
    }
}

/// SETs `key_of(i)` to `value_of(i)` for every `i < n` in pipelines of `batch` commands.
async fn pipeline_set(
    redis: &RedisPool,
    n: usize,
    batch: usize,
    key_of: impl Fn(usize) -> String,
    value_of: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let pipeline = redis.next().pipeline();
        for j in i..end {
            let () = pipeline
                .set(key_of(j), value_of(j), None, None, false)
                .await
                .context("queueing SET")?;
        }
        let _: Vec<RedisValue> = pipeline.all().await.context("a SET pipeline")?;
        i = end;
    }
    Ok(())
}

/// A small, fast generator for picking tags (splitmix64).
struct Pick(u64);

impl Pick {
    fn new() -> Pick {
        Pick(Uuid::new_v4().as_u64_pair().0)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

/// What a load generator hits: `{prefix}{tag id}`, and what a good answer contains.
#[derive(Clone)]
struct Target {
    prefix: Arc<str>,
    marker: &'static str,
    tags: Arc<Vec<Uuid>>,
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One GET; `Err((kind, text))` unless it answered 200 with the marker in the body.
async fn fetch(http: &reqwest::Client, url: &str, marker: &str) -> Result<Bytes, (String, String)> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| ("request failed".to_string(), e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ("reading the answer failed".to_string(), e.to_string()))?;
    if status != StatusCode::OK {
        return Err((
            format!("HTTP {status}"),
            shorten(&String::from_utf8_lossy(&body)),
        ));
    }
    if !contains(&body, marker.as_bytes()) {
        return Err((
            format!("answer without {marker}"),
            shorten(&String::from_utf8_lossy(&body)),
        ));
    }
    Ok(body)
}

/// A closed loop: `clients` keep-alive connections, each sending its next request as soon as
/// the previous one is answered, to random tags.
async fn closed_loop(
    target: &Target,
    clients: usize,
    warmup: Duration,
    measured: Duration,
) -> anyhow::Result<Tally> {
    let window = Window::starting_in(warmup, measured);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let http = http_client()?;
        let target = target.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut pick = Pick::new();
            let mut url = String::with_capacity(target.prefix.len() + 36);
            loop {
                let tag = target.tags[pick.below(target.tags.len())];
                url.clear();
                let _ = write!(url, "{}{tag}", target.prefix);
                let started = Instant::now();
                if started >= window.until {
                    break;
                }
                let result = fetch(&http, &url, target.marker).await;
                let finished = Instant::now();
                match result {
                    Ok(_) if started >= window.from && finished <= window.until => {
                        tally.latencies.push(finished - started)
                    }
                    Ok(_) => {}
                    Err((kind, text)) => tally.error(kind, text),
                }
            }
            Ok(tally)
        });
    }
    join_all(tasks).await
}

/// Where a side's answers come from, for CPU accounting.
#[derive(Clone)]
enum Backend {
    /// `INFO cpu` of this Redis (every client of that server counts).
    Redis(RedisPool),
    /// Every process named `postgres` on this machine (every database counts).
    Postgres,
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Redis(_) => "Redis",
            Backend::Postgres => "Postgres",
        }
    }

    /// CPU seconds used so far.
    async fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Backend::Redis(redis) => {
                let info: String = redis.info(Some(fred::types::InfoKind::Cpu)).await.ok()?;
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                };
                Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
            }
            Backend::Postgres => {
                let mut total = 0.0;
                for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                    let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                        continue;
                    };
                    if stat.contains("(postgres)") {
                        total += stat_cpu_seconds(&stat).unwrap_or(0.0);
                    }
                }
                Some(total)
            }
        }
    }
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (USER_HZ = 100 on Linux).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn own_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// One side of a comparison, summed over its rounds.
#[derive(Default)]
struct Side {
    tally: Tally,
    /// Requests/s of each round.
    rounds: Vec<f64>,
    own_cpu: f64,
    backend_cpu: f64,
    /// Some round could not read the backend's CPU.
    backend_unknown: bool,
}

impl Side {
    fn report(&mut self, label: &str, measured: Duration, backend: &Backend) {
        report_read(label, &mut self.tally, measured);
        let n = self.tally.latencies.len().max(1) as f64;
        let backend = if self.backend_unknown {
            String::new()
        } else {
            format!(
                ", {:.1} µs in {}",
                self.backend_cpu * 1e6 / n,
                backend.name()
            )
        };
        line(
            READ_LABELS,
            "",
            format_args!(
                "CPU per answer: {:.0} µs in this process (server + load generator){backend}",
                self.own_cpu * 1e6 / n
            ),
        );
    }
}

/// One closed-loop segment of `target`, with the CPU spent during its measured window.
async fn segment(
    side: &mut Side,
    target: &Target,
    backend: &Backend,
    clients: usize,
    warmup: Duration,
    measured: Duration,
) -> anyhow::Result<()> {
    let from = tokio::time::Instant::now() + warmup;
    let sampler = {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(from).await;
            let before = (own_cpu_seconds(), backend.cpu_seconds().await);
            tokio::time::sleep_until(from + measured).await;
            let after = (own_cpu_seconds(), backend.cpu_seconds().await);
            (before, after)
        })
    };
    let tally = closed_loop(target, clients, warmup, measured).await?;
    let ((own0, back0), (own1, back1)) = sampler.await.context("the CPU sampler panicked")?;
    side.rounds
        .push(tally.latencies.len() as f64 / measured.as_secs_f64());
    side.own_cpu += own1.zip(own0).map_or(0.0, |(b, a)| b - a);
    match back1.zip(back0) {
        Some((b, a)) => side.backend_cpu += b - a,
        None => side.backend_unknown = true,
    }
    side.tally.merge(tally);
    Ok(())
}

/// The raw side and ours in alternating rounds (raw ours, ours raw, …) of about 2 s each,
/// so that whatever else the machine does weighs on both alike. Returns (raw, ours) and the
/// time each was measured.
async fn compare(
    raw: (&Target, &Backend),
    ours: (&Target, &Backend),
    load: &ReadLoad,
) -> anyhow::Result<(Side, Side, Duration)> {
    let rounds = (load.seconds / 2).max(1) as u32;
    let each = Duration::from_secs(load.seconds) / rounds;
    let first_warmup = Duration::from_secs_f64(load.warmup);
    let later_warmup = first_warmup.min(Duration::from_millis(250));
    let (mut a, mut b) = (Side::default(), Side::default());
    for r in 0..rounds {
        let warmup = if r == 0 { first_warmup } else { later_warmup };
        if r % 2 == 0 {
            segment(&mut a, raw.0, raw.1, load.concurrency, warmup, each).await?;
            segment(&mut b, ours.0, ours.1, load.concurrency, warmup, each).await?;
        } else {
            segment(&mut b, ours.0, ours.1, load.concurrency, later_warmup, each).await?;
            segment(&mut a, raw.0, raw.1, load.concurrency, later_warmup, each).await?;
        }
    }
    Ok((a, b, each * rounds))
}

/// The ratio of ours to the raw side's requests/s, with the range of the rounds' ratios.
fn report_ratio(raw: &Side, ours: &Side, measured: Duration, goal: &str) {
    let ratio = ours.tally.rate(measured) / raw.tally.rate(measured).max(1e-9);
    let per_round: Vec<f64> = raw
        .rounds
        .iter()
        .zip(&ours.rounds)
        .map(|(r, o)| o / r.max(1e-9) * 100.0)
        .collect();
    let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let high = per_round.iter().copied().fold(0.0, f64::max);
    line(
        READ_LABELS,
        "ratio",
        format_args!(
            "{:>7.0} % of the raw requests/s (rounds {low:.0}–{high:.0} %; {goal})",
            ratio * 100.0
        ),
    );
}

/// An open loop: `rate` requests/s in total, issued at fixed intervals by `clients` clients
/// (staggered), whatever the answers' latency. Returns the latencies measured from sending
/// and from the scheduled instant (which also counts a late send: no coordinated omission).
async fn paced(
    target: &Target,
    clients: usize,
    rate: f64,
    warmup: Duration,
    measured: Duration,
) -> anyhow::Result<(Tally, Tally)> {
    let period = Duration::from_secs_f64(clients as f64 / rate.max(1.0));
    let window = Window::starting_in(warmup, measured);
    let start = tokio::time::Instant::now();
    let mut tasks: JoinSet<anyhow::Result<(Tally, Tally)>> = JoinSet::new();
    for i in 0..clients {
        let http = http_client()?;
        let target = target.clone();
        let first = start + period.mul_f64(i as f64 / clients as f64);
        tasks.spawn(async move {
            let mut from_send = Tally::default();
            let mut from_schedule = Tally::default();
            let mut pick = Pick::new();
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut url = String::with_capacity(target.prefix.len() + 36);
            loop {
                let scheduled = ticks.tick().await.into_std();
                if scheduled >= window.until {
                    break;
                }
                let tag = target.tags[pick.below(target.tags.len())];
                url.clear();
                let _ = write!(url, "{}{tag}", target.prefix);
                let started = Instant::now();
                let result = fetch(&http, &url, target.marker).await;
                let finished = Instant::now();
                match result {
                    Ok(_) if scheduled >= window.from => {
                        from_send.latencies.push(finished - started);
                        from_schedule
                            .latencies
                            .push(finished.saturating_duration_since(scheduled));
                    }
                    Ok(_) => {}
                    Err((kind, text)) => from_send.error(kind, text),
                }
            }
            Ok((from_send, from_schedule))
        });
    }
    let mut send = Tally::default();
    let mut schedule = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let (a, b) = done.context("a benchmark client panicked")??;
        send.merge(a);
        schedule.merge(b);
    }
    Ok((send, schedule))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The scan API on 127.0.0.1:0 with an in-process bus whose scan observations a task
/// acknowledges (so publishing never blocks) and counts.
struct ScanApi {
    base: String,
    observed: Arc<AtomicU64>,
    _server: AbortOnDrop,
    _acker: AbortOnDrop,
}

impl ScanApi {
    async fn start(settings: &Settings, pool: PgPool, redis: RedisPool) -> anyhow::Result<ScanApi> {
        let bus = InProcBus::new();
        let subscriber = bus
            .subscribe(SCANS_TOPIC, "scans-recorder")
            .await
            .context("subscribing to the scans topic")?;
        let observed = Arc::new(AtomicU64::new(0));
        let counted = observed.clone();
        let acker = AbortOnDrop(tokio::spawn(async move {
            while let Some(delivery) = subscriber.next().await {
                counted.fetch_add(1, Ordering::Relaxed);
                delivery.ack();
            }
            Ok(())
        }));
        let settings = Settings {
            scan_addr: "127.0.0.1:0".parse().context("a literal address")?,
            ..settings.clone()
        };
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let app = voketag_read_api::build_with(settings, pool, redis, bus)
            .await
            .context("starting the scan API")?;
        let addr = app.local_addr().context("the scan API's address")?;
        Ok(ScanApi {
            base: format!("http://{addr}"),
            observed,
            _server: AbortOnDrop(tokio::spawn(app.run_until_stopped())),
            _acker: acker,
        })
    }

    fn target(&self, marker: &'static str, tags: &Arc<Vec<Uuid>>) -> Target {
        Target {
            prefix: format!("{}/v1/scan/", self.base).into(),
            marker,
            tags: tags.clone(),
        }
    }
}

/// A minimal axum server answering `GET /raw/{id}` with what `lookup` finds.
async fn raw_server<S, F>(
    state: S,
    lookup: fn(S, Uuid) -> F,
) -> anyhow::Result<(String, AbortOnDrop)>
where
    S: Clone + Send + Sync + 'static,
    F: Future<Output = Result<Option<Bytes>, String>> + Send + 'static,
{
    let handler = move |Path(id): Path<Uuid>| {
        let state = state.clone();
        async move {
            match lookup(state, id).await {
                Ok(Some(body)) => (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
                Ok(None) => axum::http::StatusCode::NOT_FOUND.into_response(),
                Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
            }
        }
    };
    let app = axum::Router::new().route("/raw/{id}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the baseline server")?;
    let addr = listener.local_addr().context("the baseline's address")?;
    let server = AbortOnDrop(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ));
    Ok((format!("http://{addr}/raw/"), server))
}

/// Connects to the bench database and migrates it.
async fn bench_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = db::connect_url(&settings.database_url, settings.db_max_connections)
        .await
        .context("connecting to the bench database")?;
    db::migrate(&pool)
        .await
        .context("migrating the bench database")?;
    Ok(pool)
}

fn read_header(what: &str, settings: &Settings, load: &ReadLoad) {
    println!(
        "{what}: {} tags, {} clients (keep-alive HTTP/1.1, closed loop), {} s each side in {} alternating rounds after a {:.1} s warm-up; log filter {:?}",
        load.tags,
        load.concurrency,
        load.seconds,
        (load.seconds / 2).max(1),
        load.warmup,
        settings.log_filter
    );
}

fn report_paced(
    label: &str,
    rate: f64,
    measured: Duration,
    send: &mut Tally,
    schedule: &mut Tally,
) {
    line(
        READ_LABELS,
        label,
        format_args!(
            "{:>7.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   (p99 from the scheduled send {:.2} ms; {rate:.0} /s offered, {} errors)",
            send.rate(measured),
            ms(send.percentile(50.0)),
            ms(send.percentile(99.0)),
            ms(schedule.percentile(99.0)),
            send.error_count()
        ),
    );
    for (kind, (n, first)) in &send.errors {
        println!("    {kind} ×{n}, first: {first}");
    }
}

fn report_read(label: &str, tally: &mut Tally, measured: Duration) {
    line(
        READ_LABELS,
        label,
        format_args!(
            "{:>7.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} answers, {} errors)",
            tally.rate(measured),
            ms(tally.percentile(50.0)),
            ms(tally.percentile(99.0)),
            tally.latencies.len(),
            tally.error_count()
        ),
    );
    for (kind, (n, first)) in &tally.errors {
        println!("    {kind} ×{n}, first: {first}");
    }
}

// ---------------------------------------------------------------------------------------
// bench scan

async fn scan(settings: Settings, load: ReadLoad) -> anyhow::Result<()> {
    let pool = bench_pool(&settings).await?;
    let result = scan_with(&settings, &pool, load).await;
    pool.close().await;
    result
}

async fn scan_with(settings: &Settings, pool: &PgPool, load: ReadLoad) -> anyhow::Result<()> {
    let warmup = Duration::from_secs_f64(load.warmup);
    let redis = redis::connect(settings)
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    read_header("scan benchmark (Redis hit)", settings, &load);

    let catalog = Catalog::new(load.tags);
    let model = RedisScanModel::new(redis.clone(), settings.redis_prefix.clone());
    apply_all(
        &catalog.envelopes()?,
        Some(&model),
        Some(&PgViews::new(pool.clone())),
    )
    .await?;
    let raw_prefix = format!("{}raw:", settings.redis_prefix);
    pipeline_set(
        &redis,
        catalog.tags.len(),
        MAX_TAGS_PER_EVENT,
        |i| format!("{raw_prefix}{}", catalog.tags[i]),
        |i| catalog.raw_json(i),
    )
    .await?;
    let tags = Arc::new(catalog.tags.clone());
    let http = http_client()?;

    // Baseline: one Redis GET per request, on a pool of its own with the same settings.
    let raw_redis = redis::connect(settings)
        .await
        .context("connecting the baseline to Redis")?;
    let (raw_base, _raw_server) = raw_server(
        (raw_redis.clone(), Arc::<str>::from(raw_prefix.as_str())),
        |(redis, prefix): (RedisPool, Arc<str>), id: Uuid| async move {
            redis
                .get::<Option<Bytes>, _>(format!("{prefix}{id}"))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    let raw_target = Target {
        prefix: raw_base.into(),
        marker: "\"tag_id\"",
        tags: tags.clone(),
    };
    let raw_body = fetch(
        &http,
        &format!("{}{}", raw_target.prefix, tags[0]),
        raw_target.marker,
    )
    .await
    .map_err(|(k, t)| anyhow!("the baseline's first answer: {k}: {t}"))?;

    // Ours: the scan API on the Redis scan model.
    let api = ScanApi::start(settings, pool.clone(), redis.clone()).await?;
    let target = api.target("\"source\":\"cache\"", &tags);
    let body = fetch(
        &http,
        &format!("{}{}", target.prefix, tags[0]),
        target.marker,
    )
    .await
    .map_err(|(k, t)| anyhow!("the scan API's first answer: {k}: {t}"))?;
    ensure!(
        contains(&body, b"\"verdict\":\"authentic\""),
        "the scan API does not find a seeded tag authentic: {}",
        shorten(&String::from_utf8_lossy(&body))
    );

    let backend = Backend::Redis(redis.clone());
    let (mut raw, mut ours, measured) =
        compare((&raw_target, &backend), (&target, &backend), &load).await?;
    raw.report("raw axum + one Redis GET", measured, &backend);
    ours.report("VokeTag GET /v1/scan/{id} (Redis)", measured, &backend);
    report_ratio(&raw, &ours, measured, "goal ≥ 60 %");
    let _ = raw_redis.quit().await;

    let half = ours.tally.rate(measured) / 2.0;
    let (mut send, mut schedule) = paced(&target, load.concurrency, half, warmup, measured).await?;
    report_paced(
        "VokeTag at half its peak (open loop)",
        half,
        measured,
        &mut send,
        &mut schedule,
    );
    line(
        READ_LABELS,
        "goal",
        format_args!(
            "p99 < 5 ms at half the peak: {}",
            if send.percentile(99.0) < Duration::from_millis(5) {
                "met"
            } else {
                "missed"
            }
        ),
    );

    let sample = model
        .lookup(tags[0])
        .await?
        .context("a seeded tag vanished from Redis")?;
    line(
        READ_LABELS,
        "checked",
        format_args!(
            "answers {} B (baseline {} B), all from the cache; {} scans of tag 1 counted in Redis; {} observations published",
            body.len(),
            raw_body.len(),
            sample.scan_count,
            api.observed.load(Ordering::Relaxed)
        ),
    );
    line(
        READ_LABELS,
        "peak RSS (VmHWM)",
        format_args!("{}", peak_rss().unwrap_or_else(|| "unavailable".into())),
    );
    drop(api);
    let errors = ours.tally.error_count() + raw.tally.error_count() + send.error_count();
    ensure!(errors == 0, "{errors} requests failed (see above)");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench fallback

async fn fallback(settings: Settings, load: ReadLoad) -> anyhow::Result<()> {
    let pool = bench_pool(&settings).await?;
    let mut private = PrivateRedis::start().await?;
    let result = fallback_with(&settings, &pool, &mut private, load).await;
    drop(private);
    pool.close().await;
    result
}

async fn fallback_with(
    settings: &Settings,
    pool: &PgPool,
    private: &mut PrivateRedis,
    load: ReadLoad,
) -> anyhow::Result<()> {
    let warmup = Duration::from_secs_f64(load.warmup);
    read_header("fallback benchmark (Redis down)", settings, &load);

    // Could the scan API start with Redis down? Its Redis pool cannot be made without Redis.
    let started = Instant::now();
    let at_start = tokio::time::timeout(
        Duration::from_secs(10),
        redis::connect_url("redis://127.0.0.1:1"),
    )
    .await;
    line(
        READ_LABELS,
        "Redis down at start",
        format_args!(
            "{} after {:.1} s: so Redis is killed once the scan API runs",
            match at_start {
                Ok(Ok(_)) => "the Redis pool connected (?)".to_string(),
                Ok(Err(e)) => format!("redis::connect fails ({e})"),
                Err(_) => "redis::connect hangs".to_string(),
            },
            started.elapsed().as_secs_f64()
        ),
    );

    let settings = Settings {
        redis_url: private.url(),
        ..settings.clone()
    };
    let redis = redis::connect(&settings)
        .await
        .with_context(|| format!("connecting to the private Redis at {}", settings.redis_url))?;
    let catalog = Catalog::new(load.tags);
    let model = RedisScanModel::new(redis.clone(), settings.redis_prefix.clone());
    apply_all(
        &catalog.envelopes()?,
        Some(&model),
        Some(&PgViews::new(pool.clone())),
    )
    .await?;
    let tags = Arc::new(catalog.tags.clone());
    let http = http_client()?;

    // Baseline: one primary-key SELECT per request on a table of as many rows, on a pool of
    // its own of the same size.
    sqlx::query("CREATE TABLE raw_tags (tag_id uuid PRIMARY KEY, payload text NOT NULL)")
        .execute(pool)
        .await
        .context("creating raw_tags")?;
    let payloads: Vec<String> = (0..catalog.tags.len())
        .map(|i| catalog.raw_json(i))
        .collect();
    sqlx::query(
        "INSERT INTO raw_tags (tag_id, payload) SELECT * FROM UNNEST($1::uuid[], $2::text[])",
    )
    .bind(&catalog.tags)
    .bind(&payloads)
    .execute(pool)
    .await
    .context("filling raw_tags")?;
    for table in ["raw_tags", "view_tags", "view_batches", "view_products"] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .with_context(|| format!("VACUUM ANALYZE {table}"))?;
    }
    let raw_pool = db::connect_url(&settings.database_url, settings.db_max_connections)
        .await
        .context("connecting the baseline")?;
    let (raw_base, _raw_server) =
        raw_server(raw_pool.clone(), |pool: PgPool, id: Uuid| async move {
            sqlx::query_scalar::<_, String>("SELECT payload FROM raw_tags WHERE tag_id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .map(|p| p.map(Bytes::from))
                .map_err(|e| e.to_string())
        })
        .await?;
    let raw_target = Target {
        prefix: raw_base.into(),
        marker: "\"tag_id\"",
        tags: tags.clone(),
    };

    // Ours: started on a live Redis, which then dies.
    let api = ScanApi::start(&settings, pool.clone(), redis.clone()).await?;
    let one = format!("{}/v1/scan/{}", api.base, tags[0]);
    fetch(&http, &one, "\"source\":\"cache\"")
        .await
        .map_err(|(k, t)| anyhow!("before Redis is killed: {k}: {t}"))?;
    private.kill().await?;
    let killed = Instant::now();
    let mut fast = 0;
    let mut requests = 0;
    while fast < 5 {
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "the scan API does not answer quickly from the database 30 s after Redis died"
        );
        let sent = Instant::now();
        let url = format!("{}/v1/scan/{}", api.base, tags[requests % tags.len()]);
        let answer = fetch(&http, &url, "\"source\":\"database\"").await;
        requests += 1;
        fast = if answer.is_ok() && sent.elapsed() < Duration::from_millis(20) {
            fast + 1
        } else {
            0
        };
    }
    line(
        READ_LABELS,
        "Redis killed",
        format_args!(
            "5 answers in a row from the database within 20 ms after {requests} requests, {:.2} s (Redis circuit open)",
            killed.elapsed().as_secs_f64()
        ),
    );

    let target = api.target("\"source\":\"database\"", &tags);
    let backend = Backend::Postgres;
    let (mut raw, mut ours, measured) =
        compare((&raw_target, &backend), (&target, &backend), &load).await?;
    raw.report("raw axum + one SELECT by primary key", measured, &backend);
    ours.report("VokeTag GET /v1/scan/{id} (Postgres)", measured, &backend);
    report_ratio(&raw, &ours, measured, "goal ≥ 50 %");
    raw_pool.close().await;

    let half = ours.tally.rate(measured) / 2.0;
    let (mut send, mut schedule) = paced(&target, load.concurrency, half, warmup, measured).await?;
    report_paced(
        "VokeTag at half its peak (open loop)",
        half,
        measured,
        &mut send,
        &mut schedule,
    );
    line(
        READ_LABELS,
        "checked",
        format_args!(
            "every answer from the database; {} observations published",
            api.observed.load(Ordering::Relaxed)
        ),
    );
    drop(api);
    let errors = ours.tally.error_count() + raw.tally.error_count() + send.error_count();
    ensure!(errors == 0, "{errors} requests failed (see above)");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench replay

async fn replay(settings: Settings, tags: u64) -> anyhow::Result<()> {
    let pool = bench_pool(&settings).await?;
    let private = PrivateRedis::start().await?;
    let result = replay_with(&settings, &pool, &private, tags).await;
    drop(private);
    pool.close().await;
    result
}

async fn replay_with(
    settings: &Settings,
    pool: &PgPool,
    private: &PrivateRedis,
    n: u64,
) -> anyhow::Result<()> {
    println!(
        "replay benchmark: {n} tags in TagsIssued events of {MAX_TAGS_PER_EVENT}, into a private redis-server (port {}); runs raw, ours, ours, raw, each on an emptied Redis",
        private.port
    );
    let catalog = Catalog::new(n);
    let started = Instant::now();
    let events = catalog.store(pool, 100_000).await?;
    line(
        READ_LABELS,
        "seeded the event store (not timed)",
        format_args!(
            "{events} events in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    checkpoint(pool).await;
    let redis = redis::connect_url(&private.url())
        .await
        .context("connecting to the private Redis")?;
    let raw_prefix = format!("{}raw:", settings.redis_prefix);
    let model = RedisScanModel::new(redis.clone(), settings.redis_prefix.clone());

    // (time, bytes per tag, where the time went) of each run.
    let mut raw: Vec<(Duration, f64, String)> = Vec::new();
    let mut ours: Vec<(Duration, f64, String)> = Vec::new();
    let mut keyspace = String::new();
    for ours_turn in [false, true, true, false] {
        // Freed in the background (a synchronous flush outlasts the command timeout);
        // used_memory waits until it is done.
        let () = redis
            .flushall(true)
            .await
            .context("emptying the private Redis")?;
        let before = used_memory(&redis).await?;
        let spent = Spent::now(&redis).await;
        let started = Instant::now();
        if ours_turn {
            let report = voketag_workers::replay::rebuild_redis(pool, &model, &|_| {})
                .await
                .context("rebuilding the Redis scan model")?;
            let elapsed = started.elapsed();
            let spent = Spent::now(&redis).await.since(&spent);
            let bytes = used_memory(&redis).await?.saturating_sub(before);
            ensure!(
                report.events == events,
                "the replay read {} events, the store holds {events}",
                report.events
            );
            check_rebuilt(&model, &catalog).await?;
            keyspace = report.keyspace;
            ours.push((elapsed, bytes as f64 / n as f64, spent));
        } else {
            // Baseline: the same tag keys, SET with plain pipelines of 10,000.
            pipeline_set(
                &redis,
                catalog.tags.len(),
                MAX_TAGS_PER_EVENT,
                |i| format!("{raw_prefix}{}", catalog.tags[i]),
                |i| format!("1|0|0|={}", Catalog::serial(i)),
            )
            .await?;
            let elapsed = started.elapsed();
            let spent = Spent::now(&redis).await.since(&spent);
            let bytes = used_memory(&redis).await?.saturating_sub(before);
            let stored: u64 = redis.dbsize().await.context("DBSIZE")?;
            ensure!(
                stored == n,
                "the baseline stored {stored} keys, expected {n}"
            );
            raw.push((elapsed, bytes as f64 / n as f64, spent));
        }
    }

    let mean = |runs: &[(Duration, f64, String)]| {
        runs.iter().map(|r| r.0).sum::<Duration>() / runs.len().max(1) as u32
    };
    let (raw_time, ours_time) = (mean(&raw), mean(&ours));
    for (label, runs, time) in [
        ("raw SET pipelines (10,000 per pipeline)", &raw, raw_time),
        ("VokeTag rebuild_redis", &ours, ours_time),
    ] {
        line(
            READ_LABELS,
            label,
            format_args!(
                "{:>6.2} s   {} tags/s   {:.1} B/tag  (runs {})",
                time.as_secs_f64(),
                per_second(n as f64, time),
                runs[0].1,
                runs.iter()
                    .map(|r| format!("{:.2} s", r.0.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        line(READ_LABELS, "", format_args!("first run: {}", runs[0].2));
    }
    // Pairs run next to each other: (raw 1, ours 1) and (ours 2, raw 2).
    let pairs: Vec<f64> = raw
        .iter()
        .zip(&ours)
        .map(|(r, o)| o.0.as_secs_f64() / r.0.as_secs_f64().max(1e-9))
        .collect();
    line(
        READ_LABELS,
        "ratio",
        format_args!(
            "{:>6.2}× the raw pipelines' time (pairs {}; goal ≤ 2×)",
            ours_time.as_secs_f64() / raw_time.as_secs_f64().max(1e-9),
            pairs
                .iter()
                .map(|p| format!("{p:.2}×"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    line(
        READ_LABELS,
        "checked",
        format_args!(
            "{events} events replayed each time (last into keyspace {keyspace}); 100 random tags read back right"
        ),
    );
    let _ = redis.quit().await;
    Ok(())
}

/// 100 random tags read back from the rebuilt model with their serial and batch.
async fn check_rebuilt(model: &RedisScanModel, catalog: &Catalog) -> anyhow::Result<()> {
    let mut pick = Pick::new();
    for _ in 0..100 {
        let i = pick.below(catalog.tags.len());
        let view = model
            .lookup(catalog.tags[i])
            .await?
            .with_context(|| format!("tag {} is not in the rebuilt model", catalog.tags[i]))?;
        ensure!(
            view.serial.as_deref() == Some(Catalog::serial(i).as_str())
                && view.batch.status == "active",
            "tag {} reads wrong after the rebuild: {view:?}",
            catalog.tags[i]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench lag

async fn lag(settings: Settings, events: u64) -> anyhow::Result<()> {
    let pool = bench_pool(&settings).await?;
    let result = lag_with(&settings, &pool, events).await;
    pool.close().await;
    result
}

async fn lag_with(settings: &Settings, pool: &PgPool, events: u64) -> anyhow::Result<()> {
    let redis = redis::connect(settings)
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    let model = RedisScanModel::new(redis.clone(), settings.redis_prefix.clone());
    let catalog = Catalog::new(events);
    catalog.store(pool, MAX_TAGS_PER_EVENT).await?;

    let bus = InProcBus::new();
    // Before the relay publishes anything, or the first events would reach nobody.
    bus.subscribe(EVENTS_TOPIC, "projector-redis-scan")
        .await
        .context("subscribing the projector")?;
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let projector = Arc::new(Projector::new(model.clone(), pool.clone()));
    let projector_task = Aborting(tokio::spawn(
        projector.run(bus.clone(), until(stopped.clone())),
    ));
    let relay = Relay::new(pool.clone(), bus.clone());
    let (idle, batch_size) = (relay.idle, relay.batch_size);
    let relay_task = Aborting(tokio::spawn(relay.run(until(stopped))));
    println!(
        "lag benchmark: {events} tag revocations, one at a time after a random pause of 0–{} ms: commit returned → RedisScanModel::lookup shows it (polled every 1 ms)",
        (idle + Duration::from_millis(5)).as_millis()
    );
    line(
        READ_LABELS,
        "relay",
        format_args!(
            "idle {} ms (its pause after a pass that found nothing: a commit may wait that long for the next pass), batch {batch_size}",
            idle.as_millis()
        ),
    );

    // The seeded product, batch and tags reach Redis first.
    let started = Instant::now();
    let last = *catalog.tags.last().context("no tags")?;
    while model.lookup(last).await?.is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the seeded tags are not in Redis after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    line(
        READ_LABELS,
        "seed visible in Redis",
        format_args!("after {:.2} s", started.elapsed().as_secs_f64()),
    );

    let store = EventStore::new(pool.clone());
    let meta = EventMetadata {
        actor: "system:bench".into(),
        factory_id: catalog.factory.to_string(),
        ..EventMetadata::default()
    };
    let batch = catalog.batch.to_string();
    let mut lags = Tally::default();
    let mut commits = Tally::default();
    let mut polls = 0u64;
    let mut pick = Pick::new();
    // Without a pause, each command would commit just after the relay found nothing and
    // went idle (it passes again right after publishing the previous revocation), so every
    // lag would be a whole idle pause. A random pause spreads commits over the relay's cycle,
    // as independent writers would.
    let spread = idle + Duration::from_millis(5);
    for tag in &catalog.tags {
        tokio::time::sleep(spread.mul_f64(pick.below(1000) as f64 / 1000.0)).await;
        let sent = Instant::now();
        store
            .execute::<Batch>(
                &batch,
                BatchCommand::RevokeTag {
                    tag_id: *tag,
                    reason: "bench".into(),
                },
                &meta,
                None,
            )
            .await
            .with_context(|| format!("revoking tag {tag}"))?;
        let committed = Instant::now();
        commits.latencies.push(committed - sent);
        loop {
            polls += 1;
            let view = model.lookup(*tag).await?;
            if view.is_some_and(|v| v.revoked.is_some()) {
                break;
            }
            ensure!(
                committed.elapsed() < Duration::from_secs(10),
                "the revocation of tag {tag} is not in Redis after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.latencies.push(committed.elapsed());
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = (&mut { relay_task }.0).await;
        let _ = (&mut { projector_task }.0).await;
    })
    .await;

    let mean = lags.latencies.iter().sum::<Duration>() / lags.latencies.len().max(1) as u32;
    line(
        READ_LABELS,
        "commit → visible in Redis",
        format_args!(
            "p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   mean {:.2} ms  (goal p99 < 50 ms: {})",
            ms(lags.percentile(50.0)),
            ms(lags.percentile(99.0)),
            ms(lags.percentile(100.0)),
            ms(mean),
            if lags.percentile(99.0) < Duration::from_millis(50) {
                "met"
            } else {
                "missed"
            }
        ),
    );
    line(
        READ_LABELS,
        "the commands themselves (not counted)",
        format_args!(
            "p50 {:>6.2} ms   p99 {:>6.2} ms",
            ms(commits.percentile(50.0)),
            ms(commits.percentile(99.0))
        ),
    );
    line(
        READ_LABELS,
        "checked",
        format_args!(
            "{} revocations seen in Redis ({:.1} lookups each)",
            lags.latencies.len(),
            polls as f64 / lags.latencies.len().max(1) as f64
        ),
    );
    let _ = redis.quit().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench bus

/// How the events of a `bench bus` round reach the read models.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// Read from the store in order and applied to each model by one task: no relay, no bus.
    Direct,
    InProc,
    PubSub,
}

impl Carrier {
    fn label(self) -> &'static str {
        match self {
            Carrier::Direct => "applied in order, no bus (ceiling)",
            Carrier::InProc => "in-process bus (baseline)",
            Carrier::PubSub => "Google Pub/Sub, emulator (ours)",
        }
    }
}

/// The emulator unless `VOKETAG_PUBSUB_ENDPOINT` names another one: the bench creates and
/// fills topics, and never does so on Google's service.
const BENCH_PUBSUB_ENDPOINT: &str = "http://127.0.0.1:8085";

async fn bus(settings: Settings, events: u64, batches: u64) -> anyhow::Result<()> {
    let pool = bench_pool(&settings).await?;
    let result = bus_with(&settings, &pool, events, batches).await;
    pool.close().await;
    result
}

/// Fills the store with `events` events through the event store: per batch a factory, a
/// product, the batch created, activated and given 10 tags, then, round-robin over the
/// batches, units (one transaction) of up to 50 commands alternating between issuing 2
/// tags and recording 2 scans of the batch's tags.
async fn seed_bus_events(pool: &PgPool, events: u64, batches: u64) -> anyhow::Result<()> {
    let catalogs: Vec<Catalog> = (0..batches).map(|_| Catalog::new(10)).collect();
    let mut written = 0;
    for c in &catalogs {
        written += c.store(pool, MAX_TAGS_PER_EVENT).await?;
    }
    let store = EventStore::new(pool.clone());
    let mut issued = vec![10usize; catalogs.len()];
    let mut scans = vec![0u64; catalogs.len()];
    let mut round = 0usize;
    while written < events {
        let i = round % catalogs.len();
        let c = &catalogs[i];
        let n = (events - written).min(50) as usize;
        let meta = EventMetadata {
            actor: "system:bench".into(),
            factory_id: c.factory.to_string(),
            ..EventMetadata::default()
        };
        let id = c.batch.to_string();
        if (round / catalogs.len()).is_multiple_of(2) {
            let mut unit = store.begin::<Batch>(&id, &meta).await?;
            for _ in 0..n {
                let tags: Vec<IssuedTag> = (0..2)
                    .map(|k| IssuedTag {
                        tag_id: Uuid::new_v4(),
                        serial: Some(Catalog::serial(issued[i] + k)),
                    })
                    .collect();
                issued[i] += 2;
                written += unit
                    .handle(BatchCommand::IssueTags {
                        import_id: None,
                        tags,
                    })
                    .await
                    .context("issuing tags")?
                    .len() as u64;
            }
            unit.commit().await.context("committing issued tags")?;
        } else {
            let mut unit = store.begin::<ScanLog>(&id, &meta).await?;
            for _ in 0..n {
                let records = (0..2)
                    .map(|k| {
                        scans[i] += 1;
                        ScanRecord {
                            scan_id: Uuid::new_v4(),
                            tag_id: c.tags[(scans[i] as usize + k) % c.tags.len()],
                            scanned_at: chrono::Utc::now(),
                            verdict: "authentic".into(),
                            reasons: vec![],
                            country: Some("BR".into()),
                            region: None,
                            device: None,
                            scan_number: scans[i],
                        }
                    })
                    .collect();
                written += unit
                    .handle(ScanLogCommand::RecordScans { scans: records })
                    .await
                    .context("recording scans")?
                    .len() as u64;
            }
            unit.commit().await.context("committing scans")?;
        }
        round += 1;
    }
    Ok(())
}

/// The followed aggregates' last versions in the store.
async fn last_versions(pool: &PgPool) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(sequence) FROM events
          WHERE aggregate_type IN ('Product', 'Batch', 'ScanLog')
          GROUP BY aggregate_type, aggregate_id",
    )
    .fetch_all(pool)
    .await?)
}

/// Waits until `version_of` reaches every aggregate's last version; returns when, after
/// `started`. Versions only grow, so a caught-up aggregate is not asked again, and a pass
/// stops at the first one still behind: about one read per 2 ms while catching up.
async fn caught_up<F, Fut>(
    started: Instant,
    mut behind: Vec<(String, String, i64)>,
    version_of: F,
) -> anyhow::Result<Duration>
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<i64, voketag_projections::ProjectionError>>,
{
    while let Some((t, id, last)) = behind.last().cloned() {
        if version_of(t, id).await? >= last {
            behind.pop();
            continue;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "a read model is still behind after 10 minutes ({} aggregates)",
            behind.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

/// One round: fresh read models (a Redis prefix of their own, emptied views), then the
/// whole store carried to both. Returns the time until Redis, and until the views, had
/// every event.
async fn bus_round(
    settings: &Settings,
    pool: &PgPool,
    redis: &RedisPool,
    carrier: Carrier,
    round: usize,
    endpoint: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let model = RedisScanModel::new(
        redis.clone(),
        format!("{}bus{round}:", settings.redis_prefix),
    );
    let views = PgViews::new(pool.clone());
    views.clear().await.context("emptying the views")?;
    let last = last_versions(pool).await?;
    checkpoint(pool).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let mut tasks: Vec<Aborting<anyhow::Result<()>>> = Vec::new();
    let started;
    if carrier == Carrier::Direct {
        let envelopes: Vec<EventEnvelope> = sqlx::query_as::<_, StoredEvent>(&format!(
            "SELECT {COLUMNS} FROM events WHERE aggregate_type <> 'Factory'
              ORDER BY tx_id, global_position"
        ))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|e| e.into_envelope().map_err(|e| anyhow!(e)))
        .collect::<anyhow::Result<_>>()?;
        let envelopes = Arc::new(envelopes);
        started = Instant::now();
        let (e, m) = (envelopes.clone(), model.clone());
        tasks.push(Aborting(tokio::spawn(async move {
            apply_all(&e, Some(&m), None).await
        })));
        let (e, v) = (envelopes, views.clone());
        tasks.push(Aborting(tokio::spawn(async move {
            apply_all(&e, None, Some(&v)).await
        })));
    } else {
        let bus: Arc<dyn Bus> = match carrier {
            Carrier::PubSub => {
                let project = format!(
                    "voketag-bench-{}",
                    &Uuid::new_v4().simple().to_string()[..12]
                );
                Arc::new(
                    PubSubBus::connect(PubSubConfig::new(project, Some(endpoint.to_string())))
                        .await
                        .context("connecting to Pub/Sub")?,
                )
            }
            _ => Arc::new(InProcBus::new()),
        };
        // Before the relay publishes anything, or the first events would reach nobody.
        for subscription in [model.subscription(), views.subscription()] {
            bus.subscribe(EVENTS_TOPIC, subscription).await.with_context(|| {
                format!("subscribing {subscription} (is the emulator up at {endpoint}? deploy/local/pubsub-emulator starts it)")
            })?;
        }
        started = Instant::now();
        let redis_projector = Arc::new(Projector::new(model.clone(), pool.clone()));
        tasks.push(Aborting(tokio::spawn(
            redis_projector.run(bus.clone(), until(stopped.clone())),
        )));
        let views_projector = Arc::new(Projector::new(views.clone(), pool.clone()));
        tasks.push(Aborting(tokio::spawn(
            views_projector.run(bus.clone(), until(stopped.clone())),
        )));
        let relay = Relay::new(pool.clone(), bus).named(format!("bench-bus-{round}"));
        let r = stopped.clone();
        tasks.push(Aborting(tokio::spawn(async move {
            relay.run(until(r)).await;
            Ok(())
        })));
    }
    let (in_redis, in_views) = tokio::join!(
        caught_up(started, last.clone(), |t, id| {
            let m = model.clone();
            async move {
                Ok(m.versions(&[(&t, &id)])
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(0))
            }
        }),
        caught_up(started, last, |t, id| {
            let v = views.clone();
            async move {
                Ok(v.versions(&[(&t, &id)])
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(0))
            }
        }),
    );
    let _ = stop.send(true);
    for mut task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), &mut task.0).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context(format!("{} round", carrier.label()))),
            Ok(Err(e)) => bail!("{} round: a task failed: {e}", carrier.label()),
            Err(_) => bail!("{} round: a task did not stop", carrier.label()),
        }
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(pool)
        .await?;
    ensure!(
        parked == 0,
        "{} round: {parked} events parked",
        carrier.label()
    );
    Ok((in_redis?, in_views?))
}

async fn bus_with(
    settings: &Settings,
    pool: &PgPool,
    events: u64,
    batches: u64,
) -> anyhow::Result<()> {
    let endpoint = settings
        .pubsub_endpoint
        .clone()
        .unwrap_or_else(|| BENCH_PUBSUB_ENDPOINT.to_string());
    println!(
        "bus benchmark: {events} events over {batches} batches, committed before the relay starts; time until both read models applied every one (relay + both projectors in this process); Pub/Sub at {endpoint}; runs direct, in-process, Pub/Sub, Pub/Sub, in-process, direct"
    );
    let started = Instant::now();
    seed_bus_events(pool, events, batches).await?;
    let followed: i64 = last_versions(pool).await?.iter().map(|(_, _, v)| v).sum();
    line(
        READ_LABELS,
        "seeded the event store (not timed)",
        format_args!(
            "{events} events ({followed} for the read models) in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    let redis = redis::connect(settings)
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    let order = [
        Carrier::Direct,
        Carrier::InProc,
        Carrier::PubSub,
        Carrier::PubSub,
        Carrier::InProc,
        Carrier::Direct,
    ];
    let mut runs: Vec<(Carrier, Duration, Duration)> = Vec::new();
    for (round, carrier) in order.into_iter().enumerate() {
        let (r, v) = bus_round(settings, pool, &redis, carrier, round, &endpoint).await?;
        runs.push((carrier, r, v));
    }
    // Events/s of a side: every event the read models follow, by the mean time until both
    // had all of them.
    let rate = |carrier: Carrier| {
        let times: Vec<Duration> = runs
            .iter()
            .filter(|r| r.0 == carrier)
            .map(|r| r.1.max(r.2))
            .collect();
        let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
        (followed as f64 / mean.as_secs_f64().max(1e-9), times)
    };
    for carrier in [Carrier::Direct, Carrier::InProc, Carrier::PubSub] {
        let (per_s, _) = rate(carrier);
        let rounds: Vec<String> = runs
            .iter()
            .filter(|r| r.0 == carrier)
            .map(|r| {
                format!(
                    "Redis {:.2} s, views {:.2} s",
                    r.1.as_secs_f64(),
                    r.2.as_secs_f64()
                )
            })
            .collect();
        line(
            READ_LABELS,
            carrier.label(),
            format_args!("{per_s:>7.0} events/s  ({})", rounds.join("; ")),
        );
    }
    let (pubsub, _) = rate(Carrier::PubSub);
    let (inproc, _) = rate(Carrier::InProc);
    let (direct, _) = rate(Carrier::Direct);
    line(
        READ_LABELS,
        "ratio",
        format_args!(
            "Pub/Sub {:.2}× the in-process bus's events/s; {:.2}× applying directly",
            pubsub / inproc.max(1e-9),
            pubsub / direct.max(1e-9)
        ),
    );
    let _ = redis.quit().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_gtins_are_valid_and_distinct() {
        let a = gtin(1);
        let b = gtin(2);
        assert_ne!(a, b);
        for n in [0, 1, 2, 999, 123_456_789_012] {
            let g = gtin(n);
            assert_eq!(g.len(), 14);
            assert!(voketag_domain::Gtin::parse(&g).is_ok(), "{g}");
        }
    }

    #[test]
    fn the_csv_has_a_header_and_one_line_per_row() {
        let csv = tag_csv(3);
        let text = String::from_utf8_lossy(&csv);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "tag_id,serial");
        assert!(lines[3].ends_with(",SN-0000003"), "{}", lines[3]);
    }

    #[test]
    fn proc_stat_cpu_is_utime_plus_stime() {
        let stat = "4242 (tokio (rt) worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(stat_cpu_seconds("garbage"), None);
    }

    #[test]
    fn picks_stay_in_range_and_spread() {
        let mut pick = Pick::new();
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[pick.below(10)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }

    #[test]
    fn hand_made_events_are_consecutive_versions() {
        let catalog = Catalog::new(25_000);
        let events = catalog.envelopes().unwrap();
        let batch: Vec<(i64, &str)> = events
            .iter()
            .filter(|e| e.aggregate_type == "Batch")
            .map(|e| (e.sequence, e.event_type.as_str()))
            .collect();
        assert_eq!(
            batch,
            [
                (1, "BatchCreated"),
                (2, "BatchActivated"),
                (3, "TagsIssued"),
                (4, "TagsIssued"),
                (5, "TagsIssued")
            ]
        );
        assert_eq!(events[0].event_type, "ProductRegistered");
        assert!(catalog.raw_json(0).contains(&catalog.tags[0].to_string()));
    }

    #[test]
    fn percentiles_pick_a_recorded_latency() {
        let mut t = Tally {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Tally::default()
        };
        assert_eq!(t.percentile(50.0), Duration::from_millis(50));
        assert_eq!(t.percentile(99.0), Duration::from_millis(99));
    }
}

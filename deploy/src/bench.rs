//! Benchmarks (see README): each prints its figure next to a raw baseline measured in
//! the same run on the same machine, and the ratio between them.
//!
//! Every run creates a throwaway database on the server of `VOKETAG_DATABASE_URL`
//! (`voketag_bench_<random>`), migrates it, starts the real factory API in-process on
//! 127.0.0.1:0 with a Redis key prefix of its own, and drops the database at the end, also
//! when the benchmark fails or is interrupted (Ctrl-C, SIGTERM).
//!
//! * `voketag bench import --rows N`: a CSV of N tags uploaded over HTTP and issued by the
//!   imports worker, against `COPY ... FROM STDIN` of the same bytes into a bare table.
//! * `voketag bench commands --clients C --seconds D`: C concurrent HTTP clients registering
//!   products, against C concurrent connections doing one-row INSERT transactions.

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use clap::Subcommand;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_commands::store::EventStore;
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_domain::{MAX_TAGS_PER_EVENT, Role};
use voketag_platform::{Settings, db, redis, telemetry};
use voketag_schemas::EventMetadata;
use voketag_workers::imports::ImportWorker;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// A CSV of N tags from upload to events committed, against a raw COPY of the same rows.
    Import {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
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
}

pub async fn run(settings: Settings, bench: BenchCommand) -> anyhow::Result<()> {
    telemetry::init("bench", &settings);
    match &bench {
        BenchCommand::Import { rows } => ensure!(*rows >= 1, "--rows must be at least 1"),
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
    }
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

    let outcome = tokio::select! {
        r = run_bench(bench_settings, &name, bench) => r,
        () = voketag_platform::shutdown_signal() => Err(anyhow!("interrupted")),
    };
    let dropped = drop_database(&admin_url, &name).await;
    match (outcome, dropped) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => {
            eprintln!("voketag bench: {d:#}");
            Err(e)
        }
    }
}

async fn run_bench(settings: Settings, name: &str, bench: BenchCommand) -> anyhow::Result<()> {
    db::ensure_database(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "creating the bench database {name} (is Postgres up, VOKETAG_DATABASE_URL right?)"
            )
        })?;
    match bench {
        BenchCommand::Import { rows } => import(settings, rows).await,
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
    }
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

async fn import(mut settings: Settings, rows: u64) -> anyhow::Result<()> {
    let csv = tag_csv(rows);
    // The bench measures the import, not the limits of a particular deployment.
    settings.import_max_bytes = settings.import_max_bytes.max(csv.len() as u64);
    settings.request_timeout_secs = settings.request_timeout_secs.max(600);
    let harness = Harness::start(settings).await?;
    let result = import_with(&harness, csv, rows).await;
    harness.close().await;
    result
}

async fn import_with(h: &Harness, csv: Bytes, rows: u64) -> anyhow::Result<()> {
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
    line(
        IMPORT_LABELS,
        "ratio",
        format_args!(
            "{:>6.2}× the raw COPY (goal ≤ 2×)",
            total_time.as_secs_f64() / copy_time.as_secs_f64().max(1e-9)
        ),
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
    Ok(())
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
    let url = format!("{}/v1/products", h.base);
    let window = Window::starting_in(warmup, measured);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building an HTTP client")?;
        let url = url.clone();
        let token = h.token.clone();
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
                let result = match http.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status();
                        // Read to the end, so the connection is reused.
                        match r.text().await {
                            Ok(text) => Ok((status, text)),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                let finished = Instant::now();
                let counted = started >= window.from && finished <= window.until;
                match result {
                    Ok((StatusCode::CREATED, _)) => {
                        if counted {
                            tally.latencies.push(finished - started);
                        }
                    }
                    Ok((status, text)) => tally.error(format!("HTTP {status}"), shorten(&text)),
                    Err(e) => tally.error("request failed".into(), e.to_string()),
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
    fn percentiles_pick_a_recorded_latency() {
        let mut t = Tally {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Tally::default()
        };
        assert_eq!(t.percentile(50.0), Duration::from_millis(50));
        assert_eq!(t.percentile(99.0), Duration::from_millis(99));
    }
}

//! The soak test of the event pipeline over Google Pub/Sub (issue 5): 100,000 events are
//! appended through the write side's event store while the real processes — one
//! `voketag work relay` and two `voketag work projector`, on `VOKETAG_BUS=pubsub` against
//! the emulator — are killed with SIGKILL at random moments and restarted. Once everything
//! settled, the Redis scan model and the Postgres views must answer exactly what a
//! sequential fold of the store answers: every event applied once, in order, to a fresh
//! model of each kind. The emulator ignores ordering keys and redelivers whatever a killed
//! projector held, so this shows that version gating, not the broker, keeps the order.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;
use voketag_commands::store::EventStore;
use voketag_domain::batch::{Batch, BatchCommand, IssuedTag, NewBatch};
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_domain::product::{NewProduct, Product, ProductCommand};
use voketag_domain::scan::{ScanLog, ScanLogCommand, ScanRecord};
use voketag_domain::{Gtin, Market};
use voketag_platform::bus::pubsub::{PubSubBus, PubSubConfig};
use voketag_projections::{Applied, PgViews, RedisScanModel};
use voketag_schemas::EventMetadata;
use voketag_schemas::bus::EVENTS_TOPIC;
use voketag_tests::models::{ReadModel, Subjects, delete_prefix, snapshot};
use voketag_tests::{
    PUBSUB_ENDPOINT, TestDb, child_stderr, patient_redis, pubsub_emulator, redis_url,
    voketag_binary,
};
use voketag_workers::events::{COLUMNS, StoredEvent};
use voketag_workers::projector::Model;

/// Events in the store at the end, all kinds together (`VOKETAG_SOAK_EVENTS` overrides, to
/// try a change quickly).
const EVENTS: usize = 100_000;
const FACTORIES: usize = 4;
const PRODUCTS: usize = 100;
const BATCHES: usize = 300;
/// Concurrent writers, each owning a share of the batches (and their scan logs).
const WRITERS: usize = 4;
/// Projector processes sharing the two subscriptions.
const PROJECTORS: usize = 2;
/// The subscriptions' ack deadline: how long a killed projector's messages wait.
const ACK_DEADLINE_SECONDS: u32 = 10;
/// Most events the store may hold beyond what the slower live model applied: the writers
/// wait beyond it. The emulator scans every message a subscription holds on each delivery
/// and drops what it could not deliver within 10 minutes, so an unbounded backlog would
/// first slow it to a crawl and then lose the tail of the run; a real broker has neither
/// limit, and the test is about the consumers.
const WINDOW: usize = 4_000;
/// Longest the whole test may take before it fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(1380);

// ---------------------------------------------------------------------------------------
// The processes and the chaos

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Relay,
    Projector,
}

struct Worker {
    role: Role,
    child: Option<Child>,
}

/// The relay and projector processes, started, killed and restarted by the test.
struct Fleet {
    env: Vec<(&'static str, String)>,
    workers: Vec<Worker>,
    kills: u32,
    restarts: u32,
    /// Processes that ended without being killed: a crash of our own making.
    exits: Vec<String>,
}

impl Fleet {
    fn new(env: Vec<(&'static str, String)>) -> Fleet {
        let mut workers = vec![Worker {
            role: Role::Relay,
            child: None,
        }];
        workers.extend((0..PROJECTORS).map(|_| Worker {
            role: Role::Projector,
            child: None,
        }));
        Fleet {
            env,
            workers,
            kills: 0,
            restarts: 0,
            exits: vec![],
        }
    }

    fn spawn(&mut self, i: usize) {
        let role = match self.workers[i].role {
            Role::Relay => "relay",
            Role::Projector => "projector",
        };
        let child = Command::new(voketag_binary())
            .args(["work", role])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(child_stderr())
            .spawn()
            .expect("start `voketag work`");
        self.workers[i].child = Some(child);
    }

    fn start_all(&mut self) {
        for i in 0..self.workers.len() {
            self.spawn(i);
        }
    }

    /// Notes any process that ended on its own, and starts it again.
    fn check(&mut self) {
        for i in 0..self.workers.len() {
            let exited = match self.workers[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.exits.push(format!(
                    "{:?} {i} ended on its own: {status}",
                    self.workers[i].role
                ));
                self.spawn(i);
            }
        }
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.workers[i].child.take() {
            c.kill().expect("SIGKILL a worker");
            let _ = c.wait();
            self.kills += 1;
        }
    }

    fn restart(&mut self, i: usize) {
        if self.workers[i].child.is_none() {
            self.spawn(i);
            self.restarts += 1;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(mut c) = w.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Kills a random process (now and then all of them) every 2–6 s and starts it again 0–0.6 s
/// later, until `stop`. More often, and the projectors would spend the run restarting and
/// waiting out the ack deadline of what they held.
async fn chaos(fleet: Arc<Mutex<Fleet>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..6000))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let victims: Vec<usize> = {
            let mut f = fleet.lock().expect("fleet");
            f.check();
            let n = f.workers.len();
            let victims = if rng.gen_range(0..10) == 0 {
                (0..n).collect()
            } else {
                vec![rng.gen_range(0..n)]
            };
            for i in &victims {
                f.kill(*i);
            }
            victims
        };
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..600))).await;
        let mut f = fleet.lock().expect("fleet");
        for i in victims {
            f.restart(i);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The events: written through the event store, as the factory API writes them

fn meta(factory: Uuid) -> EventMetadata {
    EventMetadata {
        actor: "system:soak".into(),
        factory_id: factory.to_string(),
        ..EventMetadata::default()
    }
}

fn markets() -> Vec<Market> {
    vec![
        Market::parse("BR").expect("a market"),
        Market::parse("US").expect("a market"),
    ]
}

/// A valid GTIN-14 for every `n` below 10^12 (GS1 mod-10 check digit).
fn gtin(n: u64) -> Gtin {
    let body = format!("9{n:012}");
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    Gtin::parse(&format!("{body}{}", (10 - sum % 10) % 10)).expect("a valid GTIN")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    New,
    Created,
    Active,
    Recalled,
    Closed,
}

/// One batch as its writer knows it, so that every command it sends is one the domain
/// accepts.
struct Plan {
    id: Uuid,
    factory: Uuid,
    product: Uuid,
    status: Status,
    /// Batch events written; `fate` says after how many the batch is recalled or closed.
    written: usize,
    fate: Option<(usize, Status)>,
    tags: Vec<Uuid>,
    unrevoked: Vec<Uuid>,
    scans: HashMap<Uuid, u64>,
    /// Scanned under this batch, never issued.
    ghost: Uuid,
}

/// Takes up to `want` events from the budget; 0 once it is spent.
fn take(budget: &AtomicUsize, want: usize) -> usize {
    let mut left = budget.load(Ordering::Relaxed);
    loop {
        let n = want.min(left);
        if n == 0 {
            return 0;
        }
        match budget.compare_exchange(left, left - n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(now) => left = now,
        }
    }
}

const VERDICTS: [&str; 4] = ["authentic", "suspicious", "revoked", "unknown"];

/// Writes its batches' events in units of 1–16 commands (one transaction each) until the
/// budget is spent. Returns how many events it wrote, and every tag id it issued or
/// scanned.
async fn writer(
    store: EventStore,
    mut plans: Vec<Plan>,
    budget: Arc<AtomicUsize>,
    applied: Arc<AtomicUsize>,
    seed: u64,
) -> (usize, Vec<Uuid>) {
    let events = budget.load(Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(seed);
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-20T08:00:00Z")
        .expect("a time")
        .with_timezone(&chrono::Utc);
    let mut written = 0;
    loop {
        // `budget` counts down what is left to write; `applied`, what both models applied.
        while events - budget.load(Ordering::Relaxed) > applied.load(Ordering::Relaxed) + WINDOW {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let p = plans.choose_mut(&mut rng).expect("a writer has batches");
        let scan_unit = p.status != Status::New && !p.tags.is_empty() && rng.gen_range(0..100) < 40;
        let want = if p.status == Status::New {
            2
        } else {
            rng.gen_range(1..=16)
        };
        let n = take(&budget, want);
        if n == 0 {
            let tags = plans
                .iter()
                .flat_map(|p| p.tags.iter().copied().chain([p.ghost]))
                .collect();
            return (written, tags);
        }
        let id = p.id.to_string();
        let meta = meta(p.factory);
        let mut done = 0;
        if scan_unit {
            let mut unit = store.begin::<ScanLog>(&id, &meta).await.expect("begin");
            for _ in 0..n {
                let scans = (0..rng.gen_range(1..=4))
                    .map(|_| {
                        let tag = if rng.gen_range(0..20) == 0 {
                            p.ghost
                        } else {
                            p.tags[rng.gen_range(0..p.tags.len())]
                        };
                        let count = p.scans.entry(tag).or_default();
                        *count += 1;
                        ScanRecord {
                            scan_id: Uuid::new_v4(),
                            tag_id: tag,
                            scanned_at: base
                                + chrono::Duration::milliseconds(rng.gen_range(0..5 * 86_400_000)),
                            verdict: VERDICTS[rng.gen_range(0..4)].into(),
                            reasons: vec![],
                            country: Some(["BR", "US", "PT"][rng.gen_range(0..3)].into()),
                            region: None,
                            device: None,
                            scan_number: *count,
                        }
                    })
                    .collect();
                done += unit
                    .handle(ScanLogCommand::RecordScans { scans })
                    .await
                    .expect("record scans")
                    .len();
            }
            unit.commit().await.expect("commit scans");
        } else {
            let mut unit = store.begin::<Batch>(&id, &meta).await.expect("begin");
            for _ in 0..n {
                let command = match p.status {
                    Status::New => BatchCommand::CreateBatch(NewBatch {
                        factory_id: p.factory,
                        product_id: p.product,
                        product_markets: markets(),
                        lot: format!("LOT-{}", p.id.simple()),
                        production_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
                            .expect("a date"),
                        sell_by: rng
                            .gen_bool(0.5)
                            .then(|| chrono::NaiveDate::from_ymd_opt(2027, 11, 1).expect("a date")),
                        intended_markets: if rng.gen_bool(0.3) {
                            vec![Market::parse("BR").expect("a market")]
                        } else {
                            vec![]
                        },
                    }),
                    Status::Created => BatchCommand::ActivateBatch,
                    Status::Active if p.fate.is_some_and(|(at, _)| p.written >= at) => {
                        let (_, fate) = p.fate.take().expect("checked above");
                        p.status = fate;
                        if fate == Status::Closed {
                            BatchCommand::CloseBatch
                        } else {
                            BatchCommand::RecallBatch {
                                reason: format!("recalled after {} events", p.written),
                            }
                        }
                    }
                    Status::Active if p.unrevoked.is_empty() || rng.gen_range(0..100) < 72 => {
                        let tags: Vec<IssuedTag> = (0..rng.gen_range(1..=3))
                            .map(|i| IssuedTag {
                                tag_id: Uuid::new_v4(),
                                serial: match (p.tags.len() + i) % 3 {
                                    0 => None,
                                    1 => Some(format!("SN-{}", p.tags.len() + i)),
                                    // Longer than the Redis model keeps inline.
                                    _ => Some(format!("SERIAL-{:0>40}", p.tags.len() + i)),
                                },
                            })
                            .collect();
                        for t in &tags {
                            p.tags.push(t.tag_id);
                            p.unrevoked.push(t.tag_id);
                        }
                        BatchCommand::IssueTags {
                            import_id: None,
                            tags,
                        }
                    }
                    _ if !p.unrevoked.is_empty() => {
                        let i = rng.gen_range(0..p.unrevoked.len());
                        BatchCommand::RevokeTag {
                            tag_id: p.unrevoked.swap_remove(i),
                            reason: format!("revoked after {} events", p.written),
                        }
                    }
                    // A finished batch with every tag revoked: nothing more to say.
                    _ => break,
                };
                done += unit.handle(command).await.expect("a valid command").len();
                p.written += 1;
                p.status = match p.status {
                    Status::New => Status::Created,
                    Status::Created => Status::Active,
                    s => s,
                };
            }
            unit.commit().await.expect("commit");
        }
        // Whatever this unit did not use goes back to the budget.
        budget.fetch_add(n - done, Ordering::Relaxed);
        written += done;
        // Commits spread over time, as independent clients would send them.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..4))).await;
    }
}

// ---------------------------------------------------------------------------------------
// The sequential fold

/// Applies every event of the store once, in the relay's final order (transaction, then
/// position: the order within each aggregate), to `model`, following the store as it
/// grows until `expected` events are applied. Every event must apply (or be ignored, for
/// aggregates the model does not follow): a fresh model never answers duplicate or gap.
async fn fold<M: ReadModel + Send + 'static>(
    store: sqlx::PgPool,
    model: M,
    expected: usize,
) -> usize {
    #[derive(sqlx::FromRow)]
    struct Row {
        tx_id: String,
        #[sqlx(flatten)]
        event: StoredEvent,
    }
    let (mut tx_id, mut position) = ("0".to_string(), 0i64);
    let mut applied = 0;
    while applied < expected {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT e.tx_id::text AS tx_id, {COLUMNS} FROM events e
              WHERE (e.tx_id, e.global_position) > ($1::xid8, $2)
                AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY e.tx_id, e.global_position
              LIMIT 500"
        ))
        .bind(&tx_id)
        .bind(position)
        .fetch_all(&store)
        .await
        .expect("read the store");
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for row in rows {
            let cursor = format!("({tx_id}, {position})");
            let numeric = |tx: &str| tx.parse::<u64>().expect("a transaction id");
            assert!(
                (numeric(&row.tx_id), row.event.global_position) > (numeric(&tx_id), position),
                "the store's order went back: ({}, {}) after {cursor}",
                row.tx_id,
                row.event.global_position
            );
            (tx_id, position) = (row.tx_id, row.event.global_position);
            let e = row.event.into_envelope().expect("a readable event");
            let answer = model.apply(&e).await.expect("apply");
            let want = if e.aggregate_type == "Factory" {
                Applied::Ignored
            } else {
                Applied::Applied
            };
            if answer != want {
                // Enough to tell a misordered log from a model that lost its state.
                let history: Vec<(i64, String, i64, String)> = sqlx::query_as(
                    "SELECT sequence, tx_id::text, global_position, recorded_at::text FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
                )
                .bind(&e.aggregate_type)
                .bind(&e.aggregate_id)
                .fetch_all(&store)
                .await
                .unwrap_or_default();
                panic!(
                    "the fold: {} {} v{} answered {answer:?}, wanted {want:?}; read after \
                     {cursor} at ({tx_id}, {position}); the aggregate's events \
                     (sequence, tx_id, position, recorded_at): {history:?}",
                    e.aggregate_type, e.aggregate_id, e.sequence
                );
            }
            applied += 1;
        }
    }
    applied
}

// ---------------------------------------------------------------------------------------
// Progress

/// Events of the followed aggregates the model has applied.
async fn progress<M: ReadModel>(m: &M, last: &[(String, String, i64)]) -> i64 {
    use futures::StreamExt;
    futures::stream::iter(last)
        .map(|(t, id, _)| async move { m.applied_version(t, id).await.expect("applied version") })
        .buffer_unordered(8)
        .collect::<Vec<i64>>()
        .await
        .iter()
        .sum()
}

/// Drops the aggregates the model has caught up with from the end of `behind`, stopping at
/// the first one still behind (versions only grow: a caught-up aggregate stays so).
async fn catch_up<M: ReadModel>(m: &M, behind: &mut Vec<(String, String, i64)>) {
    while let Some((t, id, last)) = behind.last() {
        if m.applied_version(t, id).await.expect("applied version") < *last {
            return;
        }
        behind.pop();
    }
}

/// Every followed aggregate with its last version in the store.
async fn last_versions(store: &sqlx::PgPool) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, max(sequence) FROM events
          WHERE aggregate_type IN ('Product', 'Batch', 'ScanLog')
          GROUP BY aggregate_type, aggregate_id",
    )
    .fetch_all(store)
    .await
    .expect("last versions")
}

// ---------------------------------------------------------------------------------------
// The test

/// A pool on `db` whose commits do not wait for the WAL to reach the disk, nor will those of
/// any later session (the processes'). The test kills processes, never Postgres, and a
/// commit is visible to every session once it returns either way; on a small machine with
/// a busy disk the flushes would cost the test most of its time.
async fn unsynced(db: &TestDb) -> sqlx::PgPool {
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = off",
        db.name
    ))
    .execute(&db.pool)
    .await
    .expect("ALTER DATABASE");
    voketag_platform::db::connect_url(&db.url, 10)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_pubsub_pipeline_survives_sigkills_and_matches_a_sequential_fold() {
    let started = Instant::now();
    let seed: u64 = std::env::var("VOKETAG_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "soak: seed {seed} (VOKETAG_SOAK_SEED={seed} repeats the workload and the kills' timing)"
    );
    pubsub_emulator();
    let events: usize = std::env::var("VOKETAG_SOAK_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(EVENTS);
    let (db, fold_db) = (TestDb::new().await, TestDb::new().await);
    let (pool, fold_pool) = (unsynced(&db).await, unsynced(&fold_db).await);
    let base = format!("vt:test:{}:", Uuid::new_v4().simple());
    let (live_prefix, fold_prefix) = (format!("{base}live:"), format!("{base}fold:"));
    let redis = patient_redis().await;
    let live_redis = RedisScanModel::new(redis.clone(), live_prefix.clone());
    let live_views = PgViews::new(pool.clone());
    let project = format!("soak-{}", &Uuid::new_v4().simple().to_string()[..12]);
    println!("soak: Pub/Sub project {project}, Redis prefix {base}");

    // The subscriptions exist before the relay publishes anything (Pub/Sub delivers only to
    // subscriptions that existed at publish time), with a short ack deadline.
    let mut config = PubSubConfig::new(project.clone(), Some(PUBSUB_ENDPOINT.into()));
    config.ack_deadline_seconds = ACK_DEADLINE_SECONDS;
    let bus = PubSubBus::connect(config).await.expect("the emulator");
    bus.ensure_topic(EVENTS_TOPIC).await.expect("topic");
    for subscription in [live_redis.subscription(), live_views.subscription()] {
        bus.ensure_subscription(EVENTS_TOPIC, subscription)
            .await
            .expect("subscription");
    }

    let fleet = Arc::new(Mutex::new(Fleet::new(vec![
        ("VOKETAG_DATABASE_URL", db.url.clone()),
        ("VOKETAG_DB_MAX_CONNECTIONS", "4".into()),
        ("VOKETAG_REDIS_URL", redis_url()),
        ("VOKETAG_REDIS_PREFIX", live_prefix.clone()),
        ("VOKETAG_BUS", "pubsub".into()),
        ("VOKETAG_PUBSUB_ENDPOINT", PUBSUB_ENDPOINT.into()),
        ("VOKETAG_PUBSUB_PROJECT", project.clone()),
        (
            "VOKETAG_PUBSUB_ACK_DEADLINE_SECONDS",
            ACK_DEADLINE_SECONDS.to_string(),
        ),
        ("VOKETAG_LOG_FILTER", "warn".into()),
    ])));
    fleet.lock().expect("fleet").start_all();

    // The fold follows the store from the start: it is sequential all the same.
    let fold_redis = RedisScanModel::new(redis.clone(), fold_prefix.clone());
    let fold_views = PgViews::new(fold_pool.clone());
    let folds = (
        tokio::spawn(fold(pool.clone(), fold_redis.clone(), events)),
        tokio::spawn(fold(pool.clone(), fold_views.clone(), events)),
    );

    // The catalogue: factories and products first (batches refer to them), then the
    // writers, each with its own batches.
    let store = EventStore::new(pool.clone());
    let mut rng = StdRng::seed_from_u64(seed);
    let factories: Vec<Uuid> = (0..FACTORIES).map(|_| Uuid::now_v7()).collect();
    for (i, f) in factories.iter().enumerate() {
        store
            .execute::<Factory>(
                &f.to_string(),
                FactoryCommand::RegisterFactory {
                    name: format!("Factory {i}"),
                },
                &meta(*f),
                None,
            )
            .await
            .expect("register a factory");
    }
    let products: Vec<(Uuid, Uuid)> = (0..PRODUCTS)
        .map(|i| (Uuid::now_v7(), factories[i % FACTORIES]))
        .collect();
    for (i, (p, f)) in products.iter().enumerate() {
        store
            .execute::<Product>(
                &p.to_string(),
                ProductCommand::RegisterProduct(NewProduct {
                    factory_id: *f,
                    gtin: gtin(i as u64),
                    name: format!("Product {i}"),
                    brand: format!("Brand {}", i % 7),
                    description: String::new(),
                    intended_markets: markets(),
                }),
                &meta(*f),
                None,
            )
            .await
            .expect("register a product");
    }
    let budget = Arc::new(AtomicUsize::new(events - FACTORIES - PRODUCTS));
    // Events both live models applied, beyond the factories and products (read below).
    let applied = Arc::new(AtomicUsize::new(0));
    let mut shares: Vec<Vec<Plan>> = (0..WRITERS).map(|_| vec![]).collect();
    for b in 0..BATCHES {
        let (product, factory) = products[rng.gen_range(0..PRODUCTS)];
        // Somewhere in the batch's life: it gets about 60 % of its share of the events.
        let life = (events * 6 / 10 / BATCHES).max(10);
        let fate = match rng.gen_range(0..100) {
            0..10 => Some((rng.gen_range(3..life), Status::Recalled)),
            10..15 => Some((rng.gen_range(3..life), Status::Closed)),
            _ => None,
        };
        shares[b % WRITERS].push(Plan {
            id: Uuid::now_v7(),
            factory,
            product,
            status: Status::New,
            written: 0,
            fate,
            tags: vec![],
            unrevoked: vec![],
            scans: HashMap::new(),
            ghost: Uuid::new_v4(),
        });
    }
    let batch_ids: Vec<Uuid> = shares.iter().flatten().map(|p| p.id).collect();

    let stop_chaos = Arc::new(AtomicBool::new(false));
    let mut chaos_task = Some(tokio::spawn(chaos(
        fleet.clone(),
        stop_chaos.clone(),
        seed ^ 0x5eed,
    )));
    let writers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, plans)| {
            tokio::spawn(writer(
                store.clone(),
                plans,
                budget.clone(),
                applied.clone(),
                seed.wrapping_add(w as u64 + 1),
            ))
        })
        .collect();

    // Report while the writers write and the processes die; stop the chaos once the
    // writers are done and both models are close to the end; then wait for both models to
    // reach every aggregate's last version. Progress is read sparingly: reading it costs
    // the machine what applying events does.
    let total = (events - FACTORIES) as i64;
    let mut last_report = Instant::now();
    let mut tick = Instant::now();
    let mut written_at = None;
    let mut writers = Some(writers);
    let mut tags = vec![];
    let mut behind = None;
    loop {
        assert!(started.elapsed() < DEADLINE, "the soak did not settle");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writing = writers
            .as_ref()
            .is_some_and(|w| w.iter().any(|w| !w.is_finished()));
        if let Some(done) = writers.take_if(|_| !writing) {
            written_at = Some(started.elapsed());
            let mut written = 0;
            for w in done {
                let (n, t) = w.await.expect("a writer");
                written += n;
                tags.extend(t);
            }
            assert_eq!(written + FACTORIES + PRODUCTS, events);
            let last = last_versions(&pool).await;
            behind = Some((last.clone(), last));
        }
        if chaos_task.is_some() && tick.elapsed() >= Duration::from_secs(2) {
            tick = Instant::now();
            let last = last_versions(&pool).await;
            let (in_redis, in_views) =
                tokio::join!(progress(&live_redis, &last), progress(&live_views, &last));
            let floor = usize::try_from(in_redis.min(in_views)).unwrap_or(0);
            applied.store(floor.saturating_sub(PRODUCTS), Ordering::Relaxed);
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "soak: {:>5.1} s  stored {:>6}  redis {in_redis:>6}  views {in_views:>6}  kills {}",
                    started.elapsed().as_secs_f64(),
                    events - budget.load(Ordering::Relaxed),
                    fleet.lock().expect("fleet").kills
                );
            }
            if !writing && in_redis.min(in_views) * 20 >= total * 19 {
                stop_chaos.store(true, Ordering::Relaxed);
                if let Some(task) = chaos_task.take() {
                    task.await.expect("chaos");
                    let mut f = fleet.lock().expect("fleet");
                    for i in 0..f.workers.len() {
                        f.restart(i);
                    }
                    f.check();
                }
            }
        }
        if chaos_task.is_none()
            && let Some((in_redis, in_views)) = &mut behind
        {
            tokio::join!(
                catch_up(&live_redis, in_redis),
                catch_up(&live_views, in_views)
            );
            if in_redis.is_empty() && in_views.is_empty() {
                break;
            }
        }
    }
    let settled_at = started.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, events as i64);
    let (folded_redis, folded_views) = (
        folds.0.await.expect("the Redis fold"),
        folds.1.await.expect("the views' fold"),
    );
    assert_eq!((folded_redis, folded_views), (events, events));
    let folded_at = started.elapsed();

    let (kills, restarts, exits) = {
        let mut f = fleet.lock().expect("fleet");
        f.check();
        (f.kills, f.restarts, f.exits.clone())
    };
    assert!(exits.is_empty(), "processes ended on their own: {exits:?}");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(&pool)
        .await
        .expect("parked");
    assert_eq!(parked, 0, "events were parked");

    // Everything the models answer, live against the fold.
    tags.push(Uuid::new_v4()); // never mentioned anywhere
    let subjects = Subjects {
        tags,
        batches: batch_ids.iter().copied().chain([Uuid::new_v4()]).collect(),
        products: products
            .iter()
            .map(|(p, _)| *p)
            .chain([Uuid::new_v4()])
            .collect(),
        factories: factories.clone(),
    };
    let (got_redis, want_redis, got_views, want_views) = tokio::join!(
        snapshot(&live_redis, &subjects, false),
        snapshot(&fold_redis, &subjects, false),
        snapshot(&live_views, &subjects, true),
        snapshot(&fold_views, &subjects, true),
    );
    // The comparison is only as good as the workload: it must be rich.
    let revoked = want_views
        .tags
        .iter()
        .filter(|(_, v)| v.as_ref().is_some_and(|v| v.revoked.is_some()))
        .count();
    let scanned = want_views
        .tags
        .iter()
        .filter(|(_, v)| v.as_ref().is_some_and(|v| v.scan_count > 0))
        .count();
    let finished = want_views
        .batches
        .iter()
        .filter(|(_, b)| b.as_ref().is_some_and(|b| b.status != "active"))
        .count();
    assert!(
        revoked * 100 > events
            && scanned * 100 > events
            && finished > 0
            && !want_views.stats.is_empty(),
        "a thin workload: {revoked} revoked, {scanned} scanned, {finished} finished batches"
    );
    for (name, got, want) in [
        ("Redis", &got_redis, &want_redis),
        ("the views", &got_views, &want_views),
    ] {
        let differ: Vec<_> = got
            .tags
            .iter()
            .zip(&want.tags)
            .filter(|(g, w)| g != w)
            .take(3)
            .collect();
        assert!(
            differ.is_empty(),
            "{name}: tags differ from the fold: {differ:#?}"
        );
        assert_eq!(got.batches, want.batches, "{name}: batches");
        assert_eq!(got.products, want.products, "{name}: products");
        assert_eq!(got.stats, want.stats, "{name}: statistics");
        assert_eq!(got, want, "{name}");
    }
    // And Redis answers what the views answer (what `voketag replay redis --verify` checks).
    let differ: Vec<_> = got_redis
        .tags
        .iter()
        .zip(&got_views.tags)
        .filter(|(r, v)| r != v)
        .take(3)
        .collect();
    assert!(differ.is_empty(), "Redis and the views differ: {differ:#?}");
    assert_eq!(got_redis.batches, got_views.batches);
    assert_eq!(got_redis.products, got_views.products);

    assert!(kills >= 10, "only {kills} kills");
    println!(
        "soak: {events} events ({} tags compared), {kills} kills, {restarts} restarts; written by {:.1} s, settled at {:.1} s, folded at {:.1} s, compared at {:.1} s",
        subjects.tags.len(),
        written_at.unwrap_or_default().as_secs_f64(),
        settled_at.as_secs_f64(),
        folded_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(fleet);
    delete_prefix(&redis, &base).await;
    // Best effort: the emulator (shared by the suite) forgets this test's subscriptions.
    let http = reqwest::Client::new();
    for subscription in [live_redis.subscription(), live_views.subscription()] {
        let _ = http
            .delete(format!(
                "{PUBSUB_ENDPOINT}/v1/projects/{project}/subscriptions/{subscription}"
            ))
            .send()
            .await;
    }
}

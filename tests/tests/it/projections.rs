//! The read models against real Postgres and Redis: the Postgres views' behaviour, and the
//! property both models must have (the issue's requirement): a random valid history,
//! delivered with duplicates and in random order by a consumer that re-delivers an event
//! later when the model answers `Gap` and drops it on `Duplicate`, ends in exactly the
//! state of applying the history once in order to a fresh model, which is also what a
//! plain fold of the history (the oracle below) says.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;
use uuid::Uuid;
use voketag_domain::batch::{BatchEvent, IssuedTag};
use voketag_domain::factory::FactoryEvent;
use voketag_domain::product::ProductEvent;
use voketag_domain::scan::{ScanLogEvent, ScanRecord};
use voketag_domain::{Gtin, Market};
use voketag_projections::{
    Applied, BatchView, FactoryDayStats, PgViews, ProductView, RedisScanModel, TagView,
};
use voketag_schemas::bus::EventEnvelope;
use voketag_tests::models::{ReadModel as Model, Snapshot, Subjects, delete_prefix, snapshot};
use voketag_tests::{TestDb, redis_url};

// ---------------------------------------------------------------------------------------
// Events

fn envelope(
    aggregate_type: &str,
    id: Uuid,
    sequence: i64,
    payload: serde_json::Value,
) -> EventEnvelope {
    EventEnvelope {
        position: 0,
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.to_string(),
        sequence,
        event_type: payload
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default(),
        event_version: "1".into(),
        payload,
        metadata: HashMap::new(),
        recorded_at: Utc::now(),
    }
}

fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).expect("serialise an event")
}

const GTINS: [&str; 3] = ["09506000134352", "00012345600012", "04006381333931"];

fn product_registered(index: usize, factory: Uuid) -> ProductEvent {
    ProductEvent::ProductRegistered {
        factory_id: factory,
        gtin: Gtin::parse(GTINS[index % 3]).expect("a valid GTIN"),
        name: format!("Product {index}"),
        brand: format!("Brand {index}"),
        description: String::new(),
        intended_markets: vec![market("BR"), market("US")],
    }
}

fn market(code: &str) -> Market {
    Market::parse(code).expect("a market")
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).expect("a date")
}

fn batch_created(factory: Uuid, product: Uuid, n: usize) -> BatchEvent {
    BatchEvent::BatchCreated {
        factory_id: factory,
        product_id: product,
        lot: format!("L-{n}"),
        production_date: day(1 + (n as u32 % 20)),
        sell_by: n.is_multiple_of(2).then(|| day(28)),
        intended_markets: if n.is_multiple_of(3) {
            vec![market("BR")]
        } else {
            vec![market("BR"), market("US")]
        },
    }
}

fn scan_record(tag_id: Uuid, scan_number: u64, at: DateTime<Utc>, verdict: &str) -> ScanRecord {
    ScanRecord {
        scan_id: Uuid::new_v4(),
        tag_id,
        scanned_at: at,
        verdict: verdict.into(),
        reasons: vec![],
        country: Some("BR".into()),
        region: None,
        device: None,
        scan_number,
    }
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).expect("a time")
}

// ---------------------------------------------------------------------------------------
// Random valid histories

/// One step of a history, interpreted against the state so far; a step that the domain
/// would refuse in that state (activating an active batch, ...) is skipped.
#[derive(Debug, Clone)]
enum Op {
    RegisterProduct(usize),
    CreateBatch(usize),
    Issue {
        batch: Index,
        count: usize,
        serials: u8,
    },
    Revoke {
        batch: Index,
        tag: Index,
    },
    Activate(Index),
    Recall(Index),
    Close(Index),
    /// (tag, seconds after the base time, milliseconds, verdict); the tag index may pick a
    /// tag that was never issued.
    Scans {
        batch: Index,
        scans: Vec<(Index, u32, u32, u8)>,
    },
    /// An event of an aggregate no model follows.
    Factory,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::RegisterProduct),
        2 => (0..3usize).prop_map(Op::CreateBatch),
        4 => (any::<Index>(), 1..6usize, any::<u8>())
            .prop_map(|(batch, count, serials)| Op::Issue { batch, count, serials }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(batch, tag)| Op::Revoke { batch, tag }),
        1 => any::<Index>().prop_map(Op::Activate),
        1 => any::<Index>().prop_map(Op::Recall),
        1 => any::<Index>().prop_map(Op::Close),
        3 => (any::<Index>(), prop::collection::vec((any::<Index>(), 0..7200u32, 0..1000u32, 0..4u8), 1..5))
            .prop_map(|(batch, scans)| Op::Scans { batch, scans }),
        1 => Just(Op::Factory),
    ]
}

struct BatchState {
    id: Uuid,
    seq: i64,
    scan_seq: i64,
    status: &'static str,
    view: BatchView,
    product: Uuid,
    tags: Vec<Uuid>,
    /// A tag id scanned under this batch but never issued.
    ghost: Uuid,
}

#[derive(Clone)]
struct TagState {
    batch: Uuid,
    issued: bool,
    serial: Option<String>,
    revoked: Option<String>,
    count: u64,
    first: Option<DateTime<Utc>>,
}

/// A history with what a plain fold of it says every model must answer.
struct History {
    events: Vec<EventEnvelope>,
    subjects: Subjects,
    expected: Snapshot,
}

const VERDICTS: [&str; 4] = ["authentic", "suspicious", "revoked", "unknown"];

fn build(ops: &[Op]) -> History {
    // Ids are derived from counters (not random) so that a shrunk case is the same case.
    let id =
        |kind: u128, n: usize| Uuid::from_u128((kind << 96) | 0x4000_8000_0000_0000 | n as u128);
    let factories = [id(1, 0), id(1, 1)];
    let products: Vec<Uuid> = (0..3).map(|i| id(2, i)).collect();
    let mut registered = [false; 3];
    let mut batches: Vec<BatchState> = vec![];
    let mut tags: BTreeMap<Uuid, TagState> = BTreeMap::new();
    let mut stats: BTreeMap<(Uuid, NaiveDate), [i64; 6]> = BTreeMap::new();
    let mut events = vec![];
    let mut tag_counter = 0usize;
    let base = Utc
        .with_ymd_and_hms(2026, 11, 25, 23, 0, 0)
        .single()
        .expect("a time");
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::RegisterProduct(p) => {
                if !registered[*p] {
                    registered[*p] = true;
                    let e = product_registered(*p, factories[p % 2]);
                    events.push(envelope("Product", products[*p], 1, json(e)));
                }
            }
            Op::CreateBatch(p) => {
                let b = batches.len();
                let factory = factories[b % 2];
                let e = batch_created(factory, products[*p], b);
                let BatchEvent::BatchCreated {
                    production_date,
                    sell_by,
                    intended_markets,
                    lot,
                    ..
                } = &e
                else {
                    unreachable!("batch_created builds a BatchCreated")
                };
                let state = BatchState {
                    id: id(3, b),
                    seq: 1,
                    scan_seq: 0,
                    status: "draft",
                    view: BatchView {
                        batch_id: id(3, b),
                        factory_id: factory,
                        lot: lot.clone(),
                        status: "draft".into(),
                        production_date: *production_date,
                        sell_by: *sell_by,
                        intended_markets: intended_markets
                            .iter()
                            .map(|m| m.as_str().to_string())
                            .collect(),
                        recall_reason: None,
                    },
                    product: products[*p],
                    tags: vec![],
                    ghost: id(5, b),
                };
                events.push(envelope("Batch", state.id, 1, json(e)));
                batches.push(state);
            }
            Op::Factory => {
                let e = FactoryEvent::FactoryRegistered {
                    name: format!("F{n}"),
                };
                events.push(envelope("Factory", id(6, n), 1, json(e)));
            }
            Op::Issue {
                batch,
                count,
                serials,
            } => {
                let Some(b) = pick(&mut batches, batch) else {
                    continue;
                };
                if !matches!(b.status, "draft" | "active") {
                    continue;
                }
                let mut issued = vec![];
                for i in 0..*count {
                    tag_counter += 1;
                    let tag_id = id(4, tag_counter);
                    let serial = match (*serials as usize + i) % 3 {
                        0 => None,
                        1 => Some(format!("S-{tag_counter}")),
                        // Longer than the Redis model keeps inline.
                        _ => Some(format!("SERIAL-{tag_counter:0>40}-Ü")),
                    };
                    tags.insert(
                        tag_id,
                        TagState {
                            batch: b.id,
                            issued: true,
                            serial: serial.clone(),
                            revoked: None,
                            count: 0,
                            first: None,
                        },
                    );
                    b.tags.push(tag_id);
                    issued.push(IssuedTag { tag_id, serial });
                }
                b.seq += 1;
                let e = BatchEvent::TagsIssued {
                    import_id: None,
                    tags: issued,
                };
                events.push(envelope("Batch", b.id, b.seq, json(e)));
            }
            Op::Revoke { batch, tag } => {
                let Some(b) = pick(&mut batches, batch) else {
                    continue;
                };
                let open: Vec<Uuid> = b
                    .tags
                    .iter()
                    .copied()
                    .filter(|t| tags[t].revoked.is_none())
                    .collect();
                if open.is_empty() {
                    continue;
                }
                let tag_id = open[tag.index(open.len())];
                let reason = format!("revoked at step {n}");
                if let Some(t) = tags.get_mut(&tag_id) {
                    t.revoked = Some(reason.clone());
                }
                b.seq += 1;
                let e = BatchEvent::TagRevoked { tag_id, reason };
                events.push(envelope("Batch", b.id, b.seq, json(e)));
            }
            Op::Activate(batch) | Op::Recall(batch) | Op::Close(batch) => {
                let Some(b) = pick(&mut batches, batch) else {
                    continue;
                };
                let e = match (op, b.status) {
                    (Op::Activate(_), "draft") => {
                        b.status = "active";
                        BatchEvent::BatchActivated
                    }
                    (Op::Close(_), "active") => {
                        b.status = "closed";
                        BatchEvent::BatchClosed
                    }
                    (Op::Recall(_), s) if s != "recalled" => {
                        b.status = "recalled";
                        let reason = format!("recalled at step {n}");
                        b.view.recall_reason = Some(reason.clone());
                        BatchEvent::BatchRecalled { reason }
                    }
                    _ => continue,
                };
                b.view.status = b.status.into();
                b.seq += 1;
                events.push(envelope("Batch", b.id, b.seq, json(e)));
            }
            Op::Scans { batch, scans } => {
                let Some(b) = pick(&mut batches, batch) else {
                    continue;
                };
                let mut records = vec![];
                for (tag, secs, millis, verdict) in scans {
                    // One past the issued tags: the batch's ghost, never issued.
                    let i = tag.index(b.tags.len() + 1);
                    let tag_id = b.tags.get(i).copied().unwrap_or(b.ghost);
                    let t = tags.entry(tag_id).or_insert_with(|| TagState {
                        batch: b.id,
                        issued: false,
                        serial: None,
                        revoked: None,
                        count: 0,
                        first: None,
                    });
                    t.count += 1;
                    let at = base
                        + Duration::seconds(i64::from(*secs))
                        + Duration::milliseconds(i64::from(*millis));
                    t.first = Some(
                        t.first
                            .map_or(whole_second(at), |f| f.min(whole_second(at))),
                    );
                    let verdict = VERDICTS[*verdict as usize % 4];
                    let s = stats
                        .entry((b.view.factory_id, at.date_naive()))
                        .or_default();
                    s[0] += 1;
                    s[1] += i64::from(t.count == 1);
                    s[2 + (VERDICTS.iter().position(|v| *v == verdict).unwrap_or(0))] += 1;
                    records.push(scan_record(tag_id, t.count, at, verdict));
                }
                b.scan_seq += 1;
                let e = ScanLogEvent::ScansRecorded { scans: records };
                events.push(envelope("ScanLog", b.id, b.scan_seq, json(e)));
            }
        }
    }

    // The oracle: what every model must answer after the whole history.
    let product_view = |i: usize| ProductView {
        product_id: products[i],
        gtin: GTINS[i].into(),
        name: format!("Product {i}"),
        brand: format!("Brand {i}"),
    };
    let mut tag_ids: Vec<Uuid> = tags.keys().copied().collect();
    tag_ids.push(id(7, 0)); // never mentioned anywhere
    let expected_tags = tag_ids
        .iter()
        .map(|tag_id| {
            let view = tags.get(tag_id).and_then(|t| {
                let b = batches.iter().find(|b| b.id == t.batch)?;
                let p = products.iter().position(|p| *p == b.product)?;
                (t.issued && registered[p]).then(|| TagView {
                    tag_id: *tag_id,
                    serial: t.serial.clone(),
                    revoked: t.revoked.clone(),
                    first_scan_at: t.first,
                    scan_count: t.count,
                    batch: b.view.clone(),
                    product: product_view(p),
                })
            });
            (*tag_id, view)
        })
        .collect();
    let mut batch_ids: Vec<Uuid> = batches.iter().map(|b| b.id).collect();
    batch_ids.push(id(3, 999)); // never created
    let expected_batches = batch_ids
        .iter()
        .map(|id| {
            (
                *id,
                batches.iter().find(|b| b.id == *id).map(|b| b.view.clone()),
            )
        })
        .collect();
    let expected_products = (0..3)
        .map(|i| (products[i], registered[i].then(|| product_view(i))))
        .collect();
    let expected_stats = stats
        .into_iter()
        .map(|((factory_id, day), s)| FactoryDayStats {
            factory_id,
            day,
            scans: s[0],
            first_scans: s[1],
            authentic: s[2],
            suspicious: s[3],
            revoked: s[4],
            unknown: s[5],
        })
        .collect();
    History {
        events,
        subjects: Subjects {
            tags: tag_ids,
            batches: batch_ids,
            products,
            factories: factories.to_vec(),
        },
        expected: Snapshot {
            tags: expected_tags,
            batches: expected_batches,
            products: expected_products,
            stats: expected_stats,
        },
    }
}

fn pick<'a>(batches: &'a mut [BatchState], i: &Index) -> Option<&'a mut BatchState> {
    if batches.is_empty() {
        return None;
    }
    let n = i.index(batches.len());
    batches.get_mut(n)
}

// ---------------------------------------------------------------------------------------
// Delivery

/// Applies the history once, in order: every event is applied (or ignored).
async fn apply_in_order<M: Model>(m: &M, events: &[EventEnvelope]) -> Result<(), String> {
    for e in events {
        let expected = if e.aggregate_type == "Factory" {
            Applied::Ignored
        } else {
            Applied::Applied
        };
        let got = m.apply(e).await.map_err(|err| err.to_string())?;
        if got != expected {
            return Err(format!(
                "{} {}#{}: {got:?} in order",
                e.aggregate_type, e.aggregate_id, e.sequence
            ));
        }
    }
    Ok(())
}

/// Delivers the history shuffled, with up to three copies of an event, like an
/// at-least-once bus: on `Gap` the consumer puts the event back at the end of the queue,
/// on `Duplicate` it drops it. Returns how many deliveries it took.
async fn deliver_shuffled<M: Model>(
    m: &M,
    events: &[EventEnvelope],
    seed: u64,
    duplicate_percent: u32,
) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut queue = vec![];
    for e in events {
        queue.push(e.clone());
        for _ in 0..2 {
            if rng.gen_range(0..100) < duplicate_percent {
                queue.push(e.clone());
            }
        }
    }
    queue.shuffle(&mut rng);
    let mut queue = VecDeque::from(queue);
    let budget = (queue.len() + 1) * (events.len() + 1);
    let mut deliveries = 0;
    let mut applied = 0;
    while let Some(e) = queue.pop_front() {
        deliveries += 1;
        if deliveries > budget {
            return Err(format!("no progress after {deliveries} deliveries"));
        }
        match m.apply(&e).await.map_err(|err| err.to_string())? {
            Applied::Gap { expected } => {
                if expected >= e.sequence {
                    return Err(format!("gap answer {expected} for version {}", e.sequence));
                }
                queue.push_back(e);
            }
            Applied::Applied => applied += 1,
            Applied::Duplicate | Applied::Ignored => {}
        }
    }
    let followed = events
        .iter()
        .filter(|e| e.aggregate_type != "Factory")
        .count();
    if applied != followed {
        return Err(format!(
            "{applied} events applied, the history has {followed}"
        ));
    }
    Ok(deliveries)
}

fn history_strategy() -> impl Strategy<Value = (Vec<Op>, u64, u32)> {
    (prop::collection::vec(op(), 8..60), any::<u64>(), 0..60u32)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    })
}

fn check(name: &str, got: &Snapshot, want: &Snapshot) -> Result<(), TestCaseError> {
    if got == want {
        return Ok(());
    }
    for (g, w) in got.tags.iter().zip(&want.tags) {
        prop_assert_eq!(g, w, "{}: tag", name);
    }
    prop_assert_eq!(&got.batches, &want.batches, "{}: batches", name);
    prop_assert_eq!(&got.products, &want.products, "{}: products", name);
    prop_assert_eq!(&got.stats, &want.stats, "{}: stats", name);
    prop_assert_eq!(got, want, "{}", name);
    Ok(())
}

#[test]
fn redis_model_converges_under_duplicated_and_reordered_delivery() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let pool = rt
        .block_on(voketag_platform::redis::connect_url(&redis_url()))
        .expect("connect to Redis");
    let started = Instant::now();
    let totals = std::cell::Cell::new((0usize, 0usize));
    let result = runner(32).run(&history_strategy(), |(ops, seed, dups)| {
        rt.block_on(async {
            let h = build(&ops);
            let base = format!("vt:test:{}:", Uuid::new_v4().simple());
            let (seq_prefix, shuffled_prefix) = (format!("{base}seq:"), format!("{base}dlv:"));
            let sequential = RedisScanModel::new(pool.clone(), seq_prefix);
            let delivered = RedisScanModel::new(pool.clone(), shuffled_prefix);
            let outcome = async {
                apply_in_order(&sequential, &h.events)
                    .await
                    .map_err(TestCaseError::fail)?;
                let deliveries = deliver_shuffled(&delivered, &h.events, seed, dups)
                    .await
                    .map_err(TestCaseError::fail)?;
                let (e, d) = totals.get();
                totals.set((e + h.events.len(), d + deliveries));
                let want = snapshot(&sequential, &h.subjects, false).await;
                let mut oracle = h.expected.clone();
                oracle.stats.clear();
                check("in order vs the oracle", &want, &oracle)?;
                let got = snapshot(&delivered, &h.subjects, false).await;
                check("shuffled vs in order", &got, &want)
            }
            .await;
            delete_prefix(&pool, &base).await;
            outcome
        })
    });
    let (events, deliveries) = totals.get();
    println!(
        "Redis: 32 cases in {:?}: {events} events delivered {deliveries} times",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn postgres_views_converge_under_duplicated_and_reordered_delivery() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (seq_db, dlv_db) = rt.block_on(async { (TestDb::new().await, TestDb::new().await) });
    let sequential = PgViews::new(seq_db.pool.clone());
    let delivered = PgViews::new(dlv_db.pool.clone());
    let started = Instant::now();
    let totals = std::cell::Cell::new((0usize, 0usize));
    let result = runner(32).run(&history_strategy(), |(ops, seed, dups)| {
        rt.block_on(async {
            sequential.clear().await.expect("empty the views");
            delivered.clear().await.expect("empty the views");
            let h = build(&ops);
            apply_in_order(&sequential, &h.events)
                .await
                .map_err(TestCaseError::fail)?;
            let deliveries = deliver_shuffled(&delivered, &h.events, seed, dups)
                .await
                .map_err(TestCaseError::fail)?;
            let (e, d) = totals.get();
            totals.set((e + h.events.len(), d + deliveries));
            let want = snapshot(&sequential, &h.subjects, true).await;
            check("in order vs the oracle", &want, &h.expected)?;
            let got = snapshot(&delivered, &h.subjects, true).await;
            check("shuffled vs in order", &got, &want)
        })
    });
    let (events, deliveries) = totals.get();
    println!(
        "Postgres: 32 cases in {:?}: {events} events delivered {deliveries} times",
        started.elapsed()
    );
    drop(rt);
    drop((seq_db, dlv_db));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_generator_makes_rich_histories() {
    // Guards the property tests against a generator that quietly degenerates.
    let mut runner = runner(64);
    let mut totals = [0usize; 4];
    for _ in 0..64 {
        let tree = history_strategy().new_tree(&mut runner).expect("a history");
        let (ops, _, _) = tree.current();
        let h = build(&ops);
        totals[0] += h.events.len();
        totals[1] += h
            .expected
            .tags
            .iter()
            .filter(|(_, v)| v.as_ref().is_some_and(|v| v.scan_count > 0))
            .count();
        totals[2] += h
            .expected
            .tags
            .iter()
            .filter(|(_, v)| v.as_ref().is_some_and(|v| v.revoked.is_some()))
            .count();
        totals[3] += h
            .events
            .iter()
            .filter(|e| e.aggregate_type == "ScanLog")
            .count();
    }
    assert!(totals[0] > 64 * 8, "events: {totals:?}");
    assert!(totals[1] > 64, "scanned known tags: {totals:?}");
    assert!(totals[2] > 16, "revoked tags: {totals:?}");
    assert!(totals[3] > 64, "scan logs: {totals:?}");
    println!("64 histories: [events, scanned known tags, revoked tags, scan logs] = {totals:?}");
}

// ---------------------------------------------------------------------------------------
// The Postgres views, one behaviour at a time

fn product_event(product: Uuid, factory: Uuid) -> EventEnvelope {
    envelope("Product", product, 1, json(product_registered(0, factory)))
}

fn batch_event(batch: Uuid, seq: i64, e: BatchEvent) -> EventEnvelope {
    envelope("Batch", batch, seq, json(e))
}

fn issue(tags: &[Uuid]) -> BatchEvent {
    BatchEvent::TagsIssued {
        import_id: None,
        tags: tags
            .iter()
            .map(|t| IssuedTag {
                tag_id: *t,
                serial: Some(format!("S-{}", t.simple())),
            })
            .collect(),
    }
}

fn scans_event(batch: Uuid, seq: i64, scans: Vec<ScanRecord>) -> EventEnvelope {
    envelope(
        "ScanLog",
        batch,
        seq,
        json(ScanLogEvent::ScansRecorded { scans }),
    )
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("a time")
        + Duration::seconds(secs)
}

struct Seeded {
    views: PgViews,
    _db: TestDb,
    factory: Uuid,
    product: Uuid,
    batch: Uuid,
}

/// A product, a batch of it and `tags` issued in it.
async fn seeded(tags: &[Uuid]) -> Seeded {
    let db = TestDb::new().await;
    let views = PgViews::new(db.pool.clone());
    let (factory, product, batch) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for e in [
        product_event(product, factory),
        batch_event(batch, 1, batch_created(factory, product, 0)),
        batch_event(batch, 2, issue(tags)),
    ] {
        assert_eq!(views.apply(&e).await.expect("apply"), Applied::Applied);
    }
    Seeded {
        views,
        _db: db,
        factory,
        product,
        batch,
    }
}

#[tokio::test]
async fn postgres_versions_gate_each_aggregate_and_poison_is_refused() {
    let tag = Uuid::new_v4();
    let s = seeded(&[tag]).await;
    let v = &s.views;
    assert_eq!(
        v.apply(&product_event(s.product, s.factory))
            .await
            .expect("apply"),
        Applied::Duplicate
    );
    assert_eq!(
        v.apply(&batch_event(s.batch, 2, issue(&[Uuid::new_v4()])))
            .await
            .expect("apply"),
        Applied::Duplicate
    );
    assert_eq!(
        v.apply(&batch_event(s.batch, 5, BatchEvent::BatchActivated))
            .await
            .expect("apply"),
        Applied::Gap { expected: 3 }
    );
    assert_eq!(
        v.lookup(tag)
            .await
            .expect("lookup")
            .expect("tag")
            .batch
            .status,
        "draft"
    );
    // The scan log shares the batch's id, not its versions.
    let log = scans_event(s.batch, 1, vec![scan_record(tag, 1, at(0), "authentic")]);
    assert_eq!(v.apply(&log).await.expect("apply"), Applied::Applied);
    assert_eq!(v.apply(&log).await.expect("apply"), Applied::Duplicate);
    assert_eq!(
        v.lookup(tag)
            .await
            .expect("lookup")
            .expect("tag")
            .scan_count,
        1
    );
    assert_eq!(
        v.apply(&batch_event(s.batch, 3, BatchEvent::BatchActivated))
            .await
            .expect("apply"),
        Applied::Applied
    );

    let factory = envelope(
        "Factory",
        Uuid::new_v4(),
        1,
        json(FactoryEvent::FactoryRegistered { name: "F".into() }),
    );
    assert_eq!(v.apply(&factory).await.expect("apply"), Applied::Ignored);

    let mut poison = batch_event(s.batch, 4, BatchEvent::BatchClosed);
    poison.payload = serde_json::json!({"BatchRenamed": {"lot": "x"}});
    let err = v.apply(&poison).await.expect_err("poison");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("BatchRenamed") || err.to_string().contains("unknown variant"),
        "{err}"
    );
    // Nothing moved: version 4 is still expected.
    assert_eq!(
        v.apply(&batch_event(s.batch, 4, BatchEvent::BatchClosed))
            .await
            .expect("apply"),
        Applied::Applied
    );
    assert_eq!(
        v.lookup(tag)
            .await
            .expect("lookup")
            .expect("tag")
            .batch
            .status,
        "closed"
    );
}

#[tokio::test]
async fn postgres_lookup_joins_whatever_order_the_aggregates_arrive_in() {
    let db = TestDb::new().await;
    let v = PgViews::new(db.pool.clone());
    let (factory, product, batch, tag) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    // Scans first, then the batch, then the product.
    v.apply(&scans_event(
        batch,
        1,
        vec![scan_record(
            tag,
            2,
            at(30) + Duration::milliseconds(900),
            "authentic",
        )],
    ))
    .await
    .expect("apply");
    assert_eq!(v.lookup(tag).await.expect("lookup"), None);
    v.apply(&batch_event(batch, 1, batch_created(factory, product, 0)))
        .await
        .expect("apply");
    v.apply(&batch_event(batch, 2, issue(&[tag])))
        .await
        .expect("apply");
    assert_eq!(
        v.lookup(tag).await.expect("lookup"),
        None,
        "the product is missing"
    );
    v.apply(&product_event(product, factory))
        .await
        .expect("apply");
    let view = v.lookup(tag).await.expect("lookup").expect("complete now");
    assert_eq!(
        view,
        TagView {
            tag_id: tag,
            serial: Some(format!("S-{}", tag.simple())),
            revoked: None,
            first_scan_at: Some(at(30)),
            scan_count: 2,
            batch: BatchView {
                batch_id: batch,
                factory_id: factory,
                lot: "L-0".into(),
                status: "draft".into(),
                production_date: day(1),
                sell_by: Some(day(28)),
                intended_markets: vec!["BR".into()],
                recall_reason: None,
            },
            product: ProductView {
                product_id: product,
                gtin: GTINS[0].into(),
                name: "Product 0".into(),
                brand: "Brand 0".into(),
            },
        }
    );
    assert_eq!(v.lookup(Uuid::new_v4()).await.expect("lookup"), None);
    assert_eq!(v.batch(batch).await.expect("batch"), Some(view.batch));
    assert_eq!(
        v.product(product).await.expect("product"),
        Some(view.product)
    );
}

#[tokio::test]
async fn postgres_recall_and_revocation_show_in_lookups() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let s = seeded(&[a, b]).await;
    let v = &s.views;
    v.apply(&batch_event(s.batch, 3, BatchEvent::BatchActivated))
        .await
        .expect("apply");
    v.apply(&batch_event(
        s.batch,
        4,
        BatchEvent::TagRevoked {
            tag_id: a,
            reason: "cloned".into(),
        },
    ))
    .await
    .expect("apply");
    assert_eq!(
        v.lookup(a)
            .await
            .expect("lookup")
            .expect("a")
            .revoked
            .as_deref(),
        Some("cloned")
    );
    assert_eq!(v.lookup(b).await.expect("lookup").expect("b").revoked, None);
    assert_eq!(
        v.lookup(b).await.expect("lookup").expect("b").batch.status,
        "active"
    );
    v.apply(&batch_event(
        s.batch,
        5,
        BatchEvent::BatchRecalled {
            reason: "mislabelled".into(),
        },
    ))
    .await
    .expect("apply");
    for t in [a, b] {
        let view = v.lookup(t).await.expect("lookup").expect("tag");
        assert_eq!(view.batch.status, "recalled");
        assert_eq!(view.batch.recall_reason.as_deref(), Some("mislabelled"));
    }
}

#[tokio::test]
async fn postgres_recorded_scans_take_the_highest_count_and_earliest_first_scan() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let s = seeded(&[a, b]).await;
    let v = &s.views;
    v.apply(&scans_event(
        s.batch,
        1,
        vec![
            scan_record(a, 1, at(100), "authentic"),
            scan_record(a, 2, at(200), "suspicious"),
            scan_record(b, 1, at(86_400), "revoked"),
        ],
    ))
    .await
    .expect("apply");
    let view = v.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((view.scan_count, view.first_scan_at), (2, Some(at(100))));
    // Later records with a lower number or a later time change nothing; an earlier time
    // moves the first scan, a higher number the count.
    v.apply(&scans_event(
        s.batch,
        2,
        vec![scan_record(a, 1, at(300), "authentic")],
    ))
    .await
    .expect("apply");
    let view = v.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((view.scan_count, view.first_scan_at), (2, Some(at(100))));
    v.apply(&scans_event(
        s.batch,
        3,
        vec![scan_record(a, 7, at(50), "unknown")],
    ))
    .await
    .expect("apply");
    let view = v.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((view.scan_count, view.first_scan_at), (7, Some(at(50))));

    let stats = v.factory_scan_stats(s.factory).await.expect("stats");
    let row = |day: NaiveDate, scans, first_scans, counts: [i64; 4]| FactoryDayStats {
        factory_id: s.factory,
        day,
        scans,
        first_scans,
        authentic: counts[0],
        suspicious: counts[1],
        revoked: counts[2],
        unknown: counts[3],
    };
    assert_eq!(
        stats,
        vec![
            row(day(25), 4, 2, [2, 1, 0, 1]),
            row(day(26), 1, 1, [0, 0, 1, 0]),
        ]
    );
    assert_eq!(
        v.factory_scan_stats(Uuid::new_v4()).await.expect("stats"),
        vec![]
    );
}

#[tokio::test]
async fn postgres_scan_statistics_wait_for_the_batch_without_retries() {
    let db = TestDb::new().await;
    let v = PgViews::new(db.pool.clone());
    let (factory, product, batch, tag) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let log = scans_event(batch, 1, vec![scan_record(tag, 1, at(0), "authentic")]);
    assert_eq!(v.apply(&log).await.expect("apply"), Applied::Applied);
    assert_eq!(v.factory_scan_stats(factory).await.expect("stats"), vec![]);
    v.apply(&batch_event(batch, 1, batch_created(factory, product, 0)))
        .await
        .expect("apply");
    let stats = v.factory_scan_stats(factory).await.expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].scans, stats[0].first_scans, stats[0].authentic),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn postgres_issues_ten_thousand_tags_in_one_statement() {
    let s = seeded(&[Uuid::new_v4()]).await;
    let tags: Vec<Uuid> = (0..voketag_domain::MAX_TAGS_PER_EVENT)
        .map(|_| Uuid::new_v4())
        .collect();
    let e = batch_event(s.batch, 3, issue(&tags));
    let started = Instant::now();
    assert_eq!(s.views.apply(&e).await.expect("apply"), Applied::Applied);
    let took = started.elapsed();
    println!("10,000 tags issued into the Postgres views in {took:?}");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM view_tags WHERE batch_id = $1 AND issued")
            .bind(s.batch)
            .fetch_one(s.views.pool())
            .await
            .expect("count");
    assert_eq!(n, 10_001);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let last = s
        .views
        .lookup(tags[9_999])
        .await
        .expect("lookup")
        .expect("tag");
    assert_eq!(last.serial, Some(format!("S-{}", tags[9_999].simple())));
}

#[tokio::test]
async fn postgres_concurrent_appliers_apply_an_event_once() {
    let tag = Uuid::new_v4();
    let s = seeded(&[tag]).await;
    let e = scans_event(s.batch, 1, vec![scan_record(tag, 1, at(0), "authentic")]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (v, e) = (s.views.clone(), e.clone());
        set.spawn(async move { v.apply(&e).await.expect("apply") });
    }
    let mut results = vec![];
    while let Some(r) = set.join_next().await {
        results.push(r.expect("task"));
    }
    assert_eq!(
        results.iter().filter(|r| **r == Applied::Applied).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| **r == Applied::Duplicate).count(),
        7,
        "{results:?}"
    );
    let stats = s.views.factory_scan_stats(s.factory).await.expect("stats");
    assert_eq!(stats[0].scans, 1, "counted once");
}

//! Tests against a real Redis (`VOKETAG_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`),
//! each under a prefix of its own, deleted afterwards.

use super::*;
use chrono::TimeZone;
use fred::interfaces::ClientLike;
use std::collections::HashMap;
use voketag_domain::batch::IssuedTag;
use voketag_domain::scan::ScanRecord;
use voketag_domain::{Gtin, Market};
use voketag_platform::redis::{glob_escape, scan_reply};

fn redis_url() -> String {
    std::env::var("VOKETAG_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Ctx {
    pool: Pool,
    prefix: String,
    model: RedisScanModel,
}

impl Ctx {
    async fn new() -> Ctx {
        let pool = voketag_platform::redis::connect_url(&redis_url())
            .await
            .expect("connect to Redis");
        let prefix = format!("vt:test:{}:", Uuid::new_v4().simple());
        let model = RedisScanModel::new(pool.clone(), prefix.clone());
        Ctx {
            pool,
            prefix,
            model,
        }
    }

    /// Every key under the test's prefix.
    async fn keys(&self) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut all = Vec::new();
        loop {
            let page: Value = self
                .pool
                .scan_page(
                    cursor.clone(),
                    format!("{}*", glob_escape(&self.prefix)),
                    Some(1000),
                    None,
                )
                .await
                .expect("SCAN");
            let (next, keys) = scan_reply(page).expect("SCAN reply");
            all.extend(keys);
            if next == "0" {
                return all;
            }
            cursor = next;
        }
    }

    async fn cleanup(self) {
        let keys = self.keys().await;
        for chunk in keys.chunks(1000) {
            let _: i64 = self.pool.unlink(chunk.to_vec()).await.expect("UNLINK");
        }
    }
}

fn envelope(
    aggregate_type: &str,
    id: Uuid,
    sequence: i64,
    payload: serde_json::Value,
) -> EventEnvelope {
    EventEnvelope {
        position: sequence,
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.to_string(),
        sequence,
        event_type: "Test".into(),
        event_version: "1".into(),
        payload,
        metadata: HashMap::new(),
        recorded_at: Utc::now(),
    }
}

fn product_event(id: Uuid, seq: i64) -> EventEnvelope {
    let e = ProductEvent::ProductRegistered {
        factory_id: Uuid::from_u128(7),
        gtin: Gtin::parse("09506000134352").expect("gtin"),
        name: "Serum".into(),
        brand: "Acme".into(),
        description: String::new(),
        intended_markets: vec![Market::parse("BR").expect("market")],
    };
    envelope("Product", id, seq, serde_json::to_value(e).expect("json"))
}

fn batch_event(id: Uuid, seq: i64, e: BatchEvent) -> EventEnvelope {
    envelope("Batch", id, seq, serde_json::to_value(e).expect("json"))
}

fn created(product: Uuid) -> BatchEvent {
    BatchEvent::BatchCreated {
        factory_id: Uuid::from_u128(7),
        product_id: product,
        lot: "L-1".into(),
        production_date: NaiveDate::from_ymd_opt(2026, 11, 1).expect("date"),
        sell_by: Some(NaiveDate::from_ymd_opt(2027, 11, 1).expect("date")),
        intended_markets: vec![
            Market::parse("BR").expect("market"),
            Market::parse("US").expect("market"),
        ],
    }
}

fn issued(tags: &[(Uuid, Option<&str>)]) -> BatchEvent {
    BatchEvent::TagsIssued {
        import_id: None,
        tags: tags
            .iter()
            .map(|(tag_id, serial)| IssuedTag {
                tag_id: *tag_id,
                serial: serial.map(str::to_string),
            })
            .collect(),
    }
}

fn scans(batch: Uuid, seq: i64, scans: &[(Uuid, u64, DateTime<Utc>)]) -> EventEnvelope {
    let e = ScanLogEvent::ScansRecorded {
        scans: scans
            .iter()
            .map(|(tag_id, n, at)| ScanRecord {
                scan_id: Uuid::new_v4(),
                tag_id: *tag_id,
                scanned_at: *at,
                verdict: "authentic".into(),
                reasons: vec![],
                country: Some("BR".into()),
                region: None,
                device: None,
                scan_number: *n,
            })
            .collect(),
    };
    envelope(
        "ScanLog",
        batch,
        seq,
        serde_json::to_value(e).expect("json"),
    )
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0)
        .single()
        .expect("time")
}

/// A product, a batch of it and `tags` issued (without serial) in the batch.
async fn seed(model: &RedisScanModel, tags: &[Uuid]) -> (Uuid, Uuid) {
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    assert_eq!(
        model
            .apply(&product_event(product, 1))
            .await
            .expect("apply"),
        Applied::Applied
    );
    assert_eq!(
        model
            .apply(&batch_event(batch, 1, created(product)))
            .await
            .expect("apply"),
        Applied::Applied
    );
    let list: Vec<(Uuid, Option<&str>)> = tags.iter().map(|t| (*t, None)).collect();
    assert_eq!(
        model
            .apply(&batch_event(batch, 2, issued(&list)))
            .await
            .expect("apply"),
        Applied::Applied
    );
    (product, batch)
}

#[test]
fn buckets_spread_sequential_and_time_ordered_ids() {
    let mut seen = std::collections::HashSet::new();
    for i in 0..4096u128 {
        seen.insert(bucket(&Uuid::from_u128(i)));
    }
    // 4096 sequential ids over 65,536 buckets: nearly all distinct.
    assert!(seen.len() > 3900, "{} buckets", seen.len());
    let v7: std::collections::HashSet<u16> = (0..4096).map(|_| bucket(&Uuid::now_v7())).collect();
    assert!(v7.len() > 3900, "{} buckets", v7.len());
    assert_eq!(bucket_name(&Uuid::nil()).len(), 4);
}

#[test]
fn keyspace_names_are_checked() {
    assert!(check_keyspace("0").is_ok());
    assert!(check_keyspace("0192f0a1b2c3-x_y.z").is_ok());
    assert!(check_keyspace("").is_err());
    assert!(check_keyspace("a:b").is_err());
    assert!(check_keyspace("a*").is_err());
    assert!(check_keyspace(&"x".repeat(65)).is_err());
}

#[tokio::test]
async fn versions_gate_every_aggregate_separately() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    let tag = Uuid::new_v4();

    assert_eq!(
        m.apply(&product_event(product, 1)).await.expect("apply"),
        Applied::Applied
    );
    assert_eq!(
        m.apply(&product_event(product, 1)).await.expect("apply"),
        Applied::Duplicate
    );
    assert_eq!(
        m.apply(&product_event(product, 3)).await.expect("apply"),
        Applied::Gap { expected: 2 }
    );

    // The batch's first event is version 1 of its own aggregate.
    assert_eq!(
        m.apply(&batch_event(batch, 2, BatchEvent::BatchActivated))
            .await
            .expect("apply"),
        Applied::Gap { expected: 1 }
    );
    assert_eq!(
        m.apply(&batch_event(batch, 1, created(product)))
            .await
            .expect("apply"),
        Applied::Applied
    );
    assert_eq!(
        m.apply(&batch_event(batch, 2, issued(&[(tag, None)])))
            .await
            .expect("apply"),
        Applied::Applied
    );
    // The gap answer did not apply the activation.
    assert_eq!(
        m.lookup(tag)
            .await
            .expect("lookup")
            .expect("tag")
            .batch
            .status,
        "draft"
    );

    // The scan log has the batch's id but versions of its own.
    assert_eq!(
        m.apply(&scans(batch, 1, &[(tag, 1, at(0))]))
            .await
            .expect("apply"),
        Applied::Applied
    );
    assert_eq!(
        m.apply(&scans(batch, 1, &[(tag, 9, at(0))]))
            .await
            .expect("apply"),
        Applied::Duplicate
    );
    assert_eq!(
        m.lookup(tag)
            .await
            .expect("lookup")
            .expect("tag")
            .scan_count,
        1,
        "a duplicate changes nothing"
    );
    assert_eq!(
        m.apply(&batch_event(batch, 3, BatchEvent::BatchActivated))
            .await
            .expect("apply"),
        Applied::Applied
    );

    // Aggregates no model follows.
    let mut factory = product_event(Uuid::new_v4(), 1);
    factory.aggregate_type = "Factory".into();
    assert_eq!(m.apply(&factory).await.expect("apply"), Applied::Ignored);
    let mut key = product_event(Uuid::new_v4(), 1);
    key.aggregate_type = "ApiKey".into();
    key.payload = serde_json::json!({"ApiKeyCreated": {}});
    assert_eq!(m.apply(&key).await.expect("apply"), Applied::Ignored);
    ctx.cleanup().await;
}

#[tokio::test]
async fn unreadable_events_are_poison_and_change_nothing() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let product = Uuid::new_v4();
    let mut bad = product_event(product, 1);
    bad.payload = serde_json::json!({"ProductRenamed": {"name": "x"}});
    let err = m.apply(&bad).await.expect_err("poison");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("does not deserialize"), "{err}");

    let mut bad_id = product_event(product, 1);
    bad_id.aggregate_id = "not-a-uuid".into();
    let err = m.apply(&bad_id).await.expect_err("poison");
    assert!(matches!(err, ProjectionError::Poison { .. }), "{err}");
    assert!(err.to_string().contains("not a UUID"), "{err}");

    let mut zero = product_event(product, 0);
    zero.sequence = 0;
    assert!(matches!(
        m.apply(&zero).await,
        Err(ProjectionError::Poison { .. })
    ));

    // Version 1 is still expected.
    assert_eq!(
        m.apply(&product_event(product, 1)).await.expect("apply"),
        Applied::Applied
    );
    ctx.cleanup().await;
}

#[tokio::test]
async fn a_tag_reads_as_unknown_until_its_batch_and_product_are_there() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    let tag = Uuid::new_v4();
    m.apply(&batch_event(batch, 1, created(product)))
        .await
        .expect("apply");
    m.apply(&batch_event(batch, 2, issued(&[(tag, Some("SN-1"))])))
        .await
        .expect("apply");
    assert_eq!(
        m.lookup(tag).await.expect("lookup"),
        None,
        "the product is not there yet"
    );
    assert_eq!(m.scan(tag, at(0)).await.expect("scan"), None);
    assert_eq!(m.product(product).await.expect("product"), None);
    assert!(m.batch(batch).await.expect("batch").is_some());

    m.apply(&product_event(product, 1)).await.expect("apply");
    let view = m.lookup(tag).await.expect("lookup").expect("known now");
    assert_eq!(
        view,
        TagView {
            tag_id: tag,
            serial: Some("SN-1".into()),
            revoked: None,
            first_scan_at: None,
            scan_count: 0,
            batch: BatchView {
                batch_id: batch,
                factory_id: Uuid::from_u128(7),
                lot: "L-1".into(),
                status: "draft".into(),
                production_date: NaiveDate::from_ymd_opt(2026, 11, 1).expect("date"),
                sell_by: Some(NaiveDate::from_ymd_opt(2027, 11, 1).expect("date")),
                intended_markets: vec!["BR".into(), "US".into()],
                recall_reason: None,
            },
            product: ProductView {
                product_id: product,
                gtin: "09506000134352".into(),
                name: "Serum".into(),
                brand: "Acme".into(),
            },
        }
    );
    assert_eq!(
        m.batch(batch).await.expect("batch"),
        Some(view.batch.clone())
    );
    assert_eq!(
        m.product(product).await.expect("product"),
        Some(view.product.clone())
    );
    assert_eq!(m.lookup(Uuid::new_v4()).await.expect("lookup"), None);
    ctx.cleanup().await;
}

#[tokio::test]
async fn recall_and_revocation_show_in_lookups() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (_, batch) = seed(m, &[a, b]).await;
    m.apply(&batch_event(batch, 3, BatchEvent::BatchActivated))
        .await
        .expect("apply");
    assert_eq!(
        m.lookup(a).await.expect("lookup").expect("a").batch.status,
        "active"
    );
    m.apply(&batch_event(
        batch,
        4,
        BatchEvent::TagRevoked {
            tag_id: a,
            reason: "stolen".into(),
        },
    ))
    .await
    .expect("apply");
    assert_eq!(
        m.lookup(a)
            .await
            .expect("lookup")
            .expect("a")
            .revoked
            .as_deref(),
        Some("stolen")
    );
    assert_eq!(m.lookup(b).await.expect("lookup").expect("b").revoked, None);
    m.apply(&batch_event(
        batch,
        5,
        BatchEvent::BatchRecalled {
            reason: "contaminated".into(),
        },
    ))
    .await
    .expect("apply");
    for t in [a, b] {
        let v = m.lookup(t).await.expect("lookup").expect("tag");
        assert_eq!(v.batch.status, "recalled");
        assert_eq!(v.batch.recall_reason.as_deref(), Some("contaminated"));
    }
    // A revoked tag is still found (and counted) by a scan: the verdict is the API's.
    let hit = m.scan(a, at(5)).await.expect("scan").expect("hit");
    assert_eq!(hit.view.revoked.as_deref(), Some("stolen"));
    assert_eq!(hit.view.scan_count, 1);
    ctx.cleanup().await;
}

#[tokio::test]
async fn scan_counts_and_sets_the_first_scan_once() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let tag = Uuid::new_v4();
    seed(m, &[tag]).await;
    let first = m.scan(tag, at(10)).await.expect("scan").expect("hit");
    assert!(first.first_scan);
    assert_eq!(first.view.scan_count, 1);
    assert_eq!(first.view.first_scan_at, Some(at(10)));
    let second = m.scan(tag, at(20)).await.expect("scan").expect("hit");
    assert!(!second.first_scan);
    assert_eq!(second.view.scan_count, 2);
    assert_eq!(second.view.first_scan_at, Some(at(10)));
    let looked = m.lookup(tag).await.expect("lookup").expect("tag");
    assert_eq!(looked, second.view, "lookup counts nothing");

    // An unknown tag: None, and nothing written.
    let before = ctx.keys().await.len();
    let unknown = Uuid::new_v4();
    assert_eq!(m.scan(unknown, at(30)).await.expect("scan"), None);
    assert_eq!(ctx.keys().await.len(), before);
    assert_eq!(m.lookup(unknown).await.expect("lookup"), None);
    ctx.cleanup().await;
}

#[tokio::test]
async fn recorded_scans_take_the_highest_count_and_the_earliest_first_scan() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (_, batch) = seed(m, &[a, b]).await;
    // Live: a scanned twice.
    m.scan(a, at(100)).await.expect("scan");
    m.scan(a, at(200)).await.expect("scan");
    // The scan log records those two scans: no double counting.
    m.apply(&scans(batch, 1, &[(a, 1, at(100)), (a, 2, at(200))]))
        .await
        .expect("apply");
    let v = m.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((v.scan_count, v.first_scan_at), (2, Some(at(100))));
    // Scans counted elsewhere (another region, a replay): the counter catches up, the first
    // scan moves earlier, never later.
    m.apply(&scans(
        batch,
        2,
        &[(a, 5, at(300)), (a, 4, at(50)), (b, 3, at(400))],
    ))
    .await
    .expect("apply");
    let v = m.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((v.scan_count, v.first_scan_at), (5, Some(at(50))));
    let v = m.lookup(b).await.expect("lookup").expect("b");
    assert_eq!((v.scan_count, v.first_scan_at), (3, Some(at(400))));
    // A lower number later does not lower the count.
    m.apply(&scans(batch, 3, &[(a, 1, at(500))]))
        .await
        .expect("apply");
    let v = m.lookup(a).await.expect("lookup").expect("a");
    assert_eq!((v.scan_count, v.first_scan_at), (5, Some(at(50))));
    // Live counting continues from the recorded count.
    let hit = m.scan(a, at(600)).await.expect("scan").expect("hit");
    assert_eq!((hit.view.scan_count, hit.first_scan), (6, false));
    ctx.cleanup().await;
}

#[tokio::test]
async fn scans_recorded_before_the_tags_are_issued_are_kept() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    let tag = Uuid::new_v4();
    m.apply(&product_event(product, 1)).await.expect("apply");
    // The scan log arrives before the batch (other aggregate, no order guaranteed).
    m.apply(&scans(batch, 1, &[(tag, 3, at(7))]))
        .await
        .expect("apply");
    assert_eq!(m.lookup(tag).await.expect("lookup"), None, "not issued yet");
    assert_eq!(m.scan(tag, at(8)).await.expect("scan"), None);
    m.apply(&batch_event(batch, 1, created(product)))
        .await
        .expect("apply");
    assert_eq!(m.lookup(tag).await.expect("lookup"), None, "not issued yet");
    m.apply(&batch_event(batch, 2, issued(&[(tag, Some("S-9"))])))
        .await
        .expect("apply");
    let v = m.lookup(tag).await.expect("lookup").expect("issued");
    assert_eq!(
        (v.scan_count, v.first_scan_at, v.serial.as_deref()),
        (3, Some(at(7)), Some("S-9"))
    );
    ctx.cleanup().await;
}

#[tokio::test]
async fn long_serials_round_trip_outside_the_tag_value() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    let (long, short, none) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let long_serial = "Ç".repeat(64); // 128 bytes
    let exact = "x".repeat(INLINE_SERIAL_BYTES);
    m.apply(&product_event(product, 1)).await.expect("apply");
    m.apply(&batch_event(batch, 1, created(product)))
        .await
        .expect("apply");
    m.apply(&batch_event(
        batch,
        2,
        issued(&[
            (long, Some(&long_serial)),
            (short, Some(&exact)),
            (none, None),
        ]),
    ))
    .await
    .expect("apply");
    let serial = |t| async move { m.lookup(t).await.expect("lookup").expect("tag").serial };
    assert_eq!(serial(long).await, Some(long_serial.clone()));
    assert_eq!(serial(short).await, Some(exact.clone()));
    assert_eq!(serial(none).await, None);
    let hit = m.scan(long, at(1)).await.expect("scan").expect("hit");
    assert_eq!(hit.view.serial, Some(long_serial));
    // Re-issued with a short serial: the long one is gone.
    m.apply(&batch_event(batch, 3, issued(&[(long, Some("short"))])))
        .await
        .expect("apply");
    assert_eq!(serial(long).await.as_deref(), Some("short"));
    let v = m.lookup(long).await.expect("lookup").expect("tag");
    assert_eq!(v.scan_count, 1, "re-issuing keeps the counters");
    let long_key = format!("{}scan:0:s:{}", ctx.prefix, bucket_name(&long));
    let kept: i64 = ctx
        .pool
        .custom(
            fred::cmd!("HEXISTS"),
            vec![Value::from(long_key), tag_field(&long)],
        )
        .await
        .expect("HEXISTS");
    assert_eq!(kept, 0, "the long serial is deleted, not left behind");
    // The tag bucket stays compact.
    let key = format!("{}scan:0:t:{}", ctx.prefix, bucket_name(&long));
    let encoding: String = ctx
        .pool
        .custom(fred::cmd!("OBJECT"), vec!["ENCODING".to_string(), key])
        .await
        .expect("OBJECT ENCODING");
    assert_eq!(encoding, "listpack");
    ctx.cleanup().await;
}

#[tokio::test]
async fn keyspaces_are_built_beside_the_active_one_and_switched_atomically() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    assert_eq!(m.active_keyspace().await.expect("active"), "0");
    let old_tag = Uuid::new_v4();
    seed(m, &[old_tag]).await;

    let next = m.in_keyspace("k1");
    assert_eq!(next.keyspace(), Some("k1"));
    let new_tag = Uuid::new_v4();
    seed(&next, &[new_tag]).await;
    // Built, not active: readers of the active keyspace do not see it.
    assert_eq!(m.lookup(new_tag).await.expect("lookup"), None);
    assert!(m.lookup(old_tag).await.expect("lookup").is_some());
    assert!(next.lookup(new_tag).await.expect("lookup").is_some());
    assert!(ctx.keys().await.iter().all(|k| k.starts_with(&ctx.prefix)));

    m.activate("k1").await.expect("activate");
    assert_eq!(m.active_keyspace().await.expect("active"), "k1");
    assert!(m.lookup(new_tag).await.expect("lookup").is_some());
    assert_eq!(m.lookup(old_tag).await.expect("lookup"), None);
    // The active keyspace cannot be dropped; the old one can.
    assert!(m.drop_keyspace("k1").await.is_err());
    let removed = m.drop_keyspace("0").await.expect("drop");
    assert!(removed >= 5, "{removed} keys removed");
    let base0 = format!("{}scan:0:", ctx.prefix);
    assert!(!ctx.keys().await.iter().any(|k| k.starts_with(&base0)));
    assert!(m.lookup(new_tag).await.expect("lookup").is_some());
    // Names are checked.
    assert!(m.activate("bad:name").await.is_err());
    assert!(m.in_keyspace("bad name").lookup(new_tag).await.is_err());
    ctx.cleanup().await;
}

#[tokio::test]
async fn concurrent_appliers_apply_an_event_once() {
    let ctx = Ctx::new().await;
    let tag = Uuid::new_v4();
    let (_, batch) = seed(&ctx.model, &[tag]).await;
    let e = scans(batch, 1, &[(tag, 1, at(0))]);
    let results = futures_join(&ctx.model, &e, 8).await;
    assert_eq!(
        results.iter().filter(|r| **r == Applied::Applied).count(),
        1
    );
    assert_eq!(
        results.iter().filter(|r| **r == Applied::Duplicate).count(),
        7
    );
    ctx.cleanup().await;
}

async fn futures_join(m: &RedisScanModel, e: &EventEnvelope, n: usize) -> Vec<Applied> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (m, e) = (m.clone(), e.clone());
        set.spawn(async move { m.apply(&e).await.expect("apply") });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task"));
    }
    out
}

fn info_field(info: &str, name: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// `calls=` of one command in `INFO commandstats`.
fn command_calls(info: &str, command: &str) -> i64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Measures Redis memory for 1,000,000 tags issued in 100 `TagsIssued` events, and checks
/// that a scan is one `EVALSHA`. Run it on a Redis nobody else uses, in release:
/// `VOKETAG_TEST_REDIS_URL=redis://127.0.0.1:6390 cargo test --release -p voketag-projections -- --ignored --nocapture`
#[tokio::test]
#[ignore = "loads 1M tags; run in release on a quiet Redis"]
async fn memory_per_tag_for_a_million_tags() {
    let ctx = Ctx::new().await;
    let m = &ctx.model;
    m.prepare().await.expect("load scripts");
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    m.apply(&product_event(product, 1)).await.expect("apply");
    m.apply(&batch_event(batch, 1, created(product)))
        .await
        .expect("apply");
    let used = |info: String| info_field(&info, "used_memory").expect("used_memory");
    let before = used(
        ctx.pool
            .info(Some(fred::types::InfoKind::Memory))
            .await
            .expect("INFO"),
    );
    let started = std::time::Instant::now();
    let mut sample = Vec::new();
    for chunk in 0..100u64 {
        let tags: Vec<IssuedTag> = (0..10_000u64)
            .map(|i| IssuedTag {
                tag_id: Uuid::new_v4(),
                serial: Some(format!("SN{:08}", chunk * 10_000 + i)),
            })
            .collect();
        sample.push(tags[0].tag_id);
        let e = batch_event(
            batch,
            2 + chunk as i64,
            BatchEvent::TagsIssued {
                import_id: None,
                tags,
            },
        );
        assert_eq!(m.apply(&e).await.expect("apply"), Applied::Applied);
    }
    let load = started.elapsed();
    let after = used(
        ctx.pool
            .info(Some(fred::types::InfoKind::Memory))
            .await
            .expect("INFO"),
    );
    let per_tag = (after - before) as f64 / 1_000_000.0;
    println!(
        "1,000,000 tags in 100 TagsIssued events: {load:?}; used_memory {before} -> {after}: {per_tag:.1} bytes/tag"
    );
    let key = format!("{}scan:0:t:{}", ctx.prefix, bucket_name(&sample[0]));
    let encoding: String = ctx
        .pool
        .custom(fred::cmd!("OBJECT"), vec!["ENCODING".to_string(), key])
        .await
        .expect("OBJECT ENCODING");
    println!("tag bucket encoding: {encoding}");

    // One scan = one EVALSHA and no other command.
    let stats = || async {
        let s: String = ctx
            .pool
            .info(Some(fred::types::InfoKind::CommandStats))
            .await
            .expect("INFO");
        s
    };
    let s0 = stats().await;
    let started = std::time::Instant::now();
    for t in &sample {
        let hit = m.scan(*t, at(1)).await.expect("scan").expect("hit");
        assert_eq!(hit.view.scan_count, 1);
    }
    let scan_time = started.elapsed() / sample.len() as u32;
    let s1 = stats().await;
    let evalsha = command_calls(&s1, "evalsha") - command_calls(&s0, "evalsha");
    println!(
        "{} scans: {evalsha} EVALSHA calls, {scan_time:?} per scan",
        sample.len()
    );
    assert_eq!(evalsha, sample.len() as i64);
    assert_eq!(
        command_calls(&s1, "eval"),
        command_calls(&s0, "eval"),
        "no EVAL fallback"
    );
    assert_eq!(encoding, "listpack");
    assert!(per_tag < 100.0, "{per_tag:.1} bytes per tag");
    ctx.cleanup().await;
}

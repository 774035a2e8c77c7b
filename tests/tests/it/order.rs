//! The relay's order — transaction, then position (ADR 0004) — read by every reader of the
//! store the same way, also where transaction ids change their number of digits: a query
//! that selects `tx_id::text AS tx_id` and orders by `tx_id` sorts the text ("10" before
//! "9"), which once made the replay and the soak's fold read a fresh cluster's events out
//! of order when its transaction counter passed 10,000.

use chrono::NaiveDate;
use cqrs_es::DomainEvent;
use uuid::Uuid;
use voketag_domain::batch::{BatchEvent, IssuedTag};
use voketag_domain::product::ProductEvent;
use voketag_domain::{Gtin, Market};
use voketag_projections::RedisScanModel;
use voketag_tests::models::delete_prefix;
use voketag_tests::{TestDb, patient_redis};

/// Stores an event as if transaction `tx_id` had written it: any cluster is past these
/// small ids, so every such event is below every snapshot's horizon.
async fn stored<E: DomainEvent>(
    db: &TestDb,
    tx_id: &str,
    aggregate_type: &str,
    aggregate_id: Uuid,
    sequence: i64,
    event: E,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, tx_id)
         VALUES ($1, $2, $3, $4, $5, $6, '{}', $7::xid8)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id.to_string())
    .bind(sequence)
    .bind(event.event_type())
    .bind(event.event_version())
    .bind(serde_json::to_value(&event).expect("serialize an event"))
    .bind(tx_id)
    .execute(&db.pool)
    .await
    .expect("store an event");
}

#[tokio::test]
async fn replay_and_lag_read_transactions_in_numeric_order_across_a_digit() {
    let db = TestDb::new().await;
    let (factory, product, batch) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let market = Market::parse("BR").expect("market");
    let tags: Vec<IssuedTag> = (0..3)
        .map(|i| IssuedTag {
            tag_id: Uuid::new_v4(),
            serial: Some(format!("SN-{i}")),
        })
        .collect();
    // Numerically 9 < 10 < 99 < 100; as text "10" < "100" < "9" < "99", which would give
    // the batch's third event before its first.
    stored(
        &db,
        "9",
        "Product",
        product,
        1,
        ProductEvent::ProductRegistered {
            factory_id: factory,
            gtin: Gtin::parse("09506000134352").expect("gtin"),
            name: "P".into(),
            brand: "B".into(),
            description: String::new(),
            intended_markets: vec![market],
        },
    )
    .await;
    stored(
        &db,
        "10",
        "Batch",
        batch,
        1,
        BatchEvent::BatchCreated {
            factory_id: factory,
            product_id: product,
            lot: "L".into(),
            production_date: NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
            sell_by: None,
            intended_markets: vec![market],
        },
    )
    .await;
    stored(&db, "99", "Batch", batch, 2, BatchEvent::BatchActivated).await;
    stored(
        &db,
        "100",
        "Batch",
        batch,
        3,
        BatchEvent::TagsIssued {
            import_id: None,
            tags: tags.clone(),
        },
    )
    .await;

    let redis = patient_redis().await;
    let prefix = format!("vt:test:{}:", Uuid::new_v4().simple());
    let model = RedisScanModel::new(redis.clone(), prefix.clone());

    // Nothing applied yet: every event is pending, the oldest first.
    let lag = voketag_workers::lag::projection(&db.pool, &model)
        .await
        .expect("lag before");
    assert_eq!(lag.events_behind, 4, "{lag:?}");

    let report = voketag_workers::replay::rebuild_redis(&db.pool, &model, &|_| {})
        .await
        .expect("the replay reads the batch's events in order");
    assert_eq!(report.events, 4);
    for t in &tags {
        let view = model
            .lookup(t.tag_id)
            .await
            .expect("lookup")
            .expect("every tag replayed");
        assert_eq!(view.serial, t.serial, "{view:?}");
    }
    let lag = voketag_workers::lag::projection(&db.pool, &model)
        .await
        .expect("lag after");
    assert_eq!(
        (lag.events_behind, lag.oldest_pending),
        (0, None),
        "{lag:?}"
    );
    delete_prefix(&redis, &prefix).await;
}

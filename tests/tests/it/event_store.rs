//! The event store: immutability, the outbox columns, optimistic concurrency, snapshots
//! and migrations that are safe to repeat and to run concurrently.

use std::process::Command;
use uuid::Uuid;
use voketag_commands::store::{CommandError, EventStore};
use voketag_domain::batch::{Batch, BatchCommand, IssuedTag};
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_domain::product::{NewProduct, Product, ProductCommand};
use voketag_platform::db;
use voketag_schemas::EventMetadata;
use voketag_tests::{TestDb, voketag_binary};

fn meta() -> EventMetadata {
    EventMetadata {
        actor: "test".into(),
        factory_id: "f".into(),
        request_id: "r".into(),
        correlation_id: "c".into(),
        causation_id: "x".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    }
}

#[tokio::test]
async fn events_can_be_neither_updated_nor_deleted_nor_truncated() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let id = Uuid::now_v7().to_string();
    store
        .execute::<Factory>(
            &id,
            FactoryCommand::RegisterFactory { name: "A".into() },
            &meta(),
            None,
        )
        .await
        .expect("register");
    for sql in [
        "UPDATE events SET event_type = 'Forged'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let e = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(e.to_string().contains("events are immutable"), "{sql}: {e}");
    }
    // Positions come only from the identity (no index checks them: ADR 0011).
    let e = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, global_position)
         SELECT aggregate_type, aggregate_id, 2, event_type, event_version, payload, metadata,
                global_position
           FROM events",
    )
    .execute(&db.pool)
    .await
    .expect_err("a chosen global_position");
    assert!(
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "428C9"),
        "{e}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn every_event_gets_a_global_position_its_transaction_and_a_timestamp() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    for name in ["A", "B", "C"] {
        store
            .execute::<Factory>(
                &Uuid::now_v7().to_string(),
                FactoryCommand::RegisterFactory { name: name.into() },
                &meta(),
                None,
            )
            .await
            .expect("register");
    }
    let rows: Vec<(i64, String, chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
        "SELECT global_position, tx_id::text, recorded_at, metadata::text FROM events ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .expect("events");
    assert_eq!(rows.len(), 3);
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "positions rise");
    assert!(
        rows.windows(2).all(|w| w[0].1 != w[1].1),
        "one transaction per command"
    );
    for (_, tx, at, metadata) in &rows {
        assert!(tx.parse::<u64>().is_ok(), "tx_id is an xid8: {tx}");
        assert!((chrono::Utc::now() - *at).num_seconds().abs() < 60);
        let m: serde_json::Value = serde_json::from_str(metadata).expect("metadata json");
        for key in EventMetadata::KEYS {
            assert!(
                m[key].as_str().is_some_and(|v| !v.is_empty()),
                "metadata {key} in {m}"
            );
        }
    }
}

/// A factory, a product of it and a batch of that product (version 1 each).
async fn factory_product_batch(store: &EventStore) -> (Uuid, Uuid, String) {
    let factory = Uuid::now_v7();
    store
        .execute::<Factory>(
            &factory.to_string(),
            FactoryCommand::RegisterFactory { name: "F".into() },
            &meta(),
            None,
        )
        .await
        .expect("factory");
    let product = Uuid::now_v7();
    store
        .execute::<Product>(&product.to_string(), new_product(factory), &meta(), None)
        .await
        .expect("product");
    let batch = Uuid::now_v7().to_string();
    store
        .execute::<Batch>(&batch, new_batch(factory, product), &meta(), None)
        .await
        .expect("batch");
    (factory, product, batch)
}

fn new_product(factory_id: Uuid) -> ProductCommand {
    ProductCommand::RegisterProduct(NewProduct {
        factory_id,
        gtin: voketag_domain::Gtin::parse("09506000134352").expect("gtin"),
        name: "P".into(),
        brand: "B".into(),
        description: String::new(),
        intended_markets: vec![voketag_domain::Market::parse("BR").expect("market")],
    })
}

fn new_batch(factory_id: Uuid, product_id: Uuid) -> BatchCommand {
    BatchCommand::CreateBatch(voketag_domain::batch::NewBatch {
        factory_id,
        product_id,
        product_markets: vec![voketag_domain::Market::parse("BR").expect("market")],
        lot: "L".into(),
        production_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
        sell_by: None,
        intended_markets: vec![],
    })
}

/// TagsIssued is stored packed since event version 2 (ADR 0013); events of version 1, written
/// before, stay in the store as they are and are read as before, by the aggregate and by
/// `issued_tags()`, which reads both for SQL.
#[tokio::test]
async fn tags_issued_of_version_1_still_read_and_new_ones_are_stored_packed() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, _, batch) = factory_product_batch(&store).await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let old = serde_json::json!({"TagsIssued": {"import_id": null, "tags": [
        {"tag_id": ids[0], "serial": "SN-0"},
        {"tag_id": ids[1]},
    ]}});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Batch', $1, 2, 'TagsIssued', '1', $2, '{}')",
    )
    .bind(&batch)
    .bind(&old)
    .execute(&db.pool)
    .await
    .expect("an event of version 1");

    store
        .execute::<Batch>(
            &batch,
            BatchCommand::IssueTags {
                import_id: None,
                tags: vec![
                    IssuedTag {
                        tag_id: ids[2],
                        serial: None,
                    },
                    IssuedTag {
                        tag_id: ids[3],
                        serial: Some("SN-3".into()),
                    },
                ],
            },
            &meta(),
            Some(2),
        )
        .await
        .expect("issue after an event of version 1");
    let loaded = store.load::<Batch>(&batch).await.expect("load");
    assert_eq!(loaded.version, 3);
    let state = loaded.aggregate.state.expect("a batch");
    assert_eq!(state.tag_count, 4, "both versions counted");

    let (version, shape): (String, String) = sqlx::query_as(
        "SELECT event_version, json_typeof(payload->'TagsIssued'->'tags') FROM events
          WHERE aggregate_id = $1 AND sequence = 3",
    )
    .bind(&batch)
    .fetch_one(&db.pool)
    .await
    .expect("the new event");
    assert_eq!((version.as_str(), shape.as_str()), ("2", "object"));

    let read: Vec<(i64, i64, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT e.sequence, t.ordinal, t.tag_id, t.serial FROM events e, issued_tags(e.payload) t
          WHERE e.aggregate_id = $1 ORDER BY e.sequence, t.ordinal",
    )
    .bind(&batch)
    .fetch_all(&db.pool)
    .await
    .expect("issued_tags");
    assert_eq!(
        read,
        vec![
            (2, 1, ids[0], Some("SN-0".into())),
            (2, 2, ids[1], None),
            (3, 1, ids[2], None),
            (3, 2, ids[3], Some("SN-3".into())),
        ]
    );
}

/// The registry is split in two partitions (ADR 0014); a tag issued twice is refused by
/// either one's key with the same answer, and nothing of the refused command is stored.
#[tokio::test]
async fn a_tag_issued_twice_is_refused_in_either_half_of_the_registry() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, _, batch) = factory_product_batch(&store).await;
    for first_byte in [0x00u8, 0x7f, 0x80, 0xff] {
        let mut bytes = *Uuid::new_v4().as_bytes();
        bytes[0] = first_byte;
        let tag = IssuedTag {
            tag_id: Uuid::from_bytes(bytes),
            serial: None,
        };
        let issue = || BatchCommand::IssueTags {
            import_id: None,
            tags: vec![tag.clone()],
        };
        store
            .execute::<Batch>(&batch, issue(), &meta(), None)
            .await
            .expect("first issue");
        let err = store
            .execute::<Batch>(&batch, issue(), &meta(), None)
            .await
            .expect_err("issued twice");
        assert!(
            matches!(
                err,
                CommandError::Taken {
                    code: "tag.already_issued",
                    ..
                }
            ),
            "first byte {first_byte:#04x}: {err:?}"
        );
    }
    let (registered, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tag_registry),
                (SELECT count(*) FROM events WHERE event_type = 'TagsIssued')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!((registered, events), (4, 4));
}

#[tokio::test]
async fn a_second_writer_at_the_same_version_gets_a_conflict_with_the_current_version() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, _, batch) = factory_product_batch(&store).await;

    // Two units load version 1; the first to commit wins.
    let mut first = store.begin::<Batch>(&batch, &meta()).await.expect("first");
    let mut second = store.begin::<Batch>(&batch, &meta()).await.expect("second");
    first
        .handle(BatchCommand::ActivateBatch)
        .await
        .expect("activate");
    first.commit().await.expect("first commits");
    let err = match second
        .handle(BatchCommand::RecallBatch { reason: "x".into() })
        .await
    {
        Err(e) => e,
        Ok(_) => second
            .commit()
            .await
            .map(|_| ())
            .expect_err("the second writer must conflict"),
    };
    let err = store.resolve::<Batch>(&batch, err).await;
    assert!(
        matches!(err, CommandError::Conflict { current_version: 2 }),
        "{err:?}"
    );

    // An expected version that is not the current one is refused the same way.
    let err = store
        .execute::<Batch>(&batch, BatchCommand::CloseBatch, &meta(), Some(1))
        .await
        .expect_err("stale expected version");
    assert!(
        matches!(err, CommandError::Conflict { current_version: 2 }),
        "{err:?}"
    );
    let (_, v) = store
        .execute::<Batch>(&batch, BatchCommand::CloseBatch, &meta(), Some(2))
        .await
        .expect("current expected version");
    assert_eq!(v, 3);
    let snapshot: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(&batch)
            .fetch_one(&db.pool)
            .await
            .expect("snapshot");
    assert_eq!(snapshot, 3, "the snapshot follows every commit");
}

/// Lookup rows name their factory and product through a checked value, not a foreign key
/// (ADR 0010): naming one that does not exist is still refused, with nothing stored, and
/// what the foreign keys also guaranteed, that those rows stay, is kept by triggers.
#[tokio::test]
async fn a_reference_to_a_factory_or_product_that_does_not_exist_stores_nothing() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let (factory, product, _) = factory_product_batch(&store).await;
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect(sql)
        }
    };
    let before = count("SELECT count(*) FROM events").await;

    let orphan = Uuid::now_v7().to_string();
    let err = store
        .execute::<Product>(&orphan, new_product(Uuid::now_v7()), &meta(), None)
        .await
        .expect_err("a product of a factory that does not exist");
    assert!(
        matches!(&err, CommandError::Rule { code: "not_found", message, .. } if message == "factory not found"),
        "{err:?}"
    );
    let err = store
        .execute::<Batch>(&orphan, new_batch(factory, Uuid::now_v7()), &meta(), None)
        .await
        .expect_err("a batch of a product that does not exist");
    assert!(
        matches!(&err, CommandError::Rule { code: "not_found", message, .. } if message == "product not found"),
        "{err:?}"
    );
    assert_eq!(count("SELECT count(*) FROM events").await, before);
    assert_eq!(count("SELECT count(*) FROM products").await, 1);
    assert_eq!(count("SELECT count(*) FROM batches").await, 1);

    for sql in [
        format!("DELETE FROM factories WHERE factory_id = '{factory}'"),
        format!("DELETE FROM products WHERE product_id = '{product}'"),
        "TRUNCATE factories CASCADE".to_string(),
        "TRUNCATE products CASCADE".to_string(),
        format!("UPDATE factories SET factory_id = '{}'", Uuid::now_v7()),
    ] {
        let e = sqlx::query(&sql).execute(&db.pool).await.expect_err(&sql);
        assert!(e.to_string().contains("never"), "{sql}: {e}");
    }
    assert_eq!(count("SELECT count(*) FROM factories").await, 1);
    assert_eq!(count("SELECT count(*) FROM products").await, 1);
}

/// An aggregate of one event (a product, most of what is created) gets no snapshot; from
/// the second event on, every commit writes one. A page of aggregates loaded in one query
/// equals loading each, whether from a snapshot, from events only, or from a snapshot
/// older than the last event.
#[tokio::test]
async fn an_aggregate_of_one_event_has_no_snapshot_and_a_page_loads_like_one_by_one() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, product, batch) = factory_product_batch(&store).await;
    let snapshots = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT aggregate_type, last_sequence FROM snapshots ORDER BY aggregate_type",
        )
        .fetch_all(&db.pool)
        .await
        .expect("snapshots")
    };
    assert_eq!(
        snapshots().await,
        vec![],
        "one event each: nothing to snapshot"
    );

    store
        .execute::<Batch>(&batch, BatchCommand::ActivateBatch, &meta(), None)
        .await
        .expect("activate");
    assert_eq!(snapshots().await, vec![("Batch".to_string(), 2)]);
    let at_two: String = sqlx::query_scalar("SELECT payload::text FROM snapshots")
        .fetch_one(&db.pool)
        .await
        .expect("payload");
    store
        .execute::<Batch>(
            &batch,
            BatchCommand::RecallBatch {
                reason: "contaminated".into(),
            },
            &meta(),
            None,
        )
        .await
        .expect("recall");
    assert_eq!(snapshots().await, vec![("Batch".to_string(), 3)]);

    let same = |a: &Batch, b: &Batch| {
        serde_json::to_value(a).expect("a") == serde_json::to_value(b).expect("b")
    };
    let one = store.load::<Batch>(&batch).await.expect("load");
    assert_eq!(one.version, 3);
    // A snapshot older than the last event: the page folds the event after it.
    sqlx::query("UPDATE snapshots SET last_sequence = 2, payload = $1::json")
        .bind(&at_two)
        .execute(&db.pool)
        .await
        .expect("an older snapshot");
    let missing = Uuid::now_v7().to_string();
    let page = store
        .load_many::<Batch>(&[missing.clone(), batch.clone(), batch.clone()])
        .await
        .expect("page");
    assert_eq!(page.len(), 3);
    assert_eq!(page[2].version, 0, "a repeated id is answered once");
    assert_eq!(page[0].version, 0);
    assert!(page[0].aggregate.state.is_none());
    assert_eq!(page[1].version, 3);
    assert!(
        same(&page[1].aggregate, &one.aggregate),
        "{:?}",
        page[1].aggregate
    );

    let product = product.to_string();
    let products = store
        .load_many::<Product>(std::slice::from_ref(&product))
        .await
        .expect("products");
    let alone = store.load::<Product>(&product).await.expect("product");
    assert_eq!((products[0].version, alone.version), (1, 1));
    assert_eq!(
        serde_json::to_value(&products[0].aggregate).expect("page"),
        serde_json::to_value(&alone.aggregate).expect("alone")
    );
    assert!(products[0].aggregate.state.is_some());
}

/// A command's statement runs on a connection that went back to its pool without a round
/// trip. When the server closed that connection while it sat idle (a restart, a failover),
/// the command still succeeds, on a new connection, and stores its events once.
#[tokio::test]
async fn a_command_after_postgres_closed_the_idle_connections_succeeds_once() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let register = |name: &str| {
        let (store, name) = (store.clone(), name.to_string());
        async move {
            let id = Uuid::now_v7().to_string();
            // A create: nothing to load, the one statement is all (as for every POST that
            // creates a resource).
            let decision = store
                .decide_new::<Factory>(&id, FactoryCommand::RegisterFactory { name }, &meta())
                .await?;
            decision.commit().await.map(|(_, version)| (id, version))
        }
    };
    let (first, _) = register("Before").await.expect("the first command");
    // An administrator's session, the one the server does not close.
    let mut admin = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("an admin connection");
    assert!(
        other_sessions(&mut admin).await >= 1,
        "the statement's connection is kept open for the next one"
    );
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminating the other connections");
    assert!(
        !terminated.is_empty() && terminated.iter().all(|t| *t),
        "{terminated:?}"
    );
    let mut remaining = other_sessions(&mut admin).await;
    for _ in 0..100 {
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        remaining = other_sessions(&mut admin).await;
    }
    assert_eq!(remaining, 0, "the server closed every other connection");

    let (second, version) = register("After")
        .await
        .expect("the command after the connections were closed");
    assert_eq!(version, 1);
    // Loading an existing aggregate goes through the sqlx pool, whose idle connections the
    // server closed too: the load moves on to a working connection and the domain answers.
    let again = store
        .execute::<Factory>(
            &first,
            FactoryCommand::RegisterFactory {
                name: "Again".into(),
            },
            &meta(),
            None,
        )
        .await;
    assert!(
        matches!(again, Err(CommandError::Rule { .. })),
        "the factory exists already: {again:?}"
    );
    for id in [&first, &second] {
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(id)
            .fetch_one(&mut admin)
            .await
            .expect("counting events");
        assert_eq!(events, 1, "factory {id} has exactly one event");
    }
}

/// Sessions on this database other than `admin`'s own.
async fn other_sessions(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(admin)
    .await
    .expect("counting connections")
}

/// A statement abandoned half-way (its request timed out, its client went away) leaves its
/// connection in the pool with an answer still to come; the next statement on it gets its
/// own answer, not that one.
#[tokio::test]
async fn a_statement_abandoned_half_way_does_not_leave_its_answer_to_the_next() {
    let db = TestDb::new().await;
    let one = db::connect_url(&db.url, 1).await.expect("a pool of one");
    let statements = db::StatementPool::beside(&one);
    sqlx::query("CREATE TABLE abandoned (n int)")
        .execute(&db.pool)
        .await
        .expect("creating a table");
    let slow =
        statements.execute(|| sqlx::query("INSERT INTO abandoned SELECT 1 FROM pg_sleep(0.4)"));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), slow)
            .await
            .is_err(),
        "the slow statement is abandoned before it answers"
    );
    let done = statements
        .execute(|| sqlx::query("INSERT INTO abandoned VALUES (2), (3)"))
        .await
        .expect("the next statement");
    assert_eq!(done.rows_affected(), 2, "its own answer");
    let rows: Vec<i32> = sqlx::query_scalar("SELECT n FROM abandoned ORDER BY n")
        .fetch_all(&db.pool)
        .await
        .expect("reading the table");
    assert_eq!(rows, [1, 2, 3], "the abandoned statement still ran, once");
    one.close().await;
}

#[tokio::test]
async fn migrations_are_safe_to_repeat_and_to_run_concurrently() {
    let db = TestDb::new().await;
    // Already migrated once by TestDb; again, twice at the same time, in-process.
    let (a, b) = tokio::join!(db::migrate(&db.pool), db::migrate(&db.pool));
    a.expect("first concurrent migrate");
    b.expect("second concurrent migrate");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .expect("migrations table");
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());

    // And from two `voketag migrate` processes on a fresh database.
    let fresh = format!("vt_test_{}", Uuid::new_v4().simple());
    let url = voketag_platform::Settings {
        database_url: voketag_tests::admin_database_url(),
        ..Default::default()
    }
    .database_url_for(&fresh);
    db::ensure_database(&url).await.expect("fresh database");
    let spawn = || {
        Command::new(voketag_binary())
            .arg("migrate")
            .env("VOKETAG_DATABASE_URL", &url)
            .env("VOKETAG_LOG_FILTER", "warn")
            .output()
    };
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(spawn);
        let y = s.spawn(spawn);
        (x.join().expect("thread"), y.join().expect("thread"))
    });
    for out in [x.expect("run migrate"), y.expect("run migrate")] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = db::connect_url(&url, 1).await.expect("connect");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(tables as usize, db::MIGRATOR.iter().count());
    pool.close().await;
    let admin = db::connect_url(&voketag_tests::admin_database_url(), 1)
        .await
        .expect("admin");
    sqlx::query(&format!("DROP DATABASE \"{fresh}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_bad_setting_stops_the_binary_with_the_variable_named() {
    let out = Command::new(voketag_binary())
        .arg("migrate")
        .env("VOKETAG_DB_MAX_CONNECTIONS", "lots")
        .output()
        .expect("run voketag");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VOKETAG_DB_MAX_CONNECTIONS"), "{stderr}");
}

#[tokio::test]
async fn the_imports_worker_refuses_a_pool_too_small_for_an_import() {
    let out = Command::new(voketag_binary())
        .args(["work", "imports"])
        .env("VOKETAG_DB_MAX_CONNECTIONS", "5")
        .output()
        .expect("run voketag");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VOKETAG_DB_MAX_CONNECTIONS is 5") && stderr.contains("at least 6"),
        "{stderr}"
    );
}

//! The relay: every committed event published once, in order per aggregate, none skipped
//! when transactions commit out of position order, checkpoints only after the bus acked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use uuid::Uuid;
use voketag_commands::store::EventStore;
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_platform::bus::{Bus, InProcBus};
use voketag_schemas::EventMetadata;
use voketag_schemas::bus::{EVENTS_TOPIC, EventEnvelope};
use voketag_tests::TestDb;
use voketag_workers::relay::Relay;

fn meta() -> EventMetadata {
    EventMetadata {
        actor: "test".into(),
        factory_id: "f".into(),
        request_id: "r".into(),
        correlation_id: "corr-1".into(),
        causation_id: "c".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    }
}

fn register(name: &str) -> FactoryCommand {
    FactoryCommand::RegisterFactory { name: name.into() }
}

/// Collects what a subscription receives; nacks the first `refuse` deliveries.
fn collect(
    bus: &InProcBus,
    refuse: u32,
) -> (Arc<std::sync::Mutex<Vec<EventEnvelope>>>, Arc<AtomicU32>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let nacks = Arc::new(AtomicU32::new(0));
    let (s, n) = (seen.clone(), nacks.clone());
    let bus = bus.clone();
    tokio::spawn(async move {
        let sub = bus
            .subscribe(EVENTS_TOPIC, "test")
            .await
            .expect("subscribe");
        while let Some(d) = sub.next().await {
            if n.load(Ordering::SeqCst) < refuse {
                n.fetch_add(1, Ordering::SeqCst);
                d.nack();
                continue;
            }
            let e: EventEnvelope = serde_json::from_slice(&d.message.data).expect("envelope");
            assert_eq!(d.message.attributes["position"], e.position.to_string());
            assert_eq!(d.message.ordering_key, e.ordering_key());
            s.lock().expect("lock").push(e);
            d.ack();
        }
    });
    (seen, nacks)
}

async fn subscribed(
    bus: &InProcBus,
    refuse: u32,
) -> (Arc<std::sync::Mutex<Vec<EventEnvelope>>>, Arc<AtomicU32>) {
    let r = collect(bus, refuse);
    // Let the subscription attach before anything is published.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    r
}

/// Pumps until `n` events went out. Transaction ids are cluster-wide, so a transaction
/// open in another test's database may hold the horizon back for a moment.
async fn pump_until(relay: &Relay, n: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut published = 0;
    while published < n && std::time::Instant::now() < deadline {
        published += relay.pump().await.expect("pump");
        if published < n {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    published
}

fn names(seen: &std::sync::Mutex<Vec<EventEnvelope>>) -> Vec<String> {
    seen.lock()
        .expect("lock")
        .iter()
        .map(|e| {
            e.payload["FactoryRegistered"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn publishes_each_event_once_with_its_metadata_and_checkpoints() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = InProcBus::new();
    let (seen, _) = subscribed(&bus, 0).await;
    let relay = Relay::new(db.pool.clone(), Arc::new(bus.clone()));
    for name in ["a", "b", "c"] {
        store
            .execute::<Factory>(&Uuid::now_v7().to_string(), register(name), &meta(), None)
            .await
            .expect("register");
    }
    assert_eq!(pump_until(&relay, 3).await, 3);
    assert_eq!(
        relay.pump().await.expect("pump again"),
        0,
        "nothing is published twice"
    );
    assert_eq!(names(&seen), ["a", "b", "c"]);
    let first = seen.lock().expect("lock")[0].clone();
    assert_eq!(first.metadata["correlation_id"], "corr-1");
    assert_eq!(first.sequence, 1);
    assert_eq!(first.event_type, "FactoryRegistered");
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE relay = 'events'")
            .fetch_one(&db.pool)
            .await
            .expect("checkpoint");
    assert_eq!(position, seen.lock().expect("lock")[2].position);
}

#[tokio::test]
async fn an_open_transaction_holds_back_later_commits_and_nothing_is_skipped() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = InProcBus::new();
    let (seen, _) = subscribed(&bus, 0).await;
    let relay = Relay::new(db.pool.clone(), Arc::new(bus.clone()));

    // `early` writes its event first (lower position) and stays open.
    let mut early = store
        .begin::<Factory>(&Uuid::now_v7().to_string(), &meta())
        .await
        .expect("begin");
    early.handle(register("early")).await.expect("handle");
    store
        .execute::<Factory>(&Uuid::now_v7().to_string(), register("late"), &meta(), None)
        .await
        .expect("a later transaction commits");
    assert_eq!(
        relay.pump().await.expect("pump"),
        0,
        "held back behind the open transaction"
    );
    early.commit().await.expect("commit");
    assert_eq!(pump_until(&relay, 2).await, 2);
    assert_eq!(names(&seen), ["early", "late"]);
}

#[tokio::test]
async fn an_event_committed_late_with_a_lower_position_is_not_skipped() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = InProcBus::new();
    let (seen, _) = subscribed(&bus, 0).await;
    let relay = Relay::new(db.pool.clone(), Arc::new(bus.clone()));

    // `older` takes its transaction id first but writes its event last.
    let mut older = store
        .begin::<Factory>(&Uuid::now_v7().to_string(), &meta())
        .await
        .expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(older.conn())
        .await
        .expect("xid");
    let mut lower = store
        .begin::<Factory>(&Uuid::now_v7().to_string(), &meta())
        .await
        .expect("begin");
    lower
        .handle(register("lower position, younger transaction"))
        .await
        .expect("handle");
    older
        .handle(register("higher position, older transaction"))
        .await
        .expect("handle");
    older.commit().await.expect("commit");
    // The younger transaction is still open: the older one is final and goes out.
    assert_eq!(pump_until(&relay, 1).await, 1);
    lower.commit().await.expect("commit");
    // A position-only checkpoint would now be past the lower position and skip it.
    assert_eq!(pump_until(&relay, 1).await, 1);
    assert_eq!(
        names(&seen),
        [
            "higher position, older transaction",
            "lower position, younger transaction"
        ]
    );
}

#[tokio::test]
async fn the_checkpoint_waits_for_the_bus_to_acknowledge() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = InProcBus::new();
    let (seen, nacks) = subscribed(&bus, 2).await;
    let relay = Relay::new(db.pool.clone(), Arc::new(bus.clone()));
    store
        .execute::<Factory>(&Uuid::now_v7().to_string(), register("x"), &meta(), None)
        .await
        .expect("register");
    assert_eq!(pump_until(&relay, 1).await, 1);
    assert_eq!(
        nacks.load(Ordering::SeqCst),
        2,
        "refused twice, then delivered"
    );
    assert_eq!(names(&seen), ["x"]);
}

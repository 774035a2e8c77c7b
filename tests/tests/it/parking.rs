//! Delivery guarantees of the projectors over Google Pub/Sub (the emulator), with the real
//! relay and projectors running against the test's database and Redis:
//! - a poison event is parked, its aggregate blocked (its later events parked behind it),
//!   the rest of the stream applied; `voketag redrive` releases it once the cause is fixed,
//!   and `voketag replay redis` releases what it rebuilt;
//! - a read model that is down is waited for (redelivery after nacks), parking nothing;
//! - every event delivered again (the relay re-publishing the whole stream) changes nothing;
//! - `voketag lag` tells how far behind each consumer is.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;
use voketag_domain::Role;
use voketag_platform::bus::Bus;
use voketag_platform::bus::pubsub::{PubSubBus, PubSubConfig};
use voketag_platform::redis::RedisPool;
use voketag_projections::{PgViews, RedisScanModel, TagView};
use voketag_schemas::bus::EVENTS_TOPIC;
use voketag_tests::{As, OwnRedis, TestApp, spawn_app, spawn_app_with, voketag_command};
use voketag_workers::projector::{Model, Projector};
use voketag_workers::relay::Relay;

/// The relay and both projectors over Pub/Sub, in this process, until dropped.
struct Pipeline {
    stop: watch::Sender<bool>,
    redis_model: RedisScanModel,
    views: PgViews,
}

impl Pipeline {
    async fn start(app: &TestApp, redis: RedisPool) -> Pipeline {
        let endpoint = voketag_tests::pubsub_emulator();
        // A project of this test's own: its topics and subscriptions are nobody else's.
        let project = format!("vt-test-{}", Uuid::new_v4().simple());
        let bus = PubSubBus::connect(PubSubConfig::new(project, Some(endpoint.into())))
            .await
            .expect("connect to the emulator");
        let redis_model = RedisScanModel::new(redis, app.settings.redis_prefix.clone());
        let views = PgViews::new(app.pool().clone());
        // Subscriptions first, or the relay's first messages would reach nobody.
        bus.ensure_topic(EVENTS_TOPIC).await.expect("topic");
        for s in [redis_model.subscription(), views.subscription()] {
            bus.ensure_subscription(EVENTS_TOPIC, s)
                .await
                .expect("subscription");
        }
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let relay = Relay::new(app.pool().clone(), bus.clone());
        tokio::spawn(relay.run(until(rx.clone())));
        let a = Arc::new(Projector::new(redis_model.clone(), app.pool().clone()));
        tokio::spawn(a.run(bus.clone(), until(rx.clone())));
        let b = Arc::new(Projector::new(views.clone(), app.pool().clone()));
        tokio::spawn(b.run(bus, until(rx)));
        Pipeline {
            stop,
            redis_model,
            views,
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Waits up to 30 s for `check` to hold, then fails naming `what`.
async fn until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(aggregate_type, sequence, reason)` of the parked events of a subscription.
async fn parked(pool: &PgPool, subscription: &str) -> Vec<(String, i64, String)> {
    sqlx::query_as(
        "SELECT aggregate_type, sequence, reason FROM parked_events WHERE subscription = $1 ORDER BY position",
    )
    .bind(subscription)
    .fetch_all(pool)
    .await
    .expect("parked events")
}

/// A factory user, a product, and a batch with `tags` imported; not activated.
async fn batch_with_tags(app: &TestApp, who: &As, product: Uuid, lot: &str, tags: &[Uuid]) -> Uuid {
    let batch = app.batch(who, product, lot).await;
    let csv: String = std::iter::once("tag_id\n".to_string())
        .chain(tags.iter().map(|t| format!("{t}\n")))
        .collect();
    let (status, body) = app.upload(who, batch, "text/csv", csv.into_bytes()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.drain_imports().await;
    batch
}

async fn command(app: &TestApp, who: &As, path: &str, body: serde_json::Value) {
    let (status, answer) = app.post(path, who, body).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
}

async fn activate(app: &TestApp, who: &As, batch: Uuid) {
    command(
        app,
        who,
        &format!("/v1/batches/{batch}/activate"),
        json!({}),
    )
    .await;
}

async fn revoke(app: &TestApp, who: &As, tag: Uuid, reason: &str) {
    command(
        app,
        who,
        &format!("/v1/tags/{tag}/revoke"),
        json!({ "reason": reason }),
    )
    .await;
}

fn run(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = voketag_command(&app.settings)
        .args(args)
        .output()
        .expect("run voketag");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn tags(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

async fn status_in_views(views: &PgViews, tag: Uuid) -> Option<String> {
    views
        .lookup(tag)
        .await
        .expect("views lookup")
        .map(|t: TagView| t.batch.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_its_aggregate_blocked_and_redrive_releases_it() {
    let app = spawn_app().await;
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let product = app.product(&user, "00012345600012").await;
    // What makes the views refuse one batch: a constraint a bad migration could add.
    sqlx::query("ALTER TABLE view_batches ADD CONSTRAINT no_poison CHECK (lot <> 'POISON')")
        .execute(app.pool())
        .await
        .expect("constraint");
    let p = Pipeline::start(&app, app.redis.clone()).await;
    let sub = p.views.subscription();

    let (bad_tags, good_tags) = (tags(3), tags(3));
    let bad = batch_with_tags(&app, &user, product, "POISON", &bad_tags).await;
    let good = batch_with_tags(&app, &user, product, "GOOD", &good_tags).await;
    for b in [bad, good] {
        activate(&app, &user, b).await;
    }

    // The good batch goes through; the bad one's creation is parked after its attempts,
    // and its later events (tags issued, activation) are parked behind it.
    until("the good batch in the views", || async {
        status_in_views(&p.views, good_tags[0]).await.as_deref() == Some("active")
    })
    .await;
    until("three events of the bad batch parked", || async {
        parked(app.pool(), sub).await.len() == 3
    })
    .await;
    let parked_now = parked(app.pool(), sub).await;
    assert!(parked_now.iter().all(|(kind, _, _)| kind == "Batch"));
    assert_eq!(
        parked_now.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The first fails by itself; the later ones behind it, or (delivered before it, the
    // emulator keeps no order) when filling the gap up to them hit the same failure.
    assert!(parked_now[0].2.contains("no_poison"), "{parked_now:?}");
    assert!(
        parked_now[1..]
            .iter()
            .all(|p| p.2.contains("earlier event") || p.2.contains("no_poison")),
        "{parked_now:?}"
    );
    assert_eq!(status_in_views(&p.views, bad_tags[0]).await, None);
    // The other model is not affected.
    until("the bad batch in Redis", || async {
        p.redis_model
            .lookup(bad_tags[0])
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;

    // A later event of the blocked batch is parked too, never applied out of order.
    revoke(&app, &user, bad_tags[1], "stolen").await;
    until("the revocation parked behind", || async {
        parked(app.pool(), sub).await.len() == 4
    })
    .await;

    let (ok, listed) = run(&app, &["redrive", "--list"]);
    assert!(ok, "{listed}");
    assert_eq!(
        listed.matches(&format!("Batch:{bad}")).count(),
        4,
        "{listed}"
    );
    assert!(listed.contains("no_poison"), "{listed}");

    // Not fixed yet: the re-drive fails, and says so, and the batch stays blocked.
    let (ok, out) = run(&app, &["redrive", "--subscription", sub]);
    assert!(!ok, "{out}");
    assert!(out.contains("still blocked"), "{out}");
    assert_eq!(parked(app.pool(), sub).await.len(), 4);
    assert_eq!(status_in_views(&p.views, bad_tags[0]).await, None);

    // Fixed: the re-drive applies every event of the batch in order and releases it.
    sqlx::query("ALTER TABLE view_batches DROP CONSTRAINT no_poison")
        .execute(app.pool())
        .await
        .expect("drop the constraint");
    let (ok, out) = run(&app, &["redrive"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("released Batch:{bad}")), "{out}");
    assert!(parked(app.pool(), sub).await.is_empty());
    let revoked = p.views.lookup(bad_tags[1]).await.unwrap().expect("the tag");
    assert!(revoked.revoked.is_some(), "{revoked:?}");
    assert_eq!(
        status_in_views(&p.views, bad_tags[0]).await.as_deref(),
        Some("active")
    );

    // The live projector applies what comes next, the aggregate no longer blocked.
    command(
        &app,
        &user,
        &format!("/v1/batches/{bad}/recall"),
        json!({"reason": "contaminated"}),
    )
    .await;
    until("the recall applied", || async {
        status_in_views(&p.views, bad_tags[2]).await.as_deref() == Some("recalled")
    })
    .await;
    assert!(parked(app.pool(), sub).await.is_empty());

    // And nothing is behind any more.
    until("no lag", || async {
        let (ok, out) = run(&app, &["lag"]);
        assert!(ok, "{out}");
        out.lines()
            .filter(|l| l.starts_with("relay") || l.starts_with("projector-"))
            .all(|l| l.split_whitespace().nth(1) == Some("0"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_parked_by_a_corrupted_redis_key_are_released_by_a_replay() {
    let app = spawn_app().await;
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let product = app.product(&user, "00012345600012").await;
    let p = Pipeline::start(&app, app.redis.clone()).await;
    let sub = p.redis_model.subscription();
    let (bad_tags, good_tags) = (tags(2), tags(2));
    let bad = batch_with_tags(&app, &user, product, "L-1", &bad_tags).await;
    until("the batch in Redis", || async {
        p.redis_model.batch(bad).await.ok().flatten().is_some()
    })
    .await;

    // Something overwrote the batch's hash with a list: every change to it now fails.
    use fred::interfaces::{HashesInterface, KeysInterface, ListInterface};
    let prefix = &app.settings.redis_prefix;
    let index: String = app
        .redis
        .hget(format!("{prefix}scan:0:bi"), bad.to_string())
        .await
        .expect("batch index");
    let key = format!("{prefix}scan:0:b:{index}");
    let _: i64 = app.redis.del(&key).await.expect("del");
    let _: i64 = app.redis.rpush(&key, "junk").await.expect("rpush");

    activate(&app, &user, bad).await;
    revoke(&app, &user, bad_tags[1], "stolen").await;
    let good = batch_with_tags(&app, &user, product, "L-2", &good_tags).await;
    activate(&app, &user, good).await;
    until("activation and revocation parked", || async {
        parked(app.pool(), sub).await.len() == 2
    })
    .await;
    let parked_now = parked(app.pool(), sub).await;
    assert!(parked_now[0].2.contains("WRONGTYPE"), "{parked_now:?}");
    until("the other batch active in Redis", || async {
        p.redis_model
            .lookup(good_tags[0])
            .await
            .ok()
            .flatten()
            .is_some_and(|t| t.batch.status == "active")
    })
    .await;

    // The replay rebuilds the model without the corrupted key, then releases the batch.
    let (ok, out) = run(&app, &["replay", "redis"]);
    assert!(ok, "{out}");
    assert!(out.contains("released 1 blocked aggregate"), "{out}");
    assert!(parked(app.pool(), sub).await.is_empty());
    let tag = p
        .redis_model
        .lookup(bad_tags[1])
        .await
        .unwrap()
        .expect("tag");
    assert_eq!(tag.batch.status, "active");
    assert!(tag.revoked.is_some(), "{tag:?}");
    until("Redis and the views agree", || async {
        run(&app, &["replay", "redis", "--verify"]).0
    })
    .await;
}

/// Deliveries this process's projectors of `subscription` answered as duplicates.
fn duplicates(subscription: &str) -> u64 {
    outcomes(subscription, "duplicate")
}

/// Deliveries this process's projectors of `subscription` answered with `outcome`.
fn outcomes(subscription: &str, outcome: &str) -> u64 {
    let text = voketag_platform::telemetry::metrics_handle().render();
    let (sub, out) = (
        format!("subscription=\"{subscription}\""),
        format!("outcome=\"{outcome}\""),
    );
    text.lines()
        .filter(|l| l.starts_with("projector_messages_total{"))
        .filter(|l| l.contains(&sub) && l.contains(&out))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_that_is_down_is_waited_for_and_redelivered_events_apply_once() {
    // The projectors count their outcomes in this process's metrics.
    voketag_platform::telemetry::metrics_handle();
    let server = OwnRedis::start().await;
    let url = server.url();
    let app = spawn_app_with(|s| s.redis_url = url).await;
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let product = app.product(&user, "00012345600012").await;
    let p = Pipeline::start(&app, app.redis.clone()).await;
    let sub = p.redis_model.subscription();
    let first = tags(2);
    batch_with_tags(&app, &user, product, "L-1", &first).await;
    until("the first batch in Redis", || async {
        p.redis_model
            .lookup(first[0])
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;

    // Redis hangs while events keep coming: the projector times out every time, for longer
    // than the attempts after which a failing event would be parked.
    let head = || async {
        sqlx::query_scalar::<_, i64>("SELECT max(global_position) FROM events")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    let before_outage = head().await;
    server.freeze();
    let later = tags(3);
    let batch = batch_with_tags(&app, &user, product, "L-2", &later).await;
    activate(&app, &user, batch).await;
    revoke(&app, &user, later[2], "lost").await;
    until("the views have the batch", || async {
        status_in_views(&p.views, later[0]).await.as_deref() == Some("active")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let in_outage = (head().await - before_outage) as u64;
    server.thaw();
    until("the batch in Redis after the outage", || async {
        p.redis_model
            .lookup(later[2])
            .await
            .ok()
            .flatten()
            .is_some_and(|t| t.revoked.is_some() && t.batch.status == "active")
    })
    .await;
    assert!(
        parked(app.pool(), sub).await.is_empty(),
        "an outage parks nothing"
    );
    // More refusals than the attempts that park a failing event, for every one of the
    // events committed during the outage, would allow: at least one was delivered again
    // after more failures than that, and still nothing was parked.
    let retries = outcomes(sub, "retry");
    assert!(
        retries > in_outage * u64::from(voketag_workers::projector::MAX_ATTEMPTS),
        "{retries} retries for {in_outage} events"
    );

    // Every event delivered again: the relay starts over from the beginning of the stream.
    let before = (
        p.redis_model.lookup(later[2]).await.unwrap(),
        p.views.lookup(later[2]).await.unwrap(),
        p.redis_model.batch(batch).await.unwrap(),
        p.views.batch(batch).await.unwrap(),
    );
    let versions = |m: RedisScanModel| async move {
        m.versions(&[
            ("Batch", &batch.to_string()),
            ("Product", &product.to_string()),
        ])
        .await
        .unwrap()
    };
    let versions_before = versions(p.redis_model.clone()).await;
    let followed: u64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM events WHERE aggregate_type IN ('Product', 'Batch', 'ScanLog')",
    )
    .fetch_one(app.pool())
    .await
    .unwrap() as u64;
    let duplicates_before = [duplicates(sub), duplicates(p.views.subscription())];
    sqlx::query("UPDATE relay_checkpoints SET tx_id = '0'::xid8, position = 0")
        .execute(app.pool())
        .await
        .unwrap();
    // Each projector answers every copy of an event it follows as a duplicate.
    until("every copy answered as a duplicate", || async {
        duplicates(sub) >= duplicates_before[0] + followed
            && duplicates(p.views.subscription()) >= duplicates_before[1] + followed
    })
    .await;
    let after = (
        p.redis_model.lookup(later[2]).await.unwrap(),
        p.views.lookup(later[2]).await.unwrap(),
        p.redis_model.batch(batch).await.unwrap(),
        p.views.batch(batch).await.unwrap(),
    );
    assert_eq!(
        before, after,
        "{followed} events delivered again changed nothing"
    );
    assert_eq!(versions_before, versions(p.redis_model.clone()).await);
    assert!(parked(app.pool(), sub).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_what_is_not_applied_yet_and_how_old_it_is() {
    let app = spawn_app().await;
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let product = app.product(&user, "00012345600012").await;
    batch_with_tags(&app, &user, product, "L-1", &tags(2)).await;
    // Nothing runs yet: everything committed is behind the relay; behind the projectors,
    // everything from the first event a read model follows (the factory's registration
    // before it is nothing they apply).
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let followed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE global_position >=
           (SELECT min(global_position) FROM events WHERE aggregate_type IN ('Product', 'Batch'))",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(followed < total && followed >= 3, "{followed} of {total}");
    let views = PgViews::new(app.pool().clone());
    let redis_model = RedisScanModel::new(app.redis.clone(), app.settings.redis_prefix.clone());
    let relay = voketag_workers::lag::relay(app.pool()).await.unwrap();
    assert_eq!(relay.events_behind, total as u64, "{relay:?}");
    let pg = voketag_workers::lag::projection(app.pool(), &views)
        .await
        .unwrap();
    let rs = voketag_workers::lag::projection(app.pool(), &redis_model)
        .await
        .unwrap();
    for l in [&pg, &rs] {
        assert_eq!(l.events_behind, followed as u64, "{l:?}");
    }
    for l in [&relay, &pg, &rs] {
        assert!(l.oldest_pending.is_some(), "{l:?}");
        assert!(l.oldest_pending_age(chrono::Utc::now()) > 0.0, "{l:?}");
        assert_eq!(l.parked, 0);
    }
    let (ok, out) = run(&app, &["lag"]);
    assert!(ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("projector-pg-views")
            && l.split_whitespace().nth(1) == Some(&followed.to_string())),
        "{out}"
    );

    // Running, they catch up, and the applied prefix is remembered (once no transaction
    // anywhere in the cluster can still commit below the head: ADR 0004).
    let _p = Pipeline::start(&app, app.redis.clone()).await;
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(app.pool())
        .await
        .unwrap();
    until("caught up, with the applied prefix at the head", || async {
        let a = voketag_workers::lag::relay(app.pool()).await.unwrap();
        let b = voketag_workers::lag::projection(app.pool(), &views)
            .await
            .unwrap();
        let c = voketag_workers::lag::projection(app.pool(), &redis_model)
            .await
            .unwrap();
        let remembered: Option<i64> =
            sqlx::query_scalar("SELECT min(position) FROM projection_progress")
                .fetch_one(app.pool())
                .await
                .unwrap();
        [a, b, c]
            .iter()
            .all(|l| l.events_behind == 0 && l.oldest_pending.is_none())
            && remembered == Some(head)
    })
    .await;
}

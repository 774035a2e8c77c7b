//! Wiring of the roles: which bus, which subscriptions, and every role in one process for
//! `voketag up`.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use voketag_platform::Settings;
use voketag_platform::bus::pubsub::{PubSubBus, PubSubConfig};
use voketag_platform::bus::{Bus, InProcBus};
use voketag_platform::http;
use voketag_platform::redis::RedisPool;
use voketag_platform::settings::BusKind;
use voketag_projections::PgViews;
use voketag_projections::redis_model::RedisScanModel;
use voketag_schemas::bus::{EVENTS_TOPIC, SCANS_TOPIC};
use voketag_workers::lag;
use voketag_workers::projector::{Model, Projector};
use voketag_workers::relay::Relay;
use voketag_workers::scans::{self, ScanRecorder};

/// The bus for a role running in its own process.
pub async fn bus(settings: &Settings) -> anyhow::Result<Arc<dyn Bus>> {
    match settings.bus {
        // In one process only: a relay alone would publish to nobody and move on.
        BusKind::Inproc => anyhow::bail!(
            "VOKETAG_BUS=inproc connects roles inside one process only: run `voketag up`, \
             or set VOKETAG_BUS=pubsub to run roles as separate processes"
        ),
        BusKind::Pubsub => {
            let config = PubSubConfig::from_settings(settings)?;
            Ok(Arc::new(
                PubSubBus::connect(config)
                    .await
                    .context("connecting to Pub/Sub")?,
            ))
        }
    }
}

pub fn relay(pool: PgPool, bus: Arc<dyn Bus>) -> Relay {
    Relay::new(pool, bus)
}

/// How often the processes that run the relay or the projectors measure the stream's lag.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Both projectors, each on its own subscription, and their lag gauges, until `stop`
/// resolves.
pub async fn projectors(
    settings: &Settings,
    pool: PgPool,
    redis: RedisPool,
    bus: Arc<dyn Bus>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (redis_model, views) = models(settings, &pool, redis);
    let (tx, rx) = watch::channel(false);
    let a = spawn_projector(redis_model.clone(), pool.clone(), bus.clone(), rx.clone());
    let b = spawn_projector(views.clone(), pool.clone(), bus, rx.clone());
    let lag = spawn_lag(pool, Some((redis_model, views)), false, rx);
    stop.await;
    let _ = tx.send(true);
    a.await??;
    b.await??;
    lag.await?;
    Ok(())
}

/// The two read models, as this deployment configures them.
pub fn models(settings: &Settings, pool: &PgPool, redis: RedisPool) -> (RedisScanModel, PgViews) {
    (
        RedisScanModel::new(redis, settings.redis_prefix.clone()),
        PgViews::new(pool.clone()),
    )
}

/// Every consumer's lag: the relay's (with `relay`), then each model's.
pub async fn measure_lag(
    pool: &PgPool,
    models: Option<&(RedisScanModel, PgViews)>,
    relay: bool,
) -> Result<Vec<lag::Lag>, String> {
    let mut lags = Vec::new();
    if relay {
        lags.push(lag::relay(pool).await.map_err(|e| e.to_string())?);
    }
    if let Some((redis_model, views)) = models {
        lags.push(
            lag::projection(pool, redis_model)
                .await
                .map_err(|e| e.to_string())?,
        );
        lags.push(
            lag::projection(pool, views)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(lags)
}

/// Exports the lag gauges every [`LAG_EVERY`] until `stop` changes.
fn spawn_lag(
    pool: PgPool,
    models: Option<(RedisScanModel, PgViews)>,
    relay: bool,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.changed().await;
        };
        lag::export_every(LAG_EVERY, stopped, || {
            measure_lag(&pool, models.as_ref(), relay)
        })
        .await
    })
}

/// The relay, and its lag gauge, until `stop` resolves.
pub async fn relay_role(
    pool: PgPool,
    bus: Arc<dyn Bus>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    let lag = spawn_lag(pool.clone(), None, true, rx);
    relay(pool, bus).run(stop).await;
    let _ = tx.send(true);
    lag.await?;
    Ok(())
}

/// Serves `/metrics` and `/v1/health` for a worker process on `VOKETAG_METRICS_ADDR`, when set.
pub async fn serve_metrics(settings: &Settings) -> anyhow::Result<()> {
    let Some(addr) = settings.metrics_addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding VOKETAG_METRICS_ADDR {addr}"))?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(http::metrics))
        .route("/v1/health", axum::routing::get(http::health));
    tracing::info!(%addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// Postgres and Redis, for a command that needs both.
async fn connect(settings: &Settings) -> anyhow::Result<(PgPool, RedisPool)> {
    let pool = voketag_platform::db::connect(settings)
        .await
        .context("connecting to Postgres")?;
    let redis = voketag_platform::redis::connect(settings)
        .await
        .context("connecting to Redis")?;
    Ok((pool, redis))
}

/// `voketag lag`: prints every consumer's lag.
pub async fn print_lag(settings: &Settings) -> anyhow::Result<()> {
    let (pool, redis) = connect(settings).await?;
    let models = models(settings, &pool, redis);
    let lags = measure_lag(&pool, Some(&models), true)
        .await
        .map_err(|e| anyhow::anyhow!("measuring the lag: {e}"))?;
    let now = chrono::Utc::now();
    println!(
        "{:<22} {:>14} {:>20} {:>8}",
        "consumer", "events behind", "oldest pending (s)", "parked"
    );
    for l in &lags {
        println!(
            "{:<22} {:>14} {:>20.3} {:>8}",
            l.consumer,
            l.events_behind,
            l.oldest_pending_age(now),
            l.parked
        );
    }
    Ok(())
}

/// `voketag redrive`: lists (with `list`) or re-drives the parked events of every
/// projector, or of one subscription, or of one aggregate (`TYPE:ID`).
pub async fn redrive(
    settings: &Settings,
    subscription: Option<&str>,
    aggregate: Option<&str>,
    list: bool,
) -> anyhow::Result<()> {
    let (pool, redis) = connect(settings).await?;
    let aggregate = aggregate
        .map(|a| {
            a.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("--aggregate {a:?}: expected TYPE:ID, e.g. Batch:0192…")
            })
        })
        .transpose()?;
    let (redis_model, views) = models(settings, &pool, redis);
    let known = [redis_model.subscription(), views.subscription()];
    if let Some(s) = subscription
        && !known.contains(&s)
    {
        anyhow::bail!("--subscription {s:?}: not a projector's subscription (one of {known:?})");
    }
    let wanted = |s: &str| subscription.is_none_or(|w| w == s);
    let mut blocked = 0;
    if wanted(known[0]) {
        blocked += redrive_one(Projector::new(redis_model, pool.clone()), aggregate, list).await?;
    }
    if wanted(known[1]) {
        blocked += redrive_one(Projector::new(views, pool), aggregate, list).await?;
    }
    if blocked > 0 && !list {
        anyhow::bail!("{blocked} aggregate(s) are still blocked");
    }
    Ok(())
}

/// Returns how many aggregates stay blocked.
async fn redrive_one<M: Model>(
    projector: Projector<M>,
    aggregate: Option<(&str, &str)>,
    list: bool,
) -> anyhow::Result<usize> {
    if list {
        for p in projector.parked().await? {
            if aggregate
                .is_none_or(|(t, i)| (t, i) == (p.aggregate_type.as_str(), p.aggregate_id.as_str()))
            {
                println!(
                    "{} {}:{} #{} (position {}, {} attempt(s), parked {}): {}",
                    p.subscription,
                    p.aggregate_type,
                    p.aggregate_id,
                    p.sequence,
                    p.position,
                    p.attempts,
                    p.parked_at.to_rfc3339(),
                    p.reason
                );
            }
        }
        return Ok(0);
    }
    let report = projector.redrive(aggregate).await?;
    for (kind, id) in &report.released {
        println!("{}: released {kind}:{id}", projector.subscription());
    }
    for (kind, id, reason) in &report.still_blocked {
        println!(
            "{}: still blocked {kind}:{id}: {reason}",
            projector.subscription()
        );
    }
    println!(
        "{}: {} aggregate(s) released ({} events applied), {} still blocked",
        projector.subscription(),
        report.released.len(),
        report.events,
        report.still_blocked.len()
    );
    Ok(report.still_blocked.len())
}

fn spawn_projector<M: Model>(
    model: M,
    pool: PgPool,
    bus: Arc<dyn Bus>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let projector = Arc::new(Projector::new(model, pool));
    tokio::spawn(async move {
        projector
            .run(bus, async move {
                let _ = stop.changed().await;
            })
            .await
    })
}

pub async fn scans(
    pool: PgPool,
    bus: Arc<dyn Bus>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let recorder = Arc::new(ScanRecorder::new(voketag_commands::store::EventStore::new(
        pool,
    )));
    recorder.run(bus, stop).await
}

/// Every role in one process.
pub struct System {
    pub factory_addr: SocketAddr,
    pub scan_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    factory: voketag_commands::App,
    scan: voketag_read_api::App,
}

impl System {
    pub async fn start(
        settings: &Settings,
        pool: PgPool,
        redis: RedisPool,
    ) -> anyhow::Result<System> {
        let bus: Arc<dyn Bus> = match settings.bus {
            BusKind::Inproc => Arc::new(InProcBus::new()),
            BusKind::Pubsub => bus(settings).await?,
        };
        // Subscriptions exist before the relay publishes anything, or the bus would have
        // nobody to deliver the first events to.
        for (topic, subscription) in [
            (EVENTS_TOPIC, "projector-redis-scan"),
            (EVENTS_TOPIC, "projector-pg-views"),
            (SCANS_TOPIC, scans::SUBSCRIPTION),
        ] {
            bus.subscribe(topic, subscription).await?;
        }
        let factory =
            voketag_commands::api::build_with(settings.clone(), pool.clone(), redis.clone())
                .await?;
        let scan = voketag_read_api::build_with(
            settings.clone(),
            pool.clone(),
            redis.clone(),
            bus.clone(),
        )
        .await?;
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let mut tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)> =
            Vec::new();
        let imports = voketag_workers::imports::ImportWorker::new(pool.clone());
        let r = rx.clone();
        tasks.push((
            "imports",
            tokio::spawn(async move { imports.run(until(r)).await.map_err(Into::into) }),
        ));
        let relay = Relay::new(pool.clone(), bus.clone());
        let r = rx.clone();
        tasks.push((
            "relay",
            tokio::spawn(async move {
                relay.run(until(r)).await;
                Ok(())
            }),
        ));
        tasks.push((
            "projector-redis-scan",
            spawn_projector(
                RedisScanModel::new(redis.clone(), settings.redis_prefix.clone()),
                pool.clone(),
                bus.clone(),
                rx.clone(),
            ),
        ));
        tasks.push((
            "projector-pg-views",
            spawn_projector(
                PgViews::new(pool.clone()),
                pool.clone(),
                bus.clone(),
                rx.clone(),
            ),
        ));
        let lag = spawn_lag(
            pool.clone(),
            Some(models(settings, &pool, redis.clone())),
            true,
            rx.clone(),
        );
        tasks.push((
            "lag",
            tokio::spawn(async move {
                lag.await?;
                Ok(())
            }),
        ));
        let recorder = Arc::new(ScanRecorder::new(voketag_commands::store::EventStore::new(
            pool.clone(),
        )));
        let (b, r) = (bus.clone(), rx.clone());
        tasks.push((
            "scans",
            tokio::spawn(async move { recorder.run(b, until(r)).await }),
        ));
        Ok(System {
            factory_addr: factory.local_addr()?,
            scan_addr: scan.local_addr()?,
            stop,
            tasks,
            factory,
            scan,
        })
    }

    /// Serves until `shutdown` resolves, then stops every role and waits for it.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (tx, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let factory = tokio::spawn(self.factory.run_until(until(rx.clone())));
        let scan = tokio::spawn(self.scan.run_until(until(rx)));
        shutdown.await;
        let _ = tx.send(true);
        factory.await??;
        scan.await??;
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            task.await
                .with_context(|| format!("{name} panicked"))?
                .with_context(|| format!("{name} failed"))?;
        }
        Ok(())
    }
}

/// `voketag replay redis [--verify]`.
pub async fn replay_redis(settings: &Settings, verify: bool) -> anyhow::Result<()> {
    let pool = voketag_platform::db::connect(settings)
        .await
        .context("connecting to Postgres")?;
    // Batch work: a script issuing 10,000 tags may outlast the serving pools' 500 ms.
    let redis = voketag_platform::redis::connect_with(settings, Duration::from_secs(30))
        .await
        .context("connecting to Redis")?;
    let model = RedisScanModel::new(redis, settings.redis_prefix.clone());
    let bar = |total: u64, what: &str| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, ETA {{eta}})"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    if verify {
        let views = PgViews::new(pool.clone());
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM view_tags")
            .fetch_one(&pool)
            .await?;
        let progress = bar(total as u64, "verifying tags");
        let differences = voketag_workers::replay::verify_redis(&pool, &model, &views, &|n| {
            progress.set_position(n)
        })
        .await?;
        progress.finish();
        for d in &differences {
            println!(
                "tag {}: redis {} | postgres {}",
                d.tag_id,
                serde_json::to_string(&d.redis).unwrap_or_default(),
                serde_json::to_string(&d.postgres).unwrap_or_default()
            );
        }
        if !differences.is_empty() {
            anyhow::bail!(
                "{} tag(s) differ between Redis and the Postgres views",
                differences.len()
            );
        }
        println!("Redis and the Postgres views agree on all {total} tags");
        return Ok(());
    }
    let total = voketag_workers::replay::event_count(&pool).await?;
    let progress = bar(total, "replaying events");
    let report =
        voketag_workers::replay::rebuild_redis(&pool, &model, &|n| progress.set_position(n))
            .await?;
    progress.finish();
    println!(
        "rebuilt the Redis scan model from {} events in {:.1} s; keyspace {} replaced {}",
        report.events,
        report.elapsed.as_secs_f64(),
        report.keyspace,
        report.previous_keyspace
    );
    // Events parked by the Redis projector are in the new keyspace now (or the rebuild
    // would have failed on them): release their aggregates.
    let projector = Projector::new(model, pool);
    if !projector.parked().await?.is_empty() {
        let redriven = projector.redrive(None).await?;
        println!(
            "released {} blocked aggregate(s) of {}; {} still blocked",
            redriven.released.len(),
            projector.subscription(),
            redriven.still_blocked.len()
        );
        if !redriven.still_blocked.is_empty() {
            anyhow::bail!(
                "parked events still fail after the rebuild; see `voketag redrive --list`"
            );
        }
    }
    Ok(())
}

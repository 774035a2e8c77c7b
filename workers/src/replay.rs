//! The replay (`voketag replay redis`): rebuilds the Redis scan model from the event store
//! into a new keyspace while the old one keeps serving, switches readers over atomically,
//! then removes the old one. Any error leaves the old keyspace active and is returned
//! (the CLI exits non-zero). `verify` compares every tag in Redis with the Postgres views.

use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;
use voketag_projections::redis_model::RedisScanModel;
use voketag_projections::{Applied, PgViews, ProjectionError, TagView};

use crate::events::{COLUMNS, StoredEvent};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the event store failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("applying event at position {position} failed: {source}")]
    Apply {
        position: i64,
        #[source]
        source: ProjectionError,
    },
    #[error("event at position {position} cannot be read: {reason}")]
    Corrupt { position: i64, reason: String },
    #[error("event at position {position} skips a version of its aggregate (expected {expected})")]
    Gap { position: i64, expected: i64 },
    #[error(transparent)]
    Model(#[from] ProjectionError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    pub previous_keyspace: String,
    pub keyspace: String,
    pub elapsed: Duration,
}

#[derive(sqlx::FromRow)]
struct Row {
    tx_id: String,
    #[sqlx(flatten)]
    event: StoredEvent,
}

/// Reads the store in the relay's final order, from a cursor.
struct Cursor {
    tx_id: String,
    position: i64,
}

impl Cursor {
    async fn next_page(
        &mut self,
        pool: &PgPool,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT e.tx_id::text AS tx_id, {COLUMNS} FROM events e
              WHERE (e.tx_id, e.global_position) > ($1::xid8, $2)
                AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY e.tx_id, e.global_position
              LIMIT $3"
        ))
        .bind(&self.tx_id)
        .bind(self.position)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        if let Some(last) = rows.last() {
            self.tx_id = last.tx_id.clone();
            self.position = last.event.global_position;
        }
        Ok(rows.into_iter().map(|r| r.event).collect())
    }
}

/// Events read from the store at once: small enough that reading the next page (Postgres)
/// overlaps applying this one (Redis) for most of the run.
const PAGE: i64 = 20;

async fn apply_all(
    pool: &PgPool,
    target: &RedisScanModel,
    cursor: &mut Cursor,
    done: &mut u64,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), ReplayError> {
    let mut page = cursor.next_page(pool, PAGE).await?;
    while !page.is_empty() {
        let (next, applied) = tokio::join!(
            cursor.next_page(pool, PAGE),
            apply_page(target, page, done, progress)
        );
        applied?;
        page = next?;
    }
    Ok(())
}

async fn apply_page(
    target: &RedisScanModel,
    page: Vec<StoredEvent>,
    done: &mut u64,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), ReplayError> {
    for event in page {
        let position = event.global_position;
        let envelope = event
            .into_envelope()
            .map_err(|reason| ReplayError::Corrupt { position, reason })?;
        match target
            .apply(&envelope)
            .await
            .map_err(|source| ReplayError::Apply { position, source })?
        {
            Applied::Applied | Applied::Duplicate | Applied::Ignored => {}
            Applied::Gap { expected } => return Err(ReplayError::Gap { position, expected }),
        }
        *done += 1;
        progress(*done);
    }
    Ok(())
}

/// Number of events the replay will read (for the progress bar).
pub async fn event_count(pool: &PgPool) -> Result<u64, ReplayError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// Rebuilds the scan model into a fresh keyspace and switches to it.
pub async fn rebuild_redis(
    pool: &PgPool,
    model: &RedisScanModel,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let previous = model.active_keyspace().await?;
    let keyspace = Uuid::now_v7().simple().to_string();
    let target = model.in_keyspace(&keyspace);
    let mut cursor = Cursor {
        tx_id: "0".into(),
        position: 0,
    };
    let mut done = 0;
    if let Err(e) = apply_all(pool, &target, &mut cursor, &mut done, progress).await {
        // Readers never saw the new keyspace; the old one keeps serving.
        let _ = model.drop_keyspace(&keyspace).await;
        return Err(e);
    }
    model.activate(&keyspace).await?;
    // Events committed while we built went to the old keyspace; bring them over. From now
    // on the projector writes to the new one, and version gating makes the overlap harmless.
    apply_all(pool, &target, &mut cursor, &mut done, progress).await?;
    if previous != keyspace {
        model.drop_keyspace(&previous).await?;
    }
    Ok(ReplayReport {
        events: done,
        previous_keyspace: previous,
        keyspace,
        elapsed: started.elapsed(),
    })
}

/// One tag whose answers differ between Redis and Postgres.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub tag_id: Uuid,
    pub redis: Option<TagView>,
    pub postgres: Option<TagView>,
}

/// Whether Redis answers the same as Postgres for one tag. Scan counters may run ahead in
/// Redis (it counts live; Postgres learns of scans when they are recorded), never behind.
fn agrees(redis: &Option<TagView>, postgres: &Option<TagView>) -> bool {
    match (redis, postgres) {
        (Some(r), Some(p)) => {
            let mut r2 = r.clone();
            r2.scan_count = p.scan_count;
            r2.first_scan_at = p.first_scan_at;
            r2 == *p
                && r.scan_count >= p.scan_count
                && match (r.first_scan_at, p.first_scan_at) {
                    (_, None) => true,
                    (Some(a), Some(b)) => a <= b,
                    (None, Some(_)) => false,
                }
        }
        (None, None) => true,
        _ => false,
    }
}

/// Compares every tag of the Postgres views with Redis; returns the differences.
pub async fn verify_redis(
    pool: &PgPool,
    model: &RedisScanModel,
    views: &PgViews,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Vec<Difference>, ReplayError> {
    let mut differences = Vec::new();
    let mut after = Uuid::nil();
    let mut done = 0;
    loop {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT tag_id FROM view_tags WHERE tag_id > $1 ORDER BY tag_id LIMIT 2000",
        )
        .bind(after)
        .fetch_all(pool)
        .await?;
        let Some(last) = ids.last() else {
            return Ok(differences);
        };
        after = *last;
        for tag_id in ids {
            let (redis, postgres) = (model.lookup(tag_id).await?, views.lookup(tag_id).await?);
            if !agrees(&redis, &postgres) {
                differences.push(Difference {
                    tag_id,
                    redis,
                    postgres,
                });
            }
            done += 1;
            progress(done);
        }
    }
}

//! How far behind the store head the relay and each projector are: events not yet
//! published or applied, and the age of the oldest of them. Exported as Prometheus gauges
//! by the processes that run those roles, and printed by `voketag lag`.
//!
//! A projector's position is measured from its read model, not from what it received: an
//! event is applied when the model's version of its aggregate has reached the event's
//! sequence (both models are version-gated). The applied prefix of the stream, in the
//! relay's (transaction, position) order, is remembered in `projection_progress`, so each
//! measurement reads only what came after it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use voketag_projections::{ProjectionError, follows};

use crate::projector::Model;

/// Events read per page while walking forward from the applied prefix.
const PAGE: i64 = 5_000;
/// Pages walked per measurement at most; the next measurement goes on from there.
const MAX_PAGES: usize = 20;

/// The lag of one consumer of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// `relay` or the projector's subscription.
    pub consumer: String,
    /// Committed events from the oldest one not yet published (or applied) to the head.
    pub events_behind: u64,
    /// When the oldest such event was committed; `None` when caught up.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Events parked by the projector (always 0 for the relay).
    pub parked: u64,
}

impl Lag {
    /// Seconds since the oldest pending event was recorded (0 when caught up).
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> f64 {
        self.oldest_pending
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    }

    /// Sets this consumer's gauges.
    pub fn export(&self) {
        let labels = [("consumer", self.consumer.clone())];
        metrics::gauge!("stream_events_behind", &labels).set(self.events_behind as f64);
        metrics::gauge!("stream_oldest_pending_age_seconds", &labels)
            .set(self.oldest_pending_age(Utc::now()));
        metrics::gauge!("stream_parked_events", &labels).set(self.parked as f64);
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    tx_id: String,
    global_position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    /// Below the snapshot horizon: no transaction can still commit before it.
    is_final: bool,
}

/// Committed events at or after `(tx_id, position)` in relay order, and the first one's time.
async fn pending_from(
    pool: &PgPool,
    tx_id: &str,
    position: i64,
    inclusive: bool,
) -> Result<(u64, Option<DateTime<Utc>>), sqlx::Error> {
    let op = if inclusive { ">=" } else { ">" };
    let (n, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM events WHERE (tx_id, global_position) {op} ($1::xid8, $2)),
                (SELECT recorded_at FROM events WHERE (tx_id, global_position) {op} ($1::xid8, $2)
                  ORDER BY tx_id, global_position LIMIT 1)"
    ))
    .bind(tx_id)
    .bind(position)
    .fetch_one(pool)
    .await?;
    Ok((u64::try_from(n).unwrap_or(0), oldest))
}

/// The relay's lag: committed events after its checkpoint.
pub async fn relay(pool: &PgPool) -> Result<Lag, sqlx::Error> {
    let checkpoint: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx_id::text, position FROM relay_checkpoints WHERE relay = 'events'",
    )
    .fetch_optional(pool)
    .await?;
    let (tx_id, position) = checkpoint.unwrap_or_else(|| ("0".into(), 0));
    let (events_behind, oldest_pending) = pending_from(pool, &tx_id, position, false).await?;
    Ok(Lag {
        consumer: "relay".into(),
        events_behind,
        oldest_pending,
        parked: 0,
    })
}

/// A projector's lag, measured from its read model; moves its applied prefix forward.
pub async fn projection<M: Model>(pool: &PgPool, model: &M) -> Result<Lag, ProjectionError> {
    let subscription = model.subscription();
    sqlx::query(
        "INSERT INTO projection_progress (subscription) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(subscription)
    .execute(pool)
    .await?;
    let (mut tx_id, mut position): (String, i64) = sqlx::query_as(
        "SELECT tx_id::text, position FROM projection_progress WHERE subscription = $1",
    )
    .bind(subscription)
    .fetch_one(pool)
    .await?;
    let start = (tx_id.clone(), position);
    // Where the next page starts; the prefix may stop earlier (at a non-final event).
    let mut cursor = start.clone();
    let mut advancing = true;
    // The first event after the applied prefix that is not applied, if one was found.
    let mut first_pending: Option<(String, i64)> = None;
    let mut settled = false;
    for _ in 0..MAX_PAGES {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT e.tx_id::text AS tx_id, global_position, aggregate_type, aggregate_id, sequence,
                    e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) AS is_final
               FROM events e
              WHERE (e.tx_id, e.global_position) > ($1::xid8, $2)
              ORDER BY e.tx_id, e.global_position
              LIMIT $3",
        )
        .bind(&cursor.0)
        .bind(cursor.1)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let full = rows.len() as i64 == PAGE;
        let versions = versions_of(model, &rows).await?;
        for row in &rows {
            let applied = !follows(&row.aggregate_type)
                || versions
                    .get(&(row.aggregate_type.as_str(), row.aggregate_id.as_str()))
                    .is_some_and(|v| *v >= row.sequence);
            if !applied {
                first_pending = Some((row.tx_id.clone(), row.global_position));
                break;
            }
            // Applied; but past a transaction that may still commit earlier, the prefix
            // cannot move (the walk goes on, looking for an unapplied event).
            advancing &= row.is_final;
            if advancing {
                (tx_id, position) = (row.tx_id.clone(), row.global_position);
            }
        }
        if first_pending.is_some() || !full {
            settled = true;
            break;
        }
        if let Some(last) = rows.last() {
            cursor = (last.tx_id.clone(), last.global_position);
        }
    }
    if (tx_id.as_str(), position) != (start.0.as_str(), start.1) {
        sqlx::query(
            "UPDATE projection_progress SET tx_id = $2::xid8, position = $3, updated_at = now()
              WHERE subscription = $1 AND (tx_id, position) < ($2::xid8, $3)",
        )
        .bind(subscription)
        .bind(&tx_id)
        .bind(position)
        .execute(pool)
        .await?;
    }
    let (events_behind, oldest_pending) = match (&first_pending, settled) {
        (Some((t, p)), _) => pending_from(pool, t, *p, true).await?,
        // Walked as far as allowed without finding the end: everything after the walk
        // counts as pending until a later measurement gets further.
        (None, false) => pending_from(pool, &cursor.0, cursor.1, false).await?,
        (None, true) => (0, None),
    };
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM parked_events WHERE subscription = $1")
            .bind(subscription)
            .fetch_one(pool)
            .await?;
    Ok(Lag {
        consumer: subscription.to_string(),
        events_behind,
        oldest_pending,
        parked: u64::try_from(parked).unwrap_or(0),
    })
}

async fn versions_of<'r, M: Model>(
    model: &M,
    rows: &'r [Row],
) -> Result<HashMap<(&'r str, &'r str), i64>, ProjectionError> {
    let mut aggregates: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| follows(&r.aggregate_type))
        .map(|r| (r.aggregate_type.as_str(), r.aggregate_id.as_str()))
        .collect();
    aggregates.sort_unstable();
    aggregates.dedup();
    let versions = model.versions(&aggregates).await?;
    Ok(aggregates.into_iter().zip(versions).collect())
}

/// Measures and exports the lag every `every` until `stop` resolves. Failures are logged
/// and measured again next time.
pub async fn export_every<F, Fut>(every: Duration, stop: impl Future<Output = ()>, measure: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Vec<Lag>, String>>,
{
    tokio::pin!(stop);
    loop {
        match measure().await {
            Ok(lags) => lags.iter().for_each(Lag::export),
            Err(e) => tracing::warn!(error = %e, "cannot measure the stream lag"),
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

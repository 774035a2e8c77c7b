//! The relay (`voketag work relay`): publishes every committed event on the bus, once the
//! transaction that wrote it is below the snapshot horizon, in (transaction, position)
//! order, and checkpoints only what the bus acknowledged. See ADR 0004 for why the order
//! is by transaction first.

use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use voketag_platform::bus::{Bus, BusError, Message};
use voketag_schemas::bus::EVENTS_TOPIC;

use crate::events::{COLUMNS, StoredEvent};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("event at position {position} cannot be read: {reason}")]
    Corrupt { position: i64, reason: String },
}

pub struct Relay {
    pool: PgPool,
    bus: Arc<dyn Bus>,
    name: String,
    /// Most events read and published at once.
    pub batch_size: i64,
    /// Pause when there is nothing to publish.
    pub idle: Duration,
}

#[derive(sqlx::FromRow)]
struct RelayRow {
    tx_id: String,
    #[sqlx(flatten)]
    event: StoredEvent,
}

impl Relay {
    pub fn new(pool: PgPool, bus: Arc<dyn Bus>) -> Self {
        Relay {
            pool,
            bus,
            name: "events".into(),
            batch_size: 500,
            idle: Duration::from_millis(20),
        }
    }

    /// The same relay under another checkpoint name: it publishes the whole store again,
    /// from the start, independently of the others (benchmarks run several over one store).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Publishes until `shutdown` resolves; errors are logged and retried with backoff.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        tracing::info!(relay = %self.name, "relay started");
        loop {
            let pause = match self.pump().await {
                Ok(0) => self.idle,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::error!(error = %e, "relay pass failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!(relay = %self.name, "relay stopped");
    }

    /// One pass: the next batch of final events, published, then checkpointed. Returns how
    /// many were published.
    pub async fn pump(&self) -> Result<usize, RelayError> {
        sqlx::query("INSERT INTO relay_checkpoints (relay) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&self.name)
            .execute(&self.pool)
            .await?;
        // Only transactions older than every running one are final: nothing can still
        // commit below them. Reading in (tx_id, position) order from the checkpoint
        // therefore never skips an event that commits late.
        let rows: Vec<RelayRow> = sqlx::query_as(&format!(
            "SELECT e.tx_id::text AS tx_id, {COLUMNS}
               FROM events e, relay_checkpoints c
              WHERE c.relay = $1
                AND (e.tx_id, e.global_position) > (c.tx_id, c.position)
                AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY e.tx_id, e.global_position
              LIMIT $2"
        ))
        .bind(&self.name)
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let (last_tx, last_position) = (last.tx_id.clone(), last.event.global_position);
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let position = row.event.global_position;
            let envelope = row
                .event
                .into_envelope()
                .map_err(|reason| RelayError::Corrupt { position, reason })?;
            let data = serde_json::to_vec(&envelope).map_err(|e| RelayError::Corrupt {
                position,
                reason: e.to_string(),
            })?;
            messages.push(Message {
                ordering_key: envelope.ordering_key(),
                attributes: envelope.attributes(),
                data,
            });
        }
        let n = messages.len();
        self.bus.publish(EVENTS_TOPIC, messages).await?;
        sqlx::query(
            "UPDATE relay_checkpoints SET tx_id = $2::xid8, position = $3, updated_at = now() WHERE relay = $1",
        )
        .bind(&self.name)
        .bind(&last_tx)
        .bind(last_position)
        .execute(&self.pool)
        .await?;
        metrics::counter!("relay_events_published_total").increment(n as u64);
        Ok(n)
    }
}

//! The relay (`voketag work relay`): publishes every committed event on the bus, once the
//! transaction that wrote it is below the snapshot horizon, in (transaction, position)
//! order, and checkpoints only what the bus acknowledged. See ADR 0004 for why the order
//! is by transaction first.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use voketag_platform::bus::{Bus, BusError, Message};
use voketag_schemas::bus::{EVENTS_TOPIC, EventEnvelope};

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

type EventRow = (
    String,
    i64,
    String,
    String,
    i64,
    String,
    String,
    serde_json::Value,
    serde_json::Value,
    DateTime<Utc>,
);

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
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT e.tx_id::text, e.global_position, e.aggregate_type, e.aggregate_id, e.sequence,
                    e.event_type, e.event_version, e.payload::jsonb, e.metadata::jsonb, e.recorded_at
               FROM events e, relay_checkpoints c
              WHERE c.relay = $1
                AND (e.tx_id, e.global_position) > (c.tx_id, c.position)
                AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY e.tx_id, e.global_position
              LIMIT $2",
        )
        .bind(&self.name)
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        let Some((last_tx, last_position, ..)) = rows.last().cloned() else {
            return Ok(0);
        };
        let mut messages = Vec::with_capacity(rows.len());
        for (
            _,
            position,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
            metadata,
            recorded_at,
        ) in rows
        {
            let metadata: HashMap<String, String> =
                serde_json::from_value(metadata).map_err(|e| RelayError::Corrupt {
                    position,
                    reason: format!("metadata: {e}"),
                })?;
            let envelope = EventEnvelope {
                position,
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                event_version,
                payload,
                metadata,
                recorded_at,
            };
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

//! Projectors (`voketag work projector`): each consumes its own subscription of the events
//! topic and applies every event to its read model, version-gated by the model. A gap (an
//! earlier version not applied yet, e.g. after a redelivery or reordering) is filled from
//! the event store in order; a message that keeps failing is parked with its reason and its
//! aggregate blocked, never silently skipped.

use async_trait::async_trait;
use sqlx::PgPool;
use std::sync::Arc;
use voketag_platform::bus::{Bus, Delivery};
use voketag_projections::{Applied, PgViews, ProjectionError, redis_model::RedisScanModel};
use voketag_schemas::bus::{EVENTS_TOPIC, EventEnvelope};

use crate::events::{COLUMNS, StoredEvent};

/// Deliveries of one message before it is parked.
pub const MAX_ATTEMPTS: u32 = 5;

/// A read model a projector keeps.
#[async_trait]
pub trait Model: Send + Sync + 'static {
    /// The subscription name, also the parking scope. A persistent contract.
    fn subscription(&self) -> &'static str;
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError>;
}

#[async_trait]
impl Model for RedisScanModel {
    fn subscription(&self) -> &'static str {
        "projector-redis-scan"
    }
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        RedisScanModel::apply(self, e).await
    }
}

#[async_trait]
impl Model for PgViews {
    fn subscription(&self) -> &'static str {
        "projector-pg-views"
    }
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        PgViews::apply(self, e).await
    }
}

pub struct Projector<M: Model> {
    model: M,
    store: PgPool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    /// Applied after filling `filled` missing earlier versions from the store.
    Filled {
        filled: usize,
    },
    Ignored,
    /// Not applied now; the bus delivers it again.
    Retry,
    Parked,
}

impl<M: Model> Projector<M> {
    pub fn new(model: M, store: PgPool) -> Self {
        Projector { model, store }
    }

    /// Consumes the subscription until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let subscriber = bus
            .subscribe(EVENTS_TOPIC, self.model.subscription())
            .await?;
        tokio::pin!(shutdown);
        tracing::info!(
            subscription = self.model.subscription(),
            "projector started"
        );
        loop {
            let delivery = tokio::select! {
                _ = &mut shutdown => break,
                d = subscriber.next() => d,
            };
            let Some(delivery) = delivery else { break };
            self.handle(delivery).await;
        }
        tracing::info!(
            subscription = self.model.subscription(),
            "projector stopped"
        );
        Ok(())
    }

    /// Applies one delivery and acknowledges it, or refuses it for redelivery.
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let envelope: EventEnvelope = match serde_json::from_slice(&delivery.message.data) {
            Ok(e) => e,
            Err(e) => {
                // Not even an envelope: nothing to apply, ever. Park what we can name.
                let a = &delivery.message.attributes;
                let outcome = self
                    .park_raw(
                        a.get("aggregate_type").map(String::as_str).unwrap_or("?"),
                        a.get("aggregate_id").map(String::as_str).unwrap_or("?"),
                        a.get("sequence").and_then(|s| s.parse().ok()).unwrap_or(0),
                        a.get("position").and_then(|s| s.parse().ok()).unwrap_or(0),
                        &format!("not an event envelope: {e}"),
                        delivery.attempt,
                    )
                    .await;
                return self.settle(delivery, outcome);
            }
        };
        let outcome = self.project(&envelope, delivery.attempt).await;
        self.settle(delivery, outcome)
    }

    fn settle(&self, delivery: Delivery, outcome: Outcome) -> Outcome {
        let labels = [
            ("subscription", self.model.subscription()),
            ("outcome", outcome_label(outcome)),
        ];
        metrics::counter!("projector_messages_total", &labels).increment(1);
        if outcome == Outcome::Retry {
            delivery.nack();
        } else {
            delivery.ack();
        }
        outcome
    }

    /// Applies one event (filling gaps from the store), parking it when it cannot be.
    pub async fn project(&self, e: &EventEnvelope, attempt: u32) -> Outcome {
        match self.blocked(e).await {
            Ok(false) => {}
            Ok(true) => {
                return self
                    .park(e, "an earlier event of this aggregate is parked", attempt)
                    .await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read parked events; retrying");
                return Outcome::Retry;
            }
        }
        let result = match self.model.apply(e).await {
            Ok(Applied::Gap { expected }) => self
                .fill(e, expected)
                .await
                .map(|filled| Outcome::Filled { filled }),
            Ok(Applied::Applied) => Ok(Outcome::Applied),
            Ok(Applied::Duplicate) => Ok(Outcome::Duplicate),
            Ok(Applied::Ignored) => Ok(Outcome::Ignored),
            Err(err) => Err(err),
        };
        match result {
            Ok(o) => o,
            Err(err) if err.is_retryable() && attempt < MAX_ATTEMPTS => {
                tracing::warn!(error = %err, event.position = e.position, attempt, "projection failed; will retry");
                Outcome::Retry
            }
            Err(err) => {
                tracing::error!(error = %err, event.position = e.position, attempt, "projection failed; parking");
                self.park(e, &err.to_string(), attempt).await
            }
        }
    }

    /// Applies the missing versions `expected..=e.sequence` of `e`'s aggregate, from the
    /// store, in order.
    async fn fill(&self, e: &EventEnvelope, expected: i64) -> Result<usize, ProjectionError> {
        let rows: Vec<StoredEvent> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3 AND sequence <= $4
              ORDER BY sequence"
        ))
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .bind(expected)
        .bind(e.sequence)
        .fetch_all(&self.store)
        .await?;
        let mut filled = 0;
        for row in rows {
            let earlier = row
                .into_envelope()
                .map_err(|reason| ProjectionError::Poison {
                    aggregate_type: e.aggregate_type.clone(),
                    aggregate_id: e.aggregate_id.clone(),
                    sequence: e.sequence,
                    reason,
                })?;
            match self.model.apply(&earlier).await? {
                Applied::Applied if earlier.sequence < e.sequence => filled += 1,
                Applied::Applied => {}
                Applied::Duplicate | Applied::Ignored => {}
                Applied::Gap { expected } => {
                    return Err(ProjectionError::Poison {
                        aggregate_type: e.aggregate_type.clone(),
                        aggregate_id: e.aggregate_id.clone(),
                        sequence: earlier.sequence,
                        reason: format!("the store has no version {expected} of this aggregate"),
                    });
                }
            }
        }
        Ok(filled)
    }

    async fn blocked(&self, e: &EventEnvelope) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM parked_events
                             WHERE subscription = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND sequence < $4)",
        )
        .bind(self.model.subscription())
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .bind(e.sequence)
        .fetch_one(&self.store)
        .await
    }

    async fn park(&self, e: &EventEnvelope, reason: &str, attempt: u32) -> Outcome {
        self.park_raw(
            &e.aggregate_type,
            &e.aggregate_id,
            e.sequence,
            e.position,
            reason,
            attempt,
        )
        .await
    }

    async fn park_raw(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        position: i64,
        reason: &str,
        attempt: u32,
    ) -> Outcome {
        let parked = sqlx::query(
            "INSERT INTO parked_events (subscription, aggregate_type, aggregate_id, sequence, position, reason, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (subscription, aggregate_type, aggregate_id, sequence)
               DO UPDATE SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, parked_at = now()",
        )
        .bind(self.model.subscription())
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(position)
        .bind(reason)
        .bind(attempt as i32)
        .execute(&self.store)
        .await;
        match parked {
            Ok(_) => {
                tracing::error!(
                    subscription = self.model.subscription(),
                    aggregate.kind = aggregate_type,
                    aggregate.id = aggregate_id,
                    event.sequence = sequence,
                    reason,
                    "event parked; its aggregate is blocked until re-driven"
                );
                Outcome::Parked
            }
            // Could not even record it: never drop it, have it delivered again.
            Err(e) => {
                tracing::error!(error = %e, "cannot park an event; retrying");
                Outcome::Retry
            }
        }
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Filled { .. } => "filled",
        Outcome::Ignored => "ignored",
        Outcome::Retry => "retry",
        Outcome::Parked => "parked",
    }
}

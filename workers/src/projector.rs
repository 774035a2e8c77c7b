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
    /// The last applied version of each `(aggregate type, aggregate id)` (0: none).
    async fn versions(&self, aggregates: &[(&str, &str)]) -> Result<Vec<i64>, ProjectionError>;
}

#[async_trait]
impl Model for RedisScanModel {
    fn subscription(&self) -> &'static str {
        "projector-redis-scan"
    }
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        RedisScanModel::apply(self, e).await
    }
    async fn versions(&self, aggregates: &[(&str, &str)]) -> Result<Vec<i64>, ProjectionError> {
        RedisScanModel::versions(self, aggregates).await
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
    async fn versions(&self, aggregates: &[(&str, &str)]) -> Result<Vec<i64>, ProjectionError> {
        PgViews::versions(self, aggregates).await
    }
}

pub struct Projector<M: Model> {
    model: M,
    store: PgPool,
    /// Deliveries handled at once. Version gating makes any interleaving safe: an event
    /// that overtakes an earlier one of its aggregate fills the gap from the store.
    pub concurrency: usize,
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
        Projector {
            model,
            store,
            concurrency: 16,
        }
    }

    /// The subscription this projector consumes (and parks events under).
    pub fn subscription(&self) -> &'static str {
        self.model.subscription()
    }

    /// Consumes the subscription until `shutdown` resolves, then finishes the deliveries
    /// in hand.
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
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                s = slots.clone().acquire_owned() => s?,
            };
            let delivery = tokio::select! {
                _ = &mut shutdown => break,
                d = subscriber.next() => d,
            };
            let Some(delivery) = delivery else { break };
            let me = self.clone();
            running.spawn(async move {
                me.handle(delivery).await;
                drop(slot);
            });
            // Reap finished handlers so the set stays small.
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
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
        match self.park_if_blocked(e, attempt).await {
            Ok(false) => {}
            Ok(true) => return Outcome::Parked,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read parked events; retrying");
                return Outcome::Retry;
            }
        }
        match self.apply_filling(e).await {
            Ok(o) => o,
            // The model's store is down: wait for it however long it takes, parking
            // nothing (the bus redelivers with a growing pause).
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, event.position = e.position, attempt, "read model unavailable; will retry");
                Outcome::Retry
            }
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

    /// Applies `e`, first filling the versions of its aggregate the model misses.
    async fn apply_filling(&self, e: &EventEnvelope) -> Result<Outcome, ProjectionError> {
        match self.model.apply(e).await {
            Ok(Applied::Gap { expected }) => self
                .fill(e, expected)
                .await
                .map(|filled| Outcome::Filled { filled }),
            Ok(Applied::Applied) => Ok(Outcome::Applied),
            Ok(Applied::Duplicate) => Ok(Outcome::Duplicate),
            Ok(Applied::Ignored) => Ok(Outcome::Ignored),
            Err(err) => Err(err),
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

    /// Parks `e` behind an earlier parked event of its aggregate, if there is one. The check
    /// and the parking hold the aggregate's lock that a re-drive takes to release it, so an
    /// event is never parked behind a block that was just lifted.
    async fn park_if_blocked(&self, e: &EventEnvelope, attempt: u32) -> Result<bool, sqlx::Error> {
        // The common case, nothing parked, costs one read and no lock.
        let sub = self.model.subscription();
        if !is_blocked(&self.store, sub, e).await? {
            return Ok(false);
        }
        let mut tx = self.store.begin().await?;
        lock_aggregate(
            &mut tx,
            self.model.subscription(),
            &e.aggregate_type,
            &e.aggregate_id,
        )
        .await?;
        if !is_blocked(&mut *tx, sub, e).await? {
            return Ok(false);
        }
        insert_parked(
            &mut *tx,
            self.model.subscription(),
            &e.aggregate_type,
            &e.aggregate_id,
            e.sequence,
            e.position,
            "an earlier event of this aggregate is parked",
            attempt,
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(
            subscription = self.model.subscription(),
            aggregate.kind = %e.aggregate_type,
            aggregate.id = %e.aggregate_id,
            event.sequence = e.sequence,
            "event parked behind an earlier parked event of its aggregate"
        );
        Ok(true)
    }

    /// Every parked event of this projector's subscription, oldest first.
    pub async fn parked(&self) -> Result<Vec<Parked>, sqlx::Error> {
        sqlx::query_as(
            "SELECT subscription, aggregate_type, aggregate_id, sequence, position, reason, attempts, parked_at
               FROM parked_events WHERE subscription = $1
              ORDER BY position",
        )
        .bind(self.model.subscription())
        .fetch_all(&self.store)
        .await
    }

    /// Re-drives the parked events of this subscription, once their cause is fixed: for
    /// each blocked aggregate (or only `aggregate`, as `(type, id)`), applies its events
    /// from the store in order from the first parked one to its newest, then releases it.
    /// An aggregate whose event still fails stays blocked, with the new reason.
    pub async fn redrive(&self, aggregate: Option<(&str, &str)>) -> Result<Redriven, sqlx::Error> {
        let blocked: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id FROM parked_events
              WHERE subscription = $1 AND ($2::text IS NULL OR (aggregate_type = $2 AND aggregate_id = $3))
              GROUP BY aggregate_type, aggregate_id
              ORDER BY min(position)",
        )
        .bind(self.model.subscription())
        .bind(aggregate.map(|a| a.0))
        .bind(aggregate.map(|a| a.1))
        .fetch_all(&self.store)
        .await?;
        let mut report = Redriven::default();
        for (kind, id) in blocked {
            match self.redrive_aggregate(&kind, &id).await? {
                Ok(applied) => {
                    report.events += applied;
                    report.released.push((kind, id));
                }
                Err(reason) => report.still_blocked.push((kind, id, reason)),
            }
        }
        Ok(report)
    }

    /// `Ok(Ok(events applied))` once the aggregate is released, `Ok(Err(reason))` when an
    /// event still fails.
    async fn redrive_aggregate(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Result<usize, String>, sqlx::Error> {
        let subscription = self.model.subscription();
        let mut applied = 0;
        loop {
            let first: Option<i64> = sqlx::query_scalar(
                "SELECT min(sequence) FROM parked_events
                  WHERE subscription = $1 AND aggregate_type = $2 AND aggregate_id = $3",
            )
            .bind(subscription)
            .bind(kind)
            .bind(id)
            .fetch_one(&self.store)
            .await?;
            let Some(first) = first else {
                return Ok(Ok(applied));
            };
            let rows: Vec<StoredEvent> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3
                  ORDER BY sequence"
            ))
            .bind(kind)
            .bind(id)
            .bind(first)
            .fetch_all(&self.store)
            .await?;
            let mut through = first - 1;
            for row in rows {
                let sequence = row.sequence;
                let position = row.global_position;
                let result = match row.into_envelope() {
                    Ok(e) => self.apply_filling(&e).await.map_err(|err| err.to_string()),
                    Err(reason) => Err(reason),
                };
                if let Err(reason) = result {
                    let mut tx = self.store.begin().await?;
                    release(&mut tx, subscription, kind, id, sequence - 1).await?;
                    insert_parked(
                        &mut *tx,
                        subscription,
                        kind,
                        id,
                        sequence,
                        position,
                        &reason,
                        1,
                    )
                    .await?;
                    tx.commit().await?;
                    tracing::error!(
                        subscription,
                        aggregate.kind = kind,
                        aggregate.id = id,
                        event.sequence = sequence,
                        reason,
                        "re-drive failed; the aggregate stays blocked"
                    );
                    return Ok(Err(reason));
                }
                applied += 1;
                through = sequence;
            }
            // Release what was applied. An event parked meanwhile behind the block (with a
            // higher version) stays, and the next round applies it.
            let mut tx = self.store.begin().await?;
            release(&mut tx, subscription, kind, id, through).await?;
            tx.commit().await?;
            tracing::info!(
                subscription,
                aggregate.kind = kind,
                aggregate.id = id,
                through.sequence = through,
                "parked events re-driven"
            );
        }
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
        let parked = insert_parked(
            &self.store,
            self.model.subscription(),
            aggregate_type,
            aggregate_id,
            sequence,
            position,
            reason,
            attempt,
        )
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

/// A parked event, as `voketag redrive --list` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Parked {
    pub subscription: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub reason: String,
    pub attempts: i32,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

/// What a re-drive did.
#[derive(Debug, Default)]
pub struct Redriven {
    /// Aggregates released, as `(type, id)`.
    pub released: Vec<(String, String)>,
    /// Events applied (or found applied already) while releasing them.
    pub events: usize,
    /// Aggregates whose events still fail, with the reason.
    pub still_blocked: Vec<(String, String, String)>,
}

/// Under the aggregate's lock, deletes its parked events up to version `through`.
async fn release(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    subscription: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    through: i64,
) -> Result<(), sqlx::Error> {
    lock_aggregate(tx, subscription, aggregate_type, aggregate_id).await?;
    sqlx::query(
        "DELETE FROM parked_events
          WHERE subscription = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND sequence <= $4",
    )
    .bind(subscription)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(through)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether an earlier event of `e`'s aggregate is parked.
async fn is_blocked<'e>(
    db: impl sqlx::PgExecutor<'e>,
    subscription: &str,
    e: &EventEnvelope,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM parked_events
                         WHERE subscription = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND sequence < $4)",
    )
    .bind(subscription)
    .bind(&e.aggregate_type)
    .bind(&e.aggregate_id)
    .bind(e.sequence)
    .fetch_one(db)
    .await
}

/// Serialises parking behind a block with its release, per subscription and aggregate.
async fn lock_aggregate(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    subscription: &str,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || $3, 0))")
        .bind(subscription)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_parked<'e>(
    db: impl sqlx::PgExecutor<'e>,
    subscription: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    position: i64,
    reason: &str,
    attempt: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO parked_events (subscription, aggregate_type, aggregate_id, sequence, position, reason, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (subscription, aggregate_type, aggregate_id, sequence)
           DO UPDATE SET reason = EXCLUDED.reason,
                         attempts = parked_events.attempts + 1,
                         parked_at = now()",
    )
    .bind(subscription)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(position)
    .bind(reason)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .execute(db)
    .await?;
    Ok(())
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

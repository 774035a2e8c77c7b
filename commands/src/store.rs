//! The event store. Aggregates are loaded with postgres-es (snapshot + later events); new
//! events are appended by a [`Unit`] of work in one Postgres transaction together with the
//! aggregate's snapshot, the write side's lookup tables ([`Indexed`]) and whatever else
//! must commit with them (an idempotency record, an import's completion). postgres-es
//! commits in a transaction of its own, which cannot carry those; see ADR 0002.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, DomainEvent, EventStore as _};
use postgres_es::PostgresEventRepository;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use voketag_domain::{RuleCode, RuleKind};
use voketag_schemas::EventMetadata;

/// How an aggregate's events change the write side's lookup tables, in the same
/// transaction as the events.
pub trait Indexed: Aggregate<Services = ()>
where
    Self::Error: RuleCode,
{
    fn index(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[Self::Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A domain rule refused the command.
    #[error("{message}")]
    Rule {
        code: &'static str,
        kind: RuleKind,
        message: String,
    },
    /// Someone else appended to the aggregate first, or the caller expected another version.
    #[error("the resource changed: it is now at version {current_version}")]
    Conflict { current_version: u64 },
    /// A set-wide rule enforced by a unique constraint.
    #[error("{message}")]
    Taken { code: &'static str, message: String },
    #[error("the stored events cannot be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl CommandError {
    pub fn rule<E: RuleCode>(e: E) -> Self {
        CommandError::Rule {
            code: e.code(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Unique constraints that express a business rule, with the answer they deserve.
fn taken(constraint: &str) -> Option<(&'static str, &'static str)> {
    Some(match constraint {
        "products_gtin_once_per_factory" => (
            "product.gtin_taken",
            "this factory already registered a product with that GTIN",
        ),
        "batches_lot_once_per_product" => (
            "batch.lot_taken",
            "this product already has a batch with that lot",
        ),
        "tag_registry_pkey" => (
            "tag.already_issued",
            "a tag with that id was already issued",
        ),
        "api_keys_prefix_key" => ("api_key.prefix_taken", "API key prefix collision; retry"),
        _ => return None,
    })
}

/// Foreign keys of the lookup tables: a reference to something that does not exist.
fn missing(constraint: &str) -> Option<&'static str> {
    Some(match constraint {
        "products_factory_id_fkey" | "batches_factory_id_fkey" | "api_keys_factory_id_fkey" => {
            "factory not found"
        }
        "batches_product_id_fkey" => "product not found",
        _ => return None,
    })
}

fn classify(e: sqlx::Error) -> CommandError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23503")
        && let Some(message) = db.constraint().and_then(missing)
    {
        return CommandError::Rule {
            code: "not_found",
            kind: RuleKind::Missing,
            message: message.into(),
        };
    }
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
        && let Some(constraint) = db.constraint()
    {
        if constraint == "events_pkey" {
            // Resolved to the real version by the caller, which can query.
            return CommandError::Conflict { current_version: 0 };
        }
        if let Some((code, message)) = taken(constraint) {
            return CommandError::Taken {
                code,
                message: message.into(),
            };
        }
    }
    CommandError::Database(e)
}

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
}

/// An aggregate as of its last stored event.
pub struct Loaded<A> {
    pub aggregate: A,
    /// The sequence number of its last event; 0 when it has none.
    pub version: u64,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        EventStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn load<A: Aggregate<Services = ()>>(
        &self,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, CommandError> {
        let repo = PostgresEventRepository::new(self.pool.clone());
        let store = PersistedEventStore::<_, A>::new_snapshot_store(repo, 1);
        let context = store
            .load_aggregate(aggregate_id)
            .await
            .map_err(|e| CommandError::Corrupt(e.to_string()))?;
        Ok(Loaded {
            aggregate: context.aggregate,
            version: context.current_sequence as u64,
        })
    }

    /// The current version of an aggregate, read without loading it.
    pub async fn version_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<u64, CommandError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Loads the aggregate and opens the transaction its new events will commit in.
    pub async fn begin<A>(
        &self,
        aggregate_id: &str,
        metadata: &EventMetadata,
    ) -> Result<Unit<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        let loaded = self.load::<A>(aggregate_id).await?;
        self.open(aggregate_id, loaded, metadata).await
    }

    /// Like [`EventStore::begin`] for an id that was just minted, so nothing is stored
    /// under it: saves loading. Should the id exist after all, the commit conflicts.
    pub async fn begin_new<A>(
        &self,
        aggregate_id: &str,
        metadata: &EventMetadata,
    ) -> Result<Unit<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        let fresh = Loaded {
            aggregate: A::default(),
            version: 0,
        };
        self.open(aggregate_id, fresh, metadata).await
    }

    async fn open<A>(
        &self,
        aggregate_id: &str,
        loaded: Loaded<A>,
        metadata: &EventMetadata,
    ) -> Result<Unit<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        let tx = self.pool.begin().await?;
        let metadata = serde_json::to_string(&metadata.to_map())
            .map_err(|e| CommandError::Corrupt(e.to_string()))?;
        Ok(Unit {
            store: self.clone(),
            tx,
            aggregate_id: aggregate_id.to_string(),
            aggregate: loaded.aggregate,
            loaded_version: loaded.version,
            version: loaded.version,
            metadata,
        })
    }

    /// Runs one command to completion: load, decide, append, commit.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<u64>,
    ) -> Result<(A, u64), CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        let run = async {
            let mut unit = self.begin::<A>(aggregate_id, metadata).await?;
            unit.expect_version(expected_version)?;
            unit.handle(command).await?;
            unit.commit().await
        };
        match run.await {
            Ok(done) => Ok(done),
            Err(e) => Err(self.resolve::<A>(aggregate_id, e).await),
        }
    }
}

/// New events of one aggregate, and anything else that must commit with them.
pub struct Unit<A: Aggregate> {
    store: EventStore,
    tx: Transaction<'static, Postgres>,
    aggregate_id: String,
    aggregate: A,
    loaded_version: u64,
    version: u64,
    metadata: String,
}

impl<A> Unit<A>
where
    A: Indexed,
    A::Error: RuleCode,
{
    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }

    /// The version the aggregate will have once this unit commits.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn expect_version(&self, expected: Option<u64>) -> Result<(), CommandError> {
        match expected {
            Some(v) if v != self.loaded_version => Err(CommandError::Conflict {
                current_version: self.loaded_version,
            }),
            _ => Ok(()),
        }
    }

    /// Decides on `command` and writes the resulting events into the transaction.
    pub async fn handle(&mut self, command: A::Command) -> Result<Vec<A::Event>, CommandError> {
        let sink = EventSink::default();
        // On refusal the unit must be dropped: `handle` may have applied some events.
        self.aggregate
            .handle(command, &(), &sink)
            .await
            .map_err(CommandError::rule)?;
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(events);
        }
        let mut sequences = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            sequences.push((self.version + 1 + i as u64) as i64);
            types.push(e.event_type());
            versions.push(e.event_version());
            payloads
                .push(serde_json::to_string(e).map_err(|e| CommandError::Corrupt(e.to_string()))?);
        }
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT $1, $2, s, t, v, p::json, $7::json
               FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(s, t, v, p)",
        )
        .bind(A::TYPE)
        .bind(&self.aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&self.metadata)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;
        A::index(&mut self.tx, &self.aggregate_id, &events)
            .await
            .map_err(classify)?;
        self.version += events.len() as u64;
        Ok(events)
    }

    /// The transaction, for writes that must commit with the events.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Stores the snapshot and commits; returns the aggregate and its new version.
    pub async fn commit(mut self) -> Result<(A, u64), CommandError> {
        if self.version != self.loaded_version {
            let payload = serde_json::to_string(&self.aggregate)
                .map_err(|e| CommandError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES ($1, $2, $3, 1, $4::json)
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                   SET last_sequence = EXCLUDED.last_sequence,
                       current_snapshot = snapshots.current_snapshot + 1,
                       payload = EXCLUDED.payload",
            )
            .bind(A::TYPE)
            .bind(&self.aggregate_id)
            .bind(self.version as i64)
            .bind(payload)
            .execute(&mut *self.tx)
            .await?;
        }
        let result = self.tx.commit().await.map_err(classify);
        match result {
            Ok(()) => Ok((self.aggregate, self.version)),
            Err(CommandError::Conflict { .. }) => {
                Err(self.store.conflict::<A>(&self.aggregate_id).await)
            }
            Err(e) => Err(e),
        }
    }
}

impl EventStore {
    async fn conflict<A: Aggregate>(&self, aggregate_id: &str) -> CommandError {
        match self.version_of(A::TYPE, aggregate_id).await {
            Ok(current_version) => CommandError::Conflict { current_version },
            Err(e) => e,
        }
    }

    /// Replaces the placeholder version of a conflict with the stored one.
    pub async fn resolve<A: Aggregate>(&self, aggregate_id: &str, e: CommandError) -> CommandError {
        match e {
            CommandError::Conflict { current_version: 0 } => self.conflict::<A>(aggregate_id).await,
            other => other,
        }
    }
}

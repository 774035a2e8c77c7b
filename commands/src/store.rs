//! The event store. Aggregates are loaded with postgres-es (snapshot + later events); new
//! events are appended in one Postgres transaction together with the aggregate's
//! snapshot, the write side's lookup tables ([`Indexed`]) and whatever else must commit
//! with them (an idempotency record, an import's completion). postgres-es commits in a
//! transaction of its own, which cannot carry those; see ADR 0002.
//!
//! Two ways to append: a [`Decision`] (one command) sends all its writes as one statement
//! with writable CTEs, one round trip in an implicit transaction (ADR 0008); a [`Unit`]
//! keeps an explicit transaction open for work that streams or interleaves its own SQL
//! (imports, the scan recorder).

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore as _};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;
use voketag_domain::{RuleCode, RuleKind};
use voketag_platform::db::{self, StatementPool};
use voketag_schemas::EventMetadata;

/// How an aggregate's events change the write side's lookup tables, in the same
/// transaction as the events.
///
/// The writes of one [`Decision`] run as one statement, where none sees the others'
/// changes: they must not depend on each other (an insert and an update of the same row).
pub trait Indexed: Aggregate<Services = ()>
where
    Self::Error: RuleCode,
{
    fn index(aggregate_id: &str, events: &[Self::Event]) -> Result<Vec<Write>, CommandError>;
}

/// One data-modifying SQL statement (INSERT, UPDATE, DELETE without RETURNING) and its
/// arguments `$1..$n`: run on its own in a [`Unit`], or as one CTE of a [`Decision`]'s
/// single statement, its placeholders renumbered.
#[derive(Debug, Clone)]
pub struct Write {
    sql: &'static str,
    args: Vec<Arg>,
}

/// An argument of a [`Write`].
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Uuid(Uuid),
    BigInt(i64),
    SmallInt(i16),
    Jsonb(serde_json::Value),
    Texts(Vec<String>),
    BigInts(Vec<i64>),
    Uuids(Vec<Uuid>),
}

impl Write {
    /// `sql` uses `$1..$n` for `args`, in order, and no other `$` (no dollar quoting).
    pub fn new(sql: &'static str, args: Vec<Arg>) -> Self {
        Write { sql, args }
    }

    /// Runs this write alone, e.g. in a [`Unit`]'s transaction.
    pub async fn run(&self, conn: &mut PgConnection) -> Result<(), CommandError> {
        bind_all(sqlx::query(self.sql), &self.args)
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

fn bind_all<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    args: &'q [Arg],
) -> Query<'q, Postgres, PgArguments> {
    for a in args {
        q = match a {
            Arg::Text(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v),
            Arg::BigInt(v) => q.bind(v),
            Arg::SmallInt(v) => q.bind(v),
            Arg::Jsonb(v) => q.bind(v),
            Arg::Texts(v) => q.bind(v),
            Arg::BigInts(v) => q.bind(v),
            Arg::Uuids(v) => q.bind(v),
        };
    }
    q
}

/// `sql` with every placeholder `$k` written as `$(k + offset)`.
fn renumber(sql: &str, offset: usize, out: &mut String) {
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(k) = rest[..digits].parse::<usize>() {
            out.push_str(&(k + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
}

/// The writes as one statement: each a data-modifying CTE. The first (the events) is read
/// by the outer query, so it runs first: a racing writer waits on, and fails with, the
/// events' primary key before any lookup row, as in a transaction of separate statements.
fn combine(writes: &[Write]) -> String {
    let mut sql = String::from("WITH ");
    let mut offset = 0;
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("w{i} AS ("));
        renumber(w.sql, offset, &mut sql);
        if i == 0 {
            sql.push_str(" RETURNING 1");
        }
        sql.push(')');
        offset += w.args.len();
    }
    sql.push_str(" SELECT 1 FROM w0");
    sql
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

/// The registry's primary key, as a violation names it: the partitioned table's, or that of
/// the partition that refused the row (migration `..._15`).
pub const TAG_REGISTRY_KEYS: [&str; 3] = [
    "tag_registry_pkey",
    "tag_registry_0_pkey",
    "tag_registry_1_pkey",
];

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
        c if TAG_REGISTRY_KEYS.contains(&c) => (
            "tag.already_issued",
            "a tag with that id was already issued",
        ),
        "api_keys_prefix_key" => ("api_key.prefix_taken", "API key prefix collision; retry"),
        "idempotency_keys_pkey" => (
            "idempotency_in_flight",
            "a request with this Idempotency-Key is being processed; retry",
        ),
        _ => return None,
    })
}

/// References of the lookup tables (see [`crate::index`]): a NULL where the id of
/// something that does not exist was written.
fn missing(table: &str, column: &str) -> Option<&'static str> {
    Some(match (table, column) {
        ("products" | "batches" | "api_keys", "factory_id") => "factory not found",
        ("batches", "product_id") => "product not found",
        _ => return None,
    })
}

pub(crate) fn classify(e: sqlx::Error) -> CommandError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23502")
        && let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        && let Some(message) = pg.table().zip(pg.column()).and_then(|(t, c)| missing(t, c))
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

/// The events of one aggregate as one INSERT, in postgres-es's row layout. One event (most
/// commands) is a plain VALUES row: Postgres starts and runs it measurably faster than an
/// UNNEST of four arrays.
fn events_write<A: Aggregate>(
    aggregate_id: &str,
    first_sequence: u64,
    events: &[A::Event],
    metadata: &str,
) -> Result<Write, CommandError> {
    let payload =
        |e: &A::Event| serde_json::to_string(e).map_err(|e| CommandError::Corrupt(e.to_string()));
    if let [event] = events {
        return Ok(Write::new(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ($1, $2, $3, $4, $5, $6::json, $7::json)",
            vec![
                Arg::Text(A::TYPE.to_string()),
                Arg::Text(aggregate_id.to_string()),
                Arg::BigInt(first_sequence as i64),
                Arg::Text(event.event_type()),
                Arg::Text(event.event_version()),
                Arg::Text(payload(event)?),
                Arg::Text(metadata.to_string()),
            ],
        ));
    }
    let mut sequences = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        sequences.push((first_sequence + i as u64) as i64);
        types.push(e.event_type());
        versions.push(e.event_version());
        payloads.push(payload(e)?);
    }
    Ok(Write::new(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT $1, $2, s, t, v, p::json, $7::json
           FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(s, t, v, p)",
        vec![
            Arg::Text(A::TYPE.to_string()),
            Arg::Text(aggregate_id.to_string()),
            Arg::BigInts(sequences),
            Arg::Texts(types),
            Arg::Texts(versions),
            Arg::Texts(payloads),
            Arg::Text(metadata.to_string()),
        ],
    ))
}

/// The aggregate's snapshot as of `version`, one row per aggregate, unless the aggregate
/// is a single event: folding that one event costs a load no more than reading a snapshot
/// would, and most aggregates (products, API keys, factories) never get a second event;
/// their creation is the hot path. An aggregate without earlier events has no snapshot
/// yet: a plain INSERT, cheaper than an upsert. Should one exist after all, so does its
/// first event, and that insert conflicts first.
fn snapshot_write<A: Aggregate>(
    aggregate_id: &str,
    aggregate: &A,
    loaded_version: u64,
    version: u64,
) -> Result<Option<Write>, CommandError> {
    if version <= 1 || version == loaded_version {
        return Ok(None);
    }
    let payload =
        serde_json::to_string(aggregate).map_err(|e| CommandError::Corrupt(e.to_string()))?;
    let sql = if loaded_version == 0 {
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, 1, $4::json)"
    } else {
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, 1, $4::json)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
           SET last_sequence = EXCLUDED.last_sequence,
               current_snapshot = snapshots.current_snapshot + 1,
               payload = EXCLUDED.payload"
    };
    Ok(Some(Write::new(
        sql,
        vec![
            Arg::Text(A::TYPE.to_string()),
            Arg::Text(aggregate_id.to_string()),
            Arg::BigInt(version as i64),
            Arg::Text(payload),
        ],
    )))
}

fn metadata_json(metadata: &EventMetadata) -> Result<String, CommandError> {
    serde_json::to_string(&metadata.to_map()).map_err(|e| CommandError::Corrupt(e.to_string()))
}

/// Lets the aggregate decide on `command`; the events it produced, already applied.
async fn decide_on<A: Aggregate<Services = ()>>(
    aggregate: &mut A,
    command: A::Command,
) -> Result<Vec<A::Event>, CommandError>
where
    A::Error: RuleCode,
{
    let sink = EventSink::default();
    aggregate
        .handle(command, &(), &sink)
        .await
        .map_err(CommandError::rule)?;
    Ok(sink.collect().await)
}

/// Tries at loading an aggregate when connections turn out closed (see [`EventStore::load`]).
const LOAD_ATTEMPTS: u32 = 3;

/// What postgres-es reports, as ours: its database errors are sqlx's, boxed.
fn load_error<T: std::error::Error>(e: AggregateError<T>) -> CommandError {
    match e {
        AggregateError::DatabaseConnectionError(e) | AggregateError::UnexpectedError(e) => {
            match e.downcast::<sqlx::Error>() {
                Ok(e) => CommandError::Database(*e),
                Err(e) => CommandError::Corrupt(e.to_string()),
            }
        }
        other => CommandError::Corrupt(other.to_string()),
    }
}

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    /// For [`Decision::commit`]'s single statement: no round trip to take one back.
    statements: StatementPool,
}

/// An aggregate as of its last stored event.
pub struct Loaded<A> {
    pub aggregate: A,
    /// The sequence number of its last event; 0 when it has none.
    pub version: u64,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        EventStore {
            statements: StatementPool::beside(&pool),
            pool,
        }
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
        // A read, so safe to repeat: a connection the server closed while it sat idle in
        // the pool (a restart, a failover) is dropped by the pool and another one tried.
        let mut attempt = 1;
        loop {
            match store.load_aggregate(aggregate_id).await {
                Ok(context) => {
                    return Ok(Loaded {
                        aggregate: context.aggregate,
                        version: context.current_sequence as u64,
                    });
                }
                Err(e) => match load_error(e) {
                    CommandError::Database(e)
                        if attempt < LOAD_ATTEMPTS && db::is_connection_error(&e) =>
                    {
                        tracing::info!(error = %e, "loading an aggregate on a closed connection; trying another");
                        attempt += 1;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Several aggregates of one type in one query, each from its snapshot (if any) and
    /// the events after it; in the order of `aggregate_ids` (which should be distinct: a
    /// repeated id is folded once and answered at its first place, as absent after),
    /// absent ones as default aggregates of version 0. For pages of a list, where a load
    /// each would be a round trip each.
    pub async fn load_many<A: Aggregate<Services = ()>>(
        &self,
        aggregate_ids: &[String],
    ) -> Result<Vec<Loaded<A>>, CommandError> {
        type Row = (
            String,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT a.id, s.payload::text, s.last_sequence, e.sequence, e.payload::text
               FROM (SELECT DISTINCT id FROM UNNEST($2::text[]) AS u(id)) a
               LEFT JOIN snapshots s ON s.aggregate_type = $1 AND s.aggregate_id = a.id
               LEFT JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = a.id
                                 AND e.sequence > coalesce(s.last_sequence, 0)
              ORDER BY a.id, e.sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_ids)
        .fetch_all(&self.pool)
        .await?;
        let corrupt = |id: &str, e: serde_json::Error| {
            CommandError::Corrupt(format!("{} {id}: {e}", A::TYPE))
        };
        let mut loaded: std::collections::HashMap<String, Loaded<A>> =
            std::collections::HashMap::with_capacity(aggregate_ids.len());
        for (id, snapshot, snapshot_version, sequence, event) in rows {
            let entry = match loaded.entry(id.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut start = Loaded::fresh();
                    if let (Some(snapshot), Some(version)) = (&snapshot, snapshot_version) {
                        start.aggregate =
                            serde_json::from_str(snapshot).map_err(|e| corrupt(v.key(), e))?;
                        start.version = version as u64;
                    }
                    v.insert(start)
                }
            };
            if let (Some(sequence), Some(event)) = (sequence, event) {
                entry
                    .aggregate
                    .apply(serde_json::from_str(&event).map_err(|e| corrupt(&id, e))?);
                entry.version = sequence as u64;
            }
        }
        Ok(aggregate_ids
            .iter()
            .map(|id| loaded.remove(id).unwrap_or_else(Loaded::fresh))
            .collect())
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
        self.open(aggregate_id, Loaded::fresh(), metadata).await
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
        Ok(Unit {
            store: self.clone(),
            tx,
            aggregate_id: aggregate_id.to_string(),
            aggregate: loaded.aggregate,
            loaded_version: loaded.version,
            version: loaded.version,
            metadata: metadata_json(metadata)?,
        })
    }

    /// Loads the aggregate, checks the expected version and decides on one command; the
    /// result is written by [`Decision::commit`] in one statement.
    pub async fn decide<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<u64>,
    ) -> Result<Decision<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        let loaded = self.load::<A>(aggregate_id).await?;
        self.decide_on_loaded(aggregate_id, loaded, command, metadata, expected_version)
            .await
    }

    /// Like [`EventStore::decide`] for an id that was just minted: nothing to load.
    /// Should the id exist after all, the commit conflicts.
    pub async fn decide_new<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Decision<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        self.decide_on_loaded(aggregate_id, Loaded::fresh(), command, metadata, None)
            .await
    }

    async fn decide_on_loaded<A>(
        &self,
        aggregate_id: &str,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<u64>,
    ) -> Result<Decision<A>, CommandError>
    where
        A: Indexed,
        A::Error: RuleCode,
    {
        if let Some(v) = expected_version
            && v != loaded.version
        {
            return Err(CommandError::Conflict {
                current_version: loaded.version,
            });
        }
        let mut aggregate = loaded.aggregate;
        let events = decide_on(&mut aggregate, command).await?;
        let staged = staged_writes::<A>(
            aggregate_id,
            loaded.version + 1,
            &events,
            &metadata_json(metadata)?,
        )?;
        Ok(Decision {
            store: self.clone(),
            aggregate_id: aggregate_id.to_string(),
            aggregate,
            version: loaded.version + staged.events,
            loaded_version: loaded.version,
            writes: staged.writes,
        })
    }

    /// Runs one command to completion: load, decide, append and commit in one statement.
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
        match self
            .decide::<A>(aggregate_id, command, metadata, expected_version)
            .await
        {
            Ok(decision) => decision.commit().await,
            Err(e) => Err(self.resolve::<A>(aggregate_id, e).await),
        }
    }
}

impl<A: Default> Loaded<A> {
    fn fresh() -> Self {
        Loaded {
            aggregate: A::default(),
            version: 0,
        }
    }
}

/// One command decided, its events not yet stored: [`Decision::commit`] writes the events,
/// their lookup rows, the snapshot and any [`Decision::also`] rows in one statement.
pub struct Decision<A: Aggregate> {
    store: EventStore,
    aggregate_id: String,
    aggregate: A,
    version: u64,
    loaded_version: u64,
    /// The events first (see [`combine`]), then their lookup rows.
    writes: Vec<Write>,
}

impl<A> Decision<A>
where
    A: Indexed,
    A::Error: RuleCode,
{
    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }

    /// The version the aggregate will have once this decision commits.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Another row that must commit with the events (an idempotency record); it must not
    /// depend on the decision's other writes (see [`Indexed`]).
    pub fn also(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// Stores everything in one statement; returns the aggregate and its new version.
    pub async fn commit(mut self) -> Result<(A, u64), CommandError> {
        if let Some(snapshot) = snapshot_write(
            &self.aggregate_id,
            &self.aggregate,
            self.loaded_version,
            self.version,
        )? {
            self.writes.push(snapshot);
        }
        if self.writes.is_empty() {
            return Ok((self.aggregate, self.version));
        }
        // Without events, what remains is a row to remember (an idempotency record).
        let sql = combine(&self.writes);
        let args: Vec<Arg> = self.writes.into_iter().flat_map(|w| w.args).collect();
        let result = self
            .store
            .statements
            .execute(|| bind_all(sqlx::query(&sql), &args))
            .await
            .map_err(classify);
        match result {
            Ok(_) => Ok((self.aggregate, self.version)),
            Err(e) => Err(self.store.resolve::<A>(&self.aggregate_id, e).await),
        }
    }
}

/// The writes of one decision (of a [`Unit`] or a [`Decision`]), built but not yet sent.
pub struct Staged {
    writes: Vec<Write>,
    /// How many events they store.
    events: u64,
}

/// The events' insert and the aggregate's index writes, for events numbered from
/// `first_sequence`.
fn staged_writes<A: Indexed>(
    aggregate_id: &str,
    first_sequence: u64,
    events: &[A::Event],
    metadata: &str,
) -> Result<Staged, CommandError>
where
    A::Error: RuleCode,
{
    if events.is_empty() {
        return Ok(Staged {
            writes: Vec::new(),
            events: 0,
        });
    }
    let mut writes = vec![events_write::<A>(
        aggregate_id,
        first_sequence,
        events,
        metadata,
    )?];
    writes.extend(A::index(aggregate_id, events)?);
    Ok(Staged {
        writes,
        events: events.len() as u64,
    })
}

/// New events of one aggregate, and anything else that must commit with them, in an
/// explicit transaction.
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
        // On refusal the unit must be dropped: `handle` may have applied some events.
        let events = decide_on(&mut self.aggregate, command).await?;
        let staged = staged_writes::<A>(
            &self.aggregate_id,
            self.version + 1,
            &events,
            &self.metadata,
        )?;
        self.flush(staged).await?;
        Ok(events)
    }

    /// [`Unit::handle`] for a stream of commands, overlapped: decides on `next` and
    /// serializes its events on another thread while the writes `previous` staged go to
    /// Postgres, so that the work of one large command hides behind the storing of the one
    /// before. Returns what `next` staged: pass it with the following command, and the last
    /// one to [`Unit::flush`]. On any error the unit must be dropped.
    pub async fn handle_overlapped(
        &mut self,
        previous: Option<Staged>,
        next: A::Command,
    ) -> Result<Staged, CommandError>
    where
        A: 'static,
        A::Command: Send,
        A::Error: Send,
    {
        let mut aggregate = std::mem::take(&mut self.aggregate);
        let aggregate_id = self.aggregate_id.clone();
        let metadata = self.metadata.clone();
        let first = self.version + previous.as_ref().map_or(0, |p| p.events) + 1;
        let decided = tokio::spawn(async move {
            let staged = match decide_on(&mut aggregate, next).await {
                Ok(events) => staged_writes::<A>(&aggregate_id, first, &events, &metadata),
                Err(e) => Err(e),
            };
            (aggregate, staged)
        });
        let written = match previous {
            Some(p) => self.flush(p).await,
            None => Ok(()),
        };
        let (aggregate, staged) = decided
            .await
            .map_err(|e| CommandError::Corrupt(format!("deciding on a command failed: {e}")))?;
        self.aggregate = aggregate;
        written?;
        staged
    }

    /// Writes what a decision staged (the last one of [`Unit::handle_overlapped`]).
    pub async fn flush(&mut self, staged: Staged) -> Result<(), CommandError> {
        for w in &staged.writes {
            w.run(&mut self.tx).await?;
        }
        self.version += staged.events;
        Ok(())
    }

    /// The transaction, for writes that must commit with the events.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Stores the snapshot and commits; returns the aggregate and its new version.
    pub async fn commit(mut self) -> Result<(A, u64), CommandError> {
        if let Some(snapshot) = snapshot_write(
            &self.aggregate_id,
            &self.aggregate,
            self.loaded_version,
            self.version,
        )? {
            snapshot.run(&mut self.tx).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_past_the_earlier_writes_arguments() {
        let mut out = String::new();
        renumber("SELECT $1, $2::json, $10, '$', $x", 7, &mut out);
        assert_eq!(out, "SELECT $8, $9::json, $17, '$', $x");
    }

    #[test]
    fn writes_become_one_statement_that_reads_the_first() {
        let writes = [
            Write::new(
                "INSERT INTO a VALUES ($1, $2)",
                vec![Arg::BigInt(1), Arg::BigInt(2)],
            ),
            Write::new("UPDATE b SET x = $1", vec![Arg::BigInt(3)]),
            Write::new(
                "INSERT INTO c VALUES ($2, $1)",
                vec![Arg::BigInt(4), Arg::BigInt(5)],
            ),
        ];
        assert_eq!(
            combine(&writes),
            "WITH w0 AS (INSERT INTO a VALUES ($1, $2) RETURNING 1), \
             w1 AS (UPDATE b SET x = $3), \
             w2 AS (INSERT INTO c VALUES ($5, $4)) \
             SELECT 1 FROM w0"
        );
    }
}

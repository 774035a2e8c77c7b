//! The imports worker (`voketag work imports`). It claims a pending import with a
//! session-level advisory lock (released by Postgres if the worker dies). The intake read
//! the file as it arrived and stored its good rows packed, and what it found wrong (ADR
//! 0015); a file with bad rows is rejected with its full report, repeats included. For a
//! clean one the worker reserves the rows' sorted tag ids in the tag registry in two
//! halves at once, one per partition, each on a connection of its own (ADR 0012, 0014),
//! while another read streams the stored rows into the events, in chunks of 10,000 inside
//! one transaction that also marks the import completed, committed after the reservation
//! once the two reads agree. Any error — a tag twice in the file, a tag issued before, a
//! batch that no longer accepts tags — rolls the events back and the import is rejected
//! with every reason found, its reservation released in the same transaction. A worker
//! killed at any point leaves either no events or all of them, and a reservation (whole,
//! or one half marked `reserving`) only while the import is unfinished; the import is then
//! picked up again, reuses a whole reservation or takes a half one out, and issues each
//! tag exactly once. An upload stored as CSV text before ADR 0015 is packed first.

use futures::{Stream, StreamExt, TryStreamExt};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;
use voketag_commands::import::csv::RowError;
use voketag_commands::import::packed::{self, Packed, ReadReport};
use voketag_commands::import::{MAX_ERRORS_KEPT, NOTIFY_CHANNEL, id_sum};
use voketag_commands::store::{CommandError, EventStore, Staged, Unit};
use voketag_domain::MAX_TAGS_PER_EVENT;
use voketag_domain::batch::{Batch, BatchCommand, IssuedTag};
use voketag_schemas::EventMetadata;

/// Connections the worker holds at once: the listener for the intake's NOTIFY, and for an
/// import its claim, the events' transaction, the two halves of the reservation (ADR 0014)
/// and a read of the stored rows.
pub const CONNECTIONS: u32 = 6;

/// The registry's two partitions split the id space at this first byte (migration
/// `..._15`): lower ids go to `tag_registry_0`, the others to `tag_registry_1`.
const REGISTRY_SPLIT: u8 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Store(String),
    #[error("the CSV reader stopped unexpectedly: {0}")]
    Reader(String),
    /// The stored rows cannot be read back (changed in the database by hand or by a bug):
    /// no later attempt can do better, so the import is rejected.
    #[error("the stored rows of the upload cannot be read back: {0}")]
    Damaged(String),
    #[error("tags of this file are reserved by import {0}, which is not finished yet")]
    Reserved(Uuid),
    /// A half of the reservation met a tag that was gone again when the file was checked
    /// against the registry: another import's half, taken back when its other half met one
    /// of ours (ADR 0014). Nothing to reject: the import is tried again.
    #[error(
        "another import reserving some of the same tags at the same time stopped the reservation"
    )]
    Contended,
}

impl From<packed::Damaged> for ImportError {
    fn from(e: packed::Damaged) -> Self {
        ImportError::Damaged(e.to_string())
    }
}

impl From<CommandError> for ImportError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Database(e) => ImportError::Database(e),
            other => ImportError::Store(other.to_string()),
        }
    }
}

/// What became of one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed {
        tags_issued: u64,
    },
    Rejected {
        error_count: u64,
    },
    /// Another worker holds it, or it was already finished.
    Skipped,
}

pub struct ImportWorker {
    pool: PgPool,
    store: EventStore,
    /// How often to look for work when no notification arrives.
    pub poll_interval: Duration,
}

impl ImportWorker {
    pub fn new(pool: PgPool) -> Self {
        ImportWorker {
            store: EventStore::new(pool.clone()),
            pool,
            poll_interval: Duration::from_secs(2),
        }
    }

    /// Processes imports until `shutdown` resolves; wakes on NOTIFY from the intake.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ImportError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tokio::pin!(shutdown);
        tracing::info!("imports worker started");
        loop {
            match self.drain().await {
                Ok(_) => {}
                // Postgres unreachable or the like: try again on the next tick.
                Err(e) => tracing::error!(error = %e, "imports worker pass failed"),
            }
            tokio::select! {
                _ = &mut shutdown => break,
                n = listener.recv() => {
                    if let Err(e) = n {
                        tracing::warn!(error = %e, "import notifications interrupted");
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        tracing::info!("imports worker stopped");
        Ok(())
    }

    /// Processes every pending import this worker can claim; returns how many it finished,
    /// or the first error once every other import has had its turn: an import that fails
    /// is tried again on the next pass, and does not hold up those behind it.
    pub async fn drain(&self) -> Result<usize, ImportError> {
        let mut done = 0;
        let mut failed = None;
        loop {
            let pending: Vec<Uuid> = sqlx::query_scalar(
                "SELECT import_id FROM imports WHERE status IN ('queued', 'validating', 'applying')
                  ORDER BY created_at LIMIT 50",
            )
            .fetch_all(&self.pool)
            .await?;
            let mut progressed = false;
            for id in pending {
                match self.process(id).await {
                    Ok(Outcome::Skipped) => {}
                    Ok(_) => {
                        done += 1;
                        progressed = true;
                    }
                    // Waits for the other import; the rest need not.
                    Err(e @ (ImportError::Reserved(_) | ImportError::Contended)) => {
                        tracing::info!(import.id = %id, reason = %e, "import postponed");
                    }
                    Err(e) => {
                        tracing::error!(import.id = %id, error = %e, "import failed; it is tried again on a later pass");
                        if failed.is_none() {
                            failed = Some(e);
                        }
                    }
                }
            }
            if !progressed {
                return failed.map_or(Ok(done), Err);
            }
        }
    }

    /// Claims and processes one import.
    pub async fn process(&self, import_id: Uuid) -> Result<Outcome, ImportError> {
        let mut lock = self.pool.acquire().await?;
        let claimed: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('import:' || $1::text, 0))",
        )
        .bind(import_id)
        .fetch_one(&mut *lock)
        .await?;
        if !claimed {
            return Ok(Outcome::Skipped);
        }
        let result = match self.process_claimed(import_id).await {
            Err(ImportError::Damaged(reason)) => self.reject_damaged(import_id, &reason).await,
            other => other,
        };
        // The lock dies with the connection anyway; unlocking lets the connection be reused.
        let _ =
            sqlx::query("SELECT pg_advisory_unlock(hashtextextended('import:' || $1::text, 0))")
                .bind(import_id)
                .execute(&mut *lock)
                .await;
        result
    }

    /// Rejects an import whose stored rows cannot be read back, and takes out whatever an
    /// attempt reserved for it: nothing of it was issued, and the file must be sent again.
    async fn reject_damaged(&self, import_id: Uuid, reason: &str) -> Result<Outcome, ImportError> {
        tracing::error!(import.id = %import_id, reason, "stored upload damaged; import rejected");
        let mut tx = self.pool.begin().await?;
        let rows_read: Option<i64> =
            sqlx::query_scalar("SELECT read_rows FROM imports WHERE import_id = $1")
                .bind(import_id)
                .fetch_one(&mut *tx)
                .await?;
        // Only an unfinished import's reservation names it without a batch.
        sqlx::query("DELETE FROM tag_registry WHERE import_id = $1 AND batch_id IS NULL")
            .bind(import_id)
            .execute(&mut *tx)
            .await?;
        clear_reservation_marks(&mut tx, import_id).await?;
        let error = RowError {
            line: 0,
            column: None,
            code: "upload_damaged".into(),
            message: format!(
                "the upload as stored cannot be read back ({reason}); nothing was issued: send the file again"
            ),
        };
        let rows_read = rows_read.unwrap_or(0) as u64;
        finish(&mut tx, import_id, "rejected", rows_read, 0, 1, &[error]).await?;
        tx.commit().await?;
        Ok(Outcome::Rejected { error_count: 1 })
    }

    async fn process_claimed(&self, import_id: Uuid) -> Result<Outcome, ImportError> {
        type Row = (
            Uuid,
            String,
            String,
            String,
            String,
            Uuid,
            bool,
            bool,
            Option<i64>,
            serde_json::Value,
            i64,
        );
        let row: Option<Row> = sqlx::query_as(
            "UPDATE imports SET status = 'validating', attempts = attempts + 1, updated_at = now()
              WHERE import_id = $1 AND status IN ('queued', 'validating', 'applying')
              RETURNING batch_id, actor, request_id, correlation_id, traceparent, factory_id, tags_reserved,
                        reserving, read_rows, read_errors, read_error_count",
        )
        .bind(import_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((
            batch_id,
            actor,
            request_id,
            correlation_id,
            traceparent,
            factory_id,
            reserved,
            reserving,
            read_rows,
            read_errors,
            read_error_count,
        )) = row
        else {
            return Ok(Outcome::Skipped);
        };
        let started = Instant::now();
        let span = tracing::info_span!("import", import.id = %import_id, batch.id = %batch_id, correlation_id = %correlation_id);
        let _guard = span.enter();
        let metadata = EventMetadata {
            actor,
            factory_id: factory_id.to_string(),
            request_id,
            correlation_id,
            causation_id: format!("import:{import_id}"),
            traceparent,
        };
        drop(_guard);
        let import = Claimed {
            import_id,
            batch_id,
            reserved_before: if reserved {
                Prior::Held
            } else if reserving {
                Prior::Partial
            } else {
                Prior::None
            },
            read: match read_rows {
                None => None,
                Some(rows) => Some(ReadReport {
                    rows_read: rows as u64,
                    errors: serde_json::from_value(read_errors).map_err(|e| {
                        ImportError::Store(format!("the import's read errors: {e}"))
                    })?,
                    error_count: read_error_count as u64,
                }),
            },
        };
        let outcome = self.apply(&import, &metadata).await?;
        tracing::info!(import.id = %import_id, ?outcome, elapsed_ms = started.elapsed().as_millis() as u64, "import finished");
        Ok(outcome)
    }

    async fn apply(
        &self,
        import: &Claimed,
        metadata: &EventMetadata,
    ) -> Result<Outcome, ImportError> {
        let Claimed {
            import_id,
            batch_id,
            reserved_before,
            ..
        } = *import;
        let read = match &import.read {
            Some(read) => read.clone(),
            None => self.pack_stored_text(import_id).await?,
        };
        if read.error_count > 0 {
            if reserved_before != Prior::None {
                // Nothing is reserved for a file with bad rows.
                return Err(disagree());
            }
            let (errors, error_count) = self.full_report(import_id, &read).await?;
            return self
                .reject(import_id, read.rows_read, errors, error_count, None)
                .await;
        }
        // The file's sorted tag ids are reserved in the registry on connections of their
        // own, while the stored rows feed the events, chunk by chunk, to the unit's
        // transaction at the pace Postgres takes them. The reservation commits first, the
        // events after it, once both reads of the rows agree (ADR 0012, 0014).
        let (tx_chunks, rx_chunks) = mpsc::channel::<Vec<IssuedTag>>(2);
        let chunks = self.read_rows(import_id, tx_chunks);
        let unit = self
            .store
            .begin::<Batch>(&batch_id.to_string(), metadata)
            .await?;
        let (reservation, issuing) = tokio::join!(
            self.reserve(
                import_id,
                reserved_before,
                self.sorted_ids(import_id, read.rows_read)
            ),
            issue(unit, import_id, rx_chunks, chunks),
        );
        let reservation = reservation?;
        let Issuing {
            unit,
            issued,
            refusal,
            rows_read: rows_issued,
            id_sum: issued_sum,
        } = issuing?;
        let mut errors: Vec<RowError> = refusal.into_iter().collect();
        let mut error_count = errors.len() as u64;
        let release = match reservation {
            Reservation::Held { rows_read, tag_ids } => {
                if rows_issued != Some(rows_read) || issued_sum != id_sum(&tag_ids) {
                    // The ids reserved are not the rows issued: give them back.
                    let mut tx = self.pool.begin().await?;
                    release_reservation(&mut tx, import_id, &tag_ids).await?;
                    tx.commit().await?;
                    return Err(disagree());
                }
                if let (None, Some(mut u)) = (errors.first(), unit) {
                    sqlx::query(
                        "UPDATE imports SET status = 'applying', updated_at = now() WHERE import_id = $1",
                    )
                    .bind(import_id)
                    .execute(&self.pool)
                    .await?;
                    finish(u.conn(), import_id, "completed", rows_read, issued, 0, &[]).await?;
                    u.commit().await?;
                    return Ok(Outcome::Completed {
                        tags_issued: issued,
                    });
                }
                Some(tag_ids)
            }
            Reservation::BadFile => {
                if reserved_before != Prior::None {
                    // The sort that reserved found no tag twice.
                    return Err(disagree());
                }
                // A tag repeated inside the file: the full report, every repeat with the
                // line it repeats, in file order.
                let (found, count) = self.full_report(import_id, &read).await?;
                errors.extend(found);
                error_count += count;
                None
            }
            Reservation::Taken => {
                let (found, count) = self.already_issued(import_id).await?;
                if count == 0 && errors.is_empty() {
                    return Err(ImportError::Contended);
                }
                errors.extend(found);
                error_count += count;
                None
            }
        };
        self.reject(
            import_id,
            read.rows_read,
            errors,
            error_count,
            release.as_deref(),
        )
        .await
    }

    /// Marks the import rejected, taking out its reservation (`release`) in the same
    /// transaction.
    async fn reject(
        &self,
        import_id: Uuid,
        rows_read: u64,
        mut errors: Vec<RowError>,
        error_count: u64,
        release: Option<&[Uuid]>,
    ) -> Result<Outcome, ImportError> {
        errors.truncate(MAX_ERRORS_KEPT);
        let mut tx = self.pool.begin().await?;
        if let Some(tag_ids) = release {
            release_reservation(&mut tx, import_id, tag_ids).await?;
        }
        finish(
            &mut tx,
            import_id,
            "rejected",
            rows_read,
            0,
            error_count,
            &errors,
        )
        .await?;
        tx.commit().await?;
        Ok(Outcome::Rejected { error_count })
    }

    /// Waits for the file's sorted tag ids and reserves them for the import, on
    /// connections of their own, unless an earlier attempt did (`reserved_before`).
    async fn reserve(
        &self,
        import_id: Uuid,
        reserved_before: Prior,
        ids: impl Future<Output = Result<Option<SortedIds>, ImportError>>,
    ) -> Result<Reservation, ImportError> {
        let started = Instant::now();
        let Some(SortedIds { rows_read, tag_ids }) = ids.await? else {
            return Ok(Reservation::BadFile);
        };
        let read_ms = started.elapsed().as_millis() as u64;
        if reserved_before == Prior::Partial {
            // An attempt stopped between the halves: start again from nothing.
            let mut tx = self.pool.begin().await?;
            release_reservation(&mut tx, import_id, &tag_ids).await?;
            tx.commit().await?;
        }
        if reserved_before != Prior::Held
            && !reserve_halves(&self.pool, import_id, &tag_ids).await?
        {
            return Ok(Reservation::Taken);
        }
        tracing::debug!(import.id = %import_id, read_ms, reserved_ms = started.elapsed().as_millis() as u64, "tags reserved");
        Ok(Reservation::Held { rows_read, tag_ids })
    }

    /// The stored rows' tag ids, sorted; `None` when a tag is there twice.
    async fn sorted_ids(
        &self,
        import_id: Uuid,
        rows_read: u64,
    ) -> Result<Option<SortedIds>, ImportError> {
        // Taken as they arrive, into room for all of them: growing a vector of millions
        // of ids costs more in fresh pages than the sort.
        let mut tag_ids: Vec<Uuid> = Vec::with_capacity(rows_read as usize);
        let mut pieces = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT ids FROM import_rows WHERE import_id = $1 ORDER BY seq",
        )
        .bind(import_id)
        .fetch(&self.pool);
        while let Some(piece) = pieces.try_next().await? {
            tag_ids.extend(
                piece
                    .chunks_exact(16)
                    .map(|b| Uuid::from_bytes(b.try_into().unwrap_or([0; 16]))),
            );
        }
        if tag_ids.len() as u64 != rows_read {
            return Err(ImportError::Damaged(format!(
                "{} stored rows for the {rows_read} rows read",
                tag_ids.len()
            )));
        }
        let sorted = tokio::task::spawn_blocking(move || sort_halves(tag_ids))
            .await
            .map_err(|e| ImportError::Reader(e.to_string()))?;
        Ok(sorted.map(|tag_ids| SortedIds { rows_read, tag_ids }))
    }

    /// Sends the stored rows' tags to `chunks`, a piece at a time, starting now; the
    /// returned future gives how many rows there were.
    fn read_rows(
        &self,
        import_id: Uuid,
        chunks: mpsc::Sender<Vec<IssuedTag>>,
    ) -> impl Future<Output = Result<Option<u64>, ImportError>> + use<> {
        let pool = self.pool.clone();
        let task = tokio::spawn(async move {
            let mut rows = sqlx::query_as::<_, (Vec<u8>, Option<Vec<u8>>)>(
                "SELECT ids, serials FROM import_rows WHERE import_id = $1 ORDER BY seq",
            )
            .bind(import_id)
            .fetch(&pool);
            let mut count = 0u64;
            while let Some((ids, serials)) = rows.try_next().await? {
                let tags = Packed {
                    ids,
                    serials,
                    ..Packed::default()
                }
                .tags()?;
                count += tags.len() as u64;
                // A closed channel means the import already failed: nothing more to do.
                if chunks.send(tags).await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(count))
        });
        async move { task.await.map_err(|e| ImportError::Reader(e.to_string()))? }
    }

    /// The stored rows, a piece at a time, with their lines.
    fn pieces_with_lines(
        &self,
        import_id: Uuid,
    ) -> impl Stream<Item = Result<Vec<(Uuid, u64)>, ImportError>> + Send + '_ {
        sqlx::query_as::<_, (i64, Vec<u8>, Option<Vec<u8>>)>(
            "SELECT first_line, ids, lines FROM import_rows WHERE import_id = $1 ORDER BY seq",
        )
        .bind(import_id)
        .fetch(&self.pool)
        .map(|row| {
            let (first_line, ids, lines) = row?;
            let piece = Packed {
                first_line: first_line as u64,
                ids,
                lines,
                serials: None,
            };
            let lines = piece.lines()?;
            Ok(piece.ids().zip(lines).collect())
        })
    }

    /// An upload stored as CSV text, before the intake packed uploads (ADR 0015): read and
    /// packed once, in a transaction that drops the text, and then taken as any other.
    async fn pack_stored_text(&self, import_id: Uuid) -> Result<ReadReport, ImportError> {
        let (feed, mut pieces, reader) = packed::start_reading::<Vec<u8>>(MAX_ERRORS_KEPT);
        let pool = self.pool.clone();
        let fetch = async move {
            for seq in 0i32.. {
                let data: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT data FROM import_chunks WHERE import_id = $1 AND seq = $2",
                )
                .bind(import_id)
                .bind(seq)
                .fetch_optional(&pool)
                .await?;
                let Some(data) = data else { break };
                // A closed feed: the reader is done with the file.
                if feed.send(data).await.is_err() {
                    break;
                }
            }
            Ok::<_, ImportError>(())
        };
        let mut tx = self.pool.begin().await?;
        let store = async {
            packed::store(&mut tx, import_id, &mut pieces)
                .await
                .map_err(ImportError::from)
        };
        tokio::try_join!(fetch, store)?;
        let report = reader
            .await
            .map_err(|e| ImportError::Reader(e.to_string()))?;
        packed::record(&mut tx, import_id, &report).await?;
        sqlx::query("DELETE FROM import_chunks WHERE import_id = $1")
            .bind(import_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(import.id = %import_id, rows = report.rows_read, "upload stored as text packed");
        Ok(report)
    }

    /// Every problem of the file: the rows its read could not take, and every tag the
    /// file holds more than once, with the line it first appears on; the first
    /// [`MAX_ERRORS_KEPT`] in file order, and how many in all.
    async fn full_report(
        &self,
        import_id: Uuid,
        read: &ReadReport,
    ) -> Result<(Vec<RowError>, u64), ImportError> {
        let mut rows = Vec::new();
        let mut pieces = std::pin::pin!(self.pieces_with_lines(import_id));
        while let Some(piece) = pieces.try_next().await? {
            rows.extend(piece);
        }
        let repeats = tokio::task::spawn_blocking(move || packed::repeats(rows))
            .await
            .map_err(|e| ImportError::Reader(e.to_string()))?;
        let (errors, count) = packed::full_report(read, &repeats, MAX_ERRORS_KEPT);
        if count == 0 {
            // The sort found a repeat that this look did not: look again later.
            return Err(disagree());
        }
        Ok((errors, count))
    }

    /// Rows whose tag was issued before this import. A tag that another import has
    /// reserved but not yet issued is no reason to reject this one: it is tried again once
    /// that import is finished, one way or the other.
    async fn already_issued(&self, import_id: Uuid) -> Result<(Vec<RowError>, u64), ImportError> {
        let mut errors = Vec::new();
        let mut count = 0u64;
        let mut pieces = std::pin::pin!(self.pieces_with_lines(import_id));
        while let Some(piece) = pieces.try_next().await? {
            let ids: Vec<Uuid> = piece.iter().map(|(id, _)| *id).collect();
            let rows: Vec<(Uuid, Option<Uuid>, bool)> = sqlx::query_as(
                "SELECT r.tag_id, r.import_id, r.import_id IS NULL OR i.status = 'completed'
                   FROM tag_registry r LEFT JOIN imports i ON i.import_id = r.import_id
                  WHERE r.tag_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
            if let Some((_, Some(other), _)) = rows.iter().find(|(_, _, issued)| !issued) {
                return Err(ImportError::Reserved(*other));
            }
            let existing: HashSet<Uuid> = rows.into_iter().map(|(id, _, _)| id).collect();
            for (id, line) in piece.into_iter().filter(|(id, _)| existing.contains(id)) {
                count += 1;
                if errors.len() < MAX_ERRORS_KEPT {
                    errors.push(RowError {
                        line,
                        column: Some("tag_id".into()),
                        code: "tag_already_issued".into(),
                        message: format!(
                            "line {line}: tag {id} was already issued by an earlier import or batch"
                        ),
                    });
                }
            }
        }
        Ok((errors, count))
    }
}

/// Sorts the outcome of writing a chunk: done, refused by the batch for a reason the import
/// reports, or failed (the import is retried).
fn stopped<T>(result: Result<T, CommandError>) -> Result<Result<T, RowError>, ImportError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(CommandError::Rule { code, message, .. }) => Ok(Err(RowError {
            line: 0,
            column: None,
            code: code.to_string(),
            message,
        })),
        Err(e) => Err(e.into()),
    }
}

/// What the file's sorted ids and their reservation came to.
enum Reservation {
    /// A bad row or a tag repeated inside the file: nothing reserved.
    BadFile,
    /// Some tags are in the registry already: nothing reserved.
    Taken,
    /// Every tag of the file is reserved for the import (by this attempt or an earlier
    /// one); `tag_ids` sorted.
    Held { rows_read: u64, tag_ids: Vec<Uuid> },
}

/// A clean file's tag ids, sorted, and how many rows it has (one tag a row).
struct SortedIds {
    rows_read: u64,
    tag_ids: Vec<Uuid>,
}

/// What the read of the stored rows for the events came to.
struct Issuing {
    /// The transaction holding the events; `None` once the batch refused a chunk.
    unit: Option<Unit<Batch>>,
    issued: u64,
    /// Why the batch refused.
    refusal: Option<RowError>,
    /// The rows the read found, or `None` if it stopped at a bad row.
    rows_read: Option<u64>,
    /// [`id_sum`] of the tags the read found.
    id_sum: u128,
}

/// What earlier attempts left of an import's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prior {
    None,
    /// One half may be in the registry (`imports.reserving`).
    Partial,
    /// Both halves are (`imports.tags_reserved`).
    Held,
}

/// An import as the worker claimed it.
struct Claimed {
    import_id: Uuid,
    batch_id: Uuid,
    /// What earlier attempts reserved of the file's tags.
    reserved_before: Prior,
    /// What the read of the file found; `None` for an upload stored as CSV text.
    read: Option<ReadReport>,
}

/// Issues the chunks of a read of the file on the unit, each decided and serialized while
/// the one before is written.
async fn issue(
    unit: Unit<Batch>,
    import_id: Uuid,
    mut chunks: mpsc::Receiver<Vec<IssuedTag>>,
    read: impl Future<Output = Result<Option<u64>, ImportError>>,
) -> Result<Issuing, ImportError> {
    let mut unit = Some(unit);
    let mut refusal = None;
    let mut issued: u64 = 0;
    let mut sum = 0u128;
    // The last chunk's writes, staged while the one before was stored.
    let mut staged: Option<Staged> = None;
    while let Some(chunk) = chunks.recv().await {
        sum = sum.wrapping_add(id_sum(chunk.iter().map(|t| &t.tag_id)));
        let Some(u) = unit.as_mut() else { continue };
        let n = chunk.len() as u64;
        let command = BatchCommand::IssueTags {
            import_id: Some(import_id),
            tags: chunk,
        };
        match stopped(u.handle_overlapped(staged.take(), command).await)? {
            Ok(next) => {
                staged = Some(next);
                issued += n;
            }
            Err(e) => {
                refusal = Some(e);
                unit = None;
            }
        }
    }
    let rows_read = read.await?;
    tracing::debug!(import.id = %import_id, issued, "events written");
    if rows_read.is_none() {
        unit = None;
    }
    if let (Some(u), Some(last)) = (unit.as_mut(), staged.take())
        && let Err(e) = stopped(u.flush(last).await)?
    {
        refusal = Some(e);
        unit = None;
    }
    Ok(Issuing {
        unit,
        issued,
        refusal,
        rows_read,
        id_sum: sum,
    })
}

fn disagree() -> ImportError {
    ImportError::Reader("two reads of the upload disagree about its rows".into())
}

/// Sorts tag ids, each half of the registry's split on a thread of its own; `None` when an
/// id is there twice. Sorted, a repeated tag sits next to itself; and the registry's
/// primary key takes ids in key order for about a third of the cost of file order. Keyed
/// by the big-endian 128-bit value: the order of the bytes, which Postgres compares.
fn sort_halves(mut tag_ids: Vec<Uuid>) -> Option<Vec<Uuid>> {
    let mut split = 0;
    for i in 0..tag_ids.len() {
        if tag_ids[i].as_bytes()[0] < REGISTRY_SPLIT {
            tag_ids.swap(split, i);
            split += 1;
        }
    }
    let (low, high) = tag_ids.split_at_mut(split);
    std::thread::scope(|s| {
        s.spawn(|| low.sort_unstable_by_key(Uuid::as_u128));
        high.sort_unstable_by_key(Uuid::as_u128);
    });
    let repeats = tag_ids.windows(2).any(|pair| pair[0] == pair[1]);
    (!repeats).then_some(tag_ids)
}

/// Takes an import's reservation out of the registry (in the transaction that rejects it,
/// when it is rejected).
async fn release_reservation(
    conn: &mut PgConnection,
    import_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<(), ImportError> {
    for chunk in tag_ids.chunks(MAX_TAGS_PER_EVENT) {
        sqlx::query("DELETE FROM tag_registry WHERE tag_id = ANY($1) AND import_id = $2")
            .bind(chunk)
            .bind(import_id)
            .execute(&mut *conn)
            .await?;
    }
    clear_reservation_marks(conn, import_id).await
}

/// Marks the import as holding no reservation, whole or half.
async fn clear_reservation_marks(
    conn: &mut PgConnection,
    import_id: Uuid,
) -> Result<(), ImportError> {
    sqlx::query("UPDATE imports SET tags_reserved = false, reserving = false WHERE import_id = $1")
        .bind(import_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Reserves the import's sorted tags in the registry's two partitions at once, a
/// transaction for each (ADR 0014); each half marks the import `reserving` as it commits,
/// and the import is marked `tags_reserved` once both have. When a tag is taken, the half
/// that went in is taken out again before this returns false: an import never holds part
/// of a reservation while it is postponed or rejected. A half that failed otherwise
/// leaves the mark for the next attempt, which starts again from nothing.
async fn reserve_halves(
    pool: &PgPool,
    import_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<bool, ImportError> {
    let (low, high) =
        tag_ids.split_at(tag_ids.partition_point(|id| id.as_bytes()[0] < REGISTRY_SPLIT));
    let (in_low, in_high) = tokio::join!(
        reserve_half(pool, import_id, low),
        reserve_half(pool, import_id, high),
    );
    let (in_low, in_high) = (in_low?, in_high?);
    if in_low && in_high {
        // Lost with Postgres before the events commit, it leaves `reserving`: undone next time.
        let mut tx = begin_unsynced(pool).await?;
        sqlx::query(
            "UPDATE imports SET tags_reserved = true, reserving = false WHERE import_id = $1",
        )
        .bind(import_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(true);
    }
    let went_in = match (in_low, in_high) {
        (true, _) => low,
        (_, true) => high,
        _ => &[],
    };
    let mut tx = pool.begin().await?;
    release_reservation(&mut tx, import_id, went_in).await?;
    tx.commit().await?;
    Ok(false)
}

/// A transaction whose commit does not wait for the disk. Only for the reservation: the
/// events' commit comes after it in the log and waits for the disk, which makes it durable
/// too before anything is acknowledged (ADR 0014).
async fn begin_unsynced(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ImportError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// One half of [`reserve_halves`]: false if a tag of it is in the registry already.
async fn reserve_half(
    pool: &PgPool,
    import_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<bool, ImportError> {
    if tag_ids.is_empty() {
        return Ok(true);
    }
    // Lost with Postgres before the events commit, the half goes with its mark.
    let mut tx = begin_unsynced(pool).await?;
    if !register(&mut tx, import_id, tag_ids).await? {
        return Ok(false);
    }
    sqlx::query("UPDATE imports SET reserving = true WHERE import_id = $1")
        .bind(import_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Reserves tags in the write side's registry with one binary `COPY`: the
/// table takes the rows a page at a time, where an `INSERT` writes (and logs) them one by
/// one. `tag_ids` come sorted: a million random UUIDs entered in key order cost the primary
/// key index about a third of entering them in file order, and two imports reserving at
/// once wait for each other in one order, never in a cycle. The rows name the import, and
/// through it their batch (migration `..._15`). Returns false if a tag is in the registry
/// already (the transaction is then aborted).
async fn register(
    conn: &mut PgConnection,
    import_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<bool, ImportError> {
    let copied = async {
        let mut copy = conn
            .copy_in_raw("COPY tag_registry (tag_id, import_id) FROM STDIN WITH (FORMAT binary)")
            .await?;
        // Signature, flags (no OIDs), header extension length (none).
        copy.send(&b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"[..])
            .await?;
        for chunk in tag_ids.chunks(REGISTRY_COPY_ROWS) {
            copy.send(registry_rows(chunk, import_id)).await?;
        }
        copy.send(&(-1i16).to_be_bytes()[..]).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e))
            if e.constraint()
                .is_some_and(|c| voketag_commands::store::TAG_REGISTRY_KEYS.contains(&c)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Bytes of one row of the registry `COPY`: a field count and two 16-byte `uuid` fields.
const REGISTRY_ROW_BYTES: usize = 2 + 2 * (4 + 16);

/// Rows per message of the registry `COPY`: about 1.7 MB a message.
const REGISTRY_COPY_ROWS: usize = 40_000;

/// Rows of `COPY ... (FORMAT binary)` input.
fn registry_rows(tag_ids: &[Uuid], import_id: Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag_ids.len() * REGISTRY_ROW_BYTES);
    for tag_id in tag_ids {
        out.extend_from_slice(&2i16.to_be_bytes());
        for field in [tag_id, &import_id] {
            out.extend_from_slice(&16i32.to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
    }
    out
}

async fn finish(
    conn: &mut PgConnection,
    import_id: Uuid,
    status: &str,
    rows_read: u64,
    tags_issued: u64,
    error_count: u64,
    errors: &[RowError],
) -> Result<(), ImportError> {
    sqlx::query(
        "UPDATE imports SET status = $2, rows_read = $3, tags_issued = $4, error_count = $5, errors = $6,
                updated_at = now(), finished_at = now()
          WHERE import_id = $1",
    )
    .bind(import_id)
    .bind(status)
    .bind(rows_read as i64)
    .bind(tags_issued as i64)
    .bind(error_count as i64)
    .bind(serde_json::to_value(errors).map_err(|e| ImportError::Store(e.to_string()))?)
    .execute(&mut *conn)
    .await?;
    // The upload has served its purpose; its rows are not events and may go.
    for table in ["import_chunks", "import_rows"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE import_id = $1"))
            .bind(import_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halves_sorted_apart_are_the_ids_sorted_and_a_repeat_is_found_in_either() {
        let ids: Vec<Uuid> = (0..50_000).map(|_| Uuid::new_v4()).collect();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(sort_halves(ids.clone()), Some(expected));
        for first_byte in [0x00, 0x7f, 0x80, 0xff] {
            let mut bytes = [7u8; 16];
            bytes[0] = first_byte;
            let twice = Uuid::from_bytes(bytes);
            let mut with_repeat = ids.clone();
            with_repeat.insert(10, twice);
            with_repeat.push(twice);
            assert_eq!(sort_halves(with_repeat), None, "{twice}");
        }
        let time_ordered: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).rev().collect();
        let mut expected = time_ordered.clone();
        expected.sort();
        assert_eq!(sort_halves(time_ordered), Some(expected), "all in one half");
        assert_eq!(sort_halves(Vec::new()), Some(Vec::new()));
    }
}

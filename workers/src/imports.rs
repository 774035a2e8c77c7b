//! The imports worker (`voketag work imports`). It claims a pending import with a
//! session-level advisory lock (released by Postgres if the worker dies), streams the
//! stored upload through the CSV validator one row at a time, and issues the tags in
//! chunks of 10,000 inside one transaction that also marks the import completed. Any
//! error — a bad row, a duplicate, a tag issued before, a batch that no longer accepts
//! tags — rolls everything back and the import is rejected with every reason found. A
//! worker killed at any point leaves either nothing or everything; the import is then
//! picked up again and each tag is issued exactly once.

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;
use voketag_commands::import::csv::{RowError, TagCsv, validate};
use voketag_commands::import::{MAX_ERRORS_KEPT, NOTIFY_CHANNEL};
use voketag_commands::store::{CommandError, EventStore, Staged};
use voketag_domain::MAX_TAGS_PER_EVENT;
use voketag_domain::batch::{Batch, BatchCommand, IssuedTag};
use voketag_schemas::EventMetadata;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Store(String),
    #[error("the CSV reader stopped unexpectedly: {0}")]
    Reader(String),
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

    /// Processes every pending import this worker can claim; returns how many it finished.
    pub async fn drain(&self) -> Result<usize, ImportError> {
        let mut done = 0;
        loop {
            let pending: Vec<Uuid> = sqlx::query_scalar(
                "SELECT import_id FROM imports WHERE status IN ('queued', 'validating', 'applying')
                  ORDER BY created_at LIMIT 50",
            )
            .fetch_all(&self.pool)
            .await?;
            let mut progressed = false;
            for id in pending {
                if self.process(id).await? != Outcome::Skipped {
                    done += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(done);
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
        let result = self.process_claimed(import_id).await;
        // The lock dies with the connection anyway; unlocking lets the connection be reused.
        let _ =
            sqlx::query("SELECT pg_advisory_unlock(hashtextextended('import:' || $1::text, 0))")
                .bind(import_id)
                .execute(&mut *lock)
                .await;
        result
    }

    async fn process_claimed(&self, import_id: Uuid) -> Result<Outcome, ImportError> {
        let row: Option<(Uuid, String, String, String, String, String, Uuid)> = sqlx::query_as(
            "UPDATE imports SET status = 'validating', attempts = attempts + 1, updated_at = now()
              WHERE import_id = $1 AND status IN ('queued', 'validating', 'applying')
              RETURNING batch_id, actor, request_id, correlation_id, traceparent, status, factory_id",
        )
        .bind(import_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((batch_id, actor, request_id, correlation_id, traceparent, _, factory_id)) = row
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
        let outcome = self.apply(import_id, batch_id, &metadata).await?;
        tracing::info!(import.id = %import_id, ?outcome, elapsed_ms = started.elapsed().as_millis() as u64, "import finished");
        Ok(outcome)
    }

    async fn apply(
        &self,
        import_id: Uuid,
        batch_id: Uuid,
        metadata: &EventMetadata,
    ) -> Result<Outcome, ImportError> {
        let (tx_chunks, mut rx_chunks) = mpsc::channel::<Vec<IssuedTag>>(2);
        let scan = self.read_upload(import_id, move |reader| scan(reader, tx_chunks));

        let mut unit = Some(
            self.store
                .begin::<Batch>(&batch_id.to_string(), metadata)
                .await?,
        );
        // Why issuing stopped, if it did.
        let mut refusal: Option<RowError> = None;
        let mut already_issued = false;
        let mut issued: u64 = 0;
        // Sorted at the end, to find duplicates inside the file and to be registered
        // (see `register`); 16 bytes a tag.
        let mut tag_ids: Vec<Uuid> = Vec::new();
        // The last chunk's writes, staged while the one before was stored.
        let mut staged: Option<Staged> = None;
        while let Some(chunk) = rx_chunks.recv().await {
            tag_ids.extend(chunk.iter().map(|t| t.tag_id));
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
                Err(stop) => {
                    stop.note(&mut refusal, &mut already_issued);
                    unit = None;
                }
            }
        }
        let scanned = scan.await?;
        // The scan does not look for a tag repeated inside the file: sorted, a repeat sits
        // next to itself. This costs a sort the registry needs anyway, where a hash set of
        // every tag seen cost a cache miss a row. Keyed by the big-endian 128-bit value:
        // the order of the bytes (which Postgres compares), by integer comparisons.
        tag_ids.sort_unstable_by_key(Uuid::as_u128);
        let repeated = tag_ids.windows(2).any(|pair| pair[0] == pair[1]);
        let report = match scanned {
            Some(rows_read) if !repeated => ScanReport {
                rows_read,
                errors: Vec::new(),
                error_count: 0,
            },
            _ => {
                // A bad file: read it again for the full report, every bad row and every
                // repeat with the line it repeats, in file order.
                unit = None;
                self.full_report(import_id).await?
            }
        };
        if let (Some(u), Some(last)) = (unit.as_mut(), staged.take())
            && let Err(stop) = stopped(u.flush(last).await)?
        {
            stop.note(&mut refusal, &mut already_issued);
            unit = None;
        }
        if report.error_count == 0
            && let Some(u) = unit.as_mut()
            && !register(u.conn(), batch_id, &tag_ids).await?
        {
            already_issued = true;
            unit = None;
        }
        let mut errors = report.errors;
        let mut error_count = report.error_count;
        if let Some(r) = refusal {
            errors.insert(0, r);
            error_count += 1;
        }
        if already_issued && report.error_count == 0 {
            // Only now, with the transaction gone, find out which rows they were.
            let (found, count) = self.already_issued(import_id).await?;
            errors.extend(found);
            error_count += count;
        }
        if error_count == 0
            && let Some(mut u) = unit
        {
            sqlx::query(
                "UPDATE imports SET status = 'applying', updated_at = now() WHERE import_id = $1",
            )
            .bind(import_id)
            .execute(&self.pool)
            .await?;
            finish(
                u.conn(),
                import_id,
                "completed",
                report.rows_read,
                issued,
                0,
                &[],
            )
            .await?;
            u.commit().await?;
            return Ok(Outcome::Completed {
                tags_issued: issued,
            });
        }
        drop(unit);
        errors.truncate(MAX_ERRORS_KEPT);
        let mut tx = self.pool.begin().await?;
        finish(
            &mut tx,
            import_id,
            "rejected",
            report.rows_read,
            0,
            error_count,
            &errors,
        )
        .await?;
        tx.commit().await?;
        Ok(Outcome::Rejected { error_count })
    }

    /// Runs `read` over the stored upload on a blocking thread, starting now; the returned
    /// future gives its result. When the upload itself could not be read, that is the
    /// error (the import is retried), whatever `read` made of the shortened input.
    fn read_upload<T, F>(
        &self,
        import_id: Uuid,
        read: F,
    ) -> impl Future<Output = Result<T, ImportError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(ChunkReader) -> T + Send + 'static,
    {
        let reader = ChunkReader::spawn(self.pool.clone(), import_id);
        let failure = reader.failure.clone();
        let task = tokio::task::spawn_blocking(move || read(reader));
        async move {
            let value = task.await.map_err(|e| ImportError::Reader(e.to_string()))?;
            match failure.lock().map(|f| f.clone()) {
                Ok(None) => Ok(value),
                Ok(Some(e)) => Err(ImportError::Reader(e)),
                Err(_) => Err(ImportError::Reader("reader state poisoned".into())),
            }
        }
    }

    /// Every problem of the file, found by a second pass (`validate`) over the upload.
    async fn full_report(&self, import_id: Uuid) -> Result<ScanReport, ImportError> {
        let summary = self
            .read_upload(import_id, |reader| {
                validate(reader, MAX_ERRORS_KEPT, |_| {})
            })
            .await?;
        if summary.error_count == 0 {
            // The first pass found a problem this one did not: read it again later.
            return Err(ImportError::Reader(
                "two reads of the upload disagree about its problems".into(),
            ));
        }
        Ok(ScanReport {
            rows_read: summary.rows_read,
            errors: summary.errors,
            error_count: summary.error_count,
        })
    }

    /// Rows whose tag was issued before this import: a second pass over the file.
    async fn already_issued(&self, import_id: Uuid) -> Result<(Vec<RowError>, u64), ImportError> {
        let (tx_chunks, mut rx_chunks) = mpsc::channel::<Vec<(u64, Uuid)>>(2);
        let lines = self.read_upload(import_id, move |reader| -> Result<(), ImportError> {
            let mut csv = TagCsv::new(reader).map_err(|e| ImportError::Reader(e.message))?;
            let mut chunk = Vec::with_capacity(MAX_TAGS_PER_EVENT);
            while let Some(row) = csv.next_row() {
                if let Ok(row) = row {
                    chunk.push((row.line, row.tag_id));
                    if chunk.len() == MAX_TAGS_PER_EVENT
                        && tx_chunks.blocking_send(std::mem::take(&mut chunk)).is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx_chunks.blocking_send(chunk);
            }
            Ok(())
        });
        let mut errors = Vec::new();
        let mut count = 0u64;
        while let Some(chunk) = rx_chunks.recv().await {
            let ids: Vec<Uuid> = chunk.iter().map(|(_, id)| *id).collect();
            let existing: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
                "SELECT tag_id FROM tag_registry WHERE tag_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            for (line, id) in chunk.into_iter().filter(|(_, id)| existing.contains(id)) {
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
        lines.await??;
        Ok((errors, count))
    }
}

/// Why issuing stopped, when the batch refused a chunk.
enum Stop {
    /// A tag was issued before (the registry's key refused it).
    AlreadyIssued,
    /// The batch no longer accepts tags, or the like.
    Refused(RowError),
}

impl Stop {
    fn note(self, refusal: &mut Option<RowError>, already_issued: &mut bool) {
        match self {
            Stop::AlreadyIssued => *already_issued = true,
            Stop::Refused(e) => *refusal = Some(e),
        }
    }
}

/// Sorts the outcome of writing a chunk: done, stopped for a reason the import reports, or
/// failed (the import is retried).
fn stopped<T>(result: Result<T, CommandError>) -> Result<Result<T, Stop>, ImportError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(CommandError::Taken {
            code: "tag.already_issued",
            ..
        }) => Ok(Err(Stop::AlreadyIssued)),
        Err(CommandError::Rule { code, message, .. }) => Ok(Err(Stop::Refused(RowError {
            line: 0,
            column: None,
            code: code.to_string(),
            message,
        }))),
        Err(e) => Err(e.into()),
    }
}

/// Enters the import's tags in the write side's registry, in one transaction with their
/// events, with one binary `COPY`: the table takes the rows a page at a time, where an
/// `INSERT` writes (and logs) them one by one. `tag_ids` come sorted: a million random
/// UUIDs entered in key order cost the primary key index about a third of entering them in
/// file order. Returns false if a tag was issued before (the transaction is then aborted).
async fn register(
    conn: &mut PgConnection,
    batch_id: Uuid,
    tag_ids: &[Uuid],
) -> Result<bool, ImportError> {
    let copied = async {
        let mut copy = conn
            .copy_in_raw("COPY tag_registry (tag_id, batch_id) FROM STDIN WITH (FORMAT binary)")
            .await?;
        // Signature, flags (no OIDs), header extension length (none).
        copy.send(&b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"[..])
            .await?;
        for chunk in tag_ids.chunks(REGISTRY_COPY_ROWS) {
            copy.send(registry_rows(chunk, batch_id)).await?;
        }
        copy.send(&(-1i16).to_be_bytes()[..]).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("tag_registry_pkey") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Rows per message of the registry `COPY`: 42 bytes a row, about 1.7 MB a message.
const REGISTRY_COPY_ROWS: usize = 40_000;

/// Rows of `COPY ... (FORMAT binary)` input: two 16-byte `uuid` fields each.
fn registry_rows(tag_ids: &[Uuid], batch_id: Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag_ids.len() * 42);
    for tag_id in tag_ids {
        out.extend_from_slice(&2i16.to_be_bytes());
        out.extend_from_slice(&16i32.to_be_bytes());
        out.extend_from_slice(tag_id.as_bytes());
        out.extend_from_slice(&16i32.to_be_bytes());
        out.extend_from_slice(batch_id.as_bytes());
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
    sqlx::query("DELETE FROM import_chunks WHERE import_id = $1")
        .bind(import_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

struct ScanReport {
    rows_read: u64,
    errors: Vec<RowError>,
    error_count: u64,
}

/// Reads the rows (blocking) and sends their tags in chunks, until the end of the file or
/// its first bad row. Returns the number of rows, or `None` for a bad file: the caller then
/// reads it again for the full report. Repeats are found by the caller, after the scan.
fn scan(reader: ChunkReader, chunks: mpsc::Sender<Vec<IssuedTag>>) -> Option<u64> {
    let mut csv = TagCsv::new(reader).ok()?;
    let mut chunk: Vec<IssuedTag> = Vec::with_capacity(MAX_TAGS_PER_EVENT);
    while let Some(row) = csv.next_row() {
        let row = row.ok()?;
        chunk.push(IssuedTag {
            tag_id: row.tag_id,
            serial: row.serial,
        });
        if chunk.len() == MAX_TAGS_PER_EVENT {
            // A closed channel means the import already failed: nothing more to do.
            chunks.blocking_send(std::mem::take(&mut chunk)).ok()?;
        }
    }
    if !chunk.is_empty() {
        chunks.blocking_send(chunk).ok()?;
    }
    Some(csv.rows_read())
}

/// The stored upload as a `Read`, fetched one chunk at a time by an async task.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    current: Vec<u8>,
    offset: usize,
    /// Set when the upload could not be read: the import is retried, not rejected.
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl ChunkReader {
    fn spawn(pool: PgPool, import_id: Uuid) -> ChunkReader {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        tokio::spawn(async move {
            let mut seq: i32 = 0;
            loop {
                let data: Result<Option<Vec<u8>>, sqlx::Error> = sqlx::query_scalar(
                    "SELECT data FROM import_chunks WHERE import_id = $1 AND seq = $2",
                )
                .bind(import_id)
                .bind(seq)
                .fetch_optional(&pool)
                .await;
                let item = match data {
                    Ok(Some(d)) => Ok(d),
                    Ok(None) => break,
                    Err(e) => Err(e.to_string()),
                };
                let failed = item.is_err();
                // A blocking send on a runtime thread: the channel is tiny and the reader
                // drains it from its own blocking thread.
                let tx = tx.clone();
                let sent = tokio::task::spawn_blocking(move || tx.send(item)).await;
                if failed || !matches!(sent, Ok(Ok(()))) {
                    break;
                }
                seq += 1;
            }
        });
        ChunkReader {
            rx,
            current: Vec::new(),
            offset: 0,
            failure: Default::default(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.current = next;
                    self.offset = 0;
                }
                Ok(Err(e)) => {
                    if let Ok(mut f) = self.failure.lock() {
                        *f = Some(e.clone());
                    }
                    return Err(std::io::Error::other(e));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

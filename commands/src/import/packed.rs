//! An upload as the intake stores it (ADR 0015): the file is read once, as it arrives, and
//! what is kept is its good rows, packed ten thousand a piece in file order (one
//! `TagsIssued` event's worth), and the problems the read found. The CSV text itself is
//! not kept: a piece holds a row in about half its bytes, and the imports worker never
//! parses the file again.
//!
//! A piece (a row of `import_rows`):
//! - `ids`: each row's tag id, 16 bytes (RFC 9562 byte order);
//! - `serials`: each row's serial followed by `\n` (an empty line for a row without one),
//!   or `None` when no row of the piece has a serial. A serial never contains a control
//!   character, so `\n` cannot occur inside one;
//! - `first_line`, and `lines` (each row's line, 8 bytes big-endian) only when the rows are
//!   not on consecutive lines from `first_line`.
//!
//! Repeated tags are not looked for while the file arrives: the worker sorts the ids to
//! reserve them anyway, and a repeat then sits next to itself ([`repeats`] gives the full
//! report when there is one).

use std::io::Read;
use tokio::sync::mpsc;
use uuid::Uuid;
use voketag_domain::MAX_TAGS_PER_EVENT;
use voketag_domain::batch::IssuedTag;

use super::ByteFeed;
use super::csv::{RowError, TagCsv, TagRow, duplicate};

/// Good rows a piece holds (the last piece of a file may hold fewer).
pub const ROWS_PER_PIECE: usize = MAX_TAGS_PER_EVENT;

/// Bytes of one id in [`Packed::ids`].
const ID_BYTES: usize = 16;

/// Good rows of an upload, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    pub first_line: u64,
    pub ids: Vec<u8>,
    pub serials: Option<Vec<u8>>,
    pub lines: Option<Vec<u8>>,
}

/// Why a stored piece cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored piece of the upload is damaged: {0}")]
pub struct Damaged(&'static str);

impl Packed {
    /// Rows in the piece.
    pub fn len(&self) -> usize {
        self.ids.len() / ID_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The rows' tag ids, in file order.
    pub fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.ids.chunks_exact(ID_BYTES).map(|b| {
            // chunks_exact gives exactly ID_BYTES.
            Uuid::from_bytes(b.try_into().unwrap_or([0; ID_BYTES]))
        })
    }

    /// The rows' lines, in file order.
    pub fn lines(&self) -> Result<Vec<u64>, Damaged> {
        if !self.ids.len().is_multiple_of(ID_BYTES) {
            return Err(Damaged("ids are not 16 bytes each"));
        }
        match &self.lines {
            None => Ok((0..self.len() as u64)
                .map(|i| self.first_line + i)
                .collect()),
            Some(bytes) => {
                if bytes.len() != self.len() * 8 {
                    return Err(Damaged("lines and ids differ in number"));
                }
                Ok(bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect())
            }
        }
    }

    /// The rows as tags to issue, in file order.
    pub fn tags(&self) -> Result<Vec<IssuedTag>, Damaged> {
        if !self.ids.len().is_multiple_of(ID_BYTES) {
            return Err(Damaged("ids are not 16 bytes each"));
        }
        let Some(serials) = &self.serials else {
            return Ok(self
                .ids()
                .map(|tag_id| IssuedTag {
                    tag_id,
                    serial: None,
                })
                .collect());
        };
        let text = std::str::from_utf8(serials).map_err(|_| Damaged("serials are not UTF-8"))?;
        let mut serials = text.split_terminator('\n');
        let mut tags = Vec::with_capacity(self.len());
        for tag_id in self.ids() {
            let serial = serials.next().ok_or(Damaged("fewer serials than ids"))?;
            tags.push(IssuedTag {
                tag_id,
                serial: (!serial.is_empty()).then(|| serial.to_owned()),
            });
        }
        if serials.next().is_some() {
            return Err(Damaged("more serials than ids"));
        }
        Ok(tags)
    }
}

/// Builds a [`Packed`] row by row.
#[derive(Default)]
struct Packer {
    piece: Packed,
    serials: Vec<u8>,
    any_serial: bool,
    lines: Vec<u64>,
    /// Bytes of the serials of the last piece taken.
    serial_bytes: usize,
}

impl Packer {
    fn push(&mut self, row: &TagRow) {
        if self.piece.is_empty() {
            self.piece.first_line = row.line;
            // Room for a whole piece at once: growing by doubling costs fresh pages and
            // copies, for every piece. Serials are as long as the last piece's were.
            self.piece.ids.reserve_exact(ROWS_PER_PIECE * ID_BYTES);
            self.lines.reserve_exact(ROWS_PER_PIECE);
            self.serials
                .reserve_exact(self.serial_bytes.max(ROWS_PER_PIECE));
        }
        self.piece.ids.extend_from_slice(row.tag_id.as_bytes());
        if let Some(serial) = &row.serial {
            self.serials.extend_from_slice(serial.as_bytes());
            self.any_serial = true;
        }
        self.serials.push(b'\n');
        self.lines.push(row.line);
    }

    fn take(&mut self) -> Packed {
        let mut piece = std::mem::take(&mut self.piece);
        let serials = std::mem::take(&mut self.serials);
        self.serial_bytes = serials.len();
        piece.serials = std::mem::take(&mut self.any_serial).then_some(serials);
        let lines = std::mem::take(&mut self.lines);
        let consecutive = lines
            .iter()
            .enumerate()
            .all(|(i, line)| *line == piece.first_line + i as u64);
        piece.lines = (!consecutive).then(|| lines.iter().flat_map(|l| l.to_be_bytes()).collect());
        piece
    }
}

/// What the read of a file found wrong with its rows (repeated tags aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Data rows read, good or bad (blank lines are not rows).
    pub rows_read: u64,
    /// The first `keep` problems, in file order.
    pub errors: Vec<RowError>,
    /// Every problem found, kept or not.
    pub error_count: u64,
}

impl ReadReport {
    fn push(&mut self, keep: usize, error: RowError) {
        self.error_count += 1;
        if self.errors.len() < keep {
            self.errors.push(error);
        }
    }
}

/// Reads a CSV of tags (blocking), hands its good rows to `emit` a piece at a time, and
/// reports the rows that are not good, keeping the first `keep`. Stops early, with what it
/// found so far, once `emit` returns false (nobody wants the pieces any more).
pub fn read<R: Read>(reader: R, keep: usize, mut emit: impl FnMut(Packed) -> bool) -> ReadReport {
    let mut report = ReadReport::default();
    let mut csv = match TagCsv::new(reader) {
        Ok(csv) => csv,
        Err(e) => {
            report.push(keep, e);
            return report;
        }
    };
    let mut packer = Packer::default();
    let mut rows = 0usize;
    while let Some(row) = csv.next_row() {
        match row {
            Ok(row) => {
                packer.push(&row);
                rows += 1;
                if rows == ROWS_PER_PIECE {
                    rows = 0;
                    if !emit(packer.take()) {
                        report.rows_read = csv.rows_read();
                        return report;
                    }
                }
            }
            Err(e) => report.push(keep, e),
        }
    }
    if rows > 0 {
        emit(packer.take());
    }
    report.rows_read = csv.rows_read();
    report
}

/// Starts [`read`] on a blocking thread: send it the file's bytes as they arrive (closing
/// the sender ends the file); its pieces come out of the receiver, and the handle gives its
/// report once the file is read.
#[allow(clippy::type_complexity)]
pub fn start_reading<B: AsRef<[u8]> + Send + 'static>(
    keep: usize,
) -> (
    mpsc::Sender<B>,
    mpsc::Receiver<Packed>,
    tokio::task::JoinHandle<ReadReport>,
) {
    let (bytes, feed) = ByteFeed::channel(8);
    let (pieces, out) = mpsc::channel(2);
    let reader =
        tokio::task::spawn_blocking(move || read(feed, keep, |p| pieces.blocking_send(p).is_ok()));
    (bytes, out, reader)
}

/// Stores the pieces of a read as they come, in order, in the caller's transaction;
/// returns how many.
pub async fn store(
    conn: &mut sqlx::PgConnection,
    import_id: Uuid,
    pieces: &mut mpsc::Receiver<Packed>,
) -> Result<i32, sqlx::Error> {
    let mut seq: i32 = 0;
    while let Some(p) = pieces.recv().await {
        sqlx::query(
            "INSERT INTO import_rows (import_id, seq, first_line, ids, serials, lines)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(import_id)
        .bind(seq)
        .bind(p.first_line as i64)
        .bind(p.ids)
        .bind(p.serials)
        .bind(p.lines)
        .execute(&mut *conn)
        .await?;
        seq += 1;
    }
    Ok(seq)
}

/// Records on the import what its read found, in the caller's transaction.
pub async fn record(
    conn: &mut sqlx::PgConnection,
    import_id: Uuid,
    report: &ReadReport,
) -> Result<(), sqlx::Error> {
    let errors =
        serde_json::to_value(&report.errors).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "UPDATE imports SET read_rows = $2, read_errors = $3, read_error_count = $4
          WHERE import_id = $1",
    )
    .bind(import_id)
    .bind(report.rows_read as i64)
    .bind(errors)
    .bind(report.error_count as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A good row whose tag an earlier good row of the file already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub line: u64,
    pub tag_id: Uuid,
    /// The line the tag first appears on.
    pub first: u64,
}

impl Repeat {
    pub fn error(&self) -> RowError {
        duplicate(
            &TagRow {
                line: self.line,
                tag_id: self.tag_id,
                serial: None,
            },
            self.first,
        )
    }
}

/// Every repeated tag among the good rows `(tag id, line)` (in any order), in file order.
pub fn repeats(mut rows: Vec<(Uuid, u64)>) -> Vec<Repeat> {
    rows.sort_unstable_by_key(|(id, line)| (id.as_u128(), *line));
    let mut found = Vec::new();
    for run in rows.chunk_by(|a, b| a.0 == b.0) {
        let first = run[0].1;
        found.extend(run[1..].iter().map(|&(tag_id, line)| Repeat {
            line,
            tag_id,
            first,
        }));
    }
    found.sort_unstable_by_key(|r| r.line);
    found
}

/// The file's problems in file order, the first `keep` of them, and how many there are in
/// all: those the read found and the repeats. Neither list holds a line twice.
pub fn full_report(read: &ReadReport, repeats: &[Repeat], keep: usize) -> (Vec<RowError>, u64) {
    let mut errors = Vec::with_capacity(keep.min(read.errors.len() + repeats.len()));
    let (mut a, mut b) = (read.errors.iter().peekable(), repeats.iter().peekable());
    while errors.len() < keep {
        let next = match (a.peek(), b.peek()) {
            (Some(e), Some(r)) if e.line <= r.line => a.next().cloned(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().map(Repeat::error),
            (Some(_), None) => a.next().cloned(),
            (None, None) => None,
        };
        match next {
            Some(e) => errors.push(e),
            None => break,
        }
    }
    (errors, read.error_count + repeats.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::csv::validate;
    use super::*;

    fn pieces_of(input: &[u8]) -> (Vec<Packed>, ReadReport) {
        let mut pieces = Vec::new();
        let report = read(input, 1000, |p| {
            pieces.push(p);
            true
        });
        (pieces, report)
    }

    fn good_rows(pieces: &[Packed]) -> Vec<(Uuid, u64)> {
        pieces
            .iter()
            .flat_map(|p| p.ids().zip(p.lines().expect("lines")))
            .collect()
    }

    #[test]
    fn rows_come_back_as_they_were_read_with_their_serials_and_lines() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let input = format!("tag_id,serial\n{a},S-1\n{b},\n\n{c}, Ünï \n");
        let (pieces, report) = pieces_of(input.as_bytes());
        assert_eq!(report.rows_read, 3);
        assert_eq!(report.error_count, 0);
        assert_eq!(pieces.len(), 1);
        let tags = pieces[0].tags().expect("tags");
        let serials: Vec<Option<&str>> = tags.iter().map(|t| t.serial.as_deref()).collect();
        assert_eq!(serials, [Some("S-1"), None, Some("Ünï")]);
        assert_eq!(tags.iter().map(|t| t.tag_id).collect::<Vec<_>>(), [a, b, c]);
        // The blank line 4 breaks the run of lines: they are stored.
        assert_eq!(pieces[0].lines(), Ok(vec![2, 3, 5]));
        assert!(pieces[0].lines.is_some());
    }

    #[test]
    fn a_big_file_is_packed_ten_thousand_rows_a_piece_on_consecutive_lines() {
        let ids: Vec<Uuid> = (0..25_001).map(|_| Uuid::new_v4()).collect();
        let mut input = String::from("tag_id\n");
        for id in &ids {
            input.push_str(&format!("{id}\n"));
        }
        let (pieces, report) = pieces_of(input.as_bytes());
        assert_eq!(report.rows_read, 25_001);
        let sizes: Vec<usize> = pieces.iter().map(Packed::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_001]);
        assert!(
            pieces
                .iter()
                .all(|p| p.lines.is_none() && p.serials.is_none())
        );
        assert_eq!(pieces[1].first_line, 10_002);
        let back: Vec<Uuid> = pieces
            .iter()
            .flat_map(|p| p.tags().expect("tags"))
            .map(|t| t.tag_id)
            .collect();
        assert_eq!(back, ids);
    }

    #[test]
    fn a_damaged_piece_is_refused_not_misread() {
        let (pieces, _) = pieces_of(format!("tag_id,serial\n{},A\n", Uuid::new_v4()).as_bytes());
        let mut piece = pieces[0].clone();
        piece.serials = Some(b"A\nB\n".to_vec());
        assert_eq!(piece.tags(), Err(Damaged("more serials than ids")));
        piece.serials = Some(Vec::new());
        assert_eq!(piece.tags(), Err(Damaged("fewer serials than ids")));
        piece.lines = Some(vec![0; 3]);
        assert!(piece.lines().is_err());
        piece.ids.pop();
        assert!(piece.tags().is_err());
    }

    #[test]
    fn a_reader_nobody_listens_to_stops() {
        let mut input = String::from("tag_id\n");
        for _ in 0..(ROWS_PER_PIECE * 3) {
            input.push_str(&format!("{}\n", Uuid::new_v4()));
        }
        let mut emitted = 0;
        let report = read(input.as_bytes(), 10, |_| {
            emitted += 1;
            false
        });
        assert_eq!(emitted, 1);
        assert_eq!(report.rows_read, ROWS_PER_PIECE as u64);
    }

    /// The read's problems merged with the repeats are the report of `validate`, which
    /// looks for repeats while it reads: the same errors, in the same order, with the same
    /// count, also when only some are kept.
    #[test]
    fn the_full_report_is_the_one_validate_gives() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let input = format!(
            "tag_id,serial\n{a},1\nnot-a-uuid,2\n{b},3\n{a},4\n\n{c},5,extra\n{b},6\n{a},7\n{c},8\n{c},9\n"
        );
        for keep in [0, 1, 3, 1000] {
            let mut pieces = Vec::new();
            let report = read(input.as_bytes(), keep, |p| {
                pieces.push(p);
                true
            });
            let found = repeats(good_rows(&pieces));
            let (errors, count) = full_report(&report, &found, keep);
            let oracle = validate(input.as_bytes(), keep, |_| {});
            assert_eq!(errors, oracle.errors, "keep {keep}");
            assert_eq!(count, oracle.error_count);
            assert_eq!(report.rows_read, oracle.rows_read);
        }
        let codes: Vec<String> = {
            let mut pieces = Vec::new();
            let report = read(input.as_bytes(), 1000, |p| {
                pieces.push(p);
                true
            });
            full_report(&report, &repeats(good_rows(&pieces)), 1000)
                .0
                .into_iter()
                .map(|e| format!("{}:{}", e.line, e.code))
                .collect()
        };
        assert_eq!(codes.len(), 6, "{codes:?}");
    }

    #[test]
    fn a_file_without_its_header_column_has_one_problem_and_no_rows() {
        let (pieces, report) = pieces_of(b"serial\nS1\n");
        assert!(pieces.is_empty());
        assert_eq!(report.error_count, 1);
        assert_eq!(report.errors[0].line, 1);
    }
}

//! Streaming validation of tag-import CSV files.
//!
//! This module owns the *file format* of a tag import: reading the header, checking every data
//! row, and turning each problem into a [`RowError`] with a stable machine-readable `code`, the
//! 1-based physical line number, the column and a human message. It does not touch the database:
//! [`validate`] hands every valid, non-duplicate row to a callback so the caller can check tags
//! against the store in batches.
//!
//! The accepted format:
//!
//! * UTF-8, optionally starting with a byte-order mark (stripped); LF or CRLF line ends.
//! * A header line naming the columns: `tag_id` (required) and `serial` (optional), in any order,
//!   matched case-insensitively after trimming whitespace. Other or repeated columns are rejected.
//! * One row per tag: `tag_id` is a UUID in the hyphenated 36-character form (any case,
//!   surrounding whitespace allowed, not the nil UUID); `serial` is up to [`MAX_SERIAL_CHARS`]
//!   printable characters, trimmed, empty meaning "no serial".
//! * Blank and whitespace-only lines are ignored anywhere in the file.
//!
//! Memory use is independent of the file size except for the duplicate check in [`validate`]
//! (one hash-map entry per valid row); a single row may not exceed [`MAX_ROW_BYTES`].
//!
//! Line numbers are physical lines (the header is normally line 1). The `csv` crate's own record
//! positions drift after blank lines and with CRLF line ends, so the reader is fed through
//! `Feed`, which makes every blank line a one-space line (so the parser never skips lines
//! silently), while the parser uses `\n` as its only record terminator (a CR is trailing
//! whitespace, trimmed from the value).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{self, Read};

use csv::{ByteRecord, ReaderBuilder, Terminator};
use uuid::Uuid;

/// The stable error codes carried by [`RowError::code`].
pub mod code {
    /// The file has no content (0 bytes, only a byte-order mark, or only blank lines).
    pub const EMPTY_FILE: &str = "empty_file";
    /// The first line looks like data rather than a header.
    pub const MISSING_HEADER: &str = "missing_header";
    /// The header does not name a `tag_id` column.
    pub const MISSING_TAG_ID_COLUMN: &str = "missing_tag_id_column";
    /// The header names a column other than `tag_id` and `serial`, or an empty one.
    pub const UNKNOWN_COLUMN: &str = "unknown_column";
    /// The header names the same column twice.
    pub const DUPLICATE_COLUMN: &str = "duplicate_column";
    /// The file has a header but no data rows.
    pub const NO_ROWS: &str = "no_rows";
    /// A value (or a header cell) is not valid UTF-8.
    pub const INVALID_UTF8: &str = "invalid_utf8";
    /// A row has a different number of fields than the header.
    pub const WRONG_COLUMN_COUNT: &str = "wrong_column_count";
    /// `tag_id` is not a hyphenated UUID.
    pub const INVALID_UUID: &str = "invalid_uuid";
    /// `tag_id` is the nil UUID.
    pub const NIL_UUID: &str = "nil_uuid";
    /// `serial` is longer than [`super::MAX_SERIAL_CHARS`] characters.
    pub const SERIAL_TOO_LONG: &str = "serial_too_long";
    /// `serial` contains a control or invisible formatting character.
    pub const INVALID_SERIAL: &str = "invalid_serial";
    /// The same `tag_id` appears on an earlier line of the file.
    pub const DUPLICATE_TAG: &str = "duplicate_tag";
    /// The CSV structure is broken (a quoted field spanning lines, usually an unclosed quote,
    /// or a row longer than [`super::MAX_ROW_BYTES`]).
    pub const MALFORMED_CSV: &str = "malformed_csv";
    /// Reading the underlying stream failed; validation stops there.
    pub const IO_ERROR: &str = "io_error";
}

/// The longest accepted serial, in characters (Unicode scalar values).
pub const MAX_SERIAL_CHARS: usize = 64;

/// The longest accepted row, in bytes. A real row is well under 200 bytes; this bound keeps a
/// stray quote (which makes the parser swallow the rest of the file) from buffering the file.
/// Exceeding it is reported as `malformed_csv` and stops validation.
pub const MAX_ROW_BYTES: u64 = 1024 * 1024;

/// How many characters of an offending value are quoted in a message.
const SHOWN_VALUE_CHARS: usize = 64;

/// How many header names a `missing_tag_id_column` message lists.
const MAX_LISTED_COLUMNS: usize = 8;

/// Read-buffer size for both the input adapter and the CSV parser.
const READ_BUFFER_BYTES: usize = 64 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const TAG_ID: &str = "tag_id";
const SERIAL: &str = "serial";

/// One problem found in the file. `line` is the 1-based physical line number in the file
/// (header = line 1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RowError {
    /// 1-based physical line number; file-level problems use the header line (normally 1).
    pub line: u64,
    /// The column the problem is in (canonical name for known columns), if it is about one.
    pub column: Option<String>,
    /// Stable machine-readable code, one of the constants in [`code`].
    pub code: String,
    /// Human-readable explanation naming the line, the column and the reason.
    pub message: String,
}

impl RowError {
    fn new(line: u64, column: Option<&str>, code: &str, message: String) -> Self {
        Self {
            line,
            column: column.map(str::to_owned),
            code: code.to_owned(),
            message,
        }
    }
}

/// One valid data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// 1-based physical line number of the row.
    pub line: u64,
    /// The tag's id (never nil).
    pub tag_id: Uuid,
    /// The trimmed serial, or `None` when the column is absent or the value is empty.
    pub serial: Option<String>,
}

/// Column positions established by the header.
#[derive(Debug, Clone, Copy)]
struct Columns {
    count: usize,
    tag_id: usize,
    serial: Option<usize>,
}

/// Outcome of reading one non-blank record.
enum Raw {
    /// A record starting on this physical line is in the reader's record buffer.
    Record(u64),
    /// End of input.
    End,
    /// The stream cannot be read any further.
    Failed(RowError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
}

/// A streaming reader of tag-import rows. Holds one row in memory at a time.
pub struct TagCsv<R: Read> {
    rdr: csv::Reader<Feed<R>>,
    record: ByteRecord,
    columns: Columns,
    header_line: u64,
    rows_read: u64,
    state: State,
}

impl<R: Read> TagCsv<R> {
    /// Reads and checks the header.
    ///
    /// File-level problems (`empty_file`, `missing_header`, `missing_tag_id_column`,
    /// `unknown_column`, `duplicate_column`, `invalid_utf8` in the header, `malformed_csv`,
    /// `io_error`) are returned as the error, with the header's line (line 1 for an empty file).
    pub fn new(reader: R) -> Result<Self, RowError> {
        let rdr = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .buffer_capacity(READ_BUFFER_BYTES)
            .from_reader(Feed::new(reader));
        let mut csv = Self {
            rdr,
            record: ByteRecord::with_capacity(256, 4),
            columns: Columns {
                count: 1,
                tag_id: 0,
                serial: None,
            },
            header_line: 1,
            rows_read: 0,
            state: State::Reading,
        };
        let line = match csv.next_record() {
            Raw::Record(line) => line,
            Raw::End => {
                return Err(RowError::new(
                    1,
                    None,
                    code::EMPTY_FILE,
                    "line 1: the file is empty; expected a header line naming the tag_id column \
                     (and optionally serial), followed by one row per tag"
                        .to_owned(),
                ));
            }
            Raw::Failed(e) => return Err(e),
        };
        csv.header_line = line;
        if spans_lines(&csv.record) {
            return Err(multiline_error(line));
        }
        csv.columns = parse_header(&csv.record, line)?;
        Ok(csv)
    }

    /// Next data row: `Ok(row)` or `Err(problem)`. Returns `None` at the end of the file.
    ///
    /// A file with a header but no data rows yields one `no_rows` error before `None`. After an
    /// `io_error` (or a row longer than [`MAX_ROW_BYTES`]) the reader stops and returns `None`.
    pub fn next_row(&mut self) -> Option<Result<TagRow, RowError>> {
        if self.state == State::Done {
            return None;
        }
        match self.next_record() {
            Raw::Record(line) => {
                self.rows_read += 1;
                let result = self.check_row(line);
                Some(match result {
                    // A valid row cannot contain a line break (it fails both the UUID and the
                    // serial check), so only failing rows need the more expensive scan.
                    Err(_) if spans_lines(&self.record) => Err(multiline_error(line)),
                    other => other,
                })
            }
            Raw::End => {
                self.state = State::Done;
                (self.rows_read == 0).then(|| {
                    Err(RowError::new(
                        self.header_line,
                        None,
                        code::NO_ROWS,
                        format!(
                            "line {}: the file has a header but no data rows",
                            self.header_line
                        ),
                    ))
                })
            }
            Raw::Failed(e) => {
                self.state = State::Done;
                Some(Err(e))
            }
        }
    }

    /// Data rows seen so far (valid or not); blank lines are not rows.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Whether the header has a `serial` column.
    pub fn has_serial_column(&self) -> bool {
        self.columns.serial.is_some()
    }

    /// Reads the next record that is not blank (or whitespace-only) into `self.record`.
    fn next_record(&mut self) -> Raw {
        loop {
            // `Feed` guarantees the parser never skips a line, so the position at which the
            // parser starts reading a record is the record's physical line.
            let line = self.rdr.position().line();
            match self.rdr.read_byte_record(&mut self.record) {
                Ok(true) => {
                    let consumed = self.rdr.position().byte();
                    self.rdr.get_mut().row_start = consumed;
                    if !is_blank(&self.record) {
                        let line = self.record.position().map_or(line, csv::Position::line);
                        return Raw::Record(line);
                    }
                }
                Ok(false) => return Raw::End,
                Err(e) => {
                    let error = if self.rdr.get_ref().row_too_long {
                        RowError::new(
                            line,
                            None,
                            code::MALFORMED_CSV,
                            format!(
                                "line {line}: the row starting on this line is longer than {} \
                                 bytes, which usually means a double quote is not closed; \
                                 validation stopped here",
                                MAX_ROW_BYTES
                            ),
                        )
                    } else if let csv::ErrorKind::Io(io) = e.kind() {
                        RowError::new(
                            line,
                            None,
                            code::IO_ERROR,
                            format!("line {line}: the file could not be read any further: {io}"),
                        )
                    } else {
                        RowError::new(
                            line,
                            None,
                            code::MALFORMED_CSV,
                            format!("line {line}: the CSV structure is broken: {e}"),
                        )
                    };
                    return Raw::Failed(error);
                }
            }
        }
    }

    /// Checks the data row in `self.record`, which starts on `line`.
    fn check_row(&self, line: u64) -> Result<TagRow, RowError> {
        let record = &self.record;
        let columns = self.columns;
        if record.len() != columns.count {
            return Err(wrong_column_count(line, record.len(), columns.count));
        }
        let Some(raw_tag) = record.get(columns.tag_id) else {
            return Err(wrong_column_count(line, record.len(), columns.count));
        };
        let tag_id = parse_tag_id(raw_tag, line)?;
        let serial = match columns.serial {
            None => None,
            Some(index) => match record.get(index) {
                Some(raw) => parse_serial(raw, line)?,
                None => return Err(wrong_column_count(line, record.len(), columns.count)),
            },
        };
        Ok(TagRow {
            line,
            tag_id,
            serial,
        })
    }
}

impl<R: Read> Iterator for TagCsv<R> {
    type Item = Result<TagRow, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

/// The outcome of a full validation pass.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Data rows read (valid or not, blank lines excluded).
    pub rows_read: u64,
    /// Rows that passed every check and were handed to `on_row` (duplicates excluded).
    pub valid_rows: u64,
    /// The first `keep` errors, in file order.
    pub errors: Vec<RowError>,
    /// All errors found, including those not kept.
    pub error_count: u64,
}

#[cfg(test)]
impl Summary {
    fn push(&mut self, keep: usize, error: RowError) {
        self.error_count += 1;
        if self.errors.len() < keep {
            self.errors.push(error);
        }
    }
}

/// Full validation pass: reads every row, detects duplicate `tag_id`s inside the file, keeps the
/// first `keep` errors and counts all of them. Calls `on_row` for each valid, non-duplicate row
/// in file order. Since the intake stores uploads packed (ADR 0015) nothing runs it but the
/// tests: it is the single-pass reference the packed report is checked against.
#[cfg(test)]
pub fn validate<R: Read>(reader: R, keep: usize, mut on_row: impl FnMut(&TagRow)) -> Summary {
    let mut summary = Summary {
        rows_read: 0,
        valid_rows: 0,
        errors: Vec::new(),
        error_count: 0,
    };
    let mut csv = match TagCsv::new(reader) {
        Ok(csv) => csv,
        Err(e) => {
            summary.push(keep, e);
            return summary;
        }
    };
    // tag id -> line of its first occurrence.
    let mut seen = SeenTags::default();
    while let Some(result) = csv.next_row() {
        match result {
            Ok(row) => match seen.first_line(&row.tag_id, row.line) {
                Some(first) => summary.push(keep, duplicate(&row, first)),
                None => {
                    summary.valid_rows += 1;
                    on_row(&row);
                }
            },
            Err(e) => summary.push(keep, e),
        }
    }
    summary.rows_read = csv.rows_read();
    summary
}

/// The error for a row whose tag already appeared on line `first`.
pub fn duplicate(row: &TagRow, first: u64) -> RowError {
    let message = format!(
        "line {}, column {TAG_ID}: tag {} already appears on line {first}",
        row.line, row.tag_id
    );
    RowError::new(row.line, Some(TAG_ID), code::DUPLICATE_TAG, message)
}

/// Tag ids seen so far in one file, each with the line it first appeared on.
///
/// The ids are chosen by whoever uploads the file, so the hash is seeded per map
/// (foldhash's `RandomState`: no fixed, predictable collisions). It is the largest cost of
/// validating a big file (one cache miss per row); foldhash keeps it about 10 % below std's
/// SipHash. Keys are `(u64, u64)` rather than `u128`: 24-byte buckets instead of 32.
#[cfg(test)]
#[derive(Default)]
pub struct SeenTags(HashMap<(u64, u64), u64, foldhash::fast::RandomState>);

#[cfg(test)]
impl SeenTags {
    /// Records `tag` at `line`; if it was seen before, returns the line it was first seen on.
    pub fn first_line(&mut self, tag: &Uuid, line: u64) -> Option<u64> {
        match self.0.entry(tag.as_u64_pair()) {
            Entry::Occupied(first) => Some(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(line);
                None
            }
        }
    }
}

/// Checks the header record and locates the columns.
fn parse_header(record: &ByteRecord, line: u64) -> Result<Columns, RowError> {
    if record
        .iter()
        .any(|cell| Uuid::try_parse_ascii(cell.trim_ascii()).is_ok())
    {
        return Err(RowError::new(
            line,
            None,
            code::MISSING_HEADER,
            format!(
                "line {line}: the first line must be a header naming the {TAG_ID} column \
                 (e.g. \"tag_id,serial\"), but it looks like data: it contains a UUID"
            ),
        ));
    }
    let mut names = Vec::with_capacity(record.len());
    for (index, cell) in record.iter().enumerate() {
        match std::str::from_utf8(cell) {
            Ok(name) => names.push(name.trim()),
            Err(e) => {
                return Err(RowError::new(
                    line,
                    None,
                    code::INVALID_UTF8,
                    format!(
                        "line {line}, header column {}: {}",
                        index + 1,
                        utf8_problem(cell, &e)
                    ),
                ));
            }
        }
    }
    let tag_id = names.iter().position(|n| n.eq_ignore_ascii_case(TAG_ID));
    let Some(tag_id) = tag_id else {
        let mut found = names
            .iter()
            .take(MAX_LISTED_COLUMNS)
            .map(|n| show(n))
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > MAX_LISTED_COLUMNS {
            found.push_str(&format!(" and {} more", names.len() - MAX_LISTED_COLUMNS));
        }
        return Err(RowError::new(
            line,
            Some(TAG_ID),
            code::MISSING_TAG_ID_COLUMN,
            format!(
                "line {line}: the header has no {TAG_ID} column (found {found}); the first line \
                 must be a header naming the columns, e.g. \"tag_id,serial\""
            ),
        ));
    };
    let mut first_seen: HashMap<String, usize> = HashMap::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        match first_seen.entry(name.to_lowercase()) {
            Entry::Occupied(first) => {
                let canonical = canonical_name(name).unwrap_or(name);
                return Err(RowError::new(
                    line,
                    Some(canonical),
                    code::DUPLICATE_COLUMN,
                    format!(
                        "line {line}: the column {} appears twice in the header (columns {} \
                         and {})",
                        show(canonical),
                        first.get() + 1,
                        index + 1
                    ),
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
    }
    let mut serial = None;
    for (index, name) in names.iter().enumerate() {
        match canonical_name(name) {
            Some(TAG_ID) => {}
            Some(_) => serial = Some(index),
            None if name.is_empty() => {
                return Err(RowError::new(
                    line,
                    Some(name),
                    code::UNKNOWN_COLUMN,
                    format!(
                        "line {line}, header column {}: the column has no name (a stray \
                         delimiter?); allowed columns are {TAG_ID} and {SERIAL}",
                        index + 1
                    ),
                ));
            }
            None => {
                return Err(RowError::new(
                    line,
                    Some(name),
                    code::UNKNOWN_COLUMN,
                    format!(
                        "line {line}, header column {}: unknown column {}; allowed columns are \
                         {TAG_ID} and {SERIAL}",
                        index + 1,
                        show(name)
                    ),
                ));
            }
        }
    }
    Ok(Columns {
        count: names.len(),
        tag_id,
        serial,
    })
}

/// The canonical spelling of a known column name.
fn canonical_name(name: &str) -> Option<&'static str> {
    [TAG_ID, SERIAL]
        .into_iter()
        .find(|known| name.eq_ignore_ascii_case(known))
}

fn parse_tag_id(raw: &[u8], line: u64) -> Result<Uuid, RowError> {
    let value = raw.trim_ascii();
    if value.len() == 36
        && let Ok(id) = Uuid::try_parse_ascii(value)
    {
        if id.is_nil() {
            return Err(RowError::new(
                line,
                Some(TAG_ID),
                code::NIL_UUID,
                format!("line {line}, column {TAG_ID}: the nil UUID {id} is not a valid tag id"),
            ));
        }
        return Ok(id);
    }
    let text = match std::str::from_utf8(value) {
        Ok(text) => text,
        Err(e) => {
            return Err(RowError::new(
                line,
                Some(TAG_ID),
                code::INVALID_UTF8,
                format!("line {line}, column {TAG_ID}: {}", utf8_problem(value, &e)),
            ));
        }
    };
    let message = if text.is_empty() {
        format!(
            "line {line}, column {TAG_ID}: the value is empty; expected a UUID such as \
             67e55044-10b1-426f-9247-bb680e5fe0c8"
        )
    } else if Uuid::try_parse_ascii(value).is_ok() {
        format!(
            "line {line}, column {TAG_ID}: {} is a UUID but not in the hyphenated 36-character \
             form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            show(text)
        )
    } else {
        format!(
            "line {line}, column {TAG_ID}: {} is not a UUID; expected the hyphenated form \
             xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            show(text)
        )
    };
    Err(RowError::new(
        line,
        Some(TAG_ID),
        code::INVALID_UUID,
        message,
    ))
}

fn parse_serial(raw: &[u8], line: u64) -> Result<Option<String>, RowError> {
    let value = raw.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    let text = match std::str::from_utf8(value) {
        Ok(text) => text.trim(),
        Err(e) => {
            return Err(RowError::new(
                line,
                Some(SERIAL),
                code::INVALID_UTF8,
                format!("line {line}, column {SERIAL}: {}", utf8_problem(value, &e)),
            ));
        }
    };
    if text.is_empty() {
        return Ok(None);
    }
    let mut chars = 0usize;
    for c in text.chars() {
        chars += 1;
        if is_disallowed_in_serial(c) {
            return Err(RowError::new(
                line,
                Some(SERIAL),
                code::INVALID_SERIAL,
                format!(
                    "line {line}, column {SERIAL}: character {chars} is U+{:04X}, a control or \
                     invisible formatting character; a serial may contain only printable \
                     characters",
                    u32::from(c)
                ),
            ));
        }
    }
    if chars > MAX_SERIAL_CHARS {
        return Err(RowError::new(
            line,
            Some(SERIAL),
            code::SERIAL_TOO_LONG,
            format!(
                "line {line}, column {SERIAL}: the serial is {chars} characters long; the \
                 maximum is {MAX_SERIAL_CHARS}"
            ),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Control characters, plus the invisible characters that could make a serial display as
/// something it is not (line/paragraph separators, bidirectional overrides and marks, BOM).
fn is_disallowed_in_serial(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

fn wrong_column_count(line: u64, fields: usize, expected: usize) -> RowError {
    let plural = if fields == 1 { "" } else { "s" };
    RowError::new(
        line,
        None,
        code::WRONG_COLUMN_COUNT,
        format!("line {line} has {fields} field{plural}, the header has {expected}"),
    )
}

fn multiline_error(line: u64) -> RowError {
    RowError::new(
        line,
        None,
        code::MALFORMED_CSV,
        format!(
            "line {line}: a quoted field starting on this line runs over several lines; line \
             breaks are not allowed in {TAG_ID} or {SERIAL}, so a closing double quote is \
             probably missing"
        ),
    )
}

/// Whether the record contains a line break, i.e. a quoted field spanned several lines.
fn spans_lines(record: &ByteRecord) -> bool {
    record.as_slice().contains(&b'\n')
}

/// A blank line arrives as a single whitespace-only field (see [`Feed`]).
fn is_blank(record: &ByteRecord) -> bool {
    record.len() == 1 && record.as_slice().trim_ascii().is_empty()
}

fn utf8_problem(bytes: &[u8], error: &std::str::Utf8Error) -> String {
    let offset = error.valid_up_to();
    match bytes.get(offset) {
        Some(byte) => format!(
            "the value is not valid UTF-8 (byte 0x{byte:02X} at byte offset {offset}); save the \
             file as UTF-8"
        ),
        None => "the value is not valid UTF-8; save the file as UTF-8".to_owned(),
    }
}

/// Quotes a value for a message, escaping control characters and truncating long values.
fn show(value: &str) -> String {
    match value.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// Input adapter between the caller's reader and the CSV parser.
///
/// * Strips a leading UTF-8 byte-order mark (even when the reader returns it in pieces).
/// * Turns every empty line into a line holding one space. The parser otherwise skips empty
///   lines without accounting for them in the record's start position; with no empty lines the
///   position at which it starts a record is that record's physical line. The space only ever
///   lands inside a quoted field that spans lines, which is rejected anyway.
/// * Refuses to hand out more than [`MAX_ROW_BYTES`] past the start of the current row
///   (`row_start`, maintained by [`TagCsv`]), so an unclosed quote cannot buffer the file.
struct Feed<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    bom_checked: bool,
    inner_eof: bool,
    /// The last byte handed out was `\n` (or nothing has been handed out yet).
    at_line_start: bool,
    /// Bytes handed to the parser so far.
    emitted: u64,
    /// Parser byte position at which the current row started.
    row_start: u64,
    /// Set when reading was refused because a row exceeded [`MAX_ROW_BYTES`].
    row_too_long: bool,
}

impl<R: Read> Feed<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            len: 0,
            bom_checked: false,
            inner_eof: false,
            at_line_start: true,
            emitted: 0,
            row_start: 0,
            row_too_long: false,
        }
    }

    /// Reads more input into `buf[len..]`; returns the number of bytes read (0 at EOF).
    fn read_more(&mut self) -> io::Result<usize> {
        if self.inner_eof {
            return Ok(0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.inner_eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn strip_bom(&mut self) -> io::Result<()> {
        while self.len < UTF8_BOM.len() && self.read_more()? > 0 {}
        if self.buf[..self.len].starts_with(UTF8_BOM) {
            self.pos = UTF8_BOM.len();
        }
        self.bom_checked = true;
        Ok(())
    }
}

impl<R: Read> Read for Feed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if !self.bom_checked {
            self.strip_bom()?;
        }
        if self.emitted.saturating_sub(self.row_start) > MAX_ROW_BYTES {
            self.row_too_long = true;
            return Err(io::Error::other(format!(
                "a CSV row is longer than {MAX_ROW_BYTES} bytes"
            )));
        }
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
            if self.read_more()? == 0 {
                return Ok(0);
            }
        }
        let mut n = 0;
        while n < out.len() && self.pos < self.len {
            if self.buf[self.pos] == b'\n' {
                if self.at_line_start {
                    out[n] = b' ';
                    self.at_line_start = false;
                } else {
                    out[n] = b'\n';
                    self.pos += 1;
                    self.at_line_start = true;
                }
                n += 1;
                continue;
            }
            let available = &self.buf[self.pos..self.len];
            let take = available.len().min(out.len() - n);
            let run = available[..take]
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(take);
            out[n..n + run].copy_from_slice(&available[..run]);
            n += run;
            self.pos += run;
            self.at_line_start = false;
        }
        self.emitted += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0000 + n)
    }

    /// Every item `TagCsv` yields for `input`, or the file-level error.
    fn read_all(input: &[u8]) -> Result<Vec<Result<TagRow, RowError>>, RowError> {
        let csv = TagCsv::new(input)?;
        Ok(csv.collect())
    }

    fn file_error(input: &[u8]) -> RowError {
        match TagCsv::new(input) {
            Ok(_) => panic!("expected a file-level error for {input:?}"),
            Err(e) => e,
        }
    }

    fn run(input: &[u8]) -> (Summary, Vec<TagRow>) {
        let mut seen = Vec::new();
        let summary = validate(input, 1000, |row| seen.push(row.clone()));
        (summary, seen)
    }

    fn codes(summary: &Summary) -> Vec<(u64, &str)> {
        summary
            .errors
            .iter()
            .map(|e| (e.line, e.code.as_str()))
            .collect()
    }

    fn only_error(input: &[u8]) -> RowError {
        let (summary, rows) = run(input);
        assert_eq!(summary.error_count, 1, "errors: {:?}", summary.errors);
        assert!(rows.iter().all(|r| r.line != summary.errors[0].line));
        summary.errors[0].clone()
    }

    /// Hands out one byte per `read` call.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// Returns `data`, then fails.
    struct Failing<'a>(&'a [u8]);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "upload cut"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn valid_file_with_serials() {
        let input = format!(
            "tag_id,serial\n{},SN-1\n{},\n{}, SN 3 \n",
            id(1),
            id(2),
            id(3)
        );
        let rows: Vec<TagRow> = read_all(input.as_bytes())
            .expect("header")
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("all rows valid");
        assert_eq!(
            rows,
            vec![
                TagRow {
                    line: 2,
                    tag_id: id(1),
                    serial: Some("SN-1".into())
                },
                TagRow {
                    line: 3,
                    tag_id: id(2),
                    serial: None
                },
                TagRow {
                    line: 4,
                    tag_id: id(3),
                    serial: Some("SN 3".into())
                },
            ]
        );
    }

    #[test]
    fn tag_id_only_and_columns_in_any_order_and_case() {
        let input = format!(" Serial , TAG_ID \r\nS1,{}\r\n", id(7));
        let csv = TagCsv::new(input.as_bytes()).expect("header accepted");
        assert!(csv.has_serial_column());
        let rows: Vec<_> = csv.collect();
        assert_eq!(
            rows,
            vec![Ok(TagRow {
                line: 2,
                tag_id: id(7),
                serial: Some("S1".into())
            })]
        );

        let input = format!("tag_id\n{}\n", id(8));
        let mut csv = TagCsv::new(input.as_bytes()).expect("header accepted");
        assert!(!csv.has_serial_column());
        let row = csv.next_row().expect("one row").expect("valid");
        assert_eq!((row.line, row.tag_id, row.serial), (2, id(8), None));
        assert!(csv.next_row().is_none());
        assert_eq!(csv.rows_read(), 1);
    }

    #[test]
    fn crlf_and_lf_give_identical_results() {
        let lf = format!("tag_id,serial\n{},A\n\n{},B\n", id(1), id(2));
        let crlf = lf.replace('\n', "\r\n");
        let (lf_summary, lf_rows) = run(lf.as_bytes());
        let (crlf_summary, crlf_rows) = run(crlf.as_bytes());
        assert_eq!(lf_summary, crlf_summary);
        assert_eq!(lf_rows, crlf_rows);
        assert_eq!(
            crlf_rows
                .iter()
                .map(|r| (r.line, r.serial.as_deref()))
                .collect::<Vec<_>>(),
            vec![(2, Some("A")), (4, Some("B"))]
        );
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let input = format!("\"tag_id\",\"serial\"\n\"{}\",\"a, \"\"b\"\"\"\r\n", id(1));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
        assert_eq!(rows[0].serial.as_deref(), Some("a, \"b\""));
    }

    #[test]
    fn bom_is_stripped() {
        let input = format!("\u{FEFF}tag_id,serial\n{},X\n", id(1));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 2);

        // Also when the reader returns the BOM one byte at a time.
        let mut seen = 0;
        let summary = validate(Trickle(input.as_bytes()), 10, |_| seen += 1);
        assert_eq!((summary.error_count, seen), (0, 1), "{:?}", summary.errors);
    }

    #[test]
    fn empty_files() {
        for input in [
            &b""[..],
            b"\xEF\xBB\xBF",
            b"\n",
            b"\r\n\r\n",
            b"  \n\t\n   ",
            b"\xEF\xBB\xBF\n \n",
        ] {
            let e = file_error(input);
            assert_eq!(
                (e.line, e.code.as_str()),
                (1, code::EMPTY_FILE),
                "{input:?}"
            );
            assert!(e.message.contains("empty"), "{}", e.message);
        }
        let (summary, rows) = run(b"");
        assert_eq!(codes(&summary), vec![(1, code::EMPTY_FILE)]);
        assert_eq!((summary.rows_read, rows.len()), (0, 0));
    }

    #[test]
    fn missing_header() {
        let input = format!("{},SN1\n{},SN2\n", id(1), id(2));
        let e = file_error(input.as_bytes());
        assert_eq!(
            (e.line, e.code.as_str(), e.column),
            (1, code::MISSING_HEADER, None)
        );
        assert!(
            e.message.contains("must be a header") && e.message.contains("tag_id"),
            "{}",
            e.message
        );
        // A data line whose UUID is in the second column is not a header either.
        let input = format!("SN1,{}\n", id(1));
        assert_eq!(file_error(input.as_bytes()).code, code::MISSING_HEADER);
    }

    #[test]
    fn missing_tag_id_column() {
        let e = file_error(b"id,serial\nx,y\n");
        assert_eq!(
            (e.line, e.code.as_str(), e.column.as_deref()),
            (1, code::MISSING_TAG_ID_COLUMN, Some("tag_id"))
        );
        assert!(
            e.message.contains("\"id\", \"serial\""),
            "names the columns found: {}",
            e.message
        );
    }

    #[test]
    fn missing_tag_id_message_lists_a_bounded_number_of_columns() {
        let header = (1..=100)
            .map(|n| format!("c{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let e = file_error(format!("{header}\n").as_bytes());
        assert_eq!(e.code, code::MISSING_TAG_ID_COLUMN);
        assert!(e.message.contains("\"c8\" and 92 more"), "{}", e.message);
        assert!(!e.message.contains("\"c9\""));
    }

    #[test]
    fn unknown_and_empty_columns() {
        let e = file_error(b"tag_id,serial,colour\n");
        assert_eq!(
            (e.line, e.code.as_str(), e.column.as_deref()),
            (1, code::UNKNOWN_COLUMN, Some("colour"))
        );
        assert!(e.message.contains("column 3") && e.message.contains("\"colour\""));

        let e = file_error(b"tag_id,\n");
        assert_eq!(
            (e.code.as_str(), e.column.as_deref()),
            (code::UNKNOWN_COLUMN, Some(""))
        );
        assert!(e.message.contains("no name"), "{}", e.message);
    }

    #[test]
    fn duplicate_columns() {
        let e = file_error(b"tag_id,serial,TAG_ID\n");
        assert_eq!(
            (e.line, e.code.as_str(), e.column.as_deref()),
            (1, code::DUPLICATE_COLUMN, Some("tag_id"))
        );
        assert!(e.message.contains("columns 1 and 3"), "{}", e.message);

        let e = file_error(b"tag_id, serial ,Serial\n");
        assert_eq!(
            (e.code.as_str(), e.column.as_deref()),
            (code::DUPLICATE_COLUMN, Some("serial"))
        );
    }

    #[test]
    fn header_must_be_utf8() {
        let e = file_error(b"tag_id,ser\xFFial\n");
        assert_eq!((e.line, e.code.as_str()), (1, code::INVALID_UTF8));
        assert!(e.message.contains("header column 2") && e.message.contains("0xFF"));
    }

    #[test]
    fn header_after_leading_blank_lines_reports_its_physical_line() {
        let input = format!("\n  \r\ntag_id\n{}\n", id(1));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(summary.error_count, 0);
        assert_eq!(rows[0].line, 4);
        let e = file_error(b"\n\nid\n");
        assert_eq!((e.line, e.code.as_str()), (3, code::MISSING_TAG_ID_COLUMN));
    }

    #[test]
    fn header_only_is_no_rows() {
        for input in [
            &b"tag_id,serial"[..],
            b"tag_id,serial\n",
            b"tag_id\r\n\r\n  \n",
        ] {
            let mut csv = TagCsv::new(input).expect("header is fine");
            let e = csv.next_row().expect("an item").expect_err("no_rows");
            assert_eq!((e.line, e.code.as_str()), (1, code::NO_ROWS));
            assert!(csv.next_row().is_none(), "no_rows is reported once");
            assert_eq!(csv.rows_read(), 0);
        }
        let (summary, rows) = run(b"tag_id\n");
        assert_eq!(codes(&summary), vec![(1, code::NO_ROWS)]);
        assert!(rows.is_empty());
    }

    #[test]
    fn wrong_column_count() {
        let input = format!("tag_id,serial\n{},A\n{}\n{},B,extra\n", id(1), id(2), id(3));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(
            codes(&summary),
            vec![(3, code::WRONG_COLUMN_COUNT), (4, code::WRONG_COLUMN_COUNT)]
        );
        assert_eq!(
            summary.errors[0].message,
            "line 3 has 1 field, the header has 2"
        );
        assert_eq!(
            summary.errors[1].message,
            "line 4 has 3 fields, the header has 2"
        );
        assert_eq!(summary.errors[1].column, None);
        assert_eq!(rows.len(), 1);
        assert_eq!(summary.rows_read, 3);
    }

    #[test]
    fn very_wide_row_is_counted_exactly() {
        let input = format!("tag_id\n{}{}\n", id(1), ",".repeat(5000));
        let e = only_error(input.as_bytes());
        assert_eq!(e.code, code::WRONG_COLUMN_COUNT);
        assert_eq!(e.message, "line 2 has 5001 fields, the header has 1");
    }

    #[test]
    fn invalid_uuids() {
        let cases: [(&str, &str); 6] = [
            ("not-a-uuid", "is not a UUID"),
            ("6f1c0000000040008000000000000001", "not in the hyphenated"),
            (
                "{6f1c0000-0000-4000-8000-000000000001}",
                "not in the hyphenated",
            ),
            ("6f1c0000-0000-4000-8000-00000000000g", "is not a UUID"),
            ("6f1c0000-0000-4000-8000-0000000000011", "is not a UUID"),
            ("", "is empty"),
        ];
        for (value, why) in cases {
            // Two columns: in a one-column file an empty value is a blank line, which is skipped.
            let input = format!("tag_id,serial\n{value},S\n");
            let e = only_error(input.as_bytes());
            assert_eq!(
                (e.line, e.code.as_str(), e.column.as_deref()),
                (2, code::INVALID_UUID, Some("tag_id")),
                "{value:?}"
            );
            assert!(
                e.message.starts_with("line 2, column tag_id: "),
                "{}",
                e.message
            );
            assert!(e.message.contains(why), "{value:?}: {}", e.message);
            assert!(e.message.contains(&format!("{value:?}")) || value.is_empty());
        }
    }

    #[test]
    fn invalid_uuid_message_truncates_long_values() {
        let long = "x".repeat(500);
        let input = format!("tag_id\n{long}\n");
        let e = only_error(input.as_bytes());
        assert_eq!(e.code, code::INVALID_UUID);
        assert!(e.message.contains(&format!("\"{}\"…", "x".repeat(64))));
        assert!(!e.message.contains(&"x".repeat(65)));
    }

    #[test]
    fn uuid_case_and_surrounding_whitespace_are_accepted() {
        let upper = id(0xABC).to_string().to_uppercase();
        let input = format!("tag_id,serial\n  {upper}\t, s\n\" {} \",\n", id(2));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
        assert_eq!(
            rows.iter().map(|r| r.tag_id).collect::<Vec<_>>(),
            vec![id(0xABC), id(2)]
        );
    }

    #[test]
    fn nil_uuid_is_rejected() {
        let input = format!("tag_id\n{}\n", Uuid::nil());
        let e = only_error(input.as_bytes());
        assert_eq!(
            (e.line, e.code.as_str(), e.column.as_deref()),
            (2, code::NIL_UUID, Some("tag_id"))
        );
        assert!(e.message.contains("nil UUID"));
    }

    #[test]
    fn serial_rules() {
        let ok64 = "é".repeat(64); // 64 characters, 128 bytes
        let input = format!("tag_id,serial\n{},{ok64}\n{},   \n", id(1), id(2));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
        assert_eq!(rows[0].serial.as_deref(), Some(ok64.as_str()));
        assert_eq!(rows[1].serial, None, "whitespace-only serial is absent");

        let input = format!("tag_id,serial\n{},{}\n", id(1), "A".repeat(65));
        let e = only_error(input.as_bytes());
        assert_eq!(
            (e.line, e.code.as_str(), e.column.as_deref()),
            (2, code::SERIAL_TOO_LONG, Some("serial"))
        );
        assert!(e.message.contains("65 characters") && e.message.contains("64"));

        for bad in ["AB\u{7}C", "A\tB", "\"A\rB\"", "A\u{202E}B", "A\u{0085}B"] {
            let input = format!("tag_id,serial\n{},{bad}\n", id(1));
            let e = only_error(input.as_bytes());
            assert_eq!(
                (e.line, e.code.as_str(), e.column.as_deref()),
                (2, code::INVALID_SERIAL, Some("serial")),
                "{bad:?}"
            );
            assert!(e.message.contains("printable"), "{}", e.message);
        }
        let input = format!("tag_id,serial\n{},AB\u{7}C\n", id(1));
        assert!(
            only_error(input.as_bytes())
                .message
                .contains("character 3 is U+0007")
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let mut input = format!("tag_id,serial\n{},ok\n", id(1)).into_bytes();
        input.extend_from_slice(format!("{},SN", id(2)).as_bytes());
        input.extend_from_slice(b"\xC3(\n");
        input.extend_from_slice(b"\xFFbad,SN\n");
        let (summary, _) = run(&input);
        assert_eq!(
            codes(&summary),
            vec![(3, code::INVALID_UTF8), (4, code::INVALID_UTF8)]
        );
        assert_eq!(summary.errors[0].column.as_deref(), Some("serial"));
        assert!(summary.errors[0].message.contains("0xC3 at byte offset 2"));
        assert_eq!(summary.errors[1].column.as_deref(), Some("tag_id"));
        assert!(
            summary.errors[1]
                .message
                .starts_with("line 4, column tag_id")
        );
    }

    #[test]
    fn duplicate_tags_refer_to_the_first_line() {
        let input = format!(
            "tag_id,serial\n{},A\n{},B\n{},C\n{},D\n",
            id(1),
            id(2),
            id(1),
            id(1)
        );
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(
            codes(&summary),
            vec![(4, code::DUPLICATE_TAG), (5, code::DUPLICATE_TAG)]
        );
        let expected = format!("tag {} already appears on line 2", id(1));
        assert!(summary.errors.iter().all(|e| e.message.contains(&expected)));
        assert_eq!(summary.errors[0].column.as_deref(), Some("tag_id"));
        assert_eq!(
            rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![2, 3],
            "duplicates are not passed to on_row"
        );
        assert_eq!((summary.rows_read, summary.valid_rows), (4, 2));
    }

    #[test]
    fn unterminated_quote_is_malformed() {
        let input = format!("tag_id,serial\n{},A\n\"{},B\n{},C\n", id(1), id(2), id(3));
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(codes(&summary), vec![(3, code::MALFORMED_CSV)]);
        assert!(summary.errors[0].message.contains("double quote"));
        assert_eq!(rows.len(), 1);
        assert_eq!(summary.rows_read, 2);
    }

    #[test]
    fn multiline_quoted_field_keeps_later_line_numbers_exact() {
        let input = format!(
            "tag_id,serial\n{},\"two\n\nlines\"\n{},x\n\"{}\",\"\"\n",
            id(1),
            id(2),
            id(3)
        );
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(codes(&summary), vec![(2, code::MALFORMED_CSV)]);
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn runaway_quote_stops_with_bounded_memory() {
        let mut input = format!("tag_id,serial\n{},A\n{},\"B\n", id(1), id(2));
        let filler = format!("{},x\n", id(3));
        while (input.len() as u64) < 2 * MAX_ROW_BYTES {
            input.push_str(&filler);
        }
        let mut csv = TagCsv::new(input.as_bytes()).expect("header");
        assert!(csv.next_row().expect("row 2").is_ok());
        let e = csv.next_row().expect("row 3").expect_err("runaway");
        assert_eq!((e.line, e.code.as_str()), (3, code::MALFORMED_CSV));
        assert!(e.message.contains("longer than"), "{}", e.message);
        assert!(csv.next_row().is_none(), "validation stops");
        assert!(csv.record.as_slice().len() as u64 <= MAX_ROW_BYTES + READ_BUFFER_BYTES as u64);
    }

    #[test]
    fn line_numbers_are_physical_lines() {
        // Blank lines, whitespace-only lines and CRLF between rows; errors and rows must carry
        // the line they are on in the file.
        let input = format!(
            "tag_id,serial\r\n\r\n{},A\r\n\n   \nbad,B\r\n\t\r\n{},C\n\n",
            id(1),
            id(2)
        );
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(codes(&summary), vec![(6, code::INVALID_UUID)]);
        assert!(summary.errors[0].message.starts_with("line 6, "));
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![3, 8]);
        assert_eq!(summary.rows_read, 3, "blank lines are not rows");

        // Same lines when the reader hands out one byte at a time.
        let mut lines = Vec::new();
        let summary = validate(Trickle(input.as_bytes()), 10, |r| lines.push(r.line));
        assert_eq!(codes(&summary), vec![(6, code::INVALID_UUID)]);
        assert_eq!(lines, vec![3, 8]);
    }

    #[test]
    fn line_numbers_stay_exact_across_buffer_boundaries() {
        let mut input = String::from("tag_id\n");
        let mut expected_lines = Vec::new();
        let mut line = 1;
        for n in 1..=20_000u128 {
            if n % 7 == 0 {
                input.push('\n');
                line += 1;
            }
            if n % 1000 == 0 {
                input.push_str("broken\n");
                line += 1;
                expected_lines.push(line);
            }
            input.push_str(&format!("{}\n", id(n)));
            line += 1;
        }
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(
            summary.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            expected_lines
        );
        assert_eq!(rows.len(), 20_000);
        assert_eq!(rows.last().map(|r| r.line), Some(line));
    }

    #[test]
    fn error_cap_keeps_the_first_and_counts_all() {
        let mut input = String::from("tag_id\n");
        for n in 0..1500 {
            input.push_str(&format!("bad-{n}\n"));
        }
        input.push_str(&format!("{}\n", id(1)));
        let mut seen = Vec::new();
        let summary = validate(input.as_bytes(), 1000, |r| seen.push(r.tag_id));
        assert_eq!(summary.error_count, 1500);
        assert_eq!(summary.errors.len(), 1000);
        assert_eq!(summary.errors.first().map(|e| e.line), Some(2));
        assert_eq!(summary.errors.last().map(|e| e.line), Some(1001));
        assert_eq!((summary.rows_read, summary.valid_rows), (1501, 1));
        assert_eq!(seen, vec![id(1)]);

        let summary = validate(input.as_bytes(), 0, |_| {});
        assert!(summary.errors.is_empty());
        assert_eq!(summary.error_count, 1500);
    }

    #[test]
    fn on_row_sees_exactly_the_valid_rows() {
        let input = format!(
            "tag_id,serial\n{},A\nnope,B\n{},C\n{}\n{},D\n{},\u{1}\n{},E\n",
            id(1),
            id(2),
            id(3),
            id(1),
            id(4),
            id(5)
        );
        let (summary, rows) = run(input.as_bytes());
        assert_eq!(
            rows.iter()
                .map(|r| (r.line, r.tag_id, r.serial.as_deref()))
                .collect::<Vec<_>>(),
            vec![
                (2, id(1), Some("A")),
                (4, id(2), Some("C")),
                (8, id(5), Some("E"))
            ]
        );
        assert_eq!(
            codes(&summary),
            vec![
                (3, code::INVALID_UUID),
                (5, code::WRONG_COLUMN_COUNT),
                (6, code::DUPLICATE_TAG),
                (7, code::INVALID_SERIAL)
            ]
        );
        assert_eq!((summary.rows_read, summary.valid_rows), (7, 3));
        assert_eq!(summary.error_count, 4);
    }

    #[test]
    fn rows_read_counts_valid_and_invalid_rows() {
        let input = format!("tag_id\n{}\nbad\n\n{}\n", id(1), id(2));
        let mut csv = TagCsv::new(input.as_bytes()).expect("header");
        let results: Vec<bool> = csv.by_ref().map(|r| r.is_ok()).collect();
        assert_eq!(results, vec![true, false, true]);
        assert_eq!(csv.rows_read(), 3);
    }

    #[test]
    fn io_error_stops_reading() {
        let input = format!("tag_id\n{}\n{}\n", id(1), id(2));
        let mut lines = Vec::new();
        let summary = validate(Failing(input.as_bytes()), 10, |r| lines.push(r.line));
        assert_eq!(summary.error_count, 1, "{:?}", summary.errors);
        assert_eq!(summary.errors[0].code, code::IO_ERROR);
        assert!(summary.errors[0].message.contains("upload cut"));
        assert_eq!(lines, vec![2, 3]);

        let e = match TagCsv::new(Failing(b"")) {
            Ok(_) => panic!("a failing reader cannot yield a header"),
            Err(e) => e,
        };
        assert_eq!((e.line, e.code.as_str()), (1, code::IO_ERROR));
    }

    #[test]
    fn row_error_serialises_with_stable_field_names() {
        let e = only_error(format!("tag_id\n{}\n", Uuid::nil()).as_bytes());
        let json = serde_json::to_value(&e).expect("serialise");
        assert_eq!(json["line"], 2);
        assert_eq!(json["column"], "tag_id");
        assert_eq!(json["code"], "nil_uuid");
        let back: RowError = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, e);
        assert_eq!(e.to_string(), e.message);
    }
}

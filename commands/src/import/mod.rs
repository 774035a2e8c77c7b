//! CSV tag imports: the file format and its validation ([`csv`]), shared by the intake in
//! the factory API and the imports worker.

pub mod csv;

/// Size of the pieces an upload is stored in.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Postgres channel on which the intake wakes the imports worker.
pub const NOTIFY_CHANNEL: &str = "voketag_imports";

/// Errors kept on an import; the count covers all of them.
pub const MAX_ERRORS_KEPT: usize = 1_000;

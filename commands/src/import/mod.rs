//! CSV tag imports: the file format and its validation ([`csv`]), shared by the intake in
//! the factory API and the imports worker.

pub mod csv;

use std::io::Read;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Size of the pieces an upload is stored in.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Tag ids per stored piece of a file's sorted ids: 1 MiB.
pub const IDS_PER_PIECE: usize = CHUNK_BYTES / 16;

/// Postgres channel on which the intake wakes the imports worker.
pub const NOTIFY_CHANNEL: &str = "voketag_imports";

/// Errors kept on an import; the count covers all of them.
pub const MAX_ERRORS_KEPT: usize = 1_000;

/// A clean file's tag ids, sorted, and how many rows it has (one tag a row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanIds {
    pub rows_read: u64,
    pub tag_ids: Vec<Uuid>,
}

impl CleanIds {
    /// Reads a CSV of tags (blocking) and returns its ids sorted, or `None` when the file
    /// has a bad row or a tag more than once (its full report is then another read's job:
    /// [`csv::validate`]). Sorted, a repeated tag sits next to itself; and the registry's
    /// primary key takes ids in key order for about a third of the cost of file order.
    /// Keyed by the big-endian 128-bit value: the order of the bytes, which Postgres
    /// compares, by integer comparisons.
    pub fn read<R: Read>(reader: R) -> Option<CleanIds> {
        let mut csv = csv::TagCsv::new(reader).ok()?;
        let mut tag_ids = Vec::new();
        while let Some(row) = csv.next_row() {
            tag_ids.push(row.ok()?.tag_id);
        }
        tag_ids.sort_unstable_by_key(Uuid::as_u128);
        if tag_ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
        Some(CleanIds {
            rows_read: csv.rows_read(),
            tag_ids,
        })
    }
}

/// A checksum of a set of tag ids that does not depend on their order: the wrapping sum of
/// their 128-bit values. Two reads of one file must agree on it.
pub fn id_sum<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> u128 {
    ids.into_iter()
        .fold(0u128, |sum, id| sum.wrapping_add(id.as_u128()))
}

/// Pieces of a byte stream, handed from async code to a blocking reader. An `Err` piece
/// means the stream could not be read: the reader fails, and [`ByteFeed::failure`] says
/// why.
pub type Piece<B> = Result<B, String>;

/// The blocking end of a channel of [`Piece`]s, as a [`Read`].
pub struct ByteFeed<B> {
    rx: mpsc::Receiver<Piece<B>>,
    current: Option<B>,
    offset: usize,
    failure: Arc<Mutex<Option<String>>>,
}

impl<B: AsRef<[u8]>> ByteFeed<B> {
    /// A feed and the sender of its pieces; `depth` pieces may wait in between.
    pub fn channel(depth: usize) -> (mpsc::Sender<Piece<B>>, ByteFeed<B>) {
        let (tx, rx) = mpsc::channel(depth);
        (
            tx,
            ByteFeed {
                rx,
                current: None,
                offset: 0,
                failure: Arc::default(),
            },
        )
    }

    /// Where the reason lands if the stream could not be read; readable after the reader
    /// is gone.
    pub fn failure(&self) -> Arc<Mutex<Option<String>>> {
        self.failure.clone()
    }
}

impl<B: AsRef<[u8]>> Read for ByteFeed<B> {
    /// Blocks for the next piece: call it from a blocking thread.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(piece) = &self.current {
                let rest = &piece.as_ref()[self.offset..];
                if !rest.is_empty() {
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.offset += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(Ok(next)) => {
                    self.current = Some(next);
                    self.offset = 0;
                }
                Some(Err(e)) => {
                    if let Ok(mut f) = self.failure.lock() {
                        *f = Some(e.clone());
                    }
                    return Err(std::io::Error::other(e));
                }
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids_of(csv: &str) -> Option<CleanIds> {
        CleanIds::read(csv.as_bytes())
    }

    #[test]
    fn a_clean_file_gives_its_ids_sorted_and_a_bad_or_repeating_one_none() {
        let (a, b) = (Uuid::from_u128(2), Uuid::from_u128(1 << 100));
        let clean = ids_of(&format!("tag_id,serial\n{b},S1\n{a},S2\n")).expect("clean");
        assert_eq!(clean.rows_read, 2);
        assert_eq!(clean.tag_ids, [a, b]);
        assert_eq!(id_sum(&clean.tag_ids), 2 + (1 << 100));
        assert_eq!(
            ids_of(&format!("tag_id\n{a}\n{b}\n{a}\n")),
            None,
            "a repeat"
        );
        assert_eq!(
            ids_of(&format!("tag_id\n{a}\nnot-a-uuid\n")),
            None,
            "a bad row"
        );
        assert_eq!(ids_of("serial\nS1\n"), None, "no tag_id column");
    }

    #[test]
    fn a_feed_reads_its_pieces_in_order_and_fails_on_a_broken_stream() {
        let (tx, mut feed) = ByteFeed::<Vec<u8>>::channel(4);
        let failure = feed.failure();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            let result = feed.read_to_string(&mut all);
            (result.is_ok(), all)
        });
        tx.blocking_send(Ok(b"tag_".to_vec())).expect("send");
        tx.blocking_send(Ok(b"id\n".to_vec())).expect("send");
        tx.blocking_send(Err("the connection broke".into()))
            .expect("send");
        let (ok, read) = reader.join().expect("reader");
        assert!(!ok);
        assert_eq!(read, "tag_id\n");
        assert_eq!(
            failure.lock().expect("lock").as_deref(),
            Some("the connection broke")
        );
    }
}

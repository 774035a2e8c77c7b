//! CSV tag imports: the file format and its validation ([`csv`]), shared by the intake in
//! the factory API and the imports worker.

pub mod csv;
pub mod packed;

use std::io::Read;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Postgres channel on which the intake wakes the imports worker.
pub const NOTIFY_CHANNEL: &str = "voketag_imports";

/// Errors kept on an import; the count covers all of them.
pub const MAX_ERRORS_KEPT: usize = 1_000;

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

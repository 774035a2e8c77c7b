//! CSV tag imports: the file format and its validation ([`csv`]), shared by the intake in
//! the factory API and the imports worker.

pub mod csv;
pub mod packed;

use std::io::Read;
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

/// The blocking end of a channel of byte pieces, handed from async code to a blocking
/// reader, as a [`Read`]: the stream ends when the sender is gone.
pub struct ByteFeed<B> {
    rx: mpsc::Receiver<B>,
    current: Option<B>,
    offset: usize,
}

impl<B: AsRef<[u8]>> ByteFeed<B> {
    /// A feed and the sender of its pieces; `depth` pieces may wait in between.
    pub fn channel(depth: usize) -> (mpsc::Sender<B>, ByteFeed<B>) {
        let (tx, rx) = mpsc::channel(depth);
        (
            tx,
            ByteFeed {
                rx,
                current: None,
                offset: 0,
            },
        )
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
                Some(next) => {
                    self.current = Some(next);
                    self.offset = 0;
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
    fn a_feed_reads_its_pieces_in_order_until_the_sender_is_gone() {
        let (tx, mut feed) = ByteFeed::<Vec<u8>>::channel(4);
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            feed.read_to_string(&mut all).map(|_| all)
        });
        for piece in ["tag_", "", "id\n", "x"] {
            tx.blocking_send(piece.as_bytes().to_vec()).expect("send");
        }
        drop(tx);
        assert_eq!(reader.join().expect("reader").expect("read"), "tag_id\nx");
    }

    #[test]
    fn the_id_sum_does_not_depend_on_the_order_and_wraps() {
        let (a, b) = (Uuid::from_u128(2), Uuid::from_u128(u128::MAX));
        assert_eq!(id_sum(&[a, b]), id_sum(&[b, a]));
        assert_eq!(id_sum(&[a, b]), 1);
        assert_eq!(id_sum(&[]), 0);
    }
}

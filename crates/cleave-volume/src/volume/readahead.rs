//! Sequential read-ahead. Reads that carry on where earlier ones stopped form a stream, and
//! once a stream has moved forward twice its next chunks are fetched before they are asked
//! for, and kept in memory (parked, see `fill.rs`) until they are read: a sequential scan
//! does not go through the cache. Streams are kept per volume (the NBD layer does not name its
//! connections here), up to [`STREAMS`] at once, so a few sequential readers, or one client
//! spreading a copy over several connections, each keep theirs.
//!
//! Bounds:
//! - a stream runs at most `readahead_bytes` ahead of its reads;
//! - at most `read_parallel` chunks are being read ahead at once per volume, each holding
//!   its shares and the decoded chunk (about two chunk sizes of memory): a chunk that finds
//!   no free turn is left to the read that needs it;
//! - parked chunks are at most `readahead_bytes` plus `read_parallel` chunks per volume;
//! - read-ahead never takes room in the cache, so it never evicts anything, dirty or clean.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::{Inner, Volume};

/// Streams tracked per volume; the least recently used one makes way for a new one.
pub(super) const STREAMS: usize = 8;

/// Forward moves before a stream reads ahead (one chance read after another is no stream).
const RUN_BEFORE_READAHEAD: u32 = 2;

#[derive(Clone, Copy, Debug)]
struct Stream {
    /// One past the last chunk read.
    next: u64,
    /// How often the stream moved forward.
    run: u32,
    /// Chunks below this were read ahead already (or are being).
    ahead: u64,
    last_use: u64,
}

/// The sequential streams of one volume.
#[derive(Debug, Default)]
pub(super) struct Streams {
    list: Vec<Stream>,
    tick: u64,
}

impl Streams {
    /// Notes a read of chunks `first..=last`; returns whether it belongs to a sequential
    /// stream, and the chunks to read ahead, at most `window` past its reads and below `end`.
    fn note(&mut self, first: u64, last: u64, window: u64, end: u64) -> (bool, std::ops::Range<u64>) {
        self.tick += 1;
        let tick = self.tick;
        // Reads kept in flight together arrive a little out of order: a read somewhat behind
        // the stream, or one chunk past it, still belongs to it.
        let behind = window.max(2);
        let found = self.list.iter_mut().find(|s| first.saturating_add(behind) >= s.next && first <= s.next + 1);
        let s = match found {
            Some(s) => s,
            None => {
                if self.list.len() >= STREAMS {
                    let oldest = (0..self.list.len()).min_by_key(|&i| self.list[i].last_use).unwrap_or(0);
                    self.list.swap_remove(oldest);
                }
                self.list.push(Stream { next: last + 1, run: 0, ahead: last + 1, last_use: tick });
                return (false, 0..0);
            }
        };
        s.last_use = tick;
        if last + 1 > s.next {
            s.next = last + 1;
            s.run = s.run.saturating_add(1);
        }
        if s.run < RUN_BEFORE_READAHEAD {
            return (false, 0..0);
        }
        let from = s.ahead.max(s.next);
        let to = s.next.saturating_add(window).min(end);
        s.ahead = s.ahead.max(to);
        (true, from..to.max(from))
    }

    /// A chunk that was to be read ahead but was not: the stream may ask for it again.
    fn give_back(&mut self, chunk: u64) {
        for s in self.list.iter_mut().filter(|s| s.ahead > chunk && s.next <= chunk) {
            s.ahead = chunk;
        }
    }
}

impl Volume {
    /// Notes a read of `pieces` and starts reading ahead if it continues a stream; returns
    /// whether it does (its chunks then stay out of the cache).
    pub(super) fn read_ahead(&self, pieces: &[(u64, u64, u64)]) -> bool {
        let inner = &self.inner;
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else { return false };
        let window = inner.readahead_window();
        if window == 0 {
            return false;
        }
        let end = inner.config.size.div_ceil(inner.config.chunk_size as u64);
        let mut streams = inner.streams.lock().expect("not poisoned");
        let (sequential, ahead) = streams.note(first.0, last.0, window, end);
        for chunk in ahead {
            if inner.is_present(chunk) {
                continue;
            }
            let Ok(permit) = inner.prefetch.clone().try_acquire_owned() else {
                streams.give_back(chunk);
                break;
            };
            tokio::spawn(prefetch(self.inner.clone(), chunk, permit));
        }
        sequential
    }
}

impl Inner {
    /// Chunks a stream may run ahead.
    fn readahead_window(&self) -> u64 {
        self.opts.readahead_bytes / self.config.chunk_size as u64
    }
}

/// Fetches `chunk` and parks it for the reads to come.
async fn prefetch(inner: Arc<Inner>, chunk: u64, _turn: OwnedSemaphorePermit) {
    let result = async {
        if inner.check_fenced().is_err() {
            return Ok(false);
        }
        let Some(fill) = inner.join_fill(chunk) else { return Ok(false) };
        if inner.fetched(chunk, &fill).await?.is_none() {
            return Ok(false);
        }
        inner.park(chunk, &fill);
        Ok::<_, crate::VolumeError>(true)
    }
    .await;
    match result {
        Ok(true) => inner.io.prefetched(),
        Ok(false) => {}
        // The read that needs the chunk tries again and reports what it finds.
        Err(e) => debug!(chunk, error = %e, "read-ahead failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reads_ahead_once_it_has_moved_forward_twice() {
        let mut s = Streams::default();
        assert_eq!(s.note(10, 10, 4, 100), (false, 0..0));
        assert_eq!(s.note(11, 11, 4, 100), (false, 0..0));
        assert_eq!(s.note(12, 12, 4, 100), (true, 13..17));
        // Pieces of a chunk already read, and reads that arrive late, ask for nothing new.
        assert_eq!(s.note(12, 12, 4, 100), (true, 17..17));
        assert_eq!(s.note(11, 11, 4, 100), (true, 17..17));
        assert_eq!(s.note(13, 14, 4, 100), (true, 17..19));
        // The end of the volume bounds it.
        assert_eq!(s.note(15, 97, 4, 100), (true, 98..100));
    }

    #[test]
    fn random_reads_start_no_read_ahead_and_streams_are_bounded() {
        let mut s = Streams::default();
        for c in [500u64, 3, 77, 901, 250, 640, 12, 333, 48, 720] {
            assert_eq!(s.note(c, c, 8, 1000), (false, 0..0));
        }
        assert_eq!(s.list.len(), STREAMS);
        // Two streams interleaved both read ahead.
        for c in 0..2u64 {
            s.note(100 + c, 100 + c, 2, 1000);
            s.note(200 + c, 200 + c, 2, 1000);
        }
        assert_eq!(s.note(102, 102, 2, 1000), (true, 103..105));
        assert_eq!(s.note(202, 202, 2, 1000), (true, 203..205));
        // A chunk given back (no free turn) is asked for again.
        s.give_back(104);
        assert_eq!(s.note(103, 103, 2, 1000), (true, 104..106));
    }
}

//! Bringing chunks in from the targets without holding up other readers: a fetch holds no
//! stripe lock, readers of one missing chunk share one fetch, and the data goes into the
//! cache only if nothing newer got there first.
//!
//! Why a fetched chunk is never older than the cache: the targets' copy of a chunk changes
//! only when a cached dirty chunk is destaged. So while a fetch runs, either the chunk stays
//! out of the cache (what was fetched is current), or it is cached (the install below sees
//! it and keeps the cache's copy), or it was cached and evicted again: eviction marks the
//! fetch stale, and its data is never used.
//!
//! Chunks of sequential streams are not put into the cache (like bcache's sequential cutoff):
//! a scan would push out the cache's working set, and writing a fresh cache page costs
//! more than the rest of the cold path (1.3 s per GiB on the bench machine, where a whole
//! cold 1 GiB read of `nbdkit file` takes 0.7 s). Their fills are parked in memory until
//! their chunk has been read whole, at most `parked_limit` of them. Other chunks go into the
//! cache while it has room, after the reader has its data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;
use tracing::debug;

use super::{ChunkState, Inner};
use crate::VolumeError;

/// One fetch of a chunk from the targets, shared by every reader that needs it meanwhile.
#[derive(Debug, Default)]
pub(super) struct Fill {
    /// The decoded chunk, or why it could not be read.
    data: OnceCell<Result<Bytes, String>>,
    /// The chunk was cached and evicted since the fill began: the data may be old.
    stale: AtomicBool,
    /// A reader took it upon itself to put the data into the cache.
    claimed: AtomicBool,
    /// Kept in memory rather than put into the cache (see [`Inner::park`]).
    parked: AtomicBool,
    /// Bytes readers took from it: once the whole chunk was read, a parked fill goes.
    served: AtomicU64,
}

impl Fill {
    pub(super) fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }
}

impl Inner {
    /// The fill of `chunk` under way, or a new one; None once the chunk is cached.
    pub(super) fn join_fill(&self, chunk: u64) -> Option<Arc<Fill>> {
        let mut st = self.state.lock().expect("not poisoned");
        if st.chunks.contains_key(&chunk) {
            return None;
        }
        Some(st.fills.entry(chunk).or_default().clone())
    }

    /// The chunk's data, fetched by this call or by the one that got there first. None: the
    /// fill went stale, start again.
    pub(super) async fn fetched(&self, chunk: u64, fill: &Arc<Fill>) -> Result<Option<Bytes>, VolumeError> {
        let got = fill
            .data
            .get_or_init(|| async {
                self.fetch_chunk(chunk).await.map(Bytes::from).map_err(|e| match e {
                    VolumeError::Unavailable { reason, .. } => reason,
                    e => e.to_string(),
                })
            })
            .await;
        match got {
            Ok(_) if fill.stale.load(Ordering::SeqCst) => Ok(None),
            Ok(data) => Ok(Some(data.clone())),
            Err(reason) => {
                // The next reader tries the targets again.
                self.forget_fill(chunk, fill);
                if fill.stale.load(Ordering::SeqCst) || self.is_present(chunk) {
                    // Written and destaged meanwhile: the generation fetched may be gone,
                    // and the newer data is in the cache or on the targets.
                    return Ok(None);
                }
                Err(VolumeError::Unavailable { chunk, reason: reason.clone() })
            }
        }
    }

    /// True for the one caller that should put a fill's data into the cache.
    pub(super) fn claim_fill(fill: &Fill) -> bool {
        !fill.claimed.swap(true, Ordering::SeqCst)
    }

    /// Drops `fill` from the fills under way, if it is still the one there.
    pub(super) fn forget_fill(&self, chunk: u64, fill: &Arc<Fill>) {
        let mut st = self.state.lock().expect("not poisoned");
        if st.fills.get(&chunk).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            st.fills.remove(&chunk);
        }
    }

    /// Puts a fill's data into the cache, unless the chunk got there first, the fill went
    /// stale, or (`bounded`) the cache is full. True if it did.
    pub(super) async fn install(
        &self,
        chunk: u64,
        fill: &Arc<Fill>,
        data: Bytes,
        bounded: bool,
    ) -> Result<bool, VolumeError> {
        // Exclusive: no eviction, trim or other install of this chunk meanwhile.
        let _guard = self.stripe(chunk).write().await;
        {
            let mut st = self.state.lock().expect("not poisoned");
            let full = bounded && st.chunks.len() + st.installing >= self.capacity_chunks;
            if st.chunks.contains_key(&chunk) || fill.stale.load(Ordering::SeqCst) || full {
                drop(st);
                self.forget_fill(chunk, fill);
                return Ok(false);
            }
            // Counted against the bound while its bytes are written.
            st.installing += 1;
        }
        let stored = self.store_in_cache(chunk, data).await;
        let mut st = self.state.lock().expect("not poisoned");
        st.installing -= 1;
        if stored.is_ok() {
            st.tick += 1;
            let tick = st.tick;
            st.chunks.insert(chunk, ChunkState { last_use: tick, ..Default::default() });
            st.index_stale = true;
        }
        drop(st);
        self.forget_fill(chunk, fill);
        stored.map(|_| true)
    }

    async fn store_in_cache(&self, chunk: u64, data: Bytes) -> Result<(), VolumeError> {
        self.take_slot(chunk).await?;
        if data.iter().all(|&b| b == 0) {
            // A slot may hold another chunk's bytes from before; a hole takes no space.
            self.cache.zero(chunk).await?;
        } else {
            self.cache.write_chunk(chunk, data).await?;
        }
        Ok(())
    }

    /// Keeps a fill that is not put into the cache for the readers still to come; the oldest
    /// parked one goes when more than [`Inner::parked_limit`] are.
    pub(super) fn park(&self, chunk: u64, fill: &Arc<Fill>) {
        if fill.parked.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock().expect("not poisoned");
        st.parked.push_back((chunk, fill.clone()));
        while st.parked.len() > self.parked_limit() {
            let Some((old, f)) = st.parked.pop_front() else { break };
            if st.fills.get(&old).is_some_and(|x| Arc::ptr_eq(x, &f)) {
                st.fills.remove(&old);
            }
        }
    }

    /// Reads `n` bytes at `pos` (in the volume) of `chunk`: from the cache, or from the
    /// targets, then put into the cache while it has room, unless `sequential`.
    pub(super) async fn read_piece(
        &self,
        chunk: u64,
        pos: u64,
        n: usize,
        sequential: bool,
    ) -> Result<Bytes, VolumeError> {
        let (start, end) = self.cache.chunk_range(chunk);
        let from = (pos - start) as usize;
        let mut missed = false;
        loop {
            let guard = self.stripe(chunk).read().await;
            if self.touch(chunk) {
                let data = self.cache.read(chunk, from as u64, n).await?;
                drop(guard);
                self.io.cache(!missed);
                return Ok(Bytes::from(data));
            }
            drop(guard);
            missed = true;
            let Some(fill) = self.join_fill(chunk) else { continue };
            let Some(data) = self.fetched(chunk, &fill).await? else { continue };
            self.io.cache(false);
            let piece = data.slice(from..from + n);
            // A read outside a stream caches what it read, even if read-ahead fetched it.
            if !sequential && self.has_room() {
                if Self::claim_fill(&fill) {
                    self.install_later(chunk, fill.clone(), data);
                }
            } else {
                self.park(chunk, &fill);
            }
            let served = fill.served.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let installing = fill.claimed.load(Ordering::SeqCst);
            if served >= end - start && fill.parked.load(Ordering::SeqCst) && !installing {
                self.forget_fill(chunk, &fill);
            }
            return Ok(piece);
        }
    }

    /// Parked fills kept at most: what read-ahead may run ahead, and as many again as are
    /// fetched at once. This bounds the memory that read-ahead and sequential reads hold.
    pub(super) fn parked_limit(&self) -> usize {
        let ahead = (self.opts.readahead_bytes / self.config.chunk_size as u64) as usize;
        ahead.saturating_add(self.opts.read_parallel).max(1)
    }

    /// Installs a fill in the background (the reader has its data), or here when
    /// `read_parallel` installs are under way already.
    fn install_later(&self, chunk: u64, fill: Arc<Fill>, data: Bytes) {
        let (Some(me), Ok(turn)) = (self.me.upgrade(), self.installs.clone().try_acquire_owned()) else {
            // No turn: nothing is cached, the next reader fetches again.
            self.forget_fill(chunk, &fill);
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = me.install(chunk, &fill, data, true).await {
                debug!(chunk, error = %e, "a fetched chunk was not cached");
            }
            drop(turn);
        });
    }
}

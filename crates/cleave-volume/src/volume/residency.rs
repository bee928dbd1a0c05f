//! Which chunks are in the local cache: filling, eviction, the stripe locks, and making
//! the cache durable; reading a chunk from the targets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::RwLock;

use super::{Inner, Urgent};
use crate::VolumeError;

impl Inner {
    pub(super) fn stripe(&self, chunk: u64) -> &RwLock<()> {
        &self.stripes[(chunk % self.stripes.len() as u64) as usize]
    }

    pub(super) fn is_present(&self, chunk: u64) -> bool {
        self.state.lock().expect("not poisoned").chunks.contains_key(&chunk)
    }

    pub(super) fn has_room(&self) -> bool {
        self.state.lock().expect("not poisoned").chunks.len() < self.capacity_chunks
    }

    /// Marks a use for LRU; false if the chunk is not cached.
    pub(super) fn touch(&self, chunk: u64) -> bool {
        let mut st = self.state.lock().expect("not poisoned");
        st.tick += 1;
        let tick = st.tick;
        match st.chunks.get_mut(&chunk) {
            Some(c) => {
                c.last_use = tick;
                true
            }
            None => false,
        }
    }

    pub(super) fn mark_dirty(&self, chunk: u64) {
        let mut st = self.state.lock().expect("not poisoned");
        st.tick += 1;
        let tick = st.tick;
        let c = st.chunks.entry(chunk).or_default();
        if !c.dirty {
            // Only a newly dirty chunk can change what the destager should do.
            self.wake_destager.notify_one();
        }
        c.dirty = true;
        c.seq += 1;
        c.last_use = tick;
        c.last_write = Some(Instant::now());
    }

    /// Writes bytes within one chunk through the cache and marks the chunk dirty.
    pub(super) async fn write_piece(&self, chunk: u64, pos: u64, data: Bytes) -> Result<(), VolumeError> {
        let _guard = self.ensure_present(chunk).await?;
        let (start, _) = self.cache.chunk_range(chunk);
        self.cache.write(chunk, pos - start, data).await?;
        self.mark_dirty(chunk);
        Ok(())
    }

    /// Makes a whole chunk zeros in the cache. Stripe held exclusive.
    pub(super) async fn zero_chunk(&self, chunk: u64) -> Result<(), VolumeError> {
        self.take_slot(chunk).await?;
        self.cache.zero(chunk).await?;
        let mut st = self.state.lock().expect("not poisoned");
        if !st.chunks.contains_key(&chunk) {
            st.index_stale = true;
        }
        drop(st);
        self.mark_dirty(chunk);
        Ok(())
    }

    /// Returns with the chunk cached and its stripe held shared. The fetch from the targets
    /// holds no lock (see `fill.rs`).
    pub(super) async fn ensure_present(&self, chunk: u64) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, VolumeError> {
        loop {
            let guard = self.stripe(chunk).read().await;
            if self.touch(chunk) {
                return Ok(guard);
            }
            drop(guard);
            self.wait_for_room().await?;
            let Some(fill) = self.join_fill(chunk) else { continue };
            if let Some(data) = self.fetched(chunk, &fill).await? {
                self.install(chunk, &fill, data, false).await?;
            }
        }
    }

    /// Gives `chunk` a slot in the cache file, persisting the index first if the only free
    /// slots are ones an index on disk may still name.
    pub(super) async fn take_slot(&self, chunk: u64) -> Result<(), VolumeError> {
        while !self.cache.assign(chunk)? {
            self.sync_local().await?;
        }
        Ok(())
    }

    /// The clean chunks to evict to make room, least recently used first; None while the
    /// cache has room (empty: only dirty chunks are left). Fills being installed count.
    fn clean_victims(&self) -> Option<Vec<u64>> {
        let st = self.state.lock().expect("not poisoned");
        if st.chunks.len() + st.installing < self.capacity_chunks {
            return None;
        }
        let mut clean: Vec<(u64, u64)> =
            st.chunks.iter().filter(|(_, c)| !c.dirty && !c.destaging).map(|(k, c)| (c.last_use, *k)).collect();
        clean.sort_unstable();
        let batch = (self.capacity_chunks / 16).max(1);
        Some(clean.into_iter().take(batch).map(|(_, k)| k).collect())
    }

    /// Makes room for one more chunk: evicts clean chunks (least recently used first),
    /// or waits for the destager to clean some.
    pub(super) async fn wait_for_room(&self) -> Result<(), VolumeError> {
        let mut waited = Duration::ZERO;
        loop {
            let Some(victims) = self.clean_victims() else { return Ok(()) };
            if victims.is_empty() {
                let _urgent = Urgent::new(&self.urgent);
                self.wake_destager.notify_one();
                let _ = tokio::time::timeout(Duration::from_millis(200), self.progress.notified()).await;
                waited += Duration::from_millis(200);
                // Destage needs the write quorum: with fewer targets up, waiting never ends.
                let up = self.dispersal.up_count();
                if waited > self.opts.flush_timeout && up < self.config.write_quorum() {
                    return Err(VolumeError::Unavailable {
                        chunk: 0,
                        reason: format!(
                            "cache full of dirty data, and only {up} targets answer: destage needs {}",
                            self.config.write_quorum()
                        ),
                    });
                }
                continue;
            }
            self.evict(victims).await?;
        }
    }

    pub(super) async fn evict(&self, victims: Vec<u64>) -> Result<(), VolumeError> {
        let mut guards = Vec::new();
        let mut gone = Vec::new();
        for c in victims {
            // Never wait here: a writer may hold this stripe while waiting for room.
            let Ok(g) = self.stripe(c).try_write() else { continue };
            let mut st = self.state.lock().expect("not poisoned");
            if st.chunks.get(&c).is_some_and(|s| !s.dirty && !s.destaging) {
                st.chunks.remove(&c);
                // A fetch that began before the chunk was cached may be older than its targets now.
                if let Some(fill) = st.fills.remove(&c) {
                    fill.mark_stale();
                }
                self.cache.drop_chunk(c);
                gone.push(c);
                guards.push(g);
            }
        }
        if gone.is_empty() {
            tokio::task::yield_now().await;
            return Ok(());
        }
        // The index forgets them before their slots are punched out and reused.
        self.sync_local().await?;
        Ok(())
    }

    /// Makes the cache durable: data first, then the index that points at it. The chunks
    /// listed are those whose data was in the cache before the sync.
    pub(super) async fn sync_local(&self) -> Result<(), VolumeError> {
        let _sync = self.sync_lock.lock().await;
        let present = {
            let mut st = self.state.lock().expect("not poisoned");
            st.index_stale = false;
            st.chunks.keys().copied().collect::<Vec<_>>()
        };
        self.cache.sync_data().await?;
        self.cache.persist_index(present).await?;
        Ok(())
    }

    /// Reads and decodes a chunk's current generation from the targets.
    pub(super) async fn fetch_chunk(&self, chunk: u64) -> Result<Vec<u8>, VolumeError> {
        let (start, end) = self.cache.chunk_range(chunk);
        let len = (end - start) as usize;
        let Some(mapping) = self.lookup(chunk).await? else {
            return Ok(vec![0u8; len]);
        };
        let (key, id) = self.locate(chunk, mapping.generation);
        let result = self.dispersal.read_decoded(&key, &self.codec, &self.keys, &id, self.opts.hedge_after).await;
        match result {
            Ok((data, bad)) if data.len() == len => {
                if !bad.is_empty() {
                    let mut st = self.state.lock().expect("not poisoned");
                    let entry = st.missing.entry(chunk).or_default();
                    for t in bad {
                        if !entry.contains(&(t as u8)) {
                            entry.push(t as u8);
                        }
                    }
                }
                Ok(data)
            }
            Ok((data, _)) => {
                Err(VolumeError::Unavailable { chunk, reason: format!("decoded {} bytes, expected {len}", data.len()) })
            }
            Err(reason) => Err(VolumeError::Unavailable { chunk, reason }),
        }
    }
}

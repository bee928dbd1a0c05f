//! A volume: reads and writes against the cache, destage to the targets in the
//! background, FLUSH/FUA as the durability mode says.
//!
//! - [`residency`]: which chunks the local cache holds, eviction, the stripe locks.
//! - [`fill`]: bringing chunks in from the targets, one shared fetch per chunk, no lock held.
//! - [`readahead`]: sequential streams and the chunks fetched ahead of them.
//! - [`destage`]: storing dirty chunks, journal commits, deleting old generations.
//! - [`health`]: status, labels and ownership as the volume lives, re-replication.
//! - [`paging`]: map lookups that read pages on demand; [`checkpoint`]: writing them.

mod checkpoint;
mod destage;
mod fill;
mod health;
mod open;
mod paging;
mod readahead;
mod residency;

pub use health::{Health, RereplicateReport, VolumeStatus};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cleave_split::{ChunkId, Codec, Keyring};
use cleave_target::DynTarget;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Notify, RwLock};

use crate::cache::Cache;
use crate::claim::{self, Claim};
use crate::dispersal::Dispersal;
use crate::journal;
use crate::label;
use crate::map::ChunkMap;
use crate::meta::{Durability, VolumeConfig};
use crate::stats::IoStats;
use crate::VolumeError;

/// Tunables, with defaults a user rarely needs to change.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    pub cache_dir: PathBuf,
    /// Bytes of chunks the cache may hold (dirty and clean together).
    pub cache_bytes: u64,
    /// Chunks encoded and written at once by the destager.
    pub destage_parallel: usize,
    /// Chunks committed per journal record.
    pub destage_batch: usize,
    /// Bytes a sequential stream of reads fetches ahead of itself (0: none), held in memory
    /// until read (see `volume/readahead.rs`).
    pub readahead_bytes: u64,
    /// Chunks fetched from the targets at once by one read over several chunks, and by
    /// read-ahead (per volume).
    pub read_parallel: usize,
    /// Ask one more target when a read has waited this long.
    pub hedge_after: Duration,
    /// A dispersed FLUSH that cannot complete in this time fails with EIO (data stays dirty).
    pub flush_timeout: Duration,
    pub put_timeout: Duration,
    /// Journal records between checkpoints.
    pub checkpoint_every: u64,
    /// Changed chunks that make a checkpoint due whatever the record count.
    pub map_delta_limit: usize,
    /// Mapped chunks whose map pages are kept in memory (about 40 bytes each).
    pub map_cache_entries: usize,
    /// A dirty chunk is destaged once unwritten for this long (sooner under pressure).
    pub destage_after: Duration,
    /// Above this fraction of the cache dirty, destage starts at once, oldest first.
    pub dirty_high: f64,
    /// Who this gateway is, in ownership claims (stable across restarts of one gateway).
    pub owner: String,
    /// Serve the volume even if another gateway claims it: that one is then fenced.
    pub takeover: bool,
    /// A FLUSH (or FUA) waits for the targets whatever the durability mode: set when
    /// another gateway may serve the volume next, from what the targets hold.
    pub flush_to_targets: bool,
}

impl VolumeOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        VolumeOptions {
            cache_dir,
            cache_bytes: 1 << 30,
            destage_parallel: 4,
            destage_batch: 32,
            readahead_bytes: 16 << 20,
            read_parallel: 8,
            hedge_after: Duration::from_millis(100),
            flush_timeout: Duration::from_secs(120),
            put_timeout: Duration::from_secs(30),
            checkpoint_every: 64,
            map_delta_limit: 1 << 16,
            map_cache_entries: 1 << 20,
            destage_after: Duration::from_secs(3),
            dirty_high: 0.5,
            owner: "local".into(),
            takeover: false,
            flush_to_targets: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ChunkState {
    dirty: bool,
    /// Bumped by every write; destage records the one it saw.
    seq: u64,
    destaged_seq: u64,
    destaging: bool,
    last_use: u64,
    last_write: Option<Instant>,
}

struct State {
    map: ChunkMap,
    /// Chunks held in the cache.
    chunks: HashMap<u64, ChunkState>,
    tick: u64,
    next_generation: u64,
    next_seq: u64,
    last_checkpoint: u64,
    records_since_checkpoint: u64,
    /// Chunk → share indices known missing or bad: the volume is degraded until repaired.
    missing: BTreeMap<u64, Vec<u8>>,
    /// Chunk → older generations kept because their successor (or the record naming it)
    /// is not yet on all N targets: any M targets must still rebuild some full state.
    superseded: BTreeMap<u64, Vec<u64>>,
    /// A journal object is not on all N targets: a full checkpoint is owed.
    journal_degraded: bool,
    last_destage: Option<SystemTime>,
    last_destage_error: Option<String>,
    /// The cache index on disk may lack chunks added since.
    index_stale: bool,
    /// Chunks being fetched from the targets (see `fill.rs`).
    fills: HashMap<u64, Arc<fill::Fill>>,
    /// Chunks being written into the cache by a fill: they count against its bound.
    installing: usize,
    /// Fills of sequential reads, kept in memory instead of the cache (oldest first).
    parked: VecDeque<(u64, Arc<fill::Fill>)>,
}

struct Inner {
    config: VolumeConfig,
    uuid: String,
    volume: [u8; 16],
    codec: Codec,
    keys: Keyring,
    dispersal: Dispersal,
    /// Target URIs in share order; `config.targets` as opened, this as moved since.
    target_uris: Mutex<Vec<String>>,
    cache: Cache,
    opts: VolumeOptions,
    capacity_chunks: usize,
    state: Mutex<State>,
    /// Striped locks: I/O takes them shared; fill, evict and trim take them exclusive.
    stripes: Vec<RwLock<()>>,
    /// Serializes destage rounds, journal commits and repair.
    commit: tokio::sync::Mutex<()>,
    /// One writer of the cache index at a time.
    sync_lock: tokio::sync::Mutex<()>,
    wake_destager: Arc<Notify>,
    progress: Notify,
    stopping: AtomicBool,
    /// Waiters that need dirty data destaged now (a FLUSH that reaches the targets, a full cache, shutdown).
    urgent: std::sync::atomic::AtomicUsize,
    /// This gateway's claim on the volume.
    claim: Claim,
    /// What the I/O paths count (atomics only).
    io: IoStats,
    /// Sequential read streams, for read-ahead.
    streams: Mutex<readahead::Streams>,
    /// Turns for chunks being read ahead (`read_parallel`).
    prefetch: Arc<tokio::sync::Semaphore>,
    /// Turns for fetched chunks being put into the cache after their reader has them.
    installs: Arc<tokio::sync::Semaphore>,
    /// This volume, for the background tasks it starts.
    me: std::sync::Weak<Inner>,
    /// Set once a newer owner took over: nothing more is read, written or committed.
    fenced: Mutex<Option<String>>,
    /// Host I/O holds it shared; a handover takes it to wait for I/O in flight, then closes
    /// it (with the reason) so that no more is taken.
    gate: tokio::sync::RwLock<Option<String>>,
}

/// A volume, cheap to clone.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("name", &self.inner.config.name).finish()
    }
}

fn io_err(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Cache(std::io::Error::other(e.to_string()))
}

impl Volume {
    pub fn config(&self) -> &VolumeConfig {
        &self.inner.config
    }
    pub fn size(&self) -> u64 {
        self.inner.config.size
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size = self.inner.config.size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VolumeError::OutOfRange { offset, len, size }),
        }
    }

    /// Splits [offset, offset+len) into (chunk, offset in volume, length) pieces.
    fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let cs = self.inner.config.chunk_size as u64;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / cs;
            let stop = ((chunk + 1) * cs).min(end);
            out.push((chunk, pos, stop - pos));
            pos = stop;
        }
        out
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        let _open = self.inner.enter().await?;
        let started = Instant::now();
        let out = self.read_inner(offset, len).await?;
        self.inner.io.read(len as u64, started.elapsed());
        Ok(out)
    }

    async fn read_inner(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.check_range(offset, len as u64)?;
        self.inner.check_fenced()?;
        let inner = &self.inner;
        let pieces = self.pieces(offset, len as u64);
        let sequential = self.read_ahead(&pieces);
        if let [(chunk, pos, n)] = pieces[..] {
            return inner.read_piece(chunk, pos, n as usize, sequential).await;
        }
        // Chunks missing from the cache are fetched together, a few at a time.
        let parts: Vec<Bytes> = futures::stream::iter(pieces)
            .map(|(chunk, pos, n)| inner.read_piece(chunk, pos, n as usize, sequential))
            .buffered(inner.opts.read_parallel.max(1))
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(len as usize);
        for part in parts {
            out.extend_from_slice(&part);
        }
        Ok(Bytes::from(out))
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        let _open = self.inner.enter().await?;
        let started = Instant::now();
        let len = data.len() as u64;
        self.write_inner(offset, data, fua).await?;
        self.inner.io.write(len, started.elapsed());
        Ok(())
    }

    async fn write_inner(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_range(offset, data.len() as u64)?;
        self.inner.check_fenced()?;
        let inner = &self.inner;
        let mut touched = Vec::new();
        for (chunk, pos, n) in self.pieces(offset, data.len() as u64) {
            let from = (pos - offset) as usize;
            inner.write_piece(chunk, pos, data.slice(from..from + n as usize)).await?;
            touched.push(chunk);
        }
        if fua {
            self.make_durable(Some(touched)).await?;
        }
        Ok(())
    }

    /// Zeroes a range. Whole chunks are punched out of the cache and stored as nothing.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        let _open = self.inner.enter().await?;
        self.check_range(offset, len)?;
        self.inner.check_fenced()?;
        let inner = &self.inner;
        let mut touched = Vec::new();
        for (chunk, pos, n) in self.pieces(offset, len) {
            let (start, end) = inner.cache.chunk_range(chunk);
            if pos == start && pos + n == end {
                if !inner.is_present(chunk) {
                    inner.wait_for_room().await?;
                }
                let _guard = inner.stripe(chunk).write().await;
                inner.zero_chunk(chunk).await?;
            } else {
                inner.write_piece(chunk, pos, Bytes::from(vec![0u8; n as usize])).await?;
            }
            touched.push(chunk);
        }
        if fua {
            self.make_durable(Some(touched)).await?;
        }
        Ok(())
    }

    /// Trim: the range reads back as zeros and stores nothing.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.write_zeroes(offset, len, false).await
    }

    /// FLUSH: every write completed before it is durable, as the durability mode says.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        let _open = self.inner.enter().await?;
        self.make_durable(None).await
    }

    /// Hands the volume over to another gateway with nothing lost: waits for the host I/O in
    /// flight, refuses any more (with `why`), and destages everything. If that fails, host
    /// I/O is taken again and the volume goes on here. Then it shuts down (and releases its
    /// claim on the targets): nothing is dirty any more, so another gateway may take it over
    /// even if that last step fails.
    pub async fn hand_over(&self, why: &str, timeout: Duration) -> Result<(), VolumeError> {
        *self.inner.gate.write().await = Some(why.to_string());
        if let Err(e) = self.destage_all(timeout).await {
            *self.inner.gate.write().await = None;
            return Err(e);
        }
        if let Err(e) = self.shutdown(timeout).await {
            tracing::warn!(volume = %self.inner.config.name, error = %e, "handed over, but not closed cleanly");
        }
        Ok(())
    }

    async fn make_durable(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.check_fenced()?;
        inner.sync_local().await?;
        if self.flushes_to_targets() {
            inner.wait_destaged(chunks).await?;
        }
        Ok(())
    }

    /// Makes every write so far durable in this gateway's cache alone, whatever the
    /// durability mode (a primary whose changes another gateway keeps too: `docs/appliance.md`).
    pub async fn sync_cache(&self) -> Result<(), VolumeError> {
        self.inner.check_fenced()?;
        self.inner.sync_local().await
    }

    /// Whether a FLUSH waits for the targets (`dispersed`, or [`VolumeOptions::flush_to_targets`]).
    pub fn flushes_to_targets(&self) -> bool {
        self.inner.config.durability == Durability::Dispersed || self.inner.opts.flush_to_targets
    }

    /// Destages everything and waits, up to `timeout`. Used by shutdown and tests.
    pub async fn destage_all(&self, timeout: Duration) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.sync_local().await?;
        tokio::time::timeout(timeout, inner.wait_destaged_inner(None))
            .await
            .map_err(|_| VolumeError::Timeout(format!("destage of {}", inner.config.name)))?
    }

    /// Clean shutdown: destage, sync, and record that nothing is dirty.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), VolumeError> {
        let result = self.destage_all(timeout).await;
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake_destager.notify_one();
        if result.is_ok() {
            let _commit = self.inner.commit.lock().await;
            let clean = self.inner.state.lock().expect("not poisoned").chunks.values().all(|c| !c.dirty);
            if clean {
                self.inner.cache.mark_clean()?;
                let inner = &self.inner;
                if inner.check_fenced().is_ok() {
                    claim::release(&inner.dispersal.targets(), &inner.keys, &inner.uuid, &inner.claim).await;
                }
            }
        }
        result
    }

    /// Moves share `i` to another target: later writes go there, reads of older chunks find
    /// the share missing and read around it until a repair rewrites them.
    pub async fn replace_target(&self, i: usize, uri: String, target: DynTarget) -> Result<(), VolumeError> {
        if i >= self.inner.config.n as usize {
            return Err(VolumeError::Metadata(format!("share index {i} out of range")));
        }
        // Not in the middle of a destage round: its shares all go to one target set.
        let _commit = self.inner.commit.lock().await;
        label::write(&target, &self.inner.keys, &self.inner.uuid, self.inner.volume, i as u8).await?;
        self.inner.dispersal.replace(i, target);
        // The new target holds no map page: the next checkpoint writes them all.
        self.inner.state.lock().expect("not poisoned").map.rewrite_all();
        self.inner.target_uris.lock().expect("not poisoned")[i] = uri;
        Ok(())
    }

    /// Writes a journal record and a checkpoint now, so the whole map is on the current
    /// targets. Errors unless the checkpoint reached all N targets.
    pub async fn checkpoint_now(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let _commit = inner.commit.lock().await;
        // The record alone: a checkpoint due after it is the one written here, never twice.
        inner.commit_record(Vec::new()).await?;
        match inner.write_checkpoint().await? {
            journal::Stored::Full => Ok(()),
            journal::Stored::Quorum => Err(VolumeError::Quorum(format!(
                "checkpoint {} did not reach all {} targets",
                inner.state.lock().expect("not poisoned").last_checkpoint,
                inner.config.n
            ))),
        }
    }

    /// The epoch of this gateway's claim on the volume.
    pub fn epoch(&self) -> u64 {
        self.inner.claim.epoch
    }

    /// Stops serving: every later read, write and flush fails with [`VolumeError::Fenced`]
    /// and nothing more is destaged. For a gateway that lost its right to serve the volume
    /// (its lease in the configuration database), before another gateway may take it over.
    /// A destage round already under way may still finish its commit.
    pub fn fence(&self, why: &str) {
        self.inner.fenced.lock().expect("not poisoned").get_or_insert_with(|| why.to_string());
        self.stop_destaging();
    }

    fn stop_destaging(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake_destager.notify_one();
    }

    /// Stops destaging without flushing (the volume is being deleted): once this returns,
    /// nothing more is written to the targets.
    pub async fn close(&self) {
        self.stop_destaging();
        // A round in progress holds the commit lock; later rounds see `stopping`.
        let _commit = self.inner.commit.lock().await;
    }

    /// What this volume's reads and writes have counted since it opened.
    pub fn io_stats(&self) -> &IoStats {
        &self.inner.io
    }

    /// Bytes stored on the targets since the volume opened: (chunk data, metadata).
    pub fn stored_bytes(&self) -> (u64, u64) {
        let data = IoStats::get(&self.inner.io.data_stored_bytes);
        (data, self.inner.dispersal.stored_bytes().saturating_sub(data))
    }

    /// How long the oldest dirty write has waited to be destaged (zero when nothing is
    /// dirty, or when the dirty chunks are from before a restart and their age is unknown).
    pub fn destage_lag(&self) -> Duration {
        let st = self.inner.state.lock().expect("not poisoned");
        st.chunks
            .values()
            .filter(|c| c.dirty)
            .filter_map(|c| c.last_write)
            .map(|t| t.elapsed())
            .max()
            .unwrap_or_default()
    }

    /// Each target's statistics, in share order.
    pub fn target_reports(&self) -> Vec<crate::dispersal::TargetReport> {
        self.inner.dispersal.reports()
    }

    pub(crate) fn dispersal(&self) -> &Dispersal {
        &self.inner.dispersal
    }
    pub(crate) fn codec(&self) -> &Codec {
        &self.inner.codec
    }
    pub(crate) fn keys(&self) -> &Keyring {
        &self.inner.keys
    }
    /// The object name and share identity of a chunk generation.
    pub(crate) fn locate(&self, chunk: u64, generation: u64) -> (String, ChunkId) {
        self.inner.locate(chunk, generation)
    }

    /// Records which shares of generation `generation` of a chunk are missing or bad
    /// (empty: healthy). Ignored if the chunk has moved on to another generation since:
    /// what a scrub found about an older one says nothing about the current one.
    pub(crate) async fn set_missing(&self, chunk: u64, generation: u64, indices: Vec<u8>) -> Result<(), VolumeError> {
        self.inner
            .with_mapping(chunk, |st, current| {
                if current.map(|m| m.generation) == Some(generation) {
                    match indices.is_empty() {
                        true => st.missing.remove(&chunk),
                        false => st.missing.insert(chunk, indices),
                    };
                }
            })
            .await
    }

    /// Writes `data`, read from generation `generation` of `chunk`, as a new generation
    /// and commits it: for repair and re-replication. Skips chunks that are dirty in the
    /// cache (their destage will write a new generation), and chunks whose current
    /// generation is no longer the one the data was read from: a destage may have
    /// committed newer data between the read and now, and writing the old data back
    /// would roll the chunk back (found by the fault campaign, `tests/campaign.rs`).
    pub(crate) async fn rewrite(
        &self,
        chunk: u64,
        generation: Option<u64>,
        data: Vec<u8>,
    ) -> Result<bool, VolumeError> {
        let inner = &self.inner;
        let _commit = inner.commit.lock().await;
        if inner.state.lock().expect("not poisoned").chunks.get(&chunk).is_some_and(|c| c.dirty || c.destaging) {
            return Ok(false);
        }
        if inner.lookup(chunk).await?.map(|m| m.generation) != generation {
            return Ok(false);
        }
        let (mapping, missing) = inner.store_chunk(chunk, data).await?;
        let old = inner.commit_entries(vec![(chunk, mapping, missing)]).await?;
        inner.delete_old(old).await;
        Ok(true)
    }
}

impl Inner {
    fn locate(&self, chunk: u64, generation: u64) -> (String, ChunkId) {
        crate::naming::chunk_object(&self.keys, &self.uuid, self.volume, chunk, generation)
    }
}

/// Counts a waiter in `urgent` for as long as it lives.
struct Urgent<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Urgent<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Urgent(counter)
    }
}

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The first generation number of an owner's epoch: the top 24 bits are the epoch, so two
/// owners of one volume (before the older is fenced) never write the same object name.
fn epoch_base(epoch: u64) -> u64 {
    if epoch < 1 << 24 {
        epoch << 40
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// The fault campaign (seed 12708478) found re-replication reading a chunk from the
    /// targets, a destage committing newer data from the cache meanwhile, and the repair
    /// then storing what it had read as the newest generation: a FLUSHed write rolled back
    /// once the chunk left the cache. A rewrite from a generation that is no longer current
    /// must change nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repair_from_an_older_generation_never_rolls_a_chunk_back() {
        let dir = tempfile::tempdir().unwrap();
        let uris: Vec<String> = (0..5).map(|i| format!("file://{}/t{i}", dir.path().display())).collect();
        let targets: Vec<DynTarget> = uris.iter().map(|u| cleave_target::create(u).unwrap()).collect();
        let config = VolumeConfig {
            name: "t".into(),
            uuid: "00112233445566778899aabbccddeeff".into(),
            size: 4 * MIB as u64,
            chunk_size: MIB as u32,
            m: 3,
            n: 5,
            durability: Durability::Local,
            targets: uris,
            write_quorum: None,
            store_zero_chunks: false,
        };
        let keys = Keyring::generate().unwrap();
        label::write_all(&targets, &keys, &config.uuid, config.uuid_bytes().unwrap(), 5).await.unwrap();
        let open = |cache: &str| {
            Volume::open(config.clone(), keys.clone(), targets.clone(), VolumeOptions::new(dir.path().join(cache)))
        };
        let v = open("c1").await.unwrap();
        v.write(0, Bytes::from(vec![0xaa; MIB]), false).await.unwrap();
        v.destage_all(Duration::from_secs(60)).await.unwrap();
        // A repair reads generation `old` (0xaa) from the targets...
        let old = v.current_generation(0).await.unwrap();
        let stale = v.inner.fetch_chunk(0).await.unwrap();
        // ...while newer data is written and destaged from the cache.
        v.write(0, Bytes::from(vec![0xbb; MIB]), false).await.unwrap();
        v.destage_all(Duration::from_secs(60)).await.unwrap();
        assert_ne!(v.current_generation(0).await.unwrap(), old);
        assert!(!v.rewrite(0, old, stale).await.unwrap(), "a stale rewrite was stored");
        // From the current generation, the rewrite goes ahead.
        let current = v.current_generation(0).await.unwrap();
        let data = v.inner.fetch_chunk(0).await.unwrap();
        assert!(v.rewrite(0, current, data).await.unwrap());
        v.shutdown(Duration::from_secs(60)).await.unwrap();
        drop(v);
        // Another cache: the read comes from the targets alone.
        let cold = open("c2").await.unwrap();
        assert!(cold.read(0, MIB as u32).await.unwrap().iter().all(|&b| b == 0xbb), "chunk 0 rolled back");
    }
}

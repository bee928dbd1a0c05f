//! A volume: reads and writes against the cache, destage to the targets in the
//! background, FLUSH/FUA as the durability mode says.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cleave_split::{ChunkId, Codec, Keyring, ShareKind};
use cleave_target::DynTarget;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::{Notify, RwLock};
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::dispersal::Dispersal;
use crate::journal::{self, Checkpoint, Journal, Mapping, Record};
use crate::label;
use crate::meta::{names, Durability, VolumeConfig};
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
    /// Ask one more target when a read has waited this long.
    pub hedge_after: Duration,
    /// A dispersed FLUSH that cannot complete in this time fails with EIO (data stays dirty).
    pub flush_timeout: Duration,
    pub put_timeout: Duration,
    /// Journal records between checkpoints.
    pub checkpoint_every: u64,
    /// A dirty chunk is destaged once unwritten for this long (sooner under pressure).
    pub destage_after: Duration,
    /// Above this fraction of the cache dirty, destage starts at once, oldest first.
    pub dirty_high: f64,
}

impl VolumeOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        VolumeOptions {
            cache_dir,
            cache_bytes: 1 << 30,
            destage_parallel: 4,
            destage_batch: 32,
            hedge_after: Duration::from_millis(100),
            flush_timeout: Duration::from_secs(120),
            put_timeout: Duration::from_secs(30),
            checkpoint_every: 64,
            destage_after: Duration::from_secs(3),
            dirty_high: 0.5,
        }
    }
}

/// A chunk written in a destage round: (chunk, write seq seen, new mapping, shares not stored).
type Stored = (u64, u64, Mapping, Vec<u8>);

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

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<u64, Mapping>,
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
    /// The cache bitmap on disk may lack chunks added since.
    bitmap_stale: bool,
}

/// What re-replication did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RereplicateReport {
    pub chunks_rewritten: u64,
    /// Chunks still lacking shares (rewritten while a target failed again).
    pub still_missing: u64,
}

/// Health as `volume show` reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Health {
    Clean,
    /// Some shares are missing or bad, or some targets are down, but every chunk is readable.
    Degraded {
        targets_down: Vec<String>,
        chunks_missing_shares: usize,
        missing: Vec<(u64, Vec<u8>)>,
        /// Journal metadata is on fewer than N targets until a checkpoint reaches all.
        #[serde(default)]
        journal_degraded: bool,
    },
    /// Fewer than M targets answer.
    Unavailable {
        targets_down: Vec<String>,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeStatus {
    pub config: VolumeConfig,
    pub health: Health,
    pub dirty_bytes: u64,
    pub cache_bytes: u64,
    pub cache_limit_bytes: u64,
    pub mapped_chunks: usize,
    pub last_destage: Option<String>,
    pub last_destage_error: Option<String>,
    pub journal_seq: u64,
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
    /// One writer of the cache bitmap at a time.
    sync_lock: tokio::sync::Mutex<()>,
    wake_destager: Arc<Notify>,
    progress: Notify,
    stopping: AtomicBool,
    /// Waiters that need dirty data destaged now (FLUSH in dispersed mode, a full cache, shutdown).
    urgent: std::sync::atomic::AtomicUsize,
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
    /// Opens a volume: replays the journal from the targets, opens the cache, starts the
    /// destager. After an unclean shutdown every cached chunk is destaged again.
    pub async fn open(
        config: VolumeConfig,
        keys: Keyring,
        targets: Vec<DynTarget>,
        opts: VolumeOptions,
    ) -> Result<Volume, VolumeError> {
        config.validate()?;
        let volume = config.uuid_bytes().expect("validated");
        let codec = Codec::new(config.m as usize, config.n as usize).map_err(|e| VolumeError::Config(e.to_string()))?;
        let dispersal = Dispersal::new(targets, opts.put_timeout);
        let uuid = config.uuid.clone();
        let labels = label::check_all(&dispersal.targets(), &keys, &uuid, volume).await;
        let (trusted, replaced) = label::classify(&dispersal.targets(), &uuid, &labels).await;
        let trusted_count = trusted.iter().filter(|t| **t).count();
        if trusted_count < codec.m() {
            return Err(VolumeError::MetadataUnavailable(format!(
                "only {trusted_count} of {} targets carry volume {:?}'s label and answer, need {}; \
                 replaced (no or wrong label): {replaced:?}; labels: {labels:?}",
                config.n,
                config.name,
                codec.m()
            )));
        }
        let replayed = Journal {
            dispersal: &dispersal,
            codec: &codec,
            keys: &keys,
            uuid: &uuid,
            volume,
            quorum: config.write_quorum(),
            hedge_after: opts.hedge_after,
            prune: true,
            accept_stale: false,
            trusted: &trusted,
        }
        .replay()
        .await?;
        let (cache, present, clean) = Cache::open(&opts.cache_dir, &uuid, config.size, config.chunk_size)?;
        let capacity_chunks = (opts.cache_bytes / config.chunk_size as u64).max(4) as usize;
        let mut chunks = HashMap::new();
        for c in &present {
            let dirty = !clean;
            chunks.insert(*c, ChunkState { dirty, seq: u64::from(dirty), ..Default::default() });
        }
        if !clean && !present.is_empty() {
            info!(volume = %config.name, chunks = present.len(), "unclean shutdown: destaging every cached chunk again");
        }
        let state = State {
            map: replayed.map,
            chunks,
            next_generation: replayed.next_generation,
            next_seq: replayed.last_seq + 1,
            last_checkpoint: replayed.last_checkpoint,
            records_since_checkpoint: replayed.records_since_checkpoint,
            missing: replayed.missing,
            journal_degraded: replayed.journal_degraded,
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            uuid,
            volume,
            codec,
            keys,
            dispersal,
            target_uris: Mutex::new(config.targets.clone()),
            cache,
            capacity_chunks,
            state: Mutex::new(state),
            stripes: (0..256).map(|_| RwLock::new(())).collect(),
            commit: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            wake_destager: Arc::new(Notify::new()),
            progress: Notify::new(),
            stopping: AtomicBool::new(false),
            urgent: std::sync::atomic::AtomicUsize::new(0),
            config,
            opts,
        });
        for (i, trusted) in trusted.iter().enumerate() {
            if *trusted && !matches!(labels[i], label::LabelState::Valid) {
                // A target from before labels existed: it holds the volume, label it.
                let _ = label::write(&inner.dispersal.targets()[i], &inner.keys, &inner.uuid, volume, i as u8).await;
            }
        }
        for i in replaced {
            inner.adopt_replaced(i).await;
        }
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move { destager(weak).await });
        inner.wake_destager.notify_one();
        Ok(Volume { inner })
    }

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
        self.check_range(offset, len as u64)?;
        let inner = &self.inner;
        let mut out = Vec::with_capacity(len as usize);
        for (chunk, pos, n) in self.pieces(offset, len as u64) {
            if !inner.is_present(chunk) && inner.has_room() {
                // Bring it in while there is room: later reads and writes are local.
                drop(inner.ensure_present(chunk).await?);
            }
            let guard = inner.stripe(chunk).read().await;
            if inner.touch(chunk) {
                out.extend_from_slice(&inner.cache.read_at(pos, n as usize).await?);
                drop(guard);
                continue;
            }
            drop(guard);
            let (start, _) = inner.cache.chunk_range(chunk);
            let data = inner.fetch_chunk(chunk).await?;
            let from = (pos - start) as usize;
            out.extend_from_slice(&data[from..from + n as usize]);
        }
        Ok(Bytes::from(out))
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_range(offset, data.len() as u64)?;
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
        self.check_range(offset, len)?;
        let inner = &self.inner;
        let mut touched = Vec::new();
        for (chunk, pos, n) in self.pieces(offset, len) {
            let (start, end) = inner.cache.chunk_range(chunk);
            if pos == start && pos + n == end {
                if !inner.is_present(chunk) {
                    inner.wait_for_room().await?;
                }
                let _guard = inner.stripe(chunk).write().await;
                inner.zero_chunk(chunk, start, end).await?;
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
        self.make_durable(None).await
    }

    async fn make_durable(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.sync_local().await?;
        if inner.config.durability == Durability::Dispersed {
            inner.wait_destaged(chunks).await?;
        }
        Ok(())
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
        self.inner.target_uris.lock().expect("not poisoned")[i] = uri;
        Ok(())
    }

    /// Writes a journal record and a checkpoint now, so the whole map is on the current
    /// targets. Errors unless the checkpoint reached all N targets.
    pub async fn checkpoint_now(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let _commit = inner.commit.lock().await;
        inner.commit_entries(Vec::new()).await?;
        let cp = inner.snapshot_checkpoint();
        match inner.write_checkpoint(&cp).await? {
            journal::Stored::Full => Ok(()),
            journal::Stored::Quorum => {
                Err(VolumeError::Quorum(format!("checkpoint {} did not reach all {} targets", cp.seq, inner.config.n)))
            }
        }
    }

    /// Whether some share or journal object is not on all N targets.
    pub fn needs_rereplication(&self) -> bool {
        let st = self.inner.state.lock().expect("not poisoned");
        !st.missing.is_empty() || st.journal_degraded
    }

    /// Re-replication after a degraded write: once every target answers, writes each chunk
    /// that lacks shares again as a new generation on all N, then a checkpoint on all N,
    /// after which the older generations and records are deleted.
    pub async fn rereplicate(&self, progress: impl Fn(u64, u64)) -> Result<RereplicateReport, VolumeError> {
        let inner = &self.inner;
        inner.probe_targets().await;
        let down = inner.dispersal.stats().iter().filter(|s| !s.is_up()).count();
        if down > 0 {
            return Err(VolumeError::Quorum(format!("{down} targets are down; re-replication waits for them")));
        }
        let chunks: Vec<u64> = inner.state.lock().expect("not poisoned").missing.keys().copied().collect();
        let total = chunks.len() as u64 + 1;
        let mut report = RereplicateReport::default();
        for (done, chunk) in chunks.into_iter().enumerate() {
            progress(done as u64, total);
            // Which generation the data comes from: `rewrite` stores it only if that is
            // still the current one once it holds the commit lock.
            let generation = self.current_generation(chunk);
            let data = inner.fetch_chunk(chunk).await?;
            if self.rewrite(chunk, generation, data).await? {
                report.chunks_rewritten += 1;
            }
        }
        self.checkpoint_now().await?;
        report.still_missing = inner.state.lock().expect("not poisoned").missing.len() as u64;
        progress(total, total);
        Ok(report)
    }

    /// Stops destaging without flushing (the volume is being deleted): once this returns,
    /// nothing more is written to the targets.
    pub async fn close(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake_destager.notify_one();
        // A round in progress holds the commit lock; later rounds see `stopping`.
        let _commit = self.inner.commit.lock().await;
    }

    pub fn status(&self) -> VolumeStatus {
        let inner = &self.inner;
        let st = inner.state.lock().expect("not poisoned");
        let cs = inner.config.chunk_size as u64;
        let down: Vec<String> = inner
            .dispersal
            .targets()
            .iter()
            .zip(inner.dispersal.stats())
            .filter(|(_, s)| !s.is_up())
            .map(|(t, _)| t.name().to_string())
            .collect();
        let health = if inner.dispersal.up_count() < inner.config.m as usize {
            Health::Unavailable { targets_down: down }
        } else if !down.is_empty() || !st.missing.is_empty() || st.journal_degraded {
            Health::Degraded {
                targets_down: down,
                chunks_missing_shares: st.missing.len(),
                missing: st.missing.iter().take(32).map(|(c, v)| (*c, v.clone())).collect(),
                journal_degraded: st.journal_degraded,
            }
        } else {
            Health::Clean
        };
        let mut config = inner.config.clone();
        config.targets = inner.target_uris.lock().expect("not poisoned").clone();
        VolumeStatus {
            config,
            health,
            dirty_bytes: st.chunks.values().filter(|c| c.dirty).count() as u64 * cs,
            cache_bytes: st.chunks.len() as u64 * cs,
            cache_limit_bytes: inner.capacity_chunks as u64 * cs,
            mapped_chunks: st.map.len(),
            last_destage: st.last_destage.map(|t| {
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                format!("{secs}")
            }),
            last_destage_error: st.last_destage_error.clone(),
            journal_seq: st.next_seq - 1,
        }
    }

    /// The committed chunk map (chunk → generation), for scrub.
    pub fn mapped(&self) -> Vec<(u64, Mapping)> {
        self.inner.state.lock().expect("not poisoned").map.iter().map(|(c, m)| (*c, *m)).collect()
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
    pub(crate) fn chunk_id(&self, chunk: u64, generation: u64) -> ChunkId {
        ChunkId { volume: self.inner.volume, kind: ShareKind::Data, chunk, generation }
    }
    pub(crate) fn uuid(&self) -> &str {
        &self.inner.uuid
    }

    /// The generation a chunk maps to now (None: zeros, nothing stored).
    pub(crate) fn current_generation(&self, chunk: u64) -> Option<u64> {
        self.inner.state.lock().expect("not poisoned").map.get(&chunk).map(|m| m.generation)
    }

    /// Records which shares of generation `generation` of a chunk are missing or bad
    /// (empty: healthy). Ignored if the chunk has moved on to another generation since:
    /// what a scrub found about an older one says nothing about the current one.
    pub(crate) fn set_missing(&self, chunk: u64, generation: u64, indices: Vec<u8>) {
        let mut st = self.inner.state.lock().expect("not poisoned");
        if st.map.get(&chunk).map(|m| m.generation) != Some(generation) {
            return;
        }
        if indices.is_empty() {
            st.missing.remove(&chunk);
        } else {
            st.missing.insert(chunk, indices);
        }
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
        {
            let st = inner.state.lock().expect("not poisoned");
            if st.chunks.get(&chunk).is_some_and(|c| c.dirty || c.destaging) {
                return Ok(false);
            }
            if st.map.get(&chunk).map(|m| m.generation) != generation {
                return Ok(false);
            }
        }
        let (mapping, missing) = inner.store_chunk(chunk, data).await?;
        let old = inner.commit_entries(vec![(chunk, mapping, missing)]).await?;
        inner.delete_old(old).await;
        Ok(true)
    }
}

impl Inner {
    /// Targets believed down that answer again: checked for their label first, since a
    /// target that comes back empty (a new disk, a remount) lost its shares.
    async fn probe_targets(&self) {
        for i in self.dispersal.probe_down().await {
            let target = self.dispersal.targets()[i].clone();
            let state = label::check_one(&target, &self.keys, &self.uuid, self.volume, i as u8).await;
            if matches!(state, label::LabelState::Missing | label::LabelState::Wrong(_)) {
                self.adopt_replaced(i).await;
            }
        }
    }

    /// Target `i` answers without this volume's label: it lost everything it held. Every
    /// mapped chunk now lacks share i; that is journaled (so a restart remembers it) before
    /// the target gets its label, and re-replication rebuilds the shares.
    async fn adopt_replaced(&self, i: usize) {
        let target = self.dispersal.targets()[i].clone();
        warn!(volume = %self.config.name, target = %target.name(), share = i, "target has no label: it was replaced; its shares will be rebuilt");
        let _commit = self.commit.lock().await;
        let (seq, lacking) = {
            let mut st = self.state.lock().expect("not poisoned");
            st.journal_degraded = true;
            let chunks: Vec<u64> = st.map.keys().copied().collect();
            for c in chunks {
                let entry = st.missing.entry(c).or_default();
                if !entry.contains(&(i as u8)) {
                    entry.push(i as u8);
                }
            }
            (st.next_seq, st.missing.iter().map(|(c, v)| (*c, v.clone())).collect::<Vec<_>>())
        };
        let record = Record { seq, entries: Vec::new(), missing: lacking };
        if let Err(e) = self.journal().commit(&record).await {
            warn!(volume = %self.config.name, error = %e, "cannot journal the replaced target yet; it stays unlabeled until then");
            return;
        }
        {
            let mut st = self.state.lock().expect("not poisoned");
            st.next_seq = seq.saturating_add(1);
            st.records_since_checkpoint += 1;
        }
        if let Err(e) = label::write(&target, &self.keys, &self.uuid, self.volume, i as u8).await {
            warn!(volume = %self.config.name, error = %e, "cannot label the replaced target");
        }
    }

    fn stripe(&self, chunk: u64) -> &RwLock<()> {
        &self.stripes[(chunk % self.stripes.len() as u64) as usize]
    }

    fn is_present(&self, chunk: u64) -> bool {
        self.state.lock().expect("not poisoned").chunks.contains_key(&chunk)
    }

    fn has_room(&self) -> bool {
        self.state.lock().expect("not poisoned").chunks.len() < self.capacity_chunks
    }

    /// Marks a use for LRU; false if the chunk is not cached.
    fn touch(&self, chunk: u64) -> bool {
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

    fn mark_dirty(&self, chunk: u64) {
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
    async fn write_piece(&self, chunk: u64, pos: u64, data: Bytes) -> Result<(), VolumeError> {
        let _guard = self.ensure_present(chunk).await?;
        self.cache.write_at(pos, data).await?;
        self.mark_dirty(chunk);
        Ok(())
    }

    async fn zero_chunk(&self, chunk: u64, start: u64, end: u64) -> Result<(), VolumeError> {
        self.cache.punch(start, end - start).await?;
        let mut st = self.state.lock().expect("not poisoned");
        if !st.chunks.contains_key(&chunk) {
            st.bitmap_stale = true;
        }
        drop(st);
        self.mark_dirty(chunk);
        Ok(())
    }

    /// Returns with the chunk cached and its stripe held shared.
    async fn ensure_present(&self, chunk: u64) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, VolumeError> {
        loop {
            let guard = self.stripe(chunk).read().await;
            if self.touch(chunk) {
                return Ok(guard);
            }
            drop(guard);
            self.wait_for_room().await?;
            let guard = self.stripe(chunk).write().await;
            if !self.is_present(chunk) {
                self.fill(chunk).await?;
            }
            drop(guard);
        }
    }

    /// Loads a chunk into the cache from the targets (or as zeros). Stripe held exclusive.
    async fn fill(&self, chunk: u64) -> Result<(), VolumeError> {
        let (start, end) = self.cache.chunk_range(chunk);
        let mapped = self.state.lock().expect("not poisoned").map.get(&chunk).copied();
        match mapped {
            Some(_) => {
                let data = self.fetch_chunk(chunk).await?;
                self.cache.write_at(start, Bytes::from(data)).await?;
            }
            // Stale bytes may sit here from before a crash: the chunk must read as zeros.
            None => self.cache.punch(start, end - start).await?,
        }
        let mut st = self.state.lock().expect("not poisoned");
        st.tick += 1;
        let tick = st.tick;
        st.chunks.insert(chunk, ChunkState { last_use: tick, ..Default::default() });
        st.bitmap_stale = true;
        Ok(())
    }

    /// Makes room for one more chunk: evicts clean chunks (least recently used first),
    /// or waits for the destager to clean some.
    async fn wait_for_room(&self) -> Result<(), VolumeError> {
        let mut waited = Duration::ZERO;
        loop {
            let victims: Vec<u64> = {
                let st = self.state.lock().expect("not poisoned");
                if st.chunks.len() < self.capacity_chunks {
                    return Ok(());
                }
                let mut clean: Vec<(u64, u64)> =
                    st.chunks.iter().filter(|(_, c)| !c.dirty && !c.destaging).map(|(k, c)| (c.last_use, *k)).collect();
                clean.sort_unstable();
                let batch = (self.capacity_chunks / 16).max(1);
                clean.into_iter().take(batch).map(|(_, k)| k).collect()
            };
            if victims.is_empty() {
                let _urgent = Urgent::new(&self.urgent);
                self.wake_destager.notify_one();
                let _ = tokio::time::timeout(Duration::from_millis(200), self.progress.notified()).await;
                waited += Duration::from_millis(200);
                if waited > self.opts.flush_timeout && self.dispersal.up_count() < self.codec.m() {
                    return Err(VolumeError::Unavailable {
                        chunk: 0,
                        reason: "cache full of dirty data and the targets are unavailable".into(),
                    });
                }
                continue;
            }
            self.evict(victims).await?;
        }
    }

    async fn evict(&self, victims: Vec<u64>) -> Result<(), VolumeError> {
        let mut guards = Vec::new();
        let mut gone = Vec::new();
        for c in victims {
            // Never wait here: a writer may hold this stripe while waiting for room.
            let Ok(g) = self.stripe(c).try_write() else { continue };
            let mut st = self.state.lock().expect("not poisoned");
            if st.chunks.get(&c).is_some_and(|s| !s.dirty && !s.destaging) {
                st.chunks.remove(&c);
                gone.push(c);
                guards.push(g);
            }
        }
        if gone.is_empty() {
            tokio::task::yield_now().await;
            return Ok(());
        }
        // The bitmap must forget them before their data goes.
        self.sync_local().await?;
        for c in gone {
            let (start, end) = self.cache.chunk_range(c);
            self.cache.punch(start, end - start).await?;
        }
        Ok(())
    }

    /// Makes the cache durable: data first, then the bitmap that points at it.
    async fn sync_local(&self) -> Result<(), VolumeError> {
        let _sync = self.sync_lock.lock().await;
        self.cache.sync_data().await?;
        let present = {
            let mut st = self.state.lock().expect("not poisoned");
            st.bitmap_stale = false;
            st.chunks.keys().copied().collect::<Vec<_>>()
        };
        self.cache.persist_bitmap(present).await?;
        Ok(())
    }

    /// Reads and decodes a chunk's current generation from the targets.
    async fn fetch_chunk(&self, chunk: u64) -> Result<Vec<u8>, VolumeError> {
        let (start, end) = self.cache.chunk_range(chunk);
        let len = (end - start) as usize;
        let Some(mapping) = self.state.lock().expect("not poisoned").map.get(&chunk).copied() else {
            return Ok(vec![0u8; len]);
        };
        let key = names::chunk(&self.uuid, chunk, mapping.generation);
        let id = ChunkId { volume: self.volume, kind: ShareKind::Data, chunk, generation: mapping.generation };
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

    /// Waits until the given chunks (all dirty ones if None) are destaged as of now.
    async fn wait_destaged(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
        tokio::time::timeout(self.opts.flush_timeout, self.wait_destaged_inner(chunks))
            .await
            .map_err(|_| VolumeError::Timeout(format!("destage of {} to its targets", self.config.name)))?
    }

    async fn wait_destaged_inner(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
        let _urgent = Urgent::new(&self.urgent);
        let snapshot: Vec<(u64, u64)> = {
            let st = self.state.lock().expect("not poisoned");
            match chunks {
                Some(list) => list.iter().filter_map(|c| st.chunks.get(c).map(|s| (*c, s.seq))).collect(),
                None => st.chunks.iter().filter(|(_, s)| s.dirty).map(|(c, s)| (*c, s.seq)).collect(),
            }
        };
        loop {
            let notified = self.progress.notified();
            let pending = {
                let st = self.state.lock().expect("not poisoned");
                snapshot.iter().any(|(c, seq)| st.chunks.get(c).is_some_and(|s| s.destaged_seq < *seq))
            };
            if !pending {
                return Ok(());
            }
            self.wake_destager.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// Encodes and writes one chunk as a new generation; all zeros store nothing.
    /// Returns its mapping and the share indices that did not get stored.
    async fn store_chunk(&self, chunk: u64, data: Vec<u8>) -> Result<(Mapping, Vec<u8>), VolumeError> {
        let key_id = self.keys.current().id();
        if data.iter().all(|&b| b == 0) {
            return Ok((Mapping { generation: 0, key_id }, Vec::new()));
        }
        let generation = {
            let mut st = self.state.lock().expect("not poisoned");
            let g = st.next_generation;
            st.next_generation = g
                .checked_add(1)
                .ok_or_else(|| VolumeError::Metadata(format!("chunk {chunk}: generation space exhausted")))?;
            g
        };
        let id = ChunkId { volume: self.volume, kind: ShareKind::Data, chunk, generation };
        let codec = self.codec.clone();
        let keys = self.keys.clone();
        let shares =
            tokio::task::spawn_blocking(move || codec.encode(keys.current(), &id, &data)).await.map_err(io_err)??;
        let key = names::chunk(&self.uuid, chunk, generation);
        let outcome = self.dispersal.put_all(&key, shares.into_iter().map(Bytes::from).collect()).await;
        if outcome.stored.len() < self.config.write_quorum() {
            self.dispersal.delete_all(&key).await;
            return Err(VolumeError::Quorum(format!(
                "chunk {chunk}: {} of {} shares stored, need {}: {}",
                outcome.stored.len(),
                self.config.n,
                self.config.write_quorum(),
                outcome.failed.iter().map(|(i, e)| format!("share {i}: {e}")).collect::<Vec<_>>().join("; ")
            )));
        }
        let missing = outcome.failed.iter().map(|(i, _)| *i as u8).collect();
        Ok((Mapping { generation, key_id }, missing))
    }

    /// Commits mappings in one journal record; returns the generations that may now be
    /// deleted: an old generation goes only once its successor and the record naming it
    /// are on all N targets, otherwise it is kept as superseded. Caller holds `commit`.
    async fn commit_entries(&self, done: Vec<(u64, Mapping, Vec<u8>)>) -> Result<Vec<(u64, u64)>, VolumeError> {
        let seq = self.state.lock().expect("not poisoned").next_seq;
        let record = Record {
            seq,
            entries: done.iter().map(|(c, m, _)| (*c, m.generation, m.key_id)).collect(),
            missing: done.iter().filter(|(_, _, x)| !x.is_empty()).map(|(c, _, x)| (*c, x.clone())).collect(),
        };
        let stored = self.journal().commit(&record).await?;
        let mut old = Vec::new();
        let checkpoint_due = {
            let mut st = self.state.lock().expect("not poisoned");
            st.next_seq =
                seq.checked_add(1).ok_or_else(|| VolumeError::Metadata("journal sequence space exhausted".into()))?;
            st.records_since_checkpoint += 1;
            st.journal_degraded |= stored != journal::Stored::Full;
            for (chunk, mapping, missing) in done {
                let previous =
                    if mapping.generation == 0 { st.map.remove(&chunk) } else { st.map.insert(chunk, mapping) };
                let replaced = previous.filter(|p| p.generation != mapping.generation).map(|p| p.generation);
                if missing.is_empty() && stored == journal::Stored::Full {
                    old.extend(replaced.map(|g| (chunk, g)));
                    old.extend(st.superseded.remove(&chunk).unwrap_or_default().into_iter().map(|g| (chunk, g)));
                } else {
                    st.superseded.entry(chunk).or_default().extend(replaced);
                }
                if missing.is_empty() {
                    st.missing.remove(&chunk);
                } else {
                    st.missing.insert(chunk, missing);
                }
            }
            st.last_destage = Some(SystemTime::now());
            st.records_since_checkpoint >= self.opts.checkpoint_every
        };
        if checkpoint_due {
            let cp = self.snapshot_checkpoint();
            if let Err(e) = self.write_checkpoint(&cp).await {
                warn!(error = %e, "checkpoint failed; the journal keeps growing until one succeeds");
            }
        }
        Ok(old)
    }

    /// The whole map as of the last committed record.
    fn snapshot_checkpoint(&self) -> Checkpoint {
        let st = self.state.lock().expect("not poisoned");
        Checkpoint {
            seq: st.next_seq - 1,
            next_generation: st.next_generation,
            entries: st.map.iter().map(|(c, m)| (*c, m.generation, m.key_id)).collect(),
            missing: st.missing.iter().map(|(c, v)| (*c, v.clone())).collect(),
        }
    }

    /// Writes a checkpoint; one on all N targets also clears the journal's debt and lets
    /// superseded generations of fully stored chunks go. Caller holds `commit`.
    async fn write_checkpoint(&self, cp: &Checkpoint) -> Result<journal::Stored, VolumeError> {
        let stored = self.journal().checkpoint(cp).await?;
        let old: Vec<(u64, u64)> = {
            let mut st = self.state.lock().expect("not poisoned");
            st.last_checkpoint = cp.seq;
            st.records_since_checkpoint = 0;
            if stored != journal::Stored::Full {
                return Ok(stored);
            }
            st.journal_degraded = false;
            let full: Vec<u64> = st.superseded.keys().filter(|c| !st.missing.contains_key(c)).copied().collect();
            full.into_iter()
                .flat_map(|c| st.superseded.remove(&c).unwrap_or_default().into_iter().map(move |g| (c, g)))
                .collect()
        };
        self.delete_old(old).await;
        Ok(stored)
    }

    async fn delete_old(&self, old: Vec<(u64, u64)>) {
        for (chunk, generation) in old {
            let failed = self.dispersal.delete_all(&names::chunk(&self.uuid, chunk, generation)).await;
            if failed > 0 {
                debug!(chunk, generation, failed, "old generation left on some targets; scrub removes it");
            }
        }
    }

    fn journal(&self) -> Journal<'_> {
        Journal {
            dispersal: &self.dispersal,
            codec: &self.codec,
            keys: &self.keys,
            uuid: &self.uuid,
            volume: self.volume,
            quorum: self.config.write_quorum(),
            hedge_after: self.opts.hedge_after,
            prune: true,
            accept_stale: false,
            trusted: &[],
        }
    }

    /// One destage round: encode and store a batch of dirty chunks, commit one record.
    /// Returns how many chunks were committed.
    async fn destage_round(&self) -> Result<usize, VolumeError> {
        let _commit = self.commit.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let batch: Vec<u64> = {
            let mut st = self.state.lock().expect("not poisoned");
            // Write-back: a chunk being rewritten is destaged once it settles, unless
            // someone waits or the cache is filling up.
            let dirty_count = st.chunks.values().filter(|c| c.dirty).count();
            let pressed = self.urgent.load(Ordering::SeqCst) > 0
                || dirty_count as f64 >= self.capacity_chunks as f64 * self.opts.dirty_high;
            let settled = |c: &ChunkState| c.last_write.is_none_or(|t| t.elapsed() >= self.opts.destage_after);
            let mut dirty: Vec<(u64, u64)> = st
                .chunks
                .iter()
                .filter(|(_, c)| c.dirty && !c.destaging && (pressed || settled(c)))
                .map(|(k, c)| (c.last_use, *k))
                .collect();
            dirty.sort_unstable();
            let batch: Vec<u64> = dirty.into_iter().take(self.opts.destage_batch).map(|(_, k)| k).collect();
            for c in &batch {
                st.chunks.get_mut(c).expect("listed").destaging = true;
            }
            batch
        };
        if batch.is_empty() {
            return Ok(0);
        }
        // Dirty data must be durable locally before the journal can point past it.
        let result = async {
            self.sync_local().await?;
            let stored: Vec<Result<Stored, VolumeError>> = stream::iter(batch.iter().copied())
                .map(|chunk| async move {
                    let guard = self.stripe(chunk).read().await;
                    let seq = self.state.lock().expect("not poisoned").chunks.get(&chunk).map(|c| c.seq).unwrap_or(0);
                    let (start, end) = self.cache.chunk_range(chunk);
                    let data = self.cache.read_at(start, (end - start) as usize).await?;
                    drop(guard);
                    let (mapping, missing) = self.store_chunk(chunk, data).await?;
                    Ok((chunk, seq, mapping, missing))
                })
                .buffer_unordered(self.opts.destage_parallel)
                .collect()
                .await;
            let mut done = Vec::new();
            let mut first_error = None;
            for r in stored {
                match r {
                    Ok(x) => done.push(x),
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            if done.is_empty() {
                return Err(first_error.expect("batch non-empty"));
            }
            let seqs: Vec<(u64, u64)> = done.iter().map(|(c, s, _, _)| (*c, *s)).collect();
            let entries: Vec<(u64, Mapping, Vec<u8>)> = done.iter().map(|(c, _, m, x)| (*c, *m, x.clone())).collect();
            let committed: Vec<(u64, Mapping)> = done.iter().map(|(c, _, m, _)| (*c, *m)).collect();
            let old = match self.commit_entries(entries).await {
                Ok(old) => old,
                Err(e) => {
                    for (c, m) in committed {
                        if m.generation != 0 {
                            self.dispersal.delete_all(&names::chunk(&self.uuid, c, m.generation)).await;
                        }
                    }
                    return Err(e);
                }
            };
            {
                let mut st = self.state.lock().expect("not poisoned");
                for (c, seq) in &seqs {
                    if let Some(s) = st.chunks.get_mut(c) {
                        s.destaged_seq = s.destaged_seq.max(*seq);
                        if s.seq == *seq {
                            s.dirty = false;
                        }
                    }
                }
                st.last_destage_error = first_error.as_ref().map(|e| e.to_string());
            }
            self.delete_old(old).await;
            Ok(seqs.len())
        }
        .await;
        let mut st = self.state.lock().expect("not poisoned");
        for c in &batch {
            if let Some(s) = st.chunks.get_mut(c) {
                s.destaging = false;
            }
        }
        if let Err(e) = &result {
            st.last_destage_error = Some(e.to_string());
        }
        drop(st);
        self.progress.notify_waiters();
        result
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

/// How often targets believed down are asked whether they answer again.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Destages dirty chunks until the volume is dropped or stopped.
async fn destager(weak: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut last_probe = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        // A volume without I/O must still notice a target that came back.
        if last_probe.elapsed() >= PROBE_EVERY {
            inner.probe_targets().await;
            last_probe = Instant::now();
        }
        match inner.destage_round().await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                let wake = inner.wake_destager.clone();
                drop(inner);
                let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
            }
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                warn!(error = %e, "destage failed; retrying");
                let started = Instant::now();
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5)).max(started.elapsed());
            }
        }
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
        let old = v.current_generation(0);
        let stale = v.inner.fetch_chunk(0).await.unwrap();
        // ...while newer data is written and destaged from the cache.
        v.write(0, Bytes::from(vec![0xbb; MIB]), false).await.unwrap();
        v.destage_all(Duration::from_secs(60)).await.unwrap();
        assert_ne!(v.current_generation(0), old);
        assert!(!v.rewrite(0, old, stale).await.unwrap(), "a stale rewrite was stored");
        // From the current generation, the rewrite goes ahead.
        let current = v.current_generation(0);
        let data = v.inner.fetch_chunk(0).await.unwrap();
        assert!(v.rewrite(0, current, data).await.unwrap());
        v.shutdown(Duration::from_secs(60)).await.unwrap();
        drop(v);
        // Another cache: the read comes from the targets alone.
        let cold = open("c2").await.unwrap();
        assert!(cold.read(0, MIB as u32).await.unwrap().iter().all(|&b| b == 0xbb), "chunk 0 rolled back");
    }
}

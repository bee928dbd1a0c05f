//! Opening a volume: labels checked, the journal replayed, a new claim written, the cache
//! opened, and the destager started.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use cleave_split::{Codec, Keyring};
use cleave_target::DynTarget;
use tokio::sync::{Notify, RwLock};
use tracing::{info, warn, Instrument};

use super::{destage, epoch_base, ChunkState, Inner, State, Volume, VolumeOptions};
use crate::cache::Cache;
use crate::claim::{self, Claim, Ownership};
use crate::dispersal::Dispersal;
use crate::journal::{Journal, Replayed};
use crate::label::{self, LabelState};
use crate::map::ChunkMap;
use crate::meta::VolumeConfig;
use crate::stats::IoStats;
use crate::VolumeError;

/// Which targets carry the volume, as found at open.
struct Labels {
    states: Vec<LabelState>,
    /// By target: carries this volume's label (or predates labels) and answers.
    trusted: Vec<bool>,
    /// Targets that hold no or another label: replaced since the volume was written.
    replaced: Vec<usize>,
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
        let labels = read_labels(&dispersal, &keys, &config, &codec).await?;
        let ownership = claim::read(&dispersal.targets(), &keys, &uuid).await;
        if !opts.takeover {
            ownership.free_for(&opts.owner)?;
        }
        let mut replayed = Journal {
            dispersal: &dispersal,
            codec: &codec,
            keys: &keys,
            uuid: &uuid,
            volume,
            quorum: config.write_quorum(),
            hedge_after: opts.hedge_after,
            prune: true,
            accept_stale: false,
            trusted: &labels.trusted,
            ownership: &ownership,
        }
        .replay()
        .await?;
        let claim = next_claim(&ownership, &replayed, &opts)?;
        drop_stale_cache(&ownership, &opts, &uuid, &config.name)?;
        claim::write(&dispersal.targets(), &keys, &uuid, &claim).await?;
        let capacity_chunks = (opts.cache_bytes / config.chunk_size as u64).max(4) as usize;
        let (cache, present, clean) =
            Cache::open(&opts.cache_dir, &uuid, config.size, config.chunk_size, capacity_chunks)?;
        info!(
            volume = %config.name,
            epoch = claim.epoch,
            checkpoint = replayed.last_checkpoint,
            last_seq = replayed.last_seq,
            pages = replayed.directory.len(),
            changes = replayed.delta.len(),
            missing = replayed.missing.len(),
            cached = present.len(),
            clean,
            replaced = ?labels.replaced,
            "volume opened"
        );
        if !clean && !present.is_empty() {
            info!(volume = %config.name, chunks = present.len(), "unclean shutdown: destaging every cached chunk again");
        }
        let delta = std::mem::take(&mut replayed.delta);
        let state = initial_state(replayed, &present, clean, claim.epoch, &opts);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
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
            claim,
            io: IoStats::default(),
            streams: Mutex::new(Default::default()),
            prefetch: Arc::new(tokio::sync::Semaphore::new(opts.read_parallel.max(1))),
            installs: Arc::new(tokio::sync::Semaphore::new(opts.read_parallel.max(1))),
            fenced: Mutex::new(None),
            gate: tokio::sync::RwLock::new(None),
            config,
            opts,
        });
        inner.apply_replayed(delta).await?;
        inner.mend_labels(labels).await;
        let weak = Arc::downgrade(&inner);
        // The destager's log lines name their volume.
        let span = tracing::info_span!("volume", volume = %inner.config.name);
        tokio::spawn(async move { destage::destager(weak).await }.instrument(span));
        inner.wake_destager.notify_one();
        Ok(Volume { inner })
    }
}

impl Inner {
    /// Labels trusted targets from before labels existed, and adopts replaced ones.
    async fn mend_labels(&self, labels: Labels) {
        for (i, trusted) in labels.trusted.iter().enumerate() {
            if *trusted && !matches!(labels.states[i], LabelState::Valid) {
                // A target from before labels existed: it holds the volume, label it.
                let _ = label::write(&self.dispersal.targets()[i], &self.keys, &self.uuid, self.volume, i as u8).await;
            }
        }
        for i in labels.replaced {
            self.adopt_replaced(i).await;
        }
    }
}

/// The labels of every target; an error unless at least M carry the volume and answer.
async fn read_labels(
    dispersal: &Dispersal,
    keys: &Keyring,
    config: &VolumeConfig,
    codec: &Codec,
) -> Result<Labels, VolumeError> {
    let volume = config.uuid_bytes().expect("validated");
    let states = label::check_all(&dispersal.targets(), keys, &config.uuid, volume).await;
    let (trusted, replaced) = label::classify(&dispersal.targets(), &config.uuid, &states).await;
    let trusted_count = trusted.iter().filter(|t| **t).count();
    if trusted_count < codec.m() {
        return Err(VolumeError::MetadataUnavailable(format!(
            "only {trusted_count} of {} targets carry volume {:?}'s label and answer, need {}; \
             replaced (no or wrong label): {replaced:?}; labels: {states:?}",
            config.n,
            config.name,
            codec.m()
        )));
    }
    Ok(Labels { states, trusted, replaced })
}

/// This opening's claim: an epoch above every claim and record seen.
/// Another gateway opened the volume after this one last did: whatever this one's cache
/// still holds (a write it took after that, while fenced) is older than the other's writes,
/// and destaging it would put old data over new.
fn drop_stale_cache(ownership: &Ownership, opts: &VolumeOptions, uuid: &str, name: &str) -> Result<(), VolumeError> {
    let Some(latest) = ownership.latest().filter(|c| c.owner != opts.owner) else { return Ok(()) };
    if Cache::exists(&opts.cache_dir, uuid) {
        warn!(volume = %name, newer_owner = %latest.owner, epoch = latest.epoch, "dropping this gateway's cache of the volume: another gateway served it since");
        Cache::remove(&opts.cache_dir, uuid)?;
    }
    Ok(())
}

fn next_claim(ownership: &Ownership, replayed: &Replayed, opts: &VolumeOptions) -> Result<Claim, VolumeError> {
    let newest = ownership.latest().map_or(0, |c| c.epoch).max(replayed.max_epoch);
    let epoch = newest.checked_add(1).ok_or_else(|| VolumeError::Metadata("claim epochs exhausted".into()))?;
    Ok(Claim { epoch, after_seq: replayed.last_seq, owner: opts.owner.clone() })
}

/// The state after replay (the changes since the checkpoint are entered next); cached
/// chunks are dirty unless the cache was closed cleanly.
fn initial_state(replayed: Replayed, present: &[u64], clean: bool, epoch: u64, opts: &VolumeOptions) -> State {
    let mut chunks = HashMap::new();
    for c in present {
        let dirty = !clean;
        chunks.insert(*c, ChunkState { dirty, seq: u64::from(dirty), ..Default::default() });
    }
    // A map from before paging is written as pages by the first checkpoint.
    let records_since_checkpoint =
        if replayed.legacy { opts.checkpoint_every } else { replayed.records_since_checkpoint };
    State {
        map: ChunkMap::new(replayed.directory, opts.map_cache_entries),
        chunks,
        tick: 0,
        next_generation: replayed.next_generation.max(epoch_base(epoch)),
        next_seq: replayed.last_seq + 1,
        last_checkpoint: replayed.last_checkpoint,
        records_since_checkpoint,
        missing: replayed.missing,
        superseded: Default::default(),
        journal_degraded: replayed.journal_degraded,
        last_destage: None,
        last_destage_error: None,
        index_stale: false,
        fills: HashMap::new(),
        installing: 0,
        parked: Default::default(),
    }
}

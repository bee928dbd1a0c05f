//! Health as `volume show` reports it, target labels and ownership as the volume lives:
//! targets coming back (or coming back empty), re-replication, fencing.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Inner, Volume};
use crate::claim;
use crate::journal::Record;
use crate::label;
use crate::meta::VolumeConfig;
use crate::VolumeError;

/// What re-replication did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RereplicateReport {
    pub chunks_rewritten: u64,
    /// Chunks still lacking shares (rewritten while a target failed again).
    pub still_missing: u64,
}

/// Health as `volume show` reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Health {
    Clean,
    /// Some shares are missing or bad, or some targets are down, but every chunk is readable.
    Degraded {
        targets_down: Vec<String>,
        chunks_missing_shares: usize,
        /// `[chunk, [share, ...]]` for each chunk that misses shares.
        #[schema(value_type = Vec<Vec<Object>>)]
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

impl Volume {
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
            let generation = self.current_generation(chunk).await?;
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
        let fenced = inner.fenced.lock().expect("not poisoned").clone();
        let health = if fenced.is_some() || inner.dispersal.up_count() < inner.config.m as usize {
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
            mapped_chunks: st.map.mapped() as usize,
            last_destage: st.last_destage.map(|t| {
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                format!("{secs}")
            }),
            last_destage_error: fenced.or_else(|| st.last_destage_error.clone()),
            journal_seq: st.next_seq - 1,
        }
    }
}

impl Inner {
    /// Lets one host request in, unless the volume was handed over.
    pub(super) async fn enter(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Option<String>>, VolumeError> {
        let open = self.gate.read().await;
        match open.as_ref() {
            Some(why) => Err(VolumeError::Fenced(why.clone())),
            None => Ok(open),
        }
    }

    pub(super) fn check_fenced(&self) -> Result<(), VolumeError> {
        match self.fenced.lock().expect("not poisoned").as_ref() {
            Some(why) => Err(VolumeError::Fenced(why.clone())),
            None => Ok(()),
        }
    }

    /// Errs (and fences this gateway for good) if a newer owner has claimed the volume.
    pub(super) async fn check_claim(&self) -> Result<(), VolumeError> {
        self.check_fenced()?;
        match claim::newer(&self.dispersal.targets(), &self.keys, &self.uuid, self.claim.epoch).await {
            Some(c) => {
                let why = format!(
                    "gateway {} took volume {} over at epoch {} (this gateway had epoch {}); it is no longer served here",
                    c.owner, self.config.name, c.epoch, self.claim.epoch
                );
                warn!("{why}");
                *self.fenced.lock().expect("not poisoned") = Some(why.clone());
                self.stopping.store(true, Ordering::SeqCst);
                Err(VolumeError::Fenced(why))
            }
            None => Ok(()),
        }
    }

    /// Targets believed down that answer again: checked for their label first, since a
    /// target that comes back empty (a new disk, a remount) lost its shares.
    pub(super) async fn probe_targets(&self) {
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
    pub(super) async fn adopt_replaced(&self, i: usize) {
        let target = self.dispersal.targets()[i].clone();
        warn!(volume = %self.config.name, target = %target.name(), share = i, "target has no label: it was replaced; its shares will be rebuilt");
        let _commit = self.commit.lock().await;
        // Every mapped chunk, page by page (the commit lock keeps the map as it is).
        let mut chunks = Vec::new();
        let pages = self.state.lock().expect("not poisoned").map.pages();
        for page in pages {
            match self.mapped_in_page(page).await {
                Ok(p) => chunks.extend(p.into_keys()),
                Err(e) => {
                    warn!(volume = %self.config.name, error = %e, "cannot read the chunk map to journal the replaced target; it stays unlabeled until then");
                    return;
                }
            }
        }
        let (seq, lacking) = {
            let mut st = self.state.lock().expect("not poisoned");
            st.journal_degraded = true;
            st.map.rewrite_all();
            for c in chunks {
                let entry = st.missing.entry(c).or_default();
                if !entry.contains(&(i as u8)) {
                    entry.push(i as u8);
                }
            }
            (st.next_seq, st.missing.iter().map(|(c, v)| (*c, v.clone())).collect::<Vec<_>>())
        };
        let record = Record { seq, entries: Vec::new(), missing: lacking, epoch: self.claim.epoch };
        if let Err(e) = self.append(&record).await {
            warn!(volume = %self.config.name, error = %e, "cannot journal the replaced target yet; it stays unlabeled until then");
            return;
        }
        self.state.lock().expect("not poisoned").records_since_checkpoint += 1;
        if let Err(e) = label::write(&target, &self.keys, &self.uuid, self.volume, i as u8).await {
            warn!(volume = %self.config.name, error = %e, "cannot label the replaced target");
        }
    }
}

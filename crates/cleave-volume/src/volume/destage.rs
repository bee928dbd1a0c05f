//! Destage: dirty chunks encoded and stored as new generations, committed in journal
//! records, old generations deleted once their successors are on all N targets; and the
//! background task that drives it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tracing::{debug, warn};

use super::{io_err, ChunkState, Inner, Urgent};
use crate::claim;
use crate::journal::{self, Journal, Mapping, Record};
use crate::VolumeError;

impl Inner {
    /// Waits until the given chunks (all dirty ones if None) are destaged as of now.
    pub(super) async fn wait_destaged(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
        tokio::time::timeout(self.opts.flush_timeout, self.wait_destaged_inner(chunks))
            .await
            .map_err(|_| VolumeError::Timeout(format!("destage of {} to its targets", self.config.name)))?
    }

    pub(super) async fn wait_destaged_inner(&self, chunks: Option<Vec<u64>>) -> Result<(), VolumeError> {
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
            self.check_fenced()?;
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
    pub(super) async fn store_chunk(&self, chunk: u64, data: Vec<u8>) -> Result<(Mapping, Vec<u8>), VolumeError> {
        let key_id = self.keys.current().id();
        if !self.config.store_zero_chunks && data.iter().all(|&b| b == 0) {
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
        let (key, id) = self.locate(chunk, generation);
        let codec = self.codec.clone();
        let keys = self.keys.clone();
        let shares =
            tokio::task::spawn_blocking(move || codec.encode(keys.current(), &id, &data)).await.map_err(io_err)??;
        // Generations carry this owner's epoch (see `epoch_base`): a share in the way is a
        // leftover of our own, never another owner's, so it may be replaced.
        let shares: Vec<Bytes> = shares.into_iter().map(Bytes::from).collect();
        let len: u64 = shares.iter().map(|s| s.len() as u64).sum::<u64>() / shares.len().max(1) as u64;
        let outcome = self.dispersal.put_all(&key, shares, true).await;
        self.io.data_stored_bytes.fetch_add(len * outcome.stored.len() as u64, Ordering::Relaxed);
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

    /// Commits mappings in one journal record, and a checkpoint when one is due; returns the
    /// generations that may now be deleted (see [`Inner::commit_record`]). Caller holds `commit`.
    pub(super) async fn commit_entries(
        &self,
        done: Vec<(u64, Mapping, Vec<u8>)>,
    ) -> Result<Vec<(u64, u64)>, VolumeError> {
        let old = self.commit_record(done).await?;
        if self.checkpoint_due() {
            if let Err(e) = self.write_checkpoint().await {
                warn!(error = %e, "checkpoint failed; the journal keeps growing until one succeeds");
            }
        }
        Ok(old)
    }

    /// Commits mappings in one journal record; returns the generations that may now be
    /// deleted: an old generation goes only once its successor and the record naming it
    /// are on all N targets, otherwise it is kept as superseded. Caller holds `commit`.
    pub(super) async fn commit_record(
        &self,
        done: Vec<(u64, Mapping, Vec<u8>)>,
    ) -> Result<Vec<(u64, u64)>, VolumeError> {
        let seq = self.state.lock().expect("not poisoned").next_seq;
        self.check_claim().await?;
        // What each chunk maps to now (commits hold `commit`: nothing changes it meanwhile).
        let chunks: Vec<u64> = done.iter().map(|(chunk, _, _)| *chunk).collect();
        let current = futures::future::try_join_all(chunks.into_iter().map(|chunk| self.lookup(chunk))).await?;
        let record = Record {
            epoch: self.claim.epoch,
            seq,
            entries: done.iter().map(|(c, m, _)| (*c, m.generation, m.key_id)).collect(),
            missing: done.iter().filter(|(_, _, x)| !x.is_empty()).map(|(c, _, x)| (*c, x.clone())).collect(),
        };
        let stored = match self.append(&record).await {
            Ok(s) => s,
            Err(e) => {
                // A record in the way may be a newer owner's: then say so.
                self.check_claim().await?;
                return Err(e);
            }
        };
        let mut old = Vec::new();
        {
            let mut st = self.state.lock().expect("not poisoned");
            st.records_since_checkpoint += 1;
            st.journal_degraded |= stored != journal::Stored::Full;
            for ((chunk, mapping, missing), previous) in done.into_iter().zip(current) {
                st.map.set(chunk, (mapping.generation != 0).then_some(mapping), previous);
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
        }
        Ok(old)
    }

    /// Commits `record` (numbered `next_seq`); the number is used up even if that fails. A
    /// failed attempt may leave shares that could not be deleted, and they would stand in
    /// the way of every later record of that name. Replay skips the gap: what is left there
    /// is on too few targets to be a commit. Caller holds `commit`.
    pub(super) async fn append(&self, record: &Record) -> Result<journal::Stored, VolumeError> {
        let next = record
            .seq
            .checked_add(1)
            .ok_or_else(|| VolumeError::Metadata("journal sequence space exhausted".into()))?;
        let result = self.journal().commit(record).await;
        self.state.lock().expect("not poisoned").next_seq = next;
        result
    }

    pub(super) async fn delete_old(&self, old: Vec<(u64, u64)>) {
        // A newer owner may still reference what this one replaced.
        if old.is_empty() || self.check_claim().await.is_err() {
            return;
        }
        for (chunk, generation) in old {
            let failed = self.dispersal.delete_all(&self.locate(chunk, generation).0).await;
            if failed > 0 {
                debug!(chunk, generation, failed, "old generation left on some targets; scrub removes it");
            }
        }
    }

    pub(super) fn journal(&self) -> Journal<'_> {
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
            ownership: &NO_CLAIMS,
        }
    }

    /// One destage round: encode and store a batch of dirty chunks, commit one record.
    /// Returns how many chunks were committed.
    pub(super) async fn destage_round(&self) -> Result<usize, VolumeError> {
        let _commit = self.commit.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let batch = self.pick_batch();
        if batch.is_empty() {
            return Ok(0);
        }
        let result = self.destage_batch(&batch).await;
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

    /// The dirty chunks to destage now, least recently used first, marked as destaging.
    fn pick_batch(&self) -> Vec<u64> {
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
    }

    /// Stores and commits `batch`; the chunks that made it are clean unless rewritten since.
    async fn destage_batch(&self, batch: &[u64]) -> Result<usize, VolumeError> {
        // Dirty data must be durable locally before the journal can point past it.
        self.sync_local().await?;
        let (done, first_error) = self.store_batch(batch).await;
        if done.is_empty() {
            return Err(first_error.expect("batch non-empty"));
        }
        let old = self.commit_destaged(&done).await?;
        {
            let mut st = self.state.lock().expect("not poisoned");
            for d in &done {
                if let Some(s) = st.chunks.get_mut(&d.chunk) {
                    s.destaged_seq = s.destaged_seq.max(d.seq);
                    if s.seq == d.seq {
                        s.dirty = false;
                    }
                }
            }
            st.last_destage_error = first_error.as_ref().map(|e| e.to_string());
        }
        self.delete_old(old).await;
        Ok(done.len())
    }

    /// Encodes and stores each chunk of `batch`, some in parallel: those stored, and the
    /// first error of those that were not.
    async fn store_batch(&self, batch: &[u64]) -> (Vec<Destaged>, Option<VolumeError>) {
        let stored: Vec<Result<Destaged, VolumeError>> = stream::iter(batch.iter().copied())
            .map(|chunk| async move {
                let guard = self.stripe(chunk).read().await;
                let seq = self.state.lock().expect("not poisoned").chunks.get(&chunk).map(|c| c.seq).unwrap_or(0);
                let (start, end) = self.cache.chunk_range(chunk);
                let data = self.cache.read(chunk, 0, (end - start) as usize).await?;
                drop(guard);
                let (mapping, missing) = self.store_chunk(chunk, data).await?;
                Ok(Destaged { chunk, seq, mapping, missing })
            })
            .buffer_unordered(self.opts.destage_parallel)
            .collect()
            .await;
        successes(stored)
    }

    /// Commits the stored chunks in one record; the generations it replaced, to delete. If
    /// the commit fails, the new generations are deleted again: nothing points at them.
    async fn commit_destaged(&self, done: &[Destaged]) -> Result<Vec<(u64, u64)>, VolumeError> {
        let entries: Vec<(u64, Mapping, Vec<u8>)> =
            done.iter().map(|d| (d.chunk, d.mapping, d.missing.clone())).collect();
        match self.commit_entries(entries).await {
            Ok(old) => Ok(old),
            Err(e) => {
                for d in done.iter().filter(|d| d.mapping.generation != 0) {
                    self.dispersal.delete_all(&self.locate(d.chunk, d.mapping.generation).0).await;
                }
                Err(e)
            }
        }
    }
}

/// What succeeded, and the first error of what did not.
pub(super) fn successes<T>(results: Vec<Result<T, VolumeError>>) -> (Vec<T>, Option<VolumeError>) {
    let mut done = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(x) => done.push(x),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    (done, first_error)
}

/// A chunk written in a destage round.
struct Destaged {
    chunk: u64,
    /// The chunk's write sequence when it was read from the cache.
    seq: u64,
    mapping: Mapping,
    /// The shares not stored (repair writes them later).
    missing: Vec<u8>,
}

/// Replay at open filters stale records; later commits need no filter.
static NO_CLAIMS: claim::Ownership = claim::Ownership { claims: Vec::new(), released: Vec::new() };

/// How often targets believed down are asked whether they answer again.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Destages dirty chunks until the volume is dropped or stopped.
pub(super) async fn destager(weak: std::sync::Weak<Inner>) {
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
            if inner.check_claim().await.is_err() {
                return;
            }
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

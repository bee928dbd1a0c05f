//! The metadata journal: every destage round commits one record (chunk → generation),
//! encrypted under the volume's metadata subkey and split M-of-N like data. Every so
//! often a checkpoint names the map's stored pages (see [`crate::map`]), and older records
//! are pruned once the checkpoint and its pages are on all N targets.
//!
//! Replay never mistakes an object it cannot decode for a failed commit unless the
//! targets prove it: see [`Journal::may_have_committed`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::{ChunkId, Codec, Keyring, ShareKind};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::dispersal::Dispersal;
use crate::map::{Page, PageRef, StoredPage, PAGE_CHUNKS};
use crate::meta::names;
use crate::VolumeError;

pub use crate::map::Mapping;

/// Chunk → share indices its current generation lacks (a write that met the quorum but
/// not all N targets). Journaled, so re-replication survives a restart.
pub type MissingShares = BTreeMap<u64, Vec<u8>>;

/// One committed update: (chunk, generation, key id); generation 0 = zero/trimmed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub entries: Vec<(u64, u64, u32)>,
    /// Entries of this record whose shares did not reach every target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<(u64, Vec<u8>)>,
    /// The claim epoch of the gateway that wrote it (see [`crate::claim`]).
    #[serde(default)]
    pub epoch: u64,
}

/// The map as of record `seq`: the directory of its stored pages.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub next_generation: u64,
    /// Format 1 (before paged maps): the whole map. Read, never written: a version that
    /// does not know `pages` then fails to parse a new checkpoint instead of misreading it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<(u64, u64, u32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<(u64, Vec<u8>)>,
    /// The directory: (page, version, mapped chunks, on all N targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<(u64, u64, u64, bool)>,
}

/// Record vs checkpoint objects are told apart by the generation field of their ChunkId.
const RECORD: u64 = 0;
const CHECKPOINT: u64 = 1;

/// The journal's view after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The newest checkpoint's stored pages.
    pub directory: BTreeMap<u64, PageRef>,
    /// Changes after it (None: zeros); with a format 1 checkpoint, its whole map too.
    pub delta: BTreeMap<u64, Option<Mapping>>,
    /// The checkpoint was of format 1: the next one writes the map as pages.
    pub legacy: bool,
    pub missing: MissingShares,
    pub last_seq: u64,
    pub last_checkpoint: u64,
    pub next_generation: u64,
    pub records_since_checkpoint: u64,
    /// The highest writer epoch among the records replayed.
    pub max_epoch: u64,
    /// Some journal object is not on all N targets (or a target did not answer): a full
    /// checkpoint is needed before the volume is fully redundant again.
    pub journal_degraded: bool,
    /// With `accept_stale`: why replay stopped early (the map is the last state every
    /// target at hand agrees on).
    pub stale: Option<String>,
}

impl Replayed {
    /// Replay's step for the newest readable checkpoint: the map as of `cp.seq`.
    pub fn apply_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), VolumeError> {
        self.directory = directory(cp)?;
        apply(&mut self.delta, &cp.entries);
        self.legacy = !cp.entries.is_empty();
        apply_missing(&mut self.missing, &[], &cp.missing);
        self.last_seq = cp.seq;
        self.last_checkpoint = cp.seq;
        self.next_generation = cp.next_generation.max(1);
        Ok(())
    }

    /// Replay's step for one record after the checkpoint.
    pub fn apply_record(&mut self, r: &Record) -> Result<(), VolumeError> {
        apply(&mut self.delta, &r.entries);
        apply_missing(&mut self.missing, &r.entries, &r.missing);
        let max_gen = r.entries.iter().map(|e| e.1).max().unwrap_or(0);
        let next = max_gen
            .checked_add(1)
            .ok_or_else(|| VolumeError::Metadata(format!("journal record {}: generation space exhausted", r.seq)))?;
        self.next_generation = self.next_generation.max(next);
        self.last_seq = r.seq;
        self.records_since_checkpoint += 1;
        Ok(())
    }
}

/// How a journal write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// On all N targets.
    Full,
    /// On at least the write quorum, not on all N.
    Quorum,
}

pub struct Journal<'a> {
    pub dispersal: &'a Dispersal,
    pub codec: &'a Codec,
    pub keys: &'a Keyring,
    pub uuid: &'a str,
    pub volume: [u8; 16],
    pub quorum: usize,
    pub hedge_after: Duration,
    /// Delete leftovers of failed commits during replay (false for read-only recovery).
    pub prune: bool,
    /// Stop at the first object that may hold committed metadata but cannot be read,
    /// instead of failing (read-only recovery of the last fully redundant state).
    pub accept_stale: bool,
    /// Which targets (by position) carry this volume's label. An untrusted target's
    /// listing counts as no answer: a replaced target holds nothing, and must not make a
    /// commit look like the leftover of a failed one. Empty: all trusted.
    pub trusted: &'a [bool],
    /// Claims on the volume: records that an owner wrote after it was replaced are ignored.
    pub ownership: &'a crate::claim::Ownership,
}

fn apply(delta: &mut BTreeMap<u64, Option<Mapping>>, entries: &[(u64, u64, u32)]) {
    for &(chunk, generation, key_id) in entries {
        delta.insert(chunk, (generation != 0).then_some(Mapping { generation, key_id }));
    }
}

/// A checkpoint's directory, checked: each page once, written no later than the
/// checkpoint itself, holding between 1 and a page's worth of chunks.
fn directory(cp: &Checkpoint) -> Result<BTreeMap<u64, PageRef>, VolumeError> {
    let mut out = BTreeMap::new();
    for &(page, version, count, full) in &cp.pages {
        if version > cp.seq || count == 0 || count > PAGE_CHUNKS {
            return Err(VolumeError::Metadata(format!(
                "checkpoint {}: page {page} version {version} with {count} chunks is not possible",
                cp.seq
            )));
        }
        if out.insert(page, PageRef { version, count, full }).is_some() {
            return Err(VolumeError::Metadata(format!("checkpoint {}: page {page} listed twice", cp.seq)));
        }
    }
    Ok(out)
}

fn apply_missing(missing: &mut MissingShares, entries: &[(u64, u64, u32)], lacking: &[(u64, Vec<u8>)]) {
    for (chunk, _, _) in entries {
        missing.remove(chunk);
    }
    for (chunk, shares) in lacking {
        missing.insert(*chunk, shares.clone());
    }
}

/// Numbered names under a prefix, with how many targets hold each.
struct Listing {
    numbers: BTreeMap<u64, usize>,
    answered: usize,
}

impl Journal<'_> {
    fn id(&self, seq: u64, kind: u64) -> ChunkId {
        ChunkId { volume: self.volume, kind: ShareKind::Journal, chunk: seq, generation: kind }
    }

    pub(crate) async fn write_object(&self, key: &str, id: ChunkId, body: Vec<u8>) -> Result<Stored, VolumeError> {
        let shares = self.codec.encode(self.keys.current(), &id, &body)?;
        // Never replace a journal object: one in the way may be another owner's commit
        // (the caller then checks whether it was fenced).
        let outcome = self.dispersal.put_all(key, shares.into_iter().map(Bytes::from).collect(), false).await;
        if outcome.stored.len() == self.codec.n() {
            return Ok(Stored::Full);
        }
        if outcome.stored.len() >= self.quorum {
            return Ok(Stored::Quorum);
        }
        // Leave nothing half-written that a later replay could mistake for a commit; but
        // only what this write stored: an object already in the way is someone's commit.
        self.dispersal.delete_at(key, &outcome.stored).await;
        Err(VolumeError::Quorum(format!(
            "journal {key}: stored on {} targets, need {}; {:?}",
            outcome.stored.len(),
            self.quorum,
            outcome.failed
        )))
    }

    /// Commits one record. Ok means at least a quorum of targets holds it.
    pub async fn commit(&self, record: &Record) -> Result<Stored, VolumeError> {
        let body = serde_json::to_vec(record).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        self.write_object(&names::journal(self.uuid, record.seq), self.id(record.seq, RECORD), body).await
    }

    /// Writes a checkpoint (its pages are stored already; `pages_full`: all on N targets).
    /// Only a checkpoint that is, with its pages, on all N targets replaces what it covers:
    /// then every record up to it and every older checkpoint is pruned.
    pub async fn checkpoint(&self, cp: &Checkpoint, pages_full: bool) -> Result<Stored, VolumeError> {
        let body = serde_json::to_vec(cp).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        let stored =
            self.write_object(&names::checkpoint(self.uuid, cp.seq), self.id(cp.seq, CHECKPOINT), body).await?;
        if stored == Stored::Full && pages_full {
            self.prune_before(cp.seq).await;
            return Ok(Stored::Full);
        }
        Ok(Stored::Quorum)
    }

    /// Deletes records up to `seq` and checkpoints before it, as the targets list them.
    async fn prune_before(&self, seq: u64) {
        for (prefix, last) in
            [(names::journal_prefix(self.uuid), Some(seq)), (names::checkpoint_prefix(self.uuid), seq.checked_sub(1))]
        {
            let Some(last) = last else { continue };
            let Ok(listing) = self.list_numbers(&prefix).await else { continue };
            for &n in listing.numbers.keys().filter(|n| **n <= last) {
                self.dispersal.delete_all(&format!("{prefix}{n:016x}")).await;
            }
        }
    }

    async fn read<T: for<'de> Deserialize<'de>>(&self, key: &str, id: ChunkId) -> Result<T, String> {
        let (body, _) = self.dispersal.read_decoded(key, self.codec, self.keys, &id, self.hedge_after).await?;
        serde_json::from_slice(&body).map_err(|e| format!("{key}: {e}"))
    }

    /// Numbered names under `prefix` on every target that answers, with how many
    /// targets hold each.
    async fn list_numbers(&self, prefix: &str) -> Result<Listing, VolumeError> {
        let targets = self.dispersal.targets();
        let lists = futures::future::join_all(targets.iter().enumerate().map(|(i, t)| async move {
            match self.trusted.get(i) {
                Some(false) => Err(cleave_target::TargetError::Unavailable("no label: replaced".into())),
                _ => t.list(prefix).await,
            }
        }))
        .await;
        let answered = lists.iter().filter(|l| l.is_ok()).count();
        if answered < self.codec.m() {
            return Err(VolumeError::MetadataUnavailable(format!(
                "only {answered} targets answered listing {prefix}, need {}",
                self.codec.m()
            )));
        }
        let mut numbers = BTreeMap::new();
        for list in lists.into_iter().flatten() {
            // A target lists each name once, however it answers.
            let mut seen: Vec<u64> = list.iter().filter_map(|k| names::trailing_number(k)).collect();
            seen.sort_unstable();
            seen.dedup();
            for n in seen {
                *numbers.entry(n).or_insert(0) += 1;
            }
        }
        Ok(Listing { numbers, answered })
    }

    /// Whether an object that cannot be decoded may still be a commit: the targets that
    /// did not answer could hold it, so only when even counting them it stays below the
    /// write quorum is it provably the leftover of a failed commit.
    fn may_have_committed(&self, holders: usize, answered: usize) -> bool {
        holders + self.codec.n().saturating_sub(answered) >= self.quorum
    }

    /// Deletes a journal object that replay found to be no commit (unless read-only).
    async fn prune_object(&self, key: &str) {
        if self.prune {
            self.dispersal.delete_all(key).await;
        }
    }

    /// An object replay cannot decode: `Ok(None)` if it is provably a failed commit (then
    /// pruned), `Ok(Some(why))` to stop at the state before it under `accept_stale`, and an
    /// error otherwise.
    async fn undecodable(
        &self,
        what: &str,
        key: &str,
        holders: usize,
        answered: usize,
        e: &str,
    ) -> Result<Option<String>, VolumeError> {
        if !self.may_have_committed(holders, answered) {
            debug!(what, holders, error = %e, "skipping the leftover of a failed commit");
            self.prune_object(key).await;
            return Ok(None);
        }
        let why = self.unreadable(what, holders, answered, e);
        if !self.accept_stale {
            return Err(VolumeError::MetadataUnavailable(why));
        }
        Ok(Some(why))
    }

    fn unreadable(&self, what: &str, holders: usize, answered: usize, e: &str) -> String {
        format!(
            "{what} is on {holders} of the {answered} targets that answered and cannot be decoded ({e}); \
             it may hold committed metadata, so the volume is not served from an older state. \
             Bring back more of the volume's targets, or recover with --accept-stale (read-only) \
             to get the last state that the targets at hand hold in full"
        )
    }

    /// Rebuilds the map from the newest checkpoint and the records after it.
    ///
    /// An object that cannot be decoded is skipped (and pruned) only when it is provably
    /// the leftover of a failed commit. Otherwise replay stops with an error that names
    /// it, or, with `accept_stale`, returns the state before it.
    pub async fn replay(&self) -> Result<Replayed, VolumeError> {
        let n = self.codec.n();
        let mut out = Replayed { next_generation: 1, ..Default::default() };
        let checkpoints = self.list_numbers(&names::checkpoint_prefix(self.uuid)).await?;
        out.journal_degraded |= checkpoints.answered < n;
        for (&seq, &holders) in checkpoints.numbers.iter().rev() {
            let key = names::checkpoint(self.uuid, seq);
            match self.read::<Checkpoint>(&key, self.id(seq, CHECKPOINT)).await {
                Ok(cp) if cp.seq == seq => {
                    out.apply_checkpoint(&cp)?;
                    out.journal_degraded |= holders < n;
                    break;
                }
                Ok(_) => return Err(VolumeError::Metadata(format!("checkpoint {seq} holds another sequence number"))),
                Err(e) => {
                    let what = format!("checkpoint {seq}");
                    if let Some(why) = self.undecodable(&what, &key, holders, checkpoints.answered, &e).await? {
                        warn!("{why}; trying an older checkpoint");
                        out.stale.get_or_insert(why);
                    }
                }
            }
        }
        self.replay_records(&mut out).await?;
        Ok(out)
    }

    async fn replay_records(&self, out: &mut Replayed) -> Result<(), VolumeError> {
        let records = self.list_numbers(&names::journal_prefix(self.uuid)).await?;
        out.journal_degraded |= records.answered < self.codec.n();
        let after = out.last_checkpoint;
        for (seq, holders) in records.numbers.into_iter().filter(|(s, _)| *s > after) {
            let key = names::journal(self.uuid, seq);
            match self.read::<Record>(&key, self.id(seq, RECORD)).await {
                Ok(r) if r.seq == seq && self.ownership.is_stale(seq, r.epoch) => {
                    warn!(seq, epoch = r.epoch, "ignoring a record written by a gateway that had been replaced");
                    self.prune_object(&key).await;
                }
                Ok(r) if r.seq == seq => {
                    out.max_epoch = out.max_epoch.max(r.epoch);
                    out.apply_record(&r)?;
                    out.journal_degraded |= holders < self.codec.n();
                }
                Ok(_) => {
                    return Err(VolumeError::Metadata(format!("journal record {seq} holds another sequence number")))
                }
                Err(e) => {
                    let what = format!("journal record {seq}");
                    if let Some(why) = self.undecodable(&what, &key, holders, records.answered, &e).await? {
                        warn!("{why}; stopping replay there");
                        out.stale = Some(why);
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Map pages: written and read like journal objects (the metadata key, the write quorum,
/// create-only), under opaque names (see `naming`).
impl Journal<'_> {
    fn page_object(&self, page: u64, version: u64) -> (String, cleave_split::ChunkId) {
        crate::naming::page_object(self.keys, self.uuid, self.volume, page, version)
    }

    /// Reads and checks one stored page version.
    pub async fn read_page(&self, page: u64, version: u64) -> Result<Arc<Page>, VolumeError> {
        let (key, id) = self.page_object(page, version);
        let (body, _) = self
            .dispersal
            .read_decoded(&key, self.codec, self.keys, &id, self.hedge_after)
            .await
            .map_err(|e| VolumeError::MetadataUnavailable(format!("map page {page} version {version}: {e}")))?;
        Ok(Arc::new(StoredPage::parse(&body, page, version)?))
    }

    /// Stores a page version; Ok once at least the write quorum holds it.
    pub async fn write_page(&self, page: u64, version: u64, data: &Page) -> Result<Stored, VolumeError> {
        let (key, id) = self.page_object(page, version);
        let body = StoredPage::new(page, version, data).to_bytes();
        self.write_object(&key, id, body).await
    }

    /// Deletes a page version from every target (best effort: scrub finds leftovers).
    pub async fn delete_page(&self, page: u64, version: u64) {
        let (key, _) = self.page_object(page, version);
        self.dispersal.delete_all(&key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
        prop::collection::vec((0u64..32, 0u64..6, 1u32..3), 0..8)
    }

    proptest! {
        /// Replaying a checkpoint taken at any record, then the records after it, gives
        /// the same map as applying every record from the start.
        #[test]
        fn checkpoint_then_tail_equals_full_replay(
            records in prop::collection::vec(entries(), 1..40),
            cut in 0usize..40,
        ) {
            let cut = cut.min(records.len());
            let mapped = |delta: &BTreeMap<u64, Option<Mapping>>| -> BTreeMap<u64, Mapping> {
                delta.iter().filter_map(|(c, m)| m.map(|m| (*c, m))).collect()
            };
            let mut full = BTreeMap::new();
            for r in &records {
                apply(&mut full, r);
            }
            let mut at_cut = BTreeMap::new();
            for r in &records[..cut] {
                apply(&mut at_cut, r);
            }
            // A format 1 checkpoint at the cut, then the records after it.
            let entries = mapped(&at_cut).iter().map(|(c, m)| (*c, m.generation, m.key_id)).collect();
            let mut replayed = Replayed::default();
            replayed.apply_checkpoint(&Checkpoint { seq: cut as u64, entries, ..Default::default() }).unwrap();
            for r in &records[cut..] {
                apply(&mut replayed.delta, r);
            }
            prop_assert_eq!(mapped(&replayed.delta), mapped(&full));
            // Generation 0 never appears in a map: it means "zero, nothing stored".
            prop_assert!(full.values().flatten().all(|m| m.generation != 0));
        }

        /// Records survive their JSON encoding exactly.
        #[test]
        fn records_round_trip(seq in any::<u64>(), entries in entries()) {
            let r = Record { seq, entries, missing: Vec::new(), epoch: 0 };
            let bytes = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(serde_json::from_slice::<Record>(&bytes).unwrap(), r);
        }
    }
}
